"""One typed, frozen configuration with named presets and ``key=value`` overrides.

A run's config is saved as ``<workdir>/config.json``; ``xray train --config FILE`` loads one back
(that is how the tuner hands over its best values). Overrides name a field as ``section.field``
(``model.dropout1=0.4``) or by its bare name when that is unique (``dropout1=0.4``).
"""

from __future__ import annotations

import dataclasses
import json
import typing

# The file Keras downloads for weights="imagenet" (ResNet50V2 without its top), named here where no TensorFlow is
# imported: the cluster steps put it on the volume (xray.cluster.steps.weights).
IMAGENET_WEIGHTS_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"

MIXED_PRECISION = ("off", "bfloat16", "float16")
POOLING = ("flatten", "avg")
THRESHOLD_METHODS = ("youden", "sensitivity")
ALLREDUCE_DTYPES = ("float32", "bfloat16")
COLLECTIVES = ("auto", "ring", "nccl")


class ConfigError(ValueError):
    """A bad preset, key or value; the message says which and what is allowed."""


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    image_size: int = 224
    # "imagenet" (Keras download/cache under $KERAS_HOME/models), "none", or a path to a weights file.
    weights: str = "imagenet"
    # Backbone layers left trainable, counted from the top: an integer, or "all".
    trainable_layers: str = "10"
    # BatchNormalization stays frozen (inference mode) when fine-tuning pretrained weights; set true
    # only when training a backbone from scratch (weights=none), where frozen BN would be identity.
    train_batchnorm: bool = False
    # Momentum of the BN moving statistics when they train. Keras' 0.99 needs hundreds of steps before
    # inference-mode outputs mean anything; a short from-scratch run wants ~0.9.
    batchnorm_momentum: float = 0.99
    pooling: str = "flatten"
    dense1_units: int = 256
    dense2_units: int = 128
    dropout1: float = 0.3
    dropout2: float = 0.2
    l2: float = 1e-4

    def __post_init__(self):
        _check(self.image_size >= 32, "model.image_size", self.image_size, "an integer >= 32 (ResNet50V2's minimum)")
        _check(self.pooling in POOLING, "model.pooling", self.pooling, f"one of {', '.join(POOLING)}")
        ok = self.trainable_layers == "all" or (self.trainable_layers.isdigit())
        _check(ok, "model.trainable_layers", self.trainable_layers, "a non-negative integer or 'all'")
        for name in ("dropout1", "dropout2"):
            value = getattr(self, name)
            _check(0 <= value < 1, f"model.{name}", value, "a rate in [0, 1)")
        _check(0 < self.batchnorm_momentum < 1, "model.batchnorm_momentum", self.batchnorm_momentum, "a value in (0, 1)")
        _check(self.l2 >= 0, "model.l2", self.l2, "a non-negative L2 factor, e.g. 1e-4")
        _check(self.dense1_units > 0 and self.dense2_units > 0, "model.dense*_units", (self.dense1_units, self.dense2_units), "positive integers")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # GLOBAL batch size, split evenly over all replicas of all workers
    epochs: int = 50
    learning_rate: float = 1e-4
    # CosineDecayRestarts, as documented by the team.
    first_decay_steps: int = 5000
    t_mul: float = 2.0
    m_mul: float = 0.8
    alpha: float = 1e-6
    early_stopping_patience: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the train split
    # The design document applies no augmentation; the demo preset turns it on (a from-scratch model on 64 px).
    augment: bool = False
    seed: int = 0
    mixed_precision: str = "off"  # for GPU nodes; the sigmoid output stays float32

    def __post_init__(self):
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "a positive integer")
        _check(self.epochs > 0, "train.epochs", self.epochs, "a positive integer")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "a positive float, e.g. 1e-4")
        _check(self.first_decay_steps > 0, "train.first_decay_steps", self.first_decay_steps, "a positive integer")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience", self.early_stopping_patience, ">= 0")
        _check(self.steps_per_epoch >= 0, "train.steps_per_epoch", self.steps_per_epoch, "0 (auto) or a positive integer")
        _check(self.mixed_precision in MIXED_PRECISION, "train.mixed_precision", self.mixed_precision, f"one of {', '.join(MIXED_PRECISION)}")

    def check_split(self, num_replicas: int, what: str = "workers") -> None:
        """The global batch must split evenly: every replica computes the same number of examples."""
        if self.batch_size % num_replicas:
            divisors = [n for n in range(1, self.batch_size + 1) if self.batch_size % n == 0]
            raise ConfigError(
                f"train.batch_size={self.batch_size} does not split evenly over {num_replicas} {what}: use "
                f"{', '.join(map(str, divisors))} {what}, or set train.batch_size to a multiple of {num_replicas}")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How a run executes, apart from what it learns: the cache, the exchange between workers, the compiler, and
    what to do when a peer is lost. Earlier runs saved these under train: their config.json still loads, and an
    override spelled train.<name> still sets runtime.<name> (MOVED_TO_RUNTIME)."""
    # "auto": compute the frozen part of the backbone once per image and train the tail and head on the
    # cached output when that is exact (trainer/feature_cache.py); "off": always run the whole model.
    feature_cache: str = "auto"
    feature_cache_dtype: str = "float32"  # or "float16": half the memory, not exact
    xla: bool = False
    # Gradients between workers: "float32" (exact, the optimizer's own aggregation) or "bfloat16"
    # (half the bytes; see xray/trainer/allreduce.py). Only matters with more than one replica.
    gradient_allreduce: str = "float32"
    # Exact and on by default: the big Dense kernel's gradient travels between workers as the rows it is
    # made of (inputs and output gradients, batch x (in + out)) instead of in x out values.
    factor_dense_gradient: bool = True
    # 0: no per-op timeout. A killed peer already fails collectives at once (UnavailableError), and
    # TF 2.21 starts one "collective_ops" thread per collective that sleeps out this timeout: with
    # 600 s that measured ~1000 new threads per epoch until the process could not start another.
    collective_timeout_s: int = 0
    # How many times the group may restart after losing a peer (every survivor exits 75 and the Job replaces
    # the pods) before the chief gives up with exit 76, which the Job's podFailurePolicy treats as final.
    # Counted in the workdir (peer_losses.json), so it holds across pod restarts.
    max_peer_losses: int = 10
    # How workers exchange gradients: "ring" (gRPC, CPU), "nccl" (GPU workers; the GPU overlay sets it), or
    # "auto" (TensorFlow's choice).
    collective: str = "auto"

    def __post_init__(self):
        _check(self.gradient_allreduce in ALLREDUCE_DTYPES, "runtime.gradient_allreduce", self.gradient_allreduce,
               f"one of {', '.join(ALLREDUCE_DTYPES)}")
        _check(self.collective_timeout_s >= 0, "runtime.collective_timeout_s", self.collective_timeout_s, "0 (off) or a number of seconds")
        _check(self.collective in COLLECTIVES, "runtime.collective", self.collective, f"one of {', '.join(COLLECTIVES)}")
        _check(self.feature_cache in ("auto", "off"), "runtime.feature_cache", self.feature_cache, "auto or off")
        _check(self.feature_cache_dtype in ("float32", "float16"), "runtime.feature_cache_dtype", self.feature_cache_dtype,
               "float32 or float16")
        _check(self.max_peer_losses >= 0, "runtime.max_peer_losses", self.max_peer_losses, "0 or a positive integer")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    threshold_method: str = "youden"  # maximise Youden's J on val, or reach target_sensitivity on val
    target_sensitivity: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0

    def __post_init__(self):
        _check(self.threshold_method in THRESHOLD_METHODS, "eval.threshold_method", self.threshold_method, f"one of {', '.join(THRESHOLD_METHODS)}")
        _check(0 < self.target_sensitivity <= 1, "eval.target_sensitivity", self.target_sensitivity, "a fraction in (0, 1]")
        _check(self.bootstrap_samples >= 0, "eval.bootstrap_samples", self.bootstrap_samples, ">= 0")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        data = _moved_keys(data)
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for field in dataclasses.fields(cls):
            section_cls = _SECTIONS[field.name]
            values = data.get(field.name, {})
            names = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(values) - names
            if bad:
                raise ConfigError(f"unknown key(s) {sorted(bad)} in config section {field.name!r}; known: {sorted(names)}")
            built[field.name] = section_cls(**{k: _coerce(section_cls, k, v) for k, v in values.items()})
        return cls(**built)

    def override(self, assignments: list[str]) -> "Config":
        """Applies ``key=value`` strings, e.g. ``model.dropout1=0.4`` or ``epochs=3``."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {assignment!r} is not key=value, e.g. train.epochs=5")
            section, name = _resolve_key(key.strip())
            data[section][name] = _coerce(_SECTIONS[section], name, raw.strip())
        return Config.from_dict(data)

    def save(self, path: str) -> None:
        from xray.data.atomic import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str) -> "Config":
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        with tf.io.gfile.GFile(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
        return cls.from_dict(data)


_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig, "runtime": RuntimeConfig}
# Keys that were train.* before the runtime section existed: a config.json of an earlier run, and an override
# spelled the old way, still mean the same setting.
MOVED_TO_RUNTIME = frozenset(f.name for f in dataclasses.fields(RuntimeConfig))


