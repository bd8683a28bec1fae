import json

import pytest

from conftest import REPO
from xray.trainer import config as cfg
from xray.trainer.config import Config, ConfigError


def test_team_preset_is_the_documented_design():
    c = cfg.preset("team")
    assert (c.model.image_size, c.model.weights, c.model.trainable_layers, c.model.pooling) == (224, "imagenet", "10", "flatten")
    assert (c.model.dense1_units, c.model.l2, c.model.dropout1, c.model.dense2_units, c.model.dropout2) == (256, 1e-4, 0.3, 128, 0.2)
    t = c.train
    assert (t.batch_size, t.epochs, t.early_stopping_patience, t.learning_rate) == (16, 50, 10, 1e-4)
    assert (t.first_decay_steps, t.t_mul, t.m_mul, t.alpha) == (5000, 2.0, 0.8, 1e-6)
    assert t.mixed_precision == "off" and c.runtime.xla is False


@pytest.mark.parametrize("name", sorted(cfg.PRESETS))
def test_every_preset_docstring_starts_with_its_command(name):
    doc = cfg.PRESETS[name].__doc__.strip()
    assert doc.startswith("xray train ") and f"--preset {name}" in doc.splitlines()[0]


def test_round_trip_through_json(tmp_path):
    original = cfg.preset("demo").override(["model.dropout1=0.45", "l2=1e-3", "runtime.xla=true"])
    path = tmp_path / "config.json"
    original.save(str(path))
    assert Config.load(str(path)) == original
    assert json.loads(path.read_text())["model"]["dropout1"] == 0.45


def test_overrides_accept_section_or_unique_bare_names_and_coerce_types():
    c = cfg.preset("team").override(["epochs=3", "model.pooling=avg", "augment=no", "trainable_layers=all", "learning_rate=3e-4"])
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
        cfg.preset("team").override([override])


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of team, demo, tiny"):
        cfg.preset("large")


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"dropout9": 0.1}}))
    with pytest.raises(ConfigError, match="unknown key"):
        Config.load(str(path))


# Every documented bound, with the value just inside it (accepted) and just outside (refused with this message).
BOUNDS = [
    ("model", "image_size", [32, 224], [31], "an integer >= 32 (ResNet50V2's minimum)"),
    ("model", "pooling", ["flatten", "avg"], ["max"], "one of flatten, avg"),
    ("model", "trainable_layers", ["0", "10", "all"], ["-1", "ten", "All"], "a non-negative integer or 'all'"),
    ("model", "dropout1", [0.0, 0.99], [1.0, -0.01], "a rate in [0, 1)"),
    ("model", "dropout2", [0.0, 0.99], [1.0, -0.01], "a rate in [0, 1)"),
    ("model", "batchnorm_momentum", [0.01, 0.99], [0.0, 1.0], "a value in (0, 1)"),
    ("model", "l2", [0.0, 1e-4], [-1e-9], "a non-negative L2 factor, e.g. 1e-4"),
    ("train", "batch_size", [1, 16], [0], "a positive integer"),
    ("train", "epochs", [1], [0], "a positive integer"),
    ("train", "learning_rate", [1e-9], [0.0, -1e-4], "a positive float, e.g. 1e-4"),
    ("train", "first_decay_steps", [1], [0], "a positive integer"),
    ("train", "early_stopping_patience", [0], [-1], ">= 0"),
    ("train", "steps_per_epoch", [0, 1], [-1], "0 (auto) or a positive integer"),
    ("train", "mixed_precision", ["off", "bfloat16", "float16"], ["fp16"], "one of off, bfloat16, float16"),
    ("runtime", "gradient_allreduce", ["float32", "bfloat16"], ["float16"], "one of float32, bfloat16"),
    ("runtime", "collective_timeout_s", [0, 600], [-1], "0 (off) or a number of seconds"),
    ("runtime", "collective", ["auto", "ring", "nccl"], ["mpi"], "one of auto, ring, nccl"),
    ("runtime", "feature_cache", ["auto", "off"], ["on"], "auto or off"),
    ("runtime", "feature_cache_dtype", ["float32", "float16"], ["bfloat16"], "float32 or float16"),
    ("runtime", "max_peer_losses", [0, 10], [-1], "0 or a positive integer"),
    ("eval", "threshold_method", ["youden", "sensitivity"], ["f1"], "one of youden, sensitivity"),
    ("eval", "target_sensitivity", [1.0, 0.01], [0.0, 1.01], "a fraction in (0, 1]"),
    ("eval", "bootstrap_samples", [0], [-1], ">= 0"),
]


@pytest.mark.parametrize("section, name, good, bad, expected", BOUNDS, ids=[f"{s}.{n}" for s, n, *_ in BOUNDS])
def test_each_bound_accepts_its_edge_and_refuses_past_it_with_the_key_and_the_rule(section, name, good, bad, expected):
    kind = cfg._SECTIONS[section]
    for value in good:
        assert getattr(kind(**{name: value}), name) == value
    for value in bad:
        with pytest.raises(ConfigError) as caught:
            kind(**{name: value})
        assert str(caught.value) == f"{section}.{name}={value!r} is invalid: expected {expected}"


