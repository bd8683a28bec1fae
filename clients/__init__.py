"""Clients for the model behind TF Serving: REST (requests only, no TensorFlow), gRPC, and the `xray predict` logic.

Every name they send comes from serving.contract.
"""


class ServingError(Exception):
    """A request the server (or the client, before sending) rejected: ``code`` is a gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
