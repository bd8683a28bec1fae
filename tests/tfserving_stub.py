"""TEST SUPPORT ONLY, never shipped: a conformance model of ``tensorflow_model_server``.

The TF Serving binary cannot run on the build machines, so the clients, the export/label flow and the
probes are tested against this. It is written from TF Serving's own source (tensorflow/serving at
9d981c5c), not from what our clients expect: every behaviour below names the file it follows, and
docs/tfserving-conformance.md lists them with the test that checks each one. Where this model and the
real server could disagree, the real server is right: run the shared client suite against it
(XRAY_TFSERVING_URL / XRAY_TFSERVING_GRPC, see tests/test_serving_clients.py).

What it models
- models.config (ModelServerConfig) read at start and re-read every --model_config_file_poll_wait_seconds;
  version policy (latest N, all, specific) over the integer directories of each base path, re-scanned every
  --file_system_poll_wait_seconds; versions go START -> LOADING -> AVAILABLE (or END with the load error),
  and UNLOADING -> END when the policy drops them. [server_core.cc, core/basic_manager.cc,
  sources/storage_path/file_system_storage_path_source.cc, core/servable_state_monitor.h]
- Version labels validated before the models are added, as ServerCore::ReloadConfig does: a label for a
  version that is not AVAILABLE is FAILED_PRECONDITION unless --allow_version_labels_for_unavailable_models,
  which still refuses moving an existing label to another unavailable version; a refused config at start
  stops the server, a refused reload keeps serving with the previous labels. [server_core.cc]
- Requests resolved as ServerCore::ServableRequestFromModelSpec and BasicManager do: latest AVAILABLE
  version, a specific one, or a label; "Servable not found for request: Specific(xray, 3)" is NOT_FOUND,
  "Unrecognized servable version label: x" INVALID_ARGUMENT. [server_core.cc, core/basic_manager.cc,
  core/manager.h]
- REST routing, JSON parsing and writing, error bodies and HTTP codes. [http_rest_api_util.cc,
  http_rest_api_handler.cc, http_server.cc, util/json_tensor.cc]
- Status (every version the monitor knows, newest first, any state) and metadata (proto field names).
  [get_model_status_impl.cc, http_rest_api_util.cc ToJsonString, get_model_metadata_impl.cc]
- Predict: signature lookup, input key checks, outputs as repeated proto fields (float_val) unless
  --enable_serialization_as_tensor_content. [servables/tensorflow/predict_util.cc, server.cc]
- --enable_batching: concurrent requests for the same version and signature merged into one run of at most
  max_batch_size; a failed run fails every request in the batch. [batching/batching_session.cc]

Not modelled (say so before relying on them): classify/regress, Prometheus metrics, request logging,
ReloadConfig over gRPC, TFLite/TFRT, resource estimation (RESOURCE_EXHAUSTED on load), the exact decimal
formatting of floats in REST responses, and gRPC channel arguments.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import contract

Code = grpc.StatusCode
State = get_model_status_pb2.ModelVersionStatus


class Status(Exception):
    """An error status as TF Serving returns it: a gRPC code and TF Serving's own message text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# http_server.cc, ToHTTPStatusCode.
HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}

# http_rest_api_util.cc: the two route patterns, case-insensitive, matched against the whole path; and
# http_rest_api_util.h: only paths under /v1/ reach the handler (others get the HTTP server's own 404).
PREDICTION_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                             re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                         re.IGNORECASE)
HANDLER_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
INT64_MAX = 2**63 - 1


@dataclasses.dataclass
class Options:
    """The tensorflow_model_server flags this model honours (main.cc names and defaults)."""

    model_config_file: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file_poll_wait_seconds: int = 0  # 0: read once (main.cc: int32 flags)
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    # server.h: a failed load is retried max_num_load_retries times, load_retry_interval_micros apart.
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_serialization_as_tensor_content: bool = False
    # Test hooks, not TF Serving flags: how long a version takes to load (a big model), and a fault injected into
    # the next requests (as a proxy or an overloaded server would answer), see StubModelServer.inject.
    load_delay_s: float = 0.0
    batch_timeout_s: float = 0.002
    max_batch_size: int = 0  # from batching_parameters_file; 0 without batching

    FLAGS = {"model_config_file": str, "model_name": str, "model_base_path": str,
             "model_config_file_poll_wait_seconds": int, "file_system_poll_wait_seconds": int,
             "max_num_load_retries": int, "load_retry_interval_micros": int,
             "allow_version_labels_for_unavailable_models": bool,
             "enable_batching": bool, "batching_parameters_file": str,
             "enable_serialization_as_tensor_content": bool}

    @classmethod
    def from_args(cls, args: list[str], **overrides) -> "Options":
        """Options from a command line like the Deployment's (flags this model does not use are ignored)."""
        values = {}
        for arg in args:
            name, _, value = arg.lstrip("-").partition("=")
            kind = cls.FLAGS.get(name)
            if kind is bool:
                values[name] = value.lower() not in ("false", "0") if value else True
            elif kind is not None:
                try:
                    values[name] = kind(value)
                except ValueError:  # tensorflow::Flags::Parse refuses it and main() exits with the usage
                    raise Status(Code.INVALID_ARGUMENT, f"Couldn't interpret value {value} for flag {name}.") from None
        values.update(overrides)
        return cls(**values)


