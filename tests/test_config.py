import json

import pytest

from trainer import config as cfg
from trainer.config import Config, ConfigError


def test_seed_preset_is_the_documented_design():
    c = cfg.preset("seed")
    assert (c.model.image_size, c.model.weights, c.model.trainable_layers, c.model.pooling) == (224, "imagenet", "10", "flatten")
    assert (c.model.dense1_units, c.model.l2, c.model.dropout1, c.model.dense2_units, c.model.dropout2) == (256, 1e-4, 0.3, 128, 0.2)
    t = c.train
    assert (t.batch_size, t.epochs, t.early_stopping_patience, t.learning_rate) == (16, 50, 10, 1e-4)
    assert (t.first_decay_steps, t.t_mul, t.m_mul, t.alpha) == (5000, 2.0, 0.8, 1e-6)
    assert t.mixed_precision == "off" and t.xla is False


@pytest.mark.parametrize("name", sorted(cfg.PRESETS))
def test_every_preset_docstring_starts_with_its_command(name):
    doc = cfg.PRESETS[name].__doc__.strip()
    assert doc.startswith("xray train ") and f"--preset {name}" in doc.splitlines()[0]


def test_round_trip_through_json(tmp_path):
    original = cfg.preset("demo").override(["model.dropout1=0.45", "l2=1e-3", "train.xla=true"])
    path = tmp_path / "config.json"
    original.save(str(path))
    assert Config.load(str(path)) == original
    assert json.loads(path.read_text())["model"]["dropout1"] == 0.45


def test_overrides_accept_section_or_unique_bare_names_and_coerce_types():
    c = cfg.preset("seed").override(["epochs=3", "model.pooling=avg", "augment=no", "trainable_layers=all", "learning_rate=3e-4"])
    assert (c.train.epochs, c.model.pooling, c.train.augment, c.model.trainable_layers, c.train.learning_rate) == (3, "avg", False, "all", 3e-4)


@pytest.mark.parametrize("override, message", [
    ("dropout3=0.1", "unknown config key 'dropout3'"),
    ("optim.lr=1", "unknown config section 'optim'"),
    ("seed=1", "ambiguous: say train.seed or eval.seed"),
    ("epochs=three", "train.epochs='three' is not a valid int"),
    ("epochs=2.5", "not a valid int"),
    ("model.dropout1=1.5", r"model.dropout1=1.5 is invalid: expected a rate in \[0, 1\)"),
    ("pooling=max", "expected one of flatten, avg"),
    ("trainable_layers=some", "a non-negative integer or 'all'"),
    ("mixed_precision=fp8", "one of off, bfloat16, float16"),
    ("xla=maybe", "not a valid bool"),
    ("gradient_allreduce=int8", "one of float32, bfloat16"),
    ("novalue", "is not key=value"),
])
def test_bad_overrides_name_the_key_and_what_is_expected(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg.preset("seed").override([override])


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of seed, demo, tiny"):
        cfg.preset("large")


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"dropout9": 0.1}}))
    with pytest.raises(ConfigError, match="unknown key"):
        Config.load(str(path))
