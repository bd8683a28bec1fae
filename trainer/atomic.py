"""Whole-file writes that readers never see half done (local paths and gs:// through tf.io.gfile)."""

import uuid

import tensorflow as tf


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to a temporary name beside ``path``, then renames it over ``path``."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
