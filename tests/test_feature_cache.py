"""The frozen-trunk feature cache (trainer/feature_cache.py): where it cuts, when it applies, that training on
cached features gives the same weights as training the whole model, and `xray train` with it on 2 workers.
When it applies and its key, without a model: test_feature_cache_rules.py."""

import json

import numpy as np

from conftest import run_xray
from xray.data import reader
from xray.trainer import feature_cache
from xray.trainer.config import Config, ModelConfig, TrainConfig
from xray.trainer.kerasapi import keras
from xray.trainer.model import build_model, compile_model, load_trained

SMALL = ModelConfig(image_size=32, weights="none", trainable_layers="10", train_batchnorm=False,
                    dense1_units=16, dense2_units=8)


def test_the_cut_of_the_documented_fine_tuning_is_what_the_trained_layers_read():
    split = feature_cache.Split(build_model(SMALL))
    # The last block's shortcut input, and what its first trained conv reads (before the free padding): the
    # frozen 1x1 conv in between runs once per image, not every step.
    assert split.cuts == ["conv5_block2_out", "conv5_block3_1_relu"]
    tail = {layer.name for layer in split.cached.get_layer("trainable_tail").layers}
    assert "conv5_block3_1_conv" not in tail and {"conv5_block3_2_pad", "conv5_block3_2_conv"} <= tail
    trainable = {w.name for w in split.full.trainable_weights}
    assert trainable == {w.name for w in split.cached.trainable_weights}
    assert not split.trunk.trainable_weights or all(not layer.trainable for layer in split.trunk.layers
                                                    if layer.weights)


