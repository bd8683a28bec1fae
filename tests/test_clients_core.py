"""What both clients share (clients/__init__.py): reading TF Serving's status and metadata answers, and telling a
bad image from a bad request. In-process and fast (`make mutate` runs them); over real transports against the
stand-in: test_serving_clients.py. The retry policy: test_retry.py."""

import pytest

from xray.clients import ServingError, parse_metadata, parse_status
from xray.serving import contract


def check_batch_bounds(predict, nothing_sent):
    """Both clients: an empty batch and one over contract.MAX_BATCH are INVALID_ARGUMENT before anything is sent
    (``nothing_sent()`` says so); a full batch goes."""
    for images, message in [([], "no images to send"),
                            ([b"x"] * (contract.MAX_BATCH + 1),
                             f"{contract.MAX_BATCH + 1} images in one request; the limit is {contract.MAX_BATCH}")]:
        with pytest.raises(ServingError) as caught:
            predict(images)
        assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", message)
    assert nothing_sent()
    assert len(predict([b"x"] * contract.MAX_BATCH)) == contract.MAX_BATCH

# GetModelStatus as TF Serving's REST API writes it (proto field names; the version as a string, int64 in JSON).
STATUS = {"model_version_status": [
    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    {"version": "3", "state": "LOADING", "status": {}},
    {"version": "2", "state": "END", "status": {"error_code": "NOT_FOUND", "error_message": "gone"}},
    {"version": "4"},
]}


def test_status_lists_every_version_newest_first_with_its_state_and_error():
    assert parse_status(STATUS) == [
        {"version": 4, "state": "UNKNOWN", "error_code": "OK", "error_message": ""},
        {"version": 3, "state": "LOADING", "error_code": "OK", "error_message": ""},
        {"version": 2, "state": "END", "error_code": "NOT_FOUND", "error_message": "gone"},
        {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
    assert parse_status({}) == []


@pytest.mark.parametrize("body", [{"model_version_status": [{"state": "AVAILABLE"}]},
                                  {"model_version_status": [{"version": "x"}]},
                                  {"model_version_status": [None]},
                                  {"model_version_status": [{"version": "1", "status": "OK"}]},
                                  {"model_version_status": ["x" * 300]}])
def test_a_malformed_status_answer_is_internal_with_the_body(body):
    with pytest.raises(ServingError) as caught:
        parse_status(body)
    assert caught.value.code == "INTERNAL" and caught.value.message == f"malformed status answer: {str(body)[:200]}"
    assert len(caught.value.message) <= len("malformed status answer: ") + 200  # a long body is cut


METADATA = {"model_spec": {"name": "xray", "signature_name": "", "version": "2"},
            "metadata": {"signature_def": {"signature_def": {
                "serving_default": {
                    "inputs": {"image_bytes": {"dtype": "DT_STRING", "tensor_shape": {
                        "dim": [{"size": "-1", "name": ""}], "unknown_rank": False}, "name": "x:0"}},
                    "outputs": {"probability": {"dtype": "DT_FLOAT", "tensor_shape": {
                        "dim": [{"size": "-1"}, {"size": "1"}], "unknown_rank": False}, "name": "y:0"}},
                    "method_name": "tensorflow/serving/predict"},
                "any_rank": {"inputs": {"t": {"dtype": "DT_FLOAT", "tensor_shape": {"unknown_rank": True}}},
                             "outputs": {"u": {"tensor_shape": {"dim": [{}]}}}}}}}}


def test_metadata_gives_each_signature_its_tensors_dtypes_and_shapes():
    assert parse_metadata(METADATA) == {"name": "xray", "version": 2, "signatures": {
        "serving_default": {"inputs": {"image_bytes": {"dtype": "DT_STRING", "shape": [-1]}},
                            "outputs": {"probability": {"dtype": "DT_FLOAT", "shape": [-1, 1]}},
                            "method_name": "tensorflow/serving/predict"},
        "any_rank": {"inputs": {"t": {"dtype": "DT_FLOAT", "shape": None}},
                     "outputs": {"u": {"dtype": "DT_INVALID", "shape": [-1]}}, "method_name": ""}}}
    unversioned = {**METADATA, "model_spec": {"name": "xray", "version": ""}}
    assert parse_metadata(unversioned)["version"] is None
    assert parse_metadata({**METADATA, "model_spec": {}}) == {**parse_metadata(METADATA), "name": "", "version": None}


def test_metadata_fields_left_out_read_as_empty():
    """TF Serving's JSON leaves out empty fields: a signature without inputs or outputs, a tensor without a shape,
    a shape without dimensions (a scalar)."""
    body = {"model_spec": {"name": "m", "version": "1"}, "metadata": {"signature_def": {"signature_def": {
        "bare": {},
        "scalar": {"inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {}}}, "outputs": {"y": {}}}}}}}
    assert parse_metadata(body)["signatures"] == {
        "bare": {"inputs": {}, "outputs": {}, "method_name": ""},
        "scalar": {"inputs": {"x": {"dtype": "DT_FLOAT", "shape": []}},
                   "outputs": {"y": {"dtype": "DT_INVALID", "shape": []}}, "method_name": ""}}


@pytest.mark.parametrize("body", [{}, {"model_spec": {}}, {"model_spec": [], "metadata": METADATA["metadata"]},
                                  {"model_spec": {}, "metadata": {"signature_def": {"signature_def": []}}}])
def test_a_malformed_metadata_answer_is_internal_with_the_body(body):
    with pytest.raises(ServingError) as caught:
        parse_metadata(body)
    assert caught.value.code == "INTERNAL" and caught.value.message == f"malformed metadata answer: {str(body)[:200]}"


@pytest.mark.parametrize("code, message, one_image", [
    ("INVALID_ARGUMENT", "Invalid JPEG data or crop window, data size 12", True),
    ("INVALID_ARGUMENT", "Unknown image file format. One of JPEG, PNG, GIF, BMP required.", True),
    ("INVALID_ARGUMENT", "assertion failed: [the image has more than 36 megapixels]", True),
    ("INVALID_ARGUMENT", "Error while reading resource: PNG decode failed", True),
    ("INVALID_ARGUMENT", "Unable to base64 decode: image_bytes", False),  # the request's encoding, not an image
    ("INVALID_ARGUMENT", "JSON Value not formatted correctly", False),
    ("INTERNAL", "Invalid JPEG data", False),  # a server fault whatever it says
])
def test_a_decode_failure_of_one_image_is_told_from_a_bad_request(code, message, one_image):
    assert ServingError(code, message).is_image_error is one_image


def test_a_serving_error_carries_its_code_message_and_attempts():
    error = ServingError("UNAVAILABLE", "connection refused", attempts=4)
    assert (error.code, error.message, error.attempts, str(error)) == (
        "UNAVAILABLE", "connection refused", 4, "UNAVAILABLE: connection refused")
    assert ServingError("NOT_FOUND", "x").attempts == 1
