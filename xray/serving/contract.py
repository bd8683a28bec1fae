"""The serving contract: every name a client and the exported model must agree on. No TensorFlow here.

Clients import this module only; the export writes exactly these names into the SavedModel.
"""

from xray.data.schema import CLASS_NAMES  # noqa: F401 - defined once; xray.data.schema loads no TensorFlow

MODEL_NAME = "xray"
GRPC_PORT = 8500
REST_PORT = 8501

# serving_default: encoded JPEG/PNG bytes in (REST clients send {"b64": ...}), decoded inside the graph
# by the same function the training reader uses.
SIGNATURE_BYTES = "serving_default"
INPUT_BYTES = "image_bytes"
# predict_tensor: already preprocessed float32 images [batch, size, size, 3] in [-1, 1].
SIGNATURE_TENSOR = "predict_tensor"
INPUT_TENSOR = "image"
# explain: image_bytes -> probability and a Grad-CAM heatmap [batch, size, size] in [0, 1].
SIGNATURE_EXPLAIN = "explain"
OUTPUT_HEATMAP = "heatmap"

OUTPUT_PROBABILITY = "probability"  # float32 [batch]: P(pneumonia)
OUTPUT_LABEL = "label"  # string [batch]: one of CLASS_NAMES (xray.data.schema), by the threshold chosen in evaluation

# Requests larger than this are refused by the clients before sending (the server's batching and
# gRPC message limits are sized for it).
MAX_BATCH = 64
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # gRPC send/receive limit (the Python default receive limit is 4 MB)

VERSION_LABELS = ("stable", "canary")
MODEL_CARD = "assets.extra/model.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
