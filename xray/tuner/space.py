"""What a search varies and how it is run: the space around the base config, the options, and the trainer
config for one set of values. No TensorFlow here: `xray tune --parallel` checks these before it starts any
process, and the processes get them as JSON (xray.tuner.session.TuneJob)."""

from __future__ import annotations

import dataclasses

from xray.trainer.config import Config
from xray.tuner import check_algorithm
from xray.data.errors import SettingError

OBJECTIVES = {"val_loss": "min", "val_auc": "max"}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    dropout1: tuple[float, float] = (0.0, 0.6)
    dropout2: tuple[float, float] = (0.0, 0.6)
    l2: tuple[float, float] = (1e-6, 1e-2)
    learning_rate: tuple[float, float] = (1e-5, 1e-3)

    @classmethod
    def parse(cls, assignments: list[str]) -> "SearchSpace":
        """``name=low:high`` strings, e.g. ``dropout1=0.1:0.5`` or ``learning_rate=1e-5:1e-2``."""
        values = {}
        names = [f.name for f in dataclasses.fields(cls)]
        for assignment in assignments:
            name, _, bounds = assignment.partition("=")
            low, sep, high = bounds.partition(":")
            if name not in names or not sep:
                raise SettingError("range", repr(assignment), f": expected NAME=LOW:HIGH with NAME one of {', '.join(names)}")
            try:
                values[name] = (float(low), float(high))
            except ValueError:
                raise SettingError("range", repr(assignment), ": LOW and HIGH must be numbers") from None
            if not values[name][0] < values[name][1]:
                raise SettingError("range", repr(assignment), ": LOW must be below HIGH")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    algorithm: str = "bayesian"
    objective: str = "val_loss"
    max_trials: int = 8
    epochs_per_trial: int = 0  # 0: the preset's train.epochs
    patience: int = 3  # early stopping inside a trial
    seed: int = 0

    def __post_init__(self):
        check_algorithm(self.algorithm)
        if self.objective not in OBJECTIVES:
            raise SettingError("objective", repr(self.objective), f": choose one of {', '.join(OBJECTIVES)}")
        if self.max_trials < 1:
            raise SettingError("max_trials", self.max_trials, " must be at least 1")


def config_for(base: Config, values: dict) -> Config:
    """The trainer config for one set of hyperparameter values."""
    model = dataclasses.replace(base.model, dropout1=values["dropout1"], dropout2=values["dropout2"], l2=values["l2"])
    train = dataclasses.replace(base.train, learning_rate=values["learning_rate"])
    return dataclasses.replace(base, model=model, train=train)
