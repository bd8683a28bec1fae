"""Training entry point, one small function per stage: build_strategy -> plan_data -> build_models ->
build_datasets -> build_callbacks -> fit -> record.

    xray train --data build/shards --workdir build/run --preset demo --workers 2

Without ``--workers`` this is what one pod of the Kubernetes Indexed Job runs; ``xray.trainer.launch``
starts N of these as local processes. Workdir layout (only the chief writes it):

    config.json      the full config of this run (a resume must match it)
    backup/          BackupAndRestore state; removed when training finishes
    best.weights.h5  weights of the best epoch by val_loss (the architecture is config.json)
    history.jsonl    one line per finished epoch (history.csv: the same as a table)
    tensorboard/     TensorBoard logs
    training.json    written last: the run finished (epochs, best epoch, seconds, workers)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid

import tensorflow as tf

from xray.trainer import callbacks as xcallbacks
from xray.trainer import tfconfig, feature_cache
from xray.trainer.config import Config, ConfigError
from xray.trainer.kerasapi import keras
from xray.trainer.allreduce import with_gradient_exchange
from xray.data import manifest as manifests
from xray.data import reader
from xray.data.atomic import write_atomic
from xray.data.lock import FolderLock, LockedError
from xray.trainer.workdir import Workdir, read_summary
from xray.trainer.model import build_model, compile_model

log = logging.getLogger("xray.train")

# Exit codes the Kubernetes Job's podFailurePolicy tells apart: retry the group, or fail fast.
EXIT_CONFIG_ERROR = 2
EXIT_PEER_LOST = 75
EXIT_PEER_LOSS_BUDGET = 76  # runtime.max_peer_losses used up: restarting again would not help
PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def check_or_write_config(paths: Workdir, config: Config, is_chief: bool) -> None:
    """A resume must use the config the run started with; the chief records it on the first start."""
    if tf.io.gfile.exists(paths.config):
        saved = Config.load(paths.config).to_dict()
        new = config.to_dict()
        diffs = [
            f"{section}.{key}: {saved[section][key]!r} -> {new[section][key]!r}"
            for section in new
            for key in new[section]
            if saved[section][key] != new[section][key]
        ]
        if diffs:
            raise ConfigError(
                f"{paths.root} holds a run with a different config ({'; '.join(diffs)}). Resume with the same "
                f"preset and overrides (or the config file {paths.config}), or train into a new workdir"
            )
    elif is_chief:
        tf.io.gfile.makedirs(paths.root)
        config.save(paths.config)


def record_peer_loss(paths: Workdir, reason: str) -> int:
    """Counts one more lost peer in WORKDIR/peer_losses.json (the chief only); returns the count so far."""
    try:
        with tf.io.gfile.GFile(paths.peer_losses) as f:
            losses = json.load(f)
    except (tf.errors.NotFoundError, json.JSONDecodeError):
        losses = {"count": 0, "events": []}
    losses["count"] += 1
    losses["events"] = (losses["events"] + [{"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                             "reason": reason}])[-20:]
    write_atomic(paths.peer_losses, json.dumps(losses, indent=2))
    return losses["count"]


def exchange_gradients(model, config: Config):
    """The model wrapped for a cheaper gradient exchange between replicas (xray/trainer/allreduce.py), if configured."""
    train, runtime = config.train, config.runtime
    if train.mixed_precision == "float16":
        # The custom train step does not scale the loss; float16 keeps the optimizer's own aggregation.
        if runtime.gradient_allreduce == "bfloat16":
            raise ConfigError("runtime.gradient_allreduce=bfloat16 does not combine with mixed_precision=float16 "
                              "(loss scaling); use mixed_precision=bfloat16 or gradient_allreduce=float32")
        return model
    model, exchange = with_gradient_exchange(model, runtime.gradient_allreduce, runtime.factor_dense_gradient, train.batch_size)
    if exchange is not None:
        log.info("gradients between replicas: %s", exchange.describe())
    return model


def run(data_uri: str, workdir: str, config: Config, verify_shards: bool = False) -> dict:
    """Trains (or resumes) and returns the training summary; the chief also writes it to the workdir.

    Reads exactly the shards the data's manifest lists, after checking that each is there with its recorded
    size (and sha256 with ``verify_shards``). The chief holds the workdir's lock (xray.data.lock) for the run: a
    second training into the same workdir is refused at once."""
    manifest = manifests.read(data_uri)  # before anything is written: no workdir for data that is not there
    try:
        manifest.check_shards(("train", "val"), hashes=verify_shards)
    except manifests.ShardsChangedError as error:
        raise ConfigError(str(error)) from None
    spec = tfconfig.resolve()
    lock = FolderLock(workdir, f"a training run in {workdir}")
    try:
        if spec.is_chief:
            lock.acquire()
    except LockedError as error:
        raise ConfigError(str(error)) from None
    try:
        return _run(data_uri, manifest, spec, workdir, config)
    finally:
        lock.release()


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """What the manifest says about one run: images per split, class weights, steps per epoch."""
    counts: dict
    class_weights: dict
    steps_per_epoch: int
    validation_steps: int


@dataclasses.dataclass(frozen=True)
class Models:
    """The model as built (full), the feature-cache split of it when the cache is on, and the one that trains."""
    full: object
    split: object  # feature_cache.Split or None
    trained: object
    cache_off_reason: str | None  # None when the cache is on


def build_strategy(spec: tfconfig.ClusterSpec, config: Config):
    """Joins the worker group; refuses a batch that does not split before joining (a refusal must not hang the
    others), and again over all replicas once their number is known."""
    config.train.check_split(spec.num_workers)
    strategy = tfconfig.make_strategy(spec, config.runtime.collective_timeout_s, config.runtime.collective)
    config.train.check_split(strategy.num_replicas_in_sync, "replicas (all devices of all workers)")
    log.info("%s of %d worker(s) (%s), %d replica(s) in sync; global batch %d = %s per replica",
             spec.name, spec.num_workers, spec.source, strategy.num_replicas_in_sync, config.train.batch_size,
             config.train.batch_size / strategy.num_replicas_in_sync)
    return strategy


def plan_data(data_uri: str, manifest: manifests.Manifest, config: Config) -> DataPlan:
    try:
        for warning in manifest.check_for_model(config.model.image_size):
            log.warning(warning)
    except manifests.StaleShardsError as error:
        raise ConfigError(str(error)) from None
    counts = {split: manifest.count(split) for split in ("train", "val")}
    if not counts["val"]:
        raise ConfigError(f"{data_uri} has no validation split: write the shards with a validation fraction above 0")
    batch = config.train.batch_size
    plan = DataPlan(counts, manifest.class_weights(), config.train.steps_per_epoch or manifest.steps("train", batch),
                    manifest.steps("val", batch))
    log.info("train %d images, val %d; %d steps/epoch, %d val steps; class weights %s", counts["train"],
             counts["val"], plan.steps_per_epoch, plan.validation_steps, plan.class_weights)
    return plan


def build_models(strategy, config: Config) -> Models:
    if config.train.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{config.train.mixed_precision}")
    keras.utils.set_random_seed(config.train.seed)
    not_cached = feature_cache.why_not(config)
    with strategy.scope():
        full_model = build_model(config.model)
        split_model = feature_cache.Split(full_model) if not_cached is None else None
        model = split_model.cached if split_model else full_model
        if strategy.num_replicas_in_sync > 1:
            model = exchange_gradients(model, config)
        model = compile_model(model, config.train, jit_compile=config.runtime.xla)
    if split_model:
        log.info("feature cache: on (frozen trunk up to %s computed once per image; runtime.feature_cache=off to "
                 "run the whole model every step)", split_model.cut)
    else:
        log.info("feature cache: off (%s)", not_cached)
    return Models(full_model, split_model, model, not_cached)


def build_datasets(strategy, manifest: manifests.Manifest, config: Config, plan: DataPlan, models: Models):
    """The distributed train and val datasets: records, or the frozen trunk's cached features when the cache is on."""
    features = feature_cache.source(models.split, manifest, config) if models.split else None

    def dataset_fn(split, training, weights=None):
        def make(input_context):
            return reader.dataset(manifest, split, config.train.batch_size, training,
                                  image_size=config.model.image_size, input_context=input_context,
                                  seed=config.train.seed, class_weights=weights, repeat=True,
                                  augment=config.train.augment, features=features)
        return strategy.distribute_datasets_from_function(make)

    return dataset_fn("train", True, plan.class_weights), dataset_fn("val", False)


