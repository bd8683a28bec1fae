"""Real KerasTuner searches through the `xray tune` command line (tiny images, few trials)."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import REPO, run_xray
from xray.trainer.config import Config, preset

pytestmark = pytest.mark.slow
TINY = ["--preset", "tiny", "--epochs-per-trial", 1]


def _trials(workdir):
    return json.loads((workdir / "trials.json").read_text())


def test_search_starts_from_the_defaults_writes_reports_and_resumes(shards_dir, tmp_path):
    workdir = tmp_path / "tune"
    # A 1 MB budget: every trial's growth passes it, so the tuner continues in a fresh process after each.
    result = run_xray("tune", "--data", shards_dir, "--workdir", workdir, *TINY, "--max-trials", 3,
                      env={"XRAY_TUNE_MEMORY_MB": "1"})
    rows = _trials(workdir)
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    first = next(r for r in rows if r["trial"] == "0")
    defaults = preset("tiny")
    assert (first["dropout1"], first["dropout2"], first["l2"], first["learning_rate"]) == (
        defaults.model.dropout1, defaults.model.dropout2, defaults.model.l2, defaults.train.learning_rate)
    assert sorted(r["rank"] for r in rows) == [1, 2, 3]
    assert result.stdout.count("[tune] trial") == 3 and "rank  trial" in result.stdout
    # Memory does not pile up across trials (each fitted trial costs ~350 MB in one TF process; the
    # tuner continues in a fresh process before the budget would be passed).
    rss = [int(m) for m in re.findall(r"done; rss (\d+) MB\)", result.stdout)]
    assert len(rss) == 3 and max(rss) - min(rss) < 200, rss
    assert result.stdout.count("would pass the 1 MB budget); continuing in a fresh process") == 3
    assert (workdir / "trials.csv").read_text().splitlines()[0].startswith("trial,status,worker,rank,objective")

    best_row = next(r for r in rows if r["rank"] == 1)
    best = Config.load(str(workdir / "best_config.json"))  # loads in the trainer
    assert (best.model.dropout1, best.model.l2, best.train.learning_rate) == (
        best_row["dropout1"], best_row["l2"], best_row["learning_rate"])
    assert best.model.image_size == defaults.model.image_size  # the rest is the base preset

    # Resumed with room for many trials: the two new ones run in one process, memory growing between them.
    result = run_xray("tune", "--data", shards_dir, "--workdir", workdir, *TINY, "--max-trials", 5,
                      env={"XRAY_TUNE_MEMORY_MB": "100000"})
    assert "fresh process" not in result.stdout
    rss = [int(m) for m in re.findall(r"done; rss (\d+) MB\)", result.stdout)]
    assert len(rss) == 2 and rss[1] > rss[0], rss
    resumed = _trials(workdir)
    assert len(resumed) == 5
    def without_rank(row):
        return {key: value for key, value in row.items() if key != "rank"}

    # The earlier trials are kept as they were (only their rank may change); two new trials ran.
    assert [without_rank(r) for r in resumed if r["trial"] not in ("3", "4")] == [without_rank(r) for r in rows]


def test_crashing_trials_are_recorded_failed_and_the_search_goes_on(shards_dir, tmp_path):
    workdir = tmp_path / "tune"
    # Every sampled dropout1 is >= 1, which the model rejects when it is built: those trials crash.
    # Trial 0 is the defaults (dropout1=0.99, valid). Two crashes in a row stay below KerasTuner's
    # limit of three consecutive failures, so the search runs all three trials and ends normally.
    run_xray("tune", "--data", shards_dir, "--workdir", workdir, *TINY, "--max-trials", 3, "--algorithm", "random",
             "--range", "dropout1=1.0:1.5", "dropout1=0.99")
    rows = _trials(workdir)
    statuses = {r["trial"]: r["status"] for r in rows}
    assert statuses == {"0": "COMPLETED", "1": "FAILED", "2": "FAILED"}, statuses
    assert all(r["dropout1"] >= 1 for r in rows if r["status"] == "FAILED")
    assert all("rank" not in r for r in rows if r["status"] == "FAILED")
    assert json.loads((workdir / "best_config.json").read_text())["model"]["dropout1"] == 0.99


def test_chief_and_two_workers_record_every_trial_once(shards_dir, tmp_path):
    workdir = tmp_path / "tune"
    result = run_xray("tune", "--data", shards_dir, "--workdir", workdir, *TINY, "--max-trials", 4, "--parallel", 2)
    rows = _trials(workdir)
    assert sorted(r["trial"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert "[launcher] chief" in result.stdout and "[launcher] tuner1" in result.stdout
    # Both workers ran trials, as the chief's oracle recorded who was given which trial.
    assert {r["worker"] for r in rows} == {"tuner0", "tuner1"}, [(r["trial"], r["worker"]) for r in rows]


def test_worker_without_a_chief_fails_clearly(shards_dir, tmp_path):
    env = {"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "9",
           "XRAY_TUNE_ORACLE_WAIT_S": "2"}
    result = run_xray("tune", "--data", shards_dir, "--workdir", tmp_path, *TINY, env=env, check=False, timeout=120)
    assert result.returncode == 2
    assert "the tuner chief (oracle) at 127.0.0.1:9 did not answer within 2s" in result.stderr


def test_worker_stops_when_its_chief_goes_away(shards_dir, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = {"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    worker = subprocess.Popen([sys.executable, "-m", "xray", "tune", "--data", str(shards_dir), "--workdir", str(tmp_path),
                               "--preset", "tiny"], cwd=REPO, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listener.settimeout(120)
    connection, _ = listener.accept()  # the signal: the worker found its "chief" and connected to it
    assert worker.poll() is None
    connection.close()
    listener.close()  # the chief dies
    output, _ = worker.communicate(timeout=90)
    assert worker.returncode == 3, output[-2000:]
    assert f"the chief at 127.0.0.1:{port} is gone; this worker stops" in output


def test_trials_of_the_documented_fine_tuning_share_one_feature_cache(shards_dir, tmp_path):
    """Trials differ only in head hyperparameters: the first computes the frozen trunk's output, the others read it
    (each trial runs in a fresh process here, so the others read it from disk)."""
    cache = tmp_path / "cache"
    run_xray("tune", "--data", shards_dir, "--workdir", tmp_path / "tune", *TINY, "--max-trials", 3,
             "model.trainable_layers=10", "model.train_batchnorm=false", "train.augment=false",
             env={"XRAY_FEATURE_CACHE": str(cache), "XRAY_TUNE_TRIALS_PER_PROCESS": "1"})
    rows = _trials(tmp_path / "tune")
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    assert len(list(cache.glob("*.npz"))) == 2  # train and val, once for all three trials


@pytest.mark.parametrize("name, value", [("XRAY_TUNE_MEMORY_MB", "lots"), ("XRAY_TUNE_TRIALS_PER_PROCESS", "-1")])
def test_a_bad_restart_setting_is_one_line_before_any_trial(shards_dir, tmp_path, name, value):
    result = run_xray("tune", "--data", shards_dir, "--workdir", tmp_path / "tune", *TINY, "--max-trials", 2,
                      env={name: value}, check=False)
    assert result.returncode == 2 and f"{name}={value!r} must be a whole number >= 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "tune" / "trials.json").exists()


def test_the_default_memory_budget_is_half_of_the_smaller_limit(monkeypatch):
    from xray.tuner import restart

    monkeypatch.delenv("XRAY_TUNE_MEMORY_MB", raising=False)
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert 0 < restart.memory_budget_mb() <= machine // 2
    monkeypatch.setenv("XRAY_TUNE_MEMORY_MB", "1234")
    assert restart.restart_policy() == (None, 1234)
    monkeypatch.setenv("XRAY_TUNE_TRIALS_PER_PROCESS", "3")
    assert restart.restart_policy() == (3, 1234)


def test_the_library_refuses_hyperband_as_the_command_does():
    """xray.tuner.space.SearchOptions, for a search started from Python: the same one-line refusal as `xray tune`."""
    from xray.tuner import space

    with pytest.raises(ValueError, match="algorithm hyperband is refused: its later rounds would start from fresh"):
        space.SearchOptions(algorithm="hyperband")
    with pytest.raises(ValueError, match="choose one of bayesian, random"):
        space.SearchOptions(algorithm="grid")
    assert space.SearchOptions(algorithm="random").algorithm == "random"


# The KerasTuner privates xray.tuner.search relies on (tuner/kt.py says why), with the sha256 of their source in the
# pinned KerasTuner. A new KerasTuner that changes any of them fails here, before a search misbehaves.
KERASTUNER = "1.4.8"
PRIVATES = {"Tuner._populate_initial_space": "972f3defbc2e9f45", "Tuner._build_and_fit_model": "1be221e987732a41",
            "Tuner._deepcopy_callbacks": "1433df572cd547b2", "Tuner.run_trial": "a62b793008fd54db",
            "tuner_utils.TunerCallback": "dfdfa0299c19fd87"}


def test_the_kerastuner_privates_the_tuner_relies_on_are_the_pinned_ones():
    import hashlib
    import inspect

    from xray.tuner.kt import kt, tuner_utils

    assert kt.__version__ == KERASTUNER
    owners = {"Tuner": kt.Tuner, "tuner_utils": tuner_utils}
    digests = {}
    for name in PRIVATES:
        owner, attribute = name.split(".")
        digests[name] = hashlib.sha256(inspect.getsource(getattr(owners[owner], attribute)).encode()).hexdigest()[:16]
    assert digests == PRIVATES
