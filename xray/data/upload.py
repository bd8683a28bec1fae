"""Puts a local image folder (Kaggle chest_xray layout: train/, test/, optional val/; or a .zip/.tar of it) onto a
volume, through a receiver that runs where the volume is mounted (the uploader pod, by `kubectl exec`), and
verifies every file before anything on the volume changes.

    sender (xray upload, this machine)             receiver (python -m xray.data.receiver, in the pod)
    ----------------------------------             --------------------------------------------
    list SRC, check every member name              state DEST: each split's index (path -> size, sha256)
    hash every file (size, sha256)
    per split: send the files whose (size, sha256) differ from the index, then the split's full list
                                                   stage DEST/.partial-SPLIT: the current copy by hard links,
                                                   each received file written beside and renamed in
                                                   drop files not in the list; check every listed file
                                                   (received: sha256 of what arrived; kept: size and index)
                                                   only then swap it in as DEST/SPLIT with its index
    a split gone from SRC                          removed from DEST (the sender says so)

What this guarantees:
- Nothing is marked done that did not arrive whole: the index is written by the receiver from what it checked,
  never from what the sender counted. A stream that stops (a bad member in the archive, a dropped connection,
  a killed sender) leaves DEST/SPLIT and its index as they were; the sender waits for the receiver to finish
  and says which member failed.
- A re-run compares file by file (like rsync with checksums): a film moved from NORMAL to PNEUMONIA, edited in
  place at the same size, added or deleted, is sent or removed; unchanged files are not sent again.
- Member names are checked on this side before anything is sent, by the rules of Python's tarfile "data"
  filter: no absolute paths, no "..", no links, devices or other special files (one line naming the member).
- Memory stays bounded: members are read and sent in 1 MiB chunks; a zip member that inflates past its
  declared size is refused.
- The previous good copy is swapped out only after the new one is verified; a kill between the two renames is
  repaired by the next run (the old copy is put back).

Only image-folder content is sent: anything else (macOS __MACOSX/, .DS_Store, ._ files) is left out. The
receiver needs Python's standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath

from xray.data.receiver import CHUNK, LIST_NAME, SPLITS, UploadError, name_problem

SKIP_PARTS = {"__MACOSX", ".DS_Store"}


# ----------------------------------------------------------------------------------------------------
# Sender: the local source.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    path: str  # relative to the split, POSIX
    size: int
    open: object  # () -> binary file object
    origin: str  # how to name it to the user: the path inside SRC


def _skip(parts) -> bool:
    return any(part in SKIP_PARTS or part.startswith("._") for part in parts)


def _find_root(names: list[PurePosixPath]) -> tuple[str, ...]:
    """The shallowest folder that holds a train/ folder (Kaggle's zip nests chest_xray/chest_xray/)."""
    roots = {p.parts[:i] for p in names for i, part in enumerate(p.parts[:-1]) if part == "train"}
    if not roots:
        raise UploadError("no train/ folder found: expected the Kaggle chest_xray layout (train/{NORMAL,PNEUMONIA}/, "
                          "test/..., optionally val/...)", code=2)
    return min(roots, key=len)


def _refuse(src, name: str, reason: str):
    raise UploadError(f"SRC={src}: member {name!r} has {reason}; nothing was sent. Fix or re-create the archive", code=2)


def list_source(src: str | Path) -> dict[str, list[Member]]:
    """split -> its files, from a folder, a .zip or a .tar(.gz); every member name checked first."""
    if "://" in str(src):
        raise UploadError(f"SRC={src}: only local folders and archives are uploaded; for a bucket, copy it into the "
                          "volume from a pod of your own (e.g. gcloud storage rsync) or shard it where it is readable",
                          code=2)
    src = Path(src)
    if not src.exists():
        raise UploadError(f"SRC={src} does not exist", code=2)
    entries: list[tuple[PurePosixPath, int, object, str | None]] = []  # (path, size, open, special kind or None)
    if src.is_dir():
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            entries.append((PurePosixPath(path.relative_to(src).as_posix()), path.stat().st_size,
                            lambda path=path: open(path, "rb"), None))
    elif zipfile.is_zipfile(src):
        archive = zipfile.ZipFile(src)
        for info in archive.infolist():
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)  # 0 when the zip records no file type (zipfile's writestr, most tools)
            special = "a link" if stat.S_ISLNK(mode) else ("a special file" if kind and not stat.S_ISREG(mode) else None)
            entries.append((PurePosixPath(info.filename), info.file_size, lambda info=info: archive.open(info), special))
            if name_problem(info.filename):
                _refuse(src, info.filename, name_problem(info.filename))
    elif tarfile.is_tarfile(src):
        archive = tarfile.open(src)
        for info in archive.getmembers():
            if name_problem(info.name):
                _refuse(src, info.name, name_problem(info.name))
            if info.isdir():
                continue
            special = None if info.isfile() else ("a link" if info.issym() or info.islnk() else "a special file (device or fifo)")
            entries.append((PurePosixPath(info.name), info.size, lambda info=info: archive.extractfile(info), special))
    else:
        raise UploadError(f"SRC={src} is not a folder, a .zip or a .tar archive", code=2)
    entries = [e for e in entries if not _skip(e[0].parts)]
    root = _find_root([e[0] for e in entries])
    splits: dict[str, list[Member]] = {}
    for path, size, opener, special in entries:
        if path.parts[:len(root)] != root:
            continue
        relative = path.parts[len(root):]
        if len(relative) >= 2 and relative[0] in SPLITS:
            if special:
                _refuse(src, str(path), special)
            splits.setdefault(relative[0], []).append(Member(str(PurePosixPath(*relative[1:])), size, opener, str(path)))
    return splits


