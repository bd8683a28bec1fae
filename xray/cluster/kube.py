"""Talking to the cluster, and the job commands in the spirit of kubectl (`xray jobs status|watch|logs|delete`).

The API calls are thin; what to show is decided in xray/cluster/monitor.py on the kubernetes client's model objects
(V1Job, V1Pod, CoreV1Event), tested without a cluster. Pre-flight checks: xray/cluster/preflight.py; rendering:
xray/cluster/render.py.
"""

from __future__ import annotations

import dataclasses
import os
import time

from xray.cluster.monitor import (FINAL, INDEX_ANNOTATION, JOB_NAME_LABEL, WATCH_STUCK, Blocker, blockers, format_status,
                          job_summary, newest_per_index)


class ClusterError(Exception):
    """No cluster, wrong context, no such job: the message says what to do."""


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
            # KUBECONFIG as it is now: the client library reads it once, when it is first imported.
            path = os.environ.get("KUBECONFIG") or None
            _, active = config.list_kube_config_contexts(config_file=path)
            config.load_kube_config(config_file=path)
            context = active["name"]
        except (config.ConfigException, FileNotFoundError, TypeError) as error:
            raise ClusterError(f"no Kubernetes cluster configured ({error}); point KUBECONFIG at a kubeconfig or run "
                               "`kubectl config use-context NAME`") from None
    return client.CoreV1Api(), client.BatchV1Api(), context


def api_call(context: str, call, *args, **kwargs):
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
# Commands.
# ----------------------------------------------------------------------------------------------------


def _read_job(batch, context: str, name: str, namespace: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return api_call(context, batch.read_namespaced_job, name, namespace)
    except ApiException as error:
        if error.status == 404:
            jobs = api_call(context, batch.list_namespaced_job, namespace).items
            names = ", ".join(j.metadata.name for j in jobs) or "none"
            raise ClusterError(f"no job {name} in namespace {namespace} (context {context}); jobs there: {names}") from None
        raise


def gather(name: str, namespace: str):
    core, batch, context = load_clients()
    job = _read_job(batch, context, name, namespace)
    pods = api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    events = [e for e in api_call(context, core.list_namespaced_event, namespace).items
              if e.involved_object.name == name or e.involved_object.name in {p.metadata.name for p in pods}]
    chief = next((p for p in newest_per_index(pods) if (p.metadata.annotations or {}).get(INDEX_ANNOTATION, "0") == "0"
                  and p.status.phase in ("Running", "Succeeded", "Failed")), None)
    log = ""
    if chief is not None:
        try:
            log = api_call(context, core.read_namespaced_pod_log, chief.metadata.name, namespace, tail_lines=500)
        except Exception:  # a pod that has just started has no log yet
            log = ""
    return job, pods, events, log


def failure_logs(name: str, namespace: str, lines: int = 20, pods: int = 2) -> str:
    """The last ``lines`` log lines of the job's newest failed pods (at most ``pods``), each under a heading with
    its exit status: why a Job failed, without a kubectl command after it."""
    core, _, context = load_clients()
    listed = api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    failed = sorted((p for p in listed if p.status.phase == "Failed"), key=lambda p: p.metadata.creation_timestamp,
                    reverse=True)[:pods]
    parts = []
    for pod in failed:
        codes = [c.state.terminated.exit_code for c in (pod.status.container_statuses or [])
                 if c.state and c.state.terminated]
        try:
            log = api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, tail_lines=lines)
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


def watch(name, namespace: str, interval_s: float = 10, out=print, limits: WatchLimits = WatchLimits(),
          read=observe, logs=failure_logs) -> int:
    """Prints the status until the job ends; 0 when it succeeded, 1 when it failed (then the failed pods' last log
    lines on stderr), 3 when the export gate refused, 4 (WATCH_STUCK) when a pod cannot start or run (named in one
    line on stderr) or nothing started in time. ``name`` may be several Jobs that make one step (the tuner's chief
    and workers): the step ends with the first that fails, named on stderr, or once all have succeeded. A queued
    Job (suspended until Kueue admits it) is waited on without counting against the start timeout.
    ``read(name, namespace)`` gives (state, text, blockers) at each refresh (``observe`` reads the cluster);
    ``logs(name, namespace)`` the text printed for a failed job."""
    import sys

    names = [name] if isinstance(name, str) else list(name)
    clock = _StuckClock(f"job {namespace}/{'+'.join(names)}", limits)
    started = False
    while True:
        states, stuck = {}, []
        for job in names:
            state, text, blocked = read(job, namespace)
            out(text)
            states[job], stuck = state, stuck + blocked
        ended = [job for job in names if states[job] in ("failed", "refused")]
        if ended:
            job = ended[0]
            if states[job] == "failed":
                print(logs(job, namespace), file=sys.stderr)
                if len(names) > 1:
                    others = ", ".join(f"{other} {states[other]}" for other in names if other != job)
                    print(f"error: job {namespace}/{job} failed ({others}): the step failed", file=sys.stderr)
            return WATCH_EXIT[states[job]]
        if all(states[job] == "succeeded" for job in names):
            return 0
        if "queued" in states.values() and not started:
            clock.start = time.monotonic()  # the start timeout counts from admission, not from the queue
        started = started or "running" in states.values()
        if clock.stuck(stuck, started, hint=f" (kubectl -n {namespace} describe pods -l {JOB_NAME_LABEL} in "
                       f"({','.join(names)}))" if len(names) > 1 else
                       f" (kubectl -n {namespace} describe pods -l {JOB_NAME_LABEL}={names[0]})"):
            return WATCH_STUCK
        time.sleep(interval_s)
        out("")


def _events_for(core, context: str, namespace: str, pods) -> list:
    names = {p.metadata.name for p in pods}
    return [e for e in api_call(context, core.list_namespaced_event, namespace).items if e.involved_object.name in names]


def _read(context: str, kind: str, call, name: str, namespace: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return api_call(context, call, name, namespace)
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
        pods = api_call(context, core.list_namespaced_pod, namespace, label_selector=selector).items
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
    pods = api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    matching = [p for p in pods if (p.metadata.annotations or {}).get(INDEX_ANNOTATION, "0") == str(index)]
    if not matching:
        raise ClusterError(f"job {name} has no pod with index {index} (yet)")
    pod = sorted(matching, key=lambda p: p.metadata.creation_timestamp)[-1]
    if follow:
        stream = api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, follow=True,
                           _preload_content=False, tail_lines=tail)
        for chunk in stream.stream():
            out(chunk.decode(errors="replace"), end="")
    else:
        out(api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, tail_lines=tail), end="")


def delete(name: str, namespace: str) -> None:
    from kubernetes import client

    core, batch, context = load_clients()
    _read_job(batch, context, name, namespace)
    api_call(context, batch.delete_namespaced_job, name, namespace,
              body=client.V1DeleteOptions(propagation_policy="Foreground"))
