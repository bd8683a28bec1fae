"""Job monitoring and cluster rendering on kubernetes client model objects; CLI errors without a cluster."""

import datetime as dt
import json
import os
import re
import subprocess

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from conftest import REPO, run_xray
from xray.trainer.config import preset
from xray.cluster import kube, monitor, preflight, render, watching

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def _pod(index, phase, restarts=0, node="node-a", minutes=5, waiting=None):
    state = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=waiting)) if waiting else None
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"xray-train-{index}-abcde", creation_timestamp=NOW - dt.timedelta(minutes=minutes),
                                     annotations={monitor.INDEX_ANNOTATION: str(index)}),
        spec=client.V1PodSpec(containers=[], node_name=node),
        status=client.V1PodStatus(phase=phase, container_statuses=[client.V1ContainerStatus(
            name="worker", image="x", image_id="", ready=phase == "Running", restart_count=restarts, state=state)]))


def _job(active=0, succeeded=0, failed=0, conditions=()):
    return client.V1Job(metadata=client.V1ObjectMeta(name="xray-train", namespace="xray"),
                        spec=client.V1JobSpec(completions=2, template=client.V1PodTemplateSpec()),
                        status=client.V1JobStatus(active=active, succeeded=succeeded, failed=failed,
                                                  conditions=[client.V1JobCondition(**c) for c in conditions]))


CHIEF_LOG = "\n".join([
    "Epoch 3/50",
    'xray-epoch {"epoch": 2, "time": "2026-11-25T11:50:00Z", "workers": 2, "loss": 0.5, "val_loss": 0.6, "val_auc": 0.8}',
    "noise",
    'xray-epoch {"epoch": 3, "time": "2026-11-25T11:55:00Z", "workers": 2, "loss": 0.4, "auc": 0.9, "val_loss": 0.45, "val_auc": 0.91}',
    "xray-epoch {cut by a restart",
])


def test_rows_are_one_per_worker_in_index_order_with_restarts_and_reasons():
    pods = [_pod(1, "Pending", restarts=3, node=None, waiting="CrashLoopBackOff", minutes=90), _pod(0, "Running", minutes=2)]
    rows = monitor.pod_rows(pods, NOW)
    assert [(r["index"], r["phase"], r["restarts"], r["node"], r["age"]) for r in rows] == [
        ("0", "Running", 0, "node-a", "2m"), ("1", "Pending", 3, "-", "1h")]
    assert rows[1]["reason"] == "CrashLoopBackOff"


def test_latest_epoch_is_read_from_the_chief_log():
    epoch = monitor.latest_epoch(CHIEF_LOG)
    assert epoch["epoch"] == 3 and epoch["val_auc"] == 0.91
    assert monitor.latest_epoch("nothing yet") is None


@pytest.mark.parametrize("job, state, words", [
    (_job(active=2), "running", "2 active"),
    (_job(succeeded=2, conditions=[{"type": "Complete", "status": "True"}]), "succeeded", "completed 2/2"),
    (_job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                 "message": "Container worker for pod xray/xray-train-0 failed with exit code 2"}]),
     "failed", "exit code 2"),
    (_job(), "pending", "no pod running"),
])
def test_job_summary(job, state, words):
    got_state, explanation = monitor.job_summary(job)
    assert got_state == state and words in explanation


def test_status_text_has_rows_epoch_and_warnings():
    event = client.CoreV1Event(metadata=client.V1ObjectMeta(name="e"), type="Warning", reason="BackOff",
                               message="Back-off restarting failed container", last_timestamp=NOW,
                               involved_object=client.V1ObjectReference(kind="Pod", name="xray-train-1-abcde"))
    text = monitor.format_status(_job(active=2), [_pod(0, "Running"), _pod(1, "Running", restarts=1)], [event], CHIEF_LOG, NOW)
    assert text.splitlines()[0] == "job xray/xray-train: RUNNING (2 active, 0 succeeded, 0 failed pod(s))"
    assert "xray-train-1-abcde" in text and "epoch 3 at 2026-11-25T11:55:00Z on 2 worker(s)" in text
    assert "val_auc=0.9100" in text and "Pod/xray-train-1-abcde: BackOff" in text


def _rendered(out):
    text = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, check=True).stdout
    return list(yaml.safe_load_all(text))


