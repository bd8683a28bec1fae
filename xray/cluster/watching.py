"""Following the cluster until something ends, as `xray jobs watch` and every cluster step do: a Job (or the Jobs of one
step) until it succeeds or fails, naming why a pod cannot start or run; a Deployment's rollout; a pod until Ready. The
reads are xray/cluster/kube.py's; what the objects say, xray/cluster/monitor.py's.
"""

from __future__ import annotations

import dataclasses
import time

from xray.cluster.kube import (ClusterError, Unreachable, api_call, events_for, failure_logs, load_clients,
                               observe)
from xray.cluster.monitor import FINAL, JOB_NAME_LABEL, WATCH_STUCK, Blocker, blockers

__all__ = ["WATCH_EXIT", "WATCH_STUCK", "WatchLimits", "watch", "changes", "Outage", "rollout", "pod_ready"]


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
        stuck = blockers(pods, events_for(core, context, namespace, pods))
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
        stuck = blockers([pod], events_for(core, context, namespace, [pod]))
        out(f"pod {namespace}/{name}: {pod.status.phase}" + "".join(f"\n  {b.line()}" for b in stuck))
        if clock.stuck(stuck, False, "not Ready"):
            return WATCH_STUCK
        time.sleep(interval_s)
