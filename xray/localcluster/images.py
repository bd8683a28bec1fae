"""Images for the local cluster's node, without a registry.

- The pause image (the pod sandbox's first process): the pause program built by build.sh, written here as a
  one-layer image archive in `docker save` layout, which `ctr images import` reads.
- The project image: built from the repository's Dockerfile by a real Docker engine. The public base
  (python:3.11-slim) cannot be pulled on a machine without a registry, so the base is made locally with
  mmdebstrap (Debian bookworm's python3.11) and passed as the Dockerfile's BASE argument. The engine is a
  private dockerd (its own data root in the cache, its own socket, no bridge and no iptables rules) started
  for the build and stopped after it, unless DOCKER_HOST names an engine of your own.
- Both are kept as archives in ~/.cache/xray/images/, the project image keyed on the hash of everything the
  Dockerfile copies, so a second run loads the archive and builds nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from xray.localcluster import host

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XRAY_K8S_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xray")
IMAGES = CACHE / "images"
PAUSE_IMAGE = "xray.local/pause:3.10"
BASE_IMAGE = "xray.local/python-base:bookworm"
BUILD_CGROUP = "xray-image-build"  # the build containers' cgroup parent, removed after the build
# What the Dockerfile copies (and so what the project image's key covers).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock", "requirements-gpu.lock",
           "xray")
# The base: Debian bookworm's Python 3.11 with venv, and CA certificates for pip (python:3.11-slim's role).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


class ImageError(RuntimeError):
    pass


def normalize(name: str) -> str:
    """The full reference containerd stores and the kubelet asks for: docker.io/library/x:tag for x:tag."""
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + (name if "/" in name else f"library/{name}")
    return name


# ----------------------------------------------------------------------------------------------------
# Image archives written here (docker save layout).
# ----------------------------------------------------------------------------------------------------


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def write_archive(out: Path, layer: Path, reference: str, entrypoint: list[str], user: str | None = None) -> None:
    """A one-layer image archive (docker save layout: manifest.json, the config, the layer tar); `user` is the
    image's USER ("uid:gid"), which a pod with runAsNonRoot and no runAsUser needs."""
    with open(layer, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    image_config = {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if user:
        image_config["User"] = user
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created_by": "xray.localcluster.images"}]}, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference],
                            "Layers": [f"{digest.hexdigest()}/layer.tar"]}]).encode()
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as archive:
        _add(archive, config_name, config)
        _add(archive, "manifest.json", manifest)
        archive.add(layer, arcname=f"{digest.hexdigest()}/layer.tar")
    os.replace(tmp, out)


def binary_archive(binary: Path, reference: str, path: str, user: str | None = None) -> Path:
    """A one-layer image holding one static program at /`path`, run as its entrypoint: cached in IMAGES, keyed on
    the program's bytes, the reference and the user."""
    with open(binary, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")  # streamed: Kueue's manager is 87 MB
    digest.update(f"\0{reference}\0{path}\0{user}".encode())
    key = digest.hexdigest()[:12]
    out = IMAGES / f"{path}-{key}.tar"
    if out.exists():
        return out
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as archive:
            info = archive.gettarinfo(str(binary), arcname=path)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755
            with open(binary, "rb") as f:
                archive.addfile(info, f)
        write_archive(out, layer, reference, [f"/{path}"], user)
    return out


def pause_archive(pause_binary: Path) -> Path:
    return binary_archive(pause_binary, PAUSE_IMAGE, "pause")


# ----------------------------------------------------------------------------------------------------
# The project image.
# ----------------------------------------------------------------------------------------------------


def context_key() -> str:
    """Hash of every file the Dockerfile can copy (git's list of the build context, plus untracked files)."""
    digest = hashlib.sha256()
    files = []
    for entry in CONTEXT:
        path = REPO / entry
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                            and not p.name.endswith(".pyc") and ".egg-info" not in str(p)
                            and "localcluster" not in p.parts)  # left out of the image by .dockerignore
        elif path.exists():
            files.append(path)
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def project_archive(log=print) -> Path:
    """The project image's archive for the current sources: from the cache, or built now (minutes, once)."""
    key = context_key()
    out = IMAGES / f"xray-{key}.tar"
    if out.exists():
        return out
    IMAGES.mkdir(parents=True, exist_ok=True)
    host.ensure_packages(host.BUILD_PACKAGES)
    base = base_archive(log)
    with Engine(log) as engine:
        engine.ensure_base(base)
        reference = f"xray.local/xray:{key}"
        cert = os.environ.get("PIP_CERT") or _system_ca()
        log(f"building the project image from the Dockerfile (base {BASE_IMAGE}; minutes on a cold cache)")
        engine.build(reference, cert=cert)
        engine.save(reference, out)
    return out


def derived_archive(name: str, context: Path, log=print) -> Path:
    """An image built from `context`/Dockerfile FROM the project image (build argument PROJECT_IMAGE), cached
    by the hash of the context and of the project image's sources."""
    project = project_archive(log)
    key = hashlib.sha256(project.name.encode() + b"".join(
        str(p.relative_to(context)).encode() + b"\0" + p.read_bytes() for p in sorted(context.rglob("*")) if p.is_file()
    )).hexdigest()[:16]
    out = IMAGES / f"{name}-{key}.tar"
    if out.exists():
        return out
    project_ref = f"xray.local/xray:{project.stem.rsplit('-', 1)[1]}"
    with Engine(log) as engine:
        if engine.run("image", "inspect", project_ref, check=False).returncode != 0:
            engine.run("load", "-i", str(project))
        reference = f"xray.local/{name}:{key}"
        log(f"building {reference} from {context}")
        engine.build(reference, context, f"PROJECT_IMAGE={project_ref}")
        engine.save(reference, out)
    return out


