"""The clients against servers that misbehave: a trickling answer, a huge one, malformed JSON with status 200,
hostile labels, TLS that must not fall back to plain text, mutual TLS with our own CA, and auth headers on
both transports. Each server here is a small local one made to do exactly the wrong thing."""

from __future__ import annotations

import json
import ssl
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from xray.clients import ServingError
from xray.clients.grpc import GrpcClient
from xray.clients.rest import RestClient
from conftest import run_xray

PREDICTION = {"predictions": [{"probability": 0.25, "label": "NORMAL"}]}


def png(folder):
    from PIL import Image

    path = folder / "film.png"
    Image.new("L", (8, 8), 128).save(path)
    return path


class Misbehaving:
    """An HTTP server whose answer to every request is ``reply(handler)``; it records paths and headers."""

    def __init__(self, reply, tls: ssl.SSLContext | None = None):
        self.seen: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.seen.append((self.path, dict(self.headers)))
                reply(self)

            do_GET = do_POST = _any

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.http.socket = tls.wrap_socket(self.http.socket, server_side=True)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.port = self.http.server_address[1]

    def close(self):
        self.http.shutdown()
        self.http.server_close()


def send(handler, status: int, body: bytes, length: int | None = None):
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server():
    made = []

    def make(reply, tls=None):
        made.append(Misbehaving(reply, tls))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_trickling_answer_ends_at_the_total_deadline(server):
    """Each byte comes well within a per-read timeout; the whole answer would take 10 s."""
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "50")
        handler.end_headers()
        for _ in range(50):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    s = server(trickle)
    client = RestClient(f"http://127.0.0.1:{s.port}", timeout=1, retries=0)
    started = time.monotonic()
    with pytest.raises(ServingError) as info:
        client.predict([b"x"])
    elapsed = time.monotonic() - started
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert elapsed < 2.5, elapsed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_an_answer_over_the_cap_is_refused_not_buffered(server, declared):
    big = b"[" + b"0," * 1_500_000 + b"0]"  # 3 MB

    def huge(handler):
        if declared:
            send(handler, 200, big)
        else:  # no length: the body runs until the connection closes
            handler.send_response(200)
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(big)
            handler.close_connection = True

    s = server(huge)
    client = RestClient(f"http://127.0.0.1:{s.port}", retries=0, max_response_bytes=1_000_000)
    with pytest.raises(ServingError) as info:
        client.predict([b"x"])
    assert info.value.code == "OUT_OF_RANGE" and "over 1000000 bytes" in info.value.message


@pytest.mark.parametrize("body", [b"[]", b'{"predictions": [{"probability": 0.5}]}', b'{"predictions": 3}',
                                  b"<html>proxy</html>", b'{"predictions": [{"probability": "x", "label": "A"}]}'])
def test_a_malformed_200_is_one_line_and_exit_2(server, body, tmp_path):
    s = server(lambda handler: send(handler, 200, body))
    with pytest.raises(ServingError) as info:
        RestClient(f"http://127.0.0.1:{s.port}", retries=0).predict([b"x"])
    assert info.value.code == "INTERNAL" and "malformed" in info.value.message
    image = png(tmp_path)
    result = run_xray("predict", image, "--rest", f"http://127.0.0.1:{s.port}", check=False)
    assert result.returncode == 2 and "malformed" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_model_name_and_label_are_escaped_into_one_path_segment(server):
    s = server(lambda handler: send(handler, 200, json.dumps(PREDICTION).encode()))
    hostile = "../../../monitoring/prometheus/metrics#"
    RestClient(f"http://127.0.0.1:{s.port}", label=hostile, retries=0).predict([b"x"])
    RestClient(f"http://127.0.0.1:{s.port}", model_name="a/b?c", retries=0).predict([b"x"])
    (first, _), (second, _) = s.seen
    assert first == "/v1/models/xray/labels/..%2F..%2F..%2Fmonitoring%2Fprometheus%2Fmetrics%23:predict"
    assert second == "/v1/models/a%2Fb%3Fc:predict"


def test_tls_never_falls_back_to_plain_http(server, tmp_path):
    s = server(lambda handler: send(handler, 200, json.dumps(PREDICTION).encode()))
    with pytest.raises(ServingError) as info:  # host:port + tls: https; this plaintext server cannot answer it
        RestClient(f"127.0.0.1:{s.port}", tls=True, retries=0).predict([b"x"])
    assert info.value.code == "UNAVAILABLE" and "TLS" in info.value.message
    assert s.seen == []  # no request reached it in plain text
    image = png(tmp_path)
    result = run_xray("predict", image, "--rest", f"http://127.0.0.1:{s.port}", "--tls", check=False)
    assert result.returncode == 2 and "plain http" in result.stderr and "Traceback" not in result.stderr


def test_rest_mutual_tls_with_our_own_ca(server, pki, tmp_path):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")
    context.load_verify_locations(pki / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    s = server(lambda handler: send(handler, 200, json.dumps(PREDICTION).encode()), tls=context)
    url = f"https://127.0.0.1:{s.port}"
    answer = RestClient(url, ca_cert=str(pki / "ca.crt"), client_cert=str(pki / "client.crt"),
                        client_key=str(pki / "client.key"), retries=0).predict([b"x"])
    assert answer == [{"probability": 0.25, "label": "NORMAL"}]
    with pytest.raises(ServingError) as info:  # no client certificate: the server refuses the handshake
        RestClient(url, ca_cert=str(pki / "ca.crt"), retries=0).predict([b"x"])
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(ServingError):  # the system's roots do not know our CA
        RestClient(url, client_cert=str(pki / "client.crt"), client_key=str(pki / "client.key"), retries=0).predict([b"x"])
    image = png(tmp_path)
    result = run_xray("predict", image, "--rest", url, "--ca-cert", pki / "ca.crt", "--client-cert", pki / "client.crt",
                      "--client-key", pki / "client.key", "--format", "jsonl")
    assert '"probability": 0.25' in result.stdout


def test_rest_headers_from_the_flag_and_the_token_variable(server, tmp_path):
    s = server(lambda handler: send(handler, 200, json.dumps(PREDICTION).encode()))
    image = png(tmp_path)
    run_xray("predict", image, "--rest", f"http://127.0.0.1:{s.port}", "--header", "X-Team: radiology",
             env={"XRAY_SERVING_TOKEN": "s3cret"})
    headers = s.seen[-1][1]
    assert headers["Authorization"] == "Bearer s3cret" and headers["X-Team"] == "radiology"
    result = run_xray("predict", image, "--rest", f"http://127.0.0.1:{s.port}", "--header", "no colon", check=False)
    assert result.returncode == 2 and "is not 'NAME: VALUE'" in result.stderr


class _Status(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self):
        self.metadata = []

    def GetModelStatus(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


def test_grpc_mutual_tls_and_metadata(pki):
    servicer = _Status()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
                                              root_certificates=(pki / "ca.crt").read_bytes(),
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with GrpcClient(f"localhost:{port}", ca_cert=str(pki / "ca.crt"), client_cert=str(pki / "client.crt"),
                        client_key=str(pki / "client.key"), headers={"Authorization": "Bearer t0ken"},
                        retries=0, timeout=10) as client:
            assert client.status()[0]["state"] == "AVAILABLE"
        assert servicer.metadata[-1]["authorization"] == "Bearer t0ken"
        with GrpcClient(f"localhost:{port}", ca_cert=str(pki / "ca.crt"), retries=0, timeout=10) as client:
            with pytest.raises(ServingError) as info:  # no client certificate
                client.status()
        assert info.value.code == "UNAVAILABLE"
    finally:
        server.stop(None)
