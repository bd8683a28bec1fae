"""KerasTuner search around the documented defaults; writes trials.csv/json and best_config.json.

    xray tune --data build/shards --workdir build/tune --preset demo --max-trials 4 --parallel 2

Space (bounds overridable): dropout1 in [0, 0.6] (default 0.3), dropout2 in [0, 0.6] (0.2),
l2 log-uniform in [1e-6, 1e-2] (1e-4), learning_rate log-uniform in [1e-5, 1e-3] (1e-4), the
defaults being the preset's values. With Bayesian optimisation and random search the first trial is
exactly the defaults, so the search can only improve on them.

Roles (KerasTuner's distributed mode): with KERASTUNER_TUNER_ID=chief this process is the oracle;
with another id it is a worker that runs trials; with neither it searches alone.

Here: the hypermodel, the tuner and run(). The other parts: xray.tuner.space (space, options), xray.tuner.oracles,
xray.tuner.restart (when to continue in a fresh process), xray.tuner.roles, xray.tuner.reports, xray.tuner.session (processes).
"""

from __future__ import annotations

import os
import sys
import time

from xray.trainer import tfconfig, feature_cache
from xray.data import manifest as manifests
from xray.data import reader
from xray.trainer.config import Config
from xray.trainer.kerasapi import keras
from xray.trainer.model import build_model, compile_model
from xray.tuner.kt import kt, tuner_utils
from xray.tuner.oracles import DefaultsFirstBayesian, DefaultsFirstRandom
from xray.tuner.reports import write_reports
from xray.tuner.restart import TRIALS_PER_PROCESS_ENV, restart_policy, rss_mb_or_zero
from xray.tuner.roles import ORACLE_WAIT_ENV, role, wait_for_oracle, watch_oracle
from xray.tuner.space import OBJECTIVES, SearchOptions, SearchSpace, config_for

PROJECT = "search"


class XrayHyperModel(kt.HyperModel):
    """Builds through xray.trainer.model, reads through xray.data.reader; reports metrics at the best epoch."""

    def __init__(self, base: Config, space: SearchSpace, options: SearchOptions, data_uri: str):
        super().__init__(name="xray")
        self.base, self.space, self.options, self.data_uri = base, space, options, data_uri
        self.manifest = manifests.read(data_uri)
        self.manifest.check_shards(("train", "val"))
        for warning in self.manifest.check_for_model(base.model.image_size):  # raises if stale
            print(f"warning: {warning}", file=sys.stderr)

    def values(self, hp) -> dict:
        base, space = self.base, self.space
        return {
            "dropout1": hp.Float("dropout1", *space.dropout1, default=base.model.dropout1),
            "dropout2": hp.Float("dropout2", *space.dropout2, default=base.model.dropout2),
            "l2": hp.Float("l2", *space.l2, sampling="log", default=base.model.l2),
            "learning_rate": hp.Float("learning_rate", *space.learning_rate, sampling="log", default=base.train.learning_rate),
        }

    def declare_hyperparameters(self, hp):
        self.values(hp)

    def build(self, hp):
        config = config_for(self.base, self.values(hp))
        # Every trial starts from the same initial weights: trials differ by their hyperparameters only, and with
        # the same frozen trunk they share its feature cache (trainer/feature_cache.py).
        keras.utils.set_random_seed(config.train.seed)
        return compile_model(build_model(config.model), config.train)

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        config = config_for(self.base, self.values(hp))
        batch = config.train.batch_size
        size = config.model.image_size
        weights = self.manifest.class_weights()
        features = None
        if feature_cache.why_not(config) is None:
            # Train tail + head on the frozen trunk's cached output: computed by the first trial, read by the others.
            split = feature_cache.Split(model)
            model = compile_model(split.cached, config.train)
            features = feature_cache.source(split, self.manifest, config)
        train = reader.dataset(self.manifest, "train", batch, True, image_size=size, seed=config.train.seed,
                               class_weights=weights, augment=config.train.augment, features=features)
        val = reader.dataset(self.manifest, "val", batch, False, image_size=size, features=features)
        steps = config.train.steps_per_epoch or self.manifest.steps("train", batch)
        monitor = self.options.objective
        stop = keras.callbacks.EarlyStopping(monitor=monitor, mode=OBJECTIVES[monitor], patience=self.options.patience)
        started = time.monotonic()
        history = model.fit(train, epochs=epochs or self.options.epochs_per_trial or config.train.epochs,
                            initial_epoch=initial_epoch, steps_per_epoch=steps, validation_data=val,
                            callbacks=[*(callbacks or []), stop], verbose=0).history
        scores = history[monitor]
        best = (min if OBJECTIVES[monitor] == "min" else max)(range(len(scores)), key=scores.__getitem__)
        # Report the best epoch's metrics (not the last), with the trial's length and duration.
        metrics = {key: float(values[best]) for key, values in history.items() if values}
        metrics.update({"epochs": float(len(scores)), "seconds": round(time.monotonic() - started, 1)})
        return metrics


