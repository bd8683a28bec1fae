"""The TF Serving stand-in (tests/tfserving_stub/) held to TF Serving's own behaviour.

One test (or parametrised group) per row of docs/tfserving-conformance.md. The cases marked "ported" restate,
in this project's words, the request/response cases of TF Serving's http_rest_api_handler_test.cc and
json_tensor_test.cc (tensorflow/serving at 9d981c5c): the same requests, the same expected status codes and
message fragments, against a half-plus-two model built here as theirs is (versions 123 and 124 served by a
`specific` policy that lists 123, label "Version_Label" -> 123).
"""

from __future__ import annotations

import base64
import json
import io
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from xray.serving import config as serving_config
from pathlib import Path

from tfserving_stub import HTTP_STATUS, Options, Status, StubModelServer, request_tensors

MODEL = "saved_model_half_plus_two_2_versions"
VERSION = 123
LABEL = "Version_Label"


def half_plus(offset: float):
    class HalfPlus(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def predict(self, x):
            return {"y": 0.5 * x + offset}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def with_bytes(self, x):
            return {"y": 0.5 * x + offset, "y_bytes": tf.strings.as_string(x)}

    return HalfPlus()


def save(module, path, signatures):
    tf.saved_model.save(module, str(path), signatures=signatures)


@pytest.fixture(scope="module")
def half_plus_two_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("half_plus_two")
    for version, offset in ((VERSION, 2.0), (VERSION + 1, 3.0)):
        module = half_plus(offset)
        save(module, base / str(version), {"serving_default": module.predict, "with_bytes": module.with_bytes})
    return base


def write_config(path, base, versions=(VERSION,), labels=None, name=MODEL, policy="specific"):
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
    if policy == "specific":
        model.model_version_policy.specific.versions.extend(versions)
    elif policy == "all":
        model.model_version_policy.all.SetInParent()
    else:
        model.model_version_policy.latest.num_versions = policy
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    serving_config.write_text_proto(config, str(path))
    return path


@pytest.fixture(scope="module")
def handler_server(half_plus_two_base, tmp_path_factory):
    """As HttpRestApiHandlerTest sets up: specific policy {123}, then a reload that adds the label."""
    config = tmp_path_factory.mktemp("config") / "models.config"
    write_config(config, half_plus_two_base)
    server = StubModelServer(Options(model_config_file=str(config))).start()
    write_config(config, half_plus_two_base, labels={LABEL: VERSION})
    assert server.poll_config() is None
    yield server
    server.stop()


def call(server, method, path, body=b""):
    response = requests.request(method, server.rest_url + path, data=body, timeout=30)
    try:
        payload = response.json()
    except ValueError:
        payload = None
    return response.status_code, payload


# --- routes (http_rest_api_util.cc, http_rest_api_handler.cc, http_server.cc) -------------------------------

UNSUPPORTED = [  # ported: HttpRestApiHandlerTest.UnsupportedApiCalls
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ("PUT", f"/v1/models/{MODEL}:predict", "Malformed request"),
]


@pytest.mark.parametrize("method, path, fragment", UNSUPPORTED)
def test_unsupported_api_calls_are_400_malformed(handler_server, method, path, fragment):
    status, body = call(handler_server, method, path)
    assert status == 400 and fragment in body["error"]


def test_paths_outside_v1_get_the_http_servers_own_404(handler_server):
    response = requests.get(handler_server.rest_url + "/statuspage", timeout=10)
    assert response.status_code == 404 and response.content == b""
    # The pattern is case-insensitive, as TF Serving's RE2 (?i) patterns are.
    assert call(handler_server, "GET", f"/V1/MODELS/{MODEL}")[0] == 200


@pytest.mark.parametrize("code, http", sorted(((c, h) for c, h in HTTP_STATUS.items() if c != grpc.StatusCode.OK),
                                              key=lambda item: item[0].name))
def test_every_status_code_maps_to_tf_servings_http_status(handler_server, code, http):
    expected = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
                "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
                "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
                "DATA_LOSS": 500, "UNAUTHENTICATED": 401}  # http_server.cc ToHTTPStatusCode, written out again
    assert http == expected[code.name]
    handler_server.inject(code, f"injected {code.name}", api="rest")
    status, body = call(handler_server, "GET", f"/v1/models/{MODEL}")
    assert (status, body) == (http, {"error": f"injected {code.name}"})


def test_cors_preflight_needs_an_origin(handler_server):
    """http_server.cc: the preflight is answered before the handler, so no body either way."""
    response = requests.options(f"{handler_server.rest_url}/v1/models/{MODEL}:predict", timeout=10)
    assert response.status_code == 400 and response.content == b""
    response = requests.options(f"{handler_server.rest_url}/v1/models/{MODEL}:predict",
                                headers={"Origin": "http://example.com"}, timeout=10)
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("dtype, value, accepted", [
    ("int32", 2**31 - 1, True), ("int32", 2**31, False), ("int64", 2**63 - 1, True), ("int64", 2**63, False),
    ("int64", 10**30, False), ("uint32", -1, False), ("uint64", 2**64 - 1, True), ("uint64", 2**64, False),
])
def test_integers_out_of_range_are_invalid_argument(dtype, value, accepted):
    """json_tensor.cc AddValueToTensor: IsInt/IsInt64/IsUint/IsUint64, a type error otherwise (never a crash)."""
    document = {"instances": [value]}
    if accepted:
        tensors, _ = request_tensors(document, info_map(x=dtype))
        assert tensors["x"].tolist() == [value]
    else:
        with pytest.raises(Status) as info:
            request_tensors(document, info_map(x=dtype))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and f"is not of expected type: {dtype}" in \
            info.value.message


