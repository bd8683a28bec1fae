"""Feature cache for the frozen trunk: compute the frozen part of the backbone once per image, train the rest.

The documented fine-tuning trains only the last ``model.trainable_layers`` backbone layers and the head,
with BatchNormalization frozen in inference mode, and applies no augmentation (the ``team`` preset). For a
given image everything below the trainable tail then computes the same output in every epoch and every tuner
trial. With ``runtime.feature_cache=auto`` (the default) and those conditions met, a first pass runs each image
of this worker's shards through the frozen trunk once and keeps the output; every epoch then runs only the
tail and the head on the cached tensors. It is exact: the same layers, weights and ops run on the same values
(``tests/test_feature_cache.py`` trains both ways and compares the weights). The exported model is the full
model, whose layers are the very objects trained here.

- The cut is every frozen output the trainable layers read (ResNet50V2 with 10 trainable layers:
  ``conv5_block2_out``, the last block's shortcut, and ``conv5_block3_1_relu``, what its first trained conv reads
  after padding). Caching the second as well keeps the frozen 1x1 conv of the last block (51M multiply-adds per
  image) out of every step, for 25% more stored values than the block input alone.
- Key: the data manifest's sha256, the split and this worker's share of the shards, the image size, the cut,
  the trunk's weights (sha256 of their bytes) and the storage dtype. A resumed run and every tuner trial on
  the same data and trunk find the same key; anything else misses and rebuilds.
- Where: ``$XRAY_FEATURE_CACHE`` or ``~/.cache/xray/features`` (the cluster's pods: the shared volume, so a
  replaced pod and every trial on any node find it), one ``.npz`` per
  key written to a temporary name and renamed. ``runtime.feature_cache_dtype=float16`` halves the size (ResNet50V2
  at 224 px: 7x7x(2048+512) values per image, 490 KiB as float32) at the cost of exactness (measured in bench P7).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from xray.data import reader
from xray.data.manifest import Manifest
from xray.data.reader import feature_names, one_or_list
from xray.trainer.config import Config
from xray.trainer.kerasapi import keras

log = logging.getLogger("xray.feature_cache")
BACKBONE = "resnet50v2"
HEAD_LAYERS = ("flatten", "avg_pool", "dense1", "dropout1", "dense2", "dropout2", "probability")


def why_not(config: Config) -> str | None:
    """None when the cache is exact for this config; otherwise the reason it is not used."""
    if config.runtime.feature_cache == "off":
        return "runtime.feature_cache=off"
    if config.model.trainable_layers == "all":
        return "model.trainable_layers=all (nothing is frozen)"
    if config.model.train_batchnorm:
        return "model.train_batchnorm=true (frozen layers would still update their statistics)"
    if config.train.augment:
        return "train.augment=true (every epoch sees different pixels)"
    return None


def cut_layers(backbone: keras.Model) -> list[str]:
    """The outputs the trainable tail depends on: every layer before the first trainable one that feeds it or a
    later layer (a padding layer replaced by what it pads: free to redo, smaller to store), in layer order."""
    layers = backbone.layers
    first = next((i for i, layer in enumerate(layers) if layer.trainable and layer.weights), None)
    if first is None:
        raise ValueError("the backbone has no trainable layer: nothing to cache in front of")
    if first == 0:
        raise ValueError("the backbone's first layer is trainable: nothing frozen to cache")
    index = {layer.name: i for i, layer in enumerate(layers)}

    def inputs_of(layer) -> list:
        found = []
        for node in layer._inbound_nodes:
            inbound = node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]
            found.extend(inbound)
        return found

    cut = set()
    for layer in layers[first:]:
        for source in inputs_of(layer):
            if index.get(source.name, first) < first:
                while isinstance(source, keras.layers.ZeroPadding2D) and len(inputs_of(source)) == 1:
                    source = inputs_of(source)[0]
                cut.add(source.name)
    return sorted(cut, key=index.__getitem__)


class Split:
    """Views of one full model: ``trunk`` (image -> features) and ``cached`` (features -> probability).

    With several cut tensors, ``trunk`` returns a list and ``cached`` takes one, in ``cuts`` order."""

    def __init__(self, full: keras.Model):
        self.full = full
        backbone = full.get_layer(BACKBONE)
        self.cuts = cut_layers(backbone)
        self.cut = "+".join(self.cuts)
        outputs = [backbone.get_layer(name).output for name in self.cuts]
        self.trunk = keras.Model(backbone.input, one_or_list(outputs), name="frozen_trunk")
        tail = keras.Model(one_or_list(outputs), backbone.output, name="trainable_tail")
        features = [keras.Input(shape=output.shape[1:], name=f"features_{i}") for i, output in enumerate(outputs)]
        x = tail(one_or_list(features))
        for name in HEAD_LAYERS:
            try:
                layer = full.get_layer(name)
            except ValueError:
                continue
            x = layer(x)
        self.cached = keras.Model(one_or_list(features), x, name=f"{full.name}_on_cached_features")
        self._trunk_digest = None
        self._trunk_function = None

    def trunk_function(self):
        """The trunk as one traced graph for every split and batch size: 1.4x eager's images/s."""
        if self._trunk_function is None:
            self._trunk_function = tf.function(lambda images: self.trunk(images, training=False),
                                               input_signature=[tf.TensorSpec([None, *self.trunk.input_shape[1:]],
                                                                              tf.float32)])
        return self._trunk_function

    def trunk_digest(self) -> str:
        """sha256 of the trunk's weights: hashed once (the trunk never trains), reused for every split's key."""
        if self._trunk_digest is None:
            digest = hashlib.sha256()
            for weight in self.trunk.weights:
                digest.update(weight.name.encode())
                digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
            self._trunk_digest = digest.hexdigest()
        return self._trunk_digest


