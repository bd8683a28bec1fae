"""JSON <-> tensors: util/json_tensor.cc (FillPredictRequestFromJson, MakeJsonFromTensors)."""

from __future__ import annotations

import base64
import binascii
import json

import grpc
import numpy as np
import tensorflow as tf

from tfserving_stub.predict import _dtype_name
from tfserving_stub.status import Status


Code = grpc.StatusCode


def _debug(value) -> str:
    """JsonValueToDebugString: compact JSON, cut at 256 bytes."""
    return json.dumps(value, separators=(",", ":"))[:256]


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def parse_json(body: bytes) -> dict:
    """ParseJson: empty, syntax errors (rapidjson's words for the common ones), non-object documents."""
    if not body:
        raise Status(Code.INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    text = body.decode("utf-8", errors="replace")
    try:
        # kParseStopWhenDoneFlag: what follows the first complete value is ignored; NaN/Infinity are accepted.
        document, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError as error:
        words = {"Expecting value": "Invalid value.",
                 "Expecting property name enclosed in double quotes": "Missing a name for object member.",
                 "Expecting ':' delimiter": "Missing a colon after a name of object member.",
                 "Expecting ',' delimiter": "Missing a comma or ']' after an array element.",
                 "Unterminated string starting at": "Missing a closing quotation mark in string."}
        raise Status(Code.INVALID_ARGUMENT,
                     f"JSON Parse error: {words.get(error.msg, error.msg)} at offset: {error.pos}") from None
    if not isinstance(document, dict):
        raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Is not object")
    return document


def _dense_shape(value) -> list[int]:
    """GetDenseTensorShape: sizes along the first element at every level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _fill(value, level: int, shape: list[int], dtype: str, out: list) -> None:
    """FillTensorProto."""
    if not isinstance(value, list):
        if level != len(shape):
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} "
                                                f"in the JSON DOM. Expected at level: {len(shape)}")
        if isinstance(value, dict):
            if dtype != "string":
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} Type: Object is not of expected type: {dtype}")
            if not _is_b64(value):
                raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
            try:  # absl::Base64Unescape: the padding may be left out
                text = value["b64"]
                out.append(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
            except (binascii.Error, ValueError):
                raise Status(Code.INVALID_ARGUMENT, "Unable to base64 decode") from None
            return
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise Status(Code.INVALID_ARGUMENT, f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise Status(Code.INVALID_ARGUMENT, f"Encountered list at unexpected size: {len(value)} at level: {level} "
                                            f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _scalar(value, dtype: str):
    """AddValueToTensor: JSON numbers for float/double, integers for int types, strings, booleans."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    is_int = isinstance(value, int) and not isinstance(value, bool)

    def fits(low: int, high: int) -> bool:  # rapidjson's IsInt / IsInt64 / IsUint / IsUint64
        return is_int and low <= value < high

    int32 = fits(-2**31, 2**31)
    ok = {"float": is_number, "double": is_number, "int32": int32, "int16": int32, "int8": int32, "uint8": int32,
          "int64": fits(-2**63, 2**63), "string": isinstance(value, str), "bool": isinstance(value, bool),
          "uint32": fits(0, 2**32), "uint64": fits(0, 2**64)}
    if dtype not in ok:
        raise Status(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_debug(value)} to type: {dtype}")
    if not ok[dtype]:
        raise Status(Code.INVALID_ARGUMENT,
                     f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {dtype}")
    return value.encode() if dtype == "string" else value


def _tensor(value, dtype: str) -> np.ndarray:
    shape = _dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    np_dtype = object if dtype == "string" else tf.dtypes.as_dtype({"float": "float32", "double": "float64"}
                                                                   .get(dtype, dtype)).as_numpy_dtype
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(n) for n in shape) + "]"


def request_tensors(document: dict, inputs_info) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson after the signature is known: returns the tensors and "row"/"columnar"."""
    dtypes = {name: _dtype_name(info.dtype) for name, info in inputs_info.items()}
    if not dtypes:
        raise Status(Code.INVALID_ARGUMENT, "Failed to get input map for signature: DEFAULT")
    instances, inputs = document.get("instances"), document.get("inputs")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Not formatted correctly expecting only one "
                                            "of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        if not isinstance(instances, list):
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise Status(Code.INVALID_ARGUMENT, f"JSON Value: {_debug(document)} No values in 'instances' array")
        return _from_instances(instances, dtypes), "row"
    if has_inputs:
        return _from_inputs(inputs, dtypes), "columnar"
    raise Status(Code.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")


def _from_instances(instances: list, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList."""
    is_object = lambda v: isinstance(v, dict) and not _is_b64(v)  # noqa: E731
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise Status(Code.INVALID_ARGUMENT, "instances is a plain list, but expecting list of objects as multiple input "
                                            "tensors required as per tensorinfo_map")
    objects = is_object(instances[0])
    columns: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}

    def add(item, name: str):
        if name not in dtypes:
            raise Status(Code.INVALID_ARGUMENT, f"JSON object: does not have named input: {name}")
        tensor = _tensor(item, dtypes[name])
        if name in shapes and tensor.size != int(np.prod(shapes[name])):
            raise Status(Code.INVALID_ARGUMENT, f"Expecting tensor size: {int(np.prod(shapes[name]))} but got: {tensor.size}")
        if name in shapes and list(tensor.shape) != shapes[name]:
            raise Status(Code.INVALID_ARGUMENT, f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(tensor.shape)}")
        shapes[name] = list(tensor.shape)
        columns.setdefault(name, []).append(tensor)

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise Status(Code.INVALID_ARGUMENT, f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except Status as error:
                    raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} key: {name} of 'instances' "
                                                        f"list. Error: {error.code.name}: {error.message}") from None
            if set(element) != set(dtypes):
                raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} of 'instances' list. JSON object: "
                                                    f"{_debug(element)} keys must be equal to: {','.join(sorted(dtypes))}")
        else:
            if is_object(element):
                raise Status(Code.INVALID_ARGUMENT, f"Expecting value/list but got object at item {index} of input list")
            name = sorted(dtypes)[0]
            try:
                add(element, name)
            except Status as error:
                raise Status(Code.INVALID_ARGUMENT, f"Failed to process element: {index} of 'instances' list. "
                                                    f"Error: {error.code.name}: {error.message}") from None
    return {name: np.stack(values) for name, values in columns.items()}


