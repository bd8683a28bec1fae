"""Kueue on the local cluster, for the gang-admission test of QUEUE= (docs/kubernetes.md, "Gang admission with
Kueue"): the manager built from Kueue's own Go module, installed from that module's own kustomize configuration
(config/default: the CRDs, RBAC, webhooks, the visibility APIService, the Deployment), as a user installs a
release with `kubectl apply --server-side`.

    python -m xray.localcluster kueue up      # make cluster-kueue-up: install it on the running local cluster
    python -m xray.localcluster kueue down    # make cluster-kueue-down: webhooks first, so nothing is left blocked

No registry is reachable, so the manager image is made here (one layer: the static program at /manager, user
65532, as Kueue's Dockerfile makes it on distroless) and loaded into the node under Kueue's own name. Two
changes to Kueue's objects, each for this cluster and no other:
- imagePullPolicy IfNotPresent: Kueue's Always would pull from a registry this machine cannot reach;
- the manager runs in the node's network namespace (hostNetwork) and is pointed at the API server's loopback
  address (KUBERNETES_SERVICE_HOST/PORT): this API server listens on 127.0.0.1 only, which no pod network reaches.
Everything else is Kueue's: the webhooks, the conversion webhooks of its CRDs and the visibility API, with the
certificates its own cert rotator makes; the API server calls them at the manager's endpoint
(--enable-aggregator-routing) and proxies the visibility API with the front proxy's certificate (controlplane.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from xray.localcluster import images

VERSION = "v0.17.0"
MODULE = "sigs.k8s.io/kueue"
IMAGE = f"registry.k8s.io/kueue/kueue:{VERSION}"
NAMESPACE = "kueue-system"
USER = "65532:65532"  # Kueue's Dockerfile: USER 65532:65532 (its Deployment says runAsNonRoot, no runAsUser)
# Removed first on the way out: while they exist and the manager does not answer, the API server refuses what
# they cover (failurePolicy Fail), pods and Jobs in every namespace included.
GATES = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "APIService")


class KueueError(RuntimeError):
    pass


def _go(*args: str, env: dict | None = None) -> str:
    if not shutil.which("go"):
        raise KueueError("building Kueue needs Go (>= 1.25) on PATH")
    result = subprocess.run(["go", *args], capture_output=True, text=True,
                            env=dict(os.environ, GOFLAGS="-buildvcs=false", CGO_ENABLED="0", **(env or {})))
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise KueueError(f"go {' '.join(args)} failed:\n{tail}")
    return result.stdout


def module_dir() -> Path:
    """Kueue's module in Go's module cache (downloaded once, checked against sum.golang.org by go)."""
    return Path(json.loads(_go("mod", "download", "-json", f"{MODULE}@{VERSION}"))["Dir"])


def build(log=print) -> Path:
    """The manager program (cmd/kueue), built once per version into the cache: about 4 minutes on 2 cores."""
    out = images.CACHE / f"kueue-{VERSION}" / "manager"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building Kueue {VERSION} from its Go module into {out.parent} (a few minutes, once)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        _go("install", "-trimpath", "-ldflags", f"-s -w -X {MODULE}/pkg/version.GitVersion={VERSION}",
            f"{MODULE}/cmd/kueue@{VERSION}", env={"GOBIN": tmp})
        os.replace(Path(tmp) / "kueue", out)
    log(f"built Kueue in {time.monotonic() - start:.0f} s")
    return out


def manifests(apiserver_port: int) -> list[dict]:
    """Kueue's config/default rendered by kubectl's kustomize, with the changes the module docstring lists."""
    result = subprocess.run(["kubectl", "kustomize", str(module_dir() / "config" / "default")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise KueueError(f"kubectl kustomize of Kueue's config/default failed: {result.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    (manager,) = [c for c in pod["containers"] if c["name"] == "manager"]
    manager["image"], manager["imagePullPolicy"] = IMAGE, "IfNotPresent"
    manager["env"] = manager.get("env", []) + [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                                               {"name": "KUBERNETES_SERVICE_PORT", "value": str(apiserver_port)}]
    return objects


def _document(objects: list[dict]) -> str:
    return "\n---\n".join(yaml.safe_dump(o) for o in objects)


def up(plane, timeout_s: float = 600, log=print) -> None:
    """Builds (or finds) the manager and its image, loads it into the node, applies Kueue's objects and waits until
    Kueue answers: a server-side dry run of a ResourceFlavor goes through Kueue's mutating and validating webhooks
    (the API server can call them only once the cert rotator has made the certificates and put its CA into the
    webhook configurations), and its visibility APIServices are Available (until they are, every discovery, and
    with it kubectl and the namespace controller, reports them as failing)."""
    archive = images.binary_archive(build(log), IMAGE, "manager", USER)
    plane.load_image(archive, IMAGE)
    objects = manifests(plane.ports()["apiserver"])
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_document(objects))
    log(f"Kueue {VERSION} applied; waiting for its manager and webhooks (certificates are made at its first start)")
    probe = json.dumps({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                        "metadata": {"name": "xray-probe"}})
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "APIService"]
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        result = plane.kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
        last = result.stderr.strip()
        if result.returncode == 0:
            available = plane.kubectl("get", "apiservice", *services, "-o",
                                      "jsonpath={.items[*].status.conditions[?(@.type=='Available')].status}",
                                      check=False).stdout.split()
            if available == ["True"] * len(services):
                log(f"Kueue {VERSION} answers: its webhooks admit, its visibility API is available")
                return
            last = f"APIServices {', '.join(services)} Available: {available or 'unknown'}"
        time.sleep(2)
    pods = plane.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
    raise KueueError(f"Kueue did not answer within {timeout_s:.0f} s; last: {last}\n{pods}")


def down(plane) -> None:
    """Deletes Kueue's objects: the webhook configurations and APIServices first, then the rest (and with the
    CRDs every queue and workload)."""
    objects = manifests(plane.ports()["apiserver"])
    gates = [o for o in objects if o["kind"] in GATES]
    rest = [o for o in objects if o["kind"] not in GATES]
    for batch in (gates, rest):
        plane.kubectl("delete", "--ignore-not-found", "--wait=true", "-f", "-", input=_document(batch))
