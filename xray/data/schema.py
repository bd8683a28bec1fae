"""What one record holds, the class names and splits, and how shard files are named. No TensorFlow at import."""

from __future__ import annotations

import re

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # index = label; the serving contract and the synthesiser use these
SPLITS = ("train", "val", "test")
SOURCE_SPLITS = ("train", "val", "test")  # the folders of Kaggle's chest_xray layout
MANIFEST_NAME = "manifest.json"
_SHARD_NAME = re.compile(r"^(train|val|test)-(\d{5})-of-(\d{5})\.tfrecord$")


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def is_shard_name(name: str) -> bool:
    return bool(_SHARD_NAME.match(name))


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
    # Map entries in key order: without it the order follows the process's string hashing, so two runs of xray shards
    # on the same files wrote different bytes (and manifest sha256s) for the same records.
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


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
