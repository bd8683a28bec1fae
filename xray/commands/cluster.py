"""`xray preflight`, `xray jobs`."""

from __future__ import annotations

import sys

from xray.commands import UserError, user_error


STEP_HELP = ("Checks the kube context, the namespace and volume claim (made by the storage step, make volume), the "
             "image, that there are at least as many train shards as workers (when DATA is readable from here), the run "
             "config (train/tune: the overlay's preset, or --config, with the overrides; the batch must split over the "
             "workers) and that no job of the same name is still running; then writes OUT/kustomization.yaml on top of "
             "xray/k8s/overlays/OVERLAY/COMPONENT")
OVERRIDES_EPILOG = "overrides (train/tune): key=value, e.g. train.epochs=20 model.weights=/mnt/xray/weights/w.h5"


def _step_arguments(p) -> None:
    """What a step is rendered from: shared by xray preflight and xray cluster."""
    p.add_argument("--overlay", default="local", help="xray/k8s/overlays/<overlay> (local, gpu)")
    p.add_argument("--image", default="", help="project image registry/name:tag (every component but serving and storage); serving: a "
                   "TF Serving image in place of the overlay's tensorflow/serving:2.21.0")
    p.add_argument("--workers", type=int, default=2, help="training workers / tuning trial workers")
    p.add_argument("--data", default="/mnt/xray/shards", help="shards URI as the pods see it")
    p.add_argument("--workdir", default="", help="run directory as the pods see it (default: the overlay's)")
    p.add_argument("--config", default="", help="train/tune: a config.json to start from: a local file (sent in a "
                   "ConfigMap) or a path on the volume as the pods see it (/mnt/xray/runs/tune/best_config.json)")
    p.add_argument("--storage-class", default="", help="storage: the claim's storage class (default: the cluster's)")
    p.add_argument("--src", default="", help="shards: the image folder on the volume (default: the overlay's)")
    p.add_argument("--deadline", type=int, default=0, help="train/tune: activeDeadlineSeconds of each Job (default: the "
                   "manifest's, 3 days)")
    p.add_argument("--queue", default="", help="train/tune: a Kueue LocalQueue; the Jobs are created suspended with its "
                   "label, and Kueue admits all their pods at once (xray jobs status says queued until then)")
    p.add_argument("--model-base", default="", help="export/serving/promote: where the versions live (default the "
                   "volume's /mnt/xray/models; gs://bucket/models: exported there and read there by TF Serving)")
    p.add_argument("--service-account", default="", help="the Kubernetes service account every pod of the step runs "
                   "as (GKE Workload Identity: the one bound to a Google service account that can read the bucket)")
    p.add_argument("--image-pull-secret", default="", help="a docker-registry Secret for a private registry")
    p.add_argument("--node-selector", default="", help="key=value[,key=value]: node labels every pod of the step must "
                   "have (default none: a GPU request alone finds the GPU nodes)")
    p.add_argument("--max-trials", type=int, default=0, help="tune: the number of trials (default: the overlay's)")
    p.add_argument("--replicas", type=int, default=0, help="serving: the autoscaler's minimum (default: the overlay's)")
    p.add_argument("--label", default="", help="promote: the label to move (stable, canary)")
    p.add_argument("--version", default="", help="promote: the version to point it at")
    p.add_argument("--from-label", default="", help="promote: the version another label points at")
    p.add_argument("--rollback", action="store_true", help="promote: back to where the label pointed before")
    p.add_argument("--wait", type=int, default=0, help="promote: seconds for every replica to load the version")
    p.add_argument("--namespace", "-n", default="xray")
    p.add_argument("overrides", nargs="*", help="train/tune config overrides, key=value")


def _request(args, component: str, **changes):
    from xray.cluster import render

    promote = []
    if component == "promote":
        promote = (["--label", args.label] if args.label else []) + (["--version", args.version] if args.version else []) \
            + (["--from-label", args.from_label] if args.from_label else []) + (["--rollback"] if args.rollback else [])
    values = dict(component=component, overlay=args.overlay, image=args.image, workers=args.workers, data=args.data,
                  workdir=args.workdir, namespace=args.namespace, config_file=args.config,
                  overrides=tuple(args.overrides), storage_class=args.storage_class, src=args.src,
                  deadline_s=args.deadline, max_trials=args.max_trials, replicas=args.replicas, promote=tuple(promote),
                  promote_wait_s=args.wait, queue=args.queue, model_base=args.model_base,
                  service_account=args.service_account, image_pull_secret=args.image_pull_secret,
                  node_selector=tuple(pair.strip() for pair in args.node_selector.split(",") if pair.strip()))
    return render.RenderRequest(**{**values, **changes})


