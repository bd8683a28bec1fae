"""Renders one step of the cluster flow: a kustomization in build/k8s/<component>/ on top of
xray/k8s/overlays/<overlay>/<component>, with the run's values (image, worker count, paths, storage class,
and for train/tune the run config the pods start from).

The run config is resolved here, on the workstation, so that a bad one is refused before anything is
applied: the overlay's own preset and overrides (read from the rendered overlay), or a config file
(CONFIG, e.g. the tuner's best_config.json), plus key=value overrides (OVERRIDES). It reaches the pods as
config.json in a generated ConfigMap; a config file that only exists on the volume (a path as the pods
see it) is passed to them by path instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

from xray.cluster.monitor import QUEUE_LABEL

# The kustomize bases, overlays and components ship inside the package (package data), so an installed xray
# renders the same manifests as a clone.
MANIFESTS = Path(__file__).resolve().parents[1] / "k8s"
# component -> (the Jobs/Deployments/Pods it runs, with their container); storage has none.
WORKLOADS = {
    "storage": [], "upload": [("Pod", "xray-upload", "upload")],
    "train": [("Job", "xray-train", "worker")],
    "tune": [("Job", "xray-tune-chief", "chief"), ("Job", "xray-tune-workers", "worker")],
    "serving": [("Deployment", "xray-serving", "tfserving")],
    "shards": [("Job", "xray-shards", "shards")],
    "export": [("Job", "xray-export", "export")],
    "tensorboard": [("Deployment", "xray-tensorboard", "tensorboard")],
    "promote": [("Job", "xray-promote", "promote")],
}
PROJECT_IMAGE = {"train", "tune", "shards", "export", "upload", "tensorboard", "promote"}
RUN_CONFIG_MOUNT = "/etc/xray/run"


class RenderError(Exception):
    """A value that cannot be rendered; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class RenderRequest:
    component: str  # one of WORKLOADS
    overlay: str = "local"
    image: str = ""  # registry/name:tag of the project image (serving: of TF Serving; default the overlay's)
    workers: int = 2  # training workers, or tuning trial workers
    data: str = "/mnt/xray/shards"
    workdir: str = ""  # train/tune: the run directory; export: the run to export
    namespace: str = "xray"
    config_file: str = ""  # train/tune: a config.json to start from (local file, or a path in the pods)
    overrides: tuple[str, ...] = ()  # train/tune: key=value
    storage_class: str = ""  # storage: the claim's storage class (default: the cluster's default class)
    src: str = ""  # shards: the image folder on the volume
    deadline_s: int = 0  # train/tune: activeDeadlineSeconds of each Job (0: the manifest's)
    max_trials: int = 0  # tune: the search's trial count (0: the overlay's)
    replicas: int = 0  # serving: the autoscaler's minimum (0: the overlay's)
    promote: tuple[str, ...] = ()  # promote: xray promote's arguments (--label L and --version N | --from-label | --rollback)
    promote_wait_s: int = 0  # promote: seconds for every replica to load the version (0: the manifest's)
    replica_names: str = ""  # promote: "IP=pod,..." so that messages name pods (found here, before the Job runs)
    queue: str = ""  # train/tune: a Kueue LocalQueue; the Jobs are created suspended with its label (gang admission)
    model_base: str = ""  # export/serving/promote: where versions live (default the volume's; gs://bucket/models: read
    #                       there by TF Serving directly)
    service_account: str = ""  # every pod of the step runs as it (GKE Workload Identity: bucket access)
    image_pull_secret: str = ""  # a docker-registry Secret for a private registry
    node_selector: tuple[str, ...] = ()  # key=value labels every pod of the step must run on (GPU node pools)


