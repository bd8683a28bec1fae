"""Shared fixtures: a small synthetic data set and its shards, made once per test session; the local
Kubernetes cluster (xray/localcluster: control plane, a real node, KWOK nodes), started once for the tests
marked `cluster`, and the images its node runs.

`make test` runs on two pytest-xdist workers: each test module goes to one worker whole (its module fixtures, such
as a serving stand-in, start once), and the modules that use the machine's one real node or its container runtime
(MACHINE_MODULES) go to the same worker, first. The session's data, run and exported models are made once for both
workers (`_made_once`)."""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xray import trainer  # noqa: F401  (selects tf-keras before TensorFlow is imported)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.process: the helper the tests share with the benchmarks
from bench.process import run_xray  # noqa: E402,F401  (tests import it from here)


def _project_packages() -> tuple[str, ...]:
    """The top-level packages the wheel installs: pyproject.toml's [tool.setuptools.packages.find] include."""
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return tuple(pattern.rstrip("*") for pattern in include)


PACKAGES = _project_packages()
# The modules whose tests use the machine's one real node (marked `cluster`), and test_promote, whose Docker engine
# shares the runtime's fixed paths with the node (/run/containerd: each removes it when it made it): under xdist
# they run one after the other on one worker.
MACHINE_MODULES = ("tests/test_k8s_live.py", "tests/test_k8s_real_node.py", "tests/test_localcluster.py",
                   "tests/test_promote.py")


def pytest_xdist_make_scheduler(config, log):
    """Each test module goes to one worker whole; MACHINE_MODULES together, as one unit."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "machine" if module in MACHINE_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Under xdist, longest first: MACHINE_MODULES (the other worker takes the rest meanwhile), then the modules with
    tests marked `slow`, then the others in their order (a short module last keeps the two workers' ends close)."""
    if not hasattr(config, "workerinput"):
        return
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.nodeid.split("::")[0] not in MACHINE_MODULES,
                                 item.nodeid.split("::")[0] not in slow))


def pytest_runtest_setup(item):
    """A test marked `cluster` outside MACHINE_MODULES fails: under xdist it could start a second node."""
    module = item.nodeid.split("::")[0]
    if item.get_closest_marker("cluster") and module not in MACHINE_MODULES:
        pytest.fail(f"{module} has tests marked cluster: add it to MACHINE_MODULES in tests/conftest.py", pytrace=False)


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """make(folder) once per test run: under xdist the workers share one folder beside their own temporary roots,
    the first one to ask makes it while the others wait on its lock; without xdist, a folder of this session."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp(name)
        make(out)
        return out
    shared = tmp_path_factory.getbasetemp().parent
    out, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that failed half-way
            out.mkdir()
            make(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from xray.trainer.synth import synthesize

    return _made_once(tmp_path_factory, "synth",
                      lambda out: synthesize(out, num_patients=40, seed=1, image_size=64))


@pytest.fixture(scope="session")
def shards_dir(synth_dir, tmp_path_factory):
    """`xray shards` on synth_dir, in its own process: TensorFlow's thread pools then never start in the test process
    for tests that only read the manifest (a process that forks after they started, as mutmut does, hangs)."""
    return _made_once(tmp_path_factory, "shards", lambda out: run_xray(
        "shards", "--src", synth_dir, "--out", out, "--num-shards", 4, "--val-fraction", 0.2, "--seed", 0,
        "--image-size", 32))


@pytest.fixture(scope="session")
def trained_workdir(shards_dir, tmp_path_factory):
    """A finished run as `xray train` leaves it (config, best weights, training.json), without the training time."""
    return _made_once(tmp_path_factory, "run", lambda out: _finished_run(out, shards_dir))


def _finished_run(workdir: Path, shards_dir: Path) -> None:
    import json

    from xray.trainer.config import preset
    from xray.trainer.kerasapi import keras
    from xray.trainer.model import build_model
    from xray.trainer.workdir import Workdir

    config = preset("tiny")
    paths = Workdir(str(workdir))
    config.save(paths.config)
    keras.utils.set_random_seed(0)
    build_model(config.model).save_weights(paths.best_weights)
    (workdir / "training.json").write_text(json.dumps({"data": str(shards_dir), "epochs_run": 1, "best_epoch": 1}))


@pytest.fixture(scope="session")
def model_base(trained_workdir, tmp_path_factory):
    """Two exported versions (1 and 2) of that run, as `xray export` writes them."""
    from xray.serving import export

    def make(base):
        export.export(export.ExportRequest(str(trained_workdir), str(base)), log=lambda *_: None)
        export.export(export.ExportRequest(str(trained_workdir), str(base), force=True), log=lambda *_: None)

    return _made_once(tmp_path_factory, "models", make)


def wait_for(what: str, predicate, timeout_s: float = 120, interval_s: float = 0.5):
    """The predicate's first true value, polled until the timeout (a cluster's state, not a sleep)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def reserved_ports():
    """``take(n)``: n 127.0.0.1 ports that no other process can be given until this test ends (xray.trainer.ports:
    below the ephemeral range, each held by a lock), for servers that are told their port on the command line."""
    from xray.trainer.ports import Reservation

    held = []

    def take(count: int) -> list[int]:
        held.append(Reservation(count))
        return held[-1].ports

    yield take
    for reservation in held:
        reservation.release()


