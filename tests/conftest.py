"""Shared fixtures: a small synthetic data set and its shards, made once per test session; the local
Kubernetes control plane (tests/cluster/), started once for the tests marked `cluster`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainer  # noqa: F401  (selects tf-keras before TensorFlow is imported)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from trainer.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, num_patients=40, seed=1, image_size=64)
    return out


@pytest.fixture(scope="session")
def shards_dir(synth_dir, tmp_path_factory):
    from trainer.records import ShardOptions, convert

    out = tmp_path_factory.mktemp("shards")
    convert(synth_dir, str(out), ShardOptions(num_shards=4, val_fraction=0.2, seed=0, image_size=32), show_progress=False)
    return out


@pytest.fixture(scope="session")
def trained_workdir(shards_dir, tmp_path_factory):
    """A finished run as `xray train` leaves it (config, best weights, training.json), without the training time."""
    import json

    from trainer.config import preset
    from trainer.kerasapi import keras
    from trainer.model import build_model
    from trainer.workdir import Workdir

    workdir = tmp_path_factory.mktemp("run")
    config = preset("tiny")
    paths = Workdir(str(workdir))
    config.save(paths.config)
    keras.utils.set_random_seed(0)
    build_model(config.model).save_weights(paths.best_weights)
    (workdir / "training.json").write_text(json.dumps({"data": str(shards_dir), "epochs_run": 1, "best_epoch": 1}))
    return workdir


@pytest.fixture(scope="session")
def model_base(trained_workdir, tmp_path_factory):
    """Two exported versions (1 and 2) of that run, as `xray export` writes them."""
    from serving import export

    base = tmp_path_factory.mktemp("models")
    export.export(export.ExportRequest(str(trained_workdir), str(base)), log=lambda *_: None)
    export.export(export.ExportRequest(str(trained_workdir), str(base), force=True), log=lambda *_: None)
    return base


def run_xray(*args, timeout=600, env=None, check=True):
    """Runs the real `xray` command line in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    result = subprocess.run([sys.executable, "-m", "xray", *map(str, args)], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"xray {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def control_plane():
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK (2 nodes) on free 127.0.0.1 ports.

    Same code as `make cluster-up`, under its own root (build/cluster-pytest) so that it neither uses nor stops
    a control plane the user started. Fails, never skips, when the binaries cannot be built.
    """
    from cluster.controlplane import ControlPlane

    plane = ControlPlane(REPO / "build" / "cluster-pytest")
    plane.up()
    yield plane
    plane.down()