def build_callbacks(paths: Workdir, out: Workdir, spec: tfconfig.ClusterSpec, config: Config, plan: DataPlan,
                    models: Models) -> list:
    """Backup, selection state restored on resume, history, best weights, early stopping, TensorBoard."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.train.early_stopping_patience, restore_best_weights=True, verbose=1)
    # Weights only: a full .keras file (~3x larger with the optimizer slots) loads very slowly, since h5py
    # seeks inside the zip archive; the architecture is rebuilt from config.json (xray.trainer.model.load_trained).
    checkpoint = xcallbacks.AtomicModelCheckpoint(out.best_weights, monitor="val_loss", save_best_only=True,
                                                   save_weights_only=True,
                                                   weights_of=models.full if models.split else None)
    history_log = xcallbacks.HistoryLog(out.history_jsonl, out.history_csv, uuid.uuid4().hex[:8], spec.num_workers,
                                        announce=spec.is_chief,
                                        images_per_epoch=plan.steps_per_epoch * config.train.batch_size,
                                        max_epochs=config.train.epochs)
    return [
        # Order matters: the backup is saved before the history line, so a logged epoch is never redone.
        keras.callbacks.BackupAndRestore(paths.backup),
        xcallbacks.RestoreSelectionState(paths.history_jsonl, early_stopping, checkpoint, best_path=paths.best_weights),
        history_log,
        checkpoint,
        early_stopping,
        keras.callbacks.TensorBoard(out.tensorboard, profile_batch=0),
    ]


def fit(models: Models, datasets, plan: DataPlan, fit_callbacks: list, paths: Workdir, spec: tfconfig.ClusterSpec,
        config: Config) -> None:
    """model.fit; a lost peer ends this process at once with EXIT_PEER_LOST (or EXIT_PEER_LOSS_BUDGET)."""
    train_ds, val_ds = datasets
    try:
        models.trained.fit(
            train_ds, epochs=config.train.epochs, steps_per_epoch=plan.steps_per_epoch,
            validation_data=val_ds, validation_steps=plan.validation_steps,
            callbacks=fit_callbacks, verbose=2 if spec.is_chief else 0,
        )
    except PEER_ERRORS as error:
        exit_after_peer_loss(error, paths, spec, config)


def exit_after_peer_loss(error: Exception, paths: Workdir, spec: tfconfig.ClusterSpec, config: Config) -> None:
    """A lost peer: MWMS cannot continue with fewer workers. Exit hard and non-zero so the whole group restarts and
    resumes from the backup (a lingering process blocks replacements from joining)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    code = EXIT_PEER_LOST
    budget = config.runtime.max_peer_losses
    if spec.is_chief:
        losses = record_peer_loss(paths, f"{type(error).__name__}: {first_line}")
        if losses > budget:
            code = EXIT_PEER_LOSS_BUDGET
            print(f"{spec.name}: lost a peer {losses} times in this run (runtime.max_peer_losses={budget}); giving up "
                  f"with exit {code}. Look at the pods' events (OOMKilled? evicted? preempted?), then re-run the same "
                  f"command to resume from {paths.backup}", file=sys.stderr, flush=True)
    if code == EXIT_PEER_LOST:
        print(f"{spec.name}: lost contact with a peer ({type(error).__name__}: {first_line}); exiting with "
              f"{code} so the group restarts and resumes from {paths.backup}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def record(data_uri: str, paths: Workdir, out: Workdir, spec: tfconfig.ClusterSpec, config: Config, models: Models,
           started: float) -> dict:
    """The summary (training.json, written last by the chief: the run finished); the backup folder removed."""
    history = xcallbacks.read_history(out.history_jsonl)
    best = xcallbacks.best_epoch(history)
    saved = xcallbacks.saved_best(paths.best_weights)
    if saved and best and saved["epoch"] != best["epoch"]:
        # The weights file is the model that ships: its epoch, not the history's best whose weights were lost.
        best = next((r for r in history if r["epoch"] == saved["epoch"]), best)
    summary = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "epochs_run": len(history),
        "max_epochs": config.train.epochs,
        "stopped_early": len(history) < config.train.epochs,
        "best_epoch": best["epoch"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_auc": best.get("val_auc") if best else None,
        "workers": spec.num_workers,
        "run_ids": sorted({r["run_id"] for r in history}),
        "seconds_this_run": round(time.time() - started, 1),
        "data": data_uri,
        "best_weights": paths.best_weights,
        "feature_cache": {"cut": models.split.cut, "dtype": config.runtime.feature_cache_dtype} if models.split
        else {"off": models.cache_off_reason},
    }
    if spec.is_chief:
        # BackupAndRestore deletes its checkpoint but leaves the (empty) directory behind.
        try:
            if tf.io.gfile.exists(paths.backup):
                tf.io.gfile.rmtree(paths.backup)
        except tf.errors.OpError:
            pass  # a non-chief still removing its own temporary backup; harmless
        write_atomic(paths.summary, json.dumps(summary, indent=2))
        log.info("finished: %d epochs, best epoch %s (val_loss %.4f); model at %s",
                 summary["epochs_run"], summary["best_epoch"], summary["best_val_loss"] or float("nan"), paths.best_weights)
    else:
        shutil.rmtree(out.root, ignore_errors=True)
    return summary


def _run(data_uri: str, manifest: manifests.Manifest, spec: tfconfig.ClusterSpec, workdir: str, config: Config) -> dict:
    started = time.time()
    paths = Workdir(workdir)
    finished = read_summary(workdir)
    if finished:
        log.info("%s already finished training (%s epochs, best epoch %s); nothing to do. Train into a new workdir "
                 "to train again.", workdir, finished["epochs_run"], finished["best_epoch"])
        return finished
    check_or_write_config(paths, config, spec.is_chief)
    strategy = build_strategy(spec, config)
    plan = plan_data(data_uri, manifest, config)
    models = build_models(strategy, config)
    datasets = build_datasets(strategy, manifest, config, plan, models)
    # Non-chief workers write into a throwaway directory; BackupAndRestore handles them itself.
    out = paths if spec.is_chief else Workdir(tempfile.mkdtemp(prefix=f"xray-{spec.name}-"))
    if spec.is_chief:
        tf.io.gfile.makedirs(paths.root)
    fit(models, datasets, plan, build_callbacks(paths, out, spec, config, plan, models), paths, spec, config)
    return record(data_uri, paths, out, spec, config, models, started)
