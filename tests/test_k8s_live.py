"""The Kubernetes side against a real control plane (xray/localcluster: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler built from Kubernetes' own modules), on its simulated KWOK nodes.

What is real here: the API server's validation and Pod Security admission, the Job controller (indexes,
hostnames, podFailurePolicy, replacements), the Deployment controller, the scheduler, the EndpointSlice
controller, and every call `xray` and `make` make. What is not: these pods run on KWOK nodes (the tests add
the toleration for their taint and select them), so they complete or fail when KWOK's stages say (exit code
from the pod-container-running-failed annotations): shapes and failures the real node cannot hold or would
take minutes to show. The same flow in real containers: tests/test_k8s_real_node.py.
"""

import json
import os
import subprocess
import time

import pytest
import yaml

from conftest import REPO, run_xray, wait_for

pytestmark = pytest.mark.cluster

IMAGE = "registry.example.com/xray:0.1.0"
OVERLAYS = sorted((p.parent.name, p.name) for p in (REPO / "xray" / "k8s" / "overlays").glob("*/*")
                  if p.name not in ("namespace", "storage"))
CHAOS = "pod-container-running-failed.stage.kwok.x-k8s.io"
COMPLETE_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
NODE_TAINT = "kwok.x-k8s.io/node"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def get(plane, *args):
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def namespace(plane, name: str, tmp_path=None) -> str:
    """The storage step (`make volume`): the namespace, restricted, and its claim, bound to a test volume that
    KWOK's pods can use (no node affinity)."""
    plane.provide_volume(name, on_node=False)
    out = (tmp_path or REPO / "build" / "k8s-live") / f"storage-{name}"
    run_xray("preflight", "--component", "storage", "--namespace", name, "--out", out,
             env={"KUBECONFIG": str(plane.kubeconfig)})
    plane.kubectl("apply", "-k", str(out))
    assert get(plane, "namespace", name)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    wait_for(f"claim xray-data in {name} to bind",
             lambda: get(plane, "pvc", "xray-data", "-n", name)["status"].get("phase") == "Bound")
    return name


def render(plane, tmp_path, component: str, overlay: str = "local", ns: str = "xray", workers: int = 2,
           *extra: str) -> list[dict]:
    """`xray preflight` against the real API server, then the rendered objects (kubectl kustomize)."""
    out = tmp_path / f"{overlay}-{component}"
    run_xray("preflight", "--component", component, "--overlay", overlay, "--image", IMAGE, "--workers", workers,
             "--namespace", ns, "--out", out, *extra, env={"KUBECONFIG": str(plane.kubeconfig)})
    rendered = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def on_kwok(objects: list[dict]) -> list[dict]:
    """Every pod template (and pod) tolerates the KWOK nodes' taint and selects them: simulated, not the real node."""
    for obj in objects:
        spec = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"] if "template" in obj.get(
            "spec", {}) else None
        if spec is not None:
            spec.setdefault("tolerations", []).append({"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"})
            spec["nodeSelector"] = {**spec.get("nodeSelector", {}), "type": "kwok"}
    return objects


def apply(plane, objects: list[dict]) -> subprocess.CompletedProcess:
    return plane.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in on_kwok(objects)))


def job_state(plane, ns: str, name: str) -> str | None:
    job = get(plane, "job", name, "-n", ns)
    for condition in job["status"].get("conditions", []):
        if condition["status"] == "True" and condition["type"] in ("Complete", "Failed"):
            return condition["type"]
    return None


def job_pods(plane, ns: str, name: str) -> list[dict]:
    return get(plane, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={name}")["items"]


def train_job(objects: list[dict]) -> dict:
    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == "xray-train"]
    return job


def hold_running(job: dict, seconds: int) -> None:
    """KWOK completes a Job's pod after this delay (default 1-5 s). Its jitter is the delay's upper bound
    (sigs.k8s.io/kwok pkg/utils/lifecycle Stage.Delay), so both are set."""
    annotations = job["spec"]["template"]["metadata"].setdefault("annotations", {})
    annotations[COMPLETE_DELAY] = annotations[COMPLETE_DELAY.replace("/delay", "/jitter-delay")] = f"{seconds}s"


# ----------------------------------------------------------------------------------------------------


