"""Image folders -> sharded TFRecords + manifest.json (``xray shards``).

    xray shards --src /tmp/synth --out /tmp/shards --num-shards 4

Source layout is Kaggle's "chest_xray": ``SRC/{train,test[,val]}/{NORMAL,PNEUMONIA}/*`` (JPEG, PNG, BMP, GIF,
TIFF or DICOM). Kaggle's ``val/`` (16 images) is merged into the train pool; our validation split is carved
from that pool, stratified by class and disjoint by patient. Every image goes through xray.data.formats (DICOM and
TIFF to PNG, size bound from the header) and xray.data.pixels (the decode the serving signature runs): a file that
fails is skipped with its reason in the manifest. One conversion per --out at a time (xray.data.lock); a re-run
replaces only the shards its previous manifest listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np

from xray.data import formats, pixels
from xray.data.lock import FolderLock
from xray.data.manifest import FORMAT_VERSION, Manifest, Shard, sha256_file
from xray.data.schema import CLASS_NAMES, MANIFEST_NAME, SPLITS, encode_example, is_shard_name, shard_name
from xray.data.split import DEFAULT_PATIENT_PATTERN, leaked_test_patients, split_by_patient
from xray.data.errors import SettingError
from xray.data.sources import (EXPECTED_LAYOUT, SourceImage, SourceLayoutError, find_source_images, is_uri,
                               read_source, readable_name)

__all__ = ["EXPECTED_LAYOUT", "SourceImage", "SourceLayoutError", "ShardOptions", "convert", "find_source_images",
           "readable_name", "check_image", "previous_shards", "available_cpus"]

SUPPORTED_MODES = ("1", "L", "LA", "RGB", "RGBA", "P", "I;16", "I;16B", "I;16L", "I")

# ----------------------------------------------------------------------------------------------------
# Scanning and checking source images.
# ----------------------------------------------------------------------------------------------------


def check_image(data: bytes, image_size: int | None) -> tuple[tuple[int, int], bytes | None, str]:
    """Checks one source file the way serving will read it; returns ((height, width), payload or None, kind) or
    raises ValueError with the reason.

    The size comes from the header and is bounded before any pixel is decoded (xray.data.formats.MAX_PIXELS). DICOM
    and formats TensorFlow does not decode become PNGs (xray.data.formats); then the serving signature's own decode
    (xray.data.pixels) reads the file, which catches truncation and anything the server would refuse. The payload is
    the image at ``image_size`` (grayscale JPEG quality 95, or an 8-bit PNG for a 16-bit or DICOM source) when a
    size is given, the converted PNG when there was a conversion, else None (store the file as it is). ``kind`` is what the file was (JPEG, PNG16, DICOM...).
    """
    try:
        decodable, converted = formats.to_decodable(data)
        header = formats.open_header(decodable)
        formats.check_pixels(header.width, header.height)
        if header.mode not in SUPPORTED_MODES:
            raise formats.ImageRefused(f"unsupported image mode {header.mode} (supported: {', '.join(SUPPORTED_MODES)})")
        # What the file was: DICOM, or its own format (TIFF, not the PNG it became), with 16 for a deep one.
        kind = converted if converted == "DICOM" else (converted or header.format or "?") + ("16" if header.mode.startswith("I") else "")
        size = (header.height, header.width)
        try:
            resized = pixels.decode_and_resize(decodable, image_size or 32)
        except Exception:  # noqa: BLE001 - TensorFlow cannot read it: Pillow names the problem, or reads it
            header.load()  # raises with the reason for a truncated or corrupt file
            decodable, converted = formats.encode_pil_png(header), header.format or "?"  # TensorFlow could not decode it
            resized = pixels.decode_and_resize(decodable, image_size or 32)
    except formats.ImageRefused as error:
        raise ValueError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds: UnidentifiedImageError, OSError...
        raise ValueError(str(formats.unreadable(error))) from None
    if image_size is None:
        return size, (decodable if converted else None), kind
    from PIL import Image

    # 8-bit sources are stored as JPEG (quality 95, as before); a deeper source (16-bit PNG, DICOM) as an 8-bit PNG:
    # its only loss is the rounding to 0..255, so the stored film stays within 0.01 of what the server computes.
    buffer = io.BytesIO()
    stored = Image.fromarray(np.clip(np.rint(resized[:, :, 0]), 0, 255).astype(np.uint8), mode="L")
    if kind.endswith("16") or kind == "DICOM":
        stored.save(buffer, format="PNG")
    else:
        stored.save(buffer, format="JPEG", quality=95)
    return size, buffer.getvalue(), kind


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: the cgroup's CPU limit (v2 cpu.max, v1 cfs quota/period) and the affinity
    mask, whichever is smaller. A pod limited to 2 CPUs on a 64-core node gets 2, not 64."""
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
    try:
        quota, period = Path(cgroup_root, "cpu.max").read_text().split()[:2]
        if quota != "max":
            counts.append(math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        try:
            quota = int(Path(cgroup_root, "cpu", "cpu.cfs_quota_us").read_text())
            period = int(Path(cgroup_root, "cpu", "cpu.cfs_period_us").read_text())
            if quota > 0 and period > 0:
                counts.append(math.ceil(quota / period))
        except (OSError, ValueError):
            pass
    return max(1, min(counts))


# ----------------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardOptions:
    num_shards: int = 8
    val_fraction: float = 0.1
    seed: int = 0
    image_size: int | None = None
    patient_pattern: str = DEFAULT_PATIENT_PATTERN
    workers: int = 0  # threads that read, hash, decode, resize and re-encode; 0: one per CPU this process may use (cgroup limit)

    def __post_init__(self):
        if self.workers < 0:
            raise SettingError("workers", self.workers, " must be 0 (one per core) or a positive number")
        if self.num_shards < 1:
            raise SettingError("num_shards", self.num_shards, " must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise SettingError("val_fraction", self.val_fraction, " must be in [0, 1), e.g. 0.1")
        if self.image_size is not None and self.image_size < 32:
            raise SettingError("image_size", self.image_size, " must be at least 32 pixels (ResNet50V2's minimum)")
        try:
            re.compile(self.patient_pattern)
        except re.error as error:
            raise SettingError("patient_pattern", repr(self.patient_pattern), f" is not a regular expression: {error}") from None


def _write_split(out: str, split: str, images: list[SourceImage], num_shards: int, seed: int, progress) -> list[dict]:
    """Writes one split's shards under temporary names; returns [{name, tmp, records}] for the final rename."""
    import tensorflow as tf

    num_shards = max(1, min(num_shards, len(images)))
    order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(images))
    token = uuid.uuid4().hex[:8]
    shards = []
    writers = []
    for index in range(num_shards):
        name = shard_name(split, index, num_shards)
        tmp = f"{out}/.{name}.tmp-{token}"
        shards.append({"file": name, "tmp": tmp, "records": 0})
        writers.append(tf.io.TFRecordWriter(tmp))
    try:
        for position, image_index in enumerate(order):
            image = images[image_index]
            data = image.payload
            if data is None:
                data = read_source(image.path)
                if hashlib.sha256(data).hexdigest() != image.sha256:
                    raise SourceLayoutError(f"{image.path} changed while it was being converted; run xray shards "
                                            "again once the source folder is still")
            record = encode_example(data, image.label, image.patient_id, image.relative, (image.height, image.width))
            shard = position % num_shards  # round robin after shuffling: every shard mixes both classes
            writers[shard].write(record)
            shards[shard]["records"] += 1
            progress(1)
    finally:
        for writer in writers:
            writer.close()
    return shards


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, leave=True)


