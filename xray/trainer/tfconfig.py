"""Who am I in the cluster, and the distribution strategy. The ONE place that builds either.

Sources of identity, in order:
1. an explicit ``TF_CONFIG`` (set by `xray train --workers N` for local processes, or by the user);
2. a Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` plus ``XRAY_NUM_WORKERS``, ``XRAY_JOB_NAME``,
   ``XRAY_SERVICE_NAME`` (the headless Service that is the pods' subdomain) and ``XRAY_WORKER_PORT``;
   worker i is reachable as ``<job>-<i>.<service>:<port>``;
3. otherwise a single worker.
Worker 0 is the chief: only it writes final artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import os

DEFAULT_PORT = 2222
THREADS_ENV = "XRAY_THREADS"  # intra-op threads per worker; the local launcher sets cores / workers


class TFConfigError(ValueError):
    """The environment describes an impossible cluster; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    num_workers: int
    task_type: str
    task_index: int
    source: str  # "TF_CONFIG", "indexed-job" or "single"
    tf_config: dict | None = None

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0 and not self._has_chief)

    @property
    def _has_chief(self) -> bool:
        return bool(self.tf_config and self.tf_config.get("cluster", {}).get("chief"))

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def tf_config_for(hosts: list[str], index: int) -> dict:
    return {"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}}


def indexed_job_hosts(job_name: str, service_name: str, num_workers: int, port: int = DEFAULT_PORT) -> list[str]:
    """Pod i of an Indexed Job has hostname ``<job>-<i>`` under the headless Service's subdomain."""
    return [f"{job_name}-{i}.{service_name}:{port}" for i in range(num_workers)]


def resolve(env: dict | None = None) -> ClusterSpec:
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG", "").strip()
    if raw:
        return _from_tf_config(raw)
    if "JOB_COMPLETION_INDEX" in env:
        return _from_indexed_job(env)
    return ClusterSpec(num_workers=1, task_type="worker", task_index=0, source="single")


def _from_tf_config(raw: str) -> ClusterSpec:
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        task_type, task_index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise TFConfigError(
            f"TF_CONFIG is not valid ({error!r}): expected JSON like "
            '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
        raise TFConfigError(f"TF_CONFIG task {task_type}:{task_index} is not in its cluster {cluster}")
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return ClusterSpec(num_workers, task_type, task_index, "TF_CONFIG", config)


def _from_indexed_job(env) -> ClusterSpec:
    def need(name):
        if not env.get(name):
            raise TFConfigError(
                f"JOB_COMPLETION_INDEX is set (an Indexed Job pod) but {name} is not: the Job manifest "
                "must set XRAY_NUM_WORKERS, XRAY_JOB_NAME and XRAY_SERVICE_NAME"
            )
        return env[name]

    try:
        index = int(env["JOB_COMPLETION_INDEX"])
        num_workers = int(need("XRAY_NUM_WORKERS"))
        port = int(env.get("XRAY_WORKER_PORT") or DEFAULT_PORT)
    except ValueError as error:
        raise TFConfigError(f"Indexed Job variables must be integers: {error}") from None
    if not 0 <= index < num_workers:
        raise TFConfigError(f"JOB_COMPLETION_INDEX={index} is outside 0..{num_workers - 1} (XRAY_NUM_WORKERS)")
    if num_workers == 1:
        return ClusterSpec(1, "worker", 0, "indexed-job")
    hosts = indexed_job_hosts(need("XRAY_JOB_NAME"), need("XRAY_SERVICE_NAME"), num_workers, port)
    return ClusterSpec(num_workers, "worker", index, "indexed-job", tf_config_for(hosts, index))


def configure_threads() -> None:
    """Caps TensorFlow's thread pools when several workers share one machine (must run before TF starts work)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(2, int(threads)))


def make_strategy(spec: ClusterSpec, collective_timeout_s: float, collective: str = "auto"):
    """MultiWorkerMirroredStrategy for several workers (collectives time out instead of hanging on a
    lost peer; ``collective`` is auto, ring or nccl); MirroredStrategy over the local devices for one."""
    import tensorflow as tf

    configure_threads()
    if spec.num_workers > 1:
        os.environ["TF_CONFIG"] = json.dumps(spec.tf_config)
        implementation = getattr(tf.distribute.experimental.CommunicationImplementation, collective.upper())
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s or None,
                                                                  implementation=implementation)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.MirroredStrategy()
