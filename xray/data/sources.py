"""Where xray shards finds its images: the Kaggle chest_xray layout under a local folder, or under a URI that
TensorFlow's filesystems read (gs://bucket/chest_xray; file:// takes the same code), listed and read here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from xray.data.schema import CLASS_NAMES, SOURCE_SPLITS
from xray.data.split import patient_id


class SourceLayoutError(ValueError):
    """The source directory is not in the expected layout."""


EXPECTED_LAYOUT = (
    "expected the Kaggle chest_xray layout: SRC/train/NORMAL, SRC/train/PNEUMONIA, SRC/test/NORMAL, "
    "SRC/test/PNEUMONIA (SRC/val/... optional) holding JPEG/PNG images"
)


def is_uri(src) -> bool:
    """A source TensorFlow's filesystems read (gs://bucket/path; s3:// with tensorflow-io; file:///abs/path), not
    a local path."""
    return isinstance(src, str) and "://" in src


def read_source(path: Path | str) -> bytes:
    """The bytes of one source file: a local path, or a URI read through tf.io.gfile (OSError when unreadable)."""
    if not is_uri(path):
        return Path(path).read_bytes()
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as error:
        raise OSError(error.message) from None


def _folder_files(folder: Path | str) -> list[tuple[Path | str, str]] | None:
    """(path, name) of the files of a folder, sorted, hidden ones left out; None when there is no such folder."""
    if not is_uri(folder):
        folder = Path(folder)
        if not folder.is_dir():
            return None
        return [(p, p.name) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    import tensorflow as tf

    if not tf.io.gfile.isdir(folder):
        return None
    # An object store lists "sub/" for a deeper prefix; a local file:// folder lists a sub-folder by its name.
    names = sorted(n for n in tf.io.gfile.listdir(folder) if not n.endswith("/") and not n.startswith("."))
    files = [(f"{folder}/{n}", n) for n in names]
    return [(path, name) for path, name in files if not tf.io.gfile.isdir(path)] if folder.startswith("file://") else files


@dataclasses.dataclass
class SourceImage:
    path: Path | str  # a local path, or a URI (gs://...) read through tf.io.gfile
    relative: str
    source_split: str  # train / val / test, as found on disk
    label: int
    patient_id: str
    sha256: str = ""
    height: int = 0
    width: int = 0
    payload: bytes | None = None  # what goes in the record, when it is not the file as is
    kind: str = ""  # what the file was: JPEG, PNG16, TIFF, DICOM...


def readable_name(name: str) -> str:
    """A file name that is not valid UTF-8 (common on shares written by other systems; Python keeps the bad
    bytes as surrogates) with each bad byte written as \\xNN, so that it can go into records and the manifest."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def find_source_images(src: Path | str, patient_pattern: str) -> list[SourceImage]:
    """Every image of the Kaggle layout under src: a local folder, or a URI (gs://bucket/chest_xray) listed through
    tf.io.gfile."""
    if is_uri(src):
        import tensorflow as tf

        src = src.rstrip("/")
        try:
            exists = tf.io.gfile.isdir(src)
        except tf.errors.OpError as error:  # a scheme no filesystem serves here, no credentials, no network
            raise SourceLayoutError(f"cannot read {src}: {error.message.strip()}") from None
    else:
        src = Path(src)
        exists = src.is_dir()
    if not exists:
        raise SourceLayoutError(f"source directory {src} does not exist; {EXPECTED_LAYOUT}")
    pattern = re.compile(patient_pattern)
    found = []
    missing = []
    for split in SOURCE_SPLITS:
        for label, class_name in enumerate(CLASS_NAMES):
            folder = f"{src}/{split}/{class_name}" if is_uri(src) else src / split / class_name
            files = _folder_files(folder)
            if files is None:
                if split != "val":
                    missing.append(f"{split}/{class_name}")
                continue
            for path, raw_name in files:
                name = readable_name(raw_name)
                found.append(SourceImage(path, f"{split}/{class_name}/{name}", split, label, patient_id(name, pattern)))
    if missing:
        raise SourceLayoutError(f"{src} has no {', '.join(missing)} folder(s); {EXPECTED_LAYOUT}")
    if not found:
        raise SourceLayoutError(f"{src} has the class folders but no files in them; {EXPECTED_LAYOUT}")
    return found