def split_image(image: str) -> tuple[str, str]:
    """registry:port/name:tag -> (registry:port/name, tag); name@sha256:... -> (name, "sha256:..."); the tag is ""
    when there is none."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, digest
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, ""


def overlay_dir(request: RenderRequest) -> Path:
    overlay = MANIFESTS / "overlays" / request.overlay / request.component
    if not overlay.is_dir():
        if not (MANIFESTS / "overlays").is_dir():
            raise RenderError(f"the package's manifests are missing ({MANIFESTS / 'overlays'}): reinstall xray-classifier "
                              "from a clone or its wheel")
        overlays = sorted(p.name for p in (MANIFESTS / "overlays").iterdir())
        components = sorted(p.name for p in (MANIFESTS / "overlays" / overlays[0]).iterdir() if p.name != "namespace")
        raise RenderError(f"no overlay xray/k8s/overlays/{request.overlay}/{request.component}; overlays: {', '.join(overlays)}; "
                          f"components: {', '.join(components)}")
    return overlay


def kustomize(path: Path) -> list[dict]:
    import yaml

    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        # kubectl logs the failure as `E... run.go:72] "command failed" err="<the reason>"`: the reason is the line.
        reason = re.sub(r'^.*\berr="(.*)"$', r"\1", lines[-1])
        raise RenderError(f"kubectl kustomize {path} failed: {reason}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def container_of(objects: list[dict], kind: str, name: str, container: str) -> dict:
    """The spec of ``container`` in the ``kind`` ``name`` among rendered objects; RenderError when there is none."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    raise RenderError(f"the overlay has no {kind} {name}")


def overlay_run_args(objects: list[dict], kind: str, name: str, container: str) -> tuple[list[str], str, list[str]]:
    """(the args before --preset, the overlay's preset, the overrides it adds) of a train/tune container."""
    spec = container_of(objects, kind, name, container)
    args = list(spec["args"])
    position = args.index("--preset")
    preset = args[position + 1]
    if preset.startswith("$("):
        variable = preset[2:-1]
        maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
        sources = [s["configMapRef"]["name"] for s in spec.get("envFrom", []) if "configMapRef" in s]
        preset = next((maps[s][variable] for s in sources if variable in maps.get(s, {})), None)
        if preset is None:
            raise RenderError(f"the overlay's {kind} {name} passes --preset $({variable}), but no ConfigMap its "
                              f"container reads sets {variable}")
    rest = args[position + 2:]
    # Overrides are the key=value words; the other options (tune: --max-trials ...) stay as they are.
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    options = [a for a in rest if a not in overrides]
    return args[:position] + options, preset, overrides


def resolve_run_config(request: RenderRequest, objects: list[dict]):
    """The Config the pods will run (validated), or None when it lives on the volume; plus the overlay's args."""
    from xray.trainer.config import Config, ConfigError, preset

    kind, name, container = WORKLOADS[request.component][-1]
    _, overlay_preset, overlay_overrides = overlay_run_args(objects, kind, name, container)
    overrides = [*overlay_overrides, *request.overrides]
    try:
        if request.config_file and not os.path.exists(request.config_file):
            if request.config_file.startswith("/mnt/"):
                return None, overrides
            raise RenderError(f"CONFIG={request.config_file}: no such file here; give a local config.json (e.g. "
                              "build/tune/best_config.json) or a path on the volume as the pods see it (/mnt/xray/...)")
        config = Config.load(request.config_file) if request.config_file else preset(overlay_preset)
        config = config.override(overrides)
        if request.component == "train":
            config.train.check_split(request.workers)
    except ConfigError as error:
        raise RenderError(str(error)) from None
    return config, overrides


def _run_config_patches(request: RenderRequest, objects: list[dict], out: Path) -> tuple[list[dict], list[dict]]:
    """Patches that start train/tune pods from the resolved config, and the ConfigMap generator carrying it."""
    config, overrides = resolve_run_config(request, objects)
    generators, patches = [], []
    if config is not None:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        generators.append({"name": f"xray-{request.component}-run", "files": ["config.json"]})
        source = ["--config", f"{RUN_CONFIG_MOUNT}/config.json"]
    else:
        source = ["--config", request.config_file, *overrides]
    for kind, name, container in WORKLOADS[request.component]:
        before, _, _ = overlay_run_args(objects, kind, name, container)
        spec: dict = {"containers": [{"name": container, "args": before + source}]}
        if config is not None:
            spec["containers"][0]["volumeMounts"] = [{"name": "run-config", "mountPath": RUN_CONFIG_MOUNT,
                                                      "readOnly": True}]
            spec["volumes"] = [{"name": "run-config", "configMap": {"name": f"xray-{request.component}-run"}}]
        patches.append(_strategic(kind, name, {"template": {"spec": spec}}))
    return patches, generators


def pull_policy(request: RenderRequest) -> str:
    """IfNotPresent for an image pinned by digest (make push records one: what a node has is what was pushed) and on
    the local overlay (images loaded into the node, no registry); Always for a tag elsewhere, so that a node does not
    keep running what the tag named before it was pushed again."""
    if request.overlay == "local" or "@sha256:" in request.image:
        return "IfNotPresent"
    return "Always"


def _serving_from_bucket(objects: list[dict], model_base: str) -> dict:
    """TF Serving reading its models.config and versions from a bucket (it reads gs:// itself) instead of the volume:
    the config flag points there and the volume's models mount goes."""
    container = container_of(objects, "Deployment", "xray-serving", "tfserving")
    args = [f"--model_config_file={model_base}/models.config" if a.startswith("--model_config_file=") else a
            for a in container["args"]]
    return _strategic("Deployment", "xray-serving", {"template": {"spec": {
        "containers": [{"name": "tfserving", "args": args,
                        "volumeMounts": [{"mountPath": "/models/xray", "$patch": "delete"}]}],
        "volumes": [{"name": "models", "$patch": "delete"}]}}})


def _pod_patch(kind: str, name: str, spec: dict) -> dict:
    """A strategic-merge patch of the pod spec of a Job or Deployment (its template), or of a bare Pod."""
    if kind == "Pod":
        return {"target": {"kind": "Pod", "name": name}, "patch": json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})}
    return _strategic(kind, name, {"template": {"spec": spec}})


def _replicas(job: str, count: int) -> dict:
    """An Indexed Job's pod count: completions = parallelism = count."""
    return {"target": {"kind": "Job", "name": job}, "patch": json.dumps([
        {"op": "replace", "path": "/spec/completions", "value": count},
        {"op": "replace", "path": "/spec/parallelism", "value": count}])}


def _strategic(kind: str, name: str, spec: dict) -> dict:
    api = {"Job": "batch/v1", "Deployment": "apps/v1"}[kind]
    body = {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}
    return {"target": {"kind": kind, "name": name}, "patch": json.dumps(body)}


def pin_claim(out_dir: str | Path, storage_class: str, access_modes: tuple[str, ...], size: str) -> None:
    """Adds to a rendered storage step a patch that keeps the claim exactly as it exists on the cluster."""
    import yaml

    path = Path(out_dir) / "kustomization.yaml"
    doc = yaml.safe_load(path.read_text())
    ops = [{"op": "replace", "path": "/spec/accessModes", "value": list(access_modes)},
           {"op": "replace", "path": "/spec/resources/requests/storage", "value": size}]
    if storage_class:
        ops.append({"op": "add", "path": "/spec/storageClassName", "value": storage_class})
    doc["patches"] = [p for p in doc.get("patches", []) if p["target"].get("kind") != "PersistentVolumeClaim"]
    doc["patches"].append({"target": {"kind": "PersistentVolumeClaim", "name": "xray-data"}, "patch": json.dumps(ops)})
    path.write_text("# Written by xray preflight; do not edit (re-run it).\n" + yaml.safe_dump(doc, sort_keys=False))


