"""`make predict`'s in-process model (xray.clients.predict.LocalModel) on a tiny SavedModel with the contract's signatures:
which version it takes, what it answers, and how it names a missing model or a bad image. Outside `make mutate`'s
selection: TensorFlow's thread pools do not survive the fork mutmut runs each mutant in (a forked child waits
forever on a pool thread that was not copied), so these run in ordinary pytest processes only. The exported model
itself through `make predict`: test_serving.py."""

from __future__ import annotations

import pytest

from xray.clients import ServingError
from xray.clients.predict import LocalModel
from xray.serving import contract
from test_predict_in_process import png


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A SavedModel with the contract's signatures (probability = mean byte / 255 of each input; a heatmap of its
    length), saved as versions 2 and 10 of one base path: small, fast, and answers that tell which version ran."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = tf.constant(offset)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, image_bytes):
            images = tf.map_fn(lambda b: tf.cast(tf.io.decode_png(b, channels=1), tf.float32), image_bytes,
                               fn_output_signature=tf.TensorSpec([None, None, 1], tf.float32))
            probability = tf.reduce_mean(images, axis=[1, 2, 3]) / 255.0 + self.offset
            label = tf.where(probability > 0.5, "PNEUMONIA", "NORMAL")
            return {contract.OUTPUT_PROBABILITY: probability, contract.OUTPUT_LABEL: label}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def explain(self, image_bytes):
            return {contract.OUTPUT_HEATMAP: tf.fill([tf.shape(image_bytes)[0], 4, 4], 0.5)}

    base = tmp_path_factory.mktemp("models")
    for version, offset in [(2, 0.0), (10, 0.25)]:
        model = Tiny(offset)
        tf.saved_model.save(model, str(base / str(version)), signatures={
            contract.SIGNATURE_BYTES: model.serve, contract.SIGNATURE_EXPLAIN: model.explain})
    (base / "notes").mkdir()
    return base


def test_a_local_model_takes_the_newest_version_by_number_and_answers_like_the_server(tiny_models, tmp_path):
    model = LocalModel(str(tiny_models) + "/")
    assert model.path == f"{tiny_models}/10"
    [answer] = model.predict([png(tmp_path / "gray.png", value=51)])
    assert answer["probability"] == pytest.approx(0.2 + 0.25) and answer["label"] == "NORMAL"
    assert LocalModel(str(tiny_models / "2")).predict([png(tmp_path / "g.png", value=204)])[0] == \
        {"probability": pytest.approx(0.8), "label": "PNEUMONIA"}
    assert model.explain(b"anything").tolist() == [[0.5] * 4] * 4


def test_a_local_model_names_what_is_missing_and_a_bad_image_is_invalid_argument(tiny_models, tmp_path):
    for path in [tmp_path, tmp_path / "nothing-here"]:
        with pytest.raises(ServingError) as caught:
            LocalModel(str(path))
        assert caught.value.code == "NOT_FOUND"
        assert caught.value.message == (f"no SavedModel at {path} (expected saved_model.pb or integer version "
                                        "directories)")
    with pytest.raises(ServingError) as caught:
        LocalModel(str(tiny_models)).predict([b"\x89PNG\r\n\x1a\n broken"])
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.is_image_error
    assert "\n" not in caught.value.message and "[[" not in caught.value.message
