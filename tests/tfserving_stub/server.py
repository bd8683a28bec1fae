"""The server process: model_servers/server.cc (BuildAndStart, the config poll) and main.cc."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from xray.serving import contract
from tfserving_stub.grpc_services import ModelService, PredictionService
from tfserving_stub.http_rest import rest_handler
from tfserving_stub.options import Options
from tfserving_stub.predict import Predictor
from tfserving_stub.server_core import ServerCore
from tfserving_stub.status import Status

Code = grpc.StatusCode


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
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self), self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port(f"{self.address}:{self.grpc_port}")
        self.http = ThreadingHTTPServer((self.address, self.rest_port), rest_handler(self))
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

    def clear_faults(self) -> None:
        """Drops the injected answers not given yet."""
        with self._fault_lock:
            self._faults.clear()

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
    from xray.serving import config as serving_config

    return serving_config.parse_text("BatchingParameters", Path(path).read_text()).max_batch_size.value or 1000


def deployment_args() -> list[str]:
    """The tensorflow_model_server arguments of our Deployment (xray/k8s/base/serving/deployment.yaml)."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "xray/k8s/base/serving/deployment.yaml"
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "Deployment":
            (container,) = [c for c in document["spec"]["template"]["spec"]["containers"] if c["name"] == "tfserving"]
            return list(container["args"])
    raise AssertionError(f"no Deployment in {path}")


def deployment_server(model_base: str, labels: dict[str, int] | None = None, config_dir: str | None = None,
                      **overrides) -> StubModelServer:
    """The stand-in run with our Deployment's flags over a models.config written for ``model_base``."""
    from xray.serving import config as serving_config

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