def render_kustomization(request: RenderRequest, out_dir: str | Path) -> Path:
    """Writes ``out_dir/kustomization.yaml`` (and config.json for train/tune); returns the directory."""
    import yaml

    overlay = overlay_dir(request)
    for pair in request.node_selector:
        if not re.fullmatch(r"[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*", pair):
            raise RenderError(f"node selector {pair!r} is not key=value (e.g. cloud.google.com/gke-accelerator=nvidia-l4)")
    if request.queue and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", request.queue):
        raise RenderError(f"queue {request.queue!r} is not a LocalQueue name (lower-case letters, digits and '-')")
    if request.queue and request.component not in ("train", "tune"):
        raise RenderError(f"a queue is for the train and tune steps, not {request.component}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)  # a previous render's; written again below when needed
    doc: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                 "namespace": request.namespace, "resources": [os.path.relpath(overlay, out)]}
    if request.image:  # the project image, or for serving a TF Serving image in place of the overlay's
        name, tag = split_image(request.image)
        base = "xray" if request.component in PROJECT_IMAGE else "tensorflow/serving"
        pin = {"digest": tag} if tag.startswith("sha256:") else {"newTag": tag} if tag else {}
        doc["images"] = [{"name": base, "newName": name, **pin}]
    patches, generators = [], []
    literals = []
    if request.component == "train":
        patches.append(_replicas("xray-train", request.workers))
        patches.append(_strategic("Job", "xray-train", {"template": {"spec": {"containers": [
            {"name": "worker", "env": [{"name": "XRAY_NUM_WORKERS", "value": str(request.workers)}]}]}}}))
    if request.component == "tune":
        patches.append(_replicas("xray-tune-workers", request.workers))
    if request.component in ("train", "tune"):
        run_patches, generators = _run_config_patches(request, kustomize(overlay), out)
        patches += run_patches
        for _, job, _ in WORKLOADS[request.component]:
            if request.deadline_s:
                patches.append(_strategic("Job", job, {"activeDeadlineSeconds": request.deadline_s}))
            if request.queue:  # Kueue admits a suspended Job with this label all at once, or not at all
                patches.append({"target": {"kind": "Job", "name": job}, "patch": json.dumps({
                    "apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": job, "labels": {QUEUE_LABEL: request.queue}}, "spec": {"suspend": True}})})
    # What every pod of the step gets: one patch per workload (a Job's or Deployment's template, or the Pod itself).
    pod: dict = {}
    if request.service_account:
        pod["serviceAccountName"] = request.service_account
    if request.image_pull_secret:
        pod["imagePullSecrets"] = [{"name": request.image_pull_secret}]
    if request.node_selector:
        pod["nodeSelector"] = dict(pair.split("=", 1) for pair in request.node_selector)
    policy = pull_policy(request)
    for kind, name, container in WORKLOADS[request.component]:
        patches.append(_pod_patch(kind, name, {**pod, "containers": [{"name": container, "imagePullPolicy": policy}]}))
    if request.model_base and request.component == "serving" and "://" in request.model_base:
        patches.append(_serving_from_bucket(kustomize(overlay), request.model_base.rstrip("/")))
    if request.component in ("train", "tune", "export"):
        literals = [f"XRAY_DATA={request.data}"] + ([f"XRAY_WORKDIR={request.workdir}"] if request.workdir else [])
    if request.component == "tune" and request.max_trials:
        literals.append(f"XRAY_MAX_TRIALS={request.max_trials}")
    if request.component == "export" and request.model_base:
        literals.append(f"XRAY_MODEL_BASE={request.model_base.rstrip('/')}")
    if request.component == "shards":
        literals = [f"XRAY_DATA={request.data}"] + ([f"XRAY_SRC={request.src}"] if request.src else [])
    if literals:
        generators.append({"name": f"xray-{request.component}", "behavior": "merge", "literals": literals})
    if request.component == "promote":
        literals = [f"XRAY_PROMOTE={' '.join(request.promote)}"]
        literals += [f"XRAY_WAIT={request.promote_wait_s}"] if request.promote_wait_s else []
        literals += [f"XRAY_REPLICA_NAMES={request.replica_names}"] if request.replica_names else []
        literals += [f"XRAY_MODEL_BASE={request.model_base.rstrip('/')}"] if request.model_base else []
        generators.append({"name": "xray-promote", "behavior": "merge", "literals": literals})
        literals = []
    if request.component == "serving" and request.replicas:
        patches.append({"target": {"kind": "HorizontalPodAutoscaler", "name": "xray-serving"}, "patch": json.dumps([
            {"op": "replace", "path": "/spec/minReplicas", "value": request.replicas},
            {"op": "replace", "path": "/spec/maxReplicas", "value": max(request.replicas, 2)}])})
    if request.component == "storage" and request.storage_class:
        patches.append({"target": {"kind": "PersistentVolumeClaim", "name": "xray-data"}, "patch": json.dumps([
            {"op": "add", "path": "/spec/storageClassName", "value": request.storage_class}])})
    if patches:
        doc["patches"] = patches
    if generators:
        doc["configMapGenerator"] = generators
    (out / "kustomization.yaml").write_text("# Written by xray preflight; do not edit (re-run it).\n"
                                            + yaml.safe_dump(doc, sort_keys=False))
    return out
