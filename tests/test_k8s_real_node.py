"""The cluster flow in real containers: the local cluster's real node (kubelet, containerd, runc, CNI bridge,
kube-proxy, CoreDNS; xray/localcluster/node.py) runs the project image built from the Dockerfile.

Each test goes through the commands the README gives a user (`make data-cluster`, `make train-cluster`, ...,
`xray predict` through `kubectl port-forward`), against real pods. Where a test needs something a user would not
do, its name and docstring say so (killing a container through the node's runtime; reading the volume from the
node's disk).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_xray, wait_for
from xray.localcluster import node as localnode

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

IMAGE, TAG = "xray.local/xray", "test"


def make(plane, target: str, *variables: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(plane.kubeconfig))
    return subprocess.run(["make", target, f"IMAGE={IMAGE}", f"TAG={TAG}", "WATCH_INTERVAL=2", *variables], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def get(plane, *args):
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def volume_dir(plane, namespace: str) -> Path:
    """The folder on the node's disk behind namespace/xray-data (a `local:` volume)."""
    claim = get(plane, "pvc", "xray-data", "-n", namespace)
    return Path(get(plane, "pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])


def run_pod(plane, namespace: str, name: str, script: str, timeout_s: float = 120) -> tuple[str, str]:
    """Runs `python -c script` in a pod of the project image; returns (phase, log)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "probe", "image": f"{IMAGE}:{TAG}", "command": ["python", "-c", script],
                                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}
    plane.kubectl("apply", "-f", "-", input=json.dumps(pod))
    phase = wait_for(f"pod {name} to finish", lambda: get(plane, "pod", name, "-n", namespace)["status"].get("phase")
                     in ("Succeeded", "Failed") and get(plane, "pod", name, "-n", namespace)["status"]["phase"],
                     timeout_s)
    return phase, plane.kubectl("logs", name, "-n", namespace).stdout


def fresh_namespace(plane, name: str) -> str:
    plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def cleanup(control_plane):
    """Namespaces a test names here are deleted after it: the node has 2 CPUs, and a test's pods (serving,
    TensorBoard, a pod stuck Pending) would hold CPU requests the next test needs."""
    names = []
    yield names.append
    for name in names:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    for name in names:
        wait_for(f"namespace {name} to go", lambda name=name: control_plane.kubectl(
            "get", "namespace", name, check=False).returncode != 0, 120)


# ----------------------------------------------------------------------------------------------------


def test_the_node_is_real_and_the_kwok_nodes_only_take_pods_that_ask(control_plane):
    nodes = get(control_plane, "nodes")["items"]
    (real,) = [n for n in nodes if n["metadata"]["name"] == localnode.NODE_NAME]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in real["status"]["conditions"])
    wide = control_plane.kubectl("get", "nodes", "-o", "wide").stdout
    assert re.search(rf"^{localnode.NODE_NAME}\s+Ready\b.*containerd://", wide, re.M), wide
    kwok = [n for n in nodes if n["metadata"]["name"].startswith("kwok-node-")]
    assert len(kwok) == 2 and all(n["spec"]["taints"][0]["key"] == "kwok.x-k8s.io/node" for n in kwok)


def test_pods_resolve_cluster_names_and_no_packet_leaves_the_machine(control_plane, project_image, cleanup):
    """A pod reaches the API through cluster DNS names, gets REFUSED for any other name (nothing is forwarded),
    and its connection to an address outside the pod range fails at once on the host. The outside address is a
    network namespace this test makes, with a listener the host itself can reach, so the refusal is the node's
    rule and not an absent server."""
    ns = fresh_namespace(control_plane, "netcheck")
    cleanup(ns)
    outside = "xray-outside"
    host_ip, peer_ip = "10.253.0.1", "10.253.0.2"
    subprocess.run(["ip", "netns", "add", outside], check=True)
    try:
        for args in (["ip", "link", "add", "xray-out0", "type", "veth", "peer", "name", "xray-out1", "netns", outside],
                     ["ip", "addr", "add", f"{host_ip}/30", "dev", "xray-out0"], ["ip", "link", "set", "xray-out0", "up"],
                     ["ip", "-n", outside, "addr", "add", f"{peer_ip}/30", "dev", "xray-out1"],
                     ["ip", "-n", outside, "link", "set", "xray-out1", "up"],
                     ["ip", "-n", outside, "link", "set", "lo", "up"],
                     ["ip", "-n", outside, "route", "add", "default", "via", host_ip]):
            subprocess.run(args, check=True)
        listener = subprocess.Popen(["ip", "netns", "exec", outside, sys.executable, "-c",
                                     "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); "
                                     "print('ready', flush=True); [s.accept()[0].close() for _ in iter(int, 1)]"],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "ready"
            socket.create_connection((peer_ip, 8080), timeout=5).close()  # the host reaches it: it is up
            script = f"""
import socket, time
print("api", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
try:
    socket.gethostbyname("example.com")
    print("outside-name resolved")
except socket.gaierror as error:
    print("outside-name refused", error.errno)
start = time.monotonic()
try:
    socket.create_connection(("{peer_ip}", 8080), timeout=20).close()
    print("outside connected")
except OSError as error:
    print(f"outside refused after {{time.monotonic() - start:.1f}} s: {{error}}")
"""
            phase, log = run_pod(control_plane, ns, "netcheck", script)
        finally:
            listener.kill()
            listener.wait()
    finally:
        subprocess.run(["ip", "link", "del", "xray-out0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", outside], capture_output=True)
    assert phase == "Succeeded", log
    assert "api 10.96.0.1" in log and "outside-name refused" in log, log
    refused = re.search(r"outside refused after ([\d.]+) s: .*(unreachable|refused)", log)
    assert refused and float(refused.group(1)) < 2, log


DUMP = "import json, os, sys; print(json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:]}))"


def test_the_kubelet_gives_each_train_pod_its_identity_env_and_args(control_plane, project_image, tmp_path, cleanup):
    """The train Job as `make train-cluster` renders it (2 workers, the local overlay), on the real node, with one
    change a user would not make: the container's command prints the environment and arguments the kubelet gave
    it instead of training (its args, env, envFrom and downward-API fields untouched). From what the kubelet
    resolved, each pod must get its index, its CPU share and the TF_CONFIG the trainer builds; and its argv must
    be what tests/kubelet_standin.py (used where a Job's command runs on this machine's files) makes of the same
    objects."""
    from kubelet_standin import container_env, expand
    from xray.trainer import tfconfig
    from xray.cluster import render

    ns = fresh_namespace(control_plane, "kubelet-env")
    cleanup(ns)
    step = make(control_plane, "volume", f"NAMESPACE={ns}", f"BUILD={tmp_path / 'build'}")
    assert step.returncode == 0, step.stdout[-2000:] + step.stderr[-2000:]
    out = render.render_kustomization(render.RenderRequest("train", image=f"{IMAGE}:{TAG}", workers=2, namespace=ns),
                                      tmp_path / "k8s")
    objects = render.kustomize(out)
    (job,) = [o for o in objects if o["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    standin_argv = expand(container["args"], container_env(objects, container))
    container["command"] = ["python", "-c", DUMP]
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    name = job["metadata"]["name"]
    wait_for(f"job {name} to complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in get(control_plane, "job", name, "-n", ns).get("status", {}).get("conditions", [])), 300, 1)
    pods = get(control_plane, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"]
    seen = {}
    for pod in pods:
        dump = json.loads(control_plane.kubectl("logs", pod["metadata"]["name"], "-n", ns).stdout)
        env, index = dump["env"], int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        assert env["JOB_COMPLETION_INDEX"] == str(index)
        limit = container["resources"]["limits"]["cpu"]
        assert env["XRAY_THREADS"] == limit  # limits.cpu through resourceFieldRef (a whole number here)
        spec = tfconfig.resolve(env)
        workers = [f"{name}-{i}.xray-train-workers:2222" for i in range(2)]
        assert spec.tf_config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        assert spec.is_chief == (index == 0)
        assert dump["argv"] == standin_argv and not any("$(" in a for a in dump["argv"]), dump["argv"]
        seen[index] = pod["spec"]["nodeName"]
    assert seen == {0: localnode.NODE_NAME, 1: localnode.NODE_NAME}


# The whole walk-through is one test (each step needs the one before), and it is the longest: one pytest process
# took 490-540 s for it (setup included); on two workers, with the other worker training beside it on the same
# 2 cores, 800 s here and more than the 900 s default on CI (stop 31). Its own limit is the sum it may need, not
# a hang guard: each make step below has its own 900 s timeout, and each wait inside them its own deadline.
@pytest.mark.timeout(1800)
def test_the_cluster_flow_on_real_pods(control_plane, project_image, standin_image, synth_dir, tmp_path, cleanup):
    """The README's cluster walk-through on the real node, make target by make target, in a fresh namespace:
    upload through `kubectl exec`, shards, 2 tuning trials, 2 workers that find each other by DNS, a worker
    killed mid-run (through the node's runtime, as the kernel's OOM killer or a node problem would), export,
    serving through its real probes, predictions through `kubectl port-forward`, status, logs, TensorBoard."""
    ns = "flow"
    cleanup(ns)
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    common = [f"NAMESPACE={ns}", f"BUILD={tmp_path / 'build'}"]

    def step(target, *variables, timeout=900):
        result = make(control_plane, target, *common, *variables, timeout=timeout)
        assert result.returncode == 0, f"make {target}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        assert "violate" not in result.stderr, result.stderr
        return result

    data = step("data-cluster", f"SRC={synth_dir}")
    assert "train: sending" in data.stderr and "SUCCEEDED" in data.stdout
    volume = volume_dir(control_plane, ns)
    # The receiver in the pod verified every file and wrote the split's index from what arrived.
    index = json.loads((volume / "incoming" / "chest_xray" / "train" / ".xray-index.json").read_text())
    assert len(index) == len(list((synth_dir / "train").rglob("*.jpeg")))
    assert json.loads((volume / "shards" / "manifest.json").read_text())["shards"]["train"]

    # The ImageNet weights once onto the volume (a stand-in file: any HDF5 bytes; the demo preset trains from
    # scratch): what every training and tuning pod finds on its XRAY_WEIGHTS_PATH instead of downloading.
    weights = tmp_path / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(300_000))
    placed = step("weights-cluster", f"WEIGHTS={weights}")
    assert "weights on the volume: /mnt/xray/weights/" in placed.stdout
    assert (volume / "weights" / weights.name).read_bytes() == weights.read_bytes()

    tune = step("tune-cluster", "PARALLEL=2", "TRIALS=2", "OVERRIDES=train.epochs=1")
    assert "SUCCEEDED" in tune.stdout
    assert (volume / "runs" / "tune" / "best_config.json").exists()

    # Training: 2 workers; once the first epoch is done, worker 1's container is killed on the node.
    train = subprocess.Popen(["make", "train-cluster", f"IMAGE={IMAGE}", f"TAG={TAG}", "WATCH_INTERVAL=2", "WORKERS=2",
                              "OVERRIDES=train.epochs=4", *common], cwd=REPO, env=dict(os.environ, **env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = volume / "runs" / "train" / "history.jsonl"
    try:
        wait_for("the first finished epoch", lambda: history.exists() and history.read_text().strip(), 900, 2)
        (pod,) = [p for p in get(control_plane, "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=xray-train")["items"]
                  if p["spec"]["hostname"] == "xray-train-1" and p["status"]["phase"] == "Running"]
        # Worker 1's log followed across its replacement, as a user runs it beside the run.
        follow = subprocess.Popen([str(REPO / ".venv" / "bin" / "xray"), "jobs", "logs", "xray-train", "-n", ns,
                                   "--index", "1", "-f"], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        localnode.Node(control_plane).ctr("tasks", "kill", "--signal", "SIGKILL", container)
        out, err = train.communicate(timeout=1200)
    finally:
        if train.poll() is None:
            train.kill()
        if "follow" in locals() and follow.poll() is None and train.returncode != 0:
            follow.kill()
    assert train.returncode == 0, out[-4000:] + err[-4000:]
    assert "SUCCEEDED" in out
    followed, follow_err = follow.communicate(timeout=120)  # it ends with the Job
    assert follow.returncode == 0, follow_err
    assert f"--- pod {pod['metadata']['name']} was replaced by xray-train-1-" in followed, followed[-3000:]
    after = followed.split("; following it ---", 1)[1]
    # The replacement's log from its start to the summary `xray train` prints when the run has finished, through the
    # same command (worker 1 prints no per-epoch lines: Keras' progress is the chief's).
    assert "absl::InitializeLog" in after[:300] and '"seconds_this_run"' in after
    # --previous: the log of the pod it replaced, the killed one (no summary: it never finished), not the replacement's.
    previous = run_xray("jobs", "logs", "xray-train", "-n", ns, "--index", "1", "--previous", env=env).stdout
    current = run_xray("jobs", "logs", "xray-train", "-n", ns, "--index", "1", env=env).stdout
    assert previous.strip() and '"seconds_this_run"' not in previous and '"seconds_this_run"' in current
    assert previous[:300] in followed.split("; following it ---", 1)[0]
    epochs = [json.loads(line)["epoch"] for line in history.read_text().splitlines() if line.strip()]
    assert epochs == [1, 2, 3, 4], epochs  # resumed from the backup: no finished epoch trained twice
    pods = get(control_plane, "pods", "-n", ns, "-l", "batch.kubernetes.io/job-name=xray-train")["items"]
    killed = [p for p in pods if p["metadata"]["name"] == pod["metadata"]["name"]][0]
    assert killed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert len(pods) > 2  # the group was replaced
    logs = step("logs", "JOB=xray-train")
    assert "Epoch" in logs.stdout  # TensorFlow's own progress lines, printed inside the chief's pod
    status = step("status", "JOB=xray-train")
    assert f"\njob {ns}/xray-train: SUCCEEDED (completed 2/2)\n" in status.stdout, status.stdout

    export = step("export-cluster")
    assert "SUCCEEDED" in export.stdout and (volume / "models" / "1" / "saved_model.pb").exists()

    step("deploy-serving", f"SERVING_IMAGE={standin_image}", "REPLICAS=2")
    with port_forward(control_plane, ns, "svc/xray-serving", 8500, 8501) as (grpc_port, rest_port):
        films = sorted((synth_dir / "test").rglob("*.jpeg"))[:3]
        for transport in (["--grpc", f"127.0.0.1:{grpc_port}"], ["--rest", f"http://127.0.0.1:{rest_port}"]):
            result = run_xray("predict", *films, *transport, "--format", "jsonl", env=env)
            rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
            assert len(rows) == 3 and all(0 <= r["probability"] <= 1 and r["label"] in ("NORMAL", "PNEUMONIA")
                                          for r in rows), result.stdout
    promote_on_two_replicas(control_plane, ns, common, step, volume, films[0].read_bytes())
    step("tensorboard")
    with port_forward(control_plane, ns, "svc/xray-tensorboard", 6006) as (port,):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"TensorBoard" in response.read()


def promote_on_two_replicas(plane, ns: str, common: list[str], step, volume: Path, image: bytes) -> None:
    """Issue 21's sequence on two serving pods, through make: a second export, canary -> 2, stable -> canary,
    stable rolled back, a broken version 3 refused with the pod and the load error named. Predictions by label
    go to each pod (its own port-forward) all along; none may fail. The broken version is written onto the
    volume from the node's disk (no user command makes a broken SavedModel)."""
    import threading

    from xray.clients import ServingError
    from xray.clients.rest import RestClient

    export = step("export-cluster")
    assert "SUCCEEDED" in export.stdout and (volume / "models" / "2" / "saved_model.pb").exists()

    def serving_pods():
        pods = get(plane, "pods", "-n", ns, "-l", "xray.io/role=serving")["items"]
        ready = [p for p in pods if p["metadata"].get("deletionTimestamp") is None and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return sorted(p["metadata"]["name"] for p in ready) if len(ready) == 2 else None

    names = wait_for("two ready serving pods (the autoscaler's minimum)", serving_pods, 300, 2)
    forwards = [port_forward(plane, ns, f"pod/{name}", 8501) for name in names]
    urls = [f"http://127.0.0.1:{forward.__enter__()[0]}" for forward in forwards]
    labels, failures, sent = ["stable"], [], [0]
    stop = threading.Event()
    runner = threading.Thread(target=lambda: traffic(), daemon=True)

    def traffic():
        while not stop.is_set():
            for url in urls:
                for label in list(labels):
                    try:
                        RestClient(url, label=label, retries=0, timeout=30).predict([image])
                        sent[0] += 1
                    except ServingError as error:
                        failures.append(f"{url} {label}: {error}")

    def version_of(url, label):
        return RestClient(url, label=label, retries=0).metadata()["version"]

    try:
        step("promote", "LABEL=stable", "VERSION=1")  # the first label
        assert [version_of(url, "stable") for url in urls] == [1, 1]
        runner.start()
        result = step("promote", "LABEL=canary", "VERSION=2")
        assert "SUCCEEDED" in result.stdout and result.stdout.count("version 2 AVAILABLE") == 2, result.stdout
        assert all(name in result.stdout for name in names)  # the Job's messages name the pods
        assert [version_of(url, "canary") for url in urls] == [2, 2]
        labels.append("canary")
        step("promote", "LABEL=stable", "FROM=canary")
        assert [version_of(url, "stable") for url in urls] == [2, 2]
        step("promote", "LABEL=stable", "ROLLBACK=1")
        assert [version_of(url, "stable") for url in urls] == [1, 1]
        broken = volume / "models" / "3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.chown(broken, 10001, 10001)
        result = make(plane, "promote", *common, "LABEL=stable", "VERSION=3")
        assert result.returncode != 0, result.stdout
        assert "could not load version 3" in result.stdout and any(
            f"replica {name}" in result.stdout for name in names), result.stdout[-3000:]
        assert [version_of(url, "stable") for url in urls] == [1, 1]
        models_config = (volume / "models" / "models.config").read_text()
        assert "versions: 3" not in models_config and 'key: "stable"' in models_config
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(timeout=120)  # its last requests finish before the forwards close under them
        for forward in forwards:
            forward.__exit__(None, None, None)
    assert failures == [], failures[:5]
    assert sent[0] > 10


class port_forward:
    """`kubectl port-forward TARGET :p1 :p2 ...` on free local ports; yields the local ports in order."""

    def __init__(self, plane, namespace: str, target: str, *ports: int):
        self.args = ["kubectl", f"--kubeconfig={plane.kubeconfig}", "-n", namespace, "port-forward", target,
                     *[f":{p}" for p in ports]]
        self.count = len(ports)

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        local = []
        while len(local) < self.count:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"kubectl port-forward ended: {self.process.stderr.read()}")
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            if found:
                local.append(int(found.group(1)))
        return tuple(local)

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)


# ----------------------------------------------------------------------------------------------------
# What make says when a pod cannot run: the reason, within a minute, one line, a non-zero exit.
# ----------------------------------------------------------------------------------------------------

STUCK = {
    # An image no registry serves: the "registry" is a closed port on this machine (no lookup leaves it).
    "missing-image": ("train-cluster", ["IMAGE=127.0.0.1:1/xray", "TAG=missing", "WORKERS=1"],
                      r"(ErrImagePull|ImagePullBackOff): .*127\.0\.0\.1:1/xray:missing"),
    # A GPU worker: only the (tainted) KWOK nodes have GPUs, and the real node has none.
    "no-node-fits": ("train-cluster", ["OVERLAY=gpu", "WORKERS=1"], r"FailedScheduling: 0/3 nodes are available"),
    # A claim of a storage class that has no volume: it stays Pending, the pods unschedulable.
    "unbound-claim": ("train-cluster", ["STORAGE_CLASS=xray-empty", "WORKERS=1"],
                      r"FailedScheduling: .*unbound immediate PersistentVolumeClaims"),
    # TensorBoard's command in an image that does not have it (the pause image): the container fails at every start.
    "crash-loop": ("tensorboard", ["IMAGE=xray.local/pause", "TAG=3.10"], r"(CrashLoopBackOff|RunContainerError)"),
    # Serving before any export: the read-only volume has no models/ folder for the Deployment's subPath mount.
    "serving-before-export": ("deploy-serving", ["SERVING_IMAGE=xray.local/pause:3.10"],
                              r"CreateContainerConfigError: .*subPath.*\"models\""),
    # An image of a public registry: the node pulls from no registry (a closed local port stands for them all).
    "public-image": ("deploy-serving", [], r"(ErrImagePull|ImagePullBackOff): .*tensorflow/serving:2\.21\.0.*127\.0\.0\.1:1"),
}


@pytest.mark.parametrize("case", sorted(STUCK))
def test_make_names_why_a_pod_cannot_run(control_plane, project_image, tmp_path, cleanup, case):
    target, variables, reason = STUCK[case]
    cleanup(f"stuck-{case}")
    if case == "unbound-claim":
        control_plane.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "xray-empty"},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}))
    start = time.monotonic()
    result = make(control_plane, target, f"NAMESPACE=stuck-{case}", f"BUILD={tmp_path / 'build'}", "STUCK_AFTER=20",
                  *variables, timeout=300)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and "Error 4" in result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert re.search(reason, line), line
    assert elapsed < 120, elapsed  # named within a minute or so of the pod's first status, not after 10 minutes
    assert "RUNNING" not in result.stdout  # a pod that never ran is never reported as running