def member_chunks(member: Member):
    """The member's bytes in chunks; refuses one that is longer or shorter than its declared size (a zip member
    that inflates past its header is stopped at the header's size plus one chunk, never read whole)."""
    seen = 0
    with member.open() as f:
        while chunk := f.read(CHUNK):
            seen += len(chunk)
            if seen > member.size:
                raise OSError(f"more bytes than the {member.size} its header declares")
            yield chunk
    if seen != member.size:
        raise OSError(f"{seen} bytes where its header declares {member.size}")


def file_list(members: list[Member], progress=None) -> dict[str, list]:
    """{path: [size, sha256]} of the local files (read once, in chunks)."""
    listed = {}
    for member in members:
        digest = hashlib.sha256()
        try:
            for chunk in member_chunks(member):
                digest.update(chunk)
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise UploadError(f"cannot read {member.origin} from SRC ({error}); nothing was sent") from None
        listed[member.path] = [member.size, digest.hexdigest()]
        if progress:
            progress.add(member.size)
    return listed


# ----------------------------------------------------------------------------------------------------
# Sender: transports and the upload.
# ----------------------------------------------------------------------------------------------------


class Transport:
    """Runs ``python -m xray.data.receiver ARGS`` where the volume is: in a pod (kubectl exec -i) or on this machine."""

    def __init__(self, prefix: list[str], python: str):
        self.prefix, self.python = prefix, python

    def run(self, args: list[str], stream=None) -> subprocess.CompletedProcess:
        argv = [*self.prefix, self.python, "-m", "xray.data.receiver", *args]
        if stream is None:
            return subprocess.run(argv, capture_output=True)
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        local_error = None
        try:
            stream(process.stdin)
        except BrokenPipeError:
            pass  # the receiver failed; its status and stderr say why
        except BaseException as error:  # noqa: BLE001 - the stream stops; the receiver is waited for below
            local_error = error
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
            process.stdin = None  # closed: communicate() must not flush it again
        out, err = process.communicate()  # the receiver sees the stream end, cleans up and exits: wait for it
        if local_error is not None:
            raise local_error
        return subprocess.CompletedProcess(argv, process.returncode, out, err)


def kubectl_exec(namespace: str, pod: str) -> Transport:
    return Transport(["kubectl", "exec", "-i", "-n", namespace, pod, "--"], "python")


def local_exec() -> Transport:
    """The receiver on this machine (tests, or a volume mounted here)."""
    return Transport([], sys.executable)