# This session's local cluster: a root of its own, never one that an earlier (perhaps killed) session left.
SESSION_CLUSTER_ROOT = REPO / "build" / f"cluster-pytest-{os.getpid()}"


@pytest.fixture(scope="session")
def control_plane(request):
    """The local cluster as `make cluster-up` starts it: etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler on free 127.0.0.1 ports, the real node xray-node (kubelet, containerd, CNI bridge, kube-proxy,
    CoreDNS) and two KWOK nodes (tainted: only pods that tolerate the taint land there).

    Same code as `make cluster-up`, under a root of this session's own (build/cluster-pytest-PID) so that it
    neither uses nor stops a cluster the user or an earlier session started; its logs stay there when a test
    failed. Fails, never skips, when the binaries cannot be built or the node cannot start.
    """
    import shutil

    from xray.localcluster.controlplane import ControlPlane

    plane = ControlPlane(SESSION_CLUSTER_ROOT)
    plane.up()
    yield plane
    plane.down()
    if not request.session.testsfailed:
        shutil.rmtree(SESSION_CLUSTER_ROOT, ignore_errors=True)


PROJECT_IMAGE = "xray.local/xray:test"
STANDIN_IMAGE = "xray.local/tfserving-standin:test"


def _on_node(plane, image: str) -> bool:
    from xray.localcluster import images
    from xray.localcluster.node import Node

    return images.normalize(image) in Node(plane).ctr("images", "ls", "-q").stdout.split()


@pytest.fixture
def project_image(control_plane):
    """The project image built from the Dockerfile (cached by content in ~/.cache/xray/images) and loaded into
    the node as xray.local/xray:test, the way `make image-load IMAGE=xray.local/xray TAG=test` does (once, unless
    the node was restarted since)."""
    if _on_node(control_plane, PROJECT_IMAGE):
        return PROJECT_IMAGE
    result = subprocess.run(["make", "image-load", "IMAGE=xray.local/xray", "TAG=test",
                             f"CLUSTER_ROOT={control_plane.root}"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return PROJECT_IMAGE


@pytest.fixture
def standin_image(control_plane, project_image, tmp_path_factory):
    """The TF Serving stand-in (tests/tfserving_stub/) as an image on top of the project image
    (tests/tfserving_standin/Dockerfile), loaded into the node by `make standin-load` as a user would: the real
    tensorflow/serving cannot be pulled here."""
    if _on_node(control_plane, STANDIN_IMAGE):
        return STANDIN_IMAGE

    build = tmp_path_factory.mktemp("standin-build")
    result = subprocess.run(["make", "standin-load", f"STANDIN_IMAGE={STANDIN_IMAGE}", f"BUILD={build}",
                             f"CLUSTER_ROOT={control_plane.root}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"make standin-load:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return STANDIN_IMAGE


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA of our own, a server certificate for 127.0.0.1/localhost and a client certificate, by openssl."""
    root = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
        "-subj", "/CN=xray test CA")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (root / f"{name}.ext").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return root
