"""TEST SUPPORT ONLY, never shipped: a conformance model of ``tensorflow_model_server``.

The TF Serving binary cannot run on the build machines, so the clients, the export/label flow and the
probes are tested against this. It is written from TF Serving's own source (tensorflow/serving at
9d981c5c), not from what our clients expect: every behaviour below names the file it follows, and
docs/tfserving-conformance.md lists them with the test that checks each one. Where this model and the
real server could disagree, the real server is right: run the shared client suite against it
(XRAY_TFSERVING_URL / XRAY_TFSERVING_GRPC, see tests/test_serving_clients.py).

One module per TF Serving concern, each beside the upstream files it follows (their docstrings name them):

    status.py         status codes, HTTP mapping, gRPC message truncation   http_server.cc, grpc_status_util.cc
    warmup.py         warmup records replayed at load                        saved_model_warmup_util.cc
    options.py        the flags it honours, their types and defaults         main.cc, server.h
    server_core.py    config, versions, labels, loads, retries, unloads      server_core.cc, basic_manager.cc,
                      the wait before the ports open                         loader_harness.cc,
                                                                             availability_preserving_policy.cc,
                                                                             load_servables_fast.cc,
                                                                             file_system_storage_path_source.cc
    predict.py        Predict and --enable_batching                          predict_util.cc, batching_session.cc
    json_tensor.py    request JSON -> tensors -> response JSON               util/json_tensor.cc
    grpc_services.py  PredictionService, ModelService (incl. ReloadConfig)   prediction_service_impl.cc,
                                                                             model_service_impl.cc
    http_rest.py      routes, handler, error bodies                          http_rest_api_handler.cc,
                                                                             http_rest_api_util.cc
    server.py         the process: load, then bind; poll the config          server.cc, main.cc

Not modelled (say so before relying on them): classify/regress, Prometheus metrics, request logging,
TFLite/TFRT, resource estimation (RESOURCE_EXHAUSTED on load), non-predict warmup records, the exact decimal formatting
of floats in REST responses, and gRPC channel arguments. docs/tfserving-conformance.md has the full list.
"""

from tfserving_stub.grpc_services import ERROR_MESSAGE_LIMIT  # noqa: F401
from tfserving_stub.http_rest import HANDLER_PATH, PREDICTION_PATH, STATUS_PATH, metadata_json  # noqa: F401
from tfserving_stub.json_tensor import parse_json, request_tensors, response_json  # noqa: F401
from tfserving_stub.options import Options  # noqa: F401
from tfserving_stub.predict import Predictor, as_proto_field  # noqa: F401
from tfserving_stub.server import StubModelServer, deployment_args, deployment_server, main  # noqa: F401
from tfserving_stub.server_core import LoadedVersion, ModelState, ServerCore, VersionState  # noqa: F401
from tfserving_stub.status import HTTP_STATUS, Status  # noqa: F401
