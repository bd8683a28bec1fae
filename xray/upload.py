"""Puts a local image folder (Kaggle chest_xray layout: train/, test/, optional val/; or a .zip/.tar of it)
onto the cluster's volume through the uploader pod, as tar streams into `kubectl exec`.

Resume-friendly: each split (train, val, test) travels as its own stream into DEST/.partial-<split>, which
is renamed to DEST/<split> and marked DEST/.done-<split> (files and bytes) only when the stream is complete.
A re-run skips the splits whose marker matches the local files, so an interrupted upload of a large set
resends one split, not everything. Only image-folder content is sent; anything else (macOS __MACOSX/,
.DS_Store) is left out.
"""

from __future__ import annotations

import dataclasses
import io
import shlex
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath

SPLITS = ("train", "val", "test")
SKIP_PARTS = {"__MACOSX", ".DS_Store"}


class UploadError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Member:
    path: str  # relative to the split, POSIX
    size: int
    read: object  # () -> bytes


def _skip(parts) -> bool:
    return any(part in SKIP_PARTS or part.startswith("._") for part in parts)


def _find_root(names: list[PurePosixPath]) -> tuple[str, ...]:
    """The shallowest folder that holds a train/ folder (Kaggle's zip nests chest_xray/chest_xray/)."""
    roots = {p.parts[:i] for p in names for i, part in enumerate(p.parts[:-1]) if part == "train"}
    if not roots:
        raise UploadError("no train/ folder found: expected the Kaggle chest_xray layout (train/{NORMAL,PNEUMONIA}/, "
                          "test/..., optionally val/...)")
    return min(roots, key=len)


def list_source(src: str | Path) -> dict[str, list[Member]]:
    """split -> its files, from a folder, a .zip or a .tar(.gz)."""
    if "://" in str(src):
        raise UploadError(f"SRC={src}: only local folders and archives are uploaded; for a bucket, copy it into the "
                          "volume from a pod of your own (e.g. gcloud storage rsync) or shard it where it is readable")
    src = Path(src)
    if not src.exists():
        raise UploadError(f"SRC={src} does not exist")
    entries: list[tuple[PurePosixPath, int, object]] = []
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            entries.append((PurePosixPath(path.relative_to(src).as_posix()), path.stat().st_size, path.read_bytes))
    elif zipfile.is_zipfile(src):
        archive = zipfile.ZipFile(src)
        for info in archive.infolist():
            if not info.is_dir():
                entries.append((PurePosixPath(info.filename), info.file_size,
                                lambda info=info: archive.read(info)))
    elif tarfile.is_tarfile(src):
        archive = tarfile.open(src)
        for info in archive.getmembers():
            if info.isfile():
                entries.append((PurePosixPath(info.name), info.size,
                                lambda info=info: archive.extractfile(info).read()))
    else:
        raise UploadError(f"SRC={src} is not a folder, a .zip or a .tar archive")
    entries = [e for e in entries if not _skip(e[0].parts)]
    root = _find_root([e[0] for e in entries])
    splits: dict[str, list[Member]] = {}
    for path, size, read in entries:
        if path.parts[:len(root)] != root:
            continue
        relative = path.parts[len(root):]
        if len(relative) >= 2 and relative[0] in SPLITS:
            splits.setdefault(relative[0], []).append(Member(str(PurePosixPath(*relative[1:])), size, read))
    return splits


def marker_text(members: list[Member]) -> str:
    return f"{len(members)} files {sum(m.size for m in members)} bytes"


def kubectl_exec(namespace: str, pod: str):
    """The transport: runs a shell command in the pod, stdin from us (kubectl exec -i)."""
    return _shell(["kubectl", "exec", "-i", "-n", namespace, pod, "--"])


def local_exec():
    """The same commands run on this machine (tests, or a volume mounted here)."""
    return _shell([])


def _shell(prefix: list[str]):
    def run(command: str, stdin: bytes | None = None, stream=None) -> subprocess.CompletedProcess:
        return _run([*prefix, "sh", "-c", command], stdin, stream)
    return run


def _run(argv, stdin, stream):
    if stream is None:
        return subprocess.run(argv, input=stdin, capture_output=True)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stream(process.stdin)
    except BrokenPipeError:
        pass  # the receiver failed; its status and stderr say why
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        process.stdin = None  # closed: communicate() must not flush it again
    out, err = process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


class _Progress:
    def __init__(self, total_bytes: int, out):
        self.total, self.sent, self.files, self.out = total_bytes, 0, 0, out
        self.started = self.last = time.monotonic()

    def add(self, size: int) -> None:
        self.sent += size
        self.files += 1
        now = time.monotonic()
        if now - self.last >= 1 or self.sent == self.total:
            self.last = now
            rate = self.sent / max(now - self.started, 1e-6) / 1e6
            self.out.write(f"\r  {self.files} files, {self.sent / 1e6:.1f}/{self.total / 1e6:.1f} MB ({rate:.1f} MB/s)")
            self.out.flush()


def upload(src: str | Path, dest: str, run, out=sys.stderr) -> dict:
    """Sends each split of SRC into DEST through ``run`` (kubectl_exec or local_exec); returns what it did."""
    splits = list_source(src)
    if "train" not in splits:
        raise UploadError(f"SRC={src} has no train/ images")
    dest_q = shlex.quote(dest.rstrip("/"))
    existing = run(f"mkdir -p {dest_q} && cd {dest_q} && for f in .done-*; do [ -f \"$f\" ] && echo \"$f $(cat \"$f\")\"; done; true")
    if existing.returncode != 0:
        raise UploadError(f"cannot prepare {dest} in the pod: {existing.stderr.decode(errors='replace').strip()}")
    done = dict(line.split(" ", 1) for line in existing.stdout.decode().splitlines() if " " in line)
    report = {"sent": [], "skipped": [], "dest": dest}
    for split, members in sorted(splits.items()):
        marker = marker_text(members)
        if done.get(f".done-{split}") == marker:
            out.write(f"{split}: already on the volume ({marker}), skipped\n")
            report["skipped"].append(split)
            continue
        out.write(f"{split}: sending {marker}\n")
        progress = _Progress(sum(m.size for m in members), out)

        def stream(pipe, members=members, progress=progress):
            with tarfile.open(fileobj=pipe, mode="w|") as tar:
                for member in members:
                    data = member.read()
                    info = tarfile.TarInfo(member.path)
                    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                    progress.add(member.size)

        partial, final = f"{dest_q}/.partial-{split}", f"{dest_q}/{split}"
        receive = (f"rm -rf {partial} && mkdir -p {partial} && tar -x -f - -C {partial} && rm -rf {final} && "
                   f"mv {partial} {final} && echo {shlex.quote(marker)} > {dest_q}/.done-{split}")
        result = run(receive, stream=stream)
        out.write("\n")
        if result.returncode != 0:
            raise UploadError(f"{split}: the receiving side failed ({result.stderr.decode(errors='replace').strip()}); "
                              "re-run the same command: finished splits are skipped")
        report["sent"].append(split)
    return report