class _Progress:
    def __init__(self, total_bytes: int, out, verb: str):
        self.total, self.done, self.files, self.out, self.verb = total_bytes, 0, 0, out, verb
        self.started = self.last = time.monotonic()

    def add(self, size: int) -> None:
        self.done += size
        self.files += 1
        now = time.monotonic()
        if now - self.last >= 1 or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            self.out.write(f"\r  {self.verb} {self.files} files, {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                           f"({rate:.1f} MB/s)")
            self.out.flush()

    def end(self) -> None:
        if self.files:
            self.out.write("\n")


def receiver_error(result) -> str:
    """What a failed receiver command said: its last line on stderr, or its exit status when it said nothing."""
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def upload(src: str | Path, dest: str, transport: Transport, out=sys.stderr) -> dict:
    """Makes DEST match SRC split by split through ``transport``; returns what it did."""
    splits = list_source(src)  # always has train: the root is where a train/ folder with a file in it is
    dest = dest.rstrip("/")
    result = transport.run(["state", dest])
    if result.returncode != 0:
        raise UploadError(f"cannot read {dest} where it is mounted: {receiver_error(result)}")
    remote = json.loads(result.stdout.decode())
    report = {"sent": [], "skipped": [], "removed": [], "dest": dest, "files_sent": 0, "files_removed": 0}
    # Every local file is read and hashed before anything on the volume changes: a bad member stops the run here.
    lists = {}
    for split, members in sorted(splits.items()):
        hashing = _Progress(sum(m.size for m in members), out, f"{split}: checking")
        lists[split] = file_list(members, hashing)
        hashing.end()
    for split in sorted(set(remote) - set(splits)):
        result = transport.run(["remove", dest, split])
        if result.returncode != 0:
            raise UploadError(f"{split}: cannot remove it from {dest}: {receiver_error(result)}")
        out.write(f"{split}: not in SRC any more; removed {dest}/{split} ({len(remote[split] or {})} files)\n")
        report["removed"].append(split)
    for split, members in sorted(splits.items()):
        total, listed = sum(m.size for m in members), lists[split]
        on_volume = remote.get(split)
        send = [m for m in members if on_volume is None or on_volume.get(m.path) != listed[m.path]]
        gone = sorted(set(on_volume or {}) - set(listed))
        if on_volume is not None and not send and not gone:
            out.write(f"{split}: up to date on the volume ({len(members)} files, {total} bytes), skipped\n")
            report["skipped"].append(split)
            continue
        what = f"{len(send)} of {len(members)} files ({sum(m.size for m in send) / 1e6:.1f} MB)"
        out.write(f"{split}: sending {what}" + (f", removing {len(gone)}" if gone else "") + "\n")
        progress = _Progress(sum(m.size for m in send), out, "sent")

        def stream(pipe, send=send, listed=listed, progress=progress):
            # Python's default tar format is PAX (any name length, UTF-8 names); a TarInfo's mode is 0o644.
            with tarfile.open(fileobj=pipe, mode="w|") as tar:
                for member in send:
                    info = tarfile.TarInfo(member.path)
                    info.size, info.mtime = member.size, int(time.time())
                    tar.addfile(info, _Verified(member, listed[member.path][1]))
                    progress.add(member.size)
                body = json.dumps(listed).encode()
                info = tarfile.TarInfo(LIST_NAME)
                info.size, info.mtime = len(body), int(time.time())
                tar.addfile(info, io.BytesIO(body))

        try:
            result = transport.run(["receive", dest, split], stream=stream)
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:  # _Changed is an OSError
            progress.end()
            origin = getattr(error, "origin", None)  # set by _Verified: the member being read
            what = f"reading {origin}" if origin else "sending"
            raise UploadError(f"{split}: {what} failed ({error}); the stream was stopped and {dest}/{split} on the "
                              "volume is unchanged") from None
        progress.end()
        if result.returncode != 0:
            raise UploadError(f"{split}: the receiving side refused the upload ({receiver_error(result)}); "
                              f"{dest}/{split} is unchanged. Re-run the same command")
        report["sent"].append(split)
        report["files_sent"] += len(send)
        report["files_removed"] += len(gone)
    return report


class _Changed(OSError):
    pass


class _Verified:
    """A file object over a member's chunks for tarfile.addfile; fails if the bytes differ from the hash taken
    when the list was made (the file changed in between), so the receiver never gets a list that lies."""

    def __init__(self, member: Member, sha256: str):
        self.member, self.expected = member, sha256
        self.chunks, self.buffer, self.digest = member_chunks(member), b"", hashlib.sha256()
        self.taken, self.checked = 0, False

    def read(self, size: int = -1) -> bytes:
        try:
            while size < 0 or len(self.buffer) < size:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.digest.update(chunk)
                self.taken += len(chunk)
                self.buffer += chunk
            # tarfile reads exactly the declared size, never past it: check as soon as all of it was taken.
            if self.taken >= self.member.size and not self.checked:
                self.checked = True
                next(self.chunks, None)  # member_chunks' own end: a file that grew or shrank raises here
                if self.digest.hexdigest() != self.expected:
                    raise _Changed("it changed while it was being uploaded")
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            error.origin = self.member.origin
            raise
        data, self.buffer = (self.buffer, b"") if size < 0 else (self.buffer[:size], self.buffer[size:])
        return data
