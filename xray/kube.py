"""Kubernetes side of the command line: pre-flight checks before a cluster step (rendering is in
xray/render.py), and job monitoring in the spirit of kubectl (`xray jobs status|watch|logs|delete`).

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

from xray.render import (PROJECT_IMAGE, WORKLOADS, RenderError, RenderRequest, render_kustomization,  # noqa: F401
                         split_image)

EPOCH_PREFIX = "xray-epoch "
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class ClusterError(Exception):
    """No cluster, wrong context, no such job: the message says what to do."""


def _default_storage_class(storage) -> str | None:
    for item in storage.list_storage_class().items:
        if (item.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
            return item.metadata.name
    return None


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


def _index_key(pod) -> str:
    """The pod's completion index; a pod of a non-indexed Job stands for itself."""
    return (pod.metadata.annotations or {}).get(INDEX_ANNOTATION, pod.metadata.name)


def newest_per_index(pods) -> list:
    """The newest pod of each completion index (a replaced pod's failed predecessor is history, not state)."""
    newest = {}
    for pod in pods:
        index = _index_key(pod)
        if index not in newest or pod.metadata.creation_timestamp > newest[index].metadata.creation_timestamp:
            newest[index] = pod
    return list(newest.values())


def pod_rows(pods, now: dt.datetime) -> list[dict]:
    """One row per index, its newest pod; RESTARTS counts container restarts plus the pods it replaced."""
    replaced = {}
    for pod in pods:
        replaced[_index_key(pod)] = replaced.get(_index_key(pod), -1) + 1
    rows = []
    for pod in newest_per_index(pods):
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
            "restarts": sum(s.restart_count or 0 for s in statuses) + replaced[_index_key(pod)],
            "node": pod.spec.node_name or "-",
            "age": _age(pod.metadata.creation_timestamp, now),
            "reason": reason,
        })
    return sorted(rows, key=lambda r: (int(r["index"]) if str(r["index"]).isdigit() else 1 << 30, r["pod"]))


