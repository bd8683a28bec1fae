"""Warmup replay at load: servables/tensorflow/saved_model_warmup_util.cc (RunSavedModelWarmupUntracked) and
saved_model_warmup.cc (RunWarmupRequest).

A version with ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of PredictionLog) has every record
run once before it becomes AVAILABLE; the first record that fails fails the load with its status, at most
1000 records (kMaxNumRecords), a record that does not parse is INVALID_ARGUMENT, a file that cannot be read
is DATA_LOSS. Only predict_log records are replayed here (classify, regress, multi_inference and session_run
are not modelled: UNIMPLEMENTED).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfserving_stub.status import Status, grpc_code

Code = grpc.StatusCode
REQUESTS_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_NUM_RECORDS = 1000


def replay(path: Path, signature_defs, loaded) -> int:
    """Runs the version's warmup records against ``loaded``; returns how many ran; raises Status."""
    file = path / REQUESTS_FILE
    if not file.exists():
        return 0  # "No warmup data file found": warmup is optional
    try:
        records = [record.numpy() for record in tf.data.TFRecordDataset(str(file))]
    except tf.errors.OpError as error:
        raise Status(Code.DATA_LOSS, f"Failed to read warmup record from {file}: {error.message}") from None
    for count, record in enumerate(records, 1):
        if count > MAX_NUM_RECORDS:
            raise Status(Code.INVALID_ARGUMENT,
                         f"Number of warmup records exceeds the maximum ({MAX_NUM_RECORDS}) at {file}")
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise Status(Code.INVALID_ARGUMENT, f"Failed to parse warmup record: {record[:60]!r} from {file}") from None
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            raise Status(Code.UNIMPLEMENTED, f"the stand-in replays predict_log warmup records only, not {kind}")
        _predict(log.predict_log.request, signature_defs, loaded)
    return len(records)


def _predict(request, signature_defs, loaded) -> None:
    name = request.model_spec.signature_name or "serving_default"
    if name not in signature_defs:
        raise Status(Code.FAILED_PRECONDITION, f"Serving signature key \"{name}\" not found.")
    expected, sent = set(signature_defs[name].inputs), set(request.inputs)
    if expected != sent:
        raise Status(Code.INVALID_ARGUMENT, f"input size does not match signature: {len(sent)}!={len(expected)} "
                                            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}})")
    function = loaded.signatures[name]
    specs = function.structured_input_signature[1]
    try:
        function(**{key: tf.constant(tf.make_ndarray(value), dtype=specs[key].dtype)
                    for key, value in request.inputs.items()})
    except tf.errors.OpError as error:
        raise Status(grpc_code(error), error.message) from None
    except (TypeError, ValueError) as error:
        raise Status(Code.INVALID_ARGUMENT, str(error).splitlines()[0]) from None
