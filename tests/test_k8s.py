"""Kubernetes manifests, checked with what is real here: kubectl kustomize, the official OpenAPI schemas
(kubernetes-validate), and the trainer's own TF_CONFIG logic. No API server is available."""

import subprocess

import kubernetes_validate
import pytest
import yaml

from conftest import REPO
from xray.serving import config as serving_config
from xray.trainer import tfconfig

K8S = REPO / "xray" / "k8s"
OVERLAYS = sorted(str(p.relative_to(REPO)) for p in K8S.glob("overlays/*/*") if p.name != "namespace")
BASES = sorted(str(p.relative_to(REPO)) for p in K8S.glob("base/*"))
KUBERNETES_VERSIONS = ("1.30.0", "1.32.0", "1.34.0")
POD_KINDS = {"Job": ("spec", "template", "spec"), "Deployment": ("spec", "template", "spec"), "Pod": ("spec",)}
COMPONENTS = ("storage", "train", "tune", "serving", "upload", "shards", "export", "tensorboard", "promote")


def render(path: str) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(REPO / path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kustomize {path} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(obj: dict) -> dict | None:
    keys = POD_KINDS.get(obj["kind"])
    if not keys:
        return None
    spec = obj
    for key in keys:
        spec = spec[key]
    return spec


def all_rendered():
    return [(path, obj) for path in BASES + OVERLAYS for obj in render(path)]


def test_every_base_and_overlay_renders():
    assert OVERLAYS == sorted(f"xray/k8s/overlays/{o}/{c}" for o in ("gpu", "local") for c in COMPONENTS)
    assert {f"xray/k8s/base/{c}" for c in COMPONENTS} == set(BASES)
    for path in BASES + OVERLAYS:
        kinds = {obj["kind"] for obj in render(path)}
        assert kinds, path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_official_schemas(version):
    for path, obj in all_rendered():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{path}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {error.message}")


def test_every_pod_meets_the_restricted_pod_security_standard_and_has_resources():
    checked = 0
    for path, obj in all_rendered():
        spec = pod_spec(obj)
        if spec is None:
            continue
        checked += 1
        where = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["fsGroup"] == 10001 and pod["fsGroupChangePolicy"] == "OnRootMismatch", where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), where
            # The kubelet evicts on node disk pressure by these; without them a pod's writes are unbounded.
            assert "ephemeral-storage" in resources["requests"] and "ephemeral-storage" in resources["limits"], where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp with a read-only root filesystem"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{where}: emptyDir {volume['name']} has no sizeLimit"
    assert checked == 27  # 9 workloads (train, tune chief + workers, serving, upload, shards, export, tensorboard, promote) x 3 trees


def test_app_kubernetes_io_labels_everywhere():
    for path, obj in all_rendered():
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "xray", f"{path}: {obj['kind']}/{obj['metadata']['name']}"


def _selected(policy: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())


def test_every_unauthenticated_grpc_port_is_covered_by_a_network_policy():
    for path in OVERLAYS:
        objects = render(path)
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        for obj in objects:
            spec = pod_spec(obj)
            if spec is None:
                continue
            template = obj if obj["kind"] == "Pod" else obj["spec"]["template"]
            labels = dict(template["metadata"]["labels"])
            if obj["kind"] == "Job":
                labels["batch.kubernetes.io/job-name"] = obj["metadata"]["name"]  # added by the Job controller
            ports = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            covering = [p for p in policies if _selected(p, labels)]
            for port in ports:
                rules = [rule for p in covering for rule in p["spec"]["ingress"]]
                # A rule without ports opens every port to its peers (the GPU overlay's NCCL workers).
                allowed = {rule_port["port"] for rule in rules for rule_port in rule.get("ports", [])}
                assert port in allowed or any("ports" not in rule for rule in rules), f"{path}: {obj['metadata']['name']} port {port} is not covered by a NetworkPolicy"


