"""Live label moves (`xray promote`) on two TF Serving replicas: two stand-in processes run with the
Deployment's flags over one models.config and one model base, as two pods over the models volume.

The stand-in follows TF Serving's source (tests/tfserving_stub/, docs/tfserving-conformance.md): a label may
only move to an AVAILABLE version, the file is re-applied at every poll, a failed load is retried and leaves the
old version serving. tests/test_k8s_real_node.py runs the same sequence on real pods through `make promote`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, run_xray, wait_for
from xray.serving import config as serving_config
from tfserving_stub import deployment_args

TESTS = Path(__file__).parent


class Replica:
    """One stand-in `tensorflow_model_server` process on its own ports."""

    def __init__(self, config: Path, batching: Path):
        from xray.trainer.ports import Reservation

        self._ports = Reservation(2)  # until stop(): no other process is given these numbers meanwhile
        self.grpc_port, self.rest_port = self._ports.ports
        args = [a for a in deployment_args() if not a.startswith(("--port=", "--rest_api_port=", "--model_config_file=",
                                                                  "--batching_parameters_file=",
                                                                  "--model_config_file_poll_wait_seconds="))]
        args += [f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", f"--model_config_file={config}",
                 f"--batching_parameters_file={batching}", "--model_config_file_poll_wait_seconds=1",
                 "--max_num_load_retries=1", "--load_retry_interval_micros=200000"]
        script = "import sys, tfserving_stub; sys.exit(tfserving_stub.main(sys.argv[1:]))"
        self.process = subprocess.Popen([sys.executable, "-c", script, *args], cwd=TESTS, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the stand-in exited: {self.process.stderr.read()}")
        try:
            return requests.get(f"{self.rest}/v1/models/xray/metadata", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def version_of(self, label: str) -> int | None:
        response = requests.get(f"{self.rest}/v1/models/xray/labels/{label}/metadata", timeout=10)
        return int(response.json()["model_spec"]["version"]) if response.status_code == 200 else None

    def stop(self):
        self.process.kill()
        self.process.wait()
        self._ports.release()


class Traffic(threading.Thread):
    """Predictions by label on every replica, all the time; every failure is kept."""

    def __init__(self, replicas, labels, image: bytes):
        super().__init__(daemon=True)
        self.replicas, self.labels, self.image = replicas, labels, image
        self.stop_event = threading.Event()
        self.sent, self.failures = 0, []

    def run(self):
        from xray.clients import ServingError
        from xray.clients.rest import RestClient

        while not self.stop_event.is_set():
            for replica in self.replicas:
                for label in list(self.labels):
                    try:
                        RestClient(replica.rest, label=label, retries=0).predict([self.image])
                        self.sent += 1
                    except ServingError as error:
                        self.failures.append(f"{replica.rest} {label}: {error}")

    def finish(self):
        self.stop_event.set()
        self.join(timeout=60)


@pytest.fixture
def two_replicas(model_base, tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    for version in ("1", "2"):
        (base / version).symlink_to(model_base / version, target_is_directory=True)
    # The offline label (no server running yet): what a fresh deployment starts from.
    run_xray("export", "--model-base", base, "--label", "stable", "--version", 1, "--serving-base-path", base)
    batching = tmp_path / "batching.config"
    serving_config.write_text_proto(serving_config.batching_config(), str(batching))
    replicas = [Replica(base / "models.config", batching) for _ in range(2)]
    try:
        for replica in replicas:
            wait_for("a replica to serve", replica.ready, 180, 0.2)
        yield base, replicas
    finally:
        for replica in replicas:
            replica.stop()


def promote(base, replicas, *args, check=True):
    grpc = [item for replica in replicas for item in ("--grpc", replica.grpc)]
    return run_xray("promote", "--model-base", base, *args, *grpc, "--wait", 120, check=check)


def test_canary_stable_rollback_and_a_broken_version_on_two_replicas(two_replicas, synth_dir):
    base, replicas = two_replicas
    image = sorted(synth_dir.glob("test/*/*.jpeg"))[0].read_bytes()
    assert [r.version_of("stable") for r in replicas] == [1, 1]
    traffic = Traffic(replicas, ["stable"], image)
    traffic.start()
    try:
        result = promote(base, replicas, "--label", "canary", "--version", 2)
        assert "stage: version 2 joins the version policy on 2 replica(s)" in result.stdout, result.stdout
        assert result.stdout.count("version 2 AVAILABLE") == 2 and "canary -> version 2" in result.stdout
        assert [r.version_of("canary") for r in replicas] == [2, 2]
        traffic.labels.append("canary")

        result = promote(base, replicas, "--label", "stable", "--from-label", "canary")
        assert "stage:" not in result.stdout  # 2 already serves: the label moves at once
        assert [r.version_of("stable") for r in replicas] == [2, 2]

        result = promote(base, replicas, "--label", "stable", "--rollback")
        assert "stable -> version 1 (was 2)" in result.stdout.replace("move: ", ""), result.stdout
        assert [r.version_of("stable") for r in replicas] == [1, 1]

        # A broken version 3: each replica retries its load, fails, and keeps serving; the label stays.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        result = promote(base, replicas, "--label", "stable", "--version", 3, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "replica 127.0.0.1:" in result.stderr and "could not load version 3" in result.stderr, result.stderr
        assert "stable still points where it did" in result.stderr
        assert [r.version_of("stable") for r in replicas] == [1, 1]
        config = serving_config.read_models_config(str(base / "models.config"))
        assert serving_config.labels_of(config) == {"stable": 1, "canary": 2}
        assert serving_config.staged_of(config) == set()  # the staging was undone in the file too

        # The servers poll models.config every second: it says what the RPCs said, so the labels hold.
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            assert [(r.version_of("stable"), r.version_of("canary")) for r in replicas] == [(1, 2), (1, 2)]
    finally:
        traffic.finish()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.sent > 20
    moves = json.loads((base / "label-history.json").read_text())
    assert [(m["label"], m["from"], m["to"]) for m in moves] == [
        ("stable", None, 1), ("canary", None, 2), ("stable", 1, 2), ("stable", 2, 1)]


def test_a_restarted_replica_comes_back_with_the_moved_labels(two_replicas):
    base, replicas = two_replicas
    promote(base, replicas, "--label", "canary", "--version", 2)
    replicas[0].stop()
    batching = base.parent / "batching.config"
    replicas[0] = Replica(base / "models.config", batching)
    wait_for("the restarted replica to serve", replicas[0].ready, 180, 0.2)
    # Its ports open once the newest version (2) is up, as TF Serving's do; version 1 may still be loading.
    wait_for("stable on the restarted replica", lambda: replicas[0].version_of("stable") == 1, 120, 0.2)
    assert replicas[0].version_of("canary") == 2


def test_promote_refuses_with_one_line(two_replicas, tmp_path):
    base, replicas = two_replicas
    result = promote(base, replicas, "--label", "stable", "--version", 9, check=False)
    assert result.returncode == 1 and "version 9 does not exist" in result.stderr and "Traceback" not in result.stderr
    result = promote(base, replicas, "--label", "canary", "--rollback", check=False)
    assert result.returncode == 1 and "no earlier version of canary" in result.stderr
    result = run_xray("promote", "--model-base", base, "--label", "stable", "--grpc", "nohost", check=False)
    assert result.returncode == 2 and "is not HOST:PORT" in result.stderr
    result = run_xray("promote", "--model-base", base, "--label", "stable", "--service", "xray-serving", check=False)
    assert result.returncode == 1 and "no address for service xray-serving" in result.stderr  # outside a cluster
    assert "Traceback" not in result.stderr
    result = run_xray("export", "--model-base", base, "--label", "stable", "--server", "http://x", check=False)
    assert result.returncode == 2 and "xray promote" in result.stderr


@pytest.mark.slow
def test_the_sequence_against_make_serve_in_docker(model_base, synth_dir, tmp_path, reserved_ports):
    """`make serve` in a Docker engine (the project's private dockerd, on the host network because that engine has
    no bridge) running the stand-in image, then `make promote-local` as the README gives it: canary -> 2, stable ->
    canary, rollback, a broken version 3 refused with the load error; predictions by label never fail."""
    import shutil

    from xray.localcluster import images

    models = tmp_path / "models"
    models.mkdir()
    for version in ("1", "2"):
        shutil.copytree(model_base / version, models / version)
    context = tmp_path / "standin-context"
    shutil.copytree(TESTS / "tfserving_standin", context)
    shutil.copytree(TESTS / "tfserving_stub", context / "tfserving_stub", ignore=shutil.ignore_patterns("__pycache__"))
    archive = images.derived_archive("tfserving-standin", context, log=lambda *_: None)
    reference = f"xray.local/tfserving-standin:{archive.stem.rsplit('-', 1)[1]}"
    grpc_port, rest_port = reserved_ports(2)
    with images.Engine(log=lambda *_: None) as engine:
        if engine.run("image", "inspect", reference, check=False).returncode != 0:
            engine.run("load", "-i", str(archive))
        env = dict(engine.env)
        common = [f"MODEL_BASE={models}", f"GRPC_PORT={grpc_port}", f"REST_PORT={rest_port}"]
        serve = subprocess.Popen(["make", "serve", *common, f"SERVING_CONFIG={tmp_path / 'serving-config'}",
                                  f"SERVING_IMAGE={reference}", "DOCKER_RUN_ARGS=--network=host",
                                  "SERVING_FLAGS=--load_retry_interval_micros=500000"],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        server = type("Served", (), {"rest": f"http://127.0.0.1:{rest_port}", "process": serve})()
        image = sorted(synth_dir.glob("test/*/*.jpeg"))[0].read_bytes()
        traffic = None
        try:
            def ready():
                if serve.poll() is not None:
                    raise AssertionError(f"make serve ended: {serve.stdout.read()[-3000:]}")
                try:
                    return requests.get(f"{server.rest}/v1/models/xray/metadata", timeout=5).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_for("make serve's server to answer", ready, 240, 0.5)

            def make_promote(*args, check=True):
                result = subprocess.run(["make", "promote-local", *common, *args], cwd=REPO, capture_output=True,
                                        text=True, timeout=300)
                assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
                return result

            def version_of(label):
                return Replica.version_of(server, label)

            make_promote("LABEL=stable", "VERSION=1")
            traffic = Traffic([server], ["stable"], image)
            traffic.start()
            result = make_promote("LABEL=canary", "VERSION=2")
            assert "version 2 AVAILABLE" in result.stdout and version_of("canary") == 2
            traffic.labels.append("canary")
            make_promote("LABEL=stable", "FROM=canary")
            assert version_of("stable") == 2
            make_promote("LABEL=stable", "ROLLBACK=1")
            assert version_of("stable") == 1
            (models / "3").mkdir()
            (models / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
            result = make_promote("LABEL=stable", "VERSION=3", check=False)
            assert result.returncode != 0 and "could not load version 3" in result.stderr, result.stderr[-2000:]
            assert f"replica localhost:{grpc_port}" in result.stderr and version_of("stable") == 1
        finally:
            if traffic is not None:
                traffic.finish()
            engine.run("rm", "-f", "xray-serving", check=False)
            serve.wait(timeout=60)
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.sent > 5