def test_both_dense_layers_need_units():
    for units in ((0, 128), (256, 0)):
        with pytest.raises(ConfigError) as caught:
            cfg.ModelConfig(dense1_units=units[0], dense2_units=units[1])
        assert str(caught.value) == f"model.dense*_units={units!r} is invalid: expected positive integers"
    assert cfg.ModelConfig(dense1_units=1, dense2_units=1).dense2_units == 1


def test_the_demo_and_tiny_presets_are_what_their_docstrings_and_the_readme_say():
    demo = cfg.preset("demo")
    assert (demo.model.image_size, demo.model.weights, demo.model.trainable_layers, demo.model.train_batchnorm,
            demo.model.batchnorm_momentum) == (64, "none", "all", True, 0.9)
    assert (demo.train.epochs, demo.train.learning_rate, demo.train.first_decay_steps,
            demo.train.early_stopping_patience, demo.runtime.gradient_allreduce, demo.train.augment) == (
        15, 5e-4, 200, 10, "bfloat16", True)
    assert demo.eval == cfg.EvalConfig() and demo.model.dense1_units == 256 and demo.train.batch_size == 16
    tiny = cfg.preset("tiny")
    assert (tiny.model.image_size, tiny.model.weights, tiny.model.trainable_layers, tiny.model.train_batchnorm,
            tiny.model.batchnorm_momentum, tiny.model.dense1_units, tiny.model.dense2_units) == (
        32, "none", "all", True, 0.9, 16, 8)
    assert (tiny.train.batch_size, tiny.train.epochs, tiny.train.steps_per_epoch, tiny.train.first_decay_steps,
            tiny.train.early_stopping_patience) == (4, 2, 2, 10, 2)
    assert tiny.eval.bootstrap_samples == 50 and tiny.train.learning_rate == 1e-4


def test_the_global_batch_must_split_evenly_and_the_refusal_lists_what_would():
    cfg.TrainConfig(batch_size=16).check_split(4)
    cfg.TrainConfig(batch_size=16).check_split(16)
    with pytest.raises(ConfigError) as caught:
        cfg.TrainConfig(batch_size=16).check_split(3)
    assert str(caught.value) == ("train.batch_size=16 does not split evenly over 3 workers: use 1, 2, 4, 8, 16 "
                                 "workers, or set train.batch_size to a multiple of 3")
    with pytest.raises(ConfigError, match="over 5 replicas: use 1, 2, 3, 6 replicas"):
        cfg.TrainConfig(batch_size=6).check_split(5, "replicas")


@pytest.mark.parametrize("raw, value", [("1", True), ("true", True), ("Yes", True), ("ON", True), ("0", False),
                                        ("false", False), ("no", False), ("Off", False), (True, True), (False, False)])
def test_booleans_are_read_in_every_documented_spelling(raw, value):
    assert _loaded("runtime", "xla", raw) is value


def _loaded(section: str, name: str, raw):
    """The value a config.json holding ``{section: {name: raw}}`` gives (overrides coerce the same way)."""
    return getattr(getattr(Config.from_dict({section: {name: raw}}), section), name)


@pytest.mark.parametrize("name, raw, value", [("epochs", "7", 7), ("epochs", 7.0, 7), ("epochs", 7, 7),
                                              ("learning_rate", "3e-4", 3e-4), ("learning_rate", 1, 1.0),
                                              ("mixed_precision", "off", "off")])
def test_numbers_and_strings_are_coerced_to_the_declared_type(name, raw, value):
    coerced = _loaded("train", name, raw)
    assert coerced == value and type(coerced) is type(value)


@pytest.mark.parametrize("section, name, raw, kind", [("train", "epochs", "07x", "int"), ("train", "epochs", 2.5, "int"),
                                                      ("train", "epochs", True, "int"), ("train", "epochs", "0x10", "int"),
                                                      ("train", "learning_rate", False, "float"),
                                                      ("train", "epochs", "a", "int"), ("runtime", "xla", "2", "bool"),
                                                      ("eval", "seed", "one", "int")])
def test_a_value_of_the_wrong_type_is_named_with_its_key_and_type(section, name, raw, kind):
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({section: {name: raw}})
    assert str(caught.value) == f"{section}.{name}={raw!r} is not a valid {kind}"