def watched_job(plane, cleanup, name: str, script: str, resources: dict, backoff_limit: int):
    """A one-container Job of the project image running ``python -c script`` in a fresh namespace, followed by
    `xray jobs watch` to its end; returns the watch's CompletedProcess."""
    ns = fresh_namespace(plane, name)
    cleanup(ns)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
           "spec": {"backoffLimit": backoff_limit, "template": {"spec": {"restartPolicy": "Never", "containers": [{
               "name": "worker", "image": f"{IMAGE}:{TAG}", "command": ["python", "-c", script],
               "resources": resources}]}}}}
    plane.kubectl("apply", "-f", "-", input=json.dumps(job))
    return run_xray("jobs", "watch", name, "-n", ns, "--interval", "2", "--stuck-after", "60",
                    env={"KUBECONFIG": str(plane.kubeconfig)}, check=False, timeout=240)


def test_an_oom_killed_worker_is_named_by_jobs_watch(control_plane, project_image, cleanup):
    """A container that outgrows its memory limit: the kernel kills it, `xray jobs watch` says so and exits 4."""
    result = watched_job(control_plane, cleanup, "stuck-oom", "b = bytearray(512 << 20); import time; time.sleep(60)",
                         {"requests": {"memory": "64Mi"}, "limits": {"memory": "96Mi"}}, backoff_limit=3)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"OOMKilled: container worker was killed for memory \(limit 96Mi\)", result.stderr), result.stderr


