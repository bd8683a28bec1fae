"""xray/clients/rest.py through `requests` with an in-process transport adapter in place of the socket: the URLs, the
body, the options each request carries (deadline, streaming, TLS), how answers and errors are read, and the
size cap. A named shortcut: the adapter answers what each test tells it, it is not TF Serving; the client
against the TF Serving stand-in over TCP is test_serving_clients.py, and against servers that trickle, flood
or speak TLS, test_client_hardening.py. In-process and fast, so `make mutate` runs it."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
import requests
from requests.adapters import BaseAdapter

from xray.clients import ServingError
from xray.clients.rest import RestClient
from xray.serving import contract
from test_clients_core import check_batch_bounds

GAVE_UP = " (gave up after 1 attempt(s) to TF Serving at http://serving:8501)"  # retryable codes, retries=0
PREDICTION = {"predictions": [{"probability": 0.25, "label": "NORMAL"}]}


class Adapter(BaseAdapter):
    """Answers each request with ``reply(request)``: (status, body bytes or JSON-able, headers), or raises what it
    returns if that is an exception. Records (method, url, body, headers, options) per request."""

    def __init__(self, reply):
        super().__init__()
        self.reply, self.seen = reply, []

    def send(self, request, **options):
        self.seen.append((request.method, request.url, request.body, dict(request.headers), options))
        outcome = self.reply(request)
        if isinstance(outcome, Exception):
            raise outcome
        status, body, headers = (*outcome, {})[:3]
        response = requests.Response()
        response.status_code, response.request, response.url = status, request, request.url
        response.reason = {200: "OK", 400: "Bad Request", 503: "Service Unavailable"}.get(status, "")
        data = body if isinstance(body, (bytes, io.IOBase)) else json.dumps(body).encode()
        response.raw = data if isinstance(data, io.IOBase) else io.BytesIO(data)
        response.headers.update(headers)
        return response

    def close(self):
        pass


def client(reply, base_url="http://serving:8501", **kwargs) -> tuple[RestClient, Adapter]:
    adapter = Adapter(reply)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    made = RestClient(base_url, session=session, **kwargs)
    made.retry.sleep = lambda seconds: None  # the policy's timing is test_retry.py's; here only the attempts count
    return made, adapter


def test_predict_posts_the_images_as_base64_instances_of_the_bytes_signature():
    c, adapter = client(lambda r: (200, {"predictions": [{"probability": 0.25, "label": "NORMAL"},
                                                         {"probability": 0.75, "label": "PNEUMONIA"}]}))
    assert c.predict([b"\xff\xd8one", b"two"]) == [{"probability": 0.25, "label": "NORMAL"},
                                                   {"probability": 0.75, "label": "PNEUMONIA"}]
    (method, url, body, _, _), = adapter.seen
    assert (method, url) == ("POST", f"http://serving:8501/v1/models/{contract.MODEL_NAME}:predict")
    sent = json.loads(body)
    assert sent["signature_name"] == contract.SIGNATURE_BYTES
    assert [base64.b64decode(i[contract.INPUT_BYTES]["b64"]) for i in sent["instances"]] == [b"\xff\xd8one", b"two"]
    assert set(sent) == {"signature_name", "instances"}


@pytest.mark.parametrize("base_url, kwargs, expected", [
    ("serving:8501", {}, "http://serving:8501/v1/models/xray"),
    ("serving:8501", {"tls": True}, "https://serving:8501/v1/models/xray"),
    ("serving:8501/", {"ca_cert": "ca.pem"}, "https://serving:8501/v1/models/xray"),
    ("HTTPS://serving/", {"version": 12}, "https://serving/v1/models/xray/versions/12"),
    ("http://serving", {"label": "canary"}, "http://serving/v1/models/xray/labels/canary"),
    ("http://serving", {"model_name": "a/b", "label": "x y"}, "http://serving/v1/models/a%2Fb/labels/x%20y")])
def test_the_url_says_the_scheme_the_model_and_its_version_or_label(base_url, kwargs, expected):
    c, adapter = client(lambda r: (200, PREDICTION), base_url=base_url, **kwargs)
    c.predict([b"x"])
    assert adapter.seen[0][1] == expected + ":predict"
    adapter.reply = lambda r: (200, {"model_spec": {}, "metadata": {"signature_def": {"signature_def": {}}}})
    c.metadata()
    assert adapter.seen[1][:2] == ("GET", expected + "/metadata")


@pytest.mark.parametrize("kwargs, path", [({}, ""), ({"version": 3}, "/versions/3"), ({"label": "stable"}, "")])
def test_status_asks_for_the_model_or_the_one_version(kwargs, path):
    status = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}},
                                       {"version": "2", "state": "LOADING", "status": {}}]}
    c, adapter = client(lambda r: (200, status), **kwargs)
    assert [v["version"] for v in c.status()] == [2, 1]
    assert adapter.seen[0][:2] == ("GET", "http://serving:8501/v1/models/xray" + path)


@pytest.mark.parametrize("base_url, kwargs, message", [
    ("ftp://serving", {}, "ftp://serving: the REST endpoint is http:// or https://"),
    ("http://serving", {"tls": True}, "http://serving is plain http, but TLS was asked for (tls, ca_cert or "
                                      "client_cert): use an https:// URL"),
    ("http://serving", {"ca_cert": "ca.pem"}, "http://serving is plain http, but TLS was asked for"),
    ("http://serving", {"client_cert": "c.pem", "client_key": "k.pem"}, "http://serving is plain http"),
    ("https://serving", {"client_cert": "c.pem"}, "a client certificate needs its key, and the key its certificate"),
    ("https://serving", {"client_key": "k.pem"}, "a client certificate needs its key, and the key its certificate"),
    ("https://serving", {"version": 1, "label": "canary"}, "give a version or a label, not both")])
def test_contradictory_settings_are_refused_with_the_fix(base_url, kwargs, message):
    with pytest.raises(ValueError) as caught:
        RestClient(base_url, **kwargs)
    assert str(caught.value).startswith(message)


def test_each_request_carries_the_deadline_streaming_tls_options_and_headers(monkeypatch):
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests would put these in place of verify=True
        monkeypatch.delenv(name, raising=False)
    c, adapter = client(lambda r: (200, PREDICTION), base_url="https://serving", timeout=4.5, ca_cert="/pki/ca.pem",
                        client_cert="/pki/c.pem", client_key="/pki/k.pem", headers={"Authorization": "Bearer t"})
    c.predict([b"x"])
    _, _, _, headers, options = adapter.seen[0]
    assert (options["timeout"], options["stream"], options["verify"], options["cert"]) == \
        (4.5, True, "/pki/ca.pem", ("/pki/c.pem", "/pki/k.pem"))
    assert headers["Authorization"] == "Bearer t"
    c, adapter = client(lambda r: (200, PREDICTION), base_url="https://serving")
    c.predict([b"x"])
    assert (adapter.seen[0][4]["verify"], adapter.seen[0][4]["cert"]) == (True, None)
    assert "Authorization" not in adapter.seen[0][3]


def test_the_batch_bounds_are_checked_before_anything_is_sent():
    c, adapter = client(lambda r: (200, {"predictions": [{"probability": 0.5, "label": "NORMAL"}] * contract.MAX_BATCH}))
    check_batch_bounds(c.predict, lambda: adapter.seen == [])


@pytest.mark.parametrize("body, detail", [
    ({"predictions": []}, "expected 1 predictions, got {'predictions': []}"),
    ({"outputs": PREDICTION["predictions"]}, "expected 1 predictions, got"),
    ([PREDICTION], "expected 1 predictions, got"),
    ({"predictions": [{"probability": 0.5}]}, "each prediction needs 'probability' and 'label'"),
    ({"predictions": [{"label": "NORMAL", "probability": "high"}]}, "each prediction needs"),
    ({"predictions": [{"label": "NORMAL", "probability": None}]}, "each prediction needs"),
    ({"predictions": [[0.5, "NORMAL"]]}, "each prediction needs"),
    ({"predictions": [0.5]}, "each prediction needs")])
def test_a_malformed_answer_is_internal_and_shows_what_came(body, detail):
    c, _ = client(lambda r: (200, body))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "INTERNAL" and caught.value.message.startswith("malformed answer: ")
    assert detail in caught.value.message


def test_a_200_that_is_not_json_is_internal():
    c, _ = client(lambda r: (200, b"<html>proxy says hi</html>"))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message) == (
        "INTERNAL", "malformed answer from http://serving:8501 (not JSON): <html>proxy says hi</html>")


@pytest.mark.parametrize("status, body, code, message", [
    (400, {"error": "Invalid JPEG data"}, "INVALID_ARGUMENT", "Invalid JPEG data (HTTP 400)"),
    (404, {"error": "Servable not found"}, "NOT_FOUND", "Servable not found (HTTP 404)"),
    (400, b"bad gateway config", "INVALID_ARGUMENT", "bad gateway config (HTTP 400)"),
    (400, b"", "INVALID_ARGUMENT", "Bad Request (HTTP 400)"),
    (418, {"error": "teapot"}, "UNKNOWN", "teapot (HTTP 418)"),
    (500, ["not", "a", "dict"], "INTERNAL", "['not', 'a', 'dict'] (HTTP 500)"),
    (500, {"message": "no error key"}, "INTERNAL", "{'message': 'no error key'} (HTTP 500)")])
def test_an_error_answer_becomes_the_code_tf_serving_mapped_it_from(status, body, code, message):
    c, adapter = client(lambda r: (status, body), retries=3)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message, caught.value.attempts) == (code, message, 1)
    assert len(adapter.seen) == 1


def test_overload_is_sent_again_and_the_last_answer_wins():
    replies = [(503, {"error": "draining"}), (429, {"error": "queue full"}), (200, PREDICTION)]
    c, adapter = client(lambda r: replies.pop(0), retries=2)
    assert c.predict([b"x"]) == PREDICTION["predictions"]
    assert len(adapter.seen) == 3
    c, adapter = client(lambda r: (504, {"error": "slow"}), retries=1)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.attempts) == ("DEADLINE_EXCEEDED", 2)
    assert caught.value.message == "slow (HTTP 504) (gave up after 2 attempt(s) to TF Serving at http://serving:8501)"


@pytest.mark.parametrize("error, code, message", [
    (requests.exceptions.SSLError("certificate verify failed"), "UNAVAILABLE",
     "TLS with http://serving:8501 failed: certificate verify failed"),
    (requests.ConnectionError("refused"), "UNAVAILABLE",
     "cannot reach TF Serving at http://serving:8501 (ConnectionError); is the server running and the URL right?"),
    (requests.exceptions.ConnectTimeout("slow"), "UNAVAILABLE", "cannot reach TF Serving at http://serving:8501 "
                                                                "(ConnectTimeout)"),
    (requests.exceptions.ReadTimeout("slow"), "DEADLINE_EXCEEDED", "no answer from http://serving:8501 within 2.0s"),
    (RuntimeError("adapter broke"), "UNKNOWN", "RuntimeError: adapter broke")])
def test_transport_failures_are_one_line_with_a_status_code(error, code, message):
    c, _ = client(lambda r: error, retries=0, timeout=2.0)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == code and caught.value.message.startswith(message)


class Breaks(io.RawIOBase):
    """A body that gives ``good`` bytes, then raises ``error``."""

    def __init__(self, good: bytes, error: Exception):
        self.good, self.error = good, error

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self.good:
            raise self.error
        n = min(len(buffer), len(self.good))
        buffer[:n], self.good = self.good[:n], self.good[n:]
        return n


@pytest.mark.parametrize("error, code, message", [
    (requests.exceptions.ChunkedEncodingError("cut"), "UNAVAILABLE",
     "http://serving:8501 closed the connection mid-answer (ChunkedEncodingError)"),
    (requests.ConnectionError("reset"), "UNAVAILABLE",
     "http://serving:8501 closed the connection mid-answer (ConnectionError)"),
    (requests.exceptions.ReadTimeout("stall"), "DEADLINE_EXCEEDED", "the answer from http://serving:8501 stalled")])
def test_an_answer_cut_midway_is_one_line(error, code, message):
    c, _ = client(lambda r: (200, Breaks(b'{"predictions": [', error)), retries=0)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message) == (code, f"{message}{GAVE_UP}")


@pytest.mark.parametrize("size, declared", [(1001, False), (1001, True), (5000, False)])
def test_an_answer_over_the_cap_is_out_of_range(size, declared):
    body = b" " * size
    headers = {"Content-Length": str(size)} if declared else {}
    c, _ = client(lambda r: (200, body, headers), max_response_bytes=1000)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "OUT_OF_RANGE"
    assert caught.value.message.startswith("the answer from http://serving:8501 is over 1000 bytes (")
    assert caught.value.message.endswith("+); refused (max_response_bytes)")
    if declared:
        assert f"({size}+)" in caught.value.message


def test_an_answer_at_the_cap_is_read():
    body = json.dumps(PREDICTION).encode()
    c, _ = client(lambda r: (200, body, {"Content-Length": str(len(body))}), max_response_bytes=len(body))
    assert c.predict([b"x"]) == PREDICTION["predictions"]
    big = json.dumps({"predictions": [{"probability": 0.5, "label": "N" * 200_000}]}).encode()
    c, _ = client(lambda r: (200, big), max_response_bytes=len(big))
    assert c.predict([b"x"])[0]["label"] == "N" * 200_000


def test_the_deadline_covers_the_whole_request():
    """An adapter that never answers: the call ends with DEADLINE_EXCEEDED at ``timeout``, and the helper thread
    stops reading once it is released."""
    release = threading.Event()
    c, _ = client(lambda r: (200, PREDICTION) if release.wait(30) else None, retries=0, timeout=0.3)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message) == (
        "DEADLINE_EXCEEDED", f"no complete answer from http://serving:8501 within 0.3s{GAVE_UP}")
    helpers = [t for t in threading.enumerate() if "_exchange" in t.name]
    assert helpers and all(t.daemon for t in helpers)  # a helper still reading never holds the program open
    release.set()


def test_the_defaults_are_the_documented_ones():
    c = RestClient("serving:8501")  # docs/reference.md: a 30 s deadline, 3 retries from 0.5 s, the contract's cap
    assert (c.model_name, c.timeout, c.retry.retries, c.retry.backoff, c.max_response_bytes) == (
        contract.MODEL_NAME, 30.0, 3, 0.5, contract.MAX_MESSAGE_BYTES)


def test_long_bodies_are_cut_to_200_characters_in_messages():
    long_text = "x" * 500
    c, _ = client(lambda r: (200, {"predictions": [{"label": long_text}]}))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.message == ("malformed answer: each prediction needs 'probability' and 'label', got "
                                    + str([{"label": long_text}])[:200])
    c, _ = client(lambda r: (200, {"other": long_text}))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.message == "malformed answer: expected 1 predictions, got " + str({"other": long_text})[:200]
    c, _ = client(lambda r: (200, b"<" + long_text.encode()))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.message == "malformed answer from http://serving:8501 (not JSON): " + ("<" + long_text)[:200]
    c, _ = client(lambda r: (400, long_text.encode()))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.message == long_text[:200] + " (HTTP 400)"
    c, _ = client(lambda r: requests.exceptions.SSLError("y" * 500), retries=0)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.message.startswith("TLS with http://serving:8501 failed: " + "y" * 300 + " (gave up")


def test_an_answer_that_is_not_utf8_is_still_read():
    c, _ = client(lambda r: (400, b'{"error": "bad \xff image"}'))
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "bad \ufffd image (HTTP 400)")


def test_a_declared_answer_over_the_cap_is_refused_before_a_byte_is_read():
    c, _ = client(lambda r: (200, Breaks(b"", RuntimeError("read")), {"Content-Length": "5000"}), max_response_bytes=1000)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "OUT_OF_RANGE" and "(5000+)" in caught.value.message


def test_an_undeclared_flood_is_stopped_within_one_64_kib_read_past_the_cap():
    class Flood(io.RawIOBase):
        given = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            Flood.given += len(buffer)
            buffer[:] = b" " * len(buffer)
            return len(buffer)

    c, _ = client(lambda r: (200, Flood()), max_response_bytes=1000)
    with pytest.raises(ServingError) as caught:
        c.predict([b"x"])
    assert caught.value.code == "OUT_OF_RANGE" and "(65536+)" in caught.value.message
    assert Flood.given <= 1000 + 65536 + 8192  # what io's buffering may read ahead of the last chunk


def test_a_request_that_never_answers_does_not_keep_the_program_from_exiting():
    """`xray predict` ends at its deadline: the helper thread reading the answer must not hold the process open."""
    import subprocess
    import sys

    script = """
import threading, requests
from requests.adapters import BaseAdapter
from xray.clients import ServingError
from xray.clients.rest import RestClient
class Never(BaseAdapter):
    def send(self, request, **options):
        threading.Event().wait()
    def close(self):
        pass
session = requests.Session()
session.mount("http://", Never())
try:
    RestClient("http://serving", session=session, retries=0, timeout=0.2).predict([b"x"])
except ServingError as error:
    print(error.code)
"""
    from conftest import REPO

    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "DEADLINE_EXCEEDED" and result.returncode == 0, result.stderr[-2000:]


def test_the_scheme_is_the_url_s_first_and_a_trailing_slash_is_all_that_is_cut():
    c, adapter = client(lambda r: (200, PREDICTION), base_url="http://gateway/route?to=https://serverX/")
    assert c.base_url == "http://gateway/route?to=https://serverX"
    c, adapter = client(lambda r: (200, PREDICTION), base_url="http://servingX/", retries=5, backoff=0.25)
    c.predict([b"x"])
    assert adapter.seen[0][1] == "http://servingx/v1/models/xray:predict"  # requests lower-cases the host
    assert (c.base_url, c.retry.retries, c.retry.backoff) == ("http://servingX", 5, 0.25)
