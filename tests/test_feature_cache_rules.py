"""When the feature cache applies and what its key depends on (trainer/feature_cache.py), without building a
model: in-process and fast, so that `make mutate` runs them against each mutant. Through training:
test_feature_cache.py."""

import dataclasses
from pathlib import Path

import pytest

from xray.data.manifest import Manifest, Shard
from xray.trainer import feature_cache
from xray.trainer.config import Config, ModelConfig, RuntimeConfig, TrainConfig, preset

SMALL = ModelConfig(image_size=32, weights="none", trainable_layers="10", train_batchnorm=False)


@pytest.mark.parametrize("model, train, reason", [
    (SMALL, TrainConfig(), None),
    (SMALL, RuntimeConfig(feature_cache="off"), "runtime.feature_cache=off"),
    (SMALL, TrainConfig(augment=True), "train.augment=true (every epoch sees different pixels)"),
    (dataclasses.replace(SMALL, trainable_layers="all"), TrainConfig(), "model.trainable_layers=all (nothing is frozen)"),
    (dataclasses.replace(SMALL, train_batchnorm=True), TrainConfig(),
     "model.train_batchnorm=true (frozen layers would still update their statistics)"),
])
def test_the_cache_is_used_only_where_it_is_exact(model, train, reason):
    section = "runtime" if isinstance(train, RuntimeConfig) else "train"
    assert feature_cache.why_not(Config(model=model, **{section: train})) == reason


def test_the_documented_fine_tuning_uses_it_and_the_demo_does_not():
    assert feature_cache.why_not(preset("team")) is None  # no augmentation, frozen BatchNorm
    assert feature_cache.why_not(preset("demo")) is not None


def _manifest(sha="a" * 64) -> Manifest:
    shards = {"train": [Shard("train-00000-of-00001.tfrecord", 10, 1000, sha)], "val": [], "test": []}
    return Manifest(uri="/data", counts={}, shards=shards, options={})


BASE = dict(manifest=_manifest(), split="train", pipeline=(0, 1), image_size=224, cut="conv5_block2_out",
            trunk_digest="t" * 64, dtype="float32")


def test_the_key_is_stable_and_changes_with_each_of_its_parts():
    key = feature_cache.cache_key(**BASE)
    assert key == feature_cache.cache_key(**dict(BASE, manifest=_manifest()))  # equal inputs, equal key
    assert len(key) == 32 and int(key, 16) >= 0
    changes = dict(manifest=_manifest("b" * 64), split="val", pipeline=(1, 2), image_size=64, cut="conv5_block3_out",
                   trunk_digest="u" * 64, dtype="float16")
    keys = {name: feature_cache.cache_key(**dict(BASE, **{name: value})) for name, value in changes.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(changes), keys
    # The worker's share is both numbers: worker 0 of 2 is not worker 0 of 1, nor worker 1 of 2.
    assert feature_cache.cache_key(**dict(BASE, pipeline=(0, 2))) not in (key, keys["pipeline"])


def test_the_cache_lives_where_the_environment_says_else_in_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_FEATURE_CACHE", str(tmp_path / "cache"))
    assert feature_cache.cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("XRAY_FEATURE_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert feature_cache.cache_dir() == Path(tmp_path / "home" / ".cache" / "xray" / "features")
    monkeypatch.delenv("XRAY_FEATURE_CACHE")
    assert feature_cache.cache_dir() == Path(tmp_path / "home" / ".cache" / "xray" / "features")
