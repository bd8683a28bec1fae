"""The best-model checkpoint is written whole or not at all: a kill during the write leaves the previous one."""

import subprocess
import sys

import numpy as np

from conftest import REPO

SCRIPT = """
import os, sys
import numpy as np
from xray import trainer
from xray.trainer.callbacks import AtomicModelCheckpoint
from xray.trainer.kerasapi import keras

path, mode = sys.argv[1], sys.argv[2]
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model.set_weights([np.full((4, 3), 1.0 if mode == "first" else 2.0), np.zeros(3)])
checkpoint = AtomicModelCheckpoint(path, monitor="loss", save_best_only=True, save_weights_only=True)
checkpoint.set_model(model)
if mode == "killed":
    import h5py
    written = []
    original = h5py.Group.create_dataset
    def dying(self, *args, **kwargs):
        written.append(1)
        result = original(self, *args, **kwargs)
        if len(written) == 1:
            self.file.flush()
            os._exit(137)  # as SIGKILL would: no cleanup, no rename
        return result
    h5py.Group.create_dataset = dying
checkpoint.on_epoch_end(0, {"loss": 1.0})
print("saved")
"""


def _run(path, mode):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(path), mode], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _kernel(path):
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append(np.array(obj)) if getattr(obj, "shape", None) == (4, 3) else None)
    return found[0]


def test_a_kill_during_the_write_leaves_the_previous_best_whole(tmp_path):
    path = tmp_path / "best.weights.h5"
    assert _run(path, "first").returncode == 0
    np.testing.assert_array_equal(_kernel(path), np.ones((4, 3)))
    killed = _run(path, "killed")
    assert killed.returncode == 137 and "saved" not in killed.stdout, killed.stderr[-2000:]
    np.testing.assert_array_equal(_kernel(path), np.ones((4, 3)))  # the previous best, whole and readable
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and leftovers[0].endswith("best.weights.h5")  # the half-written file never took the name
    assert _run(path, "second").returncode == 0
    np.testing.assert_array_equal(_kernel(path), np.full((4, 3), 2.0))


def _resumed(tmp_path, saved_epochs):
    """A run whose history has val_loss 0.5, 0.3, 0.4 (epochs 1-3) and whose best-weights file was written at
    ``saved_epochs`` (a save lost with a worker leaves an epoch out), resumed at epoch 4."""
    import json

    from xray import trainer  # noqa: F401 - selects tf-keras
    from xray.trainer.callbacks import AtomicModelCheckpoint, RestoreSelectionState
    from xray.trainer.kerasapi import keras

    losses = {1: 0.5, 2: 0.3, 3: 0.4}
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"epoch": e, "val_loss": v}) + "\n" for e, v in losses.items()))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    best = tmp_path / "best.weights.h5"
    first = AtomicModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True)
    first.set_model(model)
    for epoch in saved_epochs:
        first.on_epoch_end(epoch - 1, {"val_loss": losses[epoch]})
    checkpoint = AtomicModelCheckpoint(str(best), monitor="val_loss", save_best_only=True, save_weights_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=False)
    restore = RestoreSelectionState(str(history), stopping, checkpoint)
    for callback in (checkpoint, stopping, restore):
        callback.set_model(model)
    stopping.on_train_begin()
    restore.on_epoch_begin(3)  # 0-based: the fourth epoch
    return best, checkpoint, stopping


def test_a_resumed_run_remembers_its_best_epoch_and_does_not_overwrite_a_better_model(tmp_path):
    """Resume at epoch 4 after val_loss 0.5, 0.3, 0.4: the checkpoint and early stopping start from 0.3 (epoch 2),
    so a worse epoch 4 (0.35) does not replace the best weights, and patience counts from epoch 2."""
    from xray.trainer.callbacks import saved_best

    best, checkpoint, stopping = _resumed(tmp_path, saved_epochs=(1, 2))
    assert saved_best(str(best)) == {"epoch": 2, "monitor": "val_loss", "value": 0.3}
    assert checkpoint.best == 0.3 and stopping.best == 0.3 and stopping.best_epoch == 1 and stopping.wait == 1
    checkpoint.on_epoch_end(3, {"val_loss": 0.35})
    assert saved_best(str(best))["epoch"] == 2, "a worse epoch replaced the best model"
    stopping.on_epoch_end(3, {"val_loss": 0.35})
    assert stopping.wait == 2 and not stopping.model.stop_training
    checkpoint.on_epoch_end(4, {"val_loss": 0.2})
    assert saved_best(str(best))["epoch"] == 5


def test_a_best_epoch_whose_weights_were_lost_does_not_stop_a_better_one_from_being_saved(tmp_path):
    """The history says epoch 2 (0.3) is best, but its weights were never written (a worker lost during the save,
    after the history line): the file holds epoch 1 (0.5). The resumed run saves an epoch 4 of 0.35, better than
    what the file holds; early stopping still counts from epoch 2. With no file at all, the first epoch writes."""
    import math

    from xray.trainer.callbacks import saved_best

    best, checkpoint, stopping = _resumed(tmp_path, saved_epochs=(1,))
    assert checkpoint.best == 0.5 and stopping.best == 0.3
    checkpoint.on_epoch_end(3, {"val_loss": 0.35})
    assert saved_best(str(best)) == {"epoch": 4, "monitor": "val_loss", "value": 0.35}

    (tmp_path / "none").mkdir()
    best, checkpoint, stopping = _resumed(tmp_path / "none", saved_epochs=())
    assert math.isinf(checkpoint.best) and saved_best(str(best)) is None
    checkpoint.on_epoch_end(3, {"val_loss": 0.45})
    assert saved_best(str(best))["epoch"] == 4