def test_server_is_kubernetes_134_with_ready_kwok_nodes(control_plane):
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.34.") and version["minor"] == "34"
    nodes = get(control_plane, "nodes")["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    assert len(ready) >= 2


@pytest.mark.parametrize("overlay, component", OVERLAYS, ids=[f"{o}-{c}" for o, c in OVERLAYS])
def test_every_overlay_is_admitted_and_its_controllers_create_pods(control_plane, tmp_path, overlay, component):
    ns = namespace(control_plane, f"ov-{overlay}-{component}")
    extra = []
    if component == "promote":  # make promote moves a label on a running TF Serving: pre-flight wants one there
        apply(control_plane, render(control_plane, tmp_path, "serving", overlay, ns))
        extra = ["--label", "stable", "--version", "1"]
    objects = render(control_plane, tmp_path, component, overlay, ns, 2, *extra)
    result = apply(control_plane, objects)
    assert "violate" not in result.stderr, result.stderr  # Pod Security warns on apply before pods are refused
    for obj in objects:  # every object exists on the server as applied
        if obj["kind"] != "Namespace":
            get(control_plane, obj["kind"], obj["metadata"]["name"], "-n", ns)
    jobs = [o["metadata"]["name"] for o in objects if o["kind"] == "Job"]
    for name in jobs:
        wait_for(f"job {name} to complete", lambda: job_state(control_plane, ns, name) == "Complete")
    for deployment in [o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"]:
        control_plane.kubectl("rollout", "status", f"deployment/{deployment}", "-n", ns, "--timeout=120s")
    for pod in [o["metadata"]["name"] for o in objects if o["kind"] == "Pod"]:
        control_plane.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "-n", ns, "--timeout=120s")
    events = get(control_plane, "events", "-n", ns)["items"]
    refused = [e for e in events if e["reason"] in ("FailedCreate", "FailedScheduling")]
    assert not refused, [e["message"] for e in refused]
    created = {e["reason"] for e in events}
    assert {"SuccessfulCreate", "Scheduled"} <= created or component == "upload" and "Scheduled" in created


def test_a_privileged_pod_is_refused_in_the_same_namespace(control_plane):
    ns = namespace(control_plane, "psa-check")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    result = control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr and "privileged" in result.stderr


def test_indexed_job_pods_get_their_index_hostname_and_a_published_name(control_plane, tmp_path):
    """The Job controller's side of a worker's identity, at 4 workers (more than the real node holds): the index,
    hostname and subdomain of each pod, and the EndpointSlice that makes the names resolve. What the kubelet
    makes of them (the environment, TF_CONFIG, the args): test_k8s_real_node.py, in real containers."""
    ns = namespace(control_plane, "identity")
    objects = render(control_plane, tmp_path, "train", ns=ns, workers=4)
    hold_running(train_job(objects), 60)
    apply(control_plane, objects)
    pods = wait_for("4 running worker pods", lambda: [
        p for p in job_pods(control_plane, ns, "xray-train") if p["status"].get("phase") == "Running"] if len(
        [p for p in job_pods(control_plane, ns, "xray-train") if p["status"].get("phase") == "Running"]) == 4 else None)
    indexes = sorted(int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]) for p in pods)
    assert indexes == [0, 1, 2, 3]
    for pod in pods:
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert pod["spec"]["hostname"] == f"xray-train-{index}" and pod["spec"]["subdomain"] == "xray-train-workers"
        # The controller adds the index as JOB_COMPLETION_INDEX (a downward-API field the kubelet resolves).
        (var,) = [v for v in pod["spec"]["containers"][0]["env"] if v["name"] == "JOB_COMPLETION_INDEX"]
        assert "batch.kubernetes.io/job-completion-index" in var["valueFrom"]["fieldRef"]["fieldPath"]
    # The names resolve in cluster DNS from the headless Service's EndpointSlices: every pod with its hostname.
    def published():
        slices = get(control_plane, "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=xray-train-workers")
        return sorted(e.get("hostname", "") for s in slices["items"] for e in s.get("endpoints") or [])
    wait_for("every worker in the EndpointSlice", lambda: published() == [f"xray-train-{i}" for i in range(4)])