def _add_preflight(sub):
    from xray.cluster.render import WORKLOADS

    p = sub.add_parser("preflight", help="check a cluster step before applying it, and render its kustomization",
                       description=STEP_HELP + " (apply it with kubectl apply -k OUT; xray cluster STEP does both).",
                       epilog=OVERRIDES_EPILOG)
    p.add_argument("--component", choices=sorted(WORKLOADS), default="train")
    _step_arguments(p)
    p.add_argument("--out", required=True, help="directory for the rendered kustomization")
    p.add_argument("--offline", action="store_true", help="skip the cluster checks (render only)")
    p.set_defaults(run=_run_preflight)


def _run_preflight(args):
    from xray.cluster import kube, preflight

    try:
        warnings = preflight.check_and_render(_request(args, args.component), args.out, check_cluster=not args.offline)
    except kube.ClusterError as error:
        raise user_error(error) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"pre-flight passed; rendered {args.out}/kustomization.yaml (kubectl apply -k {args.out})")


STEP_HELP_LINES = {
    "storage": "the namespace and the volume claim (make volume)",
    "data": "a local image folder onto the volume through the uploader pod, then sharded there (make data-cluster)",
    "weights": "the ImageNet weights file onto the volume once, so that no pod downloads it (make weights-cluster)",
    "shards": "shards an image folder already on the volume (a Job)",
    "train": "the training Indexed Job (make train-cluster)",
    "tune": "the tuner's chief and trial workers (make tune-cluster)",
    "export": "evaluates a run on the volume and exports it, gated (make export-cluster)",
    "serving": "TF Serving: Deployment, Services, autoscaler, disruption budget (make deploy-serving)",
    "tensorboard": "TensorBoard over the runs on the volume (make tensorboard)",
    "promote": "moves a version label on the running TF Serving replicas (make promote)",
}


