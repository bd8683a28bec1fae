"""The command line as a user meets it: help, one-line errors with exit status 2, the summaries."""

import json
import subprocess

import pytest

from conftest import REPO, run_xray
from xray import tuner
from xray.trainer.config import ConfigError, preset


def test_help_lists_every_command_and_each_has_its_own_help():
    """README: "Every subcommand has --help"; the table of commands there is the list `xray --help` gives."""
    import re

    out = run_xray("--help").stdout
    commands = re.findall(r"^    ([a-z]+) {2,}", out, flags=re.M)
    readme = (REPO / "README.md").read_text()
    assert commands and set(commands) == set(re.findall(r"^\| `xray ([a-z]+)` \|", readme, flags=re.M))
    for command in commands:
        result = run_xray(command, "--help")
        assert result.stdout.startswith(f"usage: xray {command} "), command
        assert "options:" in result.stdout, command


def test_make_help_lists_every_target_the_documents_name():
    """README: "`make help` lists every target"; every `make X` in the README and docs/ is one of them."""
    import re

    listed = set(re.findall(r"^  make (\S+)", subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True,
                                                                text=True, check=True).stdout, flags=re.M))
    named = set()
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md"]:
        named |= set(re.findall(r"`make ([a-z][a-z-]*)", doc.read_text()))
    assert named and not named - listed, sorted(named - listed)


