"""The receiving side of `xray upload` (xray.data.upload): runs where the volume is mounted (the uploader pod, through
`kubectl exec -i`, or this machine with --local), and changes DEST only with what it verified itself.

    python -m xray.data.receiver state DEST            each split's index (path -> size, sha256), as JSON
    python -m xray.data.receiver receive DEST SPLIT    a tar stream on stdin -> DEST/SPLIT, swapped in when verified
    python -m xray.data.receiver remove DEST SPLIT     a split gone from the source
    python -m xray.data.receiver file DEST NAME        one file on stdin -> DEST/NAME, swapped in whole; prints
                                                       its sha256 (make weights-cluster)

What it guarantees is in xray.data.upload's docstring. Standard library only. The names and errors both sides share
live here, the lower of the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

SPLITS = ("train", "val", "test")
INDEX_NAME = ".xray-index.json"  # inside DEST/SPLIT: what the receiver verified
LIST_NAME = ".xray-upload-list.json"  # the last member of each stream: the split's full file list
CHUNK = 1 << 20


class UploadError(Exception):
    """An upload that cannot go on, in one line; ``code`` 2: the source is refused (nothing sent), 1: the rest."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def name_problem(name: str) -> str | None:
    """Why a member name must not be extracted (tarfile's "data" filter rules), or None."""
    if not name or any(ord(ch) < 32 for ch in name):  # NUL included
        return "an empty name or control characters in it"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "a '..' component (it would land outside the folder)"
    return None


def _recover(root: Path, split: str) -> None:
    """Repairs a swap that a kill interrupted: the old copy goes back if the new one is not in place."""
    final, old = root / split, root / f".old-{split}"
    if old.is_dir():
        if final.is_dir() and (final / INDEX_NAME).is_file():
            shutil.rmtree(old)
        else:
            if final.exists():
                shutil.rmtree(final)
            os.rename(old, final)


def state(dest: str) -> dict:
    """{split: index or None (a folder without an index: uploaded by an older version, sent again)}."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    found = {}
    for split in SPLITS:
        _recover(root, split)
        if (root / split).is_dir():
            try:
                found[split] = json.loads((root / split / INDEX_NAME).read_text())
            except (OSError, ValueError):
                found[split] = None
    return found


def link_tree(source: Path, target: Path) -> None:
    """target as a copy of source made of hard links (no data copied; files are only ever replaced, never
    written in place, so the source copy cannot change through them)."""
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir()  # top-down into a fresh target: each folder's parent exists, the folder does not
        for name in files:
            if name != INDEX_NAME:
                os.link(Path(folder) / name, target / relative / name)


def receive(dest: str, split: str, stream) -> dict:
    """Reads one split's tar stream, verifies it against its list, swaps it in; raises UploadError otherwise."""
    if split not in SPLITS:
        raise UploadError(f"unknown split {split!r}")
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    _recover(root, split)
    final, staging, old = root / split, root / f".partial-{split}", root / f".old-{split}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        previous = json.loads((final / INDEX_NAME).read_text())
    except (OSError, ValueError):  # no copy yet, or one without a readable index: nothing on the volume vouched for
        previous = {}
    try:
        if previous:
            link_tree(final, staging)
        staging.mkdir(exist_ok=True)  # made by link_tree when there is a previous copy
        expected, received = None, {}
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    if info.name == LIST_NAME:
                        expected = json.loads(tar.extractfile(info).read())
                        continue
                    problem = name_problem(info.name) or (None if info.isfile() else "a type other than a regular file")
                    if problem:
                        raise UploadError(f"member {info.name!r} has {problem}")
                    target = staging / info.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(f".{target.name}.part")
                    digest, source = hashlib.sha256(), tar.extractfile(info)
                    with open(partial, "wb") as f:
                        while chunk := source.read(CHUNK):
                            digest.update(chunk)
                            f.write(chunk)
                    os.replace(partial, target)  # a new file: a hard-linked old copy is not touched
                    received[info.name] = [info.size, digest.hexdigest()]
        except (tarfile.TarError, EOFError, OSError) as error:
            raise UploadError(f"the stream ended early ({error}): interrupted") from None
        if expected is None:
            raise UploadError("the stream ended before its file list: interrupted")
        for path in [p for p in staging.rglob("*") if p.is_file()]:
            if path.relative_to(staging).as_posix() not in expected:
                path.unlink()
        problems = []
        for name, (size, sha256) in sorted(expected.items()):
            path = staging / name
            if not path.is_file():
                problems.append(f"{name} did not arrive")
            elif path.stat().st_size != size:
                problems.append(f"{name} is {path.stat().st_size} bytes, expected {size}")
            elif name in received and received[name][1] != sha256:
                problems.append(f"{name} arrived with another sha256")
            elif name not in received and previous.get(name) != [size, sha256]:
                problems.append(f"{name} was not sent and the volume's copy differs")
        if problems:
            raise UploadError(f"{len(problems)} file(s) failed verification: {'; '.join(problems[:3])}")
        (staging / INDEX_NAME).write_text(json.dumps(expected))
        if final.exists():
            os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"split": split, "files": len(expected), "received": len(received)}


def remove(dest: str, split: str) -> None:
    if split not in SPLITS:
        raise UploadError(f"unknown split {split!r}")
    root = Path(dest)
    _recover(root, split)
    if (root / split).exists():
        os.rename(root / split, root / f".old-{split}")
        shutil.rmtree(root / f".old-{split}")


def receive_file(dest: str, name: str, stream) -> str:
    """One file from `stream` into DEST/NAME: written under a temporary name beside it, flushed to disk, then renamed
    over it, so a stream cut anywhere leaves the previous DEST/NAME whole. Returns the sha256 of what was written,
    for the sender to compare with its own."""
    problem = "a single name, without folders" if "/" in name or name in (".", "..") else name_problem(name)
    if problem:
        raise UploadError(f"file name {name!r} is refused: {problem}")
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.partial"
    digest = hashlib.sha256()
    try:
        with open(temporary, "wb") as f:
            while block := stream.read(CHUNK):
                digest.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, folder / name)
    finally:
        temporary.unlink(missing_ok=True)
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["state"] and len(argv) == 2:
            print(json.dumps(state(argv[1])))
        elif argv[:1] == ["receive"] and len(argv) == 3:
            print(json.dumps(receive(argv[1], argv[2], sys.stdin.buffer)))
        elif argv[:1] == ["remove"] and len(argv) == 3:
            remove(argv[1], argv[2])
        elif argv[:1] == ["file"] and len(argv) == 3:
            print(receive_file(argv[1], argv[2], sys.stdin.buffer))
        else:
            print("usage: python -m xray.data.receiver state DEST | receive DEST SPLIT | remove DEST SPLIT | "
                  "file DEST NAME", file=sys.stderr)
            return 2
    except (UploadError, OSError) as error:
        print(f"receiver: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
