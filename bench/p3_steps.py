"""One process of bench P3's step-time breakdown (started by bench/run.py, once or twice side by side).

    python -m bench.p3_steps EXCHANGE STEPS SHARDS OUT.json [INDEX PORT0,PORT1]

Trains the documented model (team preset, random backbone weights) on the real TFRecord pipeline at
global batch 16 and writes the median step time (the first steps, with tracing, left out). EXCHANGE:
``optimizer`` (Keras' own float32 all-reduce), ``factored`` (the trainer's default, xray/trainer/allreduce.py)
``factored16`` (the same with the values sent as bfloat16, not exact) or ``none``: every worker applies its own gradients, nothing crosses between workers. ``none`` is not
training anyone should run; it measures what two workers cost on this machine before any communication.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from xray import trainer  # noqa: F401  (tf-keras before TensorFlow)

WARMUP_STEPS = 4


def main(argv: list[str]) -> int:
    exchange, steps, shards, out = argv[0], int(argv[1]), argv[2], argv[3]
    import dataclasses

    import tensorflow as tf

    from xray.data import manifest as manifests
    from xray.data import reader
    from xray.trainer import tfconfig

    workers = 1
    if len(argv) > 4:
        index, ports = int(argv[4]), argv[5].split(",")
        workers = len(ports)
        os.environ["TF_CONFIG"] = json.dumps(tfconfig.tf_config_for([f"127.0.0.1:{p}" for p in ports], index))
    from xray.trainer.allreduce import with_gradient_exchange
    from xray.trainer.config import preset
    from xray.trainer.kerasapi import keras
    from xray.trainer.model import build_model, compile_model

    config = preset("team")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, weights="none"))
    spec = tfconfig.resolve()
    strategy = tfconfig.make_strategy(spec, collective_timeout_s=0)
    batch = config.train.batch_size

    class LocalGradientsModel(keras.Model):
        def train_step(self, batch_data):
            x, y = batch_data
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x, y, y_pred, None)
            gradients = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_variables), skip_gradients_aggregation=True)
            return self.compute_metrics(x, y, y_pred, None)

    with strategy.scope():
        model = build_model(config.model)
        if exchange == "none":
            model = LocalGradientsModel(inputs=model.inputs, outputs=model.outputs)
        elif exchange in ("factored", "factored16") and workers > 1:
            model, _ = with_gradient_exchange(model, "bfloat16" if exchange == "factored16" else "float32", True, batch)
        elif exchange not in ("optimizer", "factored", "factored16"):
            raise SystemExit(f"unknown exchange {exchange!r}: optimizer, factored, factored16 or none")
        compile_model(model, config.train)

    def dataset(context):
        return reader.make_dataset(manifests.read(shards).shard_paths("train"), batch, True,
                                 image_size=config.model.image_size, input_context=context, augment=False)

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, step, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, step, logs=None):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimes()
    model.fit(strategy.distribute_datasets_from_function(dataset), epochs=1, steps_per_epoch=steps + WARMUP_STEPS,
              verbose=0, callbacks=[timer])
    if spec.is_chief:
        times = timer.times[WARMUP_STEPS:]
        with open(out, "w") as f:
            json.dump({"exchange": exchange, "workers": workers, "median_step_seconds": statistics.median(times),
                       "step_seconds": times}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
