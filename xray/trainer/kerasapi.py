"""The one place that imports Keras. Everything else does ``from xray.trainer.kerasapi import keras``.

We use tf-keras (Keras 2 API) with ``TF_USE_LEGACY_KERAS=1`` because Keras 3.15 breaks ``fit`` under
MultiWorkerMirroredStrategy across processes (keras-team/keras#20585). Switching back to Keras 3
should touch only this file.
"""

import os

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # xray/trainer/__init__ sets it; someone imported TensorFlow with a different choice first.
    raise RuntimeError(
        "TF_USE_LEGACY_KERAS must be '1' before TensorFlow is imported (got "
        f"{os.environ.get('TF_USE_LEGACY_KERAS')!r}); import the trainer package first or export it."
    )

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