def test_exit_2_fails_the_job_at_once(control_plane, tmp_path):
    ns = namespace(control_plane, "exit2")
    objects = render(control_plane, tmp_path, "train", ns=ns)
    template = train_job(objects)["spec"]["template"]["metadata"]
    template["labels"][CHAOS] = "true"
    template.setdefault("annotations", {})[f"{CHAOS}/exit-code"] = "2"
    apply(control_plane, objects)
    wait_for("the job to fail", lambda: job_state(control_plane, ns, "xray-train") == "Failed")
    job = get(control_plane, "job", "xray-train", "-n", ns)
    (failed,) = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert failed["reason"] == "PodFailurePolicy" and "exit code 2" in failed["message"]
    assert job["status"].get("failed", 0) <= 2  # no retry: backoffLimit (12) was not spent
    # xray jobs watch/status read the real objects: exit 1 for a failed job, the refusal among the warnings.
    result = run_xray("jobs", "watch", "xray-train", "-n", ns, "--interval", "1",
                      env={"KUBECONFIG": str(control_plane.kubeconfig)}, check=False)
    assert result.returncode == 1 and "FAILED (PodFailurePolicy" in result.stdout
    assert "recent warnings:" in result.stdout


def test_a_lost_peer_exit_replaces_the_pod_and_the_job_goes_on(control_plane, tmp_path):
    ns = namespace(control_plane, "peer-lost")
    objects = render(control_plane, tmp_path, "train", ns=ns)
    hold_running(train_job(objects), 10)
    train_job(objects)["spec"]["backoffLimit"] = 0  # a counted failure would fail the job: exit 75 must not count
    apply(control_plane, objects)
    wait_for("worker 1 running", lambda: [p for p in job_pods(control_plane, ns, "xray-train")
                                          if p["spec"]["hostname"] == "xray-train-1" and p["status"]["phase"] == "Running"])
    (first,) = [p["metadata"]["name"] for p in job_pods(control_plane, ns, "xray-train") if p["spec"]["hostname"] == "xray-train-1"]
    # The survivor of a lost peer exits on its own with the peer-lost status (xray.trainer.train.EXIT_PEER_LOST).
    control_plane.kubectl("annotate", "pod", first, "-n", ns, f"{CHAOS}/exit-code=75", f"{CHAOS}/delay=0s")
    control_plane.kubectl("label", "pod", first, "-n", ns, f"{CHAOS}=true")
    wait_for("a replacement for worker 1", lambda: len([p for p in job_pods(control_plane, ns, "xray-train")
                                                         if p["spec"]["hostname"] == "xray-train-1"]) == 2)
    old = get(control_plane, "pod", first, "-n", ns)
    assert old["status"]["phase"] == "Failed"
    assert old["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 75
    wait_for("the job to complete", lambda: job_state(control_plane, ns, "xray-train"), timeout_s=120)
    assert job_state(control_plane, ns, "xray-train") == "Complete"
    assert not get(control_plane, "job", "xray-train", "-n", ns)["status"].get("failed")


def test_a_node_disruption_does_not_count_against_the_backoff_limit(control_plane, tmp_path):
    ns = namespace(control_plane, "disruption")
    objects = render(control_plane, tmp_path, "train", ns=ns)
    job = train_job(objects)
    job["spec"]["backoffLimit"] = 0  # any counted failure fails the job
    hold_running(job, 3600)  # KWOK must not complete (or overwrite) the pod while the test runs
    apply(control_plane, objects)
    pod = wait_for("worker 0 running", lambda: next((p for p in job_pods(control_plane, ns, "xray-train")
                                                     if p["spec"]["hostname"] == "xray-train-0"
                                                     and p["status"]["phase"] == "Running"), None))
    name = pod["metadata"]["name"]
    # What a kubelet reports when it evicts a pod under node pressure.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {"phase": "Failed", "reason": "Evicted", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "lastTransitionTime": now,
         "message": "The node had condition: [MemoryPressure]."}],
        "containerStatuses": [{"name": "worker", "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0,
                               "state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now,
                                                        "finishedAt": now}}}]}}
    control_plane.kubectl("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    wait_for("a replacement for worker 0", lambda: [p for p in job_pods(control_plane, ns, "xray-train")
                                                    if p["spec"]["hostname"] == "xray-train-0"
                                                    and p["metadata"]["name"] != name])
    # The controller created the replacement after it had judged the failed pod by the policy (Ignore): the Job's
    # failed count is already final for that pod, no waiting needed.
    job = get(control_plane, "job", "xray-train", "-n", ns)
    assert job_state(control_plane, ns, "xray-train") is None and not job["status"].get("failed")
    # The same failure without the condition is counted: exit 137 with backoffLimit 0 fails the job.
    other = next(p["metadata"]["name"] for p in job_pods(control_plane, ns, "xray-train")
                 if p["spec"]["hostname"] == "xray-train-1")
    status["status"]["conditions"] = []
    control_plane.kubectl("patch", "pod", other, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    wait_for("the job to fail", lambda: job_state(control_plane, ns, "xray-train") == "Failed")


def test_xray_jobs_status_watch_and_delete_on_real_objects(control_plane, tmp_path):
    ns = namespace(control_plane, "monitor")
    objects = render(control_plane, tmp_path, "train", ns=ns, workers=4)
    hold_running(train_job(objects), 8)
    apply(control_plane, objects)
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    wait_for("4 pods", lambda: len(job_pods(control_plane, ns, "xray-train")) == 4)
    status = run_xray("jobs", "status", "xray-train", "-n", ns, env=env, check=False)
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"job {ns}/xray-train: ") and status.returncode == 0
    rows = [line.split() for line in lines[2:6]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(r[1].startswith("xray-train-") for r in rows)
    # -o json: the document of docs/monitoring.md, for scripts; -o yaml the same; -o wide adds IP and IMAGE.
    document = json.loads(run_xray("jobs", "status", "xray-train", "-n", ns, "-o", "json", env=env).stdout)
    assert document["version"] == 1 and document["job"]["name"] == "xray-train" and document["job"]["completions"] == 4
    assert document["job"]["state"] in ("pending", "running", "succeeded")
    assert sorted(p["index"] for p in document["pods"]) == ["0", "1", "2", "3"]
    assert {p["image"] for p in document["pods"]} == {IMAGE} and {"blockers", "warnings", "epoch"} <= set(document)
    assert yaml.safe_load(run_xray("jobs", "status", "xray-train", "-n", ns, "-o", "yaml", env=env).stdout)["job"][
        "name"] == "xray-train"
    wide = run_xray("jobs", "status", "xray-train", "-n", ns, "-o", "wide", env=env).stdout.splitlines()
    assert wide[1].split()[6:8] == ["IP", "IMAGE"] and IMAGE in wide[2]
    # --context: the kubeconfig's context by name; an unknown one is refused in one line.
    named = run_xray("jobs", "list", "-n", ns, "--context", "xray-local", env=env).stdout.splitlines()
    assert named[0].split() == ["NAME", "STATE", "COMPLETIONS", "AGE", "COMPONENT"] and named[1].split()[0] == "xray-train"
    other = run_xray("jobs", "list", "-n", ns, "--context", "nope", env=env, check=False)
    assert other.returncode == 2 and "no context nope in the kubeconfig; contexts there: xray-local" in other.stderr
    watch = run_xray("jobs", "watch", "xray-train", "-n", ns, "--interval", "1", env=env, check=False, timeout=180)
    assert watch.returncode == 0 and "SUCCEEDED (completed 4/4)" in watch.stdout
    assert "\x1b[" not in watch.stdout  # piped: plain lines, no redrawing
    deleted = run_xray("jobs", "delete", "xray-train", "-n", ns, env=env)
    assert "deleted job" in deleted.stdout
    wait_for("the job to be gone", lambda: control_plane.kubectl("get", "job", "xray-train", "-n", ns,
                                                                 check=False).returncode != 0)
    missing = run_xray("jobs", "status", "xray-train", "-n", ns, env=env, check=False)
    assert missing.returncode == 2 and "no job xray-train" in missing.stderr


def make(plane, target: str, *variables: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(plane.kubeconfig))
    return subprocess.run(["make", target, "IMAGE=registry.example.com/xray", "TAG=0.1.0", "WATCH_INTERVAL=1",
                           *variables], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_three_workers_for_batch_16_are_refused_before_anything_is_applied(control_plane, tmp_path):
    ns = namespace(control_plane, "three", tmp_path)
    result = make(control_plane, "train-cluster", f"NAMESPACE={ns}", "WORKERS=3", f"BUILD={tmp_path / 'build'}")
    assert result.returncode == 2 or "Error 2" in result.stderr
    assert "train.batch_size=16 does not split evenly over 3 workers" in result.stderr
    assert control_plane.kubectl("get", "job", "xray-train", "-n", ns, check=False).returncode != 0


def test_preflight_refusals_name_the_fix_and_apply_nothing(control_plane, tmp_path):
    """The refusals a user meets before anything is applied: no volume step yet (through `xray preflight`, the
    command every cluster target runs: `make train-cluster` itself runs the volume step first), an unknown
    STORAGE_CLASS (`make volume`), and a job of the same name still running (`make train-cluster`)."""
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    result = run_xray("preflight", "--component", "train", "--image", IMAGE, "--namespace", "no-volume-yet",
                      "--out", tmp_path / "novolume", env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "run make volume NAMESPACE=no-volume-yet first" in result.stderr

    result = make(control_plane, "volume", "NAMESPACE=odd-class", "STORAGE_CLASS=no-such-class",
                  f"BUILD={tmp_path / 'build'}")
    assert result.returncode != 0 and "STORAGE_CLASS=no-such-class does not exist in context" in result.stderr
    assert control_plane.kubectl("get", "namespace", "odd-class", check=False).returncode != 0

    ns = namespace(control_plane, "busy", tmp_path)
    objects = render(control_plane, tmp_path, "train", ns=ns)
    hold_running(train_job(objects), 300)
    apply(control_plane, objects)
    wait_for("both workers running", lambda: [p["status"].get("phase") for p in job_pods(
        control_plane, ns, "xray-train")] == ["Running", "Running"])
    uid = get(control_plane, "job", "xray-train", "-n", ns)["metadata"]["uid"]
    result = make(control_plane, "train-cluster", f"NAMESPACE={ns}", f"BUILD={tmp_path / 'build'}")
    assert result.returncode != 0
    assert (f"job xray-train is running in {ns}: watch it with xray jobs watch xray-train -n {ns}, or delete it "
            "first (make delete JOB=xray-train)") in result.stderr
    assert get(control_plane, "job", "xray-train", "-n", ns)["metadata"]["uid"] == uid  # left alone


def test_an_export_refused_by_the_gate_ends_the_watch_with_3(control_plane, tmp_path):
    ns = namespace(control_plane, "gate", tmp_path)
    objects = render(control_plane, tmp_path, "export", ns=ns)
    (job,) = [o for o in objects if o["kind"] == "Job"]
    template = job["spec"]["template"]["metadata"]
    template["labels"][CHAOS] = "true"
    template.setdefault("annotations", {})[f"{CHAOS}/exit-code"] = "3"
    apply(control_plane, objects)
    result = run_xray("jobs", "watch", "xray-export", "-n", ns, "--interval", "1",
                      env={"KUBECONFIG": str(control_plane.kubeconfig)}, check=False, timeout=180)
    assert result.returncode == 3 and "REFUSED (the export gate refused the model" in result.stdout
    assert get(control_plane, "job", "xray-export", "-n", ns)["status"].get("failed") == 1  # not retried


def test_make_cluster_up_and_down_beside_another_control_plane(control_plane, tmp_path):
    """A second control plane (other ports, other data; KWOK nodes only: the machine holds one real node) next
    to the session's; cluster-down leaves no process."""
    build = tmp_path / "build"
    up = subprocess.run(["make", "cluster-up", f"BUILD={build}", "NODE=0"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    kubeconfig = build / "cluster" / "kubeconfig"
    assert f"KUBECONFIG={kubeconfig}" in up.stdout
    state = json.loads((build / "cluster" / "state.json").read_text())
    assert state["ports"]["apiserver"] != json.loads(control_plane.state_file.read_text())["ports"]["apiserver"]
    nodes = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert nodes == ["node/kwok-node-0", "node/kwok-node-1"]
    down = subprocess.run(["make", "cluster-down", f"BUILD={build}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd" in down.stdout
    for pid in state["pids"].values():
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3]
    assert not (build / "cluster" / "data").exists() and (build / "cluster" / "logs" / "kube-apiserver.log").exists()
    assert control_plane.running()  # the session's control plane is untouched


def test_a_cluster_step_from_python_replaces_the_last_run_applies_and_follows(control_plane, tmp_path, monkeypatch):
    """xray.cluster.steps.run, as a script calls it (the same function `xray cluster train` and make train-cluster
    run): the finished Job of the last run is replaced by the new one, and the follow ends with the watch's status.
    The new Job's pods ask for the test image, which no registry here serves: the follow names that and gives up
    with 4 (WATCH_STUCK), the status a user's make target would end with."""
    from xray.cluster import kube, steps, watching
    from xray.cluster.render import RenderRequest

    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    ns = namespace(control_plane, "steps", tmp_path)
    objects = render(control_plane, tmp_path, "train", ns=ns)
    hold_running(train_job(objects), 1)
    apply(control_plane, objects)
    wait_for("the last run to finish", lambda: job_state(control_plane, ns, "xray-train") == "Complete")
    last = get(control_plane, "job", "xray-train", "-n", ns)["metadata"]["uid"]

    lines, warnings = [], []
    status = steps.run(RenderRequest("train", image=IMAGE, namespace=ns), tmp_path / "step",
                       steps.Follow(interval_s=1, stuck_after_s=5, start_timeout_s=120),
                       out=lambda *a, **k: lines.append(" ".join(map(str, a))), warn=warnings.append)
    assert status == watching.WATCH_STUCK, lines
    assert get(control_plane, "job", "xray-train", "-n", ns)["metadata"]["uid"] != last
    assert any(line.startswith("pre-flight passed") for line in lines)
    assert any("job xray-train (succeeded) will be replaced" in line for line in warnings)  # pre-flight's

    refused = RenderRequest("train", image=IMAGE, namespace=ns, workers=3)
    with pytest.raises(kube.ClusterError, match="does not split evenly over 3 workers"):
        steps.run(refused, tmp_path / "refused")


# GPU nodes as the clouds make them: their labels, taints and allocatable (tests/test_k8s.py GPU_NODES has where the
# numbers come from). KWOK runs them (its annotation), but they carry neither KWOK's taint nor its `type` label.
GPU_NODES = [
    {"name": "gke-xray-gpu-pool-1a2b", "labels": {
        "cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-nodepool": "gpu-pool",
        "node.kubernetes.io/instance-type": "g2-standard-8", "topology.kubernetes.io/zone": "us-central1-a"},
     "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
     "allocatable": {"cpu": "7910m", "memory": "29023Mi", "ephemeral-storage": "47060071478", "pods": "110",
                     "nvidia.com/gpu": "1"}},
    {"name": "ip-192-168-12-34.ec2.internal", "labels": {
        "eks.amazonaws.com/nodegroup": "gpu", "eks.amazonaws.com/capacityType": "ON_DEMAND",
        "node.kubernetes.io/instance-type": "g5.2xlarge", "topology.kubernetes.io/zone": "us-east-1a"},
     "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
     "allocatable": {"cpu": "7910m", "memory": "31263Mi", "ephemeral-storage": "76224326324", "pods": "58",
                     "nvidia.com/gpu": "1"}},
]


def test_gpu_workers_schedule_on_nodes_shaped_like_gke_and_eks(control_plane, tmp_path):
    """The gpu overlay as rendered, applied unchanged: its 2 workers need a GPU each, and the only free GPUs are on a
    GKE-shaped and an EKS-shaped 1-GPU node (8 vCPU / 32 GiB, tainted nvidia.com/gpu, no NVIDIA GFD label). With the
    vendor label selector, 8-CPU requests or no toleration (as before) they stay Pending."""
    nodes = []
    for shape in GPU_NODES:
        capacity = {**shape["allocatable"], "cpu": "8", "memory": "32Gi"}
        nodes.append({"apiVersion": "v1", "kind": "Node",
                      "metadata": {"name": shape["name"], "annotations": {"kwok.x-k8s.io/node": "fake"},
                                   "labels": {"kubernetes.io/hostname": shape["name"], "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64", **shape["labels"]}},
                      "spec": {"taints": shape["taints"]},
                      "status": {"allocatable": shape["allocatable"], "capacity": capacity}})
    control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(n) for n in nodes))
    try:
        ns = namespace(control_plane, "gpu-clouds")
        objects = render(control_plane, tmp_path, "train", "gpu", ns, 2)
        hold_running(train_job(objects), 5)
        control_plane.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objects))
        wait_for("both GPU workers to complete", lambda: job_state(control_plane, ns, "xray-train") is not None, 180)
        assert job_state(control_plane, ns, "xray-train") == "Complete"
        placed = sorted(p["spec"]["nodeName"] for p in job_pods(control_plane, ns, "xray-train"))
        assert placed == sorted(n["name"] for n in GPU_NODES)  # one GPU each, so one worker on each cloud's node
    finally:
        control_plane.kubectl("delete", "node", *[n["name"] for n in GPU_NODES], "--wait=false", check=False)


def test_a_queued_job_creates_no_pods_is_reported_queued_and_runs_once_admitted(control_plane, tmp_path):
    """QUEUE=team-a: the Job is created suspended with Kueue's queue label. The Job controller creates no pod for it
    (it says so with the Suspended condition); `xray jobs status` says QUEUED and `watch` waits, without its start
    timeout running; resuming it (what Kueue does on admission) runs it to the end."""
    ns = namespace(control_plane, "queued")
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    objects = render(control_plane, tmp_path, "train", "local", ns, 2, "--queue", "team-a")
    apply(control_plane, objects)
    wait_for("the Suspended condition", lambda: any(
        c["type"] == "Suspended" and c["status"] == "True"
        for c in get(control_plane, "job", "xray-train", "-n", ns)["status"].get("conditions", [])))
    assert job_pods(control_plane, ns, "xray-train") == []
    document = json.loads(run_xray("jobs", "status", "xray-train", "-n", ns, "-o", "json", env=env).stdout)
    assert (document["job"]["state"], document["job"]["queue"]) == ("queued", "team-a")
    with Watch(env, "xray-train", "-n", ns, "--interval", "1", "--start-timeout", "3") as watch:
        wait_for("watch to show the queued job", lambda: watch.seen("QUEUED"), 60)
        time.sleep(4)  # longer than --start-timeout: a queued job's wait must not count against it
        assert watch.process.poll() is None, watch.process.communicate()
        control_plane.kubectl("patch", "job", "xray-train", "-n", ns, "-p", '{"spec":{"suspend":false}}')
        code, out, err = watch.finish(180)
    assert code == 0, err
    assert "QUEUED (suspended until Kueue admits all its pods at once, in queue team-a)" in out
    assert "SUCCEEDED (completed 2/2)" in out


def kueue_queue(plane, ns: str, cpu: str) -> None:
    """A ResourceFlavor, a ClusterQueue with `cpu` of quota (memory and ephemeral storage to spare: every container
    requests all three) and the LocalQueue team-a in `ns` that points at it, as docs/kubernetes.md writes them."""
    resources = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": "64Gi"},
                 {"name": "ephemeral-storage", "nominalQuota": "64Gi"}]
    objects = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default-flavor"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": "xray"},
         "spec": {"namespaceSelector": {}, "resourceGroups": [{
             "coveredResources": [r["name"] for r in resources],
             "flavors": [{"name": "default-flavor", "resources": resources}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team-a", "namespace": ns},
         "spec": {"clusterQueue": "xray"}}]
    plane.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(o) for o in objects))


