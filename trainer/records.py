"""Image folders -> sharded TFRecords + manifest.json (``xray shards``).

    xray shards --src /tmp/synth --out /tmp/shards --num-shards 4

The TFRecord schema is defined here once; ``encode_example`` and ``parse_example`` sit side by side.
Source layout is Kaggle's "chest_xray": ``SRC/{train,test[,val]}/{NORMAL,PNEUMONIA}/*``. Kaggle's
``val/`` (16 images) is merged into the train pool; our validation split is carved from that pool,
stratified by class and disjoint by patient.
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
from PIL import Image

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # index = label
SOURCE_SPLITS = ("train", "val", "test")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff"}
SUPPORTED_MODES = ("L", "LA", "RGB", "RGBA", "P", "I;16", "I;16B", "I;16L")
# Kaggle names: IM-0117-0001.jpeg, NORMAL2-IM-0381-0001.jpeg, person12_bacteria_3.jpeg.
DEFAULT_PATIENT_PATTERN = r"^((?:NORMAL2-)?IM-\d+|person\d+)"
MANIFEST_NAME = "manifest.json"

# ----------------------------------------------------------------------------------------------------
# Schema: one record per image.
# ----------------------------------------------------------------------------------------------------


def _feature_spec():
    import tensorflow as tf

    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/label": tf.io.FixedLenFeature([], tf.int64),
        "image/patient_id": tf.io.FixedLenFeature([], tf.string),
        "image/source_path": tf.io.FixedLenFeature([], tf.string),
        "image/original_height": tf.io.FixedLenFeature([], tf.int64),
        "image/original_width": tf.io.FixedLenFeature([], tf.int64),
    }


def encode_example(image_bytes: bytes, label: int, patient_id: str, source_path: str, original_size: tuple[int, int]) -> bytes:
    """Serialises one tf.train.Example; ``original_size`` is (height, width) of the source image."""
    import tensorflow as tf

    def _bytes(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    features = {
        "image/encoded": _bytes(image_bytes),
        "image/label": _int(label),
        "image/patient_id": _bytes(patient_id.encode()),
        "image/source_path": _bytes(source_path.encode()),
        "image/original_height": _int(original_size[0]),
        "image/original_width": _int(original_size[1]),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_example(serialized):
    """Inverse of ``encode_example`` for one serialized record (graph-safe): a dict of tensors."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, _feature_spec())
    return {
        "image_bytes": parsed["image/encoded"],
        "label": parsed["image/label"],
        "patient_id": parsed["image/patient_id"],
        "source_path": parsed["image/source_path"],
        "original_height": parsed["image/original_height"],
        "original_width": parsed["image/original_width"],
    }


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(data_uri: str, split: str) -> str:
    return f"{data_uri.rstrip('/')}/{split}-*-of-*.tfrecord"


def read_manifest(data_uri: str) -> dict:
    import tensorflow as tf

    path = f"{data_uri.rstrip('/')}/{MANIFEST_NAME}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} under {data_uri}: is it the --out of `xray shards`? "
            f"Create it with: xray shards --src IMAGE_DIR --out {data_uri}"
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


class StaleShardsError(ValueError):
    """Shards that training must not read as they are; the message says how to remake them."""


def check_for_model(manifest: dict, data_uri: str, model_image_size: int) -> list[str]:
    """Refuses shards resized another way than the server resizes; returns warnings (e.g. upsampling)."""
    options = manifest.get("options", {})
    size = options.get("image_size")
    method = options.get("resize", "PIL bilinear (shards written before the resize was shared with serving)")
    if size is not None and method != RESIZE_METHOD:
        raise StaleShardsError(
            f"{data_uri} was resized with {method}, but the serving signature resizes with {RESIZE_METHOD}: the model "
            f"would train on other pixels than it is served. Re-run xray shards --image-size {size} into a new --out")
    if size is not None and size < model_image_size:
        return [f"{data_uri} holds {size} px images and the model reads {model_image_size} px: they are upsampled, "
                f"which adds no detail; re-run xray shards --image-size {model_image_size} (or set "
                f"model.image_size={size})"]
    return []


# ----------------------------------------------------------------------------------------------------
# Scanning and checking source images.
# ----------------------------------------------------------------------------------------------------


class SourceLayoutError(ValueError):
    """The source directory is not in the expected layout."""