def test_training_on_cached_features_gives_the_same_weights_as_training_the_whole_model():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (24, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 2, (24, 1)).astype(np.float32)
    weights = np.where(labels[:, 0] == 1, 0.7, 1.8).astype(np.float32)
    train = TrainConfig(learning_rate=1e-3, first_decay_steps=50)

    keras.utils.set_random_seed(3)
    whole = compile_model(build_model(SMALL), train)
    keras.utils.set_random_seed(3)
    split = feature_cache.Split(build_model(SMALL))
    cached = compile_model(split.cached, train)
    for a, b in zip(whole.weights, split.full.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    trunk_before = [w.numpy().copy() for w in split.trunk.weights]
    trainable_before = [w.numpy().copy() for w in whole.trainable_weights]

    keras.utils.set_random_seed(7)
    whole.fit(images, labels, sample_weight=weights, batch_size=4, epochs=2, shuffle=False, verbose=0)
    features = split.trunk.predict(images, batch_size=4, verbose=0)
    keras.utils.set_random_seed(7)
    cached.fit(features, labels, sample_weight=weights, batch_size=4, epochs=2, shuffle=False, verbose=0)

    for a, b in zip(whole.weights, split.full.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.name)
    moved = [not np.allclose(w.numpy(), before) for w, before in zip(whole.trainable_weights, trainable_before)]
    assert all(moved), "every trainable weight changed in 12 steps"
    for w, before in zip(split.trunk.weights, trunk_before):
        np.testing.assert_array_equal(w.numpy(), before)  # the frozen trunk did not move


def test_xray_train_on_two_workers_caches_each_workers_shards_and_a_second_run_reuses_them(shards_dir, tmp_path):
    cache = tmp_path / "cache"
    overrides = ["model.image_size=32", "model.trainable_layers=10", "model.train_batchnorm=false",
                 "train.augment=false", "train.epochs=2"]
    env = {"XRAY_FEATURE_CACHE": str(cache)}
    first = run_xray("train", "--data", shards_dir, "--workdir", tmp_path / "run1", "--preset", "tiny", "--workers", 2,
                     *overrides, env=env)
    assert "feature cache: on" in first.stdout + first.stderr
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 4  # 2 workers x (train, val): each worker caches its own shards
    stamps = {f: f.stat().st_mtime_ns for f in files}
    summary = json.loads((tmp_path / "run1" / "training.json").read_text())
    assert summary["feature_cache"]["cut"] == "conv5_block2_out+conv5_block3_1_relu" and summary["epochs_run"] == 2
    config = Config.load(str(tmp_path / "run1" / "config.json"))
    model = load_trained(config.model, str(tmp_path / "run1" / "best.weights.h5"))  # the full model's weights
    assert model.get_layer("resnet50v2") is not None

    second = run_xray("train", "--data", shards_dir, "--workdir", tmp_path / "run2", "--preset", "tiny", "--workers", 2,
                      *overrides, env=env)
    log = second.stdout + second.stderr
    assert log.count("images from") == 4 and "through the frozen trunk" not in log
    assert {f: f.stat().st_mtime_ns for f in cache.glob("*.npz")} == stamps

    off = run_xray("train", "--data", shards_dir, "--workdir", tmp_path / "run3", "--preset", "tiny",
                   *overrides, "runtime.feature_cache=off", env=env)
    assert "feature cache: off (runtime.feature_cache=off)" in off.stdout + off.stderr


def test_cached_batches_keep_each_example_whole_and_shuffle_per_epoch():
    ids = np.arange(10, dtype=np.float32)
    arrays = {"features_0": ids[:, None, None] * np.ones((1, 2, 3), np.float32),
              "features_1": (ids * 10)[:, None], "labels": ids[:, None], "weights": ids + 0.5}
    seen = []
    for (first, second), label, weight in reader.cached_dataset(arrays, 4, True, seed=1).take(5):
        np.testing.assert_array_equal(first.numpy()[:, 0, 0], label.numpy()[:, 0])
        np.testing.assert_array_equal(second.numpy()[:, 0], label.numpy()[:, 0] * 10)
        np.testing.assert_array_equal(weight.numpy(), label.numpy()[:, 0] + 0.5)
        seen.extend(label.numpy()[:, 0].tolist())
    epochs = [seen[:10], seen[10:20]]
    assert all(sorted(epoch) == ids.tolist() for epoch in epochs)  # each epoch is a permutation
    assert epochs[0] != epochs[1] and epochs[0] != ids.tolist()  # reshuffled, and shuffled at all
    one_cut = {name: value for name, value in arrays.items() if name != "features_1"}
    fixed = [label.numpy()[:, 0].tolist() for _, label in
             reader.cached_dataset(one_cut, 4, False, with_weights=False, repeat=False)]
    assert sum(fixed, []) == ids.tolist() and [len(batch) for batch in fixed] == [4, 4, 2]


def test_an_incomplete_cache_entry_is_rebuilt_not_trusted(shards_dir, tmp_path, monkeypatch):
    from xray.data import manifest as manifests

    monkeypatch.setenv("XRAY_FEATURE_CACHE", str(tmp_path))
    config = Config(model=SMALL, train=TrainConfig())
    manifest = manifests.read(str(shards_dir))
    split = feature_cache.Split(build_model(SMALL))
    key = feature_cache.cache_key(manifest, "val", (0, 1), SMALL.image_size, split.cut, split.trunk_digest(),
                                  config.runtime.feature_cache_dtype)
    planted = tmp_path / f"{key}.npz"
    np.savez(planted, labels=np.zeros((1, 1), np.float32), weights=np.ones(1, np.float32))  # no features
    arrays = feature_cache.features_for(split, manifest, "val", config)
    assert feature_cache.feature_names(arrays) == ["features_0", "features_1"]
    assert len(arrays["labels"]) == manifest.count("val")
    with np.load(planted) as stored:  # the entry was written again, whole
        assert set(stored.files) == {"features_0", "features_1", "labels", "weights"}


def test_features_for_stores_the_trunks_own_outputs_under_a_key_that_follows_its_weights(shards_dir, tmp_path,
                                                                                       monkeypatch):
    """Through the path training takes (features_for on the manifest's shards, read by xray.data.reader): the cached
    arrays are the frozen trunk's float32 outputs on the reader's images, and another trunk (other weights, same
    data) gets its own entry instead of the first one's features."""
    from xray.data import manifest as manifests

    monkeypatch.setenv("XRAY_FEATURE_CACHE", str(tmp_path))
    manifest = manifests.read(str(shards_dir))
    config = Config(model=SMALL, train=TrainConfig())
    keras.utils.set_random_seed(1)
    first = feature_cache.Split(build_model(SMALL))
    arrays = feature_cache.features_for(first, manifest, "val", config)
    images = np.concatenate([x.numpy() for x, _, _ in reader.make_dataset(
        manifest.shard_paths("val"), 32, False, image_size=SMALL.image_size, class_weights=manifest.class_weights())])
    direct = first.trunk(images, training=False)
    for name, expected in zip(feature_cache.feature_names(arrays), direct if isinstance(direct, list) else [direct]):
        assert arrays[name].dtype == np.float32
        np.testing.assert_allclose(arrays[name], expected.numpy(), rtol=0, atol=1e-5)
    keras.utils.set_random_seed(2)
    second = feature_cache.Split(build_model(SMALL))
    assert second.trunk_digest() != first.trunk_digest()
    other = feature_cache.features_for(second, manifest, "val", config)
    assert not np.allclose(other["features_0"], arrays["features_0"])
    assert len(list(tmp_path.glob("*.npz"))) == 2
