"""The REST API: model_servers/http_server.cc, http_rest_api_handler.cc and http_rest_api_util.cc."""

from __future__ import annotations

import json
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from tfserving_stub.json_tensor import _debug, parse_json, request_tensors, response_json
from tfserving_stub.status import HTTP_STATUS, Status

if TYPE_CHECKING:  # the server holds these services; only its type is needed here
    from tfserving_stub.server import StubModelServer


Code = grpc.StatusCode


# http_rest_api_util.cc: the two route patterns, case-insensitive, matched against the whole path; and
# http_rest_api_util.h: only paths under /v1/ reach the handler (others get the HTTP server's own 404).
PREDICTION_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                             re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                         re.IGNORECASE)
HANDLER_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
INT64_MAX = 2**63 - 1


def rest_handler(server: "StubModelServer"):
    core = server.core

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: str | None):
            data = body.encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = urllib.parse.urlsplit(self.path).path
            if not HANDLER_PATH.fullmatch(path):
                self._reply(404, None)  # http_server.cc: not dispatched; the HTTP server's own 404
                return
            try:
                server.fault("rest")
                if self.command == "OPTIONS":
                    # http_server.cc: a preflight never reaches the handler, so nothing writes a body, not even
                    # for the refusal (FAILED_PRECONDITION, 400, empty).
                    refused = not re.search(r"https?://", self.headers.get("Origin", ""))
                    self._reply(400 if refused else 200, None)
                    return
                output = self.process(self.command, path, body)
            except Status as error:
                self._reply(HTTP_STATUS.get(error.code, 500), json.dumps({"error": error.message}, indent=4))
                return
            self._reply(200, output)

        def process(self, method: str, path: str, body: bytes) -> str:
            """HttpRestApiHandler::ProcessRequest."""
            malformed = Status(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
            pattern = PREDICTION_PATH if method == "POST" else STATUS_PATH if method == "GET" else None
            match = pattern.fullmatch(path) if pattern else None
            if match is None:
                raise malformed
            name = urllib.parse.unquote(match[1] or "")
            version = None
            if match[2]:
                version = int(match[2])
                if version > INT64_MAX:
                    raise Status(Code.INVALID_ARGUMENT, f"Failed to convert version: {match[2]} to numeric.")
            label = urllib.parse.unquote(match[3]) if match[3] else None
            if method == "POST":
                if match[4].lower() != "predict":
                    raise Status(Code.UNIMPLEMENTED, f"{match[4]} is not modelled by the stand-in")
                return self.predict(name, version, label, body)
            if not name:
                raise Status(Code.INVALID_ARGUMENT, "Missing model name in request.")
            if match[4]:
                response = core.metadata(name, version, label, ["signature_def"])
                return metadata_json(response)
            response = core.status(name, version)
            return json.dumps(json_format.MessageToDict(response, always_print_fields_with_no_presence=True), indent=1)

        def predict(self, name, version, label, body: bytes) -> str:
            document = parse_json(body)
            signature = document.get("signature_name", "")
            if "signature_name" in document and not isinstance(signature, str):
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} not formatted correctly. "
                                                    "'signature_name' key must be a string value.")
            _, loaded = core.resolve(name, version, label)  # GetInfoMap
            key = signature or "serving_default"
            if key not in loaded.signature_defs:
                raise Status(Code.INVALID_ARGUMENT, f"Serving signature name: \"{key}\" not found in signature def")
            tensors, form = request_tensors(document, loaded.signature_defs[key].inputs)
            _, _, outputs = server.predictor.predict(name, version, label, signature, tensors)
            return json.dumps(response_json(outputs, form), indent=4)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _handle

    return Handler


def metadata_json(response) -> str:
    """ToJsonString(GetModelMetadataResponse): proto field names, the SignatureDefMap unpacked from its Any."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return json.dumps({"model_spec": json_format.MessageToDict(response.model_spec, **options),
                       "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}}, indent=1)
