"""xray/clients/grpc.py against an in-process gRPC server on a unix socket: what each call puts on the wire (model spec,
signature, the DT_STRING tensor, call metadata, the deadline), how answers are read (packed and unpacked floats),
and how each status code comes back. A named shortcut: the servicer here is ours, not TF Serving; the client
against the TF Serving stand-in over TCP is test_serving_clients.py, TLS is test_client_hardening.py.
In-process and fast, so `make mutate` runs it."""

from __future__ import annotations

import contextlib
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from xray.clients import ServingError
from xray.clients.grpc import GrpcClient
from xray.serving import contract
from test_clients_core import check_batch_bounds


def answer(probabilities, labels, packed=False) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    probability = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    if packed:
        probability.tensor_content = np.asarray(probabilities, dtype="<f4").tobytes()
    else:
        probability.float_val.extend(probabilities)
    response.outputs[contract.OUTPUT_PROBABILITY].CopyFrom(probability)
    label = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    label.string_val.extend(v.encode() for v in labels)
    response.outputs[contract.OUTPUT_LABEL].CopyFrom(label)
    return response


class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Records every request with its metadata and deadline; answers with ``reply[method]`` (a message, or a
    (code, details) pair to abort with, or a list of those taken one per call)."""

    def __init__(self):
        self.calls: list[tuple[str, object, dict, float]] = []
        self.reply: dict = {}

    def _answer(self, method, request, context):
        self.calls.append((method, request, dict(context.invocation_metadata()), context.time_remaining()))
        reply = self.reply[method]
        if isinstance(reply, list):
            reply = reply.pop(0)
        if isinstance(reply, tuple):
            context.abort(*reply)
        return reply

    def Predict(self, request, context):
        return self._answer("Predict", request, context)

    def GetModelMetadata(self, request, context):
        return self._answer("GetModelMetadata", request, context)

    def GetModelStatus(self, request, context):
        return self._answer("GetModelStatus", request, context)

    def HandleReloadConfigRequest(self, request, context):
        return self._answer("HandleReloadConfigRequest", request, context)


@contextlib.contextmanager
def running(bind, receive_limit=contract.MAX_MESSAGE_BYTES):
    """A Servicer behind a gRPC server with both services; ``bind(grpc_server)`` adds its port and returns the target
    clients dial (kept as ``servicer.target``)."""
    servicer = Servicer()
    limits = [("grpc.max_receive_message_length", receive_limit),
              ("grpc.max_send_message_length", contract.MAX_MESSAGE_BYTES)]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=limits)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, grpc_server)
    servicer.target = bind(grpc_server)
    grpc_server.start()
    try:
        yield servicer
    finally:
        grpc_server.stop(None)


def unix_socket(path):
    def bind(grpc_server):
        grpc_server.add_insecure_port(f"unix:{path}")
        return f"unix:{path}"
    return bind


@pytest.fixture
def server(tmp_path):
    with running(unix_socket(tmp_path / "grpc.sock")) as servicer:
        yield servicer


def client(server, **kwargs) -> GrpcClient:
    made = GrpcClient(server.target, **kwargs)
    made.retry.sleep = lambda seconds: None  # the policy's timing is test_retry.py's; here only the attempts count
    return made


def test_predict_sends_the_bytes_signature_and_model_and_reads_each_answer(server):
    server.reply["Predict"] = answer([0.25, 0.75], ["NORMAL", "PNEUMONIA"])
    with client(server) as c:
        assert c.predict([b"one", b"\x00two"]) == [{"probability": 0.25, "label": "NORMAL"},
                                                   {"probability": 0.75, "label": "PNEUMONIA"}]
    (method, request, _, _), = server.calls
    assert method == "Predict"
    assert request.model_spec.name == contract.MODEL_NAME
    assert request.model_spec.signature_name == contract.SIGNATURE_BYTES
    assert not request.model_spec.HasField("version") and request.model_spec.version_label == ""
    tensor = request.inputs[contract.INPUT_BYTES]
    assert tensor.dtype == types_pb2.DT_STRING and [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == [b"one", b"\x00two"]
    assert list(request.inputs) == [contract.INPUT_BYTES]


def test_packed_float_answers_are_read_as_little_endian_float32(server):
    server.reply["Predict"] = answer([0.125, 0.5, 1.0], ["NORMAL", "NORMAL", "PNEUMONIA"], packed=True)
    assert [r["probability"] for r in client(server).predict([b"a", b"b", b"c"])] == [0.125, 0.5, 1.0]


@pytest.mark.parametrize("kwargs, version, label", [({"version": 7}, 7, ""), ({"label": "canary"}, None, "canary"),
                                                    ({"version": 0}, 0, "")])
def test_a_version_or_a_label_addresses_every_call(server, kwargs, version, label):
    server.reply.update(Predict=answer([0.5], ["NORMAL"]), GetModelStatus=get_model_status_pb2.GetModelStatusResponse(),
                        GetModelMetadata=metadata_answer())
    c = client(server, model_name="chest", **kwargs)
    c.predict([b"x"])
    c.status()
    c.metadata()
    for method, request, _, _ in server.calls:
        spec = request.model_spec
        assert spec.name == "chest", method
        assert (spec.version.value if spec.HasField("version") else None) == version, method
        assert spec.version_label == label, method
    # Only Predict names a signature; status and metadata address the model version.
    assert [request.model_spec.signature_name for _, request, _, _ in server.calls] == [contract.SIGNATURE_BYTES, "", ""]


def test_headers_go_as_lower_case_call_metadata_with_every_call_and_the_deadline_is_set(server):
    server.reply["Predict"] = answer([0.5], ["NORMAL"])
    c = client(server, headers={" Authorization ": " Bearer t0k ", "X-Team": "radiology"}, timeout=7.5)
    c.predict([b"x"])
    (_, _, metadata, remaining), = server.calls
    assert metadata["authorization"] == "Bearer t0k" and metadata["x-team"] == "radiology"
    assert 5.0 < remaining < 7.6  # the deadline travels with the call (a little clock skew between the two ends)
    server.calls.clear()
    client(server).predict([b"x"])  # no headers: no extra metadata
    assert not {"authorization", "x-team"} & set(server.calls[0][2])


def test_the_batch_bounds_are_checked_before_anything_is_sent(server):
    server.reply["Predict"] = answer([0.5] * contract.MAX_BATCH, ["NORMAL"] * contract.MAX_BATCH)
    check_batch_bounds(client(server).predict, lambda: server.calls == [])


@pytest.mark.parametrize("response, message", [
    (predict_pb2.PredictResponse(), f"response lacks output '{contract.OUTPUT_PROBABILITY}'"),
    (answer([0.5, 0.5], ["NORMAL"]), "expected 2 predictions, got 2"),
    (answer([0.5], ["NORMAL", "NORMAL"]), "expected 2 predictions, got 1"),
    (answer([0.5, 0.5, 0.5], ["NORMAL"] * 3), "expected 2 predictions, got 3")])
def test_an_answer_that_does_not_match_the_request_is_internal(server, response, message):
    if not response.outputs:
        response.outputs[contract.OUTPUT_LABEL].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING))
    server.reply["Predict"] = response
    with pytest.raises(ServingError) as caught:
        client(server).predict([b"a", b"b"])
    assert (caught.value.code, caught.value.message) == ("INTERNAL", message)


def test_the_server_s_code_and_details_come_back_and_only_retryable_codes_are_sent_again(server):
    c = client(server, retries=2)
    server.reply["Predict"] = [(grpc.StatusCode.INVALID_ARGUMENT, "Invalid JPEG data")]
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message, caught.value.attempts) == ("INVALID_ARGUMENT", "Invalid JPEG data", 1)
    assert len(server.calls) == 1
    server.calls.clear()
    server.reply["Predict"] = [(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")] * 2 + [answer([0.5], ["NORMAL"])]
    assert c.predict([b"x"]) == [{"probability": 0.5, "label": "NORMAL"}]
    assert len(server.calls) == 3
    server.calls.clear()
    server.reply["Predict"] = [(grpc.StatusCode.UNAVAILABLE, "draining")] * 3
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "UNAVAILABLE" and caught.value.attempts == 3
    assert caught.value.message == f"draining (gave up after 3 attempt(s) to TF Serving at {server.target})"


def test_an_unreachable_server_is_unavailable_and_names_the_target(tmp_path):
    c = GrpcClient(f"unix:{tmp_path}/nobody.sock", retries=0, timeout=5)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "UNAVAILABLE"
    assert caught.value.message.startswith(f"cannot reach TF Serving at unix:{tmp_path}/nobody.sock: ")


def test_unavailable_from_a_reachable_server_keeps_its_own_details(server):
    server.reply["Predict"] = [(grpc.StatusCode.UNAVAILABLE, "servable is unloading")]
    with pytest.raises(ServingError) as caught:
        client(server, retries=0).predict([b"x"])
    assert caught.value.message == f"servable is unloading (gave up after 1 attempt(s) to TF Serving at {server.target})"


def test_status_reads_every_version_newest_first(server):
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
                           (2, get_model_status_pb2.ModelVersionStatus.LOADING),
                           (0, get_model_status_pb2.ModelVersionStatus.END)]:
        entry = response.model_version_status.add(version=version, state=state)
        entry.status.error_code = 0
    response.model_version_status[0].status.error_code = 5
    response.model_version_status[0].status.error_message = "gone"
    server.reply["GetModelStatus"] = response
    assert client(server).status() == [
        {"version": 2, "state": "LOADING", "error_code": "OK", "error_message": ""},
        {"version": 1, "state": "AVAILABLE", "error_code": "NOT_FOUND", "error_message": "gone"},
        {"version": 0, "state": "END", "error_code": "OK", "error_message": ""}]  # 0 is a version too (proto default)


def metadata_answer() -> get_model_metadata_pb2.GetModelMetadataResponse:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signature = signatures.signature_def[contract.SIGNATURE_BYTES]
    signature.method_name = "tensorflow/serving/predict"
    tensor = meta_graph_pb2.TensorInfo(name="x:0", dtype=types_pb2.DT_STRING)
    tensor.tensor_shape.dim.add(size=-1)
    signature.inputs[contract.INPUT_BYTES].CopyFrom(tensor)
    empty = meta_graph_pb2.TensorInfo(name="e:0", dtype=types_pb2.DT_FLOAT)
    empty.tensor_shape.dim.add(size=0)  # proto defaults (size 0) must read as 0, not as unknown (-1)
    empty.tensor_shape.dim.add(size=3)
    signature.outputs["empty"].CopyFrom(empty)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = contract.MODEL_NAME
    response.model_spec.version.value = 3
    response.metadata["signature_def"].Pack(signatures)
    return response


def test_metadata_asks_for_the_signature_defs_and_reads_them(server):
    server.reply["GetModelMetadata"] = metadata_answer()
    assert client(server).metadata() == {"name": contract.MODEL_NAME, "version": 3, "signatures": {
        contract.SIGNATURE_BYTES: {"inputs": {contract.INPUT_BYTES: {"dtype": "DT_STRING", "shape": [-1]}},
                                   "outputs": {"empty": {"dtype": "DT_FLOAT", "shape": [0, 3]}},
                                   "method_name": "tensorflow/serving/predict"}}}
    assert list(server.calls[0][1].metadata_field) == ["signature_def"]


def test_reload_config_sends_the_config_and_returns_the_server_s_refusal(server):
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="xray", base_path="/models/xray", model_platform="tensorflow")
    server.reply["HandleReloadConfigRequest"] = [model_management_pb2.ReloadConfigResponse(),
                                                 (grpc.StatusCode.FAILED_PRECONDITION, "cannot change a model's platform")]
    c = client(server)
    assert c.reload_config(config) is None
    assert server.calls[0][1].config == config
    with pytest.raises(ServingError) as caught:
        c.reload_config(config)
    assert (caught.value.code, caught.value.message) == ("FAILED_PRECONDITION", "cannot change a model's platform")


def test_large_messages_pass_both_ways(server):
    """Well over gRPC's default 4 MB receive limit, in both directions (the limits are contract.MAX_MESSAGE_BYTES)."""
    big = [b"\xff" * (3 << 20)] * 2
    labels = ["N" * (5 << 20)]
    server.reply["Predict"] = answer([0.5], labels)
    assert client(server).predict([big[0] + big[1]])[0]["label"] == labels[0]