def test_rendered_cluster_run_sets_workers_image_paths_and_the_run_config(tmp_path):
    request = render.RenderRequest("train", "local", "registry.example.com/xray:1.2.3", 4, "gs://bucket/shards",
                                 "gs://bucket/runs/r1", overrides=("train.epochs=20",))
    objects = _rendered(render.render_kustomization(request, tmp_path / "render"))
    (job,) = [o for o in objects if o["kind"] == "Job"]
    maps = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "ConfigMap"}
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/xray:1.2.3"
    assert {"name": "XRAY_NUM_WORKERS", "value": "4"} in container["env"]
    assert maps["xray-train"]["data"]["XRAY_DATA"] == "gs://bucket/shards"
    assert maps["xray-train"]["data"]["XRAY_WORKDIR"] == "gs://bucket/runs/r1"
    # The pods start from the config resolved here: the overlay's preset (demo) with the override.
    assert container["args"][-2:] == ["--config", "/etc/xray/run/config.json"]
    config = json.loads(maps["xray-train-run"]["data"]["config.json"])
    assert config["train"]["epochs"] == 20 and config["model"]["image_size"] == preset("demo").model.image_size
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "run-config"]
    assert volume["configMap"]["name"] == maps["xray-train-run"]["metadata"]["name"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


def test_a_tuned_config_reaches_train_and_tune_pods(tmp_path):
    best = preset("demo").override(["model.dropout1=0.45", "train.learning_rate=0.0003"])
    best.save(str(tmp_path / "best_config.json"))
    request = render.RenderRequest("train", "gpu", "r/xray:1-gpu", 4, config_file=str(tmp_path / "best_config.json"),
                                 overrides=("train.epochs=7",))
    objects = _rendered(render.render_kustomization(request, tmp_path / "train"))
    (run,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("xray-train-run")]
    config = json.loads(run["data"]["config.json"])
    # The file's values, the gpu overlay's own overrides, then OVERRIDES.
    assert (config["model"]["dropout1"], config["train"]["learning_rate"], config["train"]["epochs"]) == (0.45, 3e-4, 7)
    assert config["train"]["mixed_precision"] == "float16" and config["runtime"]["collective"] == "nccl"
    # A config that only exists on the volume goes by path, with the overrides, unvalidated.
    request = render.RenderRequest("tune", "local", "r/xray:1", 2, config_file="/mnt/xray/runs/tune/best_config.json",
                                 overrides=("train.epochs=3",))
    objects = _rendered(render.render_kustomization(request, tmp_path / "tune"))
    for job in [o for o in objects if o["kind"] == "Job"]:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[-3:] == ["--config", "/mnt/xray/runs/tune/best_config.json", "train.epochs=3"]
        assert "--max-trials" in args and "--preset" not in args


def test_queue_deadline_and_node_selector_reach_every_job_of_the_step(tmp_path):
    """QUEUE: each Job of the step is created suspended with Kueue's queue label (Kueue admits a Job's pods all at
    once); DEADLINE bounds the tuner's chief as well as its workers; NODE_SELECTOR reaches every pod template."""
    for component, jobs in (("train", {"xray-train"}), ("tune", {"xray-tune-chief", "xray-tune-workers"})):
        request = render.RenderRequest(component, "gpu", "r/xray:1-gpu", 2, queue="team-a", deadline_s=3600,
                                       node_selector=("cloud.google.com/gke-accelerator=nvidia-l4",))
        objects = [o for o in _rendered(render.render_kustomization(request, tmp_path / component)) if o["kind"] == "Job"]
        assert {o["metadata"]["name"] for o in objects} == jobs
        for job in objects:
            assert job["spec"]["suspend"] is True and job["metadata"]["labels"][monitor.QUEUE_LABEL] == "team-a"
            assert job["spec"]["activeDeadlineSeconds"] == 3600
            assert job["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        plain = [o for o in _rendered(render.render_kustomization(render.RenderRequest(component, image="r/x:1"),
                                                                   tmp_path / f"{component}-plain")) if o["kind"] == "Job"]
        assert all("suspend" not in o["spec"] and "nodeSelector" not in o["spec"]["template"]["spec"] for o in plain)
        assert all(o["spec"]["activeDeadlineSeconds"] == 259200 for o in plain)  # 3 days, chief included
    for bad, message in ((dict(queue="Team A"), "not a LocalQueue name"), (dict(node_selector=("gpu",)), "not key=value"),
                         (dict(component="export", queue="q"), "for the train and tune steps")):
        with pytest.raises(render.RenderError, match=message):
            render.render_kustomization(render.RenderRequest(**{"component": "train", "image": "r/x:1", **bad}),
                                        tmp_path / "bad")


def test_a_suspended_job_is_queued_and_names_its_queue():
    job = _job()
    job.spec.suspend = True
    assert monitor.job_summary(job, [])[0] == "queued"
    job.metadata.labels = {monitor.QUEUE_LABEL: "team-a"}
    state, text = monitor.job_summary(job, [])
    assert state == "queued" and "team-a" in text and "Kueue" in text
    assert format_first_line(job) == "job xray/xray-train: QUEUED (suspended until Kueue admits all its pods at once, " \
                                     "in queue team-a)"
    job.status.conditions = [client.V1JobCondition(type="Complete", status="True")]
    assert monitor.job_summary(job, [])[0] == "succeeded"  # an ended Job is what it ended as


def format_first_line(job) -> str:
    return monitor.format_status(job, [], [], "", now=NOW).splitlines()[0]


def test_watch_waits_on_a_queued_job_without_spending_the_start_timeout(capsys):
    states = iter(["queued"] * 8 + ["running", "succeeded"])
    code = watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None,
                      limits=watching.WatchLimits(stuck_after_s=60, start_timeout_s=0.04),
                      read=lambda name, namespace: (next(states), "table", []))
    assert code == 0, capsys.readouterr().err


def test_watch_rides_out_an_api_server_outage_and_gives_up_after_its_limit(capsys):
    """An unreachable API server (kube.Unreachable) is retried with a growing pause, said on stderr; the watch goes
    on when it answers again, and ends with one line once the outage has lasted --outage-limit."""
    answers = iter([kube.Unreachable("cannot reach the cluster of context c"), kube.Unreachable("cannot reach it"),
                    ("running", "table", []), ("succeeded", "table", [])])

    def read(name, namespace):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None, read=read) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(";")[-1].split(",")[0].strip() for line in err[:2]] == ["retrying in 1 s", "retrying in 2 s"]
    assert err[0].startswith("warning: cannot reach the cluster of context c (unreachable for 0 s")
    assert err[2].startswith("the API server answers again after 3 s")

    def down(name, namespace):
        raise kube.Unreachable("cannot reach the cluster of context c")

    with pytest.raises(kube.ClusterError, match=r"gave up after 0 s \(--outage-limit 0\)"):
        watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None, read=down,
                   limits=watching.WatchLimits(outage_s=0.2))


def test_the_status_document_carries_the_table_s_facts():
    job = _job(active=2)
    job.metadata.labels = {monitor.QUEUE_LABEL: "team-a"}
    pods = [_pod(0, "Running", restarts=1), _pod(1, "Pending", waiting="ImagePullBackOff")]
    doc = monitor.status_document(job, pods, [], CHIEF_LOG, now=NOW)
    assert doc["job"] == {"namespace": "xray", "name": "xray-train", "state": "running",
                          "explanation": "2 active, 0 succeeded, 0 failed pod(s)", "completions": 2, "queue": "team-a"}
    assert [(p["index"], p["phase"], p["restarts"], p["reason"]) for p in doc["pods"]] == [
        ("0", "Running", 1, ""), ("1", "Pending", 0, "ImagePullBackOff")]
    assert doc["epoch"]["epoch"] == 3 and doc["blockers"][0]["reason"] == "ImagePullBackOff"
    json.loads(json.dumps(doc))  # plain JSON, nothing left to a default