def cache_dir() -> Path:
    return Path(os.environ.get("XRAY_FEATURE_CACHE") or Path.home() / ".cache" / "xray" / "features")


def cache_key(manifest: Manifest, split: str, pipeline: tuple[int, int], image_size: int, cut: str, trunk_digest: str,
              dtype: str) -> str:
    parts = [manifest.digest(), split, f"{pipeline[0]}of{pipeline[1]}", str(image_size), cut, trunk_digest, dtype]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def features_for(split_model: Split, manifest: Manifest, split: str, config: Config,
                 input_context: tf.distribute.InputContext | None = None) -> dict[str, np.ndarray]:
    """This worker's ``{"features_0", ..., "labels", "weights"}`` for a split: from the cache, or computed and
    stored. ``source(split_model, manifest, config)`` is the form xray.data.reader.dataset takes."""
    dtype = config.runtime.feature_cache_dtype
    pipeline = (input_context.input_pipeline_id, input_context.num_input_pipelines) if input_context else (0, 1)
    key = cache_key(manifest, split, pipeline, config.model.image_size, split_model.cut, split_model.trunk_digest(), dtype)
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in stored.files}
            if not feature_names(arrays) or not {"labels", "weights"} <= set(arrays):
                raise KeyError(f"incomplete entry ({', '.join(sorted(arrays))})")
            log.info("feature cache: %s split, %d images from %s", split, len(arrays["labels"]), path)
            return arrays
        except (OSError, ValueError, KeyError) as error:  # a damaged file is rebuilt, never trusted
            log.warning("feature cache: %s unreadable (%s); rebuilding", path, error)
    started = time.monotonic()
    weights = manifest.class_weights()
    dataset = reader.make_dataset(manifest.shard_paths(split), 32, training=False,
                                image_size=config.model.image_size, input_context=_reading_context(input_context),
                                class_weights=weights)
    trunk = split_model.trunk_function()
    features, labels, sample_weights = [[] for _ in split_model.cuts], [], []
    for images, label, weight in dataset:
        outputs = trunk(images)
        for stored, output in zip(features, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            stored.append(output.numpy().astype(dtype))
        labels.append(label.numpy())
        sample_weights.append(weight.numpy())
    arrays = {f"features_{i}": np.concatenate(parts) for i, parts in enumerate(features)}
    arrays.update(labels=np.concatenate(labels), weights=np.concatenate(sample_weights).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique across pods sharing the volume's cache (process ids repeat from one container to the next).
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
    os.replace(temporary, path)
    log.info("feature cache: %s split, %d images through the frozen trunk in %.1fs -> %s (%.1f MiB)", split,
             len(arrays["labels"]), time.monotonic() - started, path, path.stat().st_size / 2**20)
    return arrays


def _reading_context(input_context):
    """The same shard assignment as training's, without the per-replica batch split (we batch by 32 here)."""
    if input_context is None:
        return None
    return tf.distribute.InputContext(num_input_pipelines=input_context.num_input_pipelines,
                                      input_pipeline_id=input_context.input_pipeline_id, num_replicas_in_sync=1)


def source(split_model: Split, manifest: Manifest, config: Config):
    """The feature source xray.data.reader.dataset takes: ``(split, input_context) -> arrays`` from this cache."""
    return lambda split, input_context=None: features_for(split_model, manifest, split, config, input_context)