def test_closing_the_client_closes_its_channel(server):
    server.reply["Predict"] = answer([0.5], ["NORMAL"])
    with client(server) as c:
        c.predict([b"x"])
    with pytest.raises(ValueError, match="closed channel"):
        c.predict([b"x"])


@pytest.mark.parametrize("kwargs, message", [
    ({"version": 1, "label": "stable"}, "give a version or a label, not both"),
    ({"client_cert": "c.pem"}, "a client certificate needs its key, and the key its certificate"),
    ({"client_key": "k.pem"}, "a client certificate needs its key, and the key its certificate")])
def test_contradictory_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError) as caught:
        GrpcClient("localhost:1", **kwargs)
    assert str(caught.value) == message


def test_the_settings_are_kept_and_the_defaults_are_the_documented_ones():
    c = GrpcClient("host:8500", model_name="m", version=4, timeout=3.0, retries=5, backoff=0.25)
    assert (c.target, c.model_name, c.version, c.label, c.timeout, c.retries, c.backoff) == \
        ("host:8500", "m", 4, None, 3.0, 5, 0.25)
    assert (c.retry.retries, c.retry.backoff) == (5, 0.25)
    c = GrpcClient("host:8500")  # docs/reference.md: a 30 s deadline, 3 retries from 0.5 s
    assert (c.model_name, c.timeout, c.retry.retries, c.retry.backoff) == (contract.MODEL_NAME, 30.0, 3, 0.5)


