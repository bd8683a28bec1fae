"""KerasTuner search around the documented defaults; writes trials.csv/json and best_config.json.

    xray tune --data build/shards --workdir build/tune --preset demo --max-trials 4 --parallel 2

Space (bounds overridable): dropout1 in [0, 0.6] (default 0.3), dropout2 in [0, 0.6] (0.2),
l2 log-uniform in [1e-6, 1e-2] (1e-4), learning_rate log-uniform in [1e-5, 1e-3] (1e-4), the
defaults being the preset's values. With Bayesian optimisation and random search the first trial is
exactly the defaults, so the search can only improve on them.

Roles (KerasTuner's distributed mode): with KERASTUNER_TUNER_ID=chief this process is the oracle;
with another id it is a worker that runs trials; with neither it searches alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import sys
import threading
import time

import tensorflow as tf

from trainer import cluster, feature_cache
from data import manifest as manifests
from data import reader
from data.atomic import write_atomic
from trainer.config import Config
from trainer.kerasapi import keras
from trainer.model import build_model, compile_model
from tuner.kt import kt, tuner_utils
from tuner.space import OBJECTIVES, SearchOptions, SearchSpace, config_for

PROJECT = "search"


class XrayHyperModel(kt.HyperModel):
    """Builds through trainer.model, reads through data.reader; reports metrics at the best epoch."""

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


class _DefaultsFirst:
    """Mixin for an Oracle: the defaults as the first trial."""

    def populate_space(self, trial_id):
        defaults = {hp.name: hp.default for hp in self.hyperparameters.space}
        tried = [t.hyperparameters.values for tid, t in self.trials.items() if tid != trial_id]
        if defaults and not any(all(v.get(k) == d for k, d in defaults.items()) for v in tried):
            return {"status": "RUNNING", "values": defaults}
        return super().populate_space(trial_id)


class _Reporting:
    """Mixin for an Oracle: a progress line + files per finished trial, and which worker ran each trial."""

    report = None  # set by make_tuner: a callable(oracle) that writes the trial files

    def end_trial(self, trial):
        result = super().end_trial(trial)
        if self.report:
            self.report(self)
        return result

    def create_trial(self, tuner_id):
        """Records which worker (tuner id) was given each trial, for trials.json's ``worker`` column."""
        trial = super().create_trial(tuner_id)
        if trial.status == "RUNNING":
            self.trial_workers[trial.trial_id] = tuner_id
        return trial

    @property
    def trial_workers(self) -> dict:
        if "_trial_workers" not in self.__dict__:
            self._trial_workers = {}
        return self._trial_workers

    def get_state(self):
        return {**super().get_state(), "trial_workers": dict(self.trial_workers)}

    def set_state(self, state):
        super().set_state(state)
        self._trial_workers = dict(state.get("trial_workers", {}))


class DefaultsFirstBayesian(_DefaultsFirst, _Reporting, kt.oracles.BayesianOptimizationOracle):
    pass


class DefaultsFirstRandom(_DefaultsFirst, _Reporting, kt.oracles.RandomSearchOracle):
    pass


def make_tuner(hypermodel: XrayHyperModel, options: SearchOptions, workdir: str, restart: list[str] | None = None):
    """``restart``: the command this process re-executes itself as to continue in a fresh process (XrayTuner);
    None: it never restarts."""
    objective = kt.Objective(options.objective, OBJECTIVES[options.objective])
    common = dict(objective=objective, seed=options.seed, max_consecutive_failed_trials=3)
    oracle_cls = DefaultsFirstBayesian if options.algorithm == "bayesian" else DefaultsFirstRandom
    oracle = oracle_cls(max_trials=options.max_trials, **common)
    oracle.report = lambda o: write_reports(o, hypermodel, options, workdir)
    restart_policy()  # a bad XRAY_TUNE_* value stops here, before the first trial
    tuner = XrayTuner(oracle=oracle, hypermodel=hypermodel, directory=workdir, project_name=PROJECT, overwrite=False)
    tuner.restart_command = restart
    return tuner