def test_a_failed_job_s_reason_comes_with_jobs_watch(control_plane, project_image, cleanup):
    """A Job whose container exits 2 after saying why: `xray jobs watch` (what every make *-cluster target ends
    with) exits 1 and prints the failed pod's exit status and the last lines of its log."""
    result = watched_job(control_plane, cleanup, "failing",
                         "print('step one'); print('error: no trained model at /mnt/x'); exit(2)",
                         {"requests": {"cpu": "50m", "memory": "64Mi"}}, backoff_limit=0)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"pod failing-\w+ \(exit 2\), the last lines of its log:\n  step one\n  error: no trained model "
                     r"at /mnt/x", result.stderr), result.stderr


def test_the_volume_step_keeps_an_existing_claim(control_plane, tmp_path, cleanup):
    """README step 2 with a storage class, then any later step (each runs make volume without it): the claim is
    kept as it is. Asking it for another class or for an overlay's access modes it lacks is one line, exit 2."""
    cleanup("keep")
    common = ["NAMESPACE=keep", f"BUILD={tmp_path / 'build'}"]
    first = make(control_plane, "volume", *common, f"STORAGE_CLASS={localnode.STORAGE_CLASS}")
    assert first.returncode == 0, first.stderr
    again = make(control_plane, "volume", *common)
    assert again.returncode == 0, again.stderr
    assert f"claim xray-data in namespace keep exists (class {localnode.STORAGE_CLASS}, ReadWriteOnce, 5Gi" in again.stderr
    assert "immutable" not in again.stderr
    other = make(control_plane, "volume", *common, "STORAGE_CLASS=standard-rwx")
    (line,) = [line for line in other.stderr.splitlines() if line.startswith("xray cluster: error:")]
    assert other.returncode != 0 and "a claim's class cannot change (STORAGE_CLASS=standard-rwx)" in line
    assert "kubectl -n keep delete pvc xray-data" in line
    gpu = make(control_plane, "volume", *common, "OVERLAY=gpu")
    (line,) = [line for line in gpu.stderr.splitlines() if line.startswith("xray cluster: error:")]
    assert gpu.returncode != 0 and "overlay gpu needs ReadWriteMany" in line
    assert get(control_plane, "pvc", "xray-data", "-n", "keep")["spec"]["storageClassName"] == localnode.STORAGE_CLASS
