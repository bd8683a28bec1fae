"""Moving a version label (stable, canary) on running TF Serving replicas, the way TF Serving is built for it.

TF Serving changes its labels and version policy through ModelService.HandleReloadConfigRequest
(model_servers/model_service_impl.cc -> ServerCore::ReloadConfig). A server started with --model_config_file
and --model_config_file_poll_wait_seconds also re-applies that file at every poll (server.cc,
PollFilesystemAndReloadConfig), so the file and the RPC must say the same thing at every step: each step writes
``<model base>/models.config`` first (atomically), then sends the same config to every replica. A restarted or
new replica reads the file at start and comes back with the same labels.

The order TF Serving accepts (server_core.cc UpdateModelVersionLabelMap refuses to move a label to a version
that is not AVAILABLE):

1. stage: the version joins the specific version policy, labels unchanged;
2. wait until every replica reports the version AVAILABLE (GetModelStatus). A replica whose load ends with an
   error, or that is not there within the deadline, is named, the staging is undone, and the label stays;
3. move: the label points at the version. A version no label names any more leaves the policy, and TF Serving
   unloads it once the new one serves (availability_preserving_policy.cc).

Every move is appended to ``<model base>/label-history.json``, which rollback reads.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from typing import Callable

import tensorflow as tf

from xray.serving import config as serving_config
from xray.serving import contract
from xray.data.atomic import write_atomic

HISTORY_FILE = "label-history.json"


class PromoteError(Exception):
    """A move that did not happen; the label is where it was (``replica`` names the one that failed, if any)."""

    def __init__(self, message: str, replica: str | None = None):
        super().__init__(message)
        self.replica = replica


@dataclasses.dataclass(frozen=True)
class Replica:
    """One TF Serving process: a name for messages (the pod) and its gRPC address."""

    name: str
    target: str


class ReplicaClient:
    """The two ModelService calls a move needs, on one replica (tensorflow_serving/apis/model_service.proto)."""

    def __init__(self, replica: Replica, model_name: str, timeout: float = 30.0):
        from xray.clients.grpc import GrpcClient

        self.replica = replica
        self.client = GrpcClient(replica.target, model_name, timeout=timeout, retries=2)

    def reload(self, config) -> None:
        self.client.reload_config(config)

    def versions(self) -> list[dict]:
        """Every version the server knows ([] while it knows none: NOT_FOUND)."""
        from xray.clients import ServingError

        try:
            return self.client.status()
        except ServingError as error:
            if error.code == "NOT_FOUND":
                return []
            raise

    def state(self, version: int) -> dict | None:
        """{"version", "state", "error_code", "error_message"} of ``version``, or None while the server does not
        know it yet."""
        return next((v for v in self.versions() if v["version"] == version), None)

    def available(self) -> set[int]:
        return {v["version"] for v in self.versions() if v["state"] == "AVAILABLE"}

    def close(self) -> None:
        self.client.close()


@dataclasses.dataclass
class Move:
    label: str
    version: int
    previous: int | None  # where the label pointed before (None: a new label)
    labels: dict[str, int]  # every label after the move
    staged: bool  # whether the version had to be loaded first


config_path = serving_config.config_path


def current_config(model_base: str, base_path: str, name: str = contract.MODEL_NAME):
    path = config_path(model_base)
    if tf.io.gfile.exists(path):
        return serving_config.read_models_config(path)
    return serving_config.models_config(base_path, name=name)


def history(model_base: str) -> list[dict]:
    path = f"{model_base.rstrip('/')}/{HISTORY_FILE}"
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def rollback_version(model_base: str, label: str) -> int:
    """The version ``label`` pointed at before its last move (from label-history.json)."""
    moves = [m for m in history(model_base) if m["label"] == label]
    if not moves or moves[-1]["from"] is None:
        raise PromoteError(f"no earlier version of {label} to roll back to in {model_base}/{HISTORY_FILE}")
    return moves[-1]["from"]


def _record(model_base: str, move: Move) -> None:
    entries = history(model_base)
    entries.append({"label": move.label, "from": move.previous, "to": move.version,
                    "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    write_atomic(f"{model_base.rstrip('/')}/{HISTORY_FILE}", json.dumps(entries, indent=1) + "\n")


def promote(model_base: str, label: str, replicas, *, version: int | None = None, from_label: str | None = None,
            rollback: bool = False, name: str = contract.MODEL_NAME, base_path: str | None = None,
            wait_s: float = 600.0, log: Callable[[str], None] = print) -> Move:
    """`xray promote` and `make promote`: which version ``label`` should point at (``version``; the one
    ``from_label`` points at; where it pointed before its last move with ``rollback``; else the newest), then
    ``move_label``. PromoteError when that version cannot be found or a replica cannot load it."""
    from xray.serving import config as serving_config
    from xray.serving import export

    available = {v["version"] for v in export.list_versions(model_base)}
    if rollback:
        version = rollback_version(model_base, label)
    elif from_label:
        labels = serving_config.read_labels(model_base)
        if from_label not in labels:
            raise PromoteError(f"label {from_label} is not set in {model_base}/models.config (labels: "
                               f"{labels or 'none'})")
        version = labels[from_label]
    elif version is None:
        version = max(available, default=0)
    return move_label(model_base, label, version, replicas, available=available, name=name,
                      base_path=base_path or f"/models/{name}", wait_s=wait_s, log=log)


def move_label(model_base: str, label: str, version: int, replicas, *, base_path: str, available: set[int],
               name: str = contract.MODEL_NAME, wait_s: float = 600.0, poll_s: float = 1.0,
               log: Callable[[str], None] = print, connect=ReplicaClient) -> Move:
    """Points ``label`` at ``version`` on every replica and in ``<model_base>/models.config``.

    ``replicas``: a list of Replica, or a function returning the current list (asked again before the label
    moves, so a replica that started meanwhile is staged too). A replica that does not answer yet (a pod still
    loading its first config keeps its ports closed) is waited for until ``wait_s``. With no replica (no server
    running) only the file is written: a server started on it accepts the labels
    (--allow_version_labels_for_unavailable_models). ``available``: the versions on disk. Raises PromoteError,
    the label where it was, when a replica refuses the config or cannot load the version.
    """
    if label not in contract.VERSION_LABELS:
        raise PromoteError(f"unknown label {label!r}; use {', '.join(contract.VERSION_LABELS)}")
    if version not in available:
        raise PromoteError(f"version {version} does not exist under {model_base} (have {sorted(available)})")
    discover = replicas if callable(replicas) else (lambda: list(replicas))
    before = current_config(model_base, base_path, name)
    for model in before.model_config_list.config:
        if model.name == name:
            base_path = model.base_path  # the path as the running servers see it
    labels, staged = serving_config.labels_of(before, name), serving_config.staged_of(before, name)
    previous = labels.get(label)
    after_labels = {**labels, label: version}
    final = serving_config.models_config(base_path, after_labels, name=name)
    clients: dict[Replica, ReplicaClient] = {}
    deadline = time.monotonic() + wait_s
    try:
        for replica in discover():
            clients[replica] = connect(replica, name)
        # What the servers serve now: the policy's versions, or (no label yet: the latest policy) what they load.
        served = set(labels.values()) | staged if labels else set().union(*(_available(c) for c in clients.values()))
        move = Move(label, version, previous, after_labels, staged=bool(clients) and version not in served)
        stage = serving_config.models_config(base_path, labels, name=name, staged=served | {version}) \
            if move.staged else before
        if move.staged:
            log(f"stage: version {version} joins the version policy on {len(clients)} replica(s); labels unchanged")
            serving_config.write_text_proto(stage, config_path(model_base))
        while True:
            try:
                _stage_and_wait(list(clients.values()), stage, version, deadline, poll_s, log)
            except PromoteError:
                if move.staged:
                    log(f"undo: version {version} leaves the version policy; {label} stays at {previous}")
                    _undo(model_base, before, list(clients.values()), log)
                raise
            # Replicas that started since: they may have read the file before the staging; stage them too.
            new = [replica for replica in discover() if replica not in clients]
            if not new:
                break
            for replica in new:
                log(f"  {replica.name}: started during the move")
                clients[replica] = connect(replica, name)
        log(f"move: {label} -> version {version}" + (f" (was {previous})" if previous is not None else "")
            + (f" on {len(clients)} replica(s)" if clients else " in the file only (no server given)"))
        _apply(model_base, final, list(clients.values()), restore=stage, log=log)
    finally:
        for client in clients.values():
            client.close()
    _record(model_base, move)
    return move


def _available(client: ReplicaClient) -> set[int]:
    from xray.clients import ServingError

    try:
        return client.available()
    except ServingError as error:
        raise PromoteError(f"replica {client.replica.name} ({client.replica.target}) did not answer: {error}",
                           client.replica.name) from None


def _apply(model_base: str, config, clients: list[ReplicaClient], *, restore, log) -> None:
    """Writes ``config`` to models.config, then sends it to every replica. When one refuses, the file and the
    replicas that took it go back to ``restore`` (when given) and PromoteError names the replica."""
    from xray.clients import ServingError

    serving_config.write_text_proto(config, config_path(model_base))
    done = []
    for client in clients:
        try:
            client.reload(config)
        except ServingError as error:
            if restore is not None:
                _undo(model_base, restore, done, log)
            raise PromoteError(f"replica {client.replica.name} ({client.replica.target}) refused the config: "
                               f"{error.code}: {error.message}", client.replica.name) from None
        done.append(client)


def _undo(model_base: str, config, clients: list[ReplicaClient], log) -> None:
    """Puts ``config`` back in the file and on every replica that answers; one that does not gets it from the file
    at its next poll (or at its start). Never raises: the error being reported is the one that matters."""
    from xray.clients import ServingError

    serving_config.write_text_proto(config, config_path(model_base))
    for client in clients:
        try:
            client.reload(config)
        except ServingError as error:
            log(f"warning: {client.replica.name} did not take the previous config back ({error.code}); its next poll "
                "of models.config restores it")


def _stage_and_wait(clients: list[ReplicaClient], stage, version: int, deadline: float, poll_s: float, log) -> None:
    """Sends ``stage`` to each replica (waiting for one that does not answer yet), then waits until each reports
    ``version`` AVAILABLE. PromoteError names the first replica that refuses, fails the load or runs out of time."""
    from xray.clients import ServingError

    pending = {client.replica.name: client for client in clients}
    sent: set[str] = set()
    last: dict[str, str] = {}
    while pending:
        for replica_name, client in list(pending.items()):
            where = f"{replica_name} ({client.replica.target})"
            try:
                if replica_name not in sent:
                    client.reload(stage)
                    sent.add(replica_name)
                entry = client.state(version)
            except ServingError as error:
                if error.code != "UNAVAILABLE":
                    what = "refused the config" if replica_name not in sent else "did not report its versions"
                    raise PromoteError(f"replica {where} {what}: {error.code}: {error.message}", replica_name) from None
                entry, state = None, "not answering yet"
            else:
                state = entry["state"] if entry else "not known yet"
            if entry and entry["state"] == "AVAILABLE":
                log(f"  {replica_name}: version {version} AVAILABLE")
                del pending[replica_name]
                continue
            if entry and entry["state"] == "END":
                detail = f"{entry['error_code']}: {entry['error_message']}" if entry["error_code"] != "OK" else \
                    "unloaded before it served"
                raise PromoteError(f"replica {where} could not load version {version}: {detail}", replica_name)
            if last.get(replica_name) != state:
                log(f"  {replica_name}: version {version} {state}")
            last[replica_name] = state
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{n} ({last.get(n)})" for n in sorted(pending))
            raise PromoteError(f"version {version} not AVAILABLE in time on {names} (TF Serving retries a failed load "
                               "5 times, a minute apart, before it reports the error: allow a longer wait, or read the "
                               "server's log)", sorted(pending)[0])
        time.sleep(poll_s)


def dns_replicas(service: str, port: int = 8500, names: dict[str, str] | None = None) -> Callable[[], list[Replica]]:
    """Inside the cluster: a function listing every pod behind a headless Service, from DNS. The Deployment's
    xray-serving-replicas publishes not-ready addresses too (CoreDNS answers from its EndpointSlices), so a
    replica still loading its first config is found and waited for. ``names`` maps an address to its pod name
    for messages (make promote passes what it saw before the Job started); an unknown address names itself."""
    import socket

    names = names or {}

    def replicas() -> list[Replica]:
        try:
            found = socket.getaddrinfo(service, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise PromoteError(f"no address for service {service} ({error.strerror}): is TF Serving deployed in this "
                               "namespace (make deploy-serving)?") from None
        addresses = sorted({info[4][0] for info in found})
        return [Replica(names.get(address, address), f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
                for address in addresses]

    return replicas


def parse_names(text: str) -> dict[str, str]:
    """"10.244.0.5=xray-serving-abc,..." -> {"10.244.0.5": "xray-serving-abc", ...}"""
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {address.strip(): name.strip() for address, name in pairs}