def progress(epoch: dict) -> str:
    """Throughput and a time-to-finish bound from one epoch line (early stopping may end the run sooner)."""
    parts = []
    seconds, images = epoch.get("seconds"), epoch.get("images")
    if seconds and images:
        parts.append(f"{images / seconds:.1f} images/s")
    total = epoch.get("epochs")
    if seconds and total and total > epoch["epoch"]:
        left = (total - epoch["epoch"]) * seconds
        hours, minutes = int(left // 3600), int(left % 3600 // 60)
        parts.append(f"ETA <= {hours}h{minutes:02d}m for the {total - epoch['epoch']} epoch(s) left of {total}")
    return ", ".join(parts)


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


# Why a pod cannot start or keep running, from its status and events. Each is named in `xray jobs status`;
# `watch` gives up on one with exit 4 (WATCH_STUCK) once it has lasted `stuck_after` seconds (at once for the
# ones that never heal by waiting: a name the runtime will never pull, an OOM kill).
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
START_ERRORS = IMAGE_ERRORS + ("CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                               "CrashLoopBackOff")
FINAL = ("ErrImageNeverPull", "InvalidImageName", "OOMKilled")
WATCH_STUCK = 4


@dataclasses.dataclass(frozen=True)
class Blocker:
    pod: str
    reason: str  # one of START_ERRORS, OOMKilled, FailedScheduling, FailedMount
    message: str

    def line(self) -> str:
        return f"pod {self.pod}: {self.reason}: {self.message}"

    @property
    def key(self) -> tuple[str, str]:
        """What `watch` times: one pull problem however the kubelet names it between retries."""
        return self.pod, "image" if self.reason in IMAGE_ERRORS else self.reason


def blockers(pods, events) -> list[Blocker]:
    """What keeps the job's pods from running, newest pod of each index first, then failed pods killed for memory."""
    found = []
    newest = newest_per_index(pods)
    for pod in newest:
        name = pod.metadata.name
        if pod.status.phase == "Succeeded":
            continue
        for status in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or []):
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in START_ERRORS:
                found.append(Blocker(name, waiting.reason, (waiting.message or "").strip() or status.image))
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
                found.append(Blocker(name, "FailedScheduling", (condition.message or "").strip()))
        for event in events:
            if event.involved_object.name == name and event.type == "Warning" and event.reason == "FailedMount":
                found.append(Blocker(name, "FailedMount", (event.message or "").strip()))
                break
    for pod in pods:
        for status in pod.status.container_statuses or []:
            for state in (status.state, status.last_state):
                if state and state.terminated and state.terminated.reason == "OOMKilled":
                    limit = _memory_limit(pod, status.name)
                    found.append(Blocker(pod.metadata.name, "OOMKilled", f"container {status.name} was killed for "
                                         f"memory (limit {limit}): raise its memory limit or lower the batch"))
    unique = {}
    for blocker in found:
        unique.setdefault((blocker.pod, blocker.reason), blocker)
    return list(unique.values())


def _memory_limit(pod, container: str) -> str:
    for spec in pod.spec.containers or []:
        if spec.name == container and spec.resources and spec.resources.limits:
            return spec.resources.limits.get("memory", "none")
    return "none"


def job_summary(job, pods=None) -> tuple[str, str]:
    """(state, explanation): state is running, succeeded, failed or pending. With the job's pods, a job whose
    active pods have not started (Pending: unscheduled, pulling, creating) is pending, not running."""
    status = job.status
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", f"completed {status.succeeded or 0}/{job.spec.completions}"
        if condition.type in ("Failed", "FailureTarget"):
            message = condition.message or ""
            if job.metadata.name == "xray-export" and "exit code 3" in message:
                return "refused", ("the export gate refused the model (its test AUC is below the serving version's); "
                                   "the served model is unchanged. Details: xray jobs logs xray-export")
            return "failed", f"{condition.reason}: {message}".strip()
    counts = f"{status.active or 0} active, {status.succeeded or 0} succeeded, {status.failed or 0} failed pod(s)"
    if status.active and (pods is None or any(p.status.phase == "Running" for p in newest_per_index(pods))):
        return "running", counts
    if status.active:
        return "pending", f"no pod running yet: {counts}"
    return "pending", "no pod running yet"


def format_status(job, pods, events, chief_log: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    state, explanation = job_summary(job, pods)
    lines = [f"job {job.metadata.namespace}/{job.metadata.name}: {state.upper()} ({explanation})",
             f"{'INDEX':5s}  {'POD':32s}  {'PHASE':9s}  {'RESTARTS':8s}  {'NODE':20s}  {'AGE':5s}  REASON"]
    for row in pod_rows(pods, now):
        lines.append(f"{row['index']!s:5s}  {row['pod']:32s}  {row['phase'] or '-':9s}  {row['restarts']:<8d}  "
                     f"{row['node']:20s}  {row['age']:5s}  {row['reason']}")
    epoch = latest_epoch(chief_log)
    if epoch:
        shown = " ".join(f"{k}={epoch[k]:.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in epoch)
        lines.append(f"epoch {epoch['epoch']} at {epoch.get('time', '?')} on {epoch.get('workers', '?')} worker(s): {shown}")
        rate = progress(epoch)
        if rate:
            lines.append(f"  {rate}")
    else:
        lines.append("no finished epoch yet")
    stuck = blockers(pods, events) if state in ("running", "pending") else []
    if stuck:
        lines.append("not running:")
        lines += [f"  {blocker.line()}" for blocker in stuck]
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
    chief = next((p for p in newest_per_index(pods) if (p.metadata.annotations or {}).get(INDEX_ANNOTATION, "0") == "0"
                  and p.status.phase in ("Running", "Succeeded", "Failed")), None)
    log = ""
    if chief is not None:
        try:
            log = _api_call(context, core.read_namespaced_pod_log, chief.metadata.name, namespace, tail_lines=500)
        except Exception:  # a pod that has just started has no log yet
            log = ""
    return job, pods, events, log


def failure_logs(name: str, namespace: str, lines: int = 20, pods: int = 2) -> str:
    """The last ``lines`` log lines of the job's newest failed pods (at most ``pods``), each under a heading with
    its exit status: why a Job failed, without a kubectl command after it."""
    core, _, context = load_clients()
    listed = _api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    failed = sorted((p for p in listed if p.status.phase == "Failed"), key=lambda p: p.metadata.creation_timestamp,
                    reverse=True)[:pods]
    parts = []
    for pod in failed:
        codes = [c.state.terminated.exit_code for c in (pod.status.container_statuses or [])
                 if c.state and c.state.terminated]
        try:
            log = _api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, tail_lines=lines)
        except Exception as error:  # the node may have removed the container already
            log = f"(its log cannot be read: {error})"
        exit_text = f"exit {codes[0]}" if codes else "failed"
        parts.append(f"pod {pod.metadata.name} ({exit_text}), the last lines of its log:\n"
                     + "\n".join(f"  {line}" for line in (log or "(empty)").rstrip().splitlines()))
    return "\n".join(parts)


def status(name: str, namespace: str) -> tuple[str, str]:
    state, text, _ = observe(name, namespace)
    return state, text


def observe(name: str, namespace: str) -> tuple[str, str, list[Blocker]]:
    """The job's state, its status text and what blocks its pods, read from the cluster once."""
    job, pods, events, log = gather(name, namespace)
    state = job_summary(job, pods)[0]
    return state, format_status(job, pods, events, log), blockers(pods, events)


WATCH_EXIT = {"succeeded": 0, "failed": 1, "refused": 3}


@dataclasses.dataclass(frozen=True)
class WatchLimits:
    """How long `watch` waits on a pod that cannot start (stuck_after) and for the first pod to run at all."""

    stuck_after_s: float = 45
    start_timeout_s: float = 900


class _StuckClock:
    """How long each blocker has lasted, and whether `watch` should give up on it (one line on stderr)."""

    def __init__(self, what: str, limits: WatchLimits):
        self.what, self.limits = what, limits
        self.start = time.monotonic()
        self.first_seen: dict[tuple[str, str], float] = {}

    def stuck(self, blockers_now: list[Blocker], started: bool, waiting_for: str = "no pod started", hint: str = "") -> bool:
        import sys

        now = time.monotonic()
        for blocker in blockers_now:
            self.first_seen.setdefault(blocker.key, now)
            if blocker.reason in FINAL or now - self.first_seen[blocker.key] >= self.limits.stuck_after_s:
                print(f"error: {self.what} cannot run: {blocker.line()}", file=sys.stderr)
                return True
        if not started and now - self.start >= self.limits.start_timeout_s:
            print(f"error: {self.what}: {waiting_for} in {self.limits.start_timeout_s:.0f} s{hint}", file=sys.stderr)
            return True
        return False


def watch(name: str, namespace: str, interval_s: float = 10, out=print, limits: WatchLimits = WatchLimits(),
          read=observe, logs=failure_logs) -> int:
    """Prints the status until the job ends; 0 when it succeeded, 1 when it failed (then the failed pods' last log
    lines on stderr), 3 when the export gate refused, 4 (WATCH_STUCK) when a pod cannot start or run (named in one
    line on stderr) or nothing started in time. ``read(name, namespace)`` gives (state, text, blockers) at each
    refresh (``observe`` reads the cluster); ``logs(name, namespace)`` the text printed for a failed job."""
    import sys

    clock = _StuckClock(f"job {namespace}/{name}", limits)
    started = False
    while True:
        state, text, stuck = read(name, namespace)
        out(text)
        if state == "failed":
            print(logs(name, namespace), file=sys.stderr)
        if state in WATCH_EXIT:
            return WATCH_EXIT[state]
        started = started or state == "running"
        if clock.stuck(stuck, started, hint=f" (kubectl -n {namespace} describe pods -l {JOB_NAME_LABEL}={name})"):
            return WATCH_STUCK
        time.sleep(interval_s)
        out("")


def _events_for(core, context: str, namespace: str, pods) -> list:
    names = {p.metadata.name for p in pods}
    return [e for e in _api_call(context, core.list_namespaced_event, namespace).items if e.involved_object.name in names]


def _read(context: str, kind: str, call, name: str, namespace: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return _api_call(context, call, name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise ClusterError(f"no {kind} {name} in namespace {namespace} (context {context})") from None
        raise


def rollout(name: str, namespace: str, interval_s: float = 2, out=print, limits: WatchLimits = WatchLimits()) -> int:
    """`kubectl rollout status` for a Deployment that names why its pods do not start: 0 once every replica is
    updated and available; 4 (WATCH_STUCK) as `watch` gives up (one line on stderr)."""
    from kubernetes import client

    core, _, context = load_clients()
    apps = client.AppsV1Api()
    clock = _StuckClock(f"deployment {namespace}/{name}", limits)
    while True:
        deployment = _read(context, "deployment", apps.read_namespaced_deployment, name, namespace)
        spec, status = deployment.spec, deployment.status
        want = spec.replicas if spec.replicas is not None else 1
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        if ((status.observed_generation or 0) >= deployment.metadata.generation and updated == want
                and available >= want and (status.replicas or 0) == want):
            out(f"deployment {namespace}/{name}: {available}/{want} replica(s) available")
            return 0
        selector = ",".join(f"{k}={v}" for k, v in (spec.selector.match_labels or {}).items())
        pods = _api_call(context, core.list_namespaced_pod, namespace, label_selector=selector).items
        stuck = blockers(pods, _events_for(core, context, namespace, pods))
        out(f"deployment {namespace}/{name}: {available}/{want} replica(s) available, {updated} updated"
            + "".join(f"\n  {blocker.line()}" for blocker in stuck))
        if clock.stuck(stuck, False, f"not available ({available}/{want})"):
            return WATCH_STUCK
        time.sleep(interval_s)


def pod_ready(name: str, namespace: str, interval_s: float = 2, out=print, limits: WatchLimits = WatchLimits()) -> int:
    """`kubectl wait --for=condition=Ready pod/NAME` that names why the pod does not start: 0 once it is Ready,
    1 when it ended, 4 (WATCH_STUCK) as `watch` gives up."""
    core, _, context = load_clients()
    clock = _StuckClock(f"pod {namespace}/{name}", limits)
    while True:
        pod = _read(context, "pod", core.read_namespaced_pod, name, namespace)
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            out(f"pod {namespace}/{name}: Ready")
            return 0
        if pod.status.phase in ("Succeeded", "Failed"):
            out(f"pod {namespace}/{name}: ended ({pod.status.phase}) before it was Ready")
            return 1
        stuck = blockers([pod], _events_for(core, context, namespace, [pod]))
        out(f"pod {namespace}/{name}: {pod.status.phase}" + "".join(f"\n  {b.line()}" for b in stuck))
        if clock.stuck(stuck, False, "not Ready"):
            return WATCH_STUCK
        time.sleep(interval_s)


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
    if request.component in PROJECT_IMAGE:
        name, _ = split_image(request.image)
        if not name or name == "xray":
            raise ClusterError(f"set the project image (got {request.image!r}): make image push "
                               "IMAGE=registry.example.com/xray TAG=0.1.0, then pass the same IMAGE and TAG to this "
                               "target (the bare 'xray' image exists on no registry)")
    if request.workers < 1:
        raise ClusterError(f"WORKERS={request.workers} must be at least 1")
    data = request.data
    if request.component in ("train", "tune", "export") and ("://" in data or os.path.exists(data)):
        from data import manifest as manifests

        try:
            manifest = manifests.read(data)
        except FileNotFoundError as error:
            raise ClusterError(str(error)) from None
        shards = len(manifest.shards["train"])
        if request.component == "train" and shards < request.workers:
            raise ClusterError(f"{data} has {shards} train shard(s) for {request.workers} workers: re-run xray shards "
                               f"with --num-shards >= {request.workers} so that every worker reads its own files")
    elif request.component in ("train", "tune", "export"):
        warnings.append(f"{data} is not readable from here (a path inside the pods?): shard count not checked")
    if request.config_file and not os.path.exists(request.config_file):
        warnings.append(f"CONFIG={request.config_file} is read by the pods from the volume: not validated here")
    if request.component == "promote":
        request = _check_promote(request, check_cluster)
    if request.component == "serving" and request.replicas < 0:
        raise ClusterError(f"REPLICAS={request.replicas} must be at least 1")
    try:
        render_kustomization(request, out_dir)
    except RenderError as error:
        raise ClusterError(str(error)) from None
    if check_cluster:
        warnings += _cluster_checks(request, out_dir)
    return warnings


def _check_promote(request: RenderRequest, check_cluster: bool) -> RenderRequest:
    """A label move needs a label and one source of the version; with the cluster at hand, running serving pods,
    whose names go into the Job so that its messages name pods rather than addresses."""
    args = list(request.promote)
    if "--label" not in args:
        raise ClusterError("set LABEL (stable or canary), and VERSION=N, FROM=canary or ROLLBACK=1: "
                           "make promote LABEL=stable VERSION=2")
    label = args[args.index("--label") + 1]
    if label not in ("stable", "canary"):
        raise ClusterError(f"LABEL={label} is not a version label; use stable or canary")
    if "--version" in args and not args[args.index("--version") + 1].isdigit():
        raise ClusterError(f"VERSION={args[args.index('--version') + 1]} is not a version number")
    if sum(flag in args for flag in ("--version", "--from-label", "--rollback")) > 1:
        raise ClusterError("give one of VERSION=N, FROM=label, ROLLBACK=1")
    if not check_cluster:
        return request
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, _, context = load_clients()
    apps = client.AppsV1Api()
    try:
        _api_call(context, apps.read_namespaced_deployment, "xray-serving", request.namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        raise ClusterError(f"no TF Serving in namespace {request.namespace}: make deploy-serving first") from None
    pods = _api_call(context, core.list_namespaced_pod, request.namespace, label_selector="xray.io/role=serving").items
    names = ",".join(f"{p.status.pod_ip}={p.metadata.name}" for p in pods if p.status.pod_ip)
    return dataclasses.replace(request, replica_names=names)


def _claim_spec(claim) -> tuple[str, tuple[str, ...], str]:
    spec = claim["spec"] if isinstance(claim, dict) else claim.spec.to_dict()
    resources = spec.get("resources") or {}
    return (spec.get("storageClassName") or spec.get("storage_class_name") or "",
            tuple(sorted(spec.get("accessModes") or spec.get("access_modes") or [])),
            str((resources.get("requests") or {}).get("storage", "")))


def _keep_claim(request: RenderRequest, claim, out_dir: str | Path) -> list[str]:
    """The storage step on an existing claim: its class, access modes and size cannot change (the API server
    refuses), so the rendered claim is pinned to what exists; asking for something else is refused here."""
    from xray.render import kustomize, pin_claim

    have_class, have_modes, have_size = _claim_spec(claim)
    wanted = next(o for o in kustomize(Path(out_dir)) if o["kind"] == "PersistentVolumeClaim")
    want_class, want_modes, want_size = _claim_spec(wanted)
    where = f"claim xray-data in namespace {request.namespace}"
    fix = (f"use another NAMESPACE, or delete the claim and the data on it (kubectl -n {request.namespace} delete pvc "
           "xray-data) and run make volume again")
    if request.storage_class and request.storage_class != have_class:
        raise ClusterError(f"{where} exists with storage class {have_class or '(none)'}, and a claim's class cannot "
                           f"change (STORAGE_CLASS={request.storage_class}): {fix}")
    if not set(want_modes) <= set(have_modes):
        raise ClusterError(f"{where} exists as {','.join(have_modes)} {have_size}; overlay {request.overlay} needs "
                           f"{','.join(want_modes)} {want_size}, and a claim's access modes cannot change: {fix}")
    pin_claim(out_dir, have_class, have_modes, have_size)
    return [f"{where} exists (class {have_class or '(none)'}, {','.join(have_modes)}, {have_size}, "
            f"{claim.status.phase}): kept as it is"]


def _cluster_checks(request: RenderRequest, out_dir: str | Path) -> list[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, batch, context = load_clients()
    warnings = []
    try:
        _api_call(context, core.read_namespace, request.namespace)
        claim = _api_call(context, core.read_namespaced_persistent_volume_claim, "xray-data", request.namespace)
        if claim.status.phase != "Bound" and request.component != "storage":
            warnings.append(f"volume claim xray-data is {claim.status.phase}: pods wait until it is bound "
                            "(needs a ReadWriteMany storage class on multi-node clusters; see STORAGE_CLASS)")
        if request.component == "storage":
            return _keep_claim(request, claim, out_dir)
    except ApiException as error:
        if error.status != 404:
            raise
        if request.component != "storage":
            raise ClusterError(f"namespace {request.namespace} or its volume claim xray-data does not exist: run "
                               f"make volume NAMESPACE={request.namespace} first (the namespace and the claim are a step "
                               "of their own, so that deleting a component never deletes the data)") from None
    if request.component == "storage":
        storage = client.StorageV1Api()
        if request.storage_class:
            try:
                _api_call(context, storage.read_storage_class, request.storage_class)
            except ApiException as error:
                if error.status != 404:
                    raise
                names = ", ".join(c.metadata.name for c in _api_call(context, storage.list_storage_class).items)
                raise ClusterError(f"STORAGE_CLASS={request.storage_class} does not exist in context {context}; "
                                   f"storage classes: {names or 'none'}") from None
        elif _api_call(context, _default_storage_class, storage) is None:
            warnings.append("the cluster has no default storage class: the claim stays Pending until a volume is "
                            "provisioned for it (set STORAGE_CLASS, or create a PersistentVolume)")
    for kind, name, _ in WORKLOADS[request.component]:
        if kind != "Job" or request.component == "tune" and name == "xray-tune-chief":
            continue
        try:
            job = _api_call(context, batch.read_namespaced_job, name, request.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            continue
        state = job_summary(job)[0]
        if state in ("running", "pending"):
            raise ClusterError(f"job {name} is {state} in {request.namespace}: watch it with "
                               f"xray jobs watch {name} -n {request.namespace}, or delete it first (make delete JOB={name})")
        warnings.append(f"job {name} ({state}) will be replaced; the workdir keeps its backup and results")
    return warnings
