"""Real multi-process MultiWorkerMirroredStrategy runs on 127.0.0.1 (the same entry point as the pods)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import REPO, run_xray

pytestmark = pytest.mark.slow

TINY = ["--preset", "tiny"]
# A head wide enough for the factored kernel gradient (trainer/allreduce.py) to be used at 32 px, batch 4.
FACTORED = "model.dense1_units=256"


def _history(workdir):
    path = workdir / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _worker_summaries(stdout):
    """The JSON summary line each worker prints at the end, by worker index."""
    found = {}
    for match in re.finditer(r"^\[worker (\d+)\] (\{.*\})$", stdout, re.M):
        found[int(match.group(1))] = json.loads(match.group(2))
    return found


def test_two_processes_train_agree_and_only_the_chief_writes(shards_dir, tmp_path):
    workdir = tmp_path / "run"
    # bfloat16 all-reduce and the factored head gradient: the custom train step keeps both workers in lockstep too.
    result = run_xray("train", "--data", shards_dir, "--workdir", workdir, *TINY, "--workers", 2, "train.epochs=2",
                      "runtime.gradient_allreduce=bfloat16", FACTORED)
    assert "gradients between replicas: all-reduce in bfloat16, dense1's kernel gradient as gathered factors" in result.stdout
    summaries = _worker_summaries(result.stdout)
    assert set(summaries) == {0, 1}, result.stdout[-3000:]
    assert summaries[0]["workers"] == 2
    # Both workers saw the same globally reduced metrics, epoch by epoch.
    for key in ("epochs_run", "best_epoch", "best_val_loss", "best_val_auc"):
        assert summaries[0][key] == pytest.approx(summaries[1][key]), key
    assert sorted(p.name for p in workdir.iterdir()) == [
        ".xray.lock", "best.weights.h5", "config.json", "history.csv", "history.jsonl", "tensorboard", "training.json"]
    history = _history(workdir)
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(row["workers"] == 2 and "val_auc" in row and "lr" in row for row in history)
    assert "2 replica(s) in sync; global batch 4 = 2.0 per replica" in result.stdout
    assert result.stdout.count("[worker 0] xray-epoch {") == 2  # what `xray jobs status` reads from the chief's log
    assert "[worker 1] xray-epoch" not in result.stdout

    again = run_xray("train", "--data", shards_dir, "--workdir", workdir, *TINY, "--workers", 2, "train.epochs=2",
                     "runtime.gradient_allreduce=bfloat16", FACTORED)
    assert "already finished training" in again.stdout
    assert _history(workdir) == history

    evaluation = run_xray("evaluate", "--data", shards_dir, "--workdir", workdir)
    assert "roc_auc" in evaluation.stdout and "confusion" in evaluation.stdout
    metrics = json.loads((workdir / "eval/metrics.json").read_text())
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    assert metrics["test"]["num_examples"] == sum(manifest["counts"]["test"].values())
    assert 0.0 <= metrics["test"]["threshold"] <= 1.0
    assert metrics["plots"] == ["roc.png", "pr.png", "confusion.png", "calibration.png", "learning_curve.png"]
    assert 0 <= metrics["test"]["metrics"]["brier"] <= 1 and len(metrics["test"]["ci95"]["brier"]) == 2
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "learning_curve.png", "predictions.csv"):
        assert (workdir / "eval" / name).stat().st_size > 0


def _start(shards_dir, workdir, workers, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "xray", "train", "--data", str(shards_dir), "--workdir", str(workdir), *TINY,
         "--workers", str(workers), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_a_worker_after_epochs(process, workdir, num_epochs, worker_index=1, timeout=300):
    """Waits for ``num_epochs`` history lines, then SIGKILLs one worker process (as a node failure would)."""
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"\[launcher\] worker (\d+) pid (\d+)", "".join(lines))}
        if len(_history(workdir)) >= num_epochs and worker_index in pids:
            # The launcher starts the worker module with the resolved job, not the command line again.
            assert psutil.Process(pids[worker_index]).cmdline()[1:3] == ["-m", "xray.trainer.worker"]
            os.kill(pids[worker_index], signal.SIGKILL)
            break
        if process.poll() is not None:
            raise AssertionError("training ended before the kill:\n" + "".join(lines)[-3000:])
        time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("no epoch finished in time:\n" + "".join(lines)[-3000:])
    code = process.wait(timeout=120)
    reader.join(timeout=10)
    return code, "".join(lines)


@pytest.mark.parametrize("resume_workers", [2, 1], ids=["same-command", "shrunk-to-1-worker"])
def test_killed_worker_resumes_from_backup_without_repeating_epochs(shards_dir, tmp_path, resume_workers):
    workdir = tmp_path / "run"
    # The backup is written by the factored-gradient model; resuming on 1 worker restores it into the plain one.
    extra = ["train.epochs=5", "train.early_stopping_patience=10", FACTORED]
    code, output = _kill_a_worker_after_epochs(_start(shards_dir, workdir, 2, *extra), workdir, num_epochs=1)
    assert code != 0, "the launcher must fail when a worker dies"
    assert "exited with status" in output
    before = _history(workdir)
    assert before and (workdir / "backup").exists()
    assert not (workdir / "training.json").exists()

    result = run_xray("train", "--data", shards_dir, "--workdir", workdir, *TINY, "--workers", resume_workers, *extra)
    after = _history(workdir)
    assert [row["epoch"] for row in after] == [1, 2, 3, 4, 5], "an epoch was repeated or lost"
    assert after[: len(before)] == before  # finished epochs kept as they were, not retrained
    resumed = after[len(before):]
    assert {row["run_id"] for row in resumed} != {row["run_id"] for row in before}
    assert all(row["workers"] == resume_workers for row in resumed)
    summary = json.loads((workdir / "training.json").read_text())
    assert summary["epochs_run"] == 5 and len(summary["run_ids"]) == 2
    assert not (workdir / "backup").exists()
    assert f"{resume_workers} replica(s) in sync" in result.stdout


def _pod_like_workers(shards_dir, workdir, extra, ports):
    """Two workers started like two pods (TF_CONFIG each, no launcher watching them), on reserved ports."""
    from xray.trainer import tfconfig

    hosts = [f"127.0.0.1:{port}" for port in ports]
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(tfconfig.tf_config_for(hosts, index)), "XRAY_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "xray", "train", "--data", str(shards_dir), "--workdir", str(workdir), *TINY, *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


def _kill_worker_1_after_one_more_epoch(processes, workdir, timeout=300):
    seen = len(_history(workdir))
    deadline = time.monotonic() + timeout
    while len(_history(workdir)) <= seen:
        assert time.monotonic() < deadline and processes[0].poll() is None, "no epoch finished"
        time.sleep(0.1)
    processes[1].kill()
    processes[1].wait()
    code = processes[0].wait(timeout=180)  # on its own: nothing signals the survivor
    return code, processes[0].stdout.read()


def test_a_survivor_exits_with_the_peer_lost_code_on_its_own_until_the_budget_is_spent(shards_dir, tmp_path, reserved_ports):
    workdir = tmp_path / "run"
    extra = ["train.epochs=200", "train.early_stopping_patience=200", "runtime.max_peer_losses=1"]
    workers = _pod_like_workers(shards_dir, workdir, extra, reserved_ports(2))
    code, output = _kill_worker_1_after_one_more_epoch(workers, workdir)
    assert code == 75, output[-3000:]  # xray.trainer.train.EXIT_PEER_LOST: the Job ignores it and replaces the pods
    assert "lost contact with a peer" in output and "exiting with 75" in output
    assert json.loads((workdir / "peer_losses.json").read_text())["count"] == 1
    # The replacement group resumes; a second loss spends the budget (1): exit 76, which fails the Job.
    workers = _pod_like_workers(shards_dir, workdir, extra, reserved_ports(2))
    code, output = _kill_worker_1_after_one_more_epoch(workers, workdir)
    assert code == 76, output[-3000:]
    assert "lost a peer 2 times in this run (runtime.max_peer_losses=1); giving up with exit 76" in output
    assert json.loads((workdir / "peer_losses.json").read_text())["count"] == 2