TRIALS_PER_PROCESS_ENV = "XRAY_TUNE_TRIALS_PER_PROCESS"
MEMORY_ENV = "XRAY_TUNE_MEMORY_MB"
MEMORY_SHARE = 0.5  # of the machine's or the container's memory, when XRAY_TUNE_MEMORY_MB is not set


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
    trials (0: never). The command re-executed is ``restart_command`` (tuner.session's module with the same
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
        XrayTuner._rss_at_begin = _rss_mb_or_zero()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle has recorded the trial and the tuner state is saved
        XrayTuner.trials_here += 1
        rss = _rss_mb_or_zero()
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


def restart_policy() -> tuple[int | None, int]:
    """(trials per process from XRAY_TUNE_TRIALS_PER_PROCESS or None, memory budget in MB)."""
    count = os.environ.get(TRIALS_PER_PROCESS_ENV, "").strip()
    return (_non_negative_int(TRIALS_PER_PROCESS_ENV, count) if count else None), memory_budget_mb()


def _non_negative_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={text!r} must be a whole number >= 0 (unset it for the default)")
    return value


def memory_budget_mb() -> int:
    """XRAY_TUNE_MEMORY_MB, else MEMORY_SHARE of the smaller of the cgroup limit and the machine's memory."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        return _non_negative_int(MEMORY_ENV, text)
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # "max" or a huge number: no limit
            limits.append(int(value) // 2**20)
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError):
        pass
    return int(min(limits) * MEMORY_SHARE) if limits else 4096


# ----------------------------------------------------------------------------------------------------
# Reports: trials.csv, trials.json, best_config.json and a progress line.
# ----------------------------------------------------------------------------------------------------

TRIAL_FIELDS = ("dropout1", "dropout2", "l2", "learning_rate")


def trial_rows(oracle, objective: str) -> list[dict]:
    rows = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: _trial_order(item[0])):
        metrics = {name: trial.metrics.get_best_value(name) for name in trial.metrics.metrics}
        row = {"trial": trial_id, "status": trial.status, "worker": getattr(oracle, "trial_workers", {}).get(trial_id),
               "objective": trial.score,
               **{name: trial.hyperparameters.values.get(name) for name in TRIAL_FIELDS},
               "val_auc": metrics.get("val_auc"), "val_loss": metrics.get("val_loss"),
               "epochs": int(metrics["epochs"]) if metrics.get("epochs") is not None else None,
               "seconds": metrics.get("seconds")}
        rows.append(row)
    reverse = OBJECTIVES[objective] == "max"
    finished = [r for r in rows if r["objective"] is not None and not math.isnan(r["objective"])]
    for rank, row in enumerate(sorted(finished, key=lambda r: r["objective"], reverse=reverse), 1):
        row["rank"] = rank
    return rows


def _trial_order(trial_id: str):
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def write_reports(oracle, hypermodel: XrayHyperModel, options: SearchOptions, workdir: str,
                  announce: bool = True) -> list[dict]:
    rows = trial_rows(oracle, options.objective)
    tf.io.gfile.makedirs(workdir)
    write_atomic(f"{workdir}/trials.json", json.dumps(rows, indent=2))
    buffer = io.StringIO()
    columns = ["trial", "status", "worker", "rank", "objective", *TRIAL_FIELDS, "val_auc", "val_loss", "epochs", "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(f"{workdir}/trials.csv", buffer.getvalue())
    ranked = sorted((r for r in rows if "rank" in r), key=lambda r: r["rank"])
    if ranked:
        best = ranked[0]
        config = config_for(hypermodel.base, best)
        write_atomic(f"{workdir}/best_config.json", json.dumps(config.to_dict(), indent=2))
    done = [r for r in rows if r["status"] in ("COMPLETED", "FAILED", "INVALID")]
    last = max(done, key=lambda r: _trial_order(r["trial"])) if done else None
    if last and announce:
        score = f"{options.objective} {last['objective']:.4f}" if last["objective"] is not None else "FAILED"
        best_text = f"; best {ranked[0]['objective']:.4f} (trial {ranked[0]['trial']})" if ranked else ""
        print(f"[tune] trial {last['trial']} {last['status'].lower()}: {score}{best_text} "
              f"({len(done)} of {options.max_trials} done; rss {_rss_mb()} MB)", flush=True)
    return rows


def _rss_mb_or_zero() -> int:
    rss = _rss_mb()
    return rss if isinstance(rss, int) else 0


def _rss_mb() -> int | str:
    """Resident memory of this process (Linux), shown per trial: it must not grow trial after trial."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return "?"


def format_table(rows: list[dict], objective: str) -> str:
    ranked = sorted(rows, key=lambda r: (r.get("rank") is None, r.get("rank") or 0, _trial_order(r["trial"])))
    lines = [f"{'rank':>4s}  {'trial':>5s}  {'status':9s}  {objective:>9s}  {'val_auc':>7s}  {'dropout1':>8s}  "
             f"{'dropout2':>8s}  {'l2':>9s}  {'lr':>9s}  {'epochs':>6s}"]
    for r in ranked:
        number = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        lines.append(f"{r.get('rank', '-')!s:>4s}  {r['trial']:>5s}  {r['status']:9s}  {number(r['objective'], '9.4f')}  "
                     f"{number(r['val_auc'], '7.4f')}  {number(r['dropout1'], '8.3f')}  {number(r['dropout2'], '8.3f')}  "
                     f"{number(r['l2'], '9.2e')}  {number(r['learning_rate'], '9.2e')}  {number(r['epochs'], '6d')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Distributed roles.
# ----------------------------------------------------------------------------------------------------

ORACLE_WAIT_ENV = "XRAY_TUNE_ORACLE_WAIT_S"


def complete_tuner_id(env=os.environ) -> None:
    """In a Kubernetes Indexed Job every worker pod gets KERASTUNER_TUNER_ID=tuner; make it unique."""
    if env.get("KERASTUNER_TUNER_ID") == "tuner" and env.get("JOB_COMPLETION_INDEX", "").isdigit():
        env["KERASTUNER_TUNER_ID"] = f"tuner{env['JOB_COMPLETION_INDEX']}"


def role() -> str:
    complete_tuner_id()
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    if not tuner_id:
        return "alone"
    return "chief" if "chief" in tuner_id else "worker"


def _oracle_address() -> tuple[str, int]:
    host = os.environ.get("KERASTUNER_ORACLE_IP")
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if not host or not port:
        raise ValueError("KERASTUNER_TUNER_ID is set but KERASTUNER_ORACLE_IP/KERASTUNER_ORACLE_PORT are not")
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(port)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=3):
            return True
    except OSError:
        return False


def wait_for_oracle(deadline_s: float) -> None:
    """A worker that starts before the chief retries until ``deadline_s``, then fails with a clear error."""
    address = _oracle_address()
    deadline = time.monotonic() + deadline_s
    while not _reachable(address):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the tuner chief (oracle) at {address[0]}:{address[1]} did not answer within "
                               f"{deadline_s:.0f}s; is the chief running and KERASTUNER_ORACLE_IP/PORT right?")
        time.sleep(1)