def test_the_tuner_step_ends_with_the_side_that_failed(capsys):
    """make tune-cluster follows the chief and the workers: a failed chief ends it at once with 1, named, while the
    workers still run; the step succeeds only once both have."""
    def reader(script):
        steps = {name: iter(states) for name, states in script.items()}
        return lambda name, namespace: (next(steps[name]), f"table of {name}", [])

    both = ("xray-tune-chief", "xray-tune-workers")
    failed = watching.watch(both, "xray", interval_s=0.01, out=lambda *a, **k: None, logs=lambda name, ns: f"log of {name}",
                        read=reader({"xray-tune-chief": ["running", "failed"], "xray-tune-workers": ["running"] * 2}))
    err = capsys.readouterr().err.strip().splitlines()
    assert failed == 1 and err == ["log of xray-tune-chief",
                                   "error: job xray/xray-tune-chief failed (xray-tune-workers running): the step failed"]
    shown = []
    done = watching.watch(both, "xray", interval_s=0.01, out=shown.append,
                      read=reader({"xray-tune-chief": ["running", "running", "succeeded"],
                                   "xray-tune-workers": ["running", "succeeded", "succeeded"]}))
    assert done == 0 and shown.count("table of xray-tune-chief") == 3  # the workers' end alone did not end it


# The fields kustomize reads in a kustomization and in its patches, as its documentation spells them: kustomize parses
# through Go's encoding/json, which would also take "NAME" for "name", so a misspelt key renders the same today and
# breaks with a stricter kustomize. The file is checked against these spellings.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches", "configMapGenerator"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
PATCH_KEYS = {"target", "patch"}
TARGET_KEYS = {"kind", "name"}
GENERATOR_KEYS = {"name", "behavior", "literals", "files"}
API_VERSIONS = {"Job": "batch/v1", "Deployment": "apps/v1"}


def _check_kustomization(out):
    doc = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert set(doc) <= KUSTOMIZATION_KEYS and doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc["kind"] == "Kustomization"
    for image in doc.get("images", []):
        assert set(image) <= IMAGE_KEYS and image.get("newTag", "x") != "", image
    for patch in doc.get("patches", []):
        assert set(patch) == PATCH_KEYS and set(patch["target"]) == TARGET_KEYS, patch
        body = json.loads(patch["patch"])
        if isinstance(body, dict):  # a strategic merge patch: a partial object of the target's kind and name
            assert (body["kind"], body["metadata"]["name"]) == (patch["target"]["kind"], patch["target"]["name"])
            assert body["apiVersion"] == API_VERSIONS[body["kind"]] and set(body) == {"apiVersion", "kind", "metadata",
                                                                                     "spec"}
    for generator in doc.get("configMapGenerator", []):
        assert set(generator) <= GENERATOR_KEYS, generator
    return doc


def test_the_train_pods_mount_the_run_config_read_only_and_the_file_is_the_resolved_config(tmp_path):
    request = render.RenderRequest("train", image="r/xray", workers=2, deadline_s=3600, overrides=("train.epochs=9",))
    out = render.render_kustomization(request, tmp_path / "a" / "b" / "train")  # folders made as needed
    doc = _check_kustomization(out)
    assert doc["images"] == [{"name": "xray", "newName": "r/xray"}]  # no tag given: none set (not an empty one)
    assert [p["target"] for p in doc["patches"]][:3] == [{"kind": "Job", "name": "xray-train"}] * 3
    config, _ = render.resolve_run_config(request, render.kustomize(render.overlay_dir(request)))
    assert (out / "config.json").read_text() == json.dumps(config.to_dict(), indent=2) + "\n"  # readable in the cluster
    objects = _rendered(out)
    (job,) = [o for o in objects if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert pod["containers"][0]["image"] == "r/xray:0.1.0"  # no tag given: the overlay's (the Makefile's TAG default)
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "run-config"]
    assert mount == {"name": "run-config", "mountPath": "/etc/xray/run", "readOnly": True}
    (run,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("xray-train-run-")]
    assert json.loads(run["data"]["config.json"]) == config.to_dict()
    # Rendered again with the config on the volume: the earlier render's config.json is gone with its generator.
    render.render_kustomization(render.RenderRequest("train", image="r/xray", config_file="/mnt/xray/best.json"), out)
    assert not (out / "config.json").exists()
    _check_kustomization(out)
    assert [o for o in _rendered(out) if o["kind"] == "ConfigMap" and "-run-" in o["metadata"]["name"]] == []


