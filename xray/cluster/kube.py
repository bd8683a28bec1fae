"""Talking to the cluster, and the job commands in the spirit of kubectl (`xray jobs list|status|logs|delete`; `watch`
and the rollout and pod follows are in xray/cluster/watching.py).

The API calls are thin; what to show is decided in xray/cluster/monitor.py on the kubernetes client's model objects
(V1Job, V1Pod, CoreV1Event), tested without a cluster. Pre-flight checks: xray/cluster/preflight.py; rendering:
xray/cluster/render.py.
"""

from __future__ import annotations

import os
import time

from xray.cluster.monitor import (INDEX_ANNOTATION, JOB_NAME_LABEL, STATUS_VERSION, Blocker, blockers, format_jobs,
                                  format_status, job_rows, job_summary, newest_per_index, status_document)


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
    events = events_of(core, context, namespace, [name] + [p.metadata.name for p in newest_per_index(pods)])
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


def events_of(core, context: str, namespace: str, names) -> list:
    """The events of the named objects, filtered by the API server (a field selector per object), not every event of
    the namespace read at each refresh."""
    events = []
    for name in names:
        events += api_call(context, core.list_namespaced_event, namespace,
                           field_selector=f"involvedObject.name={name}").items
    return events


def events_for(core, context: str, namespace: str, pods) -> list:
    """The events of these pods (events_of their names)."""
    return events_of(core, context, namespace, [p.metadata.name for p in pods])


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
