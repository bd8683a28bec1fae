"""Talking to the cluster, and the job commands in the spirit of kubectl (`xray jobs status|watch|logs|delete`).

The API calls are thin; what to show is decided in xray/cluster/monitor.py on the kubernetes client's model objects
(V1Job, V1Pod, CoreV1Event), tested without a cluster. Pre-flight checks: xray/cluster/preflight.py; rendering:
xray/cluster/render.py.
"""

from __future__ import annotations

import dataclasses
import os
import time

from xray.cluster.monitor import (FINAL, INDEX_ANNOTATION, JOB_NAME_LABEL, STATUS_VERSION, WATCH_STUCK, Blocker,
                                  blockers, format_jobs, format_status, job_rows, job_summary, newest_per_index,
                                  status_document)


class ClusterError(Exception):
    """No cluster, wrong context, no such job: the message says what to do."""


class Unreachable(ClusterError):
    """The API server did not answer (down, restarting, a network cut): `watch` waits for it to come back."""


# The kubeconfig context the commands talk to (xray jobs --context NAME); None: the current context.
_CONTEXT: str | None = None


def use_context(name: str | None) -> None:
    """Makes every later call talk to the kubeconfig context ``name`` (kubectl's --context); None: the current one."""
    global _CONTEXT
    _CONTEXT = name or None


# ----------------------------------------------------------------------------------------------------
# Talking to the cluster.
# ----------------------------------------------------------------------------------------------------


def load_clients():
    """(CoreV1Api, BatchV1Api, context name); ClusterError with the fix when there is no usable cluster."""
    from kubernetes import client, config

    context = "in-cluster"
    try:
        if _CONTEXT:  # a named context is always the kubeconfig's, as with kubectl --context
            raise config.ConfigException("a context was named")
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # KUBECONFIG as it is now: the client library reads it once, when it is first imported.
            path = os.environ.get("KUBECONFIG") or None
            contexts, active = config.list_kube_config_contexts(config_file=path)
            if _CONTEXT and _CONTEXT not in [c["name"] for c in contexts]:
                raise ClusterError(f"no context {_CONTEXT} in the kubeconfig; contexts there: "
                                   f"{', '.join(c['name'] for c in contexts)}")
            config.load_kube_config(config_file=path, context=_CONTEXT)
            context = _CONTEXT or active["name"]
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
        raise Unreachable(f"cannot reach the cluster of context {context} ({type(error).__name__}); is it the right "
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
    events = _events_of(core, context, namespace, [name] + [p.metadata.name for p in newest_per_index(pods)])
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


OUTPUTS = ("table", "wide", "json", "yaml")


def status(name: str, namespace: str, output: str = "table") -> tuple[str, str]:
    """(the job's state, what `xray jobs status -o OUTPUT` prints): the table (wide: with pod IPs and images), or the
    document of monitor.status_document as JSON or YAML."""
    job, pods, events, log = gather(name, namespace)
    state = job_summary(job, pods)[0]
    if output in ("json", "yaml"):
        return state, _document(status_document(job, pods, events, log), output)
    return state, format_status(job, pods, events, log, wide=output == "wide")


def _document(doc, output: str) -> str:
    import json

    import yaml

    if output == "json":
        return json.dumps(doc, indent=2, default=str)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip("\n")


def list_jobs(namespace: str, output: str = "table") -> str:
    """`xray jobs list`: the project's Jobs in the namespace (label app.kubernetes.io/part-of=xray), newest first."""
    import datetime as dt

    _, batch, context = load_clients()
    jobs = api_call(context, batch.list_namespaced_job, namespace, label_selector="app.kubernetes.io/part-of=xray").items
    rows = job_rows(jobs, dt.datetime.now(dt.timezone.utc))
    if output in ("json", "yaml"):
        return _document({"version": STATUS_VERSION, "namespace": namespace, "jobs": rows}, output)
    if not rows:
        return f"no xray jobs in namespace {namespace} (context {context})"
    return format_jobs(rows)


def observe(name: str, namespace: str) -> tuple[str, str, list[Blocker]]:
    """The job's state, its status text and what blocks its pods, read from the cluster once."""
    job, pods, events, log = gather(name, namespace)
    state = job_summary(job, pods)[0]
    return state, format_status(job, pods, events, log), blockers(pods, events)


WATCH_EXIT = {"succeeded": 0, "failed": 1, "refused": 3}
MIN_REFRESH_S = 1.0  # between two refreshes of `watch` on the API's watch, however fast the pods change


@dataclasses.dataclass(frozen=True)
class WatchLimits:
    """How long `watch` waits on a pod that cannot start (stuck_after) and for the first pod to run at all."""

    stuck_after_s: float = 45
    start_timeout_s: float = 900
    outage_s: float = 600  # how long the API server may be unreachable before `watch` gives up (exit 2)


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
          read=observe, logs=failure_logs, redraw: bool = False, pause=None) -> int:
    """Prints the status until the job ends; 0 when it succeeded, 1 when it failed (then the failed pods' last log
    lines on stderr), 3 when the export gate refused, 4 (WATCH_STUCK) when a pod cannot start or run (named in one
    line on stderr) or nothing started in time. ``name`` may be several Jobs that make one step (the tuner's chief
    and workers): the step ends with the first that fails, named on stderr, or once all have succeeded. A queued
    Job (suspended until Kueue admits it) is waited on without counting against the start timeout. An API server
    that does not answer is waited for (Outage) up to ``limits.outage_s``. ``redraw``: each refresh replaces the last
    on the terminal (REDRAW) instead of following it. ``pause(names, namespace, seconds)`` waits between refreshes:
    ``changes`` (the API's watch: the next refresh comes when a pod changes, or after ``interval_s``) when reading
    the cluster, else a plain sleep of ``interval_s``.
    ``read(name, namespace)`` gives (state, text, blockers) at each refresh (``observe`` reads the cluster);
    ``logs(name, namespace)`` the text printed for a failed job."""
    import sys

    names = [name] if isinstance(name, str) else list(name)
    pause = pause if pause is not None else (changes if read is observe else None)
    clock = _StuckClock(f"job {namespace}/{'+'.join(names)}", limits)
    started = False
    outage = Outage(limits.outage_s)
    while True:
        try:
            seen = [(job, *read(job, namespace)) for job in names]
        except Unreachable as error:
            outage.wait(error)
            continue
        outage.over()
        if redraw:
            out(REDRAW, end="")
        states, stuck = {}, []
        for job, state, text, blocked in seen:
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
        if pause is None:
            time.sleep(interval_s)
        else:
            time.sleep(MIN_REFRESH_S)
            try:
                pause(names, namespace, max(interval_s - MIN_REFRESH_S, 0))
            except Unreachable:
                pass  # the next read meets the outage and waits for it
        if not redraw:
            out("")