def _moved_keys(data: dict) -> dict:
    train = data.get("train")
    if not isinstance(train, dict) or not MOVED_TO_RUNTIME & set(train):
        return data
    runtime = dict(data.get("runtime") or {})
    for name in MOVED_TO_RUNTIME & set(train):
        runtime.setdefault(name, train[name])
    return {**data, "train": {k: v for k, v in train.items() if k not in MOVED_TO_RUNTIME}, "runtime": runtime}


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section == "train" and name in MOVED_TO_RUNTIME:
            return "runtime", name
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(_SECTIONS)}")
        if name not in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            known = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(_SECTIONS[section]))
            raise ConfigError(f"unknown config key {key!r}; known keys: {known}")
        return section, name
    matches = [s for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if not matches:
        known = ", ".join(f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls))
        raise ConfigError(f"unknown config key {key!r}; known keys: {known}")
    if len(matches) > 1:
        raise ConfigError(f"config key {key!r} is ambiguous: say {' or '.join(f'{s}.{key}' for s in matches)}")
    return matches[0], key


def _coerce(section_cls, name: str, value):
    """Converts a value (a string from the command line, or JSON) to the field's declared type."""
    kind = typing.get_type_hints(section_cls)[name]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)  # a string in base 10 only; a whole float as its integer
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except ValueError:
        section = next(s for s, c in _SECTIONS.items() if c is section_cls)
        raise ConfigError(f"{section}.{name}={value!r} is not a valid {kind.__name__}") from None