def workload_conditions(plane, ns: str) -> dict[str, str]:
    """The conditions (type -> status) of the one Workload Kueue made for the Job in `ns` ({} before it exists)."""
    items = get(plane, "workloads.kueue.x-k8s.io", "-n", ns)["items"]
    return {c["type"]: c["status"] for c in items[0].get("status", {}).get("conditions", [])} if items else {}


def test_kueue_built_from_its_module_admits_all_workers_or_none(control_plane, tmp_path):
    """Kueue itself (xray/localcluster/kueue.py: v0.17.0 built from its Go module, installed from its own config with
    its webhooks, conversion webhooks and cert rotator). SHORTCUT, said in kueue.py: its manager runs in the real
    node's network namespace, because this API server listens on loopback only.

    QUEUE=team-a with quota for one worker of two: Kueue makes the Workload and does not admit it; the Job stays
    suspended with no pod (not one worker holding its share at the startup barrier) and `xray jobs status` says
    QUEUED. With the quota raised, Kueue admits both at once and the running `xray jobs watch` ends SUCCEEDED."""
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    installed = make(control_plane, "cluster-kueue-up", f"CLUSTER_ROOT={control_plane.root}", timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Kueue v0.17.0 answers: its webhooks admit, its visibility API is available" in installed.stderr
    try:
        ns = namespace(control_plane, "kueue")
        objects = render(control_plane, tmp_path, "train", "local", ns, 2, "--queue", "team-a")
        per_worker = train_job(objects)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        assert per_worker == "250m"
        kueue_queue(control_plane, ns, cpu="400m")  # one worker's 250m fits, two do not
        apply(control_plane, objects)
        wait_for("Kueue to find no quota for the workload", lambda: workload_conditions(
            control_plane, ns).get("QuotaReserved") == "False", 60)
        assert workload_conditions(control_plane, ns).get("Admitted", "False") == "False"
        assert get(control_plane, "job", "xray-train", "-n", ns)["spec"]["suspend"] is True
        assert job_pods(control_plane, ns, "xray-train") == []
        document = json.loads(run_xray("jobs", "status", "xray-train", "-n", ns, "-o", "json", env=env).stdout)
        assert (document["job"]["state"], document["job"]["queue"]) == ("queued", "team-a")
        with Watch(env, "xray-train", "-n", ns, "--interval", "1") as watch:
            wait_for("watch to show the queued job", lambda: watch.seen("QUEUED"), 60)
            control_plane.kubectl("patch", "clusterqueue", "xray", "--type=json", "-p", json.dumps([
                {"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/0/nominalQuota", "value": "1"}]))
            code, out, err = watch.finish(180)
        assert code == 0, err
        assert "SUCCEEDED (completed 2/2)" in out
        assert workload_conditions(control_plane, ns)["Finished"] == "True"  # Kueue saw the Job through to its end
    finally:
        removed = make(control_plane, "cluster-kueue-down", f"CLUSTER_ROOT={control_plane.root}")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert get(control_plane, "crd")["items"] == []  # Kueue's CRDs, queues and workloads are gone with it
    assert not control_plane.kubectl("get", "mutatingwebhookconfigurations", "-o", "name").stdout.strip()


def test_weights_that_are_not_hdf5_are_refused_before_the_uploader_starts(control_plane, tmp_path):
    """make weights-cluster WEIGHTS=<not HDF5>: one line naming the file and the fix; no uploader pod is made."""
    ns = namespace(control_plane, "weights")
    weights = tmp_path / "resnet50v2_notop.h5"
    weights.write_text("<html>a proxy's error page saved under the weights' name</html>")
    ran = make(control_plane, "weights-cluster", f"WEIGHTS={weights}", f"NAMESPACE={ns}")
    assert ran.returncode != 0
    assert f"error: weights file {weights} is not an HDF5 file" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    assert get(control_plane, "pods", "-n", ns)["items"] == []


def test_cluster_kueue_targets_refuse_in_one_line_without_a_cluster(tmp_path):
    """make cluster-kueue-up/-down where no local cluster runs: one line that says what to do, no traceback."""
    for target in ("cluster-kueue-up", "cluster-kueue-down"):
        ran = subprocess.run(["make", target, f"CLUSTER_ROOT={tmp_path / 'none'}"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert ran.returncode != 0
        errors = [line for line in ran.stderr.splitlines() if not line.startswith("make")]
        assert errors == [f"error: no local cluster runs at {tmp_path / 'none'}: make cluster-up first"], ran.stderr


class Watch:
    """`xray jobs watch ARGS` running beside the test, as a user runs it in another terminal: its output read line by
    line until a word shows (what was read is kept), then to its end; killed if the test leaves first."""

    def __init__(self, env: dict, *args: str):
        self.env, self.args, self.text = env, args, ""

    def __enter__(self):
        self.process = subprocess.Popen([str(REPO / ".venv" / "bin" / "xray"), "jobs", "watch", *self.args],
                                        env=dict(os.environ, **self.env), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        return self

    def seen(self, word: str) -> bool:
        line = self.process.stdout.readline()
        self.text += line
        return word in line

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, self.text + out, err

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def test_jobs_watch_rides_out_an_api_server_restart(control_plane, tmp_path):
    """The API server stopped for 8 s and started again under a running `xray jobs watch` (a managed control
    plane's upgrade): watch says it retries, carries on when the server answers, and ends with the job's result."""
    ns = namespace(control_plane, "outage")
    env = {"KUBECONFIG": str(control_plane.kubeconfig)}
    objects = render(control_plane, tmp_path, "train", "local", ns, 2)
    hold_running(train_job(objects), 25)
    apply(control_plane, objects)
    wait_for("2 running pods", lambda: [p["status"].get("phase") for p in job_pods(control_plane, ns, "xray-train")]
             == ["Running", "Running"])
    with Watch(env, "xray-train", "-n", ns, "--interval", "1") as watch:
        wait_for("watch to show the running job", lambda: watch.seen("RUNNING"), 60)
        control_plane.restart_apiserver(down_s=8)
        code, out, err = watch.finish(240)
    assert code == 0, err
    assert "warning: cannot reach the cluster of context xray-local" in err and "retrying in 1 s" in err
    assert "the API server answers again after" in err
    assert "SUCCEEDED (completed 2/2)" in out
