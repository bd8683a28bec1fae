"""What the local cluster's real node needs from the host, and what it must give back.

Debian's packages (containerd, runc, the CNI plugins, iptables, ...) are installed here when missing; the
kernel state a node touches (mounts, links, routes, iptables chains, cgroups, sysctls, processes) is read into
a snapshot so that tear-down can undo exactly what the node added and a test can compare before and after.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

# command -> the Debian package that ships it.
PACKAGES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "iptables": "iptables",
    "ip": "iproute2",
    "conntrack": "conntrack",
    "socat": "socat",
    "mount": "mount",
}
BUILD_PACKAGES = {"mmdebstrap": "mmdebstrap", "dockerd": "docker.io"}
# The sysctls the kubelet and kube-proxy may set, and the one the node sets itself (forwarding between pods
# through a Service); tear-down writes back what was there before.
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "kernel/panic", "kernel/panic_on_oops",
           "vm/overcommit_memory", "vm/panic_on_oom", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
           "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
           "net/netfilter/nf_conntrack_tcp_timeout_close_wait")
TABLES = ("filter", "nat", "mangle", "raw")
CGROUP = Path("/sys/fs/cgroup")


class HostError(RuntimeError):
    pass


def _which(command: str) -> bool:
    return Path(command).exists() if command.startswith("/") else shutil.which(command) is not None


def ensure_packages(commands: dict[str, str] = PACKAGES) -> list[str]:
    """Installs the Debian packages whose commands are missing; returns the ones installed.

    One line naming the packages when that cannot be done (not root, no apt-get, no network)."""
    missing = sorted({package for command, package in commands.items() if not _which(command)})
    if not missing:
        return []
    names = " ".join(missing)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise HostError(f"the local cluster's node needs the Debian packages {names}: install them as root "
                        f"(apt-get install {names}) and run this again")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        result = subprocess.run(args, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise HostError(f"{' '.join(args[:2])} failed for {names} ({tail[0]}); install them by hand and run again")
    return missing


def reserve_ports(*names: str):
    """``({name: port}, reservation)``: 127.0.0.1 ports for components that are told theirs on their command line,
    which no other program can be given before they bind (xray.trainer.ports). Release once they listen."""
    from xray.trainer.ports import Reservation

    held = Reservation(len(names))
    return dict(zip(names, held.ports)), held


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise HostError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# ----------------------------------------------------------------------------------------------------
# What the node adds to the host, read and undone.
# ----------------------------------------------------------------------------------------------------


def mounts_under(*prefixes: Path) -> list[str]:
    """Mount points at or below any prefix, deepest first (the order to unmount them in)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(str(p).rstrip("/") + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def unmount_under(*prefixes: Path) -> None:
    for _ in range(3):  # a mount can be stacked on another at the same point
        points = mounts_under(*prefixes)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)


def iptables_chains() -> dict[str, set[str]]:
    """table -> chain names (IPv4), from iptables-save."""
    chains = {}
    for table in TABLES:
        result = run("iptables-save", "-t", table, check=False)
        chains[table] = {line[1:].split()[0] for line in result.stdout.splitlines() if line.startswith(":")}
    return chains


def remove_chains(prefixes: tuple[str, ...], binary: str = "iptables") -> None:
    """Deletes every rule that jumps to a chain with one of the prefixes, then those chains, in every table."""
    for table in TABLES:
        rules = run(f"{binary}-save", "-t", table, check=False).stdout.splitlines()
        ours = [line[1:].split()[0] for line in rules if line.startswith(":") and line[1:].startswith(prefixes)]
        for line in rules:
            if not line.startswith("-A "):
                continue
            words = shlex.split(line[3:])
            jumps = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-j", "-g")]
            if words[0] not in ours and any(jump in ours for jump in jumps):
                run(binary, "-t", table, "-D", *words, check=False)
        for chain in ours:
            run(binary, "-t", table, "-F", chain, check=False)
        for chain in ours:
            run(binary, "-t", table, "-X", chain, check=False)


def links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in run("ip", "-o", "link").stdout.splitlines()}


def routes() -> set[str]:
    return {line.strip() for line in run("ip", "route", "show", "table", "all", check=False).stdout.splitlines()}


def sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        path = Path("/proc/sys") / name
        if path.exists():
            values[name] = path.read_text().strip()
    return values


def restore_sysctls(before: dict[str, str]) -> None:
    for name, value in before.items():
        path = Path("/proc/sys") / name
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError:
            pass


def cgroups() -> set[str]:
    """The top-level cgroup of every controller (cgroup v1) or of the unified hierarchy."""
    found = set()
    for controller in CGROUP.iterdir():
        if controller.is_dir():
            found |= {f"{controller.name}/{d.name}" for d in controller.iterdir() if d.is_dir()}
    return found


def remove_cgroup(name: str) -> None:
    """rmdir, deepest first, of <controller>/<name> in every controller (its processes must be gone)."""
    for controller in CGROUP.iterdir():
        top = controller / name.strip("/")
        if not top.is_dir():
            continue
        for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            try:
                path.rmdir()
            except OSError:
                pass


def snapshot() -> dict:
    """The host state a node may change (what `make cluster-down` must leave as it found it)."""
    return {"mounts": sorted(mounts_under(Path("/"))), "links": sorted(links()), "routes": sorted(routes()),
            "iptables": {t: sorted(c) for t, c in iptables_chains().items()}, "cgroups": sorted(cgroups()),
            "sysctls": sysctls(),
            "paths": sorted(str(p) for p in (Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/lib/kubelet"),
                                              Path("/var/run/netns"), Path("/run/netns"), Path("/etc/cni"))
                            if p.exists())}
