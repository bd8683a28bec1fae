"""The layout of a run directory, shared by training, evaluation and export (which need not import training).

    config.json         the run's config (resume checks it)
    best.weights.h5     weights of the best epoch by val_loss (the architecture is config.json)
    history.jsonl/.csv  one row per epoch; training.json the summary once finished
    backup/             BackupAndRestore's checkpoint while training runs
    peer_losses.json    lost peers counted against runtime.max_peer_losses
    eval/               xray evaluate's metrics, predictions and plots
    .xray.lock          the lock the training chief holds while it runs (xray.data.lock)
"""

from __future__ import annotations

import dataclasses
import json

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: str

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    config = property(lambda self: self.path("config.json"))
    backup = property(lambda self: self.path("backup"))
    best_weights = property(lambda self: self.path("best.weights.h5"))
    history_jsonl = property(lambda self: self.path("history.jsonl"))
    history_csv = property(lambda self: self.path("history.csv"))
    tensorboard = property(lambda self: self.path("tensorboard"))
    summary = property(lambda self: self.path("training.json"))
    peer_losses = property(lambda self: self.path("peer_losses.json"))


def read_summary(workdir: str) -> dict | None:
    path = Workdir(workdir).summary
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
