"""Status codes and messages as TF Serving returns them: model_servers/http_server.cc (ToHTTPStatusCode) and
model_servers/grpc_status_util.cc (ToGRPCStatus)."""

from __future__ import annotations


import grpc


Code = grpc.StatusCode


class Status(Exception):
    """An error status as TF Serving returns it: a gRPC code and TF Serving's own message text."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# http_server.cc, ToHTTPStatusCode.


HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}


def grpc_code(error) -> grpc.StatusCode:
    """The gRPC code of a TensorFlow error (tf.errors.OpError.error_code): the same numbers (error_codes.proto)."""
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return Code.UNKNOWN
