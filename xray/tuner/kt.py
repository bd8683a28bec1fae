"""The one place that imports KerasTuner.

KerasTuner 1.4 imports `keras` (Keras 3) and rejects tf-keras models, so `keras` must resolve to
tf_keras before keras_tuner is imported (and KerasTuner needs tensorboard installed).

The oracles (xray.tuner.oracles) use documented Oracle methods only. xray.tuner.search.XrayTuner cannot: KerasTuner has
no documented way to skip the per-trial checkpoint or the model build that discovers conditional
hyperparameters, so it overrides `Tuner._populate_initial_space` and re-writes `Tuner.run_trial` with
`Tuner._deepcopy_callbacks`, `Tuner._build_and_fit_model` and `tuner_utils.TunerCallback` (keras_tuner.src).
pyproject.toml pins KerasTuner exactly, and tests/test_tune.py fails when the source of any of them changes.
"""

import sys

from xray import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from xray.trainer.kerasapi import keras

if "keras_tuner" not in sys.modules:
    if "keras" in sys.modules and sys.modules["keras"] is not keras:
        raise RuntimeError("Keras 3 was imported before the tuner: import xray.tuner.kt first")
    sys.modules["keras"] = keras

import keras_tuner as kt  # noqa: E402
from keras_tuner.src.engine import tuner_utils  # noqa: E402  (TunerCallback, for XrayTuner.run_trial)

__all__ = ["kt", "tuner_utils"]