@pytest.mark.parametrize("args, message", [
    (["shards", "--src", "/nonexistent/images", "--out", "/tmp/x"], "source directory /nonexistent/images does not exist"),
    (["shards", "--src", ".", "--out", "/tmp/x", "--val-fraction", "1.5"], "--val-fraction 1.5 must be in [0, 1)"),
    (["train", "--data", "/nonexistent/shards", "--workdir", "/tmp/never", "--preset", "tiny"], "no manifest.json under /nonexistent/shards"),
    (["train", "--data", "x", "--workdir", "y", "epochs=abc"], "train.epochs='abc' is not a valid int"),
    (["train", "--data", "x", "--workdir", "y", "--workers", "0"], "--workers 0 must be at least 1"),
    (["evaluate", "--data", "x", "--workdir", "/nonexistent/run"], "no trained model at /nonexistent/run/best.weights.h5"),
    # s3:// does not exist in TensorFlow 2.21: refused at the boundary, for every path argument.
    (["train", "--data", "s3://b/shards", "--workdir", "/tmp/never"], "--data s3://b/shards: s3:// is not supported"),
    (["shards", "--src", ".", "--out", "s3://b/shards"], "Use gs://, a path on a PersistentVolume"),
    (["export", "--workdir", "/tmp/r", "--model-base", "s3://b/models"], "--model-base s3://b/models: s3://"),
    (["tune", "--data", "x", "--workdir", "s3://b/tune"], "--workdir s3://b/tune: s3:// is not supported"),
    # Hyperband's later rounds would not start from their earlier round's weights: refused.
    (["tune", "--data", "x", "--workdir", "/tmp/never", "--algorithm", "hyperband"], "--algorithm hyperband is refused"),
    (["preflight", "--data", "s3://b/s", "--out", "/tmp/p", "--offline"], "--data s3://b/s: s3://"),
    (["evaluate", "--data", "hdfs://n/s", "--workdir", "/tmp/r"], "hdfs:// is not supported; use a local path or gs://"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = run_xray(*args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_algorithm_with_parallel_starts_no_process():
    """`xray tune --algorithm hyperband --parallel 2` answers in one line from the launcher itself: no chief or
    worker is started only to refuse the same thing three times."""
    result = run_xray("tune", "--data", "x", "--workdir", "/tmp/never", "--algorithm", "hyperband", "--parallel", 2,
                      check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "xray tune: error: --algorithm hyperband is refused: " + tuner.REFUSED_ALGORITHMS["hyperband"]]


def test_train_on_missing_data_leaves_no_workdir(tmp_path):
    result = run_xray("train", "--data", tmp_path / "no-shards", "--workdir", tmp_path / "run", "--preset", "tiny",
                      check=False)
    assert result.returncode == 2 and "no manifest.json under" in result.stderr
    assert not (tmp_path / "run").exists()  # no config.json that a later run would be compared against


def test_synth_then_shards_print_summaries_and_write_the_manifest(tmp_path):
    synth = run_xray("synth", "--out", tmp_path / "s", "--num-patients", 12, "--seed", 1, "--image-size", 48).stdout
    assert "wrote" in synth and "PNEUMONIA images" in synth
    (tmp_path / "s/train/NORMAL/broken.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    shards = run_xray("shards", "--src", tmp_path / "s", "--out", tmp_path / "out", "--num-shards", 2).stdout
    assert "skipped 1 file(s):" in shards and "train/NORMAL/broken.jpeg" in shards
    assert "images/s" in shards
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["num_skipped"] == 1 and manifest["shards"]["train"]


def test_resume_with_a_different_config_is_refused(tmp_path):
    from xray.trainer.train import check_or_write_config
    from xray.trainer.workdir import Workdir

    paths = Workdir(str(tmp_path))
    check_or_write_config(paths, preset("tiny"), is_chief=True)
    check_or_write_config(paths, preset("tiny"), is_chief=False)  # same config: fine
    with pytest.raises(ConfigError, match=r"train.epochs: 2 -> 3"):
        check_or_write_config(paths, preset("tiny").override(["epochs=3"]), is_chief=True)


def test_errors_a_retry_cannot_fix_end_with_exit_2(shards_dir, tmp_path):
    """A Job's podFailurePolicy fails at once on exit 2: a bad worker count, unreachable ImageNet weights."""
    three = run_xray("train", "--data", shards_dir, "--workdir", tmp_path / "a", "--preset", "tiny", "batch_size=4",
                     env={"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]},
                                                   "task": {"type": "worker", "index": 0}})}, check=False, timeout=120)
    assert three.returncode == 2 and "Traceback" not in three.stderr
    assert "train.batch_size=4 does not split evenly over 3 workers: use 1, 2, 4 workers" in three.stderr
    # No route to the download (a proxy nobody listens on): the weights cannot be fetched, as on an offline node.
    offline = run_xray("train", "--data", shards_dir, "--workdir", tmp_path / "b", "--preset", "tiny",
                       "model.weights=imagenet", check=False, timeout=300,
                       env={"KERAS_HOME": str(tmp_path / "keras"), "HTTPS_PROXY": "http://127.0.0.1:9",
                            "https_proxy": "http://127.0.0.1:9"})
    assert offline.returncode == 2 and "Traceback" not in offline.stderr, offline.stderr[-2000:]
    assert "could not download the ImageNet weights" in offline.stderr and "model.weights=/path/to/that/file" in offline.stderr
    assert len([line for line in offline.stderr.splitlines() if line.startswith("xray train: error:")]) == 1


def test_the_batch_split_is_checked_by_the_config():
    preset("team").train.check_split(4)
    with pytest.raises(ConfigError, match="train.batch_size=16 does not split evenly over 3 workers: use 1, 2, 4, 8, 16"):
        preset("team").train.check_split(3)


@pytest.mark.parametrize("variables, workers", [([], "2"), (["TEST_WORKERS=0"], "0")])
def test_make_test_runs_two_workers_unless_told_one_process(variables, workers):
    """README: make test runs pytest on two xdist workers; TEST_WORKERS=0 runs it in one process."""
    dry = subprocess.run(["make", "-n", "test", *variables], cwd=REPO, capture_output=True, text=True, check=True)
    # Under `make test` itself the child make adds "make[1]: Entering/Leaving directory" lines: find pytest's.
    pytest_line = next(line for line in dry.stdout.splitlines() if " -m pytest " in line)
    assert f"-m pytest -n {workers} " in pytest_line


def test_make_train_remakes_the_demo_data_when_a_setting_changes(tmp_path):

    from conftest import REPO

    def plan(*variables):
        return subprocess.run(["make", "-n", "train", f"BUILD={tmp_path}", *variables], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout

    assert "xray synth --out" in plan()  # nothing made yet
    (tmp_path / ".demo-data-patients240-seed1-synth128-px64-shards4-val0.2-difficulty0.5").touch()
    assert "xray synth" not in plan() and "xray train" in plan()  # made with these settings: reused
    for change in ("PATIENTS=300", "SEED=2", "SYNTH_SIZE=256", "IMAGE_SIZE=96", "SHARDS=8", "DIFFICULTY=0.3", "VAL_FRACTION=0.1"):
        remade = plan(change)
        assert "xray synth --out" in remade and "xray shards" in remade, change
        assert f"rm -rf {tmp_path}/synth {tmp_path}/shards" in remade and f"{tmp_path}/run" in remade
    own = plan(f"DATA={tmp_path}/mine")  # your own shards are never remade (or removed)
    assert "xray synth" not in own and "rm -rf" not in own