def _add_step(sub):
    from xray.cluster.steps import STEPS

    p = sub.add_parser("cluster", help="one cluster step: pre-flight, render, replace, apply, follow (make *-cluster)",
                       description="One step of the cluster flow, what each make *-cluster target runs. " + STEP_HELP +
                       "; then deletes the step's previous Job (the workdir on the volume keeps its backup), applies it "
                       "with kubectl apply -k and follows it like xray jobs watch until it ends. xray cluster STEP --help "
                       "lists a step's options.",
                       epilog="exit status: xray jobs watch's (0 succeeded, 1 failed, 3 the export gate refused the "
                       "model, 4 a pod cannot start or run); 2: refused before anything was applied.")
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    for step in (*STEPS[:1], "data", "weights", *STEPS[2:]):
        s = steps.add_parser(step, help=STEP_HELP_LINES[step], description=STEP_HELP_LINES[step] + ".",
                             epilog=OVERRIDES_EPILOG if step in ("train", "tune") else None)
        _step_arguments(s)
        s.add_argument("--out", default="", help="directory for the rendered kustomization (default: build/k8s/STEP)")
        if step == "data":
            s.add_argument("--upload", default="", help="a local image folder (Kaggle chest_xray layout), .zip or .tar; "
                           "or gs://bucket/chest_xray, which the shards Job reads where it is (--service-account)")
            s.add_argument("--dest", default="/mnt/xray/incoming/chest_xray", help="where it lands on the volume (the "
                           "folder the shards Job reads)")
        if step == "weights":
            s.add_argument("--file", default="~/.keras/models/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           help="the ImageNet weights file to put on the volume (default: where Keras keeps it)")
        s.add_argument("--interval", type=float, default=10.0, help="seconds between refreshes while following")
        s.add_argument("--stuck-after", type=float, default=45.0, help="give up (exit 4) when a pod has been unable "
                       "to start or run this many seconds")
        s.add_argument("--start-timeout", type=float, default=900.0, help="give up (exit 4) when no pod has started "
                       "running after this many seconds")
        s.set_defaults(run=_run_step)


def _run_step(args):
    from xray.cluster import kube, steps
    from xray.data.upload import UploadError

    out = args.out or f"build/k8s/{args.step}"
    how = steps.Follow(args.interval, args.stuck_after, args.start_timeout)
    try:
        if args.step == "weights":
            return steps.weights(args.file, _request(args, "upload"), out, how)
        if args.step != "data":
            return steps.run(_request(args, args.step), out, how)
        if not args.upload:
            raise UserError("set the images to upload: xray cluster data --upload ~/chest_xray "
                            "(make data-cluster SRC=~/chest_xray)")
        if args.upload.startswith("gs://"):  # already in a bucket: the shards Job reads it there, nothing is sent
            return steps.run(_request(args, "shards", src=args.upload), f"{out}/shards", how)
        return steps.data(args.upload, args.dest, _request(args, "upload"), _request(args, "shards", src=args.dest),
                          out, how)
    except kube.ClusterError as error:
        raise user_error(error) from None
    except UploadError as error:
        if error.code == 2:
            raise user_error(error) from None
        print(f"error: {error}", file=sys.stderr)
        return 1


def _add_jobs(sub):
    from xray.cluster.kube import OUTPUTS

    p = sub.add_parser("jobs", help="training/tuning jobs on Kubernetes: list, status, watch, logs, delete",
                       epilog="exit status: status, list, logs and delete exit 0 when they could read the cluster, as "
                       "kubectl get does, whatever the job's state (read it from -o json's job.state); watch exits 0 when "
                       "the job succeeded, 1 when it failed, 3 when the export gate refused the model, 4 when a pod "
                       "cannot start or run (the reason in one line: image pull errors, unschedulable, an unbound claim, "
                       "OOMKilled, a crash loop) or none started in time; 2: no cluster, no such job, or the API server "
                       "unreachable for longer than --outage-limit. watch deployment/NAME follows a Deployment's rollout "
                       "the same way, watch pod/NAME a pod until it is Ready.",
                       description="Like kubectl, for our jobs: one row per worker pod (index, phase, restarts, node, age), "
                       "the latest epoch and metrics from the chief's log, recent warning events, and a summary. A Job "
                       "that Kueue has not admitted yet (suspended) is QUEUED.")
    p.add_argument("action", choices=("list", "status", "watch", "logs", "delete"))
    p.add_argument("name", nargs="?", default="xray-train", help="job name (default: xray-train)")
    p.add_argument("-n", "--namespace", default="xray")
    p.add_argument("--context", default="", help="the kubeconfig context to use (default: the current one)")
    p.add_argument("-o", "--output", default="table", choices=OUTPUTS,
                   help="status, list: wide adds pod IPs and images; json/yaml print the document of "
                   "docs/monitoring.md for scripts")
    p.add_argument("--index", type=int, default=0, help="logs: the worker index (0 is the chief)")
    p.add_argument("-f", "--follow", action="store_true", help="logs: stream, and go on with the replacement when the "
                   "pod is replaced or its container restarts")
    p.add_argument("-p", "--previous", action="store_true", help="logs: of the instance before the current one (the "
                   "restarted container's last run, or the pod it replaced)")
    p.add_argument("--tail", type=int, default=None, help="logs: last N lines")
    p.add_argument("--interval", type=float, default=10.0, help="watch: seconds between refreshes")
    p.add_argument("--stuck-after", type=float, default=45.0, help="watch: give up (exit 4) when a pod has been unable "
                   "to start or run this many seconds: image pull errors, unschedulable, a volume that does not mount, "
                   "a crash loop (an OOM kill or an image name that can never be pulled: at once)")
    p.add_argument("--start-timeout", type=float, default=900.0, help="watch: give up (exit 4) when no pod has "
                   "started running after this many seconds (a queued Job's wait for admission does not count)")
    p.add_argument("--outage-limit", type=float, default=600.0, help="watch: while the API server does not answer, "
                   "retry with backoff (1 s doubling to 30 s) for up to this many seconds, then exit 2")
    p.set_defaults(run=_run_jobs)


def _run_jobs(args):
    from xray.cluster import kube

    kube.use_context(args.context)
    try:
        if args.action == "list":
            print(kube.list_jobs(args.namespace, args.output))
            return 0
        if args.action == "status":
            _, text = kube.status(args.name, args.namespace, args.output)
            print(text)
            return 0
        if args.action == "watch":
            from xray.cluster import steps

            return steps.watch(args.name, args.namespace,
                               steps.Follow(args.interval, args.stuck_after, args.start_timeout, args.outage_limit),
                               redraw=sys.stdout.isatty())
        if args.action == "logs":
            kube.logs(args.name, args.namespace, args.index, args.follow, args.tail, previous=args.previous)
            return 0
        kube.delete(args.name, args.namespace)
        print(f"deleted job {args.namespace}/{args.name} and its pods")
    except kube.ClusterError as error:
        raise user_error(error) from None
    return 0


def register(sub) -> None:
    for add in (_add_preflight, _add_step, _add_jobs,):
        add(sub)