def changes(names, namespace: str, timeout_s: float) -> None:
    """Returns when a pod of one of the Jobs ``names`` changes (the API's watch from the current resourceVersion, so
    nothing already seen wakes it), or after ``timeout_s``: `watch` refreshes on what happens, not on a timer."""
    from kubernetes import watch as kwatch

    core, _, context = load_clients()
    selector = f"{JOB_NAME_LABEL} in ({','.join(names)})"
    listed = api_call(context, core.list_namespaced_pod, namespace, label_selector=selector)
    watcher = kwatch.Watch()
    try:
        for _ in api_call(context, watcher.stream, core.list_namespaced_pod, namespace, label_selector=selector,
                          resource_version=listed.metadata.resource_version, timeout_seconds=max(1, int(timeout_s))):
            return
    except Exception as error:  # an expired resourceVersion (410) or a cut stream: the next refresh reads afresh
        from kubernetes.client.exceptions import ApiException

        if isinstance(error, ClusterError) or not isinstance(error, ApiException):
            raise
    finally:
        watcher.stop()


REDRAW = "\x1b[H\x1b[2J"  # cursor home, screen cleared: each refresh of `watch` on a terminal replaces the last


class Outage:
    """How `watch` rides out an API server that does not answer (a managed control plane's upgrade): it waits 1, 2,
    4 ... up to 30 s between tries, says so on stderr, and gives up (ClusterError) once the outage has lasted
    ``limit_s``."""

    def __init__(self, limit_s: float):
        self.limit_s, self.since, self.tries = limit_s, None, 0

    def wait(self, error: Exception) -> None:
        import sys

        now = time.monotonic()
        self.since = self.since if self.since is not None else now
        down = now - self.since
        if down >= self.limit_s:
            raise ClusterError(f"{error}; gave up after {down:.0f} s (--outage-limit {self.limit_s:.0f})") from None
        pause = min(2 ** self.tries, 30, max(self.limit_s - down, 0.1))
        self.tries += 1
        print(f"warning: {error} (unreachable for {down:.0f} s; retrying in {pause:.0f} s, giving up after "
              f"{self.limit_s:.0f} s)", file=sys.stderr)
        time.sleep(pause)

    def over(self) -> None:
        import sys

        if self.since is not None:
            print(f"the API server answers again after {time.monotonic() - self.since:.0f} s", file=sys.stderr)
        self.since, self.tries = None, 0