EXPECTED_LAYOUT = (
    "expected the Kaggle chest_xray layout: SRC/train/NORMAL, SRC/train/PNEUMONIA, SRC/test/NORMAL, "
    "SRC/test/PNEUMONIA (SRC/val/... optional) holding JPEG/PNG images"
)


@dataclasses.dataclass
class SourceImage:
    path: Path
    relative: str
    source_split: str  # train / val / test, as found on disk
    label: int
    patient_id: str
    sha256: str = ""
    height: int = 0
    width: int = 0
    payload: bytes | None = None  # what goes in the record, when it is not the file as is


def readable_name(name: str) -> str:
    """A file name that is not valid UTF-8 (common on shares written by other systems; Python keeps the bad
    bytes as surrogates) with each bad byte written as \\xNN, so that it can go into records and the manifest."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def find_source_images(src: Path, patient_pattern: str) -> list[SourceImage]:
    if not src.is_dir():
        raise SourceLayoutError(f"source directory {src} does not exist; {EXPECTED_LAYOUT}")
    pattern = re.compile(patient_pattern)
    found = []
    missing = []
    for split in SOURCE_SPLITS:
        for label, class_name in enumerate(CLASS_NAMES):
            folder = src / split / class_name
            if not folder.is_dir():
                if split != "val":
                    missing.append(f"{split}/{class_name}")
                continue
            for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
                name = readable_name(path.name)
                match = pattern.search(name)
                patient = match.group(1) if match and match.groups() else (match.group(0) if match else Path(name).stem)
                found.append(SourceImage(path, f"{split}/{class_name}/{name}", split, label, patient))
    if missing:
        raise SourceLayoutError(f"{src} has no {', '.join(missing)} folder(s); {EXPECTED_LAYOUT}")
    if not found:
        raise SourceLayoutError(f"{src} has the class folders but no files in them; {EXPECTED_LAYOUT}")
    return found


# The one decode + resize of the project, recorded in every manifest: xray shards (when it stores images at a
# size), the training reader and the serving signature all call decode_gray and resize_gray. A JPEG is decoded
# at the largest DCT scale (1/2, 1/4 or 1/8: libjpeg's scaled IDCT) that keeps both sides >= the target size,
# which skips most of the decoding work for a large film; the rest is an antialiased resize, which averages
# over each output pixel's footprint instead of sampling 4 pixels. So an image sent to the server at full
# size and the same image pre-resized into shards reach the model with the same detail.
RESIZE_METHOD = "tf-jpeg-dct-scale+bilinear-antialias"
JPEG_SCALES = (1, 2, 4, 8)


def decode_gray(image_bytes, image_size: int):
    """Encoded JPEG/PNG/BMP/GIF (scalar string tensor) -> uint8 [height, width, 1], for a resize to image_size.

    JPEGs come out DCT-scaled (see RESIZE_METHOD), at least image_size on both sides when the source is."""
    import tensorflow as tf

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        smaller = tf.minimum(shape[0], shape[1])
        index = tf.add_n([tf.cast(smaller // scale >= image_size, tf.int32) for scale in JPEG_SCALES[1:]])
        branches = [lambda scale=scale: tf.io.decode_jpeg(image_bytes, channels=1, ratio=scale) for scale in JPEG_SCALES]
        return tf.switch_case(index, branches)

    def other():
        return tf.io.decode_image(image_bytes, channels=1, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 1])
    return image


def resize_gray(image, image_size: int):
    """[height, width, 1] grayscale (any dtype) -> float32 [image_size, image_size, 1], values kept in 0..255."""
    import tensorflow as tf

    return tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)


def check_image(data: bytes, image_size: int | None) -> tuple[tuple[int, int], bytes | None]:
    """Decodes fully (catches truncation); returns ((height, width), payload or None) or raises ValueError.

    The payload is the image re-encoded as grayscale JPEG at ``image_size`` x ``image_size`` when a
    size is given, PNG when TensorFlow could not decode the original format, else None (store as is).
    """
    if not data:
        raise ValueError("empty file")
    resized = None
    try:
        image = Image.open(io.BytesIO(data))  # the header only: format, mode, size
        image_format = image.format
        if image_size is not None and image_format == "JPEG" and image.mode in SUPPORTED_MODES:
            # The serving signature's decode (preprocess_image calls the same) reads the whole file and fails on
            # a truncated or corrupt one, at a DCT scale: no second, full-size decode by PIL for a good JPEG.
            try:
                resized = _decode_and_resize(data, image_size).numpy()
            except Exception:  # noqa: BLE001 - PIL decodes it below and names the problem, or reads what TF cannot
                resized = None
        if resized is None:
            image.load()
    except Exception as error:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError...
        # PIL names the in-memory buffer by its address ("cannot identify image file <_io.BytesIO object at 0x..>").
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error)) or type(error).__name__
        if "truncated" in reason.lower():
            raise ValueError(f"truncated image ({reason})") from None
        raise ValueError(f"not a readable image ({reason})") from None
    if image.mode not in SUPPORTED_MODES:
        raise ValueError(f"unsupported image mode {image.mode} (supported: {', '.join(SUPPORTED_MODES)})")
    size = (image.height, image.width)
    if image_size is None and image_format in ("JPEG", "PNG") and not image.mode.startswith("I;16"):
        return size, None
    buffer = io.BytesIO()
    if image_size is not None:
        # The serving signature's decode and resize for JPEGs (above): both paths see the same pixels.
        if resized is None:  # a JPEG PIL reads but TensorFlow does not, or another format
            resized = resize_gray(np.asarray(_to_gray8(image), dtype=np.uint8)[:, :, None], image_size).numpy()
        pixels = np.clip(np.rint(resized[:, :, 0]), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    else:
        _to_gray8(image).save(buffer, format="PNG")
    return size, buffer.getvalue()


_DECODERS: dict = {}


def _decode_and_resize(data: bytes, image_size: int):
    import tensorflow as tf

    if image_size not in _DECODERS:
        _DECODERS[image_size] = tf.function(lambda b: resize_gray(decode_gray(b, image_size), image_size),
                                            input_signature=[tf.TensorSpec([], tf.string)])
    return _DECODERS[image_size](tf.constant(data))


def _to_gray8(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    return image.convert("L")


# ----------------------------------------------------------------------------------------------------
# Splitting: validation carved from the train pool, stratified by class, disjoint by patient.
# ----------------------------------------------------------------------------------------------------


def split_by_patient(images: list[SourceImage], val_fraction: float, seed: int) -> dict[str, list[SourceImage]]:
    """Assigns whole patients of the train pool to val until each class has ~val_fraction of its images."""
    splits = {"train": [], "val": [], "test": [i for i in images if i.source_split == "test"]}
    pool = [i for i in images if i.source_split != "test"]
    by_patient: dict[str, list[SourceImage]] = {}
    for image in pool:
        by_patient.setdefault(image.patient_id, []).append(image)
    rng = np.random.default_rng(seed)
    for label in range(len(CLASS_NAMES)):
        # A patient belongs to the class most of their images have.
        patients = sorted(p for p, imgs in by_patient.items() if round(np.mean([i.label for i in imgs])) == label)
        rng.shuffle(patients)
        target = val_fraction * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for patient in patients:
            goes_to_val = taken < target
            if goes_to_val:
                taken += len(by_patient[patient])
            splits["val" if goes_to_val else "train"].extend(by_patient[patient])
    return splits


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
    workers: int = 0  # threads that read, hash, decode, resize and re-encode; 0: one per core

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers} must be 0 (one per core) or a positive number")
        if self.num_shards < 1:
            raise ValueError(f"--num-shards {self.num_shards} must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction {self.val_fraction} must be in [0, 1), e.g. 0.1")
        if self.image_size is not None and self.image_size < 32:
            raise ValueError(f"--image-size {self.image_size} must be at least 32 pixels (ResNet50V2's minimum)")
        try:
            re.compile(self.patient_pattern)
        except re.error as error:
            raise ValueError(f"--patient-pattern {self.patient_pattern!r} is not a regular expression: {error}") from None


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
            data = image.payload if image.payload is not None else image.path.read_bytes()
            record = encode_example(data, image.label, image.patient_id, image.relative, (image.height, image.width))
            shard = position % num_shards  # round robin after shuffling: every shard mixes both classes
            writers[shard].write(record)
            shards[shard]["records"] += 1
            progress(1)
    finally:
        for writer in writers:
            writer.close()
    return shards


def _sha256_file(path: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, leave=True)


def convert(src: str | Path, out: str, options: ShardOptions = ShardOptions(), show_progress: bool = True) -> dict:
    """Checks every image, splits, writes shards and manifest.json atomically; returns the manifest."""
    import tensorflow as tf

    from trainer.atomic import write_atomic

    started = time.monotonic()
    src = Path(src)
    images = find_source_images(src, options.patient_pattern)
    total_bytes = 0
    skipped = []
    first_seen: dict[str, str] = {}
    good: list[SourceImage] = []
    def inspect(image: SourceImage):
        """Read, hash, decode, resize, re-encode: the costly part, run on all cores (PIL and TensorFlow release the
        GIL while they decode, resize and encode). Returns (bytes read, error or None)."""
        try:
            data = image.path.read_bytes()
        except OSError as error:
            return 0, f"unreadable file ({error.strerror or error})"
        image.sha256 = hashlib.sha256(data).hexdigest()
        try:
            (image.height, image.width), image.payload = check_image(data, options.image_size)
        except ValueError as error:
            return len(data), str(error)
        return len(data), None

    from concurrent.futures import ThreadPoolExecutor

    workers = options.workers or os.cpu_count() or 1
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
               for image in good if image.path.name != Path(image.relative).name]
    splits = split_by_patient(good, options.val_fraction, options.seed)
    tf.io.gfile.makedirs(out)
    written = {}
    with _progress_bar(len(good), "writing") if show_progress else _NoProgress() as bar:
        for split in SPLITS:
            if splits[split]:
                written[split] = _write_split(out, split, splits[split], options.num_shards, options.seed, bar.update)
    # Everything is written: only now do final names appear. The old manifest goes first, then the old shards:
    # a kill in between leaves shards without a manifest (refused by readers), never a manifest naming a mix.
    if tf.io.gfile.exists(f"{out}/{MANIFEST_NAME}"):
        tf.io.gfile.remove(f"{out}/{MANIFEST_NAME}")
    for old in tf.io.gfile.glob(f"{out}/*-*-of-*.tfrecord"):
        tf.io.gfile.remove(old)
    for shards in written.values():
        for shard in shards:
            tf.io.gfile.rename(shard.pop("tmp"), f"{out}/{shard['file']}", overwrite=True)
            shard["sha256"] = _sha256_file(f"{out}/{shard['file']}")

    seconds = time.monotonic() - started
    manifest = _manifest(src, out, options, splits, written, skipped, len(images), seconds, total_bytes)
    manifest["renamed"] = renamed
    write_atomic(f"{out}/{MANIFEST_NAME}", json.dumps(manifest, indent=2))
    return manifest


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _manifest(src, out, options, splits, written, skipped, num_found, seconds, total_bytes) -> dict:
    counts = {s: {c: sum(1 for i in splits[s] if i.label == k) for k, c in enumerate(CLASS_NAMES)} for s in SPLITS}
    patients = {s: sorted({i.patient_id for i in splits[s]}) for s in SPLITS}
    overlap = sorted(set(patients["test"]) & (set(patients["train"]) | set(patients["val"])))
    return {
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(src.resolve()),
        "options": {**dataclasses.asdict(options), "resize": RESIZE_METHOD if options.image_size else "none"},
        "class_names": list(CLASS_NAMES),
        "counts": counts,
        "num_patients": {s: len(p) for s, p in patients.items()},
        # Kaggle's own test folder is taken as given; a patient id it shares with train is reported here.
        "test_patients_also_in_train": overlap,
        "shards": {s: written.get(s, []) for s in SPLITS},
        "num_images_found": num_found,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "images_per_second": round(num_found / seconds, 1) if seconds > 0 else None,
        "source_megabytes": round(total_bytes / 1e6, 3),
    }


def class_weights(manifest: dict, split: str = "train") -> dict[int, float]:
    """Balanced class weights (scikit-learn's formula) from the manifest's counts, without reading data."""
    from sklearn.utils.class_weight import compute_class_weight

    counts = [manifest["counts"][split][name] for name in manifest["class_names"]]
    if min(counts) == 0:
        raise ValueError(f"the {split} split has no images of class {manifest['class_names'][counts.index(0)]}")
    labels = np.repeat(np.arange(len(counts)), counts)
    weights = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
    return {k: float(w) for k, w in enumerate(weights)}


def num_steps(num_examples: int, global_batch_size: int) -> int:
    return max(1, math.ceil(num_examples / global_batch_size))
