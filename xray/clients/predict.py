"""What `xray predict` does: find image files, send them in batches, report one result per file.

A file that cannot be read or is not an image gets an error line of its own; the rest of its batch
still gets answers. Fatal or per-file is decided by the status code, the same over gRPC and REST:
- INVALID_ARGUMENT about decoding an image is the fault of one file. TF Serving fails a whole request for
  one bad image (and, with --enable_batching, every request merged into the same batch), so such a batch
  is sent again once, file by file, and only the files that fail alone get an error line.
- UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried by the client with backoff; if they
  persist, and for every other code (NOT_FOUND, FAILED_PRECONDITION, another INVALID_ARGUMENT, ...), no other
  file would fare better: the run stops with one clear line.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from xray.clients import ServingError
from xray.data import formats
from xray.serving import contract



def collect_files(arguments: list[str]) -> list[str]:
    """Files, directories (searched recursively for images) and glob patterns, in order, without repeats."""
    found, seen = [], set()
    for argument in arguments:
        if os.path.isdir(argument):
            matches = sorted(str(p) for p in Path(argument).rglob("*") if p.suffix.lower() in formats.IMAGE_SUFFIXES)
        elif any(ch in argument for ch in "*?["):
            matches = sorted(glob.glob(argument, recursive=True))
        else:
            matches = [argument]
        for path in matches:
            if path not in seen:
                seen.add(path)
                found.append(path)
    return found


def read_image(path: str) -> bytes:
    """The bytes to send for a file, or ValueError naming what is wrong with it (checked before anything is sent).

    JPEG/PNG/BMP/GIF go as they are; DICOM and TIFF become PNGs by xray.data.formats, the conversion xray shards
    applies, so that the server's depth rule sees what training saw."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ValueError(f"cannot read: {error.strerror or error}") from None
    if not data:
        raise ValueError("empty file")
    if formats.tf_format(data):
        return data
    if not formats.is_dicom(data) and Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError("not a JPEG/PNG/BMP/GIF/TIFF/DICOM image")
    try:
        return formats.to_decodable(data)[0]
    except formats.ImageRefused as error:
        raise ValueError(str(error)) from None


def tf_error_line(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong (the op's own message), without the graph
    execution preamble, the node locations or the function name prefix."""
    import re

    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(("[[", "File ", "Detected at node", "Graph execution error"))
              and not line.endswith(":")]
    line = useful[-1] if useful else (lines[0] if lines else message)
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", re.sub(r"\s*\[\[\{\{.*$", "", line))


class LocalModel:
    """The exported SavedModel run in this process (no server): same signatures, same answers."""

    def __init__(self, path: str):
        import tensorflow as tf

        if not tf.io.gfile.exists(f"{path.rstrip('/')}/saved_model.pb"):
            versions = sorted(int(p) for p in tf.io.gfile.listdir(path) if p.rstrip("/").isdigit()) if tf.io.gfile.isdir(path) else []
            if not versions:
                raise ServingError("NOT_FOUND", f"no SavedModel at {path} (expected saved_model.pb or integer version directories)")
            path = f"{path.rstrip('/')}/{versions[-1]}"
        self.path = path
        self.loaded = tf.saved_model.load(path)
        self._tf = tf

    def predict(self, images: list[bytes]) -> list[dict]:
        tf = self._tf
        try:
            outputs = self.loaded.signatures[contract.SIGNATURE_BYTES](**{contract.INPUT_BYTES: tf.constant(images)})
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            raise ServingError("INVALID_ARGUMENT", tf_error_line(error.message)) from None
        probabilities = outputs[contract.OUTPUT_PROBABILITY].numpy().tolist()
        labels = [v.decode() for v in outputs[contract.OUTPUT_LABEL].numpy()]
        return [{"probability": p, "label": label} for p, label in zip(probabilities, labels)]

    def explain(self, image: bytes):
        outputs = self.loaded.signatures[contract.SIGNATURE_EXPLAIN](**{contract.INPUT_BYTES: self._tf.constant([image])})
        return outputs[contract.OUTPUT_HEATMAP].numpy()[0]


def predict_files(client, paths: list[str], batch_size: int = 16):
    """Yields ``{"path", "probability", "label"}`` or ``{"path", "error"}`` per file, in order.

    Raises ServingError for problems that no other file would escape (server down, unknown model).
    """
    if not 1 <= batch_size <= contract.MAX_BATCH:
        raise ServingError("INVALID_ARGUMENT", f"batch_size {batch_size} must be between 1 and {contract.MAX_BATCH}")
    pending: list[tuple[str, bytes]] = []

    def flush():
        batch = list(pending)
        pending.clear()
        try:
            results = client.predict([data for _, data in batch])
        except ServingError as error:
            if not error.is_image_error:
                raise
            if len(batch) == 1:
                return [{"path": batch[0][0], "error": error.message}]
            out = []
            for path, data in batch:  # once per file: the bad image(s) fail alone, the rest get answers
                try:
                    out.append({"path": path, **client.predict([data])[0]})
                except ServingError as single:
                    if not single.is_image_error:
                        raise
                    out.append({"path": path, "error": single.message})
            return out
        return [{"path": path, **result} for (path, _), result in zip(batch, results)]

    for path in paths:
        try:
            pending.append((path, read_image(path)))
        except ValueError as error:
            yield from flush() if pending else []
            yield {"path": path, "error": str(error)}
            continue
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def format_table(rows: list[dict]) -> str:
    width = max([len(r["path"]) for r in rows] + [4])
    lines = [f"{'path':{width}s}  probability  label"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['path']:{width}s}  {'-':>11s}  error: {row['error']}")
        else:
            lines.append(f"{row['path']:{width}s}  {row['probability']:11.4f}  {row['label']}")
    return "\n".join(lines)


def format_jsonl(row: dict) -> str:
    return json.dumps(row)


def save_overlay(image: bytes, heatmap, out_path: str) -> None:
    """The X-ray in gray with the Grad-CAM heatmap blended over it (red = where the model looked)."""
    import io

    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    size = heatmap.shape[0]
    base = Image.open(io.BytesIO(image)).convert("L").resize((size, size), Image.BILINEAR).convert("RGB")
    # Out of [0, 1] takes jet's end colours (a colormap's under/over colours are its ends): no clipping needed.
    colours = (colormaps["jet"](heatmap)[..., :3] * 255).astype(np.uint8)
    overlay = Image.blend(base, Image.fromarray(colours), alpha=0.4)
    display = max(256, size)
    overlay.resize((display, display), Image.BILINEAR).save(out_path, format="PNG")