def test_an_empty_error_detail_stays_empty(server):
    server.reply["Predict"] = [(grpc.StatusCode.NOT_FOUND, "")]
    with pytest.raises(ServingError) as caught:
        client(server).predict([b"x"])
    assert (caught.value.code, caught.value.message) == ("NOT_FOUND", "")


def test_a_request_over_the_message_limit_is_refused_by_the_client_before_it_is_sent(tmp_path):
    """The server here accepts twice the limit, so only the client's own send limit can refuse it."""
    with running(unix_socket(tmp_path / "big.sock"), receive_limit=2 * contract.MAX_MESSAGE_BYTES) as servicer:
        servicer.reply["Predict"] = answer([0.5], ["NORMAL"])
        c = GrpcClient(servicer.target, retries=0)
        with pytest.raises(ServingError) as caught:
            c.predict([b"\0" * (contract.MAX_MESSAGE_BYTES + 1024)])
        assert caught.value.code == "RESOURCE_EXHAUSTED" and servicer.calls == []
        assert c.predict([b"\0" * (contract.MAX_MESSAGE_BYTES - 1024)])[0]["label"] == "NORMAL"


@pytest.fixture
def tls_server(pki):
    """The servicer behind TLS (our own CA's server certificate for localhost), on a port the server picks."""
    credentials = grpc.ssl_server_credentials([((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())])
    with running(lambda grpc_server: f"localhost:{grpc_server.add_secure_port('127.0.0.1:0', credentials)}") as servicer:
        yield servicer


@pytest.mark.parametrize("how", ["ca_cert", "tls_with_root_certificates"])
def test_tls_is_used_when_asked_in_either_way_and_keeps_the_message_limits(tls_server, pki, how):
    kwargs = ({"ca_cert": str(pki / "ca.crt")} if how == "ca_cert"
              else {"tls": True, "root_certificates": (pki / "ca.crt").read_bytes()})
    label = "N" * (5 << 20)  # over gRPC's default 4 MB receive limit
    tls_server.reply["Predict"] = answer([0.5], [label])
    with GrpcClient(tls_server.target, retries=0, timeout=20, **kwargs) as c:
        assert c.predict([b"\1" * (5 << 20)])[0]["label"] == label
    with pytest.raises(ServingError) as caught:  # the same server in plain text: no answer
        GrpcClient(tls_server.target, retries=0, timeout=5).predict([b"x"])
    assert caught.value.code == "UNAVAILABLE"