@pytest.mark.parametrize("overlay", ["xray/k8s/overlays/local/train", "xray/k8s/overlays/gpu/train"])
def test_the_train_job_env_yields_the_tf_config_the_trainer_builds(overlay):
    """On the rendered objects, with the one downward-API field (the job-name label) filled in here: a stand-in
    for the kubelet, kept because it also covers the GPU overlay, which the real node cannot run. What the real
    kubelet gives the local overlay's pods: test_k8s_real_node.py."""
    objects = render(overlay)
    (job,) = [o for o in objects if o["kind"] == "Job"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The fieldRef resolves to the Job's name label, which the Job controller sets on its pods.
    assert [e for e in container["env"] if e["name"] == "XRAY_JOB_NAME"][0]["valueFrom"]["fieldRef"]["fieldPath"] \
        == "metadata.labels['batch.kubernetes.io/job-name']"
    env["XRAY_JOB_NAME"] = job["metadata"]["name"]
    workers = int(env["XRAY_NUM_WORKERS"])
    assert workers == spec["completions"]
    # The headless Service is the pods' subdomain and publishes not-ready pods.
    assert pod["subdomain"] == service["metadata"]["name"] == env["XRAY_SERVICE_NAME"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    port = container["ports"][0]["containerPort"]
    assert str(port) == env["XRAY_WORKER_PORT"]
    hosts = [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:{port}" for i in range(workers)]
    for index in range(workers):
        spec_for_pod = tfconfig.resolve({**env, "JOB_COMPLETION_INDEX": str(index)})
        assert spec_for_pod.tf_config == tfconfig.tf_config_for(hosts, index)
        assert spec_for_pod.is_chief == (index == 0)


def test_train_job_failure_policy_deadline_and_threads():
    from xray.trainer.train import EXIT_CONFIG_ERROR, EXIT_PEER_LOSS_BUDGET, EXIT_PEER_LOST

    for overlay in ("local", "gpu"):
        (job,) = [o for o in render(f"xray/k8s/overlays/{overlay}/train") if o["kind"] == "Job"]
        spec = job["spec"]
        assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
        assert spec["podReplacementPolicy"] == "Failed" and spec["backoffLimit"] >= 3
        assert spec["activeDeadlineSeconds"] >= 86400
        rules = spec["podFailurePolicy"]["rules"]
        codes = {r["action"]: r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r}
        assert codes == {"FailJob": [EXIT_CONFIG_ERROR, EXIT_PEER_LOSS_BUDGET], "Ignore": [EXIT_PEER_LOST]}
        # "In" (NotIn would ignore every other exit, so a crashing worker would be replaced forever), for the
        # trainer's container, and a disruption only when its condition is True.
        assert {(r["onExitCodes"]["operator"], r["onExitCodes"]["containerName"]) for r in rules if "onExitCodes" in r} \
            == {("In", "worker")}
        assert [(r["action"], r["onPodConditions"]) for r in rules if "onPodConditions" in r] \
            == [("Ignore", [{"type": "DisruptionTarget", "status": "True"}])]
        (container,) = spec["template"]["spec"]["containers"]
        threads = next(e for e in container["env"] if e["name"] == "XRAY_THREADS")["valueFrom"]["resourceFieldRef"]
        assert threads == {"containerName": "worker", "resource": "limits.cpu", "divisor": "1"}


def quantity(value: str) -> float:
    """A Kubernetes quantity (cpu "7910m", memory "24Gi") as a number of cores or bytes."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[:-len(unit)]) * units[unit]
    return float(value)


# The allocatable of the common 1-GPU nodes with 8 vCPU / 32 GiB, from the providers' reservation rules: GKE
# g2-standard-8 (CPU: 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest = 90m; memory:
# 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the rest, and 100Mi eviction threshold), EKS
# g5.2xlarge (the same CPU rule; memory: 255Mi + 11Mi x 58 pods, and 100Mi, of the 31.5 GiB the instance reports).
GPU_NODES = {"gke-g2-standard-8": {"cpu": "7910m", "memory": "29023Mi"},
             "eks-g5.2xlarge": {"cpu": "7910m", "memory": "31263Mi"}}


@pytest.mark.parametrize("component, kind, job", [("train", "Job", "xray-train"), ("tune", "Job", "xray-tune-workers"),
                                                   ("serving", "Deployment", "xray-serving")])
def test_gpu_pods_fit_a_1_gpu_node_of_every_cloud_and_select_no_vendor_label(component, kind, job):
    (obj,) = [o for o in render(f"xray/k8s/overlays/gpu/{component}") if o["kind"] == kind and o["metadata"]["name"] == job]
    spec = pod_spec(obj)
    assert not spec.get("nodeSelector") and not spec.get("affinity"), spec.get("nodeSelector")
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in spec["tolerations"]  # any value, any effect
    (container,) = spec["containers"]
    requests = container["resources"]["requests"]
    assert requests["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for node, allocatable in GPU_NODES.items():
        for resource in ("cpu", "memory"):
            # at least a core and 2 GiB of the node left for its daemon pods (logging, the device plugin, CNI)
            room = quantity(allocatable[resource]) - quantity(requests[resource])
            assert room >= (1 if resource == "cpu" else 2 * 2**30), f"{job} does not fit {node}: {resource}"


@pytest.mark.parametrize("component", ["train", "tune"])
def test_training_pods_find_weights_and_the_feature_cache_on_the_volume(component):
    """A replaced pod, a resumed run and every trial on any node share the feature cache and the ImageNet weights:
    both on the volume (/mnt/xray), not in the pod's emptyDir."""
    for overlay in ("local", "gpu"):
        objects = render(f"xray/k8s/overlays/{overlay}/{component}")
        (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(f"xray-{component}-")]
        assert config["data"]["XRAY_FEATURE_CACHE"] == "/mnt/xray/cache/features"
        assert config["data"]["XRAY_WEIGHTS_PATH"].split(":")[0] == "/mnt/xray/weights"
        for job in [o for o in objects if o["kind"] == "Job"]:
            (container,) = job["spec"]["template"]["spec"]["containers"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]


def test_the_gpu_overlay_uses_nccl_and_opens_the_workers_to_each_other():
    objects = render("xray/k8s/overlays/gpu/train")
    (job,) = [o for o in objects if o["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "runtime.collective=nccl" in container["args"] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    (rule,) = policy["spec"]["ingress"]
    assert "ports" not in rule and rule["from"] == [{"podSelector": {"matchLabels": {
        "batch.kubernetes.io/job-name": "xray-train"}}}]


def test_the_volume_is_a_step_of_its_own():
    """Deleting a component (kubectl delete -k) must never delete the namespace or the data."""
    for path in OVERLAYS:
        kinds = {obj["kind"] for obj in render(path)}
        if path.endswith("/storage"):
            assert kinds == {"Namespace", "PersistentVolumeClaim"}, path
        else:
            assert not kinds & {"Namespace", "PersistentVolumeClaim"}, path


def test_tune_workers_get_unique_ids_and_point_at_the_oracle_service():
    from xray.tuner.roles import complete_tuner_id

    objects = render("xray/k8s/overlays/local/tune")
    (oracle,) = [o for o in objects if o["kind"] == "Service"]
    workers = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == "xray-tune-workers")
    env = {e["name"]: e["value"] for e in workers["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert env["KERASTUNER_ORACLE_IP"] == oracle["metadata"]["name"]
    ids = set()
    for index in range(workers["spec"]["completions"]):
        pod_env = {**env, "JOB_COMPLETION_INDEX": str(index)}
        complete_tuner_id(pod_env)
        assert "chief" not in pod_env["KERASTUNER_TUNER_ID"]
        ids.add(pod_env["KERASTUNER_TUNER_ID"])
    assert ids == {"tuner0", "tuner1"}


def test_serving_config_in_the_base_is_what_the_exporter_writes(tmp_path):
    serving_config.write_all(str(tmp_path), "/models/xray")
    for name in ("batching.config", "monitoring.config"):
        committed = (K8S / "base/serving/config" / name).read_text()
        assert committed == (tmp_path / name).read_text(), f"xray/k8s/base/serving/config/{name} is stale"


def test_serving_probes_and_image_tags():
    objects = render("xray/k8s/overlays/local/serving")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "tensorflow/serving:2.21.0"
    # Ready only with a loaded version (metadata needs one); alive and started on the gRPC port, so a pod waiting
    # for its first model is not restarted.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/xray/metadata"
    assert container["livenessProbe"]["tcpSocket"]["port"] == container["startupProbe"]["tcpSocket"]["port"] == "grpc"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600
    assert "--allow_version_labels_for_unavailable_models=true" in container["args"]
    assert any(a.startswith("--enable_batching") for a in container["args"])
    assert any(a.startswith("--monitoring_config_file") for a in container["args"])
    assert {o["kind"] for o in objects} >= {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "NetworkPolicy"}
    # Bases carry no image tags; overlays pin them.
    for path in BASES:
        for obj in render(path):
            spec = pod_spec(obj)
            for c in (spec or {}).get("containers", []):
                assert ":" not in c["image"], f"{path} pins {c['image']}"


def test_manifests_on_disk_are_all_used():
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kustomization.read_text())
        for entry in doc.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    for manifest in K8S.rglob("*.yaml"):
        if manifest.name != "kustomization.yaml":
            assert manifest.resolve() in listed, f"{manifest} is not referenced by any kustomization"