def test_key_errors_list_what_exists():
    def override(key):
        return cfg.preset("team").override([f"{key}=1"])

    with pytest.raises(ConfigError) as caught:
        override("optim.lr")
    assert str(caught.value) == "unknown config section 'optim' in 'optim.lr'; sections: model, train, eval, runtime"
    with pytest.raises(ConfigError) as caught:
        override("eval.nope")
    assert str(caught.value) == ("unknown config key 'eval.nope'; known keys: eval.threshold_method, "
                                 "eval.target_sensitivity, eval.bootstrap_samples, eval.seed")
    with pytest.raises(ConfigError) as caught:
        override("nope")
    assert str(caught.value).startswith("unknown config key 'nope'; known keys: model.image_size, model.weights, ")
    assert str(caught.value).endswith(", eval.bootstrap_samples, eval.seed, runtime.feature_cache, runtime.feature_cache_dtype, "
                                      "runtime.xla, runtime.gradient_allreduce, runtime.factor_dense_gradient, "
                                      "runtime.collective_timeout_s, runtime.max_peer_losses, runtime.collective")
    with pytest.raises(ConfigError) as caught:
        override("model.dropout1.rate")  # the section is what comes before the first dot
    assert str(caught.value).startswith("unknown config key 'model.dropout1.rate'; known keys: model.image_size, ")
    seed = cfg.preset("team")
    assert override("model.l2").model.l2 == 1.0 and override("epochs").train.epochs == 1
    # The section settles an ambiguous name.
    assert (override("train.seed").train.seed, override("train.seed").eval.seed) == (1, seed.eval.seed)
    assert seed.train.seed != 1 and seed.eval.seed != 1
    with pytest.raises(ConfigError) as caught:
        override("seed")
    assert str(caught.value) == "config key 'seed' is ambiguous: say train.seed or eval.seed"


def test_overrides_strip_spaces_and_keep_the_rest_of_the_value():
    c = cfg.preset("team").override([" epochs = 3 ", "weights=/models/w=1.h5"])
    assert c.train.epochs == 3 and c.model.weights == "/models/w=1.h5"
    for bad in ("=3", "epochs"):
        with pytest.raises(ConfigError) as caught:
            cfg.preset("team").override([bad])
        assert str(caught.value) == f"override {bad!r} is not key=value, e.g. train.epochs=5"


def test_config_files_with_unknown_sections_or_keys_or_bad_json_are_named(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {}, "optimizer": {}}))
    with pytest.raises(ConfigError) as caught:
        Config.load(str(path))
    assert str(caught.value) == "unknown config section(s) ['optimizer']; expected ['eval', 'model', 'runtime', 'train']"
    path.write_text(json.dumps({"train": {"epochs": 3, "lr": 1, "beta": 2}}))
    with pytest.raises(ConfigError) as caught:
        Config.load(str(path))
    assert str(caught.value).startswith("unknown key(s) ['beta', 'lr'] in config section 'train'; known: [")
    path.write_text('{"train": ')
    with pytest.raises(ConfigError, match=f"config file {path} is not valid JSON: "):
        Config.load(str(path))
    with pytest.raises(ConfigError) as caught:
        Config.load(str(tmp_path / "missing.json"))
    assert str(caught.value) == f"config file {tmp_path / 'missing.json'} does not exist"
    path.write_text(json.dumps({"train": {"epochs": "4", "augment": "yes"}}))  # JSON strings coerced too
    loaded = Config.load(str(path))
    assert loaded.train.epochs == 4 and loaded.train.augment is True and loaded.model == cfg.ModelConfig()


def test_a_saved_config_is_indented_json_of_every_section(tmp_path):
    path = tmp_path / "config.json"
    cfg.preset("tiny").save(str(path))
    text = path.read_text()
    assert text.startswith('{\n  "model": {\n    "image_size": 32,')
    assert json.loads(text) == cfg.preset("tiny").to_dict()


def test_a_config_json_saved_before_the_runtime_section_loads_with_the_same_settings(tmp_path):
    """tests/data/config-before-runtime-section.json was written by Config.save before the runtime settings left
    train (the demo preset with train.feature_cache=off and train.max_peer_losses=3): an earlier run's config.json
    loads, means the same, and a resume compares equal to the config given today; the old override spelling still
    sets the same key."""
    old = REPO / "tests" / "data" / "config-before-runtime-section.json"
    assert "runtime" not in json.loads(old.read_text()) and "xla" in json.loads(old.read_text())["train"]
    loaded = cfg.Config.load(str(old))
    assert loaded == cfg.preset("demo").override(["runtime.feature_cache=off", "runtime.max_peer_losses=3"])
    assert loaded.runtime.gradient_allreduce == "bfloat16" and loaded.train.augment is True
    assert cfg.Config().override(["train.collective=ring"]).runtime.collective == "ring"
    loaded.save(str(tmp_path / "config.json"))  # saved again: the new layout, and it loads to the same
    assert set(json.loads((tmp_path / "config.json").read_text())) == {"model", "train", "eval", "runtime"}
    assert cfg.Config.load(str(tmp_path / "config.json")) == loaded


def test_the_team_preset_s_earlier_name_still_works():
    """`seed` was the team preset's name (it collided with the seed fields): commands and manifests written with it
    still get the same config."""
    assert cfg.preset("seed") == cfg.preset("team") == Config()
    assert set(cfg.PRESETS) == {"team", "demo", "tiny"}