def test_base64_without_padding_is_accepted_as_absl_does():
    tensors, _ = request_tensors({"instances": [{"b64": "aGVsbG8"}, {"b64": "d29ybGQ="}]}, info_map(x="string"))
    assert tensors["x"].tolist() == [b"hello", b"world"]


# --- model, version, label resolution (server_core.cc, basic_manager.cc) ------------------------------------

@pytest.mark.parametrize("path", [  # ported: PredictModelNameVersionErrors
    "/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{MODEL}99:predict"])
def test_unknown_model_or_version_is_not_found(handler_server, path):
    status, body = call(handler_server, "POST", path, b'{ "instances": [1] }')
    assert status == 404 and "Servable not found for request" in body["error"]


def test_a_version_outside_the_version_policy_is_not_found_over_rest_and_grpc(handler_server, half_plus_two_base):
    assert (half_plus_two_base / str(VERSION + 1) / "saved_model.pb").exists()  # on disk, but the policy lists 123
    status, body = call(handler_server, "POST", f"/v1/models/{MODEL}/versions/{VERSION + 1}:predict", b'{"instances": [1.0]}')
    assert status == 404 and body["error"] == f"Servable not found for request: Specific({MODEL}, {VERSION + 1})"
    with grpc.insecure_channel(handler_server.grpc_target) as channel:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
        request.model_spec.version.value = VERSION + 1
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_latest_policy_serves_only_the_newest(half_plus_two_base, tmp_path):
    config = write_config(tmp_path / "models.config", half_plus_two_base, policy=1)
    server = StubModelServer(Options(model_config_file=str(config))).start()
    try:
        status, body = call(server, "GET", f"/v1/models/{MODEL}")
        assert [(v["version"], v["state"]) for v in body["model_version_status"]] == [(str(VERSION + 1), "AVAILABLE")]
        assert call(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}')[1] == {"predictions": [3.5]}
    finally:
        server.stop()


