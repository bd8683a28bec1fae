"""manifest.json of a shards folder, as a typed object: what ``xray shards`` wrote and everything readers need
(counts, options, class weights, steps, the exact shard list with sizes and hashes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np

from xray.data.pixels import RESIZE_METHOD
from xray.data.schema import CLASS_NAMES, MANIFEST_NAME, SPLITS

FORMAT_VERSION = 2  # 2: shards carry their size in bytes; inputs counts the kinds of source file


class StaleShardsError(ValueError):
    """Shards that training must not read as they are; the message says how to remake them."""


class ShardsChangedError(ValueError):
    """A shard the manifest lists is missing or differs from what was written; the message names it."""


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    records: int
    bytes: int | None  # None in manifests written before format 2
    sha256: str

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(d["file"], int(d["records"]), d.get("bytes"), d.get("sha256", ""))

    def to_dict(self) -> dict:
        return {"file": self.file, "records": self.records, "bytes": self.bytes, "sha256": self.sha256}


@dataclasses.dataclass
class Manifest:
    uri: str  # the folder it describes (not stored)
    counts: dict[str, dict[str, int]]
    shards: dict[str, list[Shard]]
    options: dict
    class_names: tuple[str, ...] = CLASS_NAMES
    format_version: int = FORMAT_VERSION
    source: str = ""
    created: str = ""
    num_patients: dict[str, int] = dataclasses.field(default_factory=dict)
    test_patients_also_in_train: list[str] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    renamed: list[dict] = dataclasses.field(default_factory=list)
    inputs: dict[str, int] = dataclasses.field(default_factory=dict)  # kind of source file -> images
    num_images_found: int = 0
    seconds: float = 0.0
    images_per_second: float | None = None
    source_megabytes: float = 0.0

    # --- reading and writing -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, uri: str, d: dict) -> "Manifest":
        names = {f.name for f in dataclasses.fields(cls)} - {"uri", "shards", "class_names"}
        return cls(uri=uri, shards={s: [Shard.from_dict(x) for x in d.get("shards", {}).get(s, [])] for s in SPLITS},
                   class_names=tuple(d.get("class_names", CLASS_NAMES)),
                   **{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("uri")
        d["class_names"] = list(self.class_names)
        d["num_skipped"] = len(self.skipped)
        d["shards"] = {s: [x.to_dict() for x in self.shards.get(s, [])] for s in SPLITS}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    # --- what readers need ----------------------------------------------------------------------------
    def count(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def class_weights(self, split: str = "train") -> dict[int, float]:
        """Balanced class weights (scikit-learn's formula) from the counts, without reading data."""
        from sklearn.utils.class_weight import compute_class_weight

        counts = [self.counts[split][name] for name in self.class_names]
        if min(counts) == 0:
            raise ValueError(f"the {split} split has no images of class {self.class_names[counts.index(0)]}")
        labels = np.repeat(np.arange(len(counts)), counts)
        weights = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
        return {k: float(w) for k, w in enumerate(weights)}

    def steps(self, split: str, global_batch_size: int) -> int:
        return num_steps(self.count(split), global_batch_size)

    def shard_paths(self, split: str) -> list[str]:
        """Exactly the files this manifest lists for a split (never a glob: a stray file is not read)."""
        paths = [f"{self.uri.rstrip('/')}/{shard.file}" for shard in self.shards.get(split, [])]
        if not paths:
            raise FileNotFoundError(f"{self.uri}/{MANIFEST_NAME} lists no {split} shards; re-run xray shards "
                                    f"(with val_fraction > 0 for a validation split)")
        return paths

    def digest(self) -> str:
        """Changes when any shard does (the feature cache's key)."""
        shards = {s: [x.to_dict() for x in self.shards.get(s, [])] for s in SPLITS}
        return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()

    def check_shards(self, splits=SPLITS, hashes: bool = False) -> None:
        """Every listed shard is there with its recorded size (and sha256 with ``hashes``); else
        ShardsChangedError naming the first that is not."""
        import tensorflow as tf

        for split in splits:
            for shard in self.shards.get(split, []):
                path = f"{self.uri.rstrip('/')}/{shard.file}"
                if not tf.io.gfile.exists(path):
                    raise ShardsChangedError(f"{path} is listed in {MANIFEST_NAME} but missing: the shards folder was "
                                             "changed after xray shards wrote it; re-run xray shards")
                if shard.bytes is not None:
                    size = tf.io.gfile.stat(path).length
                    if size != shard.bytes:
                        raise ShardsChangedError(f"{path} is {size} bytes but {MANIFEST_NAME} recorded {shard.bytes}: "
                                                 "it was changed after xray shards wrote it; re-run xray shards")
                if hashes and shard.sha256 and sha256_file(path) != shard.sha256:
                    raise ShardsChangedError(f"{path} does not have the sha256 {MANIFEST_NAME} recorded: it was changed "
                                             "after xray shards wrote it; re-run xray shards")

    def check_for_model(self, model_image_size: int) -> list[str]:
        """Refuses shards resized another way than the server resizes; returns warnings (e.g. upsampling)."""
        size = self.options.get("image_size")
        method = self.options.get("resize", "PIL bilinear (shards written before the resize was shared with serving)")
        if size is not None and method != RESIZE_METHOD:
            raise StaleShardsError(
                f"{self.uri} was resized with {method}, but the serving signature resizes with {RESIZE_METHOD}: the "
                f"model would train on other pixels than it is served. Write the shards again (xray shards) at "
                f"image_size={size} into a new folder")
        if size is not None and size < model_image_size:
            return [f"{self.uri} holds {size} px images and the model reads {model_image_size} px: they are "
                    f"upsampled, which adds no detail; write the shards again at image_size={model_image_size} (or set "
                    f"model.image_size={size})"]
        return []


def read(uri: str) -> Manifest:
    import tensorflow as tf

    path = f"{uri.rstrip('/')}/{MANIFEST_NAME}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} under {uri}: is it a folder xray shards wrote? "
            f"Write the shards there first (xray shards, with {uri} as its output)")
    with tf.io.gfile.GFile(path) as f:
        return Manifest.from_dict(uri, json.load(f))


def num_steps(num_examples: int, global_batch_size: int) -> int:
    return max(1, math.ceil(num_examples / global_batch_size))


def sha256_file(path: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
