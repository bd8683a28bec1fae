"""Kubernetes side of the command line: render a component for a cluster, pre-flight checks, and job
monitoring in the spirit of kubectl (`xray jobs status|watch|logs|delete`).

The API calls are thin; everything that decides what to show works on the kubernetes client's model
objects (V1Job, V1Pod, CoreV1Event), so it is tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = {"train": "xray-train", "tune": "xray-tune-workers", "serving": "xray-serving"}
EPOCH_PREFIX = "xray-epoch "
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class ClusterError(Exception):
    """No cluster, wrong context, no such job: the message says what to do."""


# ----------------------------------------------------------------------------------------------------
# Rendering: a kustomization in build/k8s/<component>/ on top of an overlay, with the run's values.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RenderRequest:
    component: str  # train, tune or serving
    overlay: str = "local"
    image: str = ""  # registry/name:tag of the project image (train, tune)
    workers: int = 2
    data: str = "/mnt/xray/shards"
    workdir: str = ""
    namespace: str = "xray"


def render_kustomization(request: RenderRequest, out_dir: str | Path) -> Path:
    """Writes ``out_dir/kustomization.yaml`` referencing the overlay; returns the directory (kubectl apply -k)."""
    overlay = REPO / "k8s" / "overlays" / request.overlay / request.component
    if not overlay.is_dir():
        raise ClusterError(f"no overlay {overlay.relative_to(REPO)}; overlays: "
                           f"{', '.join(sorted(p.name for p in (REPO / 'k8s/overlays').iterdir()))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": request.namespace,
           "resources": [os.path.relpath(overlay, out)]}
    if request.component in ("train", "tune") and request.image:
        name, _, tag = request.image.rpartition(":") if ":" in request.image.rsplit("/", 1)[-1] else (request.image, "", "")
        doc["images"] = [{"name": "xray", "newName": name, **({"newTag": tag} if tag else {})}]
    if request.component == "train":
        workers = request.workers
        doc["patches"] = [{"target": {"kind": "Job", "name": "xray-train"}, "patch": json.dumps([
            {"op": "replace", "path": "/spec/completions", "value": workers},
            {"op": "replace", "path": "/spec/parallelism", "value": workers},
            {"op": "replace", "path": "/spec/template/spec/containers/0/env/0",
             "value": {"name": "XRAY_NUM_WORKERS", "value": str(workers)}},
        ])}]
    if request.component == "tune":
        doc["patches"] = [{"target": {"kind": "Job", "name": "xray-tune-workers"}, "patch": json.dumps([
            {"op": "replace", "path": "/spec/completions", "value": request.workers},
            {"op": "replace", "path": "/spec/parallelism", "value": request.workers},
        ])}]
    literals = [f"XRAY_DATA={request.data}"] + ([f"XRAY_WORKDIR={request.workdir}"] if request.workdir else [])
    if request.component in ("train", "tune"):
        doc["configMapGenerator"] = [{"name": f"xray-{request.component}", "behavior": "merge", "literals": literals}]
    import yaml

    (out / "kustomization.yaml").write_text("# Written by xray preflight; do not edit (re-run it).\n"
                                            + yaml.safe_dump(doc, sort_keys=False))
    return out


# ----------------------------------------------------------------------------------------------------
# Talking to the cluster.
# ----------------------------------------------------------------------------------------------------


def load_clients():
    """(CoreV1Api, BatchV1Api, context name); ClusterError with the fix when there is no usable cluster."""
    from kubernetes import client, config

    context = "in-cluster"
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            _, active = config.list_kube_config_contexts()
            config.load_kube_config()
            context = active["name"]
        except (config.ConfigException, FileNotFoundError, TypeError) as error:
            raise ClusterError(f"no Kubernetes cluster configured ({error}); point KUBECONFIG at a kubeconfig or run "
                               "`kubectl config use-context NAME`") from None
    return client.CoreV1Api(), client.BatchV1Api(), context


def _api_call(context: str, call, *args, **kwargs):
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call(*args, **kwargs)
    except ApiException as error:
        if error.status in (401, 403):
            raise ClusterError(f"the cluster of context {context} refused the request ({error.status} {error.reason}); "
                               "check your credentials and RBAC") from None
        raise
    except (HTTPError, OSError) as error:
        raise ClusterError(f"cannot reach the cluster of context {context} ({type(error).__name__}); is it the right "
                           "context (`kubectl config current-context`) and is the cluster up?") from None


# ----------------------------------------------------------------------------------------------------
# Monitoring logic on model objects.
# ----------------------------------------------------------------------------------------------------


def _age(timestamp, now: dt.datetime) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0, int((now - timestamp).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def pod_rows(pods, now: dt.datetime) -> list[dict]:
    rows = []
    for pod in pods:
        annotations = pod.metadata.annotations or {}
        statuses = pod.status.container_statuses or []
        reason = ""
        for status in statuses:
            state = status.state
            if state and state.waiting and state.waiting.reason:
                reason = state.waiting.reason
            elif state and state.terminated and state.terminated.reason:
                reason = f"{state.terminated.reason} (exit {state.terminated.exit_code})"
        rows.append({
            "index": annotations.get(INDEX_ANNOTATION, "-"),
            "pod": pod.metadata.name,
            "phase": pod.status.phase,
            "restarts": sum(s.restart_count or 0 for s in statuses),
            "node": pod.spec.node_name or "-",
            "age": _age(pod.metadata.creation_timestamp, now),
            "reason": reason,
        })
    return sorted(rows, key=lambda r: (int(r["index"]) if str(r["index"]).isdigit() else 1 << 30, r["pod"]))


def latest_epoch(log_text: str) -> dict | None:
    """The last per-epoch JSON line the chief printed (``xray-epoch {...}``)."""
    for line in reversed(log_text.splitlines()):
        position = line.find(EPOCH_PREFIX)
        if position >= 0:
            try:
                return json.loads(line[position + len(EPOCH_PREFIX):])
            except json.JSONDecodeError:
                continue
    return None


def job_summary(job) -> tuple[str, str]:
    """(state, explanation): state is running, succeeded, failed or pending."""
    status = job.status
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", f"completed {status.succeeded or 0}/{job.spec.completions}"
        if condition.type in ("Failed", "FailureTarget"):
            return "failed", f"{condition.reason}: {condition.message or ''}".strip()
    if status.active:
        return "running", f"{status.active} active, {status.succeeded or 0} succeeded, {status.failed or 0} failed pod(s)"
    return "pending", "no pod running yet"


def format_status(job, pods, events, chief_log: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    state, explanation = job_summary(job)
    lines = [f"job {job.metadata.namespace}/{job.metadata.name}: {state.upper()} ({explanation})",
             f"{'INDEX':5s}  {'POD':32s}  {'PHASE':9s}  {'RESTARTS':8s}  {'NODE':20s}  {'AGE':5s}  REASON"]
    for row in pod_rows(pods, now):
        lines.append(f"{row['index']!s:5s}  {row['pod']:32s}  {row['phase'] or '-':9s}  {row['restarts']:<8d}  "
                     f"{row['node']:20s}  {row['age']:5s}  {row['reason']}")
    epoch = latest_epoch(chief_log)
    if epoch:
        shown = " ".join(f"{k}={epoch[k]:.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in epoch)
        lines.append(f"epoch {epoch['epoch']} at {epoch.get('time', '?')} on {epoch.get('workers', '?')} worker(s): {shown}")
    else:
        lines.append("no finished epoch yet")
    warnings = [e for e in events if e.type == "Warning"]
    if warnings:
        lines.append("recent warnings:")
        for event in sorted(warnings, key=lambda e: e.last_timestamp or e.event_time or now)[-5:]:
            lines.append(f"  {event.involved_object.kind}/{event.involved_object.name}: {event.reason}: {event.message}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Commands.
# ----------------------------------------------------------------------------------------------------


def _read_job(batch, context: str, name: str, namespace: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return _api_call(context, batch.read_namespaced_job, name, namespace)
    except ApiException as error:
        if error.status == 404:
            jobs = _api_call(context, batch.list_namespaced_job, namespace).items
            names = ", ".join(j.metadata.name for j in jobs) or "none"
            raise ClusterError(f"no job {name} in namespace {namespace} (context {context}); jobs there: {names}") from None
        raise


def gather(name: str, namespace: str):
    core, batch, context = load_clients()
    job = _read_job(batch, context, name, namespace)
    pods = _api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    events = [e for e in _api_call(context, core.list_namespaced_event, namespace).items
              if e.involved_object.name == name or e.involved_object.name in {p.metadata.name for p in pods}]
    chief = next((p for p in pods if (p.metadata.annotations or {}).get(INDEX_ANNOTATION) == "0"
                  and p.status.phase in ("Running", "Succeeded", "Failed")), None)
    log = ""
    if chief is not None:
        try:
            log = _api_call(context, core.read_namespaced_pod_log, chief.metadata.name, namespace, tail_lines=500)
        except Exception:  # a pod that has just started has no log yet
            log = ""
    return job, pods, events, log


def status(name: str, namespace: str) -> tuple[str, str]:
    job, pods, events, log = gather(name, namespace)
    return job_summary(job)[0], format_status(job, pods, events, log)


def watch(name: str, namespace: str, interval_s: float = 10, out=print) -> int:
    """Prints the status until the job ends; 0 when it succeeded, 1 when it failed."""
    while True:
        state, text = status(name, namespace)
        out(text)
        if state in ("succeeded", "failed"):
            return 0 if state == "succeeded" else 1
        time.sleep(interval_s)
        out("")


def logs(name: str, namespace: str, index: int = 0, follow: bool = False, tail: int | None = None, out=print) -> None:
    core, batch, context = load_clients()
    _read_job(batch, context, name, namespace)
    pods = _api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    matching = [p for p in pods if (p.metadata.annotations or {}).get(INDEX_ANNOTATION, "0") == str(index)]
    if not matching:
        raise ClusterError(f"job {name} has no pod with index {index} (yet)")
    pod = sorted(matching, key=lambda p: p.metadata.creation_timestamp)[-1]
    if follow:
        stream = _api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, follow=True,
                           _preload_content=False, tail_lines=tail)
        for chunk in stream.stream():
            out(chunk.decode(errors="replace"), end="")
    else:
        out(_api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, tail_lines=tail), end="")


def delete(name: str, namespace: str) -> None:
    from kubernetes import client

    core, batch, context = load_clients()
    _read_job(batch, context, name, namespace)
    _api_call(context, batch.delete_namespaced_job, name, namespace,
              body=client.V1DeleteOptions(propagation_policy="Foreground"))


def preflight(request: RenderRequest, out_dir: str | Path, check_cluster: bool = True) -> list[str]:
    """Checks what can be checked from here, renders the kustomization; returns warnings, raises ClusterError."""
    warnings = []
    if request.component in ("train", "tune") and (not request.image or request.image.split(":")[0] == "xray"):
        raise ClusterError("set the project image: make image push IMAGE=registry.example.com/xray TAG=0.1.0, then "
                           "pass the same IMAGE and TAG (the bare 'xray' image exists on no registry)")
    if request.workers < 1:
        raise ClusterError(f"WORKERS={request.workers} must be at least 1")
    data = request.data
    if "://" in data or os.path.exists(data):
        from trainer.records import read_manifest

        try:
            manifest = read_manifest(data)
        except FileNotFoundError as error:
            raise ClusterError(str(error)) from None
        shards = len(manifest["shards"]["train"])
        if request.component == "train" and shards < request.workers:
            raise ClusterError(f"{data} has {shards} train shard(s) for {request.workers} workers: re-run xray shards "
                               f"with --num-shards >= {request.workers} so that every worker reads its own files")
    else:
        warnings.append(f"{data} is not readable from here (a path inside the pods?): shard count not checked")
    if check_cluster:
        core, batch, context = load_clients()
        from kubernetes.client.exceptions import ApiException

        try:
            _api_call(context, core.read_namespace, request.namespace)
            claim = _api_call(context, core.read_namespaced_persistent_volume_claim, "xray-data", request.namespace)
            if claim.status.phase != "Bound":
                warnings.append(f"volume claim xray-data is {claim.status.phase}: pods wait until it is bound "
                                "(needs a ReadWriteMany storage class on multi-node clusters)")
        except ApiException as error:
            if error.status != 404:
                raise
            warnings.append(f"namespace {request.namespace} or claim xray-data does not exist yet: apply creates them")
        name = COMPONENTS[request.component]
        if request.component != "serving":
            try:
                job = _api_call(context, batch.read_namespaced_job, name, request.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
            else:
                state = job_summary(job)[0]
                if state in ("running", "pending"):
                    raise ClusterError(f"job {name} is {state} in {request.namespace}: watch it with "
                                       f"xray jobs watch {name}, or delete it first (make delete)")
                warnings.append(f"job {name} ({state}) will be replaced; the workdir keeps its backup and results")
    render_kustomization(request, out_dir)
    return warnings
