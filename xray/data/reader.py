"""tf.data from a manifest's shards: (image, label[, weight]) batches, sharded per worker.

``dataset()`` is the one entry that training and the tuner read through: the records of the manifest's shard
list, decoded by xray.data.pixels.preprocess_image (the serving signature's own preprocessing), or, when the
caller passes a feature source (xray.trainer.feature_cache), the frozen trunk's cached outputs for the same
images. Files come from the manifest's list, never from a glob: a stray or renamed file is not read.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from xray.data.manifest import Manifest
from xray.data.pixels import preprocess_image
from xray.data.schema import parse_example

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


def augment_image(image, seed):
    """Light, label-preserving augmentation for training: small zoom/shift, brightness, contrast.

    No horizontal flip: the heart is on one side of a chest film. ``seed`` is a [2] int tensor
    (stateless ops, so a given element gets the same augmentation on every run).
    """
    size = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    scale = tf.random.stateless_uniform([], seeds[0], 0.9, 1.0)
    crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    image = tf.image.stateless_random_crop(image, [crop, crop, 3], seeds[1])
    image = tf.image.resize(image, [size, size], method="bilinear")
    image = tf.image.stateless_random_brightness(image, 0.1, seeds[2])
    image = tf.image.stateless_random_contrast(image, 0.9, 1.1, seeds[2] + 1)
    return tf.clip_by_value(image, -1.0, 1.0)


def dataset(manifest: Manifest, split: str, batch_size: int, training: bool, *, features=None, **options):
    """A split of ``manifest`` as batches: its listed shards through ``make_dataset`` (``options`` are its keyword
    arguments), or, with ``features`` (a callable ``(split, input_context) -> arrays`` such as
    xray.trainer.feature_cache.source), the frozen trunk's cached outputs for the same images. ``repeat`` defaults to
    ``training``; weights are added when ``class_weights`` is given."""
    repeat = options.pop("repeat", None)
    repeat = training if repeat is None else repeat
    if features is not None:
        context = options.get("input_context")
        return cached_dataset(features(split, context), batch_size, training, options.get("seed", 0), context,
                              with_weights=options.get("class_weights") is not None, repeat=repeat)
    return make_dataset(manifest.shard_paths(split), batch_size, training, repeat=repeat, **options)


def make_dataset(
    files: list[str],
    batch_size: int,
    training: bool,
    *,
    image_size: int = 224,
    input_context: tf.distribute.InputContext | None = None,
    seed: int = 0,
    class_weights: dict[int, float] | None = None,
    with_paths: bool = False,
    repeat: bool | None = None,
    augment: bool = True,
):
    """Batches of (image, label) from shards; (image, label, weight) when ``class_weights`` is given.

    ``batch_size`` is the GLOBAL batch size. With an ``input_context`` (one per worker, from
    ``strategy.distribute_datasets_from_function``) each worker reads its own shards and batches
    ``global / replicas``. Sharding is by file when there are at least as many files as workers
    (like AutoShardPolicy.FILE); otherwise every worker reads all files and keeps every n-th record
    (like DATA), with a log line, since FILE would leave a worker without data.

    Training datasets are shuffled, augmented and repeat forever (the caller gives steps_per_epoch,
    which avoids partial-batch synchronisation between workers); evaluation datasets are read once
    in a fixed order (``repeat=True`` makes them endless too, for validation with a fixed number of
    steps under MultiWorkerMirroredStrategy). ``with_paths`` adds the source path as a last element, for reports.
    """
    files = list(files)
    if not files:
        raise FileNotFoundError("no TFRecord shards to read; write them first (xray shards)")
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    local_batch = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    shard_records = num_pipelines > 1 and len(files) < num_pipelines
    if shard_records:
        log.warning(
            "%d shard file(s) for %d workers: sharding by record instead of by file (every worker reads "
            "every file). Write at least %d shards (num_shards) to shard by file.",
            len(files), num_pipelines, num_pipelines,
        )

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if num_pipelines > 1 and not shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
        # Shuffle serialized records (cheap strings); decoding happens once per element below.
        dataset = dataset.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    if training if repeat is None else repeat:
        dataset = dataset.repeat()
    if training:
        # A distinct stateless seed per element, derived from the run seed.
        dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.counter()))
    weights = None
    if class_weights is not None:
        weights = tf.constant([class_weights[k] for k in sorted(class_weights)], tf.float32)

    def to_example(*element):
        # One fused map: parse, decode, preprocess, augment (each extra dataset stage costs per element).
        serialized, index = element if training else (element[0], None)
        parsed = parse_example(serialized)
        image = preprocess_image(parsed["image_bytes"], image_size)
        if training and augment:
            image = augment_image(image, tf.stack([tf.cast(seed, tf.int64), index]))
        label = tf.reshape(tf.cast(parsed["label"], tf.float32), [1])
        out = (image, label)
        if weights is not None:
            out += (tf.gather(weights, parsed["label"]),)
        if with_paths:
            out += (parsed["source_path"],)
        return out

    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(local_batch, drop_remainder=False)
    options = tf.data.Options()
    # Sharding is done above, explicitly; keep tf.distribute from sharding a second time.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(AUTOTUNE)


def one_or_list(items: list):
    return items[0] if len(items) == 1 else items


def feature_names(arrays: dict) -> list[str]:
    """The feature arrays of a cache entry, in the trunk's output order: features_0, features_1, ..."""
    return sorted((name for name in arrays if name.startswith("features_")), key=lambda name: int(name.split("_")[1]))


def cached_dataset(arrays: dict[str, np.ndarray], batch_size: int, training: bool, seed: int = 0,
            input_context: tf.distribute.InputContext | None = None, with_weights: bool = True,
            repeat: bool = True) -> tf.data.Dataset:
    """Cached features as (features, label[, weight]) batches: shuffled for training; endless unless repeat=False."""
    local_batch = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    features = [tf.constant(arrays[name].astype(np.float32, copy=False)) for name in feature_names(arrays)]
    rest = [tf.constant(arrays["labels"])] + ([tf.constant(arrays["weights"])] if with_weights else [])
    # Shuffle and batch indices, then gather whole batches: the same order as shuffling the examples themselves
    # (a permutation per epoch from the same seed), without a shuffle buffer of copied examples (490 KiB each at
    # 224 px). Autotuning is off: tearing an autotuned endless iterator down after fit stalled 7-8 s in about
    # half the tuner trials (TensorFlow waits for its tf.data threads); two batches ahead keep the step fed.
    ds = tf.data.Dataset.range(len(arrays["labels"]))
    if training:
        ds = ds.shuffle(len(arrays["labels"]), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(local_batch, drop_remainder=False)
    ds = ds.map(lambda index: (one_or_list(tuple(tf.gather(f, index) for f in features)),
                               *(tf.gather(part, index) for part in rest)))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(2)
