"""TF Serving REST client. Needs only `requests`: importing it does not import TensorFlow.

    client = RestClient("http://localhost:8501")
    client.predict([open("chest.jpeg", "rb").read()])  # -> [{"probability": 0.93, "label": "PNEUMONIA"}]

Routes (TF Serving's REST API): POST /v1/models/<name>[/versions/<n>|/labels/<label>]:predict with
``{"signature_name": ..., "instances": [{"image_bytes": {"b64": ...}}]}``; GET /v1/models/<name> for
status; GET .../metadata for the signatures.
"""

from __future__ import annotations

import base64

import requests

from clients import ServingError
from serving import contract

HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
              429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


class RestClient:
    def __init__(self, base_url: str, model_name: str = contract.MODEL_NAME, version: int | None = None,
                 label: str | None = None, timeout: float = 30.0, session: requests.Session | None = None):
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        self.base_url = base_url.rstrip("/")
        self.model_name, self.version, self.label = model_name, version, label
        self.timeout = timeout
        self.session = session or requests.Session()

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

    def status(self) -> dict:
        url = f"{self.base_url}/v1/models/{self.model_name}" + (f"/versions/{self.version}" if self.version else "")
        return self._call("get", url)

    def metadata(self) -> dict:
        return self._call("get", f"{self.model_url}/metadata")

    def _call(self, method: str, url: str, **kwargs) -> dict:
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
            body = {"error": response.text[:200]}
        if response.status_code != 200:
            code = HTTP_CODES.get(response.status_code, f"HTTP_{response.status_code}")
            raise ServingError(code, str(body.get("error", body)))
        return body
