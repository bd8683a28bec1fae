"""Training callbacks that make a run observable and resumable.

- ``HistoryLog``: one JSON line (and one CSV row) per finished epoch with a timestamp, the worker
  count, the learning rate and every metric; ``xray jobs status`` and tests read it. On a resumed
  run it first drops lines of epochs that the backup did not keep, so no epoch appears twice.
- ``restore_selection_state``: BackupAndRestore brings back weights, optimizer and epoch, but not
  EarlyStopping's patience counter or ModelCheckpoint's best value; without them the first epoch
  after a resume would overwrite a better best model. They are rebuilt from the history.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid

import tensorflow as tf

from data.atomic import write_atomic
from trainer.kerasapi import keras


def read_history(path: str) -> list[dict]:
    if not tf.io.gfile.exists(path):
        return []
    rows = []
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
    return rows


class HistoryLog(keras.callbacks.Callback):
    """Appends ``{"epoch": 1-based, "time", "run_id", "workers", "seconds", "images", "epochs", "lr", metrics...}``
    per epoch (images: training images seen in the epoch; epochs: the most this run will train)."""

    def __init__(self, jsonl_path: str, csv_path: str, run_id: str, num_workers: int, announce: bool = False,
                 images_per_epoch: int = 0, max_epochs: int = 0):
        super().__init__()
        self.images_per_epoch, self.max_epochs = images_per_epoch, max_epochs
        self.announce = announce  # the chief prints each line too, for `xray jobs status` to read from its log
        self.jsonl_path, self.csv_path = jsonl_path, csv_path
        self.run_id, self.num_workers = run_id, num_workers
        self._first_epoch_seen = False
        self._started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_seen:
            return
        self._first_epoch_seen = True
        kept = [row for row in read_history(self.jsonl_path) if row["epoch"] <= epoch]
        self._rows = kept
        self._write_all()
        self._epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        row = {
            "epoch": epoch + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "run_id": self.run_id,
            "workers": self.num_workers,
            "seconds": round(now - self._epoch_started, 3),
            "images": self.images_per_epoch,
            "epochs": self.max_epochs,
            "lr": _current_lr(self.model),
        }
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self._rows.append(row)
        self._write_all()
        if self.announce:
            print(f"xray-epoch {json.dumps(row)}", flush=True)
        self._epoch_started = time.time()

    def _write_all(self):
        write_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in self._rows))
        columns = []
        for row in self._rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self._rows)
        write_atomic(self.csv_path, buffer.getvalue())


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint whose file is never half written: the weights go to a temporary name beside the target,
    which is renamed over it when complete. A kill during the write leaves the previous best whole (a resume
    rebuilds the best value from history and would never rewrite a truncated file).

    Overrides tf-keras 2.21's ModelCheckpoint._save_handler (private; tests/test_train_multiworker.py and
    tests/test_callbacks.py fail if a tf-keras upgrade stops calling it).

    ``weights_of``: save this model's weights instead of the fitted model's (training on cached features fits
    a view of the full model; the file must hold the full model's weights)."""

    def __init__(self, *args, weights_of=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights_of = weights_of

    def _save_handler(self, filepath):
        directory, name = filepath.rsplit("/", 1) if "/" in filepath else (".", filepath)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex[:8]}-{name}"  # same suffix: the same file format
        try:
            if self.weights_of is not None:
                self.weights_of.save_weights(tmp, overwrite=True)
            else:
                super()._save_handler(tmp)
            tf.io.gfile.rename(tmp, filepath, overwrite=True)
        finally:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)


def _current_lr(model) -> float:
    lr = model.optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(model.optimizer.iterations)
    return float(keras.backend.get_value(lr))


class RestoreSelectionState(keras.callbacks.Callback):
    """On the first epoch of a resumed run, sets EarlyStopping's and ModelCheckpoint's memory from the
    history lines of epochs before it (every worker computes the same, so all stop together)."""

    def __init__(self, jsonl_path: str, early_stopping, checkpoint, monitor: str = "val_loss"):
        super().__init__()
        self.jsonl_path, self.early_stopping, self.checkpoint, self.monitor = jsonl_path, early_stopping, checkpoint, monitor
        self.resumed_at = None
        self._done = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._done:
            return
        self._done = True
        if epoch == 0:
            return
        self.resumed_at = epoch
        earlier = [r for r in read_history(self.jsonl_path) if r["epoch"] <= epoch and self.monitor in r]
        if not earlier:
            return
        best = min(earlier, key=lambda r: r[self.monitor])
        self.checkpoint.best = best[self.monitor]
        self.early_stopping.best = best[self.monitor]
        self.early_stopping.best_epoch = best["epoch"] - 1
        self.early_stopping.wait = epoch - best["epoch"]


def best_epoch(rows: list[dict], monitor: str = "val_loss") -> dict | None:
    rows = [r for r in rows if monitor in r and not math.isnan(r[monitor])]
    return min(rows, key=lambda r: r[monitor]) if rows else None