def test_a_label_for_a_version_not_yet_loaded_stops_the_server_unless_the_flag_is_set(half_plus_two_base, tmp_path):
    """server_core.cc: labels are checked BEFORE the config's versions load, so at start nothing is AVAILABLE."""
    config = write_config(tmp_path / "models.config", half_plus_two_base, labels={LABEL: VERSION})
    with pytest.raises(Status) as info:
        StubModelServer(Options(model_config_file=str(config))).start()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.message == (f"Request to assign label to version {VERSION} of model {MODEL}, which is not "
                                  "currently available for inference")
    server = StubModelServer(Options(model_config_file=str(config),
                                     allow_version_labels_for_unavailable_models=True)).start()
    try:
        assert call(server, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:predict", b'{"instances": [2.0]}')[1] == \
            {"predictions": [3.0]}
    finally:
        server.stop()


def test_moving_a_label_to_an_unloaded_version_is_refused_even_with_the_flag(half_plus_two_base, tmp_path):
    config = write_config(tmp_path / "models.config", half_plus_two_base, labels={LABEL: VERSION})
    server = StubModelServer(Options(model_config_file=str(config),
                                     allow_version_labels_for_unavailable_models=True)).start()
    try:
        # One step: policy {123, 124}, label -> 124 while 124 is not loaded: refused, and 124 is never loaded.
        write_config(config, half_plus_two_base, versions=(VERSION, VERSION + 1), labels={LABEL: VERSION + 1})
        error = server.poll_config()
        assert error is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert call(server, "GET", f"/v1/models/{MODEL}/versions/{VERSION + 1}")[0] == 404
        assert call(server, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:predict", b'{"instances": [2.0]}')[1] == \
            {"predictions": [3.0]}
        # Two steps: load 124 first (labels unchanged), then move the label.
        write_config(config, half_plus_two_base, versions=(VERSION, VERSION + 1), labels={LABEL: VERSION})
        assert server.poll_config() is None
        server.core.wait_for_loads()
        write_config(config, half_plus_two_base, versions=(VERSION + 1,), labels={LABEL: VERSION + 1})
        assert server.poll_config() is None
        assert call(server, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:predict", b'{"instances": [2.0]}')[1] == \
            {"predictions": [4.0]}
        status = call(server, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [(str(VERSION + 1), "AVAILABLE"), (str(VERSION), "END")]
    finally:
        server.stop()


# --- status and metadata (get_model_status_impl.cc, get_model_metadata_impl.cc, http_rest_api_util.cc) ------

@pytest.mark.parametrize("suffix", ["", f"/versions/{VERSION}", f"/labels/{LABEL}"])
def test_get_status(handler_server, suffix):  # ported: HttpRestApiHandlerTest.GetStatus
    status, body = call(handler_server, "GET", f"/v1/models/{MODEL}{suffix}")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": str(VERSION), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


# The signatures of TF Serving's saved_model_half_plus_two test model, as its golden metadata file
# (servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json) lists them:
# name -> (method, {input key: (tensor, dtype, dims or None for unknown rank)}, {output key: ...}).
HALF_PLUS_TWO_SIGNATURES = {
    "serving_default": ("predict", {"x": ("x:0", "DT_FLOAT", [-1, 1])}, {"y": ("y:0", "DT_FLOAT", [-1, 1])}),
    "classify_x_to_y": ("classify", {"inputs": ("tf_example:0", "DT_STRING", None)},
                        {"scores": ("y:0", "DT_FLOAT", [-1, 1])}),
    "classify_x2_to_y3": ("classify", {"inputs": ("x2:0", "DT_FLOAT", [-1, 1])}, {"scores": ("y3:0", "DT_FLOAT", [-1, 1])}),
    "regress_x_to_y": ("regress", {"inputs": ("tf_example:0", "DT_STRING", None)},
                       {"outputs": ("y:0", "DT_FLOAT", [-1, 1])}),
    "regress_x_to_y2": ("regress", {"inputs": ("tf_example:0", "DT_STRING", None)},
                        {"outputs": ("y2:0", "DT_FLOAT", [-1, 1])}),
    "regress_x2_to_y3": ("regress", {"inputs": ("x2:0", "DT_FLOAT", [-1, 1])}, {"outputs": ("y3:0", "DT_FLOAT", [-1, 1])}),
}


@pytest.fixture(scope="module")
def tf1_half_plus_two(tmp_path_factory):
    """A graph-mode SavedModel with the half_plus_two signatures (y = 0.5x + 2, y2 = 0.5x + 3, y3 = 0.5x2 + 3,
    inputs also parsed from tf.Example), built here the way TF Serving's test model is: version 123."""
    base = tmp_path_factory.mktemp("tf1_half_plus_two")
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        a, b, c = (v1.Variable(value, name=name) for value, name in ((0.5, "a"), (2.0, "b"), (3.0, "c")))
        example = v1.placeholder(tf.string, name="tf_example")
        features = v1.parse_example(example, {"x": v1.FixedLenFeature([1], tf.float32),
                                              "x2": v1.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        # [batch, 1] as TF Serving's model has them (its parse_example op inferred it; ParseExampleV2 does not).
        x, x2 = tf.reshape(features["x"], [-1, 1], name="x"), tf.reshape(features["x2"], [-1, 1], name="x2")
        tensors = {"x:0": x, "x2:0": x2, "tf_example:0": example, "y:0": tf.add(a * x, b, name="y"),
                   "y2:0": tf.add(a * x, c, name="y2"), "y3:0": tf.add(a * x2, c, name="y3")}
        session.run(v1.global_variables_initializer())
        signatures = {name: v1.saved_model.build_signature_def(
            {key: v1.saved_model.build_tensor_info(tensors[t]) for key, (t, _, _) in inputs.items()},
            {key: v1.saved_model.build_tensor_info(tensors[t]) for key, (t, _, _) in outputs.items()},
            f"tensorflow/serving/{method}") for name, (method, inputs, outputs) in HALF_PLUS_TWO_SIGNATURES.items()}
        builder = v1.saved_model.Builder(str(base / str(VERSION)))
        builder.add_meta_graph_and_variables(session, [v1.saved_model.SERVING], signature_def_map=signatures)
        builder.save()
    return base


def test_get_model_metadata_is_tf_servings_golden_json(tf1_half_plus_two, tmp_path):
    """Ported: HttpRestApiHandlerTest.GetModelMetadata, compared whole (every field TF Serving prints: dims as
    {"size": "-1", "name": ""}, unknown_rank, tensor names, method_name, empty defaults) against the golden file's
    content, expanded from HALF_PLUS_TWO_SIGNATURES."""
    def tensor(name, dtype, dims):
        shape = {"dim": [], "unknown_rank": True} if dims is None else \
            {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
        return {"dtype": dtype, "tensor_shape": shape, "name": name}

    golden = {"model_spec": {"name": MODEL, "signature_name": "", "version": str(VERSION)},
              "metadata": {"signature_def": {"signature_def": {
                  name: {"inputs": {k: tensor(*v) for k, v in inputs.items()},
                         "outputs": {k: tensor(*v) for k, v in outputs.items()},
                         "method_name": f"tensorflow/serving/{method}", "defaults": {}}
                  for name, (method, inputs, outputs) in HALF_PLUS_TWO_SIGNATURES.items()}}}}
    config = write_config(tmp_path / "models.config", tf1_half_plus_two)
    server = StubModelServer(Options(model_config_file=str(config))).start()
    try:
        status, body = call(server, "GET", f"/v1/models/{MODEL}/metadata")
        assert status == 200
        assert body == golden
        assert call(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [[1.0], [2.0]]}')[1] == \
            {"predictions": [[2.5], [3.0]]}
    finally:
        server.stop()


def test_status_lists_every_version_newest_first_with_loading_and_failed_loads(half_plus_two_base, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "1").symlink_to(half_plus_two_base / str(VERSION), target_is_directory=True)
    config = write_config(tmp_path / "models.config", base, policy="all")
    server = StubModelServer(Options(model_config_file=str(config), max_num_load_retries=0)).start()
    try:
        (base / "3").mkdir()  # a version directory without a SavedModel: its load fails
        wait_until(lambda: [s["state"] for s in call(server, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"]]
                   == ["END", "AVAILABLE"], "version 3 ends")
        server.options.load_delay_s = 2.0
        (base / "2").symlink_to(half_plus_two_base / str(VERSION + 1), target_is_directory=True)
        wait_until(lambda: call(server, "GET", f"/v1/models/{MODEL}/versions/2")[0] == 200, "version 2 is known")
        states = call(server, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"]
        assert [(s["version"], s["state"]) for s in states] == [("3", "END"), ("2", "LOADING"), ("1", "AVAILABLE")]
        assert states[0]["status"]["error_code"] == "NOT_FOUND" and "Could not find SavedModel" in \
            states[0]["status"]["error_message"]
        # Latest is the newest AVAILABLE version while 2 loads.
        assert call(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}')[1] == {"predictions": [2.5]}
    finally:
        server.stop()


def wait_until(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def standin_process(ports, config, *flags):
    """The stand-in as the Deployment runs it: its own process, TF Serving's flags, fixed ports."""
    import subprocess
    import sys

    grpc_port, rest_port = ports
    script = "import sys, tfserving_stub; sys.exit(tfserving_stub.main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", script, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                                f"--model_config_file={config}", *flags],
                               cwd=Path(__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, grpc_port, rest_port


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_no_port_opens_until_the_first_version_is_available(half_plus_two_base, tmp_path, reserved_ports):
    """server.cc BuildAndStart: ServerCore::Create (which awaits the first config's loads) runs before either
    server binds. With no version on disk the wait has no end; the first version that appears ends it."""
    base = tmp_path / "base"
    base.mkdir()
    config = write_config(tmp_path / "models.config", base, policy=1)
    process, grpc_port, rest_port = standin_process(reserved_ports(2), config)
    try:
        # The process is up and polling (it would have exited on a bad config); neither port answers.
        for _ in range(40):
            assert process.poll() is None and not port_open(grpc_port) and not port_open(rest_port)
            time.sleep(0.05)
        (base / "7").symlink_to(half_plus_two_base / str(VERSION), target_is_directory=True)
        wait_until(lambda: port_open(rest_port), "the REST port opens", 60)
        assert port_open(grpc_port)
        body = requests.get(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}", timeout=10).json()
        assert [(v["version"], v["state"]) for v in body["model_version_status"]] == [("7", "AVAILABLE")]
    finally:
        process.kill()
        process.wait()


def test_a_failed_first_load_exits_the_server(tmp_path, reserved_ports):
    """load_servables_fast.cc: the latest version ending with an error fails ServerCore::Create; main exits."""
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    config = write_config(tmp_path / "models.config", base, policy=1)
    process, grpc_port, rest_port = standin_process(reserved_ports(2), config, "--max_num_load_retries=1",
                                                    "--load_retry_interval_micros=100000")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0
    assert f"1 servable(s) did not become available: {{{{id: {{name: {MODEL} version: 1}} due to error: NOT_FOUND: " \
           "Could not find SavedModel" in err, err


def test_float_poll_intervals_are_refused_as_tf_serving_parses_int32_flags(tmp_path):
    with pytest.raises(Status) as info:
        Options.from_args(["--file_system_poll_wait_seconds=0.5"])
    assert "file_system_poll_wait_seconds" in info.value.message
    with pytest.raises(TypeError):  # no invented flags: TF Serving has no --allow_version_labels
        Options(allow_version_labels=False)


def test_a_failed_new_version_leaves_the_old_one_serving_and_is_retried(half_plus_two_base, tmp_path):
    """availability_preserving_policy.cc: a dropped version is unloaded only once an aspired one is AVAILABLE;
    loader_harness.cc: a failed load is retried max_num_load_retries times, LOADING all along."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "1").symlink_to(half_plus_two_base / str(VERSION), target_is_directory=True)
    config = write_config(tmp_path / "models.config", base, policy=1)
    server = StubModelServer(Options(model_config_file=str(config), max_num_load_retries=2,
                                     load_retry_interval_micros=400_000)).start()
    try:
        (base / "2").mkdir()  # the newest version, broken: latest-1 now aspires 2 only
        wait_until(lambda: call(server, "GET", f"/v1/models/{MODEL}/versions/2")[0] == 200, "version 2 is known")
        started = time.monotonic()
        states = []
        while True:
            status = call(server, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"]
            states.append([(s["version"], s["state"]) for s in status])
            # Version 1 answers all along.
            assert call(server, "POST", f"/v1/models/{MODEL}/versions/1:predict", b'{"instances": [1.0]}')[0] == 200
            if status[0]["state"] == "END":
                break
            assert time.monotonic() - started < 30
        assert time.monotonic() - started >= 0.7  # 2 retries, 0.4 s apart
        assert [("2", "LOADING"), ("1", "AVAILABLE")] in states
        assert states[-1] == [("2", "END"), ("1", "AVAILABLE")]
        assert call(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}')[1] == {"predictions": [2.5]}
    finally:
        server.stop()


def reload_rpc(server, config):
    from tensorflow_serving.apis import model_management_pb2

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)


def test_reload_config_rpc_validates_as_server_core_does(handler_server, half_plus_two_base):
    """model_service_impl.cc HandleReloadConfigRequest + server_core.cc ReloadConfig/ValidateModelConfigList."""
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.type_url = "x"
    with pytest.raises(grpc.RpcError) as info:
        reload_rpc(handler_server, custom)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in info.value.details()
    twice = model_server_config_pb2.ModelServerConfig()
    for _ in range(2):
        twice.model_config_list.config.add(name=MODEL, base_path=str(half_plus_two_base), model_platform="tensorflow")
    with pytest.raises(grpc.RpcError) as info:
        reload_rpc(handler_server, twice)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"Illegal to list model {MODEL} multiple times in config list")
    relative = model_server_config_pb2.ModelServerConfig()
    relative.model_config_list.config.add(name=MODEL, base_path="models/x", model_platform="tensorflow")
    with pytest.raises(grpc.RpcError) as info:
        reload_rpc(handler_server, relative)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in info.value.details()
    # A label for a version that is not loaded: FAILED_PRECONDITION, labels unchanged.
    moved = serving_config.read_models_config(str(handler_server.options.model_config_file))
    moved.model_config_list.config[0].version_labels[LABEL] = VERSION + 1
    with pytest.raises(grpc.RpcError) as info:
        reload_rpc(handler_server, moved)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert call(handler_server, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:predict", b'{"instances": [2.0]}')[1] == \
        {"predictions": [3.0]}
    # The same config is accepted (and changes nothing).
    reload_rpc(handler_server, serving_config.read_models_config(str(handler_server.options.model_config_file)))


def write_warmup(version_dir: Path, *inputs: dict) -> None:
    """assets.extra/tf_serving_warmup_requests: one PredictionLog per dict of input arrays, as export writes it."""
    from tensorflow_serving.apis import prediction_log_pb2

    (version_dir / "assets.extra").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for tensors in inputs:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            for key, value in tensors.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


def test_warmup_records_are_replayed_and_a_failing_one_fails_the_load(half_plus_two_base, tmp_path):
    """saved_model_warmup_util.cc: every record runs before the version is AVAILABLE; the first failure is the
    load's error (and, for the first config, the server's exit)."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(half_plus_two_base / str(VERSION), base / "1")
    write_warmup(base / "1", {"x": np.array([1.0, 2.0], np.float32)}, {"x": np.array([3.0], np.float32)})
    config = write_config(tmp_path / "models.config", base, policy="all")
    server = StubModelServer(Options(model_config_file=str(config), max_num_load_retries=0)).start()
    try:
        assert server.core.models[MODEL].loaded[1].warmup_records == 2
        shutil.copytree(half_plus_two_base / str(VERSION), base / "2")
        write_warmup(base / "2", {"x": np.array([1.0], np.float32)}, {"y": np.array([1.0], np.float32)})
        wait_until(lambda: call(server, "GET", f"/v1/models/{MODEL}/versions/2")[1].get("model_version_status", [{}])[0]
                   .get("state") == "END", "version 2 ends")
        (entry,) = call(server, "GET", f"/v1/models/{MODEL}/versions/2")[1]["model_version_status"]
        assert entry["status"]["error_code"] == "INVALID_ARGUMENT" and "input size does not match signature" in \
            entry["status"]["error_message"]
        assert call(server, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1.0]}')[1] == {"predictions": [2.5]}
    finally:
        server.stop()
    with pytest.raises(Status) as info:  # the same failing record in the only version: the server does not start
        StubModelServer(Options(model_config_file=str(write_config(tmp_path / "two.config", base, versions=(2,))),
                                max_num_load_retries=0)).start()
    assert "did not become available" in info.value.message and "input size does not match" in info.value.message


def test_grpc_error_messages_over_1024_characters_are_truncated(handler_server):
    """grpc_status_util.cc ToGRPCStatus: the first 1024 characters, then "...TRUNCATED"."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m" * 2000
    with grpc.insecure_channel(handler_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    details = info.value.details()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(details) == 1024 + len("...TRUNCATED") and details.endswith("m...TRUNCATED")


# --- predict over REST (json_tensor.cc, http_rest_api_handler.cc) -------------------------------------------

PREDICT_ERRORS = [  # ported: HttpRestApiHandlerTest.PredictRequestErrors
    ("", b"", 400, "JSON Parse error: The document is empty"),
    ("", b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("", b'{ "instances": ["x", "y"] }', 400, "not of expected type: float"),
    ("/labels/nonexistent", b'{ "instances": ["x", "y"] }', 400, "Unrecognized servable version label"),
    ("", b'{ "signature_name": 100 }', 400, "'signature_name' key must be a string value."),
    ("", b'{ "signature_name": "nope", "instances": [1.0] }', 400,
     'Serving signature name: "nope" not found in signature def'),
    ("", b"[1, 2]", 400, "Is not object"),
    ("", b'{ "instances": 1 }', 400, "Expecting 'instances' to be an list/array"),
    ("", b'{ "instances": [] }', 400, "No values in 'instances' array"),
    ("", b'{ "signature_name": "serving_default" }', 400, "Missing 'inputs' or 'instances' key"),
]


@pytest.mark.parametrize("suffix, body, status, fragment", PREDICT_ERRORS)
def test_predict_request_errors(handler_server, suffix, body, status, fragment):
    got, payload = call(handler_server, "POST", f"/v1/models/{MODEL}{suffix}:predict", body)
    assert got == status and fragment in payload["error"], payload


PREDICT = [  # ported: HttpRestApiHandlerTest.Predict
    ("", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    (f"/versions/{VERSION}", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    (f"/labels/{LABEL}", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    (f"/versions/{VERSION}", '{"signature_name": "serving_default", "instances": [3.0, 4.0]}', {"predictions": [3.5, 4.0]}),
    (f"/versions/{VERSION}", '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}', {"outputs": [3.5, 4.0]}),
]


@pytest.mark.parametrize("suffix, body, expected", PREDICT)
def test_predict(handler_server, suffix, body, expected):
    assert call(handler_server, "POST", f"/v1/models/{MODEL}{suffix}:predict", body.encode()) == (200, expected)


def test_several_outputs_are_objects_and_bytes_outputs_are_b64(handler_server):
    status, body = call(handler_server, "POST", f"/v1/models/{MODEL}:predict",
                        b'{"signature_name": "with_bytes", "instances": [1.0, 2.0]}')
    assert status == 200
    assert [row["y"] for row in body["predictions"]] == [2.5, 3.0]
    assert [base64.b64decode(row["y_bytes"]["b64"]) for row in body["predictions"]] == [b"1.000000", b"2.000000"]
    status, body = call(handler_server, "POST", f"/v1/models/{MODEL}:predict",
                        b'{"signature_name": "with_bytes", "inputs": [1.0, 2.0]}')
    assert body["outputs"]["y"] == [2.5, 3.0] and body["outputs"]["y_bytes"][0] == {"b64": base64.b64encode(b"1.000000").decode()}


def info_map(**dtypes):
    return {name: meta_graph_pb2.TensorInfo(dtype=tf.dtypes.as_dtype(dtype).as_datatype_enum)
            for name, dtype in dtypes.items()}


JSON_TENSOR_OK = [  # ported: JsontensorTest (FillPredictRequestFromJson cases)
    ("SingleUnnamedTensor", {"default": "int32"}, {"instances": [[1, 2], [3, 4], [5, 6]]}, "row",
     {"default": ([3, 2], [1, 2, 3, 4, 5, 6])}),
    ("MixedInputForFloatTensor", {"default": "float32"}, {"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}, "row",
     {"default": ([7], [1, 2, 3, 4, 5.003, 0.007, 0])}),
    ("SingleUnnamedTensorBase64Scalars", {"default": "string"},
     {"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}, "row", {"default": ([2], [b"hello", b"world"])}),
    ("SingleUnnamedTensorBase64Lists", {"default": "string"},
     {"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}, "row", {"default": ([2, 1], [b"hello", b"world"])}),
    ("SingleNamedTensorBase64", {"default": "string"},
     {"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}, "row",
     {"default": ([1, 2, 1], [b"hello", b"world"])}),
    # As upstream: NaN and Infinity are JSON values here (json_tensor.cc parses with kParseNanAndInfFlag).
    ("MultipleNamedTensor", {"int_tensor": "int32", "str_tensor": "string", "float_tensor": "float32",
                             "dbl_tensor": "float64"},
     '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],'
     ' "dbl_tensor": [NaN]}, {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],'
     ' "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}', "row",
     {"int_tensor": ([2, 3, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]),
      "str_tensor": ([2, 2], [b"foo", b"bar", b"baz", b"bat"]),
      "float_tensor": ([2, 2], [1.0, float("nan"), 2.0, float("inf")]),
      "dbl_tensor": ([2, 1], [float("nan"), 2.0])}),
    # SingleUnnamedTensorColumnarFormat: the named object form, then the same without the name.
    ("SingleUnnamedTensorColumnarFormat", {"int_tensor": "int32"}, {"inputs": {"int_tensor": [[[1, 2], [3, 4], [5, 6]]]}},
     "columnar", {"int_tensor": ([1, 3, 2], [1, 2, 3, 4, 5, 6])}),
    ("SingleUnnamedTensorColumnarFormatUnnamed", {"int_tensor": "int32"}, {"inputs": [[[1, 2], [3, 4], [5, 6]]]},
     "columnar", {"int_tensor": ([1, 3, 2], [1, 2, 3, 4, 5, 6])}),
    # MultipleNamedTensorColumnarFormat: a b64 object alone is a scalar string tensor (shape []).
    ("MultipleNamedTensorColumnarFormat", {"int_tensor": "int32", "str_tensor": "string", "bin_tensor": "string"},
     {"inputs": {"int_tensor": [[[1, 2], [3, 4], [5, 6]]], "str_tensor": ["foo", "bar"],
                 "bin_tensor": {"b64": "aGVsbG8="}}}, "columnar",
     {"int_tensor": ([1, 3, 2], [1, 2, 3, 4, 5, 6]), "str_tensor": ([2], [b"foo", b"bar"]),
      "bin_tensor": ([], [b"hello"])}),
]


@pytest.mark.parametrize("case, dtypes, document, form, expected", JSON_TENSOR_OK, ids=[c[0] for c in JSON_TENSOR_OK])
def test_json_tensor_cases(case, dtypes, document, form, expected):
    from tfserving_stub import parse_json

    if isinstance(document, str):  # a document plain JSON cannot hold (NaN, Infinity): parsed as the server does
        document = parse_json(document.encode())
    tensors, got_form = request_tensors(document, info_map(**dtypes))
    assert got_form == form
    assert sorted(tensors) == sorted(expected)
    for name, (shape, values) in expected.items():
        assert list(tensors[name].shape) == shape, name
        flat = tensors[name].reshape(-1).tolist()
        if dtypes[name] == "string":
            assert flat == values, name
        else:
            assert np.allclose(flat, values, equal_nan=True) and \
                [np.isnan(v) for v in flat] == [np.isnan(v) for v in values], name


FROM_JSON = [  # ported: JsontensorTest.FromJson* (MakeJsonFromTensors): tensors -> the JSON TF Serving writes
    ("FromJsonSingleTensor", {"int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)},
     '{"predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}',
     '{"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}'),
    ("FromJsonSingleScalarTensor", {"int_tensor": np.array([1, 2, 3, 4, 5], np.int32)},
     '{"predictions": [1, 2, 3, 4, 5]}', '{"outputs": [1, 2, 3, 4, 5]}'),
    ("FromJsonSingleBytesTensor", {"str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object)},
     '{"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}', None),
    ("FromJsonSingleFloatTensorNonFinite",
     {"float_tensor": np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)},
     '{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}', None),
    ("FromJsonMultipleNamedTensors", {
        "int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32),
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], object),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "double_scalar_tensor": np.array([8.0, 9.0], np.float64),
        "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object)},
     '{"predictions": [{"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],'
     ' "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},'
     ' {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],'
     ' "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}',
     '{"outputs": {"double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],'
     ' "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], "str_tensor": [["foo", "bar"], ["baz", "bat"]],'
     ' "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}}'),
    ("FromJsonSingleZeroBatchTensor", {"int_tensor": np.zeros([0, 2], np.int32)}, '{"predictions": []}', None),
    ("FromJsonMultipleZeroBatchTensors", {"str_tensor": np.zeros([0, 1, 2], object),
                                          "float_tensor": np.zeros([0, 3, 4], np.float32)}, '{"predictions": []}', None),
]


@pytest.mark.parametrize("case, tensors, row, columnar", FROM_JSON, ids=[c[0] for c in FROM_JSON])
def test_json_from_tensors(case, tensors, row, columnar):
    """Compared as JSON values (upstream's CompareJson), NaN and Infinity as the tokens TF Serving writes."""
    from tfserving_stub import response_json

    def same(written: dict, golden: str):
        assert json.dumps(json.loads(json.dumps(written)), sort_keys=True) == \
            json.dumps(json.loads(golden), sort_keys=True)

    same(response_json(tensors, "row"), row)
    if columnar:
        same(response_json(tensors, "columnar"), columnar)


@pytest.mark.parametrize("tensors, fragment", [  # ported: FromJsonSingleTensorErrors, FromJsonMultipleNamedTensorsErrors
    ({}, "empty tensor map"),
    ({"tensor": np.array(1, np.int32)}, "no shape information"),
    ({"int_tensor": np.zeros([2, 3], np.int32), "str_tensor": np.zeros([1, 3], object)}, "inconsistent batch size"),
])
def test_json_from_tensors_errors(tensors, fragment):
    from tfserving_stub import response_json

    with pytest.raises(Status) as info:
        response_json(tensors, "row")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message


JSON_TENSOR_ERRORS = [  # ported: JsontensorTest.SingleUnnamedTensorErrors / MultipleNamedTensorErrors
    ({"default": "int32"}, {"instances": [[1, 2], [3, 4], [5, 6, 7]], "inputs": [[1, 2]]}, "Not formatted correctly"),
    ({"default": "int32"}, {"instances": [[1, 2], [3, 4], [5, 6, 7]]}, "Expecting tensor size"),
    ({"default": "int32"}, {"instances": [[1, 2], [3, 4], [[5, 6]]]}, "Expecting shape"),
    ({"default": "int32"}, {"instances": [1, [1]]}, "Expecting shape"),
    ({"default": "int32"}, {"instances": [[1, 2], ["a", "b"]]}, "not of expected type"),
    ({"int_tensor": "int32", "str_tensor": "string"},
     {"instances": [{"int_tensor": [[1, 2], [3, 4], [5, 6]], "str_tensor": ["foo", "bar"]},
                    {"int_tensor": [[[7, 8], [9, 0], [1, 2]]], "str_tensor": ["baz", "bat"]}]}, "Expecting shape"),
    ({"int_tensor": "int32", "str_tensor": "string"},
     {"instances": [{"int_tensor": [[1, 2], [3, 4], [5, 6], [7, 8]], "str_tensor": ["foo", "bar"]},
                    {"int_tensor": [[7, 8], [9, 0], [1, 2]], "str_tensor": ["baz", "bat"]}]}, "Expecting tensor size"),
    ({"int_tensor": "int32", "str_tensor": "string"},
     {"instances": [{"int_tensor": [[1, 2]], "str_tensor": ["foo"]}, [1, 20, 30]]}, "Expecting object but got list"),
    ({"str_tensor": "string"}, {"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]},
     "Expecting value/list but got object"),
    ({"default": "string"}, {"instances": [{"b64": "!!!"}]}, "Unable to base64 decode"),
    ({"a": "int32", "b": "int32"}, {"instances": [1, 2]}, "instances is a plain list"),
    ({"a": "int32", "b": "int32"}, {"inputs": {"a": [1]}}, "Missing named input: b in 'inputs' object."),
    ({"a": "int32"}, {"instances": [{"a": 1, "c": 2}]}, "does not have named input: c"),
]


@pytest.mark.parametrize("dtypes, document, fragment", JSON_TENSOR_ERRORS)
def test_json_tensor_errors(dtypes, document, fragment):
    with pytest.raises(Status) as info:
        request_tensors(document, info_map(**dtypes))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message


# --- predict over gRPC (predict_util.cc, server.cc) ----------------------------------------------------------

def test_grpc_outputs_are_repeated_proto_fields_and_signature_errors_are_failed_precondition(handler_server):
    with grpc.insecure_channel(handler_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)))
        response = stub.Predict(request, timeout=30)
        assert list(response.outputs["y"].float_val) == [2.5, 3.0] and not response.outputs["y"].tensor_content
        assert (response.model_spec.version.value, response.model_spec.signature_name) == (VERSION, "serving_default")
        request.model_spec.signature_name = "nope"
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == 'Serving signature key "nope" not found.'
        request.model_spec.signature_name = ""
        request.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("input size does not match signature: 2!=1")
        metadata = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=["signature_def"]), timeout=30)
        assert metadata.model_spec.version.value == VERSION
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=["weights"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=MODEL)), timeout=30)
        assert [(s.version, s.state) for s in status.model_version_status] == \
            [(VERSION, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


# --- batching (batching/batching_session.cc) -----------------------------------------------------------------

class MeanPixel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def predict(self, image_bytes):
        def one(data):
            return tf.reduce_mean(tf.cast(tf.io.decode_png(data, channels=1), tf.float32))

        return {"mean": tf.map_fn(one, image_bytes, fn_output_signature=tf.float32)}


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_batching_merges_concurrent_requests_and_one_bad_image_fails_the_whole_batch(tmp_path):
    module = MeanPixel()
    save(module, tmp_path / "models" / "1", {"serving_default": module.predict})
    config = write_config(tmp_path / "models.config", tmp_path / "models", name="mean", policy=1)
    server = StubModelServer(Options(model_config_file=str(config), enable_batching=True, max_batch_size=8,
                                     batch_timeout_s=0.5)).start()

    def post(images, out, index):
        body = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}
        response = requests.post(f"{server.rest_url}/v1/models/mean:predict", json=body, timeout=30)
        out[index] = (response.status_code, response.json())

    try:
        results = [None] * 3
        threads = [threading.Thread(target=post, args=([png(10 * (k + 1))], results, k)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(r[1]["predictions"][0] for r in results) == [10.0, 20.0, 30.0]
        assert server.predictor.batches[-1] == 3  # one run for the three requests

        inputs = [[png(10)], [b"\x89PNG\r\n\x1a\n broken"], [png(30)]]
        threads = [threading.Thread(target=post, args=(inputs[k], results, k)) for k in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r[0] for r in results] == [400, 400, 400]  # the good images fail with the bad one
        too_many = {"instances": [{"b64": base64.b64encode(png(1)).decode()}] * 9}
        response = requests.post(f"{server.rest_url}/v1/models/mean:predict", json=too_many, timeout=30)
        assert response.status_code == 400
        assert response.json()["error"] == "Task size 9 is larger than maximum input batch size 8"
    finally:
        server.stop()
