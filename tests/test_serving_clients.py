"""One client suite, run against the TF Serving stand-in and, when XRAY_TFSERVING_URL (REST, e.g.
http://localhost:8501) and XRAY_TFSERVING_GRPC (e.g. localhost:8500) name a real tensorflow_model_server
serving an exported xray model (`make serve`), against that server too: the way to check the clients on a
new TF Serving release. Without the variables only the stand-in runs (it is parametrised out, not skipped).

The stand-in runs with our Deployment's flags (xray/k8s/base/serving/deployment.yaml) over two exported
versions with stable -> 1, canary -> 2.
"""

from __future__ import annotations

import os

import pytest

from xray.clients import ServingError
from xray.clients.grpc import GrpcClient
from xray.clients.predict import predict_files
from xray.clients.rest import RestClient
from conftest import run_xray
from xray.serving import contract
from tfserving_stub import deployment_server

REAL = {"rest": os.environ.get("XRAY_TFSERVING_URL"), "grpc": os.environ.get("XRAY_TFSERVING_GRPC")}
SERVERS = ["stand-in"] + (["real"] if REAL["rest"] and REAL["grpc"] else [])


class Endpoints:
    def __init__(self, rest: str, grpc: str, stub=None):
        self.rest, self.grpc, self.stub = rest, grpc, stub

    def client(self, transport: str, **kwargs):
        return RestClient(self.rest, **kwargs) if transport == "rest" else GrpcClient(self.grpc, **kwargs)


@pytest.fixture(scope="module", params=SERVERS)
def endpoints(request, model_base, tmp_path_factory):
    if request.param == "real":
        yield Endpoints(REAL["rest"], REAL["grpc"])
        return
    config_dir = tmp_path_factory.mktemp("client-suite-config")
    stub = deployment_server(str(model_base), labels={"stable": 1, "canary": 2}, config_dir=str(config_dir)).start()
    stub.core.wait_for_loads()  # the ports open once version 2 (the newest) is up; version 1 may still be loading
    yield Endpoints(stub.rest_url, stub.grpc_target, stub)
    stub.stop()


@pytest.fixture(scope="module")
def images(synth_dir):
    return [p.read_bytes() for p in sorted(synth_dir.glob("test/*/*.jpeg"))[:4]]


