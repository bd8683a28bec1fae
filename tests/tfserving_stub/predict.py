"""Predict: servables/tensorflow/predict_util.cc, and batching/batching_session.cc under --enable_batching."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tfserving_stub.server_core import ServerCore
from tfserving_stub.status import Status, grpc_code


Code = grpc.StatusCode


def _dtype_name(dtype) -> str:
    """DataTypeString: "float", "double", "int32", "string", ..."""
    name = tf.dtypes.as_dtype(dtype).name
    return {"float32": "float", "float64": "double"}.get(name, name)


class Predictor:
    """predict_util.cc RunPredict, through a batching queue when --enable_batching (batching_session.cc)."""

    def __init__(self, core: ServerCore):
        self.core = core
        self.options = core.options
        self.queue: list[dict] = []
        self.cv = threading.Condition()
        self.run_lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run, for tests of the merging
        if self.options.enable_batching:
            threading.Thread(target=self._batch_loop, daemon=True).start()

    def predict(self, name, version, label, signature_name: str, inputs: dict[str, np.ndarray]):
        resolved, loaded = self.core.resolve(name, version, label)
        signature_name = signature_name or "serving_default"
        if signature_name not in loaded.signature_defs:
            raise Status(Code.FAILED_PRECONDITION, f"Serving signature key \"{signature_name}\" not found.")
        signature = loaded.signature_defs[signature_name]
        expected = set(signature.inputs)
        sent = set(inputs)
        if len(sent) != len(expected):
            raise Status(Code.INVALID_ARGUMENT,
                         f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
                         f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                         f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        for key in sorted(sent):
            if key not in expected:
                raise Status(Code.INVALID_ARGUMENT, f"input tensor alias not found in signature: {key}. Inputs expected "
                                                    f"to be in the set {{{','.join(sorted(expected))}}}.")
        for index, key in enumerate(sorted(sent)):
            want = _dtype_name(signature.inputs[key].dtype)
            have = "string" if inputs[key].dtype.kind in "SOU" else _dtype_name(inputs[key].dtype)
            if want != have:  # the session's own check (tensorflow/core/common_runtime/executor)
                raise Status(Code.INVALID_ARGUMENT, f"Expects arg[{index}] to be {want} but {have} is provided")
        function = loaded.loaded.signatures[signature_name]
        if not self.options.enable_batching:
            return resolved, signature_name, self._run(function, inputs)
        size = len(next(iter(inputs.values())))
        if size > self.options.max_batch_size:
            raise Status(Code.INVALID_ARGUMENT,
                         f"Task size {size} is larger than maximum input batch size {self.options.max_batch_size}")
        task = {"key": (name, resolved, signature_name), "function": function, "inputs": inputs, "size": size,
                "done": threading.Event(), "result": None, "error": None}
        with self.cv:
            self.queue.append(task)
            self.cv.notify_all()
        task["done"].wait()
        if task["error"] is not None:
            raise task["error"]
        return resolved, signature_name, task["result"]

    def _run(self, function, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = function.structured_input_signature[1]
        tensors = {key: tf.constant(value, dtype=specs[key].dtype) for key, value in inputs.items()}
        try:
            with self.run_lock:
                outputs = function(**tensors)
        except tf.errors.OpError as error:
            # The session's status goes back as it is: code and message (http_server.cc/grpc_status_util.cc).
            raise Status(grpc_code(error), error.message) from None
        return {key: value.numpy() for key, value in outputs.items()}

    def _batch_loop(self):
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
                first = self.queue[0]
                deadline = time.monotonic() + self.options.batch_timeout_s
                while True:
                    same = [t for t in self.queue if t["key"] == first["key"]]
                    total = sum(t["size"] for t in same)
                    remaining = deadline - time.monotonic()
                    if total >= self.options.max_batch_size or remaining <= 0:
                        break
                    self.cv.wait(remaining)
                batch, size = [], 0
                for task in [t for t in self.queue if t["key"] == first["key"]]:
                    if size + task["size"] > self.options.max_batch_size:
                        break
                    batch.append(task)
                    size += task["size"]
                for task in batch:
                    self.queue.remove(task)
            self.batches.append(size)
            merged = {key: np.concatenate([t["inputs"][key] for t in batch]) for key in first["inputs"]}
            try:
                outputs = self._run(first["function"], merged)
            except Status as error:
                for task in batch:  # one failed run fails every task merged into it
                    task["error"] = error
                    task["done"].set()
                continue
            offset = 0
            for task in batch:
                task["result"] = {key: value[offset:offset + task["size"]] for key, value in outputs.items()}
                offset += task["size"]
                task["done"].set()


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: values in the typed repeated field (float_val, string_val, ...), no tensor_content."""
    proto = tensor_pb2.TensorProto(tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape]))
    flat = array.reshape(-1)
    if array.dtype.kind in "SO":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
        return proto
    fields = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int64): "int64_val",
              np.dtype(np.bool_): "bool_val"}
    proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    field = fields.get(array.dtype, "int_val")  # int32, int16, int8, uint8 travel in int_val
    getattr(proto, field).extend((flat if field != "int_val" else flat.astype(np.int64)).tolist())
    return proto
