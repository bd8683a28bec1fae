"""Training stages of the X-ray pipeline: synth -> model -> cluster -> train -> evaluate (data: the data package).

Importing this package selects tf-keras (Keras 2) for TensorFlow before TensorFlow is imported:
with Keras 3.15, ``model.fit`` under MultiWorkerMirroredStrategy across processes fails
(keras-team/keras#20585); tf-keras 2.21 works. See ``xray.trainer.kerasapi``.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO lines drown the training logs; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
