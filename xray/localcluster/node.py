"""One real node for the local cluster: containerd + runc, a CNI bridge, the kubelet, kube-proxy and CoreDNS,
all on this machine, joined to the control plane of controlplane.py (the way kind makes a node, without a
container around it).

What it sets up on the host, and what `down` takes away again:
- containerd with its config, root, state and socket under /var/lib/xray-node-<hash of the root>/ (the CRI plugin with
  restrict_oom_score_adj: root here may not lower an OOM score, see docs/local-control-plane.md);
- the bridge `xray0` holding 10.244.0.1/24, the pods' gateway; pods get addresses from the CNI bridge and
  host-local plugins (Debian's containernetworking-plugins), with no masquerade;
- an unreachable route for the Service range 10.96.0.0/16 and the chain XRAY-NODE in FORWARD, which rejects
  anything from a pod to an address outside the pod range: no packet from a pod leaves the machine;
- the kubelet (cgroupfs driver, cgroup root /xray-node), kube-proxy (iptables mode, its KUBE-* chains), CoreDNS
  on 10.244.0.1 answering cluster.local only (no forward plugin is built in), behind the kube-dns Service;
- a default StorageClass `xray-local` and a few `local:` PersistentVolumes on the node (folders under
  /var/lib/xray-node-<hash>/volumes/), which the kubelet chowns to the pod's fsGroup;
- sysctls the kubelet and kube-proxy set; the previous values are kept in state.json and written back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from xray.localcluster import host, images

NODE_NAME = "xray-node"
BRIDGE = "xray0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CGROUP_ROOT = "xray-node"
CHAIN = "XRAY-NODE"
STORAGE_CLASS = "xray-local"
NUM_VOLUMES = 8
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns")
NO_REGISTRY = "http://127.0.0.1:1"


class NodeError(RuntimeError):
    pass


class Node:
    """The real node of one control plane (`plane`: a ControlPlane whose API server is up)."""

    def __init__(self, plane):
        self.plane = plane
        # The node's data (containerd's images and snapshots, the kubelet's pods and volumes, the local volumes)
        # lives in a folder named after the cluster's root, not under it: the kubelet and containerd make unix
        # sockets below their folders, a socket's path has at most 104 bytes, and a clone's path (a test's
        # temporary folder) can be longer than that alone.
        self.dir = Path("/var/lib") / f"xray-node-{hashlib.sha256(str(plane.root).encode()).hexdigest()[:10]}"
        self.run_dir = self.dir / "run"
        self.sock = self.run_dir / "containerd.sock"

    # ------------------------------------------------------------------------------------------------
    # Up
    # ------------------------------------------------------------------------------------------------

    def up(self, state: dict, cache: Path, timeout_s: float) -> None:
        if os.geteuid() != 0:
            raise NodeError("the local cluster's node needs root (it makes a bridge, iptables rules and cgroups): run "
                            "make cluster-up as root, or start the control plane alone with make cluster-up NODE=0")
        host.ensure_packages()
        others = [p for p in Path("/sys/fs/cgroup/memory").glob(f"{CGROUP_ROOT}") if any(p.iterdir())]
        if host.links() & {BRIDGE} or others:
            raise NodeError(f"another local cluster's node runs on this machine (bridge {BRIDGE} or cgroup "
                            f"/{CGROUP_ROOT} exists): stop it with make cluster-down in its clone, or start this "
                            "one without a node (make cluster-up NODE=0)")
        state["node"] = {"sysctls": host.sysctls(), "paths_before": [str(p) for p in (
            Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/lib/kubelet")) if p.exists()]}
        self.plane._save(state)
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "volumes"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._network()
        self._cgroup_root()
        state["binaries"].update({"containerd": "/usr/bin/containerd", "kubelet": str(cache / "bin" / "kubelet"),
                                  "kube-proxy": str(cache / "bin" / "kube-proxy"),
                                  "coredns": str(cache / "bin" / "coredns")})
        # No registry: containerd sends every pull through a "proxy" on a closed port of this machine (images come
        # from make image-load), so a missing image fails at once and no registry's name is looked up outside.
        self.plane._start(state, "containerd", ["--config", str(self._containerd_config())],
                          env={"HTTP_PROXY": NO_REGISTRY, "HTTPS_PROXY": NO_REGISTRY, "NO_PROXY": ""})
        self._wait(lambda: self.ctr("version", check=False).returncode == 0, timeout_s, "containerd")
        self.load(images.pause_archive(cache / "bin" / "pause"))
        ports, held = host.reserve_ports("kubelet", "kubelet-healthz", "proxy-healthz", "proxy-metrics", "dns",
                                         "dns-health", "dns-ready")
        try:
            state["ports"].update({f"node-{k}": v for k, v in ports.items()})
            self.plane._save(state)
            self.plane._start(state, "kubelet", self._kubelet_args(ports))
            self._wait(self._ready, timeout_s, f"node {NODE_NAME} Ready")
            self.plane._start(state, "kube-proxy", [f"--config={self._proxy_config(ports)}"])
            self.plane._start(state, "coredns", ["-conf", str(self._corefile(ports))])
            self._dns_service(ports["dns"])
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{ports['dns-ready']}/ready"), timeout_s, "CoreDNS")
        finally:
            held.release()  # each component listens on its port by now
        self._storage()

    def _network(self) -> None:
        host.run("ip", "link", "add", BRIDGE, "type", "bridge")
        host.run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        host.run("ip", "link", "set", BRIDGE, "up")
        # A packet to a Service address that kube-proxy did not translate must not follow the default route.
        host.run("ip", "route", "add", "unreachable", SERVICE_CIDR)
        # Pods reach pods and the host; anything else from a pod is refused here, on the host.
        host.run("iptables", "-N", CHAIN)
        host.run("iptables", "-A", CHAIN, "-s", POD_CIDR, "-d", POD_CIDR, "-j", "ACCEPT")
        host.run("iptables", "-A", CHAIN, "-s", POD_CIDR, "-j", "REJECT", "--reject-with", "icmp-net-unreachable")
        host.run("iptables", "-I", "FORWARD", "1", "-j", CHAIN)
        # Pod to pod through a Service is routed by the host (kube-proxy's DNAT); written back by down().
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        (self.dir / "cni" / "net.d" / "10-xray.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "xray-pods",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "ipam"),
                                  "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]}}]}, indent=2))

    def _cgroup_root(self) -> None:
        for controller in host.CGROUP.iterdir():
            if not (controller / "cgroup.procs").exists():
                continue
            path = controller / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # cgroup v1: an empty cpuset admits no process
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((controller / name).read_text())

    def _containerd_config(self) -> Path:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.dir / 'containerd' / 'root'}"
state = "{self.dir / 'containerd' / 'state'}"
oom_score = 0
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.run_dir / 'containerd-ttrpc.sock'}"
[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: a sandbox that lowers its OOM score dies in runc create.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
  [{cri}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [{cri}.containerd.runtimes.runc.options]
    SystemdCgroup = false
    Root = "{self.run_dir / 'runc'}"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(config)
        return path

    def _kubelet_args(self, ports: dict) -> list[str]:
        import yaml

        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # The node's address is the pods' gateway on the bridge (a kubelet refuses a loopback node IP); the API
            # server reaches the kubelet there with its client certificate, the only identity the kubelet admits.
            "address": GATEWAY, "port": ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": ports["kubelet-healthz"],
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.plane.root / "pki" / "kubelet-ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "failCgroupV1": False, "failSwapOn": False,
            "oomScoreAdj": 0, "containerRuntimeEndpoint": f"unix://{self.sock}",
            "clusterDNS": [DNS_SERVICE_IP], "clusterDomain": "cluster.local",
            "resolvConf": "",  # pods with dnsPolicy Default get no name server of the host's
            "podLogsDir": str(self.dir / "pod-logs"),
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%",
                             "nodefs.inodesFree": "2%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "protectKernelDefaults": False, "registerNode": True,
            "syncFrequency": "5s", "fileCheckFrequency": "5s", "nodeStatusUpdateFrequency": "5s",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [f"--config={path}", f"--kubeconfig={self.plane.kubeconfig}", f"--root-dir={self.dir / 'kubelet'}",
                f"--cert-dir={self.dir / 'kubelet' / 'pki'}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}", "--node-labels=xray.io/node=real", "--v=1"]

    def _proxy_config(self, ports: dict) -> Path:
        import yaml

        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.plane.kubeconfig)}, "mode": "iptables",
            "hostnameOverride": NODE_NAME, "bindAddress": "127.0.0.1", "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{ports['proxy-healthz']}",
            "metricsBindAddress": f"127.0.0.1:{ports['proxy-metrics']}",
            # Leave the host's conntrack settings and route_localnet alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "udpTimeout": "0s", "udpStreamTimeout": "0s"},
            "iptables": {"localhostNodePorts": False}, "nodePortAddresses": [f"{GATEWAY}/32"],
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _corefile(self, ports: dict) -> Path:
        kubeconfig = self.plane.kubeconfig
        path = self.dir / "Corefile"
        # cluster.local only: a name outside it gets REFUSED (no server block for it), nothing is forwarded.
        path.write_text(f"""cluster.local:{ports['dns']} in-addr.arpa:{ports['dns']} {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{ports['dns-health']}
    ready 127.0.0.1:{ports['dns-ready']}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig} xray-local
        pods insecure
        ttl 0
    }}
}}
""")
        return path

    def _dns_service(self, port: int) -> None:
        """kube-dns: a Service without selector whose endpoint is CoreDNS on the host (the pods' gateway)."""
        ports = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
                 {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port}]
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                   "spec": {"clusterIP": DNS_SERVICE_IP, "ports": ports}}
        slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": "kube-dns-host", "namespace": "kube-system",
                               "labels": {"kubernetes.io/service-name": "kube-dns",
                                          "endpointslice.kubernetes.io/managed-by": "xray.localcluster"}},
                  "addressType": "IPv4", "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
                  "ports": [{"name": p["name"], "port": port, "protocol": p["protocol"]} for p in ports]}
        self.plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": [service, slice_]}))

    def _storage(self) -> None:
        items = [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                  "metadata": {"name": STORAGE_CLASS,
                               "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                  "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate",
                  "reclaimPolicy": "Retain"}]
        items += [self.volume(f"{STORAGE_CLASS}-{i}") for i in range(NUM_VOLUMES)]
        self.plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def volume(self, name: str, claim: tuple[str, str] | None = None) -> dict:
        """A `local:` PersistentVolume on this node (a folder under its volumes/), optionally pre-bound."""
        path = self.dir / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        spec = {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                "local": {"path": str(path)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}
        if claim:
            spec["claimRef"] = {"namespace": claim[0], "name": claim[1]}
        return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}

    def ctr(self, *args: str, check: bool = True):
        return host.run("ctr", f"--address={self.sock}", "--namespace=k8s.io", *args, check=check)

    def load(self, archive: Path, *names: str) -> None:
        """Imports an image archive into the node's containerd, tagged with each of `names` as well."""
        result = self.ctr("images", "import", str(archive))
        imported = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("unpacking ")]
        source = imported[0] if imported else None
        for name in names:
            if source is None:
                raise NodeError(f"ctr images import of {archive} named no image")
            if images.normalize(name) == source:
                continue  # imported under that name already
            self.ctr("images", "rm", images.normalize(name), check=False)
            self.ctr("images", "tag", source, images.normalize(name))

    def _ready(self) -> bool:
        result = self.plane.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    @staticmethod
    def _http_ok(url: str) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.plane._processes.items():
                if name in COMPONENTS and process.poll() is not None:
                    tail = (self.plane.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
                    raise NodeError(f"{name} exited with status {process.returncode} while waiting for {what}; "
                                    f"{self.plane.logs / (name + '.log')} ends with:\n" + "\n".join(tail))
            if predicate():
                return
            time.sleep(0.5)
        raise NodeError(f"timed out after {timeout_s:.0f} s waiting for {what}; see {self.plane.logs}")

    # ------------------------------------------------------------------------------------------------
    # Down
    # ------------------------------------------------------------------------------------------------

    def down(self, state: dict) -> list[str]:
        """Stops the node's processes and containers and takes back everything it added to the host."""
        node = state.get("node")
        if node is None:
            return []
        stopped = [name for name in ("coredns", "kube-proxy", "kubelet") if self.plane._stop(state, name)]
        if "containerd" in state.get("pids", {}) and self.plane._alive(state["pids"]["containerd"],
                                                                        state["binaries"]["containerd"]):
            self._remove_containers()
        if self.plane._stop(state, "containerd"):
            stopped.append("containerd")
        self._kill_shims()
        host.unmount_under(self.dir)
        if "kube-proxy" in state["binaries"] and Path(state["binaries"]["kube-proxy"]).exists():
            host.run(state["binaries"]["kube-proxy"], "--cleanup", check=False)
        host.remove_chains(("KUBE-", CHAIN))
        host.remove_chains(("KUBE-",), binary="ip6tables")
        host.run("ip", "route", "del", "unreachable", SERVICE_CIDR, check=False)
        for link in host.links():
            if link == BRIDGE or link.startswith("veth") and self._ours(link):
                host.run("ip", "link", "del", link, check=False)
        host.remove_cgroup(CGROUP_ROOT)
        host.restore_sysctls(node["sysctls"])
        before = set(node.get("paths_before", []))
        for path in ("/run/containerd", "/var/lib/cni", "/var/lib/kubelet"):
            if path not in before:
                host.unmount_under(Path(path))
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        state.pop("node")
        self.plane._save(state)
        return stopped

    @staticmethod
    def _ours(link: str) -> bool:
        master = Path(f"/sys/class/net/{link}/master")
        return not master.exists() or master.resolve().name == BRIDGE

    def _remove_containers(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 20
        while self.ctr("tasks", "ls", "-q", check=False).stdout.split() and time.monotonic() < deadline:
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "delete", "--force", task, check=False)
            time.sleep(0.2)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def _kill_shims(self) -> None:
        """containerd-shim-runc-v2 outlives containerd by design: the ones serving this node's socket go now."""
        needle = str(self.sock).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and needle in cmdline:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