@dataclasses.dataclass
class VersionState:
    state: int = State.START
    error_code: int = 0
    error_message: str = ""
    # The manager still holds this version's harness (it is aspired, or being unloaded). A version that
    # ended and is no longer managed loads again when the policy aspires it again (basic_manager.cc).
    managed: bool = True


class LoadedVersion:
    def __init__(self, path: Path):
        proto = saved_model_pb2.SavedModel()
        try:
            proto.ParseFromString((path / "saved_model.pb").read_bytes())
        except FileNotFoundError:
            # The SavedModel loader's message (tensorflow/cc/saved_model/loader.cc) for a directory without it.
            raise Status(Code.NOT_FOUND, f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}")
        self.signature_defs = proto.meta_graphs[0].signature_def
        self.loaded = tf.saved_model.load(str(path))


class ModelState:
    """One model of the config: its versions' states, what is loaded, its policy."""

    def __init__(self, config):
        self.config = config
        self.states: dict[int, VersionState] = {}
        self.loaded: dict[int, LoadedVersion] = {}

    def aspired(self) -> set[int]:
        """file_system_storage_path_source.cc: integer directories, filtered by the version policy."""
        base = Path(self.config.base_path)
        on_disk = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()) if base.is_dir() else []
        policy = self.config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return set(on_disk)
        if choice == "specific":
            return set(on_disk) & set(policy.specific.versions)
        count = policy.latest.num_versions if choice == "latest" else 1
        return set(on_disk[-max(count, 1):])

    def latest_available(self) -> int | None:
        available = [v for v, s in self.states.items() if s.state == State.AVAILABLE and v in self.loaded]
        return max(available) if available else None


