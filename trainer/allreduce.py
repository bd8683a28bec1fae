"""Gradient all-reduce in bfloat16: half the bytes between workers.

Measured on 2 local workers (2 cores): one float32 all-reduce of this model's 25.6M gradient values
takes 0.42 s, longer than a whole single-worker step at 64 px (0.27 s); in bfloat16 it takes 0.12 s.
The default path (the optimizer's own float32 aggregation) stays exact; train.gradient_allreduce=
bfloat16 switches to this one. Distribution code, so it lives here and not in trainer.model.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.kerasapi import keras


class BFloat16AllReduceModel(keras.Model):
    """The same layers (built from an existing functional model's inputs and outputs); gradients are
    summed across replicas in bfloat16, then applied in the variables' dtype without a second reduction."""

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            # Keras scales the loss by 1 / replicas under a strategy, so a SUM of gradients is the mean.
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        packed = [tf.cast(g, tf.bfloat16) for g in gradients]
        reduced = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, packed)
        gradients = [tf.cast(g, v.dtype) for g, v in zip(reduced, variables)]
        self.optimizer.apply_gradients(zip(gradients, variables), skip_gradients_aggregation=True)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def with_bfloat16_allreduce(model: keras.Model) -> keras.Model:
    return BFloat16AllReduceModel(inputs=model.inputs, outputs=model.outputs, name=model.name)
