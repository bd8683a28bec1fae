"""TF Serving gRPC client: Predict, GetModelMetadata (PredictionService), GetModelStatus and
HandleReloadConfigRequest (ModelService).

    client = GrpcClient("localhost:8500")
    client.predict([jpeg_bytes])  # -> [{"probability": 0.93, "label": "PNEUMONIA"}]

Deadlines on every call; retries with exponential backoff and jitter on UNAVAILABLE, RESOURCE_EXHAUSTED and
DEADLINE_EXCEEDED (a restarting pod, a full batching queue, a slow answer), never on INVALID_ARGUMENT or
NOT_FOUND. status() and metadata() return the same dicts as the REST client's. Message limits are raised to contract.MAX_MESSAGE_BYTES
(the Python default receive limit is 4 MB). gRPC connections are sticky through kube-proxy: one
client keeps talking to one pod; the server sets a max connection age to spread load.
"""

from __future__ import annotations


import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from xray.clients import Retry, ServingError, parse_metadata, parse_status
from xray.serving import contract


class GrpcClient:
    def __init__(self, target: str, model_name: str = contract.MODEL_NAME, version: int | None = None,
                 label: str | None = None, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 tls: bool = False, root_certificates: bytes | None = None, ca_cert: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None, headers: dict | None = None):
        """``tls`` (implied by ``ca_cert``/``client_cert``): verify the server against ``ca_cert`` (a PEM file;
        default the system's roots) and present ``client_cert``/``client_key`` when given. ``headers`` go as
        call metadata with every call (gRPC keys are lower case: Authorization -> authorization)."""
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if bool(client_cert) != bool(client_key):
            raise ValueError("a client certificate needs its key, and the key its certificate")
        self.target, self.model_name, self.version, self.label = target, model_name, version, label
        self.metadata_pairs = [(key.strip().lower(), value.strip()) for key, value in (headers or {}).items()]
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.retry = Retry(retries, backoff)
        options = [("grpc.max_send_message_length", contract.MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", contract.MAX_MESSAGE_BYTES)]
        if tls or ca_cert or client_cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()

            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(ca_cert) if ca_cert else root_certificates,
                private_key=read(client_key) if client_key else None,
                certificate_chain=read(client_cert) if client_cert else None)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_spec(self, signature: str | None = None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name)
        if signature:
            spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        return spec

    def build_request(self, images: list[bytes]) -> predict_pb2.PredictRequest:
        if not images:
            raise ServingError("INVALID_ARGUMENT", "no images to send")
        if len(images) > contract.MAX_BATCH:
            raise ServingError("INVALID_ARGUMENT", f"{len(images)} images in one request; the limit is {contract.MAX_BATCH}")
        request = predict_pb2.PredictRequest(model_spec=self._model_spec(contract.SIGNATURE_BYTES))
        # Built directly (no tf.make_tensor_proto): one repeated-field extend, no per-element Python work.
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(images))]))
        tensor.string_val.extend(images)
        request.inputs[contract.INPUT_BYTES].CopyFrom(tensor)
        return request

    @staticmethod
    def parse_response(response: predict_pb2.PredictResponse, count: int) -> list[dict]:
        # A protobuf map hands out an empty tensor for a key it lacks (no KeyError): ask first.
        for name in (contract.OUTPUT_PROBABILITY, contract.OUTPUT_LABEL):
            if name not in response.outputs:
                raise ServingError("INTERNAL", f"response lacks output {name!r}")
        probability = response.outputs[contract.OUTPUT_PROBABILITY]
        # TF Serving may send floats as packed tensor_content or as float_val; strings always as string_val.
        probabilities = (np.frombuffer(probability.tensor_content, dtype="<f4").tolist() if probability.tensor_content
                         else list(probability.float_val))
        labels = [v.decode() for v in response.outputs[contract.OUTPUT_LABEL].string_val]
        if len(probabilities) != count or len(labels) != count:
            raise ServingError("INTERNAL", f"expected {count} predictions, got {len(probabilities)}")
        return [{"probability": p, "label": label} for p, label in zip(probabilities, labels)]

    def predict(self, images: list[bytes]) -> list[dict]:
        response = self._call(self.prediction.Predict, self.build_request(images))
        return self.parse_response(response, len(images))

    def status(self) -> list[dict]:
        """Every version the server knows, newest first (ModelService.GetModelStatus), as the REST client gives it."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec())
        response = self._call(self.models.GetModelStatus, request)
        return parse_status(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))

    def reload_config(self, config) -> None:
        """ModelService.HandleReloadConfigRequest: the server takes ``config`` (a ModelServerConfig with a
        model_config_list) as ServerCore::ReloadConfig does; a refusal is a ServingError with the server's code.
        Retried as every call is: the same config sent twice changes nothing the second time."""
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest(config=config)
        self._call(self.models.HandleReloadConfigRequest, request)

    def metadata(self) -> dict:
        """{"name", "version", "signatures"} of the addressed version, as the REST client gives it."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self._model_spec(),
                                                                  metadata_field=["signature_def"])
        response = self._call(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
        return parse_metadata({"model_spec": json_format.MessageToDict(response.model_spec, **options),
                               "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}})

    def _call(self, method, request):
        return self.retry(lambda: self._send(method, request), f"TF Serving at {self.target}")

    def _send(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata_pairs or None)
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or not details):
                details = f"cannot reach TF Serving at {self.target}: {details}"
            raise ServingError(code.name, details) from None