class ServerCore:
    def __init__(self, options: Options):
        self.options = options
        self.lock = threading.RLock()
        self.models: dict[str, ModelState] = {}
        self.labels: dict[str, dict[str, int]] | None = None  # None until the first config: "does not init yet"
        self.config = model_server_config_pb2.ModelServerConfig()
        self.reload_errors: list[str] = []
        self._loads: list[threading.Thread] = []

    # --- configuration ------------------------------------------------------------------------------

    def read_config(self):
        config = model_server_config_pb2.ModelServerConfig()
        if self.options.model_config_file:
            text_format.Parse(Path(self.options.model_config_file).read_text(), config)
        else:  # --model_name/--model_base_path: one model, latest version (main.cc)
            config.model_config_list.config.add(name=self.options.model_name, base_path=self.options.model_base_path,
                                                model_platform="tensorflow")
        return config

    def reload_config(self, config) -> None:
        """ServerCore::ReloadConfig: the config is taken, the labels are checked, THEN the models are added.

        A label check that fails returns before the models are added, so a version named only by a refused
        label is never loaded (the same config is refused again at every poll). Before that: only a
        ModelConfigList may follow a ModelConfigList, names are unique, base paths absolute
        (ValidateModelConfigList). Versions of a model already served load in the background: the call
        returns before they are AVAILABLE (AddModelsViaModelConfigList waits for NEW models only).
        """
        with self.lock:
            first = self.config.WhichOneof("config") is None
            same = config == self.config
            kind = config.WhichOneof("config")
            if not (first or same or (self.config.WhichOneof("config") == kind == "model_config_list")):
                raise Status(Code.FAILED_PRECONDITION, "Cannot transition to requested config. It is only legal to "
                                                       "transition from one ModelConfigList to another.")
            if kind is None:
                return  # "Taking no action for empty config."
            names = set()
            for model in config.model_config_list.config:
                if model.name in names:
                    raise Status(Code.INVALID_ARGUMENT, f"Illegal to list model {model.name} multiple times in config list")
                names.add(model.name)
                if not model.base_path.startswith("/") and "://" not in model.base_path:
                    raise Status(Code.INVALID_ARGUMENT, f"Expected model {model.name} to have an absolute path or URI; "
                                                        f"got base_path()={model.base_path}")
            self.config = config
            self._update_labels()
            self._add_models()

    def _update_labels(self) -> None:
        """ServerCore::UpdateModelVersionLabelMap."""
        new = {}
        for model in self.config.model_config_list.config:
            if not model.version_labels:
                continue
            state = self.models.get(model.name)
            for label, version in model.version_labels.items():
                allow_any = False
                if self.options.allow_version_labels_for_unavailable_models:
                    existing = (self.labels or {}).get(model.name, {}).get(label)
                    allow_any = existing is None or existing == version
                current = state.states.get(version) if state else None
                if not allow_any and (current is None or current.state != State.AVAILABLE):
                    raise Status(Code.FAILED_PRECONDITION,
                                 f"Request to assign label to version {version} of model {model.name}, which is not "
                                 "currently available for inference")
                new.setdefault(model.name, {})[label] = version
        self.labels = new

    def _add_models(self) -> None:
        names = {model.name for model in self.config.model_config_list.config}
        for model in self.config.model_config_list.config:
            if model.name in self.models:
                self.models[model.name].config = model
            else:
                self.models[model.name] = ModelState(model)
        for name in list(self.models):
            if name not in names:  # a model removed from the config: all its versions unloaded
                self.models[name].config.model_version_policy.specific.Clear()
                self.models[name].config.model_version_policy.specific.SetInParent()
        self.poll_file_system()

    def poll_file_system(self) -> None:
        """Aspire the policy's versions: load new ones; unload dropped ones as AvailabilityPreservingPolicy does."""
        with self.lock:
            for model in self.models.values():
                aspired = model.aspired()
                for version, current in model.states.items():
                    if version not in aspired and current.state == State.END:
                        current.managed = False  # the harness is gone: aspiring it again loads it again
                for version in sorted(aspired):
                    current = model.states.get(version)
                    if current is None or (current.state == State.END and not current.managed):
                        model.states[version] = VersionState(State.START)
                        thread = threading.Thread(target=self._load, args=(model, version), daemon=True)
                        self._loads.append(thread)
                        thread.start()
                # availability_preserving_policy.cc: a version the policy dropped is unloaded when no version is
                # aspired, when an aspired one is AVAILABLE, or (the lowest first) when more than one dropped
                # version still serves. A new version that is loading, or that failed, leaves the old one serving.
                dropped = sorted(v for v in model.loaded if v not in aspired)
                aspired_serving = any(v in model.loaded for v in aspired)
                if not aspired or aspired_serving:
                    unload = dropped
                else:
                    unload = dropped[:-1]
                for version in unload:
                    model.states[version] = VersionState(State.UNLOADING)
                    del model.loaded[version]
                    model.states[version] = VersionState(State.END, managed=False)

    def _load(self, model: ModelState, version: int) -> None:
        """loader_harness.cc Load: retried max_num_load_retries times, load_retry_interval_micros apart, LOADING
        all along; the retries stop when the version is no longer aspired (cancel_load_retries)."""
        attempts = 1 + max(self.options.max_num_load_retries, 0)
        with self.lock:
            model.states[version] = VersionState(State.LOADING)
        for attempt in range(attempts):
            time.sleep(self.options.load_delay_s)
            try:
                loaded = LoadedVersion(Path(model.config.base_path) / str(version))
            except Status as error:
                result, loaded = VersionState(State.END, error.code.value[0], error.message), None
            except Exception as error:  # noqa: BLE001 - any load failure ends the version with its message
                result, loaded = VersionState(State.END, Code.UNKNOWN.value[0], str(error).splitlines()[0]), None
            else:
                result = VersionState(State.AVAILABLE)
                break
            if attempt + 1 < attempts:
                time.sleep(self.options.load_retry_interval_micros / 1e6)
                with self.lock:
                    if version not in model.aspired():
                        result = VersionState(State.END, Code.CANCELLED.value[0], "Loading of servable cancelled")
                        break
        with self.lock:
            if loaded is not None:
                model.loaded[version] = loaded
            model.states[version] = result
        self.poll_file_system()  # an older version may now be unloaded

    def wait_for_loads(self, timeout: float = 120) -> None:
        """Joins the loads started so far (a test helper: the server itself never waits with a timeout)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._loads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def await_first_config(self, stop: threading.Event | None = None) -> None:
        """ConnectAdaptersToManagerAndAwaitModelLoads (server_core.cc, load_servables_fast.cc): before any port
        opens, the latest version of every model of the first config must reach AVAILABLE or END
        (ServableRequest::Latest, servable_state_monitor.cc); with no version on disk that is forever (the file
        system keeps being polled). When it ended with an error the server stops: main.cc exits."""
        next_poll = time.monotonic()
        while stop is None or not stop.is_set():
            with self.lock:
                waiting, failed = [], []
                for name, model in self.models.items():
                    if not model.states:
                        waiting.append(name)
                        continue
                    latest = max(model.states)
                    state = model.states[latest]
                    if state.state == State.END and state.error_code:
                        code = next(c for c in Code if c.value[0] == state.error_code)
                        failed.append(f"{{id: {{name: {name} version: {latest}}} due to error: {code.name}: "
                                      f"{state.error_message}}}, ")
                    elif state.state not in (State.AVAILABLE, State.END):
                        waiting.append(name)
            if failed and not waiting:
                raise Status(Code.UNKNOWN, f"{len(failed)} servable(s) did not become available: {{{''.join(failed)}}}")
            if not waiting:
                return
            time.sleep(0.05)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.options.file_system_poll_wait_seconds
                self.poll_file_system()

    # --- request resolution -------------------------------------------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> tuple[int, LoadedVersion]:
        """ServerCore::ServableRequestFromModelSpec + BasicManager::GetUntypedServableHandle."""
        if not name:
            raise Status(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self.lock:
            if label is not None:
                if self.labels is None:
                    raise Status(Code.UNAVAILABLE, f"Model labels does not init yet.{label}")
                if label not in self.labels.get(name, {}):
                    raise Status(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
                version = self.labels[name][label]
            model = self.models.get(name)
            if version is None:
                latest = model.latest_available() if model else None
                if latest is None:
                    raise Status(Code.NOT_FOUND, f"Servable not found for request: Latest({name})")
                return latest, model.loaded[latest]
            if model is None or version not in model.loaded:
                raise Status(Code.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")
            return version, model.loaded[version]

    def status(self, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        """get_model_status_impl.cc: one version, or every version the monitor knows, newest first."""
        with self.lock:
            model = self.models.get(name)
            states = model.states if model else {}
            if version is not None:
                if version not in states:
                    raise Status(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
                versions = [version]
            else:
                if not states:
                    raise Status(Code.NOT_FOUND, f"Could not find any versions of model {name}")
                versions = sorted(states, reverse=True)  # VersionMap is ordered by std::greater
            response = get_model_status_pb2.GetModelStatusResponse()
            for v in versions:
                entry = response.model_version_status.add(version=v, state=states[v].state)
                entry.status.error_code = states[v].error_code
                entry.status.error_message = states[v].error_message
            return response

    def metadata(self, name: str, version: int | None, label: str | None, fields: list[str]):
        """get_model_metadata_impl.cc."""
        if not fields:
            raise Status(Code.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise Status(Code.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        resolved, loaded = self.resolve(name, version, label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = resolved
        response.metadata["signature_def"].Pack(signature_map)
        return response


# --- predict ----------------------------------------------------------------------------------------------


def _dtype_name(dtype) -> str:
    """DataTypeString: "float", "double", "int32", "string", ..."""
    name = tf.dtypes.as_dtype(dtype).name
    return {"float32": "float", "float64": "double"}.get(name, name)


class Predictor:
    """predict_util.cc RunPredict, through a batching queue when --enable_batching (batching_session.cc)."""

    def __init__(self, core: ServerCore):
        self.core = core
        self.options = core.options
        self.queue: list[dict] = []
        self.cv = threading.Condition()
        self.run_lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run, for tests of the merging
        if self.options.enable_batching:
            threading.Thread(target=self._batch_loop, daemon=True).start()

    def predict(self, name, version, label, signature_name: str, inputs: dict[str, np.ndarray]):
        resolved, loaded = self.core.resolve(name, version, label)
        signature_name = signature_name or "serving_default"
        if signature_name not in loaded.signature_defs:
            raise Status(Code.FAILED_PRECONDITION, f"Serving signature key \"{signature_name}\" not found.")
        signature = loaded.signature_defs[signature_name]
        expected = set(signature.inputs)
        sent = set(inputs)
        if len(sent) != len(expected):
            raise Status(Code.INVALID_ARGUMENT,
                         f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
                         f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                         f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        for key in sorted(sent):
            if key not in expected:
                raise Status(Code.INVALID_ARGUMENT, f"input tensor alias not found in signature: {key}. Inputs expected "
                                                    f"to be in the set {{{','.join(sorted(expected))}}}.")
        for index, key in enumerate(sorted(sent)):
            want = _dtype_name(signature.inputs[key].dtype)
            have = "string" if inputs[key].dtype.kind in "SOU" else _dtype_name(inputs[key].dtype)
            if want != have:  # the session's own check (tensorflow/core/common_runtime/executor)
                raise Status(Code.INVALID_ARGUMENT, f"Expects arg[{index}] to be {want} but {have} is provided")
        function = loaded.loaded.signatures[signature_name]
        if not self.options.enable_batching:
            return resolved, signature_name, self._run(function, inputs)
        size = len(next(iter(inputs.values())))
        if size > self.options.max_batch_size:
            raise Status(Code.INVALID_ARGUMENT,
                         f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}")
        task = {"key": (name, resolved, signature_name), "function": function, "inputs": inputs, "size": size,
                "done": threading.Event(), "result": None, "error": None}
        with self.cv:
            self.queue.append(task)
            self.cv.notify_all()
        task["done"].wait()
        if task["error"] is not None:
            raise task["error"]
        return resolved, signature_name, task["result"]

    def _run(self, function, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = function.structured_input_signature[1]
        tensors = {key: tf.constant(value, dtype=specs[key].dtype) for key, value in inputs.items()}
        try:
            with self.run_lock:
                outputs = function(**tensors)
        except tf.errors.OpError as error:
            # The session's status goes back as it is: code and message (http_server.cc/grpc_status_util.cc).
            raise Status(_grpc_code(error), error.message) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def _batch_loop(self):
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
                first = self.queue[0]
                deadline = time.monotonic() + self.options.batch_timeout_s
                while True:
                    same = [t for t in self.queue if t["key"] == first["key"]]
                    total = sum(t["size"] for t in same)
                    remaining = deadline - time.monotonic()
                    if total >= self.options.max_batch_size or remaining <= 0:
                        break
                    self.cv.wait(remaining)
                batch, size = [], 0
                for task in [t for t in self.queue if t["key"] == first["key"]]:
                    if size + task["size"] > self.options.max_batch_size:
                        break
                    batch.append(task)
                    size += task["size"]
                for task in batch:
                    self.queue.remove(task)
            self.batches.append(size)
            merged = {key: np.concatenate([t["inputs"][key] for t in batch]) for key in first["inputs"]}
            try:
                outputs = self._run(first["function"], merged)
            except Status as error:
                for task in batch:  # one failed run fails every task merged into it
                    task["error"] = error
                    task["done"].set()
                continue
            offset = 0
            for task in batch:
                task["result"] = {key: value[offset:offset + task["size"]] for key, value in outputs.items()}
                offset += task["size"]
                task["done"].set()


def _grpc_code(error: tf.errors.OpError) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return Code.UNKNOWN


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: values in the typed repeated field (float_val, string_val, ...), no tensor_content."""
    proto = tensor_pb2.TensorProto(tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape]))
    flat = array.reshape(-1)
    if array.dtype.kind in "SO":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return proto
    fields = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int64): "int64_val",
              np.dtype(np.bool_): "bool_val"}
    proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    field = fields.get(array.dtype, "int_val")  # int32, int16, int8, uint8 travel in int_val
    getattr(proto, field).extend((flat if field != "int_val" else flat.astype(np.int64)).tolist())
    return proto


# --- JSON <-> tensors (util/json_tensor.cc) ----------------------------------------------------------------


def _debug(value) -> str:
    """JsonValueToDebugString: compact JSON, cut at 256 bytes."""
    return json.dumps(value, separators=(",", ":"))[:256]


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def parse_json(body: bytes) -> dict:
    """ParseJson: empty, syntax errors (rapidjson's words for the common ones), non-object documents."""
    if not body:
        raise Status(Code.INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    text = body.decode("utf-8", errors="replace")
    try:
        # kParseStopWhenDoneFlag: what follows the first complete value is ignored; NaN/Infinity are accepted.
        document, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError as error:
        words = {"Expecting value": "Invalid value.",
                 "Expecting property name enclosed in double quotes": "Missing a name for object member.",
                 "Expecting ':' delimiter": "Missing a colon after a name of object member.",
                 "Expecting ',' delimiter": "Missing a comma or ']' after an array element.",
                 "Unterminated string starting at": "Missing a closing quotation mark in string."}
        raise Status(Code.INVALID_ARGUMENT,
                     f"JSON Parse error: {words.get(error.msg, error.msg)} at offset: {error.pos}") from None
    if not isinstance(document, dict):
        raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Is not object")
    return document


def _dense_shape(value) -> list[int]:
    """GetDenseTensorShape: sizes along the first element at every level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _fill(value, level: int, shape: list[int], dtype: str, out: list) -> None:
    """FillTensorProto."""
    if not isinstance(value, list):
        if level != len(shape):
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} "
                                                f"in the JSON DOM. Expected at level: {len(shape)}")
        if isinstance(value, dict):
            if dtype != "string":
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} Type: Object is not of expected type: {dtype}")
            if not _is_b64(value):
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
            try:
                out.append(base64.b64decode(value["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise Status(Code.INVALID_ARGUMENT, "Unable to base64 decode") from None
            return
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise Status(Code.INVALID_ARGUMENT, f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise Status(Code.INVALID_ARGUMENT, f"Encountered list at unexpected size: {len(value)} at level: {level} "
                                            f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _scalar(value, dtype: str):
    """AddValueToTensor: JSON numbers for float/double, integers for int types, strings, booleans."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {"float": is_number, "double": is_number, "int32": is_int and -2**31 <= value < 2**31 if is_int else False,
          "int16": is_int, "int8": is_int, "uint8": is_int, "int64": is_int, "string": isinstance(value, str),
          "bool": isinstance(value, bool), "uint32": is_int and value >= 0 if is_int else False,
          "uint64": is_int and value >= 0 if is_int else False}
    if dtype not in ok:
        raise Status(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_debug(value)} to type: {dtype}")
    if not ok[dtype]:
        raise Status(Code.INVALID_ARGUMENT,
                     f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {dtype}")
    return value.encode() if dtype == "string" else value


def _tensor(value, dtype: str) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    np_dtype = object if dtype == "string" else tf.dtypes.as_dtype({"float": "float32", "double": "float64"}
                                                                   .get(dtype, dtype)).as_numpy_dtype
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(n) for n in shape) + "]"


