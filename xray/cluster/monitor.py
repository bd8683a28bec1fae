"""What a job's objects say, decided on the kubernetes client's model objects (V1Job, V1Pod, CoreV1Event) so that
it is tested without a cluster: a row per pod (the newest per index), the latest epoch from the chief's log,
why a pod cannot start or keep running (Blocker), the job's state and the status text `xray jobs` prints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

EPOCH_PREFIX = "xray-epoch "
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# Kueue's label naming the LocalQueue a Job waits in (sigs.k8s.io/kueue, constants.QueueLabel).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


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
            "ip": pod.status.pod_ip or "-",
            "image": ",".join(c.image or "-" for c in pod.spec.containers or []) or "-",
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
    """(state, explanation): state is running, succeeded, failed, refused, queued or pending. With the job's pods, a job whose
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
    if job.spec.suspend:  # Kueue (or a person) holds it: no pod is created until it is admitted (resumed)
        queue = (job.metadata.labels or {}).get(QUEUE_LABEL)
        if queue:
            return "queued", f"suspended until Kueue admits all its pods at once, in queue {queue}"
        return "queued", f"suspended: kubectl -n {job.metadata.namespace} patch job {job.metadata.name} " \
                         "-p '{\"spec\":{\"suspend\":false}}' resumes it"
    counts = f"{status.active or 0} active, {status.succeeded or 0} succeeded, {status.failed or 0} failed pod(s)"
    if status.active and (pods is None or any(p.status.phase == "Running" for p in newest_per_index(pods))):
        return "running", counts
    if status.active:
        return "pending", f"no pod running yet: {counts}"
    return "pending", "no pod running yet"


STATUS_VERSION = 1  # of the document `xray jobs status -o json|yaml` prints (docs/monitoring.md)


def status_document(job, pods, events, chief_log: str, now: dt.datetime | None = None) -> dict:
    """What `xray jobs status -o json|yaml` prints: the same facts as the table, for scripts (docs/monitoring.md)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    state, explanation = job_summary(job, pods)
    stuck = blockers(pods, events) if state in ("running", "pending") else []
    warnings = [e for e in events if e.type == "Warning"]
    return {
        "version": STATUS_VERSION,
        "job": {"namespace": job.metadata.namespace, "name": job.metadata.name, "state": state,
                "explanation": explanation, "completions": job.spec.completions,
                "queue": (job.metadata.labels or {}).get(QUEUE_LABEL)},
        "pods": pod_rows(pods, now),
        "epoch": latest_epoch(chief_log),
        "blockers": [dataclasses.asdict(b) for b in stuck],
        "warnings": [{"object": f"{e.involved_object.kind}/{e.involved_object.name}", "reason": e.reason,
                      "message": e.message} for e in sorted(warnings, key=lambda e: e.last_timestamp or e.event_time or now)[-5:]],
    }


def format_status(job, pods, events, chief_log: str, now: dt.datetime | None = None, wide: bool = False) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    state, explanation = job_summary(job, pods)
    lines = [f"job {job.metadata.namespace}/{job.metadata.name}: {state.upper()} ({explanation})",
             f"{'INDEX':5s}  {'POD':32s}  {'PHASE':9s}  {'RESTARTS':8s}  {'NODE':20s}  {'AGE':5s}  "
             + (f"{'IP':15s}  {'IMAGE':40s}  " if wide else "") + "REASON"]
    for row in pod_rows(pods, now):
        lines.append(f"{row['index']!s:5s}  {row['pod']:32s}  {row['phase'] or '-':9s}  {row['restarts']:<8d}  "
                     f"{row['node']:20s}  {row['age']:5s}  " + (f"{row['ip']:15s}  {row['image']:40s}  " if wide else "")
                     + row["reason"])
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


def job_rows(jobs, now: dt.datetime) -> list[dict]:
    """`xray jobs list`: a row per Job, newest first."""
    rows = []
    for job in sorted(jobs, key=lambda j: j.metadata.creation_timestamp or now, reverse=True):
        state, explanation = job_summary(job)
        rows.append({"name": job.metadata.name, "state": state, "completions": f"{job.status.succeeded or 0}/"
                     f"{job.spec.completions if job.spec.completions is not None else 1}",
                     "age": _age(job.metadata.creation_timestamp, now),
                     "component": (job.metadata.labels or {}).get("app.kubernetes.io/component", "-"),
                     "explanation": explanation})
    return rows


def format_jobs(rows: list[dict]) -> str:
    lines = [f"{'NAME':24s}  {'STATE':9s}  {'COMPLETIONS':11s}  {'AGE':5s}  COMPONENT"]
    lines += [f"{r['name']:24s}  {r['state'].upper():9s}  {r['completions']:11s}  {r['age']:5s}  {r['component']}"
              for r in rows]
    return "\n".join(lines)
