"""One worker of tests/test_gradient_exchange.py (a real MultiWorkerMirroredStrategy process).

    python tests/gradient_exchange_worker.py INDEX PORT0,PORT1 OUT.json

Trains the same model from the same weights for two steps on uneven per-worker batches (3 and 1
examples), once per gradient exchange, with plain SGD (so the weight change is the gradient itself),
and the chief writes each variable's change per exchange.
"""

import json
import os
import sys

import numpy as np

from xray import trainer  # noqa: F401  (tf-keras before TensorFlow)
import tensorflow as tf

from xray.trainer import tfconfig
from xray.trainer.allreduce import with_gradient_exchange
from xray.trainer.config import ModelConfig
from xray.trainer.kerasapi import keras
from xray.trainer.model import build_model

index, ports, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
# Read when the strategy is made, below.
os.environ["TF_CONFIG"] = json.dumps(tfconfig.tf_config_for([f"127.0.0.1:{p}" for p in ports], index))
os.environ["XRAY_THREADS"] = "1"

PER_WORKER = (3, 1)
GLOBAL_BATCH = sum(PER_WORKER)
config = ModelConfig(image_size=32, weights="none", trainable_layers="3", train_batchnorm=False,
                     dense1_units=64, dense2_units=8, dropout1=0.0, dropout2=0.0, l2=1e-2)

strategy = tfconfig.make_strategy(tfconfig.resolve(), collective_timeout_s=0)


def dataset(context):
    rng = np.random.default_rng(100 + context.input_pipeline_id)
    n = PER_WORKER[context.input_pipeline_id]
    x = rng.uniform(-1, 1, size=(2 * n, 32, 32, 3)).astype("float32")
    y = (rng.uniform(size=(2 * n, 1)) > 0.5).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(n)


keras.utils.set_random_seed(0)
with strategy.scope():
    initial = build_model(config).get_weights()

changes, factored = {}, {}
for name, dtype, factor in (("optimizer", None, False), ("factored", "float32", True), ("factored_bf16", "bfloat16", True)):
    with strategy.scope():
        model = build_model(config)
        model.set_weights(initial)
        if dtype is not None:
            model, exchange = with_gradient_exchange(model, dtype, factor, GLOBAL_BATCH)
            factored[name] = exchange.factored_layer
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="binary_crossentropy")
    model.fit(strategy.distribute_datasets_from_function(dataset), epochs=1, steps_per_epoch=2, verbose=0)
    changes[name] = {v.name: (v.numpy() - w).tolist() for v, w in zip(model.weights, initial)
                     if v.trainable}

if index == 0:
    with open(out, "w") as f:
        json.dump({"changes": changes, "factored": factored}, f)
