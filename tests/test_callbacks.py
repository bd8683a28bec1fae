"""The best-model checkpoint is written whole or not at all: a kill during the write leaves the previous one."""

import subprocess
import sys

import numpy as np

from conftest import REPO

SCRIPT = """
import os, sys
import numpy as np
import trainer
from trainer.callbacks import AtomicModelCheckpoint
from trainer.kerasapi import keras

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