def _from_inputs(inputs, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(dtypes) > 1:
            raise Status(Code.INVALID_ARGUMENT, "inputs is a plain value/list, but expecting an object as multiple input "
                                                "tensors required as per tensorinfo_map")
        name = sorted(dtypes)[0]
        return {name: _tensor(inputs, dtypes[name])}
    tensors = {}
    for name in sorted(dtypes):
        if name not in inputs:
            raise Status(Code.INVALID_ARGUMENT, f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(inputs[name], dtypes[name])
    return tensors


def _json_values(array, as_b64: bool):
    array = np.asarray(array)
    if array.dtype.kind in "SO":
        flat = [base64.b64encode(v).decode() if as_b64 else v.decode("utf-8", errors="replace") for v in array.reshape(-1)]
        flat = [{"b64": v} for v in flat] if as_b64 else flat
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def response_json(outputs: dict[str, np.ndarray], form: str) -> dict:
    """MakeJsonFromTensors: "predictions" (one entry per batch item) or "outputs"; *_bytes strings as b64."""
    if not outputs:
        raise Status(Code.INVALID_ARGUMENT, "Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if form == "columnar":
        values = {name: _json_values(outputs[name], name.endswith("_bytes")) for name in names}
        return {"outputs": values if len(names) > 1 else values[names[0]]}
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise Status(Code.INVALID_ARGUMENT, f"Tensor name: {name} has no shape information ")
        if batch is not None and outputs[name].shape[0] != batch:
            raise Status(Code.INVALID_ARGUMENT, f"Tensor name: {name} has inconsistent batch size: "
                                                f"{outputs[name].shape[0]} expecting: {batch}")
        batch = outputs[name].shape[0]
    rows = []
    for i in range(batch):
        row = {name: _json_values(outputs[name][i], name.endswith("_bytes")) for name in names}
        rows.append(row if len(names) > 1 else row[names[0]])
    return {"predictions": rows}
