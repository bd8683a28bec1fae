"""TF Serving REST client. Needs only `requests`: importing it does not import TensorFlow.

    client = RestClient("http://localhost:8501")
    client.predict([open("chest.jpeg", "rb").read()])  # -> [{"probability": 0.93, "label": "PNEUMONIA"}]

Routes (TF Serving's REST API): POST /v1/models/<name>[/versions/<n>|/labels/<label>]:predict with
``{"signature_name": ..., "instances": [{"image_bytes": {"b64": ...}}]}``; GET /v1/models/<name> for
status; GET .../metadata for the signatures. Errors come back as ``{"error": "..."}`` with the HTTP status
TF Serving maps each code to (clients.HTTP_TO_CODE); 429, 503 and 504 are retried with backoff.
"""

from __future__ import annotations

import base64
import json
import threading
from urllib.parse import quote

import requests

from xray.clients import HTTP_TO_CODE, Retry, ServingError, parse_metadata, parse_status
from xray.serving import contract


class RestClient:
    """``timeout`` is a total deadline per request (connect, send, every read), not a per-read one; an answer
    larger than ``max_response_bytes`` is refused, not buffered. ``tls`` (or an https:// URL) verifies the server
    against ``ca_cert`` (default: the system's CAs) and presents ``client_cert``/``client_key`` when given.
    ``headers`` go with every request (e.g. {"Authorization": "Bearer ..."})."""

    def __init__(self, base_url: str, model_name: str = contract.MODEL_NAME, version: int | None = None,
                 label: str | None = None, timeout: float = 30.0, session: requests.Session | None = None,
                 retries: int = 3, backoff: float = 0.5, tls: bool = False, ca_cert: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None, headers: dict | None = None,
                 max_response_bytes: int = contract.MAX_MESSAGE_BYTES):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if "://" not in base_url:
            base_url = f"{'https' if tls or ca_cert or client_cert else 'http'}://{base_url}"
        scheme = base_url.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{base_url}: the REST endpoint is http:// or https://")
        if scheme == "http" and (tls or ca_cert or client_cert):
            raise ValueError(f"{base_url} is plain http, but TLS was asked for (tls, ca_cert or client_cert): use "
                             "an https:// URL")
        if bool(client_cert) != bool(client_key):
            raise ValueError("a client certificate needs its key, and the key its certificate")
        self.base_url = base_url.rstrip("/")
        self.model_name, self.version, self.label = model_name, version, label
        self.timeout = timeout
        self.session = session or requests.Session()
        # Per request, not on the session: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        self.tls_options = {"verify": ca_cert or True, "cert": (client_cert, client_key) if client_cert else None}
        self.session.headers.update(headers or {})
        self.max_response_bytes = max_response_bytes
        self.retry = Retry(retries, backoff)

    @property
    def _model_path(self) -> str:
        return f"{self.base_url}/v1/models/{quote(self.model_name, safe='')}"

    @property
    def model_url(self) -> str:
        url = self._model_path
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        elif self.label is not None:
            url += f"/labels/{quote(self.label, safe='')}"
        return url

    def build_request(self, images: list[bytes]) -> dict:
        if not images:
            raise ServingError("INVALID_ARGUMENT", "no images to send")
        if len(images) > contract.MAX_BATCH:
            raise ServingError("INVALID_ARGUMENT", f"{len(images)} images in one request; the limit is {contract.MAX_BATCH}")
        instances = [{contract.INPUT_BYTES: {"b64": base64.b64encode(image).decode("ascii")}} for image in images]
        return {"signature_name": contract.SIGNATURE_BYTES, "instances": instances}

    @staticmethod
    def parse_response(body, count: int) -> list[dict]:
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != count:
            raise ServingError("INTERNAL", f"malformed answer: expected {count} predictions, got {str(body)[:200]}")
        try:
            return [{"probability": float(p[contract.OUTPUT_PROBABILITY]), "label": str(p[contract.OUTPUT_LABEL])}
                    for p in predictions]
        except (KeyError, TypeError, ValueError, IndexError):
            raise ServingError("INTERNAL", f"malformed answer: each prediction needs {contract.OUTPUT_PROBABILITY!r} "
                                           f"and {contract.OUTPUT_LABEL!r}, got {str(predictions)[:200]}") from None

    def predict(self, images: list[bytes]) -> list[dict]:
        body = self._call("post", f"{self.model_url}:predict", json=self.build_request(images))
        return self.parse_response(body, len(images))

    def status(self) -> list[dict]:
        """Every version the server knows, newest first: [{"version", "state", "error_code", "error_message"}]."""
        url = self._model_path + (f"/versions/{int(self.version)}" if self.version else "")
        return parse_status(self._call("get", url))

    def metadata(self) -> dict:
        """{"name", "version", "signatures": {...}} of the version this client addresses (needs it loaded)."""
        return parse_metadata(self._call("get", f"{self.model_url}/metadata"))

    def _call(self, method: str, url: str, **kwargs):
        return self.retry(lambda: self._send(method, url, **kwargs), f"TF Serving at {self.base_url}")

    def _send(self, method: str, url: str, **kwargs):
        """One request under one deadline: the caller gets an answer or DEADLINE_EXCEEDED within ``timeout``
        (plus scheduling), however slowly the server trickles its bytes. The request runs in a helper thread
        that stops reading at the deadline."""
        outcome: dict = {}
        expired = threading.Event()
        worker = threading.Thread(target=self._exchange, args=(method, url, kwargs, outcome, expired), daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            expired.set()
            raise ServingError("DEADLINE_EXCEEDED", f"no complete answer from {self.base_url} within {self.timeout}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["body"]

    def _exchange(self, method: str, url: str, kwargs: dict, outcome: dict, expired: threading.Event) -> None:
        try:
            outcome["body"] = self._read(method, url, kwargs, expired)
        except ServingError as error:
            outcome["error"] = error
        except Exception as error:  # noqa: BLE001 - handed to the caller's thread as one line
            outcome["error"] = ServingError("UNKNOWN", f"{type(error).__name__}: {error}")

    def _read(self, method: str, url: str, kwargs: dict, expired: threading.Event):
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True, **self.tls_options, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ServingError("UNAVAILABLE", f"TLS with {self.base_url} failed: {str(error)[:300]}") from None
        except requests.ConnectionError as error:
            raise ServingError("UNAVAILABLE", f"cannot reach TF Serving at {self.base_url} ({type(error).__name__}); "
                                              "is the server running and the URL right?") from None
        except requests.Timeout:
            raise ServingError("DEADLINE_EXCEEDED", f"no answer from {self.base_url} within {self.timeout}s") from None
        try:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > self.max_response_bytes:
                raise self._too_large(declared)
            data, size = [], 0
            try:
                for chunk in response.iter_content(1 << 16):
                    if expired.is_set():
                        return None
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise self._too_large(size)
                    data.append(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                raise ServingError("UNAVAILABLE", f"{self.base_url} closed the connection mid-answer "
                                                  f"({type(error).__name__})") from None
            except requests.Timeout:
                raise ServingError("DEADLINE_EXCEEDED", f"the answer from {self.base_url} stalled") from None
        finally:
            response.close()
        text = b"".join(data).decode("utf-8", errors="replace")
        try:
            body, parsed = json.loads(text), True
        except ValueError:
            body, parsed = {"error": text[:200] or response.reason}, False
        if response.status_code != 200:
            code = HTTP_TO_CODE.get(response.status_code, "UNKNOWN")
            message = body.get("error", body) if isinstance(body, dict) else body
            raise ServingError(code, f"{message} (HTTP {response.status_code})")
        if not parsed:
            raise ServingError("INTERNAL", f"malformed answer from {self.base_url} (not JSON): {text[:200]}")
        return body

    def _too_large(self, size: int) -> ServingError:
        return ServingError("OUT_OF_RANGE", f"the answer from {self.base_url} is over {self.max_response_bytes} bytes "
                                            f"({size}+); refused (max_response_bytes)")