TRANSPORTS = ["rest", "grpc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_predict_answers_probability_and_label_per_image(endpoints, images, transport):
    results = endpoints.client(transport).predict(images)
    assert len(results) == len(images)
    assert all(0 <= r["probability"] <= 1 and r["label"] in contract.CLASS_NAMES for r in results)


def test_both_transports_give_the_same_answers_status_and_metadata(endpoints, images):
    rest, grpc_client = endpoints.client("rest"), endpoints.client("grpc")
    by_rest, by_grpc = rest.predict(images), grpc_client.predict(images)
    assert [r["label"] for r in by_rest] == [r["label"] for r in by_grpc]
    assert [r["probability"] for r in by_rest] == pytest.approx([r["probability"] for r in by_grpc], abs=1e-5)
    status = rest.status()
    assert status == grpc_client.status()
    assert [s["version"] for s in status] == sorted((s["version"] for s in status), reverse=True)
    assert any(s["state"] == "AVAILABLE" for s in status)
    metadata = rest.metadata()
    assert metadata == grpc_client.metadata()
    default = metadata["signatures"][contract.SIGNATURE_BYTES]
    assert default["inputs"][contract.INPUT_BYTES] == {"dtype": "DT_STRING", "shape": [-1]}
    assert default["outputs"][contract.OUTPUT_PROBABILITY]["dtype"] == "DT_FLOAT"
    assert metadata["version"] == max(s["version"] for s in status if s["state"] == "AVAILABLE")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_labels_and_versions_address_what_the_config_serves(endpoints, transport):
    for label in contract.VERSION_LABELS:
        version = endpoints.client(transport, label=label).metadata()["version"]
        assert endpoints.client(transport, version=version).metadata()["version"] == version


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_version_outside_the_policy_an_unknown_model_or_label_fail_with_their_codes(endpoints, images, transport):
    served = {s["version"] for s in endpoints.client(transport).status()}
    with pytest.raises(ServingError) as info:
        endpoints.client(transport, version=max(served) + 1000).predict(images[:1])
    assert info.value.code == "NOT_FOUND" and info.value.attempts == 1
    with pytest.raises(ServingError) as info:
        endpoints.client(transport, model_name="no-such-model").predict(images[:1])
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(ServingError) as info:
        endpoints.client(transport, label="no-such-label").predict(images[:1])
    assert info.value.code == "INVALID_ARGUMENT" and "Unrecognized servable version label" in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bad_image_fails_alone_and_the_batch_is_answered(endpoints, images, transport, tmp_path):
    paths = []
    for index, data in enumerate(images[:3]):
        paths.append(tmp_path / f"good{index}.jpeg")
        paths[-1].write_bytes(data)
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(images[0][:200])  # a truncated JPEG: passes the client's magic check, fails to decode
    order = [str(paths[0]), str(bad), str(paths[1]), str(paths[2])]
    rows = list(predict_files(endpoints.client(transport), order, batch_size=4))
    assert [r["path"] for r in rows] == order
    assert ["error" in r for r in rows] == [False, True, False, False]


# --- retries: the stand-in answers as an overloaded or restarting server would --------------------------------

@pytest.fixture(scope="module")
def stub_endpoints(model_base, tmp_path_factory):
    """The stand-in alone: a real server cannot be told to fail."""
    config_dir = tmp_path_factory.mktemp("retry-config")
    stub = deployment_server(str(model_base), labels={"stable": 1, "canary": 2}, config_dir=str(config_dir)).start()
    stub.core.wait_for_loads()  # the ports open once version 2 (the newest) is up; version 1 may still be loading
    yield Endpoints(stub.rest_url, stub.grpc_target, stub)
    stub.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"])
def test_429_503_504_are_retried_with_backoff_then_answered(stub_endpoints, images, transport, code):
    import grpc

    stub = stub_endpoints.stub
    stub.inject(getattr(grpc.StatusCode, code), f"injected {code}", count=2, api=transport)
    before = stub.requests[transport]
    results = stub_endpoints.client(transport, retries=3, backoff=0.01).predict(images[:1])
    assert results[0]["label"] in contract.CLASS_NAMES
    assert stub.requests[transport] - before == 3  # two refusals, one answer


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_persistent_overload_gives_up_after_the_retries_and_predict_stops_with_one_line(stub_endpoints, images,
                                                                                         transport, synth_dir):
    import grpc

    stub = stub_endpoints.stub
    stub.inject(grpc.StatusCode.RESOURCE_EXHAUSTED, "injected overload", count=3, api=transport)
    with pytest.raises(ServingError) as info:
        stub_endpoints.client(transport, retries=2, backoff=0.01).predict(images[:1])
    assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.attempts == 3 and "gave up after 3" in info.value.message
    stub.inject(grpc.StatusCode.UNAVAILABLE, "injected restart", count=100, api=transport)
    try:
        target = stub_endpoints.rest if transport == "rest" else stub_endpoints.grpc
        result = run_xray("predict", synth_dir / "test" / "NORMAL", f"--{transport}", target, "--timeout", 5, check=False)
    finally:
        stub.clear_faults()
    assert result.returncode == 2 and "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # no file was reported as bad because the server was down


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_non_retryable_code_is_not_retried(stub_endpoints, images, transport):
    import grpc

    stub = stub_endpoints.stub
    stub.inject(grpc.StatusCode.FAILED_PRECONDITION, "injected precondition", count=1, api=transport)
    before = stub.requests[transport]
    with pytest.raises(ServingError) as info:
        stub_endpoints.client(transport, retries=3, backoff=0.01).predict(images[:1])
    # Over REST, FAILED_PRECONDITION arrives as HTTP 400 (http_server.cc), which reads back as INVALID_ARGUMENT.
    assert info.value.code == ("INVALID_ARGUMENT" if transport == "rest" else "FAILED_PRECONDITION")
    assert stub.requests[transport] - before == 1