def _system_ca() -> str | None:
    """The host's CA bundle, for pip behind a TLS-inspecting proxy (the build machines here have one)."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(bundle) if bundle.exists() else None


def base_archive(log=print) -> Path:
    """Debian bookworm minbase with Python 3.11 (mmdebstrap; about a minute, once)."""
    recipe = f"bookworm minbase {' '.join(BASE_PACKAGES)}"
    out = IMAGES / f"base-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar"
    if out.exists():
        return out
    log(f"making the base image {BASE_IMAGE} with mmdebstrap ({recipe})")
    with tempfile.TemporaryDirectory(dir=IMAGES) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        host.run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
                 str(rootfs))
        write_archive(out, rootfs, BASE_IMAGE, [])
    return out


class Engine:
    """A private dockerd for one build: data root in the cache (layers survive for the next build), socket,
    exec root and pid file in a temporary folder; no bridge, no iptables rules, builds on the host network.

    One at a time per cache: a second build (another `make image`, a parallel test) waits on the data root's lock
    until the first engine has stopped, since two daemons on one data root corrupt it."""

    def __init__(self, log=print):
        self.log = log
        self.tmp = None
        self.process = None
        self.lock = None
        self.env = dict(os.environ, DOCKER_BUILDKIT="0")

    def __enter__(self) -> "Engine":
        if os.environ.get("DOCKER_HOST"):
            return self  # the user's own engine
        CACHE.mkdir(parents=True, exist_ok=True)
        self.lock = open(CACHE / "docker.lock", "a")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"waiting for another image build to stop its engine ({CACHE / 'docker.lock'})")
            fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="xray-dockerd-"))
        self.fresh = [p for p in (Path("/run/containerd"), Path("/run/docker")) if not p.exists()]
        socket = self.tmp / "docker.sock"
        self.env["DOCKER_HOST"] = f"unix://{socket}"
        log = open(IMAGES / "dockerd.log", "ab")
        self.process = subprocess.Popen(
            ["dockerd", f"--data-root={CACHE / 'docker'}", f"--exec-root={self.tmp / 'exec'}",
             f"--pidfile={self.tmp / 'docker.pid'}", f"--host=unix://{socket}", "--bridge=none", "--iptables=false",
             f"--cgroup-parent={BUILD_CGROUP}",
             "--ip-forward=false", "--ip-masq=false", "--storage-driver=overlay2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while self.run("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ImageError(f"the private Docker engine did not start; see {IMAGES / 'dockerd.log'}")
            time.sleep(0.5)

    def ensure_base(self, archive: Path) -> None:
        if self.run("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
            self.run("load", "-i", str(archive))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise ImageError(f"docker {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result

    def build(self, reference: str, context: Path = REPO, build_arg: str = f"BASE={BASE_IMAGE}",
              cert: str | None = None) -> None:
        """docker build of context/Dockerfile (the repository's: as `make image` runs it, on the local base), on the
        host network; `cert` is staged as the context's .pip-cert.pem for the build only."""
        staged = context / ".pip-cert.pem"
        if cert:
            shutil.copyfile(cert, staged)
        try:
            result = subprocess.run(["docker", "build", "--network=host", f"--build-arg={build_arg}", "-t", reference,
                                     str(context)], env=self.env, capture_output=True, text=True)
        finally:
            staged.unlink(missing_ok=True)
        (IMAGES / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ImageError(f"docker build of {context} failed ({result.returncode}); see {IMAGES / 'build.log'}: "
                             f"{result.stderr.strip()[-500:]}")

    def save(self, reference: str, out: Path) -> None:
        """docker save into `out`, whole or not at all; the archives (and images) of earlier keys of the same name
        go: they are ~3 GB each."""
        tmp = out.with_suffix(".tmp")
        self.run("save", "-o", str(tmp), reference)
        os.replace(tmp, out)
        name, prefix = reference.rsplit(":", 1)[0], out.name.rsplit("-", 1)[0]
        for old in IMAGES.glob(f"{prefix}-*.tar"):
            if old != out:
                old.unlink(missing_ok=True)
                self.run("image", "rm", f"{name}:{old.stem.rsplit('-', 1)[1]}", check=False)

    def __exit__(self, *exc) -> None:
        try:
            self._stop()
        finally:
            if self.lock is not None:
                self.lock.close()  # releases the flock
                self.lock = None

    def _stop(self) -> None:
        if self.tmp is None:
            return
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # dockerd's containerd (started by it) goes with it; its mounts under the exec root and data root too.
        host.unmount_under(self.tmp, CACHE / "docker")
        shutil.rmtree(self.tmp, ignore_errors=True)
        host.remove_cgroup(BUILD_CGROUP)
        for path in self.fresh:  # the shims' sockets of the engine's containerd
            shutil.rmtree(path, ignore_errors=True)
        self.tmp = self.process = None
