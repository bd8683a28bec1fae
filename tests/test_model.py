import dataclasses

import numpy as np
import pytest

from xray.trainer.config import ConfigError, TrainConfig, preset
from xray.trainer.kerasapi import keras
from xray.trainer.model import build_model, compile_model

SMALL = dataclasses.replace(preset("team").model, image_size=32, weights="none")


def _backbone(model):
    return model.get_layer("resnet50v2")


@pytest.mark.parametrize("pooling, pool_layer", [("flatten", keras.layers.Flatten), ("avg", keras.layers.GlobalAveragePooling2D)])
def test_head_is_the_documented_design(pooling, pool_layer):
    model = build_model(dataclasses.replace(SMALL, pooling=pooling))
    head = model.layers[2:]
    assert [type(layer) for layer in head] == [pool_layer, keras.layers.Dense, keras.layers.Dropout,
                                                keras.layers.Dense, keras.layers.Dropout, keras.layers.Dense]
    dense1, dropout1, dense2, dropout2, out = head[1:]
    assert dense1.units == 256 and dense1.activation is keras.activations.relu
    assert dense1.kernel_regularizer.get_config()["l2"] == pytest.approx(1e-4)
    assert dropout1.rate == 0.3 and dropout2.rate == 0.2
    assert dense2.units == 128 and dense2.kernel_regularizer is None
    assert out.units == 1 and out.activation is keras.activations.sigmoid and out.dtype == "float32"
    assert model.output_shape == (None, 1) and model.input_shape == (None, 32, 32, 3)
    flat_size = 2048 if pooling == "avg" else 1 * 1 * 2048
    assert dense1.kernel.shape == (flat_size, 256)


def test_backbone_is_frozen_except_last_ten_non_batchnorm_layers():
    backbone = _backbone(build_model(SMALL))
    layers = backbone.layers
    assert all(not layer.trainable for layer in layers[:-10])
    for layer in layers[-10:]:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable == (not is_bn), layer.name
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers[-10:])
    # Only conv/dense kernels of the top layers train: far fewer weights than the whole backbone.
    trainable = sum(np.prod(w.shape) for w in backbone.trainable_weights)
    assert 0 < trainable < 0.3 * sum(np.prod(w.shape) for w in backbone.weights)


def test_all_layers_and_trainable_batchnorm_for_training_from_scratch():
    backbone = _backbone(build_model(dataclasses.replace(SMALL, trainable_layers="all", train_batchnorm=True)))
    assert all(layer.trainable for layer in backbone.layers)
    frozen_bn = _backbone(build_model(dataclasses.replace(SMALL, trainable_layers="all")))
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in frozen_bn.layers)


def test_zero_trainable_layers_freezes_the_backbone():
    backbone = _backbone(build_model(dataclasses.replace(SMALL, trainable_layers="0")))
    assert not backbone.trainable_weights


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        build_model(dataclasses.replace(SMALL, weights=str(tmp_path / "nope.h5")))


def test_weights_file_path_is_loaded(tmp_path):
    source = build_model(SMALL)
    path = str(tmp_path / "backbone.h5")
    _backbone(source).save_weights(path)
    loaded = build_model(dataclasses.replace(SMALL, weights=path))
    for a, b in zip(_backbone(source).weights, _backbone(loaded).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_imagenet_weights_are_found_on_the_weights_path_without_a_download(tmp_path, monkeypatch):
    """What the cluster's pods do (XRAY_WEIGHTS_PATH=/mnt/xray/weights:/opt/xray/weights): the first folder that holds
    the file Keras would download is used; nothing is fetched (this machine has no internet: a download fails)."""
    from xray.trainer.config import IMAGENET_WEIGHTS_FILE

    source = build_model(SMALL)
    (tmp_path / "volume").mkdir()
    _backbone(source).save_weights(str(tmp_path / "volume" / IMAGENET_WEIGHTS_FILE))
    monkeypatch.setenv("XRAY_WEIGHTS_PATH", f"{tmp_path / 'empty'}:{tmp_path / 'volume'}")
    loaded = build_model(dataclasses.replace(SMALL, weights="imagenet"))
    for a, b in zip(_backbone(source).weights, _backbone(loaded).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_compiled_with_adam_cosine_restarts_and_bce():
    model = compile_model(build_model(SMALL), TrainConfig())
    schedule = model.optimizer.get_config()["learning_rate"]
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert schedule["class_name"] == "CosineDecayRestarts"
    assert schedule["config"] | {"name": None} == {"initial_learning_rate": 1e-4, "first_decay_steps": 5000,
                                                       "t_mul": 2.0, "m_mul": 0.8, "alpha": 1e-6, "name": None}
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    x = np.zeros((2, 32, 32, 3), np.float32)
    logs = model.train_on_batch(x, np.array([[0.0], [1.0]]), return_dict=True)
    assert {"loss", "accuracy", "auc", "precision", "recall"} <= set(logs)


def test_model_module_has_no_device_or_distribution_code():
    import inspect

    import xray.trainer.model

    source = inspect.getsource(xray.trainer.model)
    for word in ("strategy", "tf.distribute", "TF_CONFIG", "device(", "worker"):
        assert word not in source, word


def test_mixed_precision_keeps_the_sigmoid_in_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = compile_model(build_model(SMALL), TrainConfig())
        assert model.get_layer("dense1").compute_dtype == "bfloat16"
        assert model.get_layer("probability").compute_dtype == "float32"
        assert model.output.dtype == "float32"
        logs = model.train_on_batch(np.zeros((2, 32, 32, 3), np.float32), np.array([[0.0], [1.0]]), return_dict=True)
        assert np.isfinite(logs["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_xla_switch_reaches_compile():
    assert compile_model(build_model(SMALL), TrainConfig(), jit_compile=True).jit_compile is True
    assert compile_model(build_model(SMALL), TrainConfig()).jit_compile is False


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "mirrored"])
def test_fused_adam_matches_keras_adam(distributed):
    """The fused kernel does Keras' Adam arithmetic: same weights and slots after steps with a decaying rate."""
    import tensorflow as tf

    from xray.trainer.model import FusedAdam

    rng = np.random.default_rng(0)
    shapes = [(300, 17), (3, 3, 4, 5), (17,)]
    start = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) * 10 ** -k for s in shapes] for k in range(6)]

    def run(optimizer_class):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if distributed else tf.distribute.get_strategy()
        with strategy.scope():
            variables = [tf.Variable(w) for w in start]
            schedule = keras.optimizers.schedules.CosineDecayRestarts(1e-2, first_decay_steps=3)
            optimizer = optimizer_class(learning_rate=schedule, epsilon=1e-7)
            optimizer.build(variables)

        @tf.function
        def step(gs):
            def apply(gs):
                optimizer.apply_gradients(zip(gs, variables))
            strategy.run(apply, args=(gs,)) if distributed else apply(gs)

        for gs in grads:
            step([tf.constant(g) for g in gs])
        slots = [s for s in optimizer.variables if s is not optimizer.iterations]  # each variable's m and v
        return [v.numpy() for v in variables] + [s.numpy() for s in slots]

    fused, reference = run(FusedAdam), run(keras.optimizers.Adam)
    assert len(fused) == 3 * len(shapes)
    assert not np.allclose(fused[0], start[0])  # it moved
    # The kernel forms 1 - beta in float32 (Keras in float64, then casts): relative differences of ~2e-7 per
    # step, which elements near zero show as larger relative ones. A wrong formula (no bias correction,
    # epsilon misplaced, a slot not updated) differs by orders of magnitude more.
    for a, b in zip(fused, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
