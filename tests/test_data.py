from pathlib import Path

import numpy as np
import tensorflow as tf

from xray.data import convert, pixels, reader, schema
from xray.data import manifest as manifests
from xray.trainer.kerasapi import keras


def _first_record(shards_dir):
    path = sorted(shards_dir.glob("train-*.tfrecord"))[0]
    return schema.parse_example(next(iter(tf.data.TFRecordDataset(str(path)))))


def test_preprocess_eager_equals_inside_tf_data(shards_dir):
    image_bytes = _first_record(shards_dir)["image_bytes"]
    eager = pixels.preprocess_image(image_bytes, 48)
    in_graph = next(iter(tf.data.Dataset.from_tensors(image_bytes).map(lambda b: pixels.preprocess_image(b, 48))))
    in_function = tf.function(lambda b: pixels.preprocess_image(b, 48))(image_bytes)
    # Graph rewrites of x / 127.5 - 1 may differ from eager in the last float bit (~6e-8), no more.
    np.testing.assert_allclose(eager.numpy(), in_graph.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(eager.numpy(), in_function.numpy(), rtol=0, atol=1e-6)
    assert np.abs(eager.numpy()).max() > 0.5  # a real image, not all zeros


def test_preprocess_matches_resnet_v2_scaling_and_repeats_gray(shards_dir):
    image_bytes = _first_record(shards_dir)["image_bytes"]
    image = pixels.preprocess_image(image_bytes, 32).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    raw = tf.image.resize(tf.io.decode_image(image_bytes, channels=1, expand_animations=False), [32, 32])
    expected = keras.applications.resnet_v2.preprocess_input(tf.image.grayscale_to_rgb(raw).numpy())
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_colour_png_is_converted_to_gray():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    image = pixels.preprocess_image(tf.io.encode_png(rgb), 32).numpy()
    assert image.shape == (32, 32, 3)
    assert np.allclose(image[..., 0], image[..., 1])


def test_dataset_shapes_range_labels_and_weights(shards_dir):
    weights = {0: 2.0, 1: 0.5}
    dataset = reader.make_dataset(manifests.read(str(shards_dir)).shard_paths("train"), 8, training=True,
                                image_size=32, class_weights=weights)
    images, labels, sample_weights = next(iter(dataset))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8, 1)
    assert images.numpy().min() >= -1.0 and images.numpy().max() <= 1.0
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(sample_weights.numpy(), np.where(labels.numpy()[:, 0] == 1, 0.5, 2.0))


def test_eval_dataset_reads_every_record_once_in_fixed_order(shards_dir):
    pattern = manifests.read(str(shards_dir)).shard_paths("val")
    first = [p.numpy() for _, _, paths in reader.make_dataset(pattern, 5, training=False, image_size=32, with_paths=True) for p in paths]
    second = [p.numpy() for _, _, paths in reader.make_dataset(pattern, 5, training=False, image_size=32, with_paths=True) for p in paths]
    import json
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    assert first == second
    assert len(first) == len(set(first)) == sum(manifest["counts"]["val"].values())


def _paths_seen(shards_dir, split, pipeline_id, num_pipelines, global_batch=8):
    context = tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=num_pipelines)
    dataset = reader.make_dataset(manifests.read(str(shards_dir)).shard_paths(split), global_batch, training=False,
                                image_size=32, input_context=context, with_paths=True)
    batches = list(dataset)
    assert all(images.shape[0] <= global_batch // num_pipelines for images, _, _ in batches)
    return {p.numpy() for _, _, paths in batches for p in paths}


def test_two_workers_see_disjoint_files_covering_the_split(shards_dir):
    worker0 = _paths_seen(shards_dir, "train", 0, 2)
    worker1 = _paths_seen(shards_dir, "train", 1, 2)
    assert worker0 and worker1 and not worker0 & worker1
    assert worker0 | worker1 == _paths_seen(shards_dir, "train", 0, 1)


def test_fewer_files_than_workers_falls_back_to_record_sharding(shards_dir, caplog):
    # 4 train shards for 5 workers: FILE sharding would starve a worker.
    seen = [_paths_seen(shards_dir, "train", i, 5, global_batch=10) for i in range(5)]
    assert all(seen)
    assert sum(len(s) for s in seen) == len(set().union(*seen))  # still disjoint
    assert "sharding by record" in caplog.text


def _film(size=2000, seed=0):
    """A film-like 8-bit grayscale image at full size: smooth anatomy-like shading, fine grain and edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = 120 + 80 * np.exp(-((x - 0.5) ** 2) / 0.08) * np.exp(-((y - 0.55) ** 2) / 0.15)
    lungs = -60 * (np.exp(-(((x - 0.33) / 0.1) ** 2 + ((y - 0.45) / 0.22) ** 2))
                   + np.exp(-(((x - 0.67) / 0.1) ** 2 + ((y - 0.45) / 0.22) ** 2)))
    ribs = 18 * (np.sin(y * 90) > 0.6)
    grain = rng.normal(0, 22, (size, size))
    return np.clip(body + lungs + ribs + grain, 0, 255).astype(np.uint8)


def test_a_full_size_film_gives_the_same_tensor_through_shards_and_through_the_server():
    """What the server computes from a client's 2000 px upload vs what training reads from the shards."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_film(), mode="L").save(buffer, format="JPEG", quality=95)
    original = buffer.getvalue()
    served = pixels.preprocess_image(tf.constant(original), 224).numpy()
    _, payload, _ = convert.check_image(original, 224)  # what xray shards --image-size 224 stores
    trained = pixels.preprocess_image(tf.constant(payload), 224).numpy()
    difference = float(np.mean(np.abs(served - trained)))
    assert difference <= 0.015, f"mean absolute difference {difference:.4f} on the [-1, 1] scale"


def test_class_names_and_the_pixel_rule_are_defined_once():
    """The contract clients import, the synthesiser and the records share xray.data.schema's names; the serving
    signature and the reader share xray.data.pixels' preprocessing (no second copy in the trainer)."""
    from xray import trainer
    from xray.data import schema
    from xray.serving import contract
    from xray.trainer import synth

    assert contract.CLASS_NAMES is schema.CLASS_NAMES and synth.CLASS_NAMES is schema.CLASS_NAMES
    assert reader.preprocess_image is pixels.preprocess_image
    assert not (Path(trainer.__file__).parent / "records.py").exists()
