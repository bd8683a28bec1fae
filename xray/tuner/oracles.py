"""The search's oracles: KerasTuner's Bayesian and random oracles with two mixins over their public methods
(populate_space, end_trial, create_trial, get_state, set_state): the defaults as the first trial, and a report
plus the worker that ran each trial."""

from __future__ import annotations

from xray.tuner.kt import kt

class _DefaultsFirst:
    """Mixin for an Oracle: the defaults as the first trial."""

    def populate_space(self, trial_id):
        defaults = {hp.name: hp.default for hp in self.hyperparameters.space}
        tried = [t.hyperparameters.values for tid, t in self.trials.items() if tid != trial_id]
        if defaults and not any(all(v.get(k) == d for k, d in defaults.items()) for v in tried):
            return {"status": "RUNNING", "values": defaults}
        return super().populate_space(trial_id)


class _Reporting:
    """Mixin for an Oracle: a progress line + files per finished trial, and which worker ran each trial."""

    report = None  # set by make_tuner: a callable(oracle) that writes the trial files

    def end_trial(self, trial):
        result = super().end_trial(trial)
        if self.report:
            self.report(self)
        return result

    def create_trial(self, tuner_id):
        """Records which worker (tuner id) was given each trial, for trials.json's ``worker`` column."""
        trial = super().create_trial(tuner_id)
        if trial.status == "RUNNING":
            self.trial_workers[trial.trial_id] = tuner_id
        return trial

    @property
    def trial_workers(self) -> dict:
        if "_trial_workers" not in self.__dict__:
            self._trial_workers = {}
        return self._trial_workers

    def get_state(self):
        return {**super().get_state(), "trial_workers": dict(self.trial_workers)}

    def set_state(self, state):
        super().set_state(state)
        self._trial_workers = dict(state.get("trial_workers", {}))


class DefaultsFirstBayesian(_DefaultsFirst, _Reporting, kt.oracles.BayesianOptimizationOracle):
    pass


class DefaultsFirstRandom(_DefaultsFirst, _Reporting, kt.oracles.RandomSearchOracle):
    pass
