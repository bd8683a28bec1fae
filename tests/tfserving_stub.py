"""TEST SUPPORT ONLY, never shipped: a small stand-in for tensorflow_model_server.

The TF Serving binary cannot be installed on the build machines, so the clients are tested against
this: TF Serving's gRPC services (PredictionService.Predict/GetModelMetadata, ModelService.
GetModelStatus) and REST routes (/v1/models/<name>[/versions/<n>|/labels/<l>][:predict|/metadata])
implemented over the REAL exported SavedModels, with TF Serving's documented request formats and
error statuses (INVALID_ARGUMENT / HTTP 400, NOT_FOUND / HTTP 404).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving import contract


class StubError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.INTERNAL: 500}


class ModelRepository:
    """Every integer version under the model base, loaded, plus version labels."""

    def __init__(self, model_base: str, name: str = contract.MODEL_NAME, labels: dict[str, int] | None = None):
        self.name = name
        self.labels = dict(labels or {})
        self.versions = {}
        self.signature_defs = {}
        for path in sorted(Path(model_base).iterdir()):
            if path.name.isdigit():
                version = int(path.name)
                self.versions[version] = tf.saved_model.load(str(path))
                proto = saved_model_pb2.SavedModel()
                proto.ParseFromString((path / "saved_model.pb").read_bytes())
                self.signature_defs[version] = proto.meta_graphs[0].signature_def
        self.lock = threading.Lock()  # one request at a time through the models, as a batching queue would

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> int:
        if name != self.name:
            raise StubError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        if label:
            if label not in self.labels:
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            return max(self.versions)
        if version not in self.versions:
            raise StubError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})")
        return version

    def run(self, version: int, signature_name: str, inputs: dict) -> dict:
        loaded = self.versions[version]
        signature_name = signature_name or contract.SIGNATURE_BYTES
        if signature_name not in loaded.signatures:
            raise StubError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"Serving signature name: \"{signature_name}\" not found in signature def")
        function = loaded.signatures[signature_name]
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise StubError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"input keys {sorted(inputs)} do not match the signature's {sorted(specs)}")
        tensors = {}
        for key, value in inputs.items():
            spec = specs[key]
            array = np.asarray(value)
            if spec.dtype == tf.string and array.dtype.kind not in "SOU":
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, f"Expects arg[0] to be string but {array.dtype} is provided")
            if spec.dtype != tf.string and array.dtype.kind in "SOU":
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, f"Expects arg[0] to be {spec.dtype.name} but string is provided")
            if array.ndim == 0 or array.shape[0] == 0:
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "empty batch")
            if array.shape[0] > contract.MAX_BATCH:
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Task size {array.shape[0]} is larger than maximum input batch size {contract.MAX_BATCH}")
            try:
                tensors[key] = tf.constant(array, dtype=spec.dtype)
            except (TypeError, ValueError) as error:
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        try:
            with self.lock:
                outputs = function(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            raise StubError(grpc.StatusCode.INVALID_ARGUMENT, error.message.splitlines()[0]) from None
        return {key: value.numpy() for key, value in outputs.items()}


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repo: ModelRepository):
        self.repo = repo

    def Predict(self, request, context):
        try:
            spec = request.model_spec
            version = self.repo.resolve(spec.name, spec.version.value if spec.HasField("version") else None,
                                        spec.version_label or None)
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            outputs = self.repo.run(version, spec.signature_name, inputs)
        except StubError as error:
            context.abort(error.code, error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or contract.SIGNATURE_BYTES
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        spec = request.model_spec
        try:
            version = self.repo.resolve(spec.name, spec.version.value if spec.HasField("version") else None,
                                        spec.version_label or None)
        except StubError as error:
            context.abort(error.code, error.message)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.repo.signature_defs[version].items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repo: ModelRepository):
        self.repo = repo

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        try:
            wanted = self.repo.resolve(spec.name, spec.version.value if spec.HasField("version") else None)
        except StubError as error:
            context.abort(error.code, error.message)
        versions = [wanted] if spec.HasField("version") else sorted(self.repo.versions)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add(version=version,
                                                       state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            status.status.error_code = 0
        return response


_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                    r"(?P<verb>:predict|/metadata)?$")


def _rest_handler(repo: ModelRepository):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            match = _ROUTE.match(self.path)
            if not match:
                raise StubError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
            version = int(match["version"]) if match["version"] else None
            return match, repo.resolve(match["name"], version, match["label"])

        def do_GET(self):
            try:
                match, version = self._route()
                if match["verb"] == "/metadata":
                    signature_map = get_model_metadata_pb2.SignatureDefMap()
                    for key, value in repo.signature_defs[version].items():
                        signature_map.signature_def[key].CopyFrom(value)
                    self._reply(200, {"model_spec": {"name": repo.name, "version": str(version)},
                                      "metadata": {"signature_def": json_format.MessageToDict(signature_map)}})
                elif match["verb"] is None:
                    versions = [version] if match["version"] else sorted(repo.versions)
                    self._reply(200, {"model_version_status": [
                        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                        for v in versions]})
                else:
                    raise StubError(grpc.StatusCode.NOT_FOUND, "predict needs POST")
            except StubError as error:
                self._reply(HTTP_STATUS.get(error.code, 500), {"error": error.message})

        def do_POST(self):
            try:
                match, version = self._route()
                if match["verb"] != ":predict":
                    raise StubError(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = self._parse_body(raw)
                signature = body.get("signature_name") or contract.SIGNATURE_BYTES
                specs = repo.versions[version].signatures[signature].structured_input_signature[1] \
                    if signature in repo.versions[version].signatures else {}
                columnar = "inputs" in body
                inputs = self._inputs(body, specs)
                outputs = repo.run(version, signature, inputs)
                self._reply(200, self._outputs(outputs, columnar))
            except StubError as error:
                self._reply(HTTP_STATUS.get(error.code, 500), {"error": error.message})

        @staticmethod
        def _parse_body(raw: bytes) -> dict:
            if not raw.strip():
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "JSON Parse error: The document is empty")
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {error}") from None
            if not isinstance(body, dict):
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "JSON Value is not an object")
            if ("instances" in body) == ("inputs" in body):
                raise StubError(grpc.StatusCode.INVALID_ARGUMENT,
                                "Missing 'inputs' or 'instances' key" if "instances" not in body
                                else "Not both 'inputs' and 'instances' keys can be present")
            return body

        @staticmethod
        def _decode(value, spec):
            # Any {"b64": ...} object is decoded for a DT_STRING input, whatever its name.
            if isinstance(value, dict):
                if set(value) != {"b64"} or not isinstance(value["b64"], str):
                    raise StubError(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected object {str(value)[:50]}")
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "Unable to base64 decode") from None
            if isinstance(value, list):
                return [Handler._decode(v, spec) for v in value]
            return value

        def _inputs(self, body: dict, specs: dict) -> dict:
            if "instances" in body:
                instances = body["instances"]
                if not isinstance(instances, list) or not instances:
                    raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a non-empty list")
                if all(isinstance(i, dict) and "b64" not in i for i in instances):
                    keys = {frozenset(i) for i in instances}
                    if len(keys) != 1:
                        raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "instances have different input keys")
                    return {key: [self._decode(i[key], specs.get(key)) for i in instances] for key in next(iter(keys))}
                if len(specs) != 1:
                    raise StubError(grpc.StatusCode.INVALID_ARGUMENT, "unnamed instances need a single-input signature")
                (key,) = specs
                return {key: [self._decode(i, specs[key]) for i in instances]}
            inputs = body["inputs"]
            if isinstance(inputs, dict):
                return {key: self._decode(value, specs.get(key)) for key, value in inputs.items()}
            (key,) = specs or {"": None}
            return {key: self._decode(inputs, specs.get(key))}

        @staticmethod
        def _outputs(outputs: dict, columnar: bool) -> dict:
            def plain(array):
                if array.dtype.kind in "SO":
                    return [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()] \
                        if array.ndim == 1 else [plain(a) for a in array]
                return array.tolist()

            if columnar:
                return {"outputs": {key: plain(value) for key, value in outputs.items()}}
            count = len(next(iter(outputs.values())))
            rows = [{key: plain(value[i:i + 1])[0] for key, value in outputs.items()} for i in range(count)]
            return {"predictions": rows}

    return Handler


class StubModelServer:
    """Starts gRPC and REST on free 127.0.0.1 ports; ``stop()`` shuts both down."""

    def __init__(self, model_base: str, name: str = contract.MODEL_NAME, labels: dict[str, int] | None = None):
        self.repo = ModelRepository(model_base, name, labels)
        options = [("grpc.max_receive_message_length", contract.MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", contract.MAX_MESSAGE_BYTES)]
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.repo), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.repo), self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self.repo))
        self.rest_port = self.http.server_address[1]
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def start(self) -> "StubModelServer":
        self.grpc_server.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.grpc_server.stop(grace=None)
