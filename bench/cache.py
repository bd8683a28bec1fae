"""Bench P7 and P8: the frozen trunk's feature cache (trainer/feature_cache.py), measured side by side.

P7: the documented model (team preset, 224 px, random backbone weights: step time does not depend on weight
values) trained one epoch over the train split without the cache and with it; per-epoch ratio, and a 10-epoch
total with the cache build included.
P8: `xray tune` (team preset, the same trials) with and without the shared cache: trials per hour of wall time,
the whole command timed (process start, the cache build, the report).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import time
from pathlib import Path


def _epoch_timer():
    from xray.trainer.kerasapi import keras

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    return EpochTimes()


def p7_epoch_time(shards: Path, work: Path, full_epochs: int, cached_epochs: int, summary) -> dict:
    import numpy as np

    from xray.data import manifest as manifests
    from xray.data import reader
    from xray.trainer import feature_cache
    from xray.trainer.config import preset
    from xray.trainer.kerasapi import keras
    from xray.trainer.model import build_model, compile_model

    config = preset("team")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, weights="none"))
    batch, size = config.train.batch_size, config.model.image_size
    manifest = manifests.read(str(shards))
    weights = manifest.class_weights()
    steps = manifest.steps("train", batch)

    keras.utils.set_random_seed(0)
    whole = compile_model(build_model(config.model), config.train)
    images = reader.make_dataset(manifest.shard_paths("train"), batch, True, image_size=size,
                               class_weights=weights, augment=False)
    timer = _epoch_timer()
    whole.fit(images, epochs=full_epochs + 1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    full = timer.seconds[1:]  # the first epoch traces the graph

    keras.utils.set_random_seed(0)
    split = feature_cache.Split(build_model(config.model))
    cached = compile_model(split.cached, config.train)
    cache_dir = work / "p7-features"
    for old in cache_dir.glob("*.npz"):
        old.unlink()
    import os

    os.environ["XRAY_FEATURE_CACHE"] = str(cache_dir)
    started = time.perf_counter()
    arrays = feature_cache.features_for(split, manifest, "train", config)
    build = time.perf_counter() - started
    timer = _epoch_timer()
    cached.fit(reader.cached_dataset(arrays, batch, True), epochs=cached_epochs + 1, steps_per_epoch=steps, verbose=0,
               callbacks=[timer])
    with_cache = timer.seconds[1:]
    names = reader.feature_names(arrays)
    half = dict(arrays, **{name: arrays[name].astype(np.float16) for name in names})
    timer = _epoch_timer()
    cached.fit(reader.cached_dataset(half, batch, True), epochs=cached_epochs + 1, steps_per_epoch=steps, verbose=0,
               callbacks=[timer])
    with_half = timer.seconds[1:]
    error = max(float(np.max(np.abs(half[name].astype(np.float32) - arrays[name]))) /
                max(float(np.max(np.abs(arrays[name]))), 1e-12) for name in names)

    adam = _adam_update_seconds([w.shape for w in cached.trainable_weights])

    per_epoch = statistics.median(full) / statistics.median(with_cache)
    ten = 10 * statistics.median(full) / (build + 10 * statistics.median(with_cache))
    images_per_epoch = steps * batch
    return {"id": "P7", "measure": "team preset epoch time at 224 px, without / with the feature cache; 10 epochs with "
                                   "the cache build included", "target": ">= 4 per epoch; >= 3 over 10 epochs",
            "ratio": per_epoch, "ten_epoch_ratio": ten, "met": per_epoch >= 4 and ten >= 3,
            "epoch_seconds": {"without_cache": summary(full), "with_cache": summary(with_cache),
                              "with_float16_cache": summary(with_half)},
            "cache_build_seconds": build, "cut": split.cut,
            "images_per_second": {"without_cache": images_per_epoch / statistics.median(full),
                                  "cache_build": len(arrays["labels"]) / build,
                                  "with_cache": images_per_epoch / statistics.median(with_cache)},
            "cache_bytes": {"float32": sum(int(arrays[name].nbytes) for name in names),
                            "float16": sum(int(half[name].nbytes) for name in names)},
            "float16_max_relative_error": error,
            "adam_update_seconds": adam,
            "inputs": {"preset": "team", "image_size": size, "weights": "none (random)", "batch": batch,
                       "train_images": len(arrays["labels"]), "steps_per_epoch": steps}}


def _adam_update_seconds(shapes, repeats: int = 10) -> dict:
    """One optimizer update of the trained variables: Keras' Adam (element-wise ops) vs FusedAdam (one kernel)."""
    import tensorflow as tf

    from xray.trainer.kerasapi import keras
    from xray.trainer.model import FusedAdam

    variables = [tf.Variable(tf.random.normal(shape, stddev=0.01)) for shape in shapes]
    gradients = [tf.random.normal(shape, stddev=0.001) for shape in shapes]
    seconds = {}
    for name, optimizer in (("keras_adam", keras.optimizers.Adam(1e-4)), ("fused_adam", FusedAdam(1e-4))):
        optimizer.build(variables)
        step = tf.function(lambda optimizer=optimizer: optimizer.apply_gradients(zip(gradients, variables)))
        step()
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        seconds[name] = (time.perf_counter() - started) / repeats
    seconds["values"] = int(sum(v.shape.num_elements() for v in variables))
    return seconds