# ----------------------------------------------------------------------------------------------------
# Presets. Each docstring starts with the command that runs it.
# ----------------------------------------------------------------------------------------------------


def team() -> Config:
    """xray train --data /mnt/data/shards --workdir /mnt/runs/team --preset team

    The team's documented settings: ResNet50V2 on ImageNet weights at 224x224, last 10 backbone
    layers fine-tuned, head 256(L2 1e-4)/0.3/128/0.2, Adam 1e-4 with CosineDecayRestarts(5000, 2,
    0.8, 1e-6), batch 16, 50 epochs, early stopping after 10, best model by val_loss.
    """
    return Config()


def demo() -> Config:
    """xray train --data build/shards --workdir build/run --preset demo --workers 2   (what `make train` runs)

    Sized for a laptop CPU: 64x64 images and a from-scratch backbone (ImageNet weights cannot be
    downloaded in CI, and a random frozen backbone learns little), with BatchNormalization training.
    A larger learning rate and a short cosine cycle to converge in a few minutes; gradients travel
    between the local workers in bfloat16 (the all-reduce, not the compute, dominates a 64 px step).
    15 epochs with patience 10: a from-scratch backbone often sits near chance for several epochs before
    it takes off (measured on the default synthetic set: take-off between epoch 3 and 8), and a shorter
    patience stopped such runs before they learned.
    """
    return Config(
        model=ModelConfig(image_size=64, weights="none", trainable_layers="all", train_batchnorm=True, batchnorm_momentum=0.9),
        train=TrainConfig(epochs=15, learning_rate=5e-4, first_decay_steps=200, augment=True),  # patience 10, as in team
        runtime=RuntimeConfig(gradient_allreduce="bfloat16"),
    )


def tiny() -> Config:
    """xray train --data build/shards --workdir /tmp/tiny --preset tiny

    Smoke test of the whole path in seconds (the tests use it): 32x32 images, 2 epochs of 2 steps.
    """
    return Config(
        model=ModelConfig(image_size=32, weights="none", trainable_layers="all", train_batchnorm=True, batchnorm_momentum=0.9,
                          dense1_units=16, dense2_units=8),
        train=TrainConfig(batch_size=4, epochs=2, steps_per_epoch=2, first_decay_steps=10, early_stopping_patience=2),
        eval=EvalConfig(bootstrap_samples=50),
    )


PRESETS = {"team": team, "demo": demo, "tiny": tiny}
# Earlier names that still work: "seed" was the team preset's name, and collided with the seed fields.
EARLIER_NAMES = {"seed": "team"}


def preset(name: str) -> Config:
    name = EARLIER_NAMES.get(name, name)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
