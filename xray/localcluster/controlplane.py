"""A local Kubernetes cluster: real etcd, kube-apiserver, kube-controller-manager and kube-scheduler built
from Kubernetes' own Go modules (build.sh), one real node that runs containers (node.py: kubelet, containerd,
CNI bridge, kube-proxy, CoreDNS), and KWOK faking the kubelets of two more nodes for shapes this machine cannot
hold (many workers, GPUs). The KWOK nodes carry the taint kwok.x-k8s.io/node=fake:NoSchedule when the real
node is there, so that only a pod that asks for a simulated node lands on one.

    python -m xray.localcluster up      # make cluster-up: prints the kubeconfig path
    python -m xray.localcluster down    # make cluster-down: stops what `up` started, removes its data

In the manner of controller-runtime's envtest and kwokctl: processes started with explicit flags, readiness
waited for, one log per component under <root>/logs/, everything stopped by PID. Ports are picked free at
start and data lives under the clone's build/cluster/, so two control planes run side by side (one of them
with the real node: its bridge, cgroup root and iptables chains are the machine's own).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from xray.localcluster import host
from xray.localcluster.node import STORAGE_CLASS, Node, NodeError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ROOT = REPO / "build" / "cluster"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_ANNOTATION = "kwok.x-k8s.io/node"
NUM_NODES = 2
KWOK_TAINT = {"key": NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
# The KWOK stages the nodes and pods go through (files kept by build.sh from KWOK's module): nodes become
# Ready; pods get an IP and run; Job pods complete with exit 0 after the delay in their
# pod-complete.stage.kwok.x-k8s.io/delay annotation (about a second without it), or fail with the exit
# code named in the pod-container-running-failed annotations; deleted pods go away.
STAGES = ("node-fast-node-initialize.yaml", "pod-fast-pod-ready.yaml", "pod-general-pod-complete.yaml",
          "pod-fast-pod-delete.yaml", "pod-chaos-pod-container-running-failed.yaml")


class ControlPlaneError(RuntimeError):
    pass


def build() -> Path:
    """Builds (or finds in the cache) the binaries; returns the cache directory holding bin/ and kwok-stages/."""
    result = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(f"xray/localcluster/build.sh failed with exit {result.returncode} (its output is above)")
    return Path(result.stdout.strip().splitlines()[-1])


class ControlPlane:
    """One control plane rooted in a directory: state.json (ports, PIDs), kubeconfig, data/, pki/, logs/."""

    def __init__(self, root: Path = DEFAULT_ROOT):
        self.root = Path(root).resolve()
        self.kubeconfig = self.root / "kubeconfig"
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        self._processes: dict[str, subprocess.Popen] = {}  # the ones this object started

    # ------------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------------

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    @staticmethod
    def _alive(pid: int, binary: str) -> bool:
        """True when pid runs `binary` (a PID reused by another program is not ours)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return cmdline == binary and status != "Z"

    def running(self) -> bool:
        state = self._state()
        pids = state.get("pids", {})
        return bool(pids) and all(self._alive(pid, state["binaries"][name]) for name, pid in pids.items())

    # ------------------------------------------------------------------------------------------------
    # Start
    # ------------------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 180, node: bool = True) -> Path:
        """Starts every component unless this root's cluster is already running; returns the kubeconfig.

        node=False: the control plane with KWOK nodes only (no container runs)."""
        if self.running():
            return self.kubeconfig
        self.down()
        cache = build()
        bins = {name: str(cache / "bin" / name) for name in COMPONENTS}
        for sub in ("data/etcd", "pki", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ports, held = host.reserve_ports("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        token = secrets.token_hex(16)
        state = {"binaries": bins, "ports": ports, "pids": {}, "root": str(self.root), "real_node": node}
        self._save(state)
        try:
            self._credentials(token)
            self._start(state, "etcd", self._etcd_args(ports))
            self._wait_http(f"http://127.0.0.1:{ports['etcd']}/health", timeout_s, "etcd")
            self._start(state, "kube-apiserver", self._apiserver_args(ports))
            self._wait_http(f"https://127.0.0.1:{ports['apiserver']}/readyz", timeout_s, "kube-apiserver", token)
            self._write_kubeconfig(ports["apiserver"], token)
            self._start(state, "kube-controller-manager", self._controller_manager_args(ports))
            self._start(state, "kube-scheduler", self._scheduler_args(ports))
            self._start(state, "kwok", self._kwok_args(ports, cache))
            self._create_nodes(timeout_s, tainted=node)
            if node:
                Node(self).up(state, cache, timeout_s)
        except NodeError as error:
            self.down(keep_logs=True)
            raise ControlPlaneError(str(error)) from None
        except BaseException:
            self.down(keep_logs=True)
            raise
        finally:
            held.release()  # every component listens on its port by now (or has been stopped)
        return self.kubeconfig

    def _credentials(self, token: str) -> None:
        pki = self.root / "pki"
        # The admin is in system:masters (RBAC's superuser group); the controllers and KWOK use it too.
        (pki / "tokens.csv").write_text(f"{token},xray-admin,xray-admin,system:masters\n")
        (pki / "token").write_text(token)
        if not (pki / "sa.key").exists():
            subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True, capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")],
                           check=True, capture_output=True)
        # The API server's client certificate for the kubelet (logs, exec, port-forward); the kubelet trusts this CA
        # alone and admits no anonymous request.
        self._client_certificate("kubelet-ca", "kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        # The aggregation layer's (front proxy's) client certificate: an aggregated API server (Kueue's visibility
        # API) believes the user the API server names in its headers only from a client with this certificate.
        self._client_certificate("front-proxy-ca", "front-proxy-client", "/CN=front-proxy-client")

    def _client_certificate(self, ca: str, client: str, subject: str) -> None:
        """pki/<ca>.crt, a CA of its own, and pki/<client>.crt/.key signed by it (made once per cluster root)."""
        pki = self.root / "pki"
        if (pki / f"{client}.crt").exists():
            return
        openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-days", "3650"]
        subprocess.run([*openssl, "-x509", "-keyout", str(pki / f"{ca}.key"), "-out", str(pki / f"{ca}.crt"),
                        "-subj", f"/CN=xray-{ca}"], check=True, capture_output=True)
        subprocess.run([*openssl, "-keyout", str(pki / f"{client}.key"), "-out", str(pki / f"{client}.csr"),
                        "-subj", subject], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(pki / f"{client}.csr"), "-CA", str(pki / f"{ca}.crt"),
                        "-CAkey", str(pki / f"{ca}.key"), "-CAcreateserial", "-days", "3650",
                        "-out", str(pki / f"{client}.crt")], check=True, capture_output=True)

    def _etcd_args(self, ports: dict) -> list[str]:
        client = f"http://127.0.0.1:{ports['etcd']}"
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        return ["--name=xray-test", f"--data-dir={self.root / 'data/etcd'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=xray-test={peer}", "--log-level=warn",
                # Test data only: no fsync, small backend, like envtest's etcd.
                "--unsafe-no-fsync=true", "--quota-backend-bytes=1073741824"]

    def _apiserver_args(self, ports: dict) -> list[str]:
        pki = self.root / "pki"
        return [f"--etcd-servers=http://127.0.0.1:{ports['etcd']}", f"--cert-dir={pki}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
                f"--token-auth-file={pki / 'tokens.csv'}", "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16", "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                # Privileged pods are allowed by the API server so that a refusal can only come from Pod Security
                # admission (on by default); nodes are created by the tests, not by kubelets, and must not
                # keep the not-ready taint that TaintNodesByCondition puts on new nodes.
                "--allow-privileged=true", "--disable-admission-plugins=TaintNodesByCondition",
                # Webhooks, CRD conversion and aggregated APIs (Kueue's, kueue.py) are called at their Service's
                # endpoint, not its cluster IP: this API server runs on the host, where no route leads to
                # the Service range (node.py makes it unreachable), as on a control plane outside the pod network.
                "--enable-aggregator-routing=true"]

    def _controller_manager_args(self, ports: dict) -> list[str]:
        pki = self.root / "pki"
        return [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
                # Without kubelets no node heartbeats: the lifecycle controllers would evict every pod.
                "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller",
                f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'apiserver.crt'}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['controller-manager']}",
                f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}"]

    def _scheduler_args(self, ports: dict) -> list[str]:
        return [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}", f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}"]

    def _kwok_args(self, ports: dict, cache: Path) -> list[str]:
        stages = [f"--config={cache / 'kwok-stages' / name}" for name in STAGES]
        return [f"--kubeconfig={self.kubeconfig}", "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                "--cidr=10.250.0.0/16", "--node-ip=10.0.0.1", f"--server-address=127.0.0.1:{ports['kwok']}",
                *stages]

    def _start(self, state: dict, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen([state["binaries"][name], *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
                                   env={**os.environ, **env} if env else None)
        log.close()
        self._processes[name] = process
        state["pids"][name] = process.pid
        self._save(state)

    def _wait_http(self, url: str, timeout_s: float, name: str, token: str | None = None) -> None:
        context = ssl._create_unverified_context()  # readiness only; clients verify with the kubeconfig's CA
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            code = self._processes[name].poll()
            if code is not None:
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise ControlPlaneError(f"{name} exited with status {code} during start; {log} ends with:\n"
                                        + "\n".join(tail))
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except OSError as error:
                last = str(error)
            time.sleep(0.5)
        raise ControlPlaneError(f"{name} not ready at {url} after {timeout_s:.0f} s ({last}); see {self.logs}")

    def _write_kubeconfig(self, port: int, token: str) -> None:
        import yaml

        config = {"apiVersion": "v1", "kind": "Config", "current-context": "xray-local",
                  "clusters": [{"name": "xray-local", "cluster": {
                      "server": f"https://127.0.0.1:{port}",
                      "certificate-authority": str(self.root / "pki" / "apiserver.crt")}}],
                  "users": [{"name": "xray-admin", "user": {"token": token}}],
                  "contexts": [{"name": "xray-local", "context": {"cluster": "xray-local", "user": "xray-admin"}}]}
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, self.kubeconfig)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=input,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _create_nodes(self, timeout_s: float, tainted: bool) -> None:
        import yaml

        # Room for every overlay at once: the base requests 4 CPU / 16 GiB per training worker, the gpu overlay a
        # GPU per pod; every container requests ephemeral-storage, so the nodes have it too.
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "500Gi"}
        nodes = []
        for i in range(NUM_NODES):
            name = f"kwok-node-{i}"
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {NODE_ANNOTATION: "fake"},
                             "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "type": "kwok",
                                        "nvidia.com/gpu.present": "true"}},
                "spec": {"taints": [KWOK_TAINT]} if tainted else {},
                "status": {"allocatable": capacity, "capacity": capacity},
            })
        self.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(n) for n in nodes))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.kubectl("get", "nodes", "-o", "json", check=False)
            if result.returncode == 0:
                items = json.loads(result.stdout)["items"]
                ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                                 for c in n["status"].get("conditions", []))]
                if len(ready) >= NUM_NODES:
                    return
            time.sleep(0.5)
        raise ControlPlaneError(f"KWOK did not make {NUM_NODES} nodes Ready in {timeout_s:.0f} s; see {self.logs}")

    def provide_volume(self, namespace: str, claim: str = "xray-data", on_node: bool = True) -> None:
        """A PersistentVolume bound in advance to namespace/claim: a `local:` volume on the real node, or for pods
        on the KWOK nodes a hostPath under this root (nothing mounts it: no container runs there)."""
        name = f"{namespace}-{claim}"
        if on_node and self._state().get("real_node"):
            volume = Node(self).volume(name, claim=(namespace, claim))
        else:
            volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                      "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                               "persistentVolumeReclaimPolicy": "Retain",
                               "hostPath": {"path": str(self.root / "volumes" / name)},
                               "claimRef": {"namespace": namespace, "name": claim}}}
            if self._state().get("real_node"):  # the claim gets the node's default class: the volume must match
                volume["spec"]["storageClassName"] = STORAGE_CLASS
        self.kubectl("apply", "-f", "-", input=json.dumps(volume))

    def ports(self) -> dict[str, int]:
        """The ports this cluster's components listen on (127.0.0.1): apiserver, etcd, ..."""
        return dict(self._state().get("ports", {}))

    def load_image(self, archive: Path, *names: str) -> None:
        """Imports an image archive into the real node's containerd under each of `names` (kind load, here)."""
        if not self._state().get("real_node"):
            raise ControlPlaneError(f"the cluster at {self.root} has no real node (started with NODE=0): no image "
                                    "can be loaded")
        try:
            Node(self).load(archive, *names)
        except NodeError as error:
            raise ControlPlaneError(str(error)) from None

    # ------------------------------------------------------------------------------------------------
    # Stop
    # ------------------------------------------------------------------------------------------------

    def restart_apiserver(self, down_s: float, timeout_s: float = 120) -> None:
        """Stops the API server, keeps it down for ``down_s`` seconds (the outage a client has to ride out, as during
        a managed control plane's upgrade) and starts it again with the same flags and port; returns once it is
        ready. The other components and the node reconnect on their own."""
        import yaml

        state = self._state()
        token = yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["token"]
        self._stop(state, "kube-apiserver")
        time.sleep(down_s)  # the outage itself
        self._start(state, "kube-apiserver", self._apiserver_args(state["ports"]))
        self._wait_http(f"https://127.0.0.1:{state['ports']['apiserver']}/readyz", timeout_s, "kube-apiserver", token)

    def down(self, keep_logs: bool = True) -> list[str]:
        """Stops what this root started (the node first, then the control plane by PID, newest first), takes
        back what the node added to the host, and removes the data; returns the names of what was stopped."""
        state = self._state()
        stopped = Node(self).down(state) if state.get("node") else []
        for name in reversed(list(state.get("pids", {}))):
            if self._stop(state, name):
                stopped.append(name)
        for sub in ("data", "pki", "node", "volumes"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for path in (self.state_file, self.kubeconfig):
            path.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)
        return stopped

    def _stop(self, state: dict, name: str) -> bool:
        """SIGTERM, then SIGKILL after 15 s, to the component `name` if it still runs; True when it did."""
        pid = state.get("pids", {}).get(name)
        if pid is None:
            return False
        binary = state["binaries"][name]
        alive = self._alive(pid, binary)
        if alive:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while self._alive(pid, binary) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(pid, binary):
                os.kill(pid, signal.SIGKILL)
        if name in self._processes:
            self._processes.pop(name).wait()  # reap our own child
        return alive