def _events_of(core, context: str, namespace: str, names) -> list:
    """The events of the named objects, filtered by the API server (a field selector per object), not every event of
    the namespace read at each refresh."""
    events = []
    for name in names:
        events += api_call(context, core.list_namespaced_event, namespace,
                           field_selector=f"involvedObject.name={name}").items
    return events


def _events_for(core, context: str, namespace: str, pods) -> list:
    return _events_of(core, context, namespace, [p.metadata.name for p in pods])


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


def _pods_of_index(core, context: str, name: str, namespace: str, index: int) -> list:
    pods = api_call(context, core.list_namespaced_pod, namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
    matching = [p for p in pods if (p.metadata.annotations or {}).get(INDEX_ANNOTATION, "0") == str(index)]
    return sorted(matching, key=lambda p: p.metadata.creation_timestamp)


def _restarts(pod) -> int:
    return sum(c.restart_count or 0 for c in pod.status.container_statuses or [])


def logs(name: str, namespace: str, index: int = 0, follow: bool = False, tail: int | None = None, out=print,
         previous: bool = False, poll_s: float = 1.0) -> None:
    """The log of the job's worker ``index`` (its newest pod). ``previous``: of the instance before it (the restarted
    container's last run, or the pod it replaced), as kubectl logs --previous. ``follow``: streams, and when the pod
    is replaced (or its container restarted) while the job runs, goes on with the new one, saying so."""
    core, batch, context = load_clients()
    _read_job(batch, context, name, namespace)
    pods = _pods_of_index(core, context, name, namespace, index)
    if not pods:
        raise ClusterError(f"job {name} has no pod with index {index} (yet)")
    pod = pods[-1]
    if previous:
        if _restarts(pod):
            text = api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, previous=True,
                            tail_lines=tail)
        elif len(pods) > 1:
            text = api_call(context, core.read_namespaced_pod_log, pods[-2].metadata.name, namespace, tail_lines=tail)
        else:
            raise ClusterError(f"job {name} index {index}: pod {pod.metadata.name} has no previous instance (its "
                               "container has not restarted and it replaced no pod)")
        out(text, end="")
        return
    if not follow:
        out(api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, tail_lines=tail), end="")
        return
    _follow_logs(core, batch, context, name, namespace, index, pod, tail, out, poll_s)


def _follow_logs(core, batch, context, name, namespace, index, pod, tail, out, poll_s) -> None:
    from kubernetes.client.exceptions import ApiException

    followed = (pod.metadata.name, _restarts(pod))
    while True:
        try:
            stream = api_call(context, core.read_namespaced_pod_log, pod.metadata.name, namespace, follow=True,
                              _preload_content=False, tail_lines=tail)
            for chunk in stream.stream():
                out(chunk.decode(errors="replace"), end="")
            tail = None  # a replacement's log is shown whole
        except ApiException as error:
            if error.status != 400:  # 400: the container is not running yet (pulling, creating)
                raise
        while True:  # the stream ended: the container ended; was it replaced, or has the job ended?
            job = _read_job(batch, context, name, namespace)
            pods = _pods_of_index(core, context, name, namespace, index)
            newest = pods[-1] if pods else pod
            now = (newest.metadata.name, _restarts(newest))
            statuses = newest.status.container_statuses or []
            running = newest.status.phase == "Running" and bool(statuses) and all(
                c.state and c.state.running for c in statuses)  # a container that just ended leaves the phase a moment
            if now != followed and running:
                what = (f"pod {followed[0]} was replaced by {now[0]}" if now[0] != followed[0]
                        else f"the container of {now[0]} restarted")
                out(f"--- {what}; following it ---")
                pod, followed = newest, now
                break
            if now == followed and running:
                break  # the same container still runs: the stream was cut, not ended
            if job_summary(job, pods)[0] not in ("running", "pending", "queued") or newest.status.phase == "Succeeded":
                return
            time.sleep(poll_s)


def delete(name: str, namespace: str) -> None:
    from kubernetes import client

    core, batch, context = load_clients()
    _read_job(batch, context, name, namespace)
    api_call(context, batch.delete_namespaced_job, name, namespace,
              body=client.V1DeleteOptions(propagation_policy="Foreground"))
