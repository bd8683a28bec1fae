"""Clients for the model behind TF Serving: REST (requests only, no TensorFlow), gRPC, and the `xray predict` logic.

Every name they send comes from xray.serving.contract. Both clients raise ServingError with a gRPC status name
as ``code``, parse status and metadata into the same plain dicts, and retry the same codes the same way,
so a caller sees one outcome whichever transport it uses.
"""

from __future__ import annotations

import random
import time

# TF Serving's REST server maps status codes to HTTP (tensorflow_serving/model_servers/http_server.cc,
# ToHTTPStatusCode); read back, several codes share one HTTP status and the first name is given. 502 is a proxy's.
HTTP_TO_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

# Worth sending again after a pause: a restarting or overloaded server, a full batching queue, a slow answer.
# Predict has no side effects, so a retry after DEADLINE_EXCEEDED cannot do harm.
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})

# What a decode failure of one image says (TensorFlow's image decoders, run inside the serving signature).
DECODE_MARKERS = ("decode", "jpeg", "png", "gif", "bmp", "image file format", "image data", "megapixels")  # last: xray.data.pixels size bound


class ServingError(Exception):
    """A request the server (or the client, before sending) rejected: ``code`` is a gRPC status name."""

    def __init__(self, code: str, message: str, attempts: int = 1):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.attempts = attempts

    @property
    def is_image_error(self) -> bool:
        """True when the server could not decode an image: the fault of one file, not of the request or server."""
        text = self.message.lower()
        return self.code == "INVALID_ARGUMENT" and any(marker in text for marker in DECODE_MARKERS) \
            and "base64" not in text


class Retry:
    """Exponential backoff with full jitter on RETRYABLE codes; every other code is raised at once."""

    def __init__(self, retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0, sleep=time.sleep):
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries ({retries}) and backoff ({backoff}) must be >= 0")
        self.retries, self.backoff, self.max_backoff, self.sleep = retries, backoff, max_backoff, sleep

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def __call__(self, send, describe: str = "TF Serving"):
        attempt = 0
        while True:
            try:
                return send()
            except ServingError as error:
                if error.code not in RETRYABLE:
                    raise
                if attempt == self.retries:
                    raise ServingError(error.code, f"{error.message} (gave up after {attempt + 1} attempt(s) to "
                                                   f"{describe})", attempts=attempt + 1) from None
            self.sleep(self.delay(attempt))
            attempt += 1


def parse_status(body: dict) -> list[dict]:
    """GetModelStatusResponse as JSON (REST, or gRPC converted): one dict per version, newest first.

    TF Serving lists every version it knows with its state (START, LOADING, AVAILABLE, UNLOADING, END) and the
    load's status; a 200 answer says nothing about whether any version can answer: read ``state``.
    """
    versions = []
    try:
        for entry in body.get("model_version_status", []):
            status = entry.get("status") or {}
            versions.append({"version": int(entry["version"]), "state": entry.get("state", "UNKNOWN"),
                             "error_code": status.get("error_code", "OK"),
                             "error_message": status.get("error_message", "")})
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ServingError("INTERNAL", f"malformed status answer: {str(body)[:200]}") from None
    return sorted(versions, key=lambda v: -v["version"])


def parse_metadata(body: dict) -> dict:
    """GetModelMetadataResponse as TF Serving's REST API writes it (proto field names, signature_def inside
    signature_def) into {"name", "version", "signatures": {name: {"inputs"|"outputs": {key: {"dtype", "shape"}}}}}."""
    try:
        spec = body["model_spec"]
        signature_defs = body["metadata"]["signature_def"]["signature_def"]
        if not isinstance(spec, dict) or not isinstance(signature_defs, dict):
            raise TypeError
    except (KeyError, TypeError):
        raise ServingError("INTERNAL", f"malformed metadata answer: {str(body)[:200]}") from None

    def tensors(infos: dict) -> dict:
        out = {}
        for key, info in infos.items():
            shape = info.get("tensor_shape", {})
            dims = None if shape.get("unknown_rank") else [int(d.get("size", -1)) for d in shape.get("dim", [])]
            out[key] = {"dtype": info.get("dtype", "DT_INVALID"), "shape": dims}
        return out

    signatures = {name: {"inputs": tensors(sig.get("inputs", {})), "outputs": tensors(sig.get("outputs", {})),
                         "method_name": sig.get("method_name", "")} for name, sig in signature_defs.items()}
    version = spec.get("version")
    return {"name": spec.get("name", ""), "version": int(version) if version not in (None, "") else None,
            "signatures": signatures}