def previous_shards(out: str) -> list[str]:
    """The shard files the manifest already in ``out`` lists (a re-run replaces those and no others)."""
    import tensorflow as tf

    path = f"{out}/{MANIFEST_NAME}"
    if not tf.io.gfile.exists(path):
        return []
    try:
        with tf.io.gfile.GFile(path) as f:
            listed = json.load(f).get("shards", {})
    except (ValueError, OSError):
        return []
    return [f"{out}/{shard['file']}" for split in listed.values() for shard in split
            if is_shard_name(str(shard.get("file", "")))]


def convert(src: str | Path, out: str, options: ShardOptions = ShardOptions(), show_progress: bool = True) -> Manifest:
    """Checks every image, splits, writes shards and manifest.json atomically; returns the manifest.

    Holds the lock of ``out`` for the whole run (xray.data.lock): a second conversion into it fails at once."""
    with FolderLock(out, f"a shard conversion into {out}"):
        return _convert(src.rstrip("/") if is_uri(src) else Path(src), out.rstrip("/"), options, show_progress)


def _convert(src: Path | str, out: str, options: ShardOptions, show_progress: bool) -> Manifest:
    import tensorflow as tf

    from xray.data.atomic import write_atomic

    started = time.monotonic()
    images = find_source_images(src, options.patient_pattern)
    total_bytes = 0
    skipped = []
    first_seen: dict[str, str] = {}
    good: list[SourceImage] = []

    def inspect(image: SourceImage):
        """Read, hash, decode, resize, re-encode: the costly part, run on all CPUs (PIL and TensorFlow release the
        GIL while they decode, resize and encode). Returns (bytes read, error or None)."""
        try:
            data = read_source(image.path)
        except OSError as error:
            return 0, f"unreadable file ({error.strerror or error})"
        image.sha256 = hashlib.sha256(data).hexdigest()
        try:
            (image.height, image.width), image.payload, image.kind = check_image(data, options.image_size)
        except ValueError as error:
            return len(data), str(error)
        return len(data), None

    from concurrent.futures import ThreadPoolExecutor

    workers = options.workers or available_cpus()
    with _progress_bar(len(images), "checking") if show_progress else _NoProgress() as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        # In order, so that the first of two identical files is the one kept, as in a sequential pass.
        for image, (size, error) in zip(images, pool.map(inspect, images)):
            total_bytes += size
            if error is None and image.sha256 in first_seen:
                error = f"duplicate of {first_seen[image.sha256]} (same bytes)"
                image.payload = None
            if error is not None:
                skipped.append({"path": image.relative, "reason": error})
            else:
                first_seen[image.sha256] = image.relative
                good.append(image)
            bar.update(1)
    if not good:
        raise SourceLayoutError(f"no readable images under {src} ({len(skipped)} skipped); {EXPECTED_LAYOUT}")

    renamed = [{"path": image.relative, "reason": "file name is not valid UTF-8: its bad bytes are recorded as \\xNN"}
               for image in good if str(image.path).rsplit("/", 1)[-1] != Path(image.relative).name]
    splits = split_by_patient(good, options.val_fraction, options.seed)
    tf.io.gfile.makedirs(out)
    written = {}
    with _progress_bar(len(good), "writing") if show_progress else _NoProgress() as bar:
        for split in SPLITS:
            if splits[split]:
                written[split] = _write_split(out, split, splits[split], options.num_shards, options.seed, bar.update)
    # Everything is written: only now do final names appear. The old manifest goes first, then the shards it
    # listed (and no other file): a kill in between leaves shards without a manifest (refused by readers), never
    # a manifest naming a mix.
    old = previous_shards(out)
    if tf.io.gfile.exists(f"{out}/{MANIFEST_NAME}"):
        tf.io.gfile.remove(f"{out}/{MANIFEST_NAME}")
    new_names = {f"{out}/{shard['file']}" for shards in written.values() for shard in shards}
    for path in old:
        if path not in new_names and tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    shards: dict[str, list[Shard]] = {}
    for split, parts in written.items():
        for part in parts:
            final = f"{out}/{part['file']}"
            tf.io.gfile.rename(part["tmp"], final, overwrite=True)
            shards.setdefault(split, []).append(
                Shard(part["file"], part["records"], tf.io.gfile.stat(final).length, sha256_file(final)))

    seconds = time.monotonic() - started
    counts = {s: {c: sum(1 for i in splits[s] if i.label == k) for k, c in enumerate(CLASS_NAMES)} for s in SPLITS}
    patients = {s: sorted({i.patient_id for i in splits[s]}) for s in SPLITS}
    inputs: dict[str, int] = {}
    for image in good:
        inputs[image.kind] = inputs.get(image.kind, 0) + 1
    manifest = Manifest(
        uri=out, counts=counts, shards={s: shards.get(s, []) for s in SPLITS},
        options={**dataclasses.asdict(options), "resize": pixels.RESIZE_METHOD if options.image_size else "none",
                 "depth_rule": pixels.DEPTH_RULE, "max_pixels": formats.MAX_PIXELS},
        format_version=FORMAT_VERSION, source=src if is_uri(src) else str(src.resolve()),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        num_patients={s: len(p) for s, p in patients.items()},
        # Kaggle's own test folder is taken as given; a patient id it shares with train is reported here.
        test_patients_also_in_train=leaked_test_patients(splits),
        skipped=skipped, renamed=renamed, inputs=dict(sorted(inputs.items())), num_images_found=len(images),
        seconds=round(seconds, 3), images_per_second=round(len(images) / seconds, 1) if seconds > 0 else None,
        source_megabytes=round(total_bytes / 1e6, 3))
    write_atomic(f"{out}/{MANIFEST_NAME}", manifest.to_json())
    return manifest


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass
