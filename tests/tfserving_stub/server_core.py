"""Models, versions and labels: model_servers/server_core.cc, core/basic_manager.cc, core/loader_harness.cc,
core/availability_preserving_policy.cc, core/load_servables_fast.cc, core/servable_state_monitor.cc and
sources/storage_path/file_system_storage_path_source.cc."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfserving_stub.options import Options
from tfserving_stub import warmup
from tfserving_stub.status import Status


Code = grpc.StatusCode
State = get_model_status_pb2.ModelVersionStatus


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
        self.warmup_records = warmup.replay(path, self.signature_defs, self.loaded)  # a failure fails the load


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
