"""`make cluster-up` / `make cluster-down` with the real node: tear-down gives the machine back as it was."""

import json
import os
import subprocess

import pytest

from conftest import REPO, SESSION_CLUSTER_ROOT
from xray.localcluster import host
from xray.localcluster.controlplane import ControlPlane

pytestmark = pytest.mark.cluster


def _kubectl(kubeconfig, *args, input=None):
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=input, capture_output=True,
                          text=True, timeout=60)


def test_cluster_down_leaves_the_host_as_cluster_up_found_it(tmp_path):
    """Starts a cluster with its node (stopping the test session's own first, if it runs: one node per machine),
    runs a pod with volumes on it, and leaves it running for `make cluster-down` to clean up. Mounts, links,
    routes, iptables chains, top-level cgroups, sysctls, the runtime's fixed paths and processes compare equal."""
    session = ControlPlane(SESSION_CLUSTER_ROOT)
    restart = session.running()
    if restart:
        session.down()
    try:
        before = host.snapshot()
        build = tmp_path / "build"
        up = subprocess.run(["make", "cluster-up", f"BUILD={build}"], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        kubeconfig = build / "cluster" / "kubeconfig"
        state = json.loads((build / "cluster" / "state.json").read_text())
        during = host.snapshot()
        assert during != before and "xray0" in during["links"]  # the comparison below can see a change
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "left-running", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "xray.local/pause:3.10",
                                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                                         {"name": "config", "mountPath": "/config"}]}],
                        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}},
                                    {"name": "config", "configMap": {"name": "kube-root-ca.crt"}}]}}
        assert _kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(pod)).returncode == 0
        ready = _kubectl(kubeconfig, "wait", "--for=condition=Ready", "pod/left-running", "--timeout=120s")
        assert ready.returncode == 0, ready.stderr
        down = subprocess.run(["make", "cluster-down", f"BUILD={build}"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert down.returncode == 0 and "containerd" in down.stdout, down.stdout + down.stderr
        after = host.snapshot()
        for key in before:
            assert after[key] == before[key], f"{key} differs after cluster-down"
        for name, pid in state["pids"].items():
            assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3], name
        shims = subprocess.run(["pgrep", "-f", str(build / "cluster")], capture_output=True, text=True).stdout.split()
        assert not shims, shims
    finally:
        if restart:
            session.up()


def test_make_image_builds_the_dockerfile_on_a_local_base():
    """`make image` as a user runs it, with BASE and PIP_CERT, against a real Docker engine (the private one the
    local cluster builds with; its layers are cached from the tests' image, so this takes seconds when the sources
    did not change). The image runs `xray` as uid 10001 and holds no CA bundle of the build."""
    from xray.localcluster import images

    with images.Engine() as engine:
        engine.ensure_base(images.base_archive())
        result = subprocess.run(["make", "image", "IMAGE=xray.local/make-image", "TAG=test", f"BASE={images.BASE_IMAGE}",
                                 "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"], cwd=REPO, capture_output=True, text=True,
                                env=dict(engine.env, DOCKER_BUILDKIT="0"), timeout=1800)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert not (REPO / ".pip-cert.pem").exists()  # staged for the build only
        ran = engine.run("run", "--rm", "--network=none", "--entrypoint", "sh", "xray.local/make-image:test", "-c",
                         "id -u; xray --help | head -1; ls /src/.pip-cert.pem 2>&1 || true")
        engine.run("image", "rm", "xray.local/make-image:test", check=False)
    lines = ran.stdout.splitlines()
    assert lines[0] == "10001" and lines[1].startswith("usage: xray"), ran.stdout
    assert "No such file" in ran.stdout  # the build stage's CA bundle is not in the final image


def test_a_second_image_build_waits_for_the_first_engine_and_a_failed_start_cleans_up(tmp_path):
    """Two private engines on one data root corrupt it: a second `Engine` (another `make image`, a parallel test)
    says it waits and starts nothing while the lock is held. Once let in, its daemon dies at start (a stand-in
    `dockerd` that exits 1): one ImageError, its temporary root removed and the lock free again."""
    import fcntl

    cache, bin_dir, tmp = tmp_path / "cache", tmp_path / "bin", tmp_path / "tmp"
    for path in (cache / "images", bin_dir, tmp):
        path.mkdir(parents=True)
    for name in ("dockerd", "docker"):  # a daemon that dies at once, and a client that finds no daemon
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    holder = open(cache / "docker.lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    script = ("import fcntl\n"
              "from xray.localcluster import images\n"
              "try:\n"
              "    with images.Engine(log=lambda m: print(m, flush=True)):\n"
              "        pass\n"
              "except images.ImageError as e:\n"
              "    print(e, flush=True)\n"
              "fcntl.flock(open(images.CACHE / 'docker.lock', 'a'), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
              "print('lock free', flush=True)\n")
    env = dict(os.environ, XRAY_K8S_CACHE=str(cache), PATH=f"{bin_dir}:/usr/bin:/bin", TMPDIR=str(tmp))
    env.pop("DOCKER_HOST", None)
    second = subprocess.Popen([os.sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert "waiting for another image build" in second.stdout.readline()
        assert not list(tmp.iterdir())  # no engine started while the first build holds the lock
        holder.close()  # the first build ends
        assert second.stdout.readline().startswith("the private Docker engine did not start")
        assert second.stdout.readline().strip() == "lock free"
        assert second.wait(timeout=60) == 0
    finally:
        second.kill()
        holder.close()
    assert not list(tmp.iterdir())  # the engine's exec root and socket folder went with the failed start