def test_every_component_renders_a_kustomization_with_kustomize_s_own_spellings(tmp_path):
    requests = [render.RenderRequest("train", image="r/x:1", workers=4), render.RenderRequest("tune", image="r/x:1", workers=3,
                                                                                     max_trials=5),
                render.RenderRequest("serving", image="r/serving:2.21", replicas=3),
                render.RenderRequest("storage", storage_class="fast"), render.RenderRequest("shards", image="r/x:1", src="/s"),
                render.RenderRequest("export", image="r/x:1", workdir="/w"),
                render.RenderRequest("promote", image="r/x:1", promote=("--label", "stable", "--version", "2"))]
    for request in requests:
        _check_kustomization(render.render_kustomization(request, tmp_path / request.component))
    objects = _rendered(tmp_path / "serving")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "r/serving:2.21"  # TF Serving's image
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3)
    tune = _rendered(tmp_path / "tune")
    (workers,) = [o for o in tune if o["kind"] == "Job" and o["metadata"]["name"] == "xray-tune-workers"]
    assert workers["spec"]["completions"] == workers["spec"]["parallelism"] == 3
    assert _data(tune, "xray-tune")["XRAY_MAX_TRIALS"] == "5"
    assert _data(tune, "xray-tune")["XRAY_WORKDIR"] == "/mnt/xray/runs/tune"  # not given: the overlay's, not emptied
    assert "XRAY_MAX_TRIALS" not in _data(_rendered(tmp_path / "train"), "xray-train")
    assert _data(_rendered(tmp_path / "shards"), "xray-shards")["XRAY_SRC"] == "/s"
    assert _data(_rendered(tmp_path / "export"), "xray-export")["XRAY_WORKDIR"] == "/w"
    promoted = _data(_rendered(tmp_path / "promote"), "xray-promote")
    assert promoted["XRAY_PROMOTE"] == "--label stable --version 2"
    assert promoted["XRAY_WAIT"] == "600" and promoted.get("XRAY_REPLICA_NAMES") != ""  # not given: the manifest's
    (claim,) = [o for o in _rendered(tmp_path / "storage") if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["storageClassName"] == "fast"
    promote = render.RenderRequest("promote", image="r/x:1", promote=("--label", "canary", "--rollback"), promote_wait_s=120,
                                 replica_names="10.0.0.1=xray-serving-a")
    data = _data(_rendered(render.render_kustomization(promote, tmp_path / "promote2")), "xray-promote")
    assert (data["XRAY_PROMOTE"], data["XRAY_WAIT"], data["XRAY_REPLICA_NAMES"]) == (
        "--label canary --rollback", "120", "10.0.0.1=xray-serving-a")
    serving = render.RenderRequest("serving", replicas=1)
    (hpa,) = [o for o in _rendered(render.render_kustomization(serving, tmp_path / "serving1"))
              if o["kind"] == "HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)  # room for one more


def _data(objects, prefix):
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    return config_map.get("data", {})


@pytest.mark.parametrize("image, expected", [("registry.example.com:5000/xray", ("registry.example.com:5000/xray", "")),
                                             ("registry.example.com:5000/team/xray:0.1", ("registry.example.com:5000/team/xray", "0.1")),
                                             ("xray:dev", ("xray", "dev")), ("xray", ("xray", ""))])
def test_an_image_reference_splits_at_the_tag_not_at_the_registry_port(image, expected):
    assert render.split_image(image) == expected


def test_an_unknown_overlay_names_the_overlays_and_components_there_are():
    with pytest.raises(render.RenderError) as caught:
        render.overlay_dir(render.RenderRequest("train", overlay="staging"))
    overlays = sorted(p.name for p in (render.MANIFESTS / "overlays").iterdir())
    components = sorted(p.name for p in (render.MANIFESTS / "overlays" / "local").iterdir() if p.name != "namespace")
    assert str(caught.value) == (f"no overlay xray/k8s/overlays/staging/train; overlays: {', '.join(overlays)}; "
                                 f"components: {', '.join(components)}")
    assert "namespace" not in components and "train" in components


@pytest.mark.parametrize("request_, message", [
    (render.RenderRequest("train", workers=3, image="r/x:1"), "train.batch_size=16 does not split evenly over 3 workers"),
    (render.RenderRequest("train", image="r/x:1", overrides=("train.epochs=0",)), "train.epochs=0 is invalid"),
    (render.RenderRequest("train", image="r/x:1", config_file="/nope/best.json"), "CONFIG=/nope/best.json: no such file"),
    (render.RenderRequest("train", image=":0.1.0"), "set the project image (got ':0.1.0')"),
    (render.RenderRequest("export", image="xray:0.1.0"), "set the project image"),
    (render.RenderRequest("train", overlay="staging", image="r/x:1"), "no overlay xray/k8s/overlays/staging/train"),
])
def test_preflight_refuses_what_the_cluster_would_retry_or_reject(tmp_path, request_, message):
    with pytest.raises(kube.ClusterError, match=re.escape(message)):
        preflight.check_and_render(request_, tmp_path, check_cluster=False)


def test_storage_class_and_component_renders(tmp_path):
    objects = _rendered(render.render_kustomization(render.RenderRequest("storage", "gpu", storage_class="filestore-rwx"),
                                                  tmp_path / "storage"))
    (claim,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["storageClassName"] == "filestore-rwx" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    objects = _rendered(render.render_kustomization(render.RenderRequest("shards", image="r/x:1", src="/mnt/xray/incoming/k",
                                                                     data="/mnt/xray/shards-k"), tmp_path / "shards"))
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config["data"]["XRAY_SRC"] == "/mnt/xray/incoming/k" and config["data"]["XRAY_DATA"] == "/mnt/xray/shards-k"
    objects = _rendered(render.render_kustomization(render.RenderRequest("export", image="r/x:1", workdir="/mnt/xray/runs/r2"),
                                                  tmp_path / "export"))
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]


def _train_job(args, env_from=None):
    container = {"name": "worker", "args": args, **({"envFrom": env_from} if env_from is not None else {})}
    return {"kind": "Job", "metadata": {"name": "xray-train"}, "spec": {"template": {"spec": {"containers": [container]}}}}


def test_the_overlay_s_preset_comes_from_the_args_or_the_config_map_the_container_reads():
    from xray.cluster.render import container_of, overlay_run_args

    args = ["-m", "xray", "train", "--preset", "demo", "--max-trials", "4", "--flag=x", "train.epochs=3", "model.l2=0"]
    assert overlay_run_args([_train_job(args)], "Job", "xray-train", "worker") == (
        ["-m", "xray", "train", "--max-trials", "4", "--flag=x"], "demo", ["train.epochs=3", "model.l2=0"])
    maps = [{"kind": "ConfigMap", "metadata": {"name": "empty"}},
            {"kind": "ConfigMap", "metadata": {"name": "xray-train"}, "data": {"XRAY_PRESET": "team"}}]
    env_from = [{"secretRef": {"name": "token"}}, {"configMapRef": {"name": "made-elsewhere"}},
                {"configMapRef": {"name": "empty"}}, {"configMapRef": {"name": "xray-train"}}]
    job = _train_job(["train", "--preset", "$(XRAY_PRESET)"], env_from)
    assert overlay_run_args([*maps, job], "Job", "xray-train", "worker") == (["train"], "team", [])
    for unset in (_train_job(["train", "--preset", "$(XRAY_PRESET)"]), _train_job(["train", "--preset", "$(XRAY_PRESET)"], env_from[:3])):
        with pytest.raises(render.RenderError) as caught:
            overlay_run_args([*maps, unset], "Job", "xray-train", "worker")
        assert str(caught.value) == ("the overlay's Job xray-train passes --preset $(XRAY_PRESET), but no ConfigMap its "
                                     "container reads sets XRAY_PRESET")
    with pytest.raises(render.RenderError) as caught:
        container_of([{"kind": "Deployment", "metadata": {"name": "xray-train"}}, *maps], "Job", "xray-train", "worker")
    assert str(caught.value) == "the overlay has no Job xray-train"


def test_kustomize_failing_is_one_line_with_kubectl_s_reason(tmp_path):
    from xray.cluster.render import kustomize

    with pytest.raises(render.RenderError) as caught:
        kustomize(tmp_path / "nothing")
    assert str(caught.value).startswith(f"kubectl kustomize {tmp_path / 'nothing'} failed: must build at directory: ")
    assert str(caught.value).endswith("no such file or directory") and "\n" not in str(caught.value)


def test_a_config_file_that_is_not_here_nor_on_the_volume_is_refused_with_both_ways_to_give_it(tmp_path):
    from xray.cluster.render import resolve_run_config

    objects = [_train_job(["train", "--preset", "demo"])]
    request = render.RenderRequest("train", config_file=str(tmp_path / "best_config.json"))
    with pytest.raises(render.RenderError) as caught:
        resolve_run_config(request, objects)
    assert str(caught.value) == (f"CONFIG={tmp_path / 'best_config.json'}: no such file here; give a local config.json "
                                 "(e.g. build/tune/best_config.json) or a path on the volume as the pods see it "
                                 "(/mnt/xray/...)")
    assert resolve_run_config(render.RenderRequest("train", config_file="/mnt/xray/runs/t/best_config.json",
                                                 overrides=("train.epochs=2",)), objects) == (None, ["train.epochs=2"])


def test_pin_claim_keeps_the_existing_claim_as_it_is_and_replaces_an_earlier_pin(tmp_path):
    """What `make volume` applies when the claim already exists (a claim's class, modes and size cannot change):
    the rendered storage step, pinned to the live values, whichever the request asked for."""
    from xray.cluster.render import pin_claim

    out = render.render_kustomization(render.RenderRequest("storage", "gpu", storage_class="filestore-rwx"), tmp_path / "s")
    rendered = list(yaml.safe_load((out / "kustomization.yaml").read_text()))
    pin_claim(out, "standard", ("ReadWriteOnce",), "7Gi")
    assert list(yaml.safe_load((out / "kustomization.yaml").read_text())) == rendered  # the file's order kept
    pin_claim(out, "premium-rwx", ("ReadWriteMany", "ReadOnlyMany"), "1Ti")  # a second pin replaces the first
    assert (out / "kustomization.yaml").read_text().startswith("# Written by xray preflight; do not edit (re-run it).\n")
    (claim,) = [o for o in _rendered(out) if o["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "xray-data"
    assert claim["spec"]["storageClassName"] == "premium-rwx"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany", "ReadOnlyMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"
    doc = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert [p["target"] for p in doc["patches"]] == [{"kind": "PersistentVolumeClaim", "name": "xray-data"}]
    # A claim bound without a class (the cluster had no default): none is added, the overlay's stays unset.
    out = render.render_kustomization(render.RenderRequest("storage", "local"), tmp_path / "l")
    pin_claim(out, "", ("ReadWriteOnce",), "5Gi")
    (claim,) = [o for o in _rendered(out) if o["kind"] == "PersistentVolumeClaim"]
    assert "storageClassName" not in claim["spec"] and claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    # Other patches of the step are kept.
    doc = yaml.safe_load((out / "kustomization.yaml").read_text())
    doc["patches"].insert(0, {"target": {"kind": "Namespace"}, "patch": "[]"})
    (out / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    pin_claim(out, "", ("ReadWriteOnce",), "6Gi")
    doc = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert [p["target"].get("kind") for p in doc["patches"]] == ["Namespace", "PersistentVolumeClaim"]


def test_promote_and_serving_replicas_render_through_the_cli(tmp_path):
    """What `make promote` and `make deploy-serving REPLICAS=N` hand to kubectl, through `xray preflight`."""
    from conftest import run_xray

    run_xray("preflight", "--component", "promote", "--image", "r/xray:1", "--label", "stable", "--from-label",
             "canary", "--wait", "120", "--out", tmp_path / "promote", "--offline")
    objects = _rendered(tmp_path / "promote")
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config["data"]["XRAY_PROMOTE"] == "--label stable --from-label canary" and config["data"]["XRAY_WAIT"] == "120"
    (job,) = [o for o in objects if o["kind"] == "Job"]
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["xray.io/serving-client"] == "true" and job["spec"]["backoffLimit"] == 0
    assert pod["spec"]["containers"][0]["image"] == "r/xray:1"
    assert "--service xray-serving-replicas" in pod["spec"]["containers"][0]["args"][0]
    for args, words in ((["--version", "2"], "set LABEL"), (["--label", "beta", "--version", "2"], "LABEL=beta"),
                        (["--label", "stable", "--version", "x"], "VERSION=x"),
                        (["--label", "stable", "--version", "2", "--rollback"], "one of VERSION")):
        result = run_xray("preflight", "--component", "promote", "--image", "r/xray:1", *args, "--out", tmp_path / "p2",
                          "--offline", check=False)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    run_xray("preflight", "--component", "serving", "--replicas", "3", "--out", tmp_path / "serving", "--offline")
    objects = _rendered(tmp_path / "serving")
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 3) and "replicas" not in deployment["spec"]
    (replicas,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "xray-serving-replicas"]
    assert replicas["spec"]["clusterIP"] == "None" and replicas["spec"]["publishNotReadyAddresses"] is True


def test_make_picks_the_gpu_image_and_refuses_a_missing_image():
    dry = subprocess.run(["make", "-n", "train-cluster", "IMAGE=r/xray", "TAG=0.2.0", "OVERLAY=gpu"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "--image r/xray:0.2.0-gpu" in dry
    dry = subprocess.run(["make", "-n", "train-cluster", "IMAGE=r/xray", "TAG=0.2.0", "CONFIG=b.json",
                          "OVERRIDES=train.epochs=2 model.weights=/mnt/xray/w.h5"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "--image r/xray:0.2.0 " in dry and '--config "b.json"' in dry and "train.epochs=2 model.weights=/mnt/xray/w.h5" in dry
    missing = subprocess.run(["make", "train-cluster"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and "set IMAGE to the project image you pushed" in missing.stderr
    assert "xray cluster" not in missing.stdout  # refused before anything ran


def test_preflight_refuses_a_missing_image_and_too_few_shards(tmp_path, shards_dir):
    with pytest.raises(kube.ClusterError, match="set the project image"):
        preflight.check_and_render(render.RenderRequest("train", image=""), tmp_path, check_cluster=False)
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    too_many = len(manifest["shards"]["train"]) + 1
    with pytest.raises(kube.ClusterError, match=f"for {too_many} workers"):
        preflight.check_and_render(render.RenderRequest("train", image="r/xray:1", workers=too_many, data=str(shards_dir)), tmp_path,
                       check_cluster=False)
    warnings = preflight.check_and_render(render.RenderRequest("train", image="r/xray:1", workers=2, data="/mnt/xray/shards"),
                              tmp_path, check_cluster=False)
    assert "not readable from here" in warnings[0] and (tmp_path / "kustomization.yaml").exists()


def test_cli_without_a_cluster_says_what_to_do(tmp_path):
    empty = tmp_path / "none"
    result = run_xray("jobs", "status", "xray-train", env={"KUBECONFIG": str(empty)}, check=False)
    assert result.returncode == 2 and "no Kubernetes cluster configured" in result.stderr
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}]}))
    result = run_xray("jobs", "status", "xray-train", env={"KUBECONFIG": str(kubeconfig)}, check=False, timeout=120)
    assert result.returncode == 2 and "cannot reach the cluster of context dead" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_shows_the_newest_pod_per_index_with_throughput_and_eta():
    old = _pod(1, "Failed", minutes=30)
    old.metadata.name = "xray-train-1-old"
    old.status.container_statuses[0].state = client.V1ContainerState(
        terminated=client.V1ContainerStateTerminated(exit_code=75, reason="Error"))
    new = _pod(1, "Running", minutes=2)
    rows = monitor.pod_rows([_pod(0, "Running"), old, new], NOW)
    assert [(r["index"], r["pod"], r["phase"], r["restarts"]) for r in rows] == [
        ("0", "xray-train-0-abcde", "Running", 0), ("1", "xray-train-1-abcde", "Running", 1)]
    epoch = {"epoch": 3, "seconds": 120.0, "images": 5216, "epochs": 50}
    assert monitor.progress(epoch) == "43.5 images/s, ETA <= 1h34m for the 47 epoch(s) left of 50"
    assert monitor.progress({"epoch": 50, "seconds": 10, "images": 100, "epochs": 50}) == "10.0 images/s"


def test_an_export_refused_by_the_gate_is_a_refusal_not_a_crash():
    job = _job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                      "message": "Container export for pod xray/xray-export-x failed with exit code 3 "
                                                 "matching FailJob rule at index 0"}])
    job.metadata.name = "xray-export"
    state, explanation = monitor.job_summary(job)
    assert state == "refused" and "export gate refused the model" in explanation
    assert watching.WATCH_EXIT[state] == 3


# ----------------------------------------------------------------------------------------------------
# Why pods do not run: named from the pod's status and events; Pending is never RUNNING.
# ----------------------------------------------------------------------------------------------------


def _stuck_pod(index, waiting=None, message="", unschedulable=None, terminated=None, phase="Pending"):
    pod = _pod(index, phase, node=None if unschedulable else "xray-node", waiting=waiting)
    if waiting:
        pod.status.container_statuses[0].state.waiting.message = message
    if unschedulable:
        pod.status.conditions = [client.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                                       message=unschedulable)]
    if terminated:
        pod.status.container_statuses[0].last_state = client.V1ContainerState(
            terminated=client.V1ContainerStateTerminated(reason=terminated, exit_code=137))
        pod.spec.containers = [client.V1Container(name="worker", resources=client.V1ResourceRequirements(
            limits={"memory": "6Gi"}))]
    return pod


def test_active_pods_that_never_started_are_pending_not_running():
    pods = [_stuck_pod(0, waiting="ContainerCreating"), _stuck_pod(1, waiting="ContainerCreating")]
    state, explanation = monitor.job_summary(_job(active=2), pods)
    assert state == "pending" and "no pod running yet" in explanation
    assert monitor.job_summary(_job(active=2), [_pod(0, "Running"), _stuck_pod(1, waiting="ContainerCreating")])[0] == "running"


@pytest.mark.parametrize("pod, reason, words", [
    (_stuck_pod(0, waiting="ErrImagePull", message='failed to pull "registry.example.com/xray:0.1.0": not found'),
     "ErrImagePull", "registry.example.com/xray:0.1.0"),
    (_stuck_pod(0, waiting="ErrImageNeverPull", message="Container image is not present with pull policy of Never"),
     "ErrImageNeverPull", "pull policy of Never"),
    (_stuck_pod(0, unschedulable="0/3 nodes are available: 1 Insufficient cpu"), "FailedScheduling", "Insufficient cpu"),
    (_stuck_pod(0, unschedulable='pod has unbound immediate PersistentVolumeClaims'), "FailedScheduling",
     "unbound immediate PersistentVolumeClaims"),
    (_stuck_pod(0, waiting="CrashLoopBackOff", message="back-off 40s restarting failed container", phase="Running"),
     "CrashLoopBackOff", "back-off"),
    (_stuck_pod(0, terminated="OOMKilled", phase="Running"), "OOMKilled", "limit 6Gi"),
])
def test_blockers_name_the_reason(pod, reason, words):
    (blocker,) = monitor.blockers([pod], [])
    assert blocker.reason == reason and words in blocker.message
    assert blocker.line().startswith(f"pod {pod.metadata.name}: {reason}: ")
    text = monitor.format_status(_job(active=1), [pod], [], "", NOW)
    assert "not running:" in text and reason in text


def test_a_failed_mount_event_is_a_blocker_and_ready_pods_have_none():
    event = client.CoreV1Event(metadata=client.V1ObjectMeta(name="e"), type="Warning", reason="FailedMount",
                               message="MountVolume.SetUp failed for volume \"xray-data\"", last_timestamp=NOW,
                               involved_object=client.V1ObjectReference(kind="Pod", name="xray-train-0-abcde"))
    (blocker,) = monitor.blockers([_stuck_pod(0, waiting="ContainerCreating")], [event])
    assert blocker.reason == "FailedMount" and "xray-data" in blocker.message
    assert monitor.blockers([_pod(0, "Running"), _pod(1, "Succeeded")], []) == []


def test_watch_gives_up_with_exit_4_and_one_line(capsys):
    """A pod stuck in ImagePullBackOff: watch prints its table until stuck_after has passed, then exits 4."""
    pod = _stuck_pod(0, waiting="ImagePullBackOff", message="Back-off pulling image")
    calls = []

    def fake_status(name, namespace):
        calls.append(name)
        return "pending", "table", monitor.blockers([pod], [])

    code = watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None,
                      limits=watching.WatchLimits(stuck_after_s=0.05, start_timeout_s=60), read=fake_status)
    assert code == watching.WATCH_STUCK and len(calls) >= 2  # not at the first sight: a pull may still succeed
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: job xray/xray-train cannot run: pod {pod.metadata.name}: ImagePullBackOff: Back-off pulling image"]
    # An image name that can never be pulled ends it at once.
    pod = _stuck_pod(0, waiting="ErrImageNeverPull", message="never")
    calls.clear()
    assert watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None,
                      limits=watching.WatchLimits(stuck_after_s=60, start_timeout_s=60), read=fake_status) == watching.WATCH_STUCK
    assert len(calls) == 1


