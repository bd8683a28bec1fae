"""Training callbacks that make a run observable and resumable.

- ``HistoryLog``: one JSON line (and one CSV row) per finished epoch with a timestamp, the worker
  count, the learning rate and every metric; ``xray jobs status`` and tests read it. On a resumed
  run it first drops lines of epochs that the backup did not keep, so no epoch appears twice.
- ``RestoreSelectionState``: BackupAndRestore brings back weights, optimizer and epoch, but not
  EarlyStopping's patience counter or ModelCheckpoint's best value; without them the first epoch
  after a resume would overwrite a better best model. Patience is rebuilt from the history; the best
  value from what the best-weights file itself records (``saved_best``), since the history line of an
  epoch is written before its weights are, and a worker lost in between (saving needs every worker)
  leaves a history whose best epoch the file does not hold.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid

import tensorflow as tf

from xray.data.atomic import write_atomic
from xray.trainer.kerasapi import keras


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
        self._epoch: tuple[int, dict] | None = None

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = (epoch, dict(logs or {}))
        super().on_epoch_end(epoch, logs)

    def _save_handler(self, filepath):
        directory, name = filepath.rsplit("/", 1) if "/" in filepath else (".", filepath)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex[:8]}-{name}"  # same suffix: the same file format
        try:
            if self.weights_of is not None:
                self.weights_of.save_weights(tmp, overwrite=True)
            else:
                super()._save_handler(tmp)
            if self._epoch is not None and self.monitor in self._epoch[1]:
                _tag(tmp, self._epoch[0] + 1, self.monitor, float(self._epoch[1][self.monitor]))
            tf.io.gfile.rename(tmp, filepath, overwrite=True)  # the weights and their record arrive together
        finally:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)


def _current_lr(model) -> float:
    lr = model.optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(model.optimizer.iterations)
    return float(keras.backend.get_value(lr))


# The record a best-weights file carries (HDF5 attributes of the file, written before it takes its name).
TAG_EPOCH, TAG_MONITOR, TAG_VALUE = "xray_epoch", "xray_monitor", "xray_value"


def _tag(path: str, epoch: int, monitor: str, value: float) -> None:
    if "://" in path:
        return  # h5py opens local files only; a remote run falls back to the history (RestoreSelectionState)
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs[TAG_EPOCH], f.attrs[TAG_MONITOR], f.attrs[TAG_VALUE] = epoch, monitor, value


def saved_best(path: str) -> dict | None:
    """What a best-weights file holds: {"epoch": 1-based, "monitor": name, "value": float}; {} for a file without
    the record (remote, or written before it existed); None when there is no file."""
    if not tf.io.gfile.exists(path):
        return None
    if "://" in path:
        return {}
    import h5py

    with h5py.File(path, "r") as f:
        if TAG_EPOCH not in f.attrs:
            return {}
        return {"epoch": int(f.attrs[TAG_EPOCH]), "monitor": str(f.attrs[TAG_MONITOR]), "value": float(f.attrs[TAG_VALUE])}


class RestoreSelectionState(keras.callbacks.Callback):
    """On the first epoch of a resumed run, sets EarlyStopping's memory from the history lines of epochs before
    it, and ModelCheckpoint's best value from the shared best-weights file's record (``best_path``: the chief's,
    so that every worker decides the same; saving reads values through collectives). No file: the next epoch
    writes one. A file without a record: the history's best, as before the record existed."""

    def __init__(self, jsonl_path: str, early_stopping, checkpoint, monitor: str = "val_loss", best_path: str = ""):
        super().__init__()
        self.jsonl_path, self.early_stopping, self.checkpoint, self.monitor = jsonl_path, early_stopping, checkpoint, monitor
        self.best_path = best_path or checkpoint.filepath
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
        saved = saved_best(self.best_path)
        if saved is None:
            print(f"no best weights at {self.best_path} (lost with a worker before they were written); the next "
                  "epoch writes them", flush=True)
        elif saved.get("monitor") == self.monitor:
            self.checkpoint.best = saved["value"]
            if saved["epoch"] != best["epoch"]:
                print(f"{self.best_path} holds epoch {saved['epoch']} ({self.monitor} {saved['value']:.4f}), not the "
                      f"history's best epoch {best['epoch']} (its weights were lost with a worker); a better epoch "
                      "replaces them", flush=True)
        else:
            self.checkpoint.best = best[self.monitor]
        self.early_stopping.best = best[self.monitor]
        self.early_stopping.best_epoch = best["epoch"] - 1
        self.early_stopping.wait = epoch - best["epoch"]


def best_epoch(rows: list[dict], monitor: str = "val_loss") -> dict | None:
    rows = [r for r in rows if monitor in r and not math.isnan(r[monitor])]
    return min(rows, key=lambda r: r[monitor]) if rows else None
