"""Job monitoring and cluster rendering on kubernetes client model objects; CLI errors without a cluster."""

import datetime as dt
import json
import subprocess

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from conftest import run_xray
from xray import kube

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def _pod(index, phase, restarts=0, node="node-a", minutes=5, waiting=None):
    state = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=waiting)) if waiting else None
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"xray-train-{index}-abcde", creation_timestamp=NOW - dt.timedelta(minutes=minutes),
                                     annotations={kube.INDEX_ANNOTATION: str(index)}),
        spec=client.V1PodSpec(containers=[], node_name=node),
        status=client.V1PodStatus(phase=phase, container_statuses=[client.V1ContainerStatus(
            name="worker", image="x", image_id="", ready=phase == "Running", restart_count=restarts, state=state)]))


def _job(active=0, succeeded=0, failed=0, conditions=()):
    return client.V1Job(metadata=client.V1ObjectMeta(name="xray-train", namespace="xray"),
                        spec=client.V1JobSpec(completions=2, template=client.V1PodTemplateSpec()),
                        status=client.V1JobStatus(active=active, succeeded=succeeded, failed=failed,
                                                  conditions=[client.V1JobCondition(**c) for c in conditions]))


CHIEF_LOG = "\n".join([
    "Epoch 3/50",
    'xray-epoch {"epoch": 2, "time": "2026-11-25T11:50:00Z", "workers": 2, "loss": 0.5, "val_loss": 0.6, "val_auc": 0.8}',
    "noise",
    'xray-epoch {"epoch": 3, "time": "2026-11-25T11:55:00Z", "workers": 2, "loss": 0.4, "auc": 0.9, "val_loss": 0.45, "val_auc": 0.91}',
    "xray-epoch {cut by a restart",
])


def test_rows_are_one_per_worker_in_index_order_with_restarts_and_reasons():
    pods = [_pod(1, "Pending", restarts=3, node=None, waiting="CrashLoopBackOff", minutes=90), _pod(0, "Running", minutes=2)]
    rows = kube.pod_rows(pods, NOW)
    assert [(r["index"], r["phase"], r["restarts"], r["node"], r["age"]) for r in rows] == [
        ("0", "Running", 0, "node-a", "2m"), ("1", "Pending", 3, "-", "1h")]
    assert rows[1]["reason"] == "CrashLoopBackOff"


def test_latest_epoch_is_read_from_the_chief_log():
    epoch = kube.latest_epoch(CHIEF_LOG)
    assert epoch["epoch"] == 3 and epoch["val_auc"] == 0.91
    assert kube.latest_epoch("nothing yet") is None


@pytest.mark.parametrize("job, state, words", [
    (_job(active=2), "running", "2 active"),
    (_job(succeeded=2, conditions=[{"type": "Complete", "status": "True"}]), "succeeded", "completed 2/2"),
    (_job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                 "message": "Container worker for pod xray/xray-train-0 failed with exit code 2"}]),
     "failed", "exit code 2"),
    (_job(), "pending", "no pod running"),
])
def test_job_summary(job, state, words):
    got_state, explanation = kube.job_summary(job)
    assert got_state == state and words in explanation


def test_status_text_has_rows_epoch_and_warnings():
    event = client.CoreV1Event(metadata=client.V1ObjectMeta(name="e"), type="Warning", reason="BackOff",
                               message="Back-off restarting failed container", last_timestamp=NOW,
                               involved_object=client.V1ObjectReference(kind="Pod", name="xray-train-1-abcde"))
    text = kube.format_status(_job(active=2), [_pod(0, "Running"), _pod(1, "Running", restarts=1)], [event], CHIEF_LOG, NOW)
    assert text.splitlines()[0] == "job xray/xray-train: RUNNING (2 active, 0 succeeded, 0 failed pod(s))"
    assert "xray-train-1-abcde" in text and "epoch 3 at 2026-11-25T11:55:00Z on 2 worker(s)" in text
    assert "val_auc=0.9100" in text and "Pod/xray-train-1-abcde: BackOff" in text


def test_rendered_cluster_run_sets_workers_image_and_paths(tmp_path):
    request = kube.RenderRequest("train", "local", "registry.example.com/xray:1.2.3", 3, "gs://bucket/shards",
                                 "gs://bucket/runs/r1")
    out = kube.render_kustomization(request, tmp_path / "render")
    rendered = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, check=True).stdout
    objects = list(yaml.safe_load_all(rendered))
    (job,) = [o for o in objects if o["kind"] == "Job"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/xray:1.2.3"
    assert {"name": "XRAY_NUM_WORKERS", "value": "3"} in container["env"]
    assert config["data"]["XRAY_DATA"] == "gs://bucket/shards" and config["data"]["XRAY_WORKDIR"] == "gs://bucket/runs/r1"
    assert config["data"]["XRAY_PRESET"] == "demo"  # the overlay's value survives the merge
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)


def test_preflight_refuses_a_missing_image_and_too_few_shards(tmp_path, shards_dir):
    with pytest.raises(kube.ClusterError, match="set the project image"):
        kube.preflight(kube.RenderRequest("train", image=""), tmp_path, check_cluster=False)
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    too_many = len(manifest["shards"]["train"]) + 1
    with pytest.raises(kube.ClusterError, match=f"for {too_many} workers"):
        kube.preflight(kube.RenderRequest("train", image="r/xray:1", workers=too_many, data=str(shards_dir)), tmp_path,
                       check_cluster=False)
    warnings = kube.preflight(kube.RenderRequest("train", image="r/xray:1", workers=2, data="/mnt/xray/shards"),
                              tmp_path, check_cluster=False)
    assert "not readable from here" in warnings[0] and (tmp_path / "kustomization.yaml").exists()


def test_cli_without_a_cluster_says_what_to_do(tmp_path):
    empty = tmp_path / "none"
    result = run_xray("jobs", "status", "xray-train", env={"KUBECONFIG": str(empty)}, check=False)
    assert result.returncode == 2 and "no Kubernetes cluster configured" in result.stderr
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "x"}}]}))
    result = run_xray("jobs", "status", "xray-train", env={"KUBECONFIG": str(kubeconfig)}, check=False, timeout=120)
    assert result.returncode == 2 and "cannot reach the cluster of context dead" in result.stderr
    assert "Traceback" not in result.stderr
