"""Whole-file writes that readers never see half done (local paths and gs:// through tf.io.gfile)."""

import uuid

import tensorflow as tf


def write_atomic(path: str, text: str | bytes) -> None:
    """Writes ``text`` (or bytes) to a temporary name beside ``path``, then renames it over ``path``."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