def test_watch_gives_up_when_nothing_starts(capsys):
    code = watching.watch("xray-train", "xray", interval_s=0.01, out=lambda *a, **k: None,
                      limits=watching.WatchLimits(stuck_after_s=60, start_timeout_s=0.05),
                      read=lambda name, namespace: ("pending", "table", []))
    assert code == watching.WATCH_STUCK and "no pod started in 0 s" in capsys.readouterr().err


def test_watch_prints_why_a_failed_job_failed(capsys):
    """On a failed job, watch prints the failed pods' last log lines (kube.failure_logs) on stderr and exits 1."""
    asked = []
    code = watching.watch("xray-export", "xray", interval_s=0.01, out=lambda *a, **k: None,
                      read=lambda name, namespace: ("failed", "table", []),
                      logs=lambda name, namespace: asked.append((name, namespace)) or "pod p (exit 2): no model")
    assert code == 1 and asked == [("xray-export", "xray")]
    assert capsys.readouterr().err.strip() == "pod p (exit 2): no model"


def test_xray_cluster_takes_overrides_after_its_options_and_renders_before_it_needs_a_cluster(tmp_path):
    """`xray cluster tune ... train.epochs=1`, the order make tune-cluster writes (options, then OVERRIDES): the
    overrides reach the rendered config, and without a reachable cluster the step stops in one line before anything
    is applied. (Once the step was a positional beside the overrides, argparse refused `train.epochs=1`.)"""
    from conftest import run_xray

    out = tmp_path / "tune"
    result = run_xray("cluster", "tune", "--overlay", "local", "--namespace", "x", "--interval", "2", "--image",
                      "r/xray:1", "--workers", "2", "--out", out, "--max-trials", "2", "train.epochs=1",
                      env={"KUBECONFIG": str(tmp_path / "none")}, check=False)
    assert result.returncode == 2 and "unrecognized arguments" not in result.stderr, result.stderr
    assert result.stderr.startswith("xray cluster: error: no Kubernetes cluster configured"), result.stderr
    (config,) = [o for o in _rendered(out) if o["kind"] == "ConfigMap" and "config.json" in o.get("data", {})]
    assert json.loads(config["data"]["config.json"])["train"]["epochs"] == 1


