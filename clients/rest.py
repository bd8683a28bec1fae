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
import time

import requests

from clients import HTTP_TO_CODE, Retry, ServingError, parse_metadata, parse_status
from serving import contract


class RestClient:
    def __init__(self, base_url: str, model_name: str = contract.MODEL_NAME, version: int | None = None,
                 label: str | None = None, timeout: float = 30.0, session: requests.Session | None = None,
                 retries: int = 3, backoff: float = 0.5):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        self.base_url = base_url.rstrip("/")
        self.model_name, self.version, self.label = model_name, version, label
        self.timeout = timeout
        self.session = session or requests.Session()
        self.retry = Retry(retries, backoff)

    @property
    def model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        elif self.label is not None:
            url += f"/labels/{self.label}"
        return url

    def build_request(self, images: list[bytes]) -> dict:
        if not images:
            raise ServingError("INVALID_ARGUMENT", "no images to send")
        if len(images) > contract.MAX_BATCH:
            raise ServingError("INVALID_ARGUMENT", f"{len(images)} images in one request; the limit is {contract.MAX_BATCH}")
        instances = [{contract.INPUT_BYTES: {"b64": base64.b64encode(image).decode("ascii")}} for image in images]
        return {"signature_name": contract.SIGNATURE_BYTES, "instances": instances}

    @staticmethod
    def parse_response(body: dict, count: int) -> list[dict]:
        predictions = body.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != count:
            raise ServingError("INTERNAL", f"unexpected response: expected {count} predictions, got {str(body)[:200]}")
        return [{"probability": float(p[contract.OUTPUT_PROBABILITY]), "label": p[contract.OUTPUT_LABEL]} for p in predictions]

    def predict(self, images: list[bytes]) -> list[dict]:
        body = self._call("post", f"{self.model_url}:predict", json=self.build_request(images))
        return self.parse_response(body, len(images))

    def status(self) -> list[dict]:
        """Every version the server knows, newest first: [{"version", "state", "error_code", "error_message"}]."""
        url = f"{self.base_url}/v1/models/{self.model_name}" + (f"/versions/{self.version}" if self.version else "")
        return parse_status(self._call("get", url))

    def metadata(self) -> dict:
        """{"name", "version", "signatures": {...}} of the version this client addresses (needs it loaded)."""
        return parse_metadata(self._call("get", f"{self.model_url}/metadata"))

    def wait_until_available(self, version: int, timeout: float, poll: float = 1.0) -> list[dict]:
        """Polls status until ``version`` is AVAILABLE; ServingError FAILED_PRECONDITION when its load ended
        with an error, DEADLINE_EXCEEDED when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:  # every version of the model, one attempt per poll: the loop is the retry
                status = parse_status(self._send("get", f"{self.base_url}/v1/models/{self.model_name}"))
            except ServingError as error:
                if error.code not in ("NOT_FOUND", "UNAVAILABLE"):
                    raise
                status = []
            entry = next((v for v in status if v["version"] == version), None)
            if entry and entry["state"] == "AVAILABLE":
                return status
            if entry and entry["state"] == "END" and entry["error_code"] != "OK":
                raise ServingError("FAILED_PRECONDITION", f"version {version} failed to load: {entry['error_code']}: "
                                                          f"{entry['error_message']}")
            if time.monotonic() >= deadline:
                seen = entry["state"] if entry else "not known to the server yet"
                raise ServingError("DEADLINE_EXCEEDED", f"version {version} is not AVAILABLE on {self.base_url} after "
                                                        f"{timeout:.0f}s (state: {seen})")
            time.sleep(poll)

    def _call(self, method: str, url: str, **kwargs) -> dict:
        return self.retry(lambda: self._send(method, url, **kwargs), f"TF Serving at {self.base_url}")

    def _send(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as error:
            raise ServingError("UNAVAILABLE", f"cannot reach TF Serving at {self.base_url} ({type(error).__name__}); "
                                              "is the server running and the URL right?") from None
        except requests.Timeout:
            raise ServingError("DEADLINE_EXCEEDED", f"no answer from {self.base_url} within {self.timeout}s") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200] or response.reason}
        if response.status_code != 200:
            code = HTTP_TO_CODE.get(response.status_code, "UNKNOWN")
            message = body.get("error", body) if isinstance(body, dict) else body
            raise ServingError(code, f"{message} (HTTP {response.status_code})")
        return body