def p8_tune_trials(shards: Path, work: Path, trials: int, epochs: int, xray) -> dict:
    runs = {}
    for name, overrides, env in (
        ("with_cache", [], {"XRAY_FEATURE_CACHE": str(work / "p8-features")}),
        ("without_cache", ["runtime.feature_cache=off"], {"XRAY_FEATURE_CACHE": str(work / "p8-unused")}),
    ):
        directory = work / f"p8-tune-{name}"
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work / "p8-features", ignore_errors=True) if name == "with_cache" else None
        started = time.perf_counter()
        # --patience above the trial length: every trial runs all its epochs on both sides.
        output = xray("tune", "--data", shards, "--workdir", directory, "--preset", "team", "--max-trials", trials,
                      "--epochs-per-trial", epochs, "--patience", epochs, "--objective", "val_loss", "--algorithm",
                      "random", "model.weights=none", *overrides, env=env)
        wall = time.perf_counter() - started
        with open(directory / "trials.csv") as f:
            rows = list(csv.DictReader(f))
        fit = [float(r["seconds"]) for r in rows if r["seconds"]]
        runs[name] = {"wall_seconds": wall, "trials": len(rows), "trials_per_hour": len(rows) / wall * 3600,
                      "fit_seconds_per_trial": fit, "statuses": [r["status"] for r in rows],
                      "epochs_per_trial": [int(r["epochs"]) for r in rows if r["epochs"]],
                      "process_restarts": output.count("continuing in a fresh process")}
    ratio = runs["with_cache"]["trials_per_hour"] / runs["without_cache"]["trials_per_hour"]
    fit_ratio = statistics.median(runs["without_cache"]["fit_seconds_per_trial"]) / \
        statistics.median(runs["with_cache"]["fit_seconds_per_trial"])
    overhead = {name: (run["wall_seconds"] - sum(run["fit_seconds_per_trial"])) / max(run["trials"], 1)
                for name, run in runs.items()}
    return {"id": "P8", "measure": "xray tune trials per hour (team preset), with / without the shared feature cache",
            "target": ">= 4", "ratio": ratio, "met": ratio >= 4, "fit_time_ratio": fit_ratio,
            "per_trial_outside_fit_seconds": overhead, "runs": runs,
            "inputs": {"preset": "team", "weights": "none (random)", "trials": trials, "epochs_per_trial": epochs,
                       "process": "one xray tune per side, its default restart policy (a fresh process only when the "
                                  "memory budget would be passed)", "wall_includes": "process start, the search, "
                                  "the report; with the cache also the one cache build"}}


def dump(result: dict) -> str:
    return json.dumps(result, indent=2)