def test_data_and_models_in_a_bucket_render_up_to_the_read(tmp_path):
    """make data-cluster SRC=gs://... sends nothing: the shards Job reads the bucket (as SERVICE_ACCOUNT, for
    Workload Identity); export writes the versions to CLUSTER_MODEL_BASE=gs://..., TF Serving reads its models.config
    and versions there (no volume mount), promote moves labels there. Everything up to the read: TensorFlow's GCS
    filesystem has no endpoint setting an emulator could take (docs/kubernetes.md)."""
    from conftest import run_xray

    out = tmp_path / "data"
    result = run_xray("cluster", "data", "--upload", "gs://bucket/chest_xray", "--service-account", "xray-gcs",
                      "--image", "r/xray:1", "--image-pull-secret", "regcred", "--out", out,
                      env={"KUBECONFIG": str(tmp_path / "none")}, check=False)
    assert result.returncode == 2 and "no Kubernetes cluster configured" in result.stderr, result.stderr
    assert not (out / "upload").exists()  # no uploader pod: nothing goes through kubectl exec
    objects = _rendered(out / "shards")
    (job,) = [o for o in objects if o["kind"] == "Job"]
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "xray-gcs" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert "XRAY_SRC=gs://bucket/chest_xray" in _literals(objects, "xray-shards")

    bucket = "gs://bucket/models"
    export = _rendered(render.render_kustomization(render.RenderRequest("export", image="r/x:1", model_base=bucket),
                                                   tmp_path / "export"))
    assert f"XRAY_MODEL_BASE={bucket}" in _literals(export, "xray-export")
    promote = _rendered(render.render_kustomization(render.RenderRequest(
        "promote", image="r/x:1", model_base=bucket, promote=("--label", "stable", "--version", "1")), tmp_path / "p"))
    assert f"XRAY_MODEL_BASE={bucket}" in _literals(promote, "xray-promote")
    serving = _rendered(render.render_kustomization(render.RenderRequest("serving", model_base=bucket),
                                                    tmp_path / "serving"))
    (deployment,) = [o for o in serving if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert f"--model_config_file={bucket}/models.config" in container["args"]
    assert "/models/xray" not in [m["mountPath"] for m in container["volumeMounts"]]
    assert "models" not in [v["name"] for v in pod["volumes"]] and {"config", "tmp"} <= {v["name"] for v in pod["volumes"]}
    volume = _rendered(render.render_kustomization(render.RenderRequest("serving"), tmp_path / "serving-volume"))
    (deployment,) = [o for o in volume if o["kind"] == "Deployment"]
    assert "--model_config_file=/models/xray/models.config" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_an_image_pinned_by_digest_is_what_every_pod_runs_and_a_tag_is_pulled_again(tmp_path):
    """make push records IMAGE@sha256:...; the steps then run that digest (IfNotPresent: it cannot change). A tag on a
    real cluster is pulled at every pod start (Always), so a tag pushed again is not left running old code on nodes
    that had it; the local overlay's images are loaded into the node (no registry): IfNotPresent."""
    digest = "sha256:" + "ab" * 32
    for component in ("train", "tune", "export", "upload", "shards", "promote", "tensorboard"):
        for overlay, image, policy, shown in (("gpu", f"r.example/xray@{digest}", "IfNotPresent", f"r.example/xray@{digest}"),
                                              ("gpu", "r.example/xray:1-gpu", "Always", "r.example/xray:1-gpu"),
                                              ("local", "r.example/xray:dev", "IfNotPresent", "r.example/xray:dev")):
            request = render.RenderRequest(component, overlay, image, promote=("--label", "stable", "--version", "1"))
            objects = _rendered(render.render_kustomization(request, tmp_path / f"{component}-{overlay}-{policy}"))
            containers = [c for o in objects if o["kind"] in ("Job", "Deployment", "Pod")
                          for c in (o["spec"]["template"]["spec"] if o["kind"] != "Pod" else o["spec"])["containers"]]
            assert containers and all((c["image"], c["imagePullPolicy"]) == (shown, policy) for c in containers), \
                (component, overlay, [(c["image"], c.get("imagePullPolicy")) for c in containers])
    serving = _rendered(render.render_kustomization(render.RenderRequest("serving", "gpu", f"tensorflow/serving@{digest}"),
                                                    tmp_path / "serving"))
    (deployment,) = [o for o in serving if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"tensorflow/serving@{digest}"


def test_make_push_records_the_digest_and_the_steps_run_it(tmp_path):
    """STAND-IN for docker (no registry can be reached here): a `docker` script first on PATH that answers push and
    inspect as Docker does (RepoDigests, one per registry the image was pushed to). make push records the digest of
    the pushed repository; make train-cluster (and every step) then passes IMAGE@sha256:... to xray cluster."""
    digest = "sha256:" + "cd" * 32
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/docker.calls
case "$1" in
  push) echo "1: Pushed";;
  pull) echo "Status: Downloaded newer image for $2";;
  inspect) printf 'mirror.example/xray@sha256:{"ef" * 32}\nregistry.example.com/xray@{digest}\ntensorflow/serving@{digest}\n';;