def watch_oracle(interval_s: float = 5, misses: int = 3) -> threading.Thread:
    """KerasTuner's client waits up to an hour for a dead chief; stop the worker when the chief is gone."""
    address = _oracle_address()

    def watch():
        missed = 0
        while True:
            time.sleep(interval_s)
            missed = 0 if _reachable(address) else missed + 1
            if missed >= misses:
                print(f"[tune] the chief at {address[0]}:{address[1]} is gone; this worker stops", file=sys.stderr, flush=True)
                os._exit(3)

    thread = threading.Thread(target=watch, daemon=True, name="oracle-watch")
    thread.start()
    return thread


def run(data_uri: str, workdir: str, base: Config, options: SearchOptions, space: SearchSpace = SearchSpace(),
        restart: list[str] | None = None) -> list[dict]:
    """Searches (or continues a search in ``workdir``) in this process's role; returns the trial rows. ``restart``:
    the command that continues this search in a fresh process when memory runs short (see XrayTuner)."""
    current = role()
    cluster.configure_threads()  # XRAY_THREADS: the pod's CPU limit, or cores / processes locally
    if current == "worker":
        wait_for_oracle(float(os.environ.get(ORACLE_WAIT_ENV, "300")))
        watch_oracle()
    hypermodel = XrayHyperModel(base, space, options, data_uri)
    tuner = make_tuner(hypermodel, options, workdir, restart)
    tuner.search()
    if current == "worker":
        return []
    return write_reports(tuner.oracle, hypermodel, options, workdir, announce=False)