def make_tuner(hypermodel: XrayHyperModel, options: SearchOptions, workdir: str, restart: list[str] | None = None):
    """``restart``: the command this process re-executes itself as to continue in a fresh process (XrayTuner);
    None: it never restarts."""
    objective = kt.Objective(options.objective, OBJECTIVES[options.objective])
    common = dict(objective=objective, seed=options.seed, max_consecutive_failed_trials=3)
    oracle_cls = DefaultsFirstBayesian if options.algorithm == "bayesian" else DefaultsFirstRandom
    oracle = oracle_cls(max_trials=options.max_trials, **common)
    oracle.report = lambda o: write_reports(o, hypermodel.base, options, workdir)
    restart_policy()  # a bad XRAY_TUNE_* value stops here, before the first trial
    tuner = XrayTuner(oracle=oracle, hypermodel=hypermodel, directory=workdir, project_name=PROJECT, overwrite=False)
    tuner.restart_command = restart
    return tuner


class XrayTuner(kt.Tuner):
    """KerasTuner's Tuner, continuing in a fresh process before memory runs short.

    Memory grows by one model per fitted trial in TF 2.21 / tf-keras 2.21, whatever is cleared:
    measured +350 MB resident per trial (tiny preset: 1.26 GB after trial 1, 3.09 GB after six; about
    +400 MB per seed-preset trial), with KerasTuner's clear_session, an extra clear_session + gc.collect,
    and with the model's compiled functions and optimizer dropped; no Keras model stays reachable, so the
    memory is held below Python. The fix that works is a fresh process: the process re-executes itself with
    the same arguments and environment, and the search continues from its saved state (same PID, so a
    launcher or a pod sees nothing but a log line). When: after a trial, if one more trial's growth (the
    largest seen here) would take the resident memory past the budget, ``XRAY_TUNE_MEMORY_MB`` or half of
    the container's limit (cgroup) or of the machine's memory. A process start costs ~6 s, which short
    trials on cached features feel; ``XRAY_TUNE_TRIALS_PER_PROCESS=N`` instead restarts after every N
    trials (0: never). The command re-executed is ``restart_command`` (xray.tuner.session's module with the same
    job); without one the process never restarts.
    """

    restart_command: list[str] | None = None
    trials_here = 0
    growth_mb = 0
    _rss_at_begin = 0

    def _populate_initial_space(self):
        """The space has no conditional hyperparameters: declaring them is enough. KerasTuner's default also builds
        the whole model to discover conditional ones (1.7 s at 224 px, in every process)."""
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial, *args, **kwargs):
        """KerasTuner's run_trial without its per-trial checkpoint (SaveBestEpoch): it wrote the trial model's
        weights at every better epoch (0.9 s and ~120-350 MB each at 224 px) for ``get_best_models``, which
        nothing here calls: the result of a search is best_config.json, trained with ``xray train``."""
        callbacks = self._deepcopy_callbacks(kwargs.pop("callbacks", []))
        callbacks.append(tuner_utils.TunerCallback(self, trial))
        return [self._build_and_fit_model(trial, *args, callbacks=callbacks, **kwargs)]

    def on_trial_begin(self, trial):
        XrayTuner._rss_at_begin = rss_mb_or_zero()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle has recorded the trial and the tuner state is saved
        XrayTuner.trials_here += 1
        rss = rss_mb_or_zero()
        XrayTuner.growth_mb = max(XrayTuner.growth_mb, rss - XrayTuner._rss_at_begin)
        limit, budget = restart_policy()
        if limit is not None:
            restart = limit > 0 and XrayTuner.trials_here >= limit
            why = f"{TRIALS_PER_PROCESS_ENV}={limit}"
        else:
            restart = rss + XrayTuner.growth_mb > budget
            why = f"one more trial (+{XrayTuner.growth_mb} MB) would pass the {budget} MB budget"
        if restart and self.restart_command:
            print(f"[tune] {XrayTuner.trials_here} trial(s) in this process (rss {rss} MB; {why}); "
                  "continuing in a fresh process to return their memory", flush=True)
            sys.stderr.flush()
            os.execv(self.restart_command[0], self.restart_command)


def run(data_uri: str, workdir: str, base: Config, options: SearchOptions, space: SearchSpace = SearchSpace(),
        restart: list[str] | None = None) -> list[dict]:
    """Searches (or continues a search in ``workdir``) in this process's role; returns the trial rows. ``restart``:
    the command that continues this search in a fresh process when memory runs short (see XrayTuner)."""
    current = role()
    tfconfig.configure_threads()  # XRAY_THREADS: the pod's CPU limit, or cores / processes locally
    if current == "worker":
        wait_for_oracle(float(os.environ.get(ORACLE_WAIT_ENV, "300")))
        watch_oracle()
    hypermodel = XrayHyperModel(base, space, options, data_uri)
    tuner = make_tuner(hypermodel, options, workdir, restart)
    tuner.search()
    if current == "worker":
        return []
    return write_reports(tuner.oracle, hypermodel.base, options, workdir, announce=False)