def request_tensors(document: dict, inputs_info) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson after the signature is known: returns the tensors and "row"/"columnar"."""
    dtypes = {name: _dtype_name(info.dtype) for name, info in inputs_info.items()}
    if not dtypes:
        raise Status(Code.INVALID_ARGUMENT, "Failed to get input map for signature: DEFAULT")
    instances, inputs = document.get("instances"), document.get("inputs")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Not formatted correctly expecting only one "
                                            "of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        if not isinstance(instances, list):
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} No values in 'instances' array")
        return _from_instances(instances, dtypes), "row"
    if has_inputs:
        return _from_inputs(inputs, dtypes), "columnar"
    raise Status(Code.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList."""
    is_object = lambda v: isinstance(v, dict) and not _is_b64(v)  # noqa: E731
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise Status(Code.INVALID_ARGUMENT, "instances is a plain list, but expecting list of objects as multiple input "
                                            "tensors required as per tensorinfo_map")
    objects = is_object(instances[0])
    columns: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}

    def add(item, name: str):
        if name not in dtypes:
            raise Status(Code.INVALID_ARGUMENT, f"JSON object: does not have named input: {name}")
        tensor = _tensor(item, dtypes[name])
        if name in shapes and tensor.size != int(np.prod(shapes[name])):
            raise Status(Code.INVALID_ARGUMENT, f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {tensor.size}")
        if name in shapes and list(tensor.shape) != shapes[name]:
            raise Status(Code.INVALID_ARGUMENT, f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(tensor.shape)}")
        shapes[name] = list(tensor.shape)
        columns.setdefault(name, []).append(tensor)

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise Status(Code.INVALID_ARGUMENT, f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except Status as error:
                    raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} key: {name} of 'instances' "
                                                        f"list. Error: {error.code.name}: {error.message}") from None
            if set(element) != set(dtypes):
                raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} of 'instances' list. JSON object: "
                                                    f"{_debug(element)} keys must be equal to: {','.join(sorted(dtypes))}")
        else:
            if is_object(element):
                raise Status(Code.INVALID_ARGUMENT, f"Expecting value/list but got object at item {index} of input list")
            name = sorted(dtypes)[0]
            try:
                add(element, name)
            except Status as error:
                raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} of 'instances' list. "
                                                    f"Error: {error.code.name}: {error.message}") from None
    return {name: np.stack(values) for name, values in columns.items()}