esac
""")
    (bin_dir / "docker").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    common = ["IMAGE=registry.example.com/xray", "TAG=1", f"BUILD={tmp_path / 'build'}"]
    push = subprocess.run(["make", "push", *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    assert (tmp_path / "docker.calls").read_text().splitlines()[0] == "push registry.example.com/xray:1"
    record = tmp_path / "build" / "digests" / "registry.example.com_xray_1"
    assert record.read_text().strip() == f"registry.example.com/xray@{digest}"
    assert f"recorded registry.example.com/xray@{digest}" in push.stdout
    plan = subprocess.run(["make", "-n", "train-cluster", *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert f"--image registry.example.com/xray@{digest}" in plan.stdout, plan.stdout
    record.unlink()  # no record: the tag, as before
    plan = subprocess.run(["make", "-n", "train-cluster", *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert "--image registry.example.com/xray:1 " in plan.stdout, plan.stdout
    # The TF Serving image, pinned the same way for make deploy-serving.
    pin = subprocess.run(["make", "pin-serving", "OVERLAY=gpu", *common], cwd=REPO, env=env, capture_output=True, text=True)
    assert pin.returncode == 0 and "pull tensorflow/serving:2.21.0-gpu" in (tmp_path / "docker.calls").read_text(), pin.stderr
    plan = subprocess.run(["make", "-n", "deploy-serving", "OVERLAY=gpu", *common], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert f"--image tensorflow/serving@{digest}" in plan.stdout, plan.stdout


def test_the_makefile_and_the_overlays_pin_the_same_tf_serving():
    """make serve / pin-serving name TF Serving once (TFSERVING_IMAGE); the overlays pin the same tag, -gpu on gpu."""
    (image,) = re.findall(r"^TFSERVING_IMAGE = (\S+)$", (REPO / "Makefile").read_text(), re.M)
    name, tag = image.rsplit(":", 1)
    for overlay, suffix in (("local", ""), ("gpu", "-gpu")):
        kustomization = yaml.safe_load((REPO / "xray" / "k8s" / "overlays" / overlay / "serving" /
                                        "kustomization.yaml").read_text())
        (pin,) = [i for i in kustomization["images"] if i["name"] == name]
        assert pin["newTag"] == tag + suffix, overlay


def _literals(objects, name: str) -> set[str]:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(name + "-")
                 and "config.json" not in o.get("data", {})]
    return {f"{k}={v}" for k, v in config["data"].items()}


def test_load_clients_reads_kubeconfig_as_it_is_when_called(tmp_path, monkeypatch):
    """The kubernetes client reads KUBECONFIG once, at its first import; a caller (a test, a script running several
    clusters' steps) that points KUBECONFIG elsewhere afterwards still gets that cluster. (Seen: steps.run from a
    test after another test had imported the client failed with 'no Kubernetes cluster configured'.)"""
    import kubernetes.config  # noqa: F401  (imported before KUBECONFIG changes, as in a long-lived process)

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "later",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "later", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert kube.load_clients()[2] == "later"
