"""The gRPC services: model_servers/prediction_service_impl.cc and model_service_impl.cc."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tfserving_stub.predict import as_proto_field
from tfserving_stub.status import Status

if TYPE_CHECKING:  # the server holds these services; only its type is needed here
    from tfserving_stub.server import StubModelServer


Code = grpc.StatusCode


def _spec(spec):
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    return spec.name, version, label


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
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