def _from_inputs(inputs, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(dtypes) > 1:
            raise Status(Code.INVALID_ARGUMENT, "inputs is a plain value/list, but expecting an object as multiple input "
                                                "tensors required as per tensorinfo_map")
        name = sorted(dtypes)[0]
        return {name: _tensor(inputs, dtypes[name])}
    tensors = {}
    for name in sorted(dtypes):
        if name not in inputs:
            raise Status(Code.INVALID_ARGUMENT, f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(inputs[name], dtypes[name])
    return tensors


def _json_values(array, as_b64: bool):
    array = np.asarray(array)
    if array.dtype.kind in "SO":
        flat = [base64.b64encode(v).decode() if as_b64 else v.decode("utf-8", errors="replace") for v in array.reshape(-1)]
        flat = [{"b64": v} for v in flat] if as_b64 else flat
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def response_json(outputs: dict[str, np.ndarray], form: str) -> dict:
    """MakeJsonFromTensors: "predictions" (one entry per batch item) or "outputs"; *_bytes strings as b64."""
    if not outputs:
        raise Status(Code.INVALID_ARGUMENT, "Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if form == "columnar":
        values = {name: _json_values(outputs[name], name.endswith("_bytes")) for name in names}
        return {"outputs": values if len(names) > 1 else values[names[0]]}
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise Status(Code.INVALID_ARGUMENT, f"Tensor name: {name} has no shape information ")
        if batch is not None and outputs[name].shape[0] != batch:
            raise Status(Code.INVALID_ARGUMENT, f"Tensor name: {name} has inconsistent batch size: "
                                                f"{outputs[name].shape[0]} expecting: {batch}")
        batch = outputs[name].shape[0]
    rows = []
    for i in range(batch):
        row = {name: _json_values(outputs[name][i], name.endswith("_bytes")) for name in names}
        rows.append(row if len(names) > 1 else row[names[0]])
    return {"predictions": rows}


# --- gRPC ------------------------------------------------------------------------------------------------


def _spec(spec):
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return spec.name, version, label


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: "StubModelServer"):
        self.server = server

    def Predict(self, request, context):
        try:
            self.server.fault("grpc")
            name, version, label = _spec(request.model_spec)
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            resolved, signature, outputs = self.server.predictor.predict(name, version, label,
                                                                         request.model_spec.signature_name, inputs)
        except Status as error:
            _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.version.value = resolved
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            if self.server.options.enable_serialization_as_tensor_content:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            else:
                response.outputs[key].CopyFrom(as_proto_field(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            self.server.fault("grpc")
            if not request.HasField("model_spec"):
                raise Status(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            return self.server.core.metadata(*_spec(request.model_spec), list(request.metadata_field))
        except Status as error:
            _abort(context, error)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: "StubModelServer"):
        self.server = server

    def GetModelStatus(self, request, context):
        try:
            self.server.fault("grpc")
            if not request.HasField("model_spec"):
                raise Status(Code.INVALID_ARGUMENT, "Missing ModelSpec")
            name, version, _ = _spec(request.model_spec)  # a label is ignored: every version is listed
            return self.server.core.status(name, version)
        except Status as error:
            _abort(context, error)

    def HandleReloadConfigRequest(self, request, context):
        """model_service_impl.cc: only a ModelConfigList is accepted, then ServerCore::ReloadConfig; a refusal is
        the RPC's status (the response body is not sent with a non-OK status)."""
        try:
            self.server.fault("grpc")
            if request.config.WhichOneof("config") != "model_config_list":
                raise Status(Code.INVALID_ARGUMENT, "ServerModelConfig type not supported by HandleReloadConfigRequest."
                                                    " Only ModelConfigList is currently supported")
            self.server.core.reload_config(request.config)
        except Status as error:
            _abort(context, error)
        return model_management_pb2.ReloadConfigResponse()


ERROR_MESSAGE_LIMIT = 1024  # grpc_status_util.cc ToGRPCStatus


def _abort(context, error: Status):
    message = error.message
    if len(message) > ERROR_MESSAGE_LIMIT:
        message = message[:ERROR_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(error.code, message)


# --- REST ------------------------------------------------------------------------------------------------


def _rest_handler(server: "StubModelServer"):
    core = server.core

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: str | None):
            data = body.encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urllib.parse.urlsplit(self.path).path
            if not HANDLER_PATH.fullmatch(path):
                self._reply(404, None)  # http_server.cc: not dispatched; the HTTP server's own 404
                return
            try:
                server.fault("rest")
                if self.command == "OPTIONS":
                    if not re.search(r"https?://", self.headers.get("Origin", "")):
                        raise Status(Code.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")
                    self._reply(200, "")
                    return
                output = self.process(self.command, path, body)
            except Status as error:
                self._reply(HTTP_STATUS.get(error.code, 500), json.dumps({"error": error.message}, indent=4))
                return
            self._reply(200, output)

        def process(self, method: str, path: str, body: bytes) -> str:
            """HttpRestApiHandler::ProcessRequest."""
            malformed = Status(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
            pattern = PREDICTION_PATH if method == "POST" else STATUS_PATH if method == "GET" else None
            match = pattern.fullmatch(path) if pattern else None
            if match is None:
                raise malformed
            name = urllib.parse.unquote(match[1] or "")
            version = None
            if match[2]:
                version = int(match[2])
                if version > INT64_MAX:
                    raise Status(Code.INVALID_ARGUMENT, f"Failed to convert version: {match[2]} to numeric.")
            label = urllib.parse.unquote(match[3]) if match[3] else None
            if method == "POST":
                if match[4].lower() != "predict":
                    raise Status(Code.UNIMPLEMENTED, f"{match[4]} is not modelled by the stand-in")
                return self.predict(name, version, label, body)
            if not name:
                raise Status(Code.INVALID_ARGUMENT, "Missing model name in request.")
            if match[4]:
                response = core.metadata(name, version, label, ["signature_def"])
                return metadata_json(response)
            response = core.status(name, version)
            return json.dumps(json_format.MessageToDict(response, always_print_fields_with_no_presence=True), indent=1)

        def predict(self, name, version, label, body: bytes) -> str:
            document = parse_json(body)
            signature = document.get("signature_name", "")
            if "signature_name" in document and not isinstance(signature, str):
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} not formatted correctly. "
                                                    "'signature_name' key must be a string value.")
            _, loaded = core.resolve(name, version, label)  # GetInfoMap
            key = signature or "serving_default"
            if key not in loaded.signature_defs:
                raise Status(Code.INVALID_ARGUMENT, f"Serving signature name: \"{key}\" not found in signature def")
            tensors, form = request_tensors(document, loaded.signature_defs[key].inputs)
            _, _, outputs = server.predictor.predict(name, version, label, signature, tensors)
            return json.dumps(response_json(outputs, form), indent=4)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _handle

    return Handler


def metadata_json(response) -> str:
    """ToJsonString(GetModelMetadataResponse): proto field names, the SignatureDefMap unpacked from its Any."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return json.dumps({"model_spec": json_format.MessageToDict(response.model_spec, **options),
                       "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}}, indent=1)


class StubModelServer:
    """gRPC and REST on free 127.0.0.1 ports over the model(s) of a models.config, or one model base path.

        StubModelServer(Options.from_args(deployment_args, model_config_file=path)).start()
        StubModelServer(model_base="/models/xray")          # --model_name=xray --model_base_path=...

    ``start()`` returns once the ports are open: after every model of the first config has a version AVAILABLE
    or END, as the real server (with no version on disk it waits until one appears). It raises Status when TF
    Serving would exit instead (a label for a version that is not loaded without
    --allow_version_labels_for_unavailable_models, a failed first load). ``rest_port``/``grpc_port`` are known
    after start().
    """

    def __init__(self, options: Options | None = None, *, model_base: str | None = None, name: str = contract.MODEL_NAME,
                 address: str = "127.0.0.1", grpc_port: int = 0, rest_port: int = 0):
        if options is None:
            options = Options(model_name=name, model_base_path=str(model_base))
        if options.enable_batching and not options.max_batch_size:
            options.max_batch_size = _max_batch_size(options.batching_parameters_file)
        self.options = options
        self.core = ServerCore(options)
        self.predictor = Predictor(self.core)
        self._faults: list[tuple[str, grpc.StatusCode, str]] = []
        self._fault_lock = threading.Lock()
        self.requests = {"grpc": 0, "rest": 0}
        self._stop = threading.Event()
        self.address, self.grpc_port, self.rest_port = address, grpc_port, rest_port
        self.grpc_server = self.http = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "StubModelServer":
        self.core.reload_config(self.core.read_config())  # a refusal here stops the server, as in main.cc
        self.core.await_first_config(self._stop)  # no port is open before this returns (server.cc BuildAndStart)
        grpc_options = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=grpc_options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port(f"{self.address}:{self.grpc_port}")
        self.http = ThreadingHTTPServer((self.address, self.rest_port), _rest_handler(self))
        self.rest_port = self.http.server_address[1]
        self.grpc_server.start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()
        return self

    def _poll(self):
        next_fs = next_config = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            if self.options.model_config_file_poll_wait_seconds > 0 and now >= next_config:
                next_config = now + self.options.model_config_file_poll_wait_seconds
                self.poll_config()
            if now >= next_fs:
                next_fs = now + max(self.options.file_system_poll_wait_seconds, 0.05)
                self.core.poll_file_system()

    def poll_config(self) -> Status | None:
        """One config poll (server.cc PollFilesystemAndReloadConfig): a refused config is logged, not fatal."""
        try:
            self.core.reload_config(self.core.read_config())
        except Status as error:
            self.core.reload_errors.append(error.message)
            return error
        return None

    def inject(self, code: grpc.StatusCode, message: str, count: int = 1, api: str = "any") -> None:
        """Answer the next ``count`` requests with this status (an overloaded or restarting server)."""
        with self._fault_lock:
            self._faults.extend([(api, code, message)] * count)

    def fault(self, api: str) -> None:
        with self._fault_lock:
            self.requests[api] += 1
            for index, (wanted, code, message) in enumerate(self._faults):
                if wanted in ("any", api):
                    del self._faults[index]
                    raise Status(code, message)

    def stop(self) -> None:
        self._stop.set()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=None)


def _max_batch_size(path: str) -> int:
    if not path:
        return 1000  # BatchingParameters default max_batch_size (session_bundle_config.proto)
    from serving import config as serving_config

    return serving_config.parse_text("BatchingParameters", Path(path).read_text()).max_batch_size.value or 1000


def deployment_args() -> list[str]:
    """The tensorflow_model_server arguments of our Deployment (k8s/base/serving/deployment.yaml)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "k8s/base/serving/deployment.yaml"
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "Deployment":
            (container,) = [c for c in document["spec"]["template"]["spec"]["containers"] if c["name"] == "tfserving"]
            return list(container["args"])
    raise AssertionError(f"no Deployment in {path}")


def deployment_server(model_base: str, labels: dict[str, int] | None = None, config_dir: str | None = None,
                      **overrides) -> StubModelServer:
    """The stand-in run with our Deployment's flags over a models.config written for ``model_base``."""
    from serving import config as serving_config

    config_dir = Path(config_dir or model_base)
    config_path = config_dir / "models.config"
    if not config_path.exists() or labels is not None:
        serving_config.write_text_proto(serving_config.models_config(str(model_base), labels), str(config_path))
    batching = config_dir / "batching.config"
    serving_config.write_text_proto(serving_config.batching_config(), str(batching))
    options = Options.from_args(deployment_args(), model_config_file=str(config_path),
                                batching_parameters_file=str(batching), **overrides)
    return StubModelServer(options)


def main(argv: list[str]) -> int:
    """`tensorflow_model_server` with our Deployment's flags, in the stand-in image the local cluster runs
    (tests/tfserving_standin/): gRPC on --port, REST on --rest_api_port, on every address of the pod."""
    import signal
    import sys

    ports = {"port": 8500, "rest_api_port": 8501}
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        if name in ports:
            ports[name] = int(value)
    try:
        server = StubModelServer(Options.from_args(argv), address="0.0.0.0", grpc_port=ports["port"],
                                 rest_port=ports["rest_api_port"]).start()
    except Status as error:  # TF Serving's main exits when its first config is refused
        print(f"tensorflow_model_server (stand-in): {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    print(f"tensorflow_model_server (stand-in): gRPC on :{server.grpc_port}, REST on :{server.rest_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0
