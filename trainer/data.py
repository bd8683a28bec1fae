"""tf.data input pipeline: shards -> (image, label[, weight]) batches, sharded per worker.

``preprocess_image`` is the single definition of "encoded image -> model input". The serving
signature calls the same function, so training and serving cannot drift apart.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from trainer import records

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE


def preprocess_image(image_bytes, image_size: int):
    """One encoded JPEG/PNG (scalar string tensor) -> float32 [image_size, image_size, 3] in [-1, 1].

    Decodes to one grayscale channel (colour sources are converted; a large JPEG at a DCT scale, see
    ``records.decode_gray``), resizes to a square with ``records.resize_gray`` (xray shards does the same), repeats the channel three times for the ImageNet backbone and scales like
    ``keras.applications.resnet_v2.preprocess_input`` (x / 127.5 - 1). Works eagerly and in graphs.
    """
    image = records.decode_gray(image_bytes, image_size)
    image = records.resize_gray(image, image_size)
    image = tf.image.grayscale_to_rgb(image)
    image = image / 127.5 - 1.0
    image.set_shape([image_size, image_size, 3])
    return image


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


def list_shards(file_pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {file_pattern}; write them with `xray shards --src IMAGES --out DIR`"
        )
    return files


def make_dataset(
    file_pattern: str,
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
    files = list_shards(file_pattern)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    local_batch = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    shard_records = num_pipelines > 1 and len(files) < num_pipelines
    if shard_records:
        log.warning(
            "%d shard file(s) for %d workers: sharding by record instead of by file (every worker reads "
            "every file). Write at least %d shards (xray shards --num-shards) to shard by file.",
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
        parsed = records.parse_example(serialized)
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
