"""The team's model: ResNet50V2 backbone + Flatten/Dense(256, L2)/Dropout/Dense(128)/Dropout/sigmoid.

Nothing here knows about hardware or distribution; ``train.py`` decides where the model lives.

Fine-tuning as the team meant it: their snippet set ``trainable = True`` on the last 10 backbone
layers, but never froze the rest first (Keras layers are trainable by default), so it trained all
of them. Here the backbone is frozen, the last ``trainable_layers`` layers are unfrozen, and
BatchNormalization layers stay frozen, which in TF2 Keras also keeps them in inference mode, so
fine-tuning does not wreck the pretrained statistics with batches of 16.
"""

from __future__ import annotations

import os

from xray.trainer.config import IMAGENET_WEIGHTS_FILE, ConfigError, ModelConfig, TrainConfig
from xray.trainer.kerasapi import keras

OUTPUT_NAME = "probability"


# Folders searched for IMAGENET_WEIGHTS_FILE before Keras downloads it (os.pathsep-separated). The cluster's pods set
# /mnt/xray/weights (the shared volume: make weights-cluster puts the file there once) and /opt/xray/weights (an
# image built FROM the project image with the file copied in), so no pod downloads and no egress is needed.
WEIGHTS_PATH = "XRAY_WEIGHTS_PATH"


def backbone_weights(weights: str) -> str | None:
    """'imagenet' -> the file from $XRAY_WEIGHTS_PATH if one of its folders has it, else Keras' download/cache;
    'none' -> random init; otherwise a weights file path."""
    if weights == "none":
        return None
    if weights == "imagenet":
        for folder in os.environ.get(WEIGHTS_PATH, "").split(os.pathsep):
            candidate = os.path.join(folder, IMAGENET_WEIGHTS_FILE)
            if folder and os.path.isfile(candidate):
                return candidate
        return "imagenet"
    if not os.path.exists(weights) and "://" not in weights:
        raise ConfigError(
            f"model.weights={weights!r}: no such file. Use 'imagenet', 'none' or the path of "
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    return weights


def build_model(config: ModelConfig) -> keras.Model:
    """Uncompiled model: float image [batch, size, size, 3] in [-1, 1] -> probability [batch, 1]."""
    size = config.image_size
    try:
        backbone = keras.applications.ResNet50V2(
            include_top=False, weights=backbone_weights(config.weights), input_shape=(size, size, 3)
        )
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if config.weights != "imagenet" or "fetch failure" not in str(error):
            raise
        # A configuration error, not a crash: a retry (or a Job's next pod) cannot fix it.
        raise ConfigError(
            f"could not download the ImageNet weights ({error}). On a machine without internet, copy "
            f"{IMAGENET_WEIGHTS_FILE} into $KERAS_HOME/models/ (default ~/.keras/models/, must be "
            f"writable) or a folder of ${WEIGHTS_PATH} (on a cluster: make weights-cluster puts it on the volume), "
            "or pass model.weights=/path/to/that/file"
        ) from None
    set_trainable(backbone, config.trainable_layers, config.train_batchnorm)
    if config.train_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.batchnorm_momentum

    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = backbone(inputs)
    x = keras.layers.Flatten(name="flatten")(x) if config.pooling == "flatten" else keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(config.dense1_units, activation="relu", kernel_regularizer=keras.regularizers.l2(config.l2), name="dense1")(x)
    x = keras.layers.Dropout(config.dropout1, name="dropout1")(x)
    x = keras.layers.Dense(config.dense2_units, activation="relu", name="dense2")(x)
    x = keras.layers.Dropout(config.dropout2, name="dropout2")(x)
    # float32 even under a mixed-precision policy: a bfloat16 sigmoid saturates and the loss suffers.
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="xray_resnet50v2")


def load_trained(config: ModelConfig, weights_path: str) -> keras.Model:
    """The trained model from its config and a weights file (no backbone download: all weights are in the file)."""
    import dataclasses

    model = build_model(dataclasses.replace(config, weights="none"))
    model.load_weights(weights_path)
    return model


def set_trainable(backbone: keras.Model, trainable_layers: str, train_batchnorm: bool) -> None:
    backbone.trainable = True
    num = len(backbone.layers) if trainable_layers == "all" else int(trainable_layers)
    first_trainable = len(backbone.layers) - num
    for index, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= first_trainable and (train_batchnorm or not is_bn)


@keras.saving.register_keras_serializable(package="xray")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, with each dense update done by TensorFlow's fused ``ResourceApplyAdam`` kernel.

    Keras' Adam updates a variable with separate element-wise ops (two slot updates, a square, a square root,
    the division and the step), each one reading and writing the whole tensor. The head's 25.7M-value kernel
    makes that about 0.09 s of every training step on the 2-core build machine; TensorFlow's kernel does the
    same arithmetic in one pass (0.025 s; ``make bench`` P7 reports both). Same formula as Keras'
    (``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``; ``m += (g - m)(1 - beta_1)``;
    ``v += (g^2 - v)(1 - beta_2)``; ``w -= alpha m / (sqrt(v) + epsilon)``), the same slot variables, so
    checkpoints are interchangeable; ``tests/test_model.py`` checks the two agree. AMSGrad and sparse
    gradients use Keras' own update.
    """

    def update_step(self, gradient, variable):
        import tensorflow as tf

        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        epsilon = tf.cast(self.epsilon, dtype)
        if self.adaptive_epsilon:  # Keras' epsilon_hat, which the kernel then uses as its epsilon
            epsilon = epsilon * tf.sqrt(1 - beta_2_power)
        index = self._index_dict[self._var_key(variable)]
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=tf.cast(self.learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=epsilon, grad=tf.cast(gradient, dtype),
        )


def compile_model(model: keras.Model, config: TrainConfig, jit_compile: bool = False) -> keras.Model:
    """Adam (fused, see FusedAdam) on CosineDecayRestarts, binary cross-entropy, accuracy/AUC/precision/recall."""
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        initial_learning_rate=config.learning_rate,
        first_decay_steps=config.first_decay_steps,
        t_mul=config.t_mul,
        m_mul=config.m_mul,
        alpha=config.alpha,
    )
    model.compile(
        optimizer=FusedAdam(learning_rate=schedule),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
        jit_compile=jit_compile,
    )
    return model
