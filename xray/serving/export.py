"""Export the best model as a versioned SavedModel for TF Serving, behind a held-out-metrics gate.

    xray export --workdir build/run --model-base build/models

Writes ``<model-base>/<version>/`` (integer versions; the next free one by default) under a temporary
name and renames it when complete, so TF Serving never loads a half-written version. Signatures
(names in xray/serving/contract.py):
  serving_default  image_bytes: string [batch] (encoded JPEG/PNG)  -> probability, label
  predict_tensor   image: float32 [batch, size, size, 3] in [-1, 1] -> probability, label
  explain          image_bytes                                      -> probability, heatmap (Grad-CAM)
Decoding inside serving_default is xray.data.pixels.preprocess_image, the function training reads with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from xray.serving import contract
from xray.data import manifest as manifests
from xray.data import formats, pixels
from xray.data.schema import parse_example
from xray.trainer import evaluate
from xray.trainer.config import Config
from xray.trainer.kerasapi import keras
from xray.trainer.model import load_trained
from xray.trainer.workdir import Workdir, read_summary
from xray.data.errors import SettingError

DEFAULT_TOLERANCE = 0.01
NUM_WARMUP_RECORDS = 3


class GateRefused(RuntimeError):
    """The candidate is worse than the current best version on the held-out test split."""


class ExportError(ValueError):
    """A bad export request (missing run, taken version, ...)."""


# ----------------------------------------------------------------------------------------------------
# Versions already under the model base.
# ----------------------------------------------------------------------------------------------------


def list_versions(model_base: str) -> list[dict]:
    """Integer version directories with their model cards (None when a version has no card)."""
    if not tf.io.gfile.isdir(model_base):
        return []
    versions = []
    for entry in tf.io.gfile.listdir(model_base):
        name = entry.rstrip("/")
        if not name.isdigit():
            continue  # temporary directories, models.config: TF Serving ignores them too
        card_path = f"{model_base.rstrip('/')}/{name}/{contract.MODEL_CARD}"
        card = None
        if tf.io.gfile.exists(card_path):
            with tf.io.gfile.GFile(card_path) as f:
                card = json.load(f)
        versions.append({"version": int(name), "card": card})
    return sorted(versions, key=lambda v: v["version"])


def format_versions(model_base: str) -> str:
    """`xray export --list`: a line per version (created, AUC, sensitivity, specificity, threshold, its labels)."""
    from xray.serving import config as serving_config

    versions = list_versions(model_base)
    if not versions:
        return f"no versions under {model_base}"
    labels = serving_config.read_labels(model_base)
    lines = []
    for v in versions:
        card = v["card"] or {}
        m = {**card.get("metrics", {}), "roc_auc": recorded_auc(card) or float("nan")}
        tags = ",".join(label for label, version in labels.items() if version == v["version"])
        lines.append(f"{v['version']:>4d}  {card.get('created', '?'):20s}  auc {m.get('roc_auc', float('nan')):.4f}  "
                     f"sens {m.get('sensitivity', float('nan')):.3f}  spec {m.get('specificity', float('nan')):.3f}  "
                     f"threshold {card.get('threshold', float('nan')):.3f}  {tags}")
    return "\n".join(lines)


def recorded_auc(card: dict | None) -> float | None:
    """A version's test AUC as the server computes it (cards before the serving-path check: the training path's)."""
    if not card:
        return None
    serving = card.get("serving_path", {}).get("roc_auc")
    return serving if serving is not None else card.get("metrics", {}).get("roc_auc")


def check_gate(candidate_auc: float, versions: list[dict], tolerance: float) -> tuple[bool, str]:
    """Compares with the highest existing version's recorded test AUC; returns (ok, explanation)."""
    with_metrics = [v for v in versions if recorded_auc(v["card"]) is not None]
    if not with_metrics:
        return True, "no earlier version with recorded metrics: nothing to compare with"
    current = with_metrics[-1]
    current_auc = recorded_auc(current["card"])
    message = (f"candidate test AUC {candidate_auc:.4f} vs version {current['version']}'s {current_auc:.4f} "
               f"(tolerance {tolerance})")
    return candidate_auc >= current_auc - tolerance, message


# ----------------------------------------------------------------------------------------------------
# The serving module.
# ----------------------------------------------------------------------------------------------------


def _gradcam_model(model: keras.Model) -> keras.Model:
    """Same layers, also returning the backbone's last feature map (for Grad-CAM)."""
    backbone = model.get_layer("resnet50v2")
    features = backbone(model.inputs[0])
    x = features
    for layer in model.layers[model.layers.index(backbone) + 1:]:
        x = layer(x)
    return keras.Model(model.inputs, [features, x])


class XrayServingModule(tf.Module):
    def __init__(self, model: keras.Model, image_size: int, threshold: float):
        super().__init__()
        self.model = model
        self.gradcam = _gradcam_model(model)
        self.image_size = image_size
        self.threshold = tf.constant(threshold, tf.float32)
        self.class_names = tf.constant(contract.CLASS_NAMES)

    def decode(self, image_bytes):
        size = self.image_size
        return tf.map_fn(lambda b: pixels.preprocess_image(b, size), image_bytes,
                         fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

    def outputs(self, images):
        probability = tf.reshape(self.model(images, training=False), [-1])
        label = tf.gather(self.class_names, tf.cast(probability >= self.threshold, tf.int32))
        return {contract.OUTPUT_PROBABILITY: probability, contract.OUTPUT_LABEL: label}

    def serve_bytes(self, image_bytes):
        return self.outputs(self.decode(image_bytes))

    def serve_tensor(self, image):
        return self.outputs(image)

    def explain(self, image_bytes):
        images = self.decode(image_bytes)
        with tf.GradientTape() as tape:
            features, probability = self.gradcam(images, training=False)
            score = tf.reduce_sum(probability)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = cam / (tf.reduce_max(cam, axis=[1, 2, 3], keepdims=True) + 1e-8)
        heatmap = tf.image.resize(cam, [self.image_size, self.image_size], method="bilinear")[..., 0]
        return {contract.OUTPUT_PROBABILITY: tf.reshape(probability, [-1]), contract.OUTPUT_HEATMAP: heatmap}

    def signatures(self) -> dict:
        size = self.image_size
        bytes_spec = tf.TensorSpec([None], tf.string, name=contract.INPUT_BYTES)
        tensor_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=contract.INPUT_TENSOR)
        return {
            contract.SIGNATURE_BYTES: tf.function(self.serve_bytes, input_signature=[bytes_spec]).get_concrete_function(),
            contract.SIGNATURE_TENSOR: tf.function(self.serve_tensor, input_signature=[tensor_spec]).get_concrete_function(),
            contract.SIGNATURE_EXPLAIN: tf.function(self.explain, input_signature=[bytes_spec]).get_concrete_function(),
        }


# ----------------------------------------------------------------------------------------------------
# Files inside the version directory.
# ----------------------------------------------------------------------------------------------------


def warmup_records(image_size: int, model_name: str) -> list[bytes]:
    """PredictionLog records TF Serving replays at load time, so the first real request is not slow."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(0)
    image = tf.io.encode_jpeg(rng.integers(0, 255, (image_size, image_size, 1), dtype=np.uint8)).numpy()
    logs = []
    for batch in (1, 4, 16)[:NUM_WARMUP_RECORDS]:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=contract.SIGNATURE_BYTES))
        request.inputs[contract.INPUT_BYTES].CopyFrom(tf.make_tensor_proto([image] * batch, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return logs


def _code_version() -> str:
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).resolve().parent)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sha256(path: str) -> str | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# The serving path: the exported signature on the test images as a client would send them.
# ----------------------------------------------------------------------------------------------------

# The largest drop from the training path's test AUC to the serving path's that export accepts: more means
# the server sees other pixels than training did (shards resized differently, a preprocessing change). On a
# small test set one swapped pair moves the AUC by more than that, so the drop must also leave the training
# AUC's 95% bootstrap interval.
SKEW_TOLERANCE = 0.02


def skew_refusal(training_auc: float, training_ci: list[float] | None, serving_auc: float) -> str | None:
    """Why the serving path's AUC is too far below the training path's, or None when it is not."""
    floor = training_auc - SKEW_TOLERANCE
    if training_ci:
        floor = min(floor, training_ci[0])
    if serving_auc >= floor:
        return None
    return (f"the exported model's test AUC is {serving_auc:.4f} on the images as a client sends them but "
            f"{training_auc:.4f} on the training path (95% CI from {training_ci[0] if training_ci else float('nan'):.4f}): "
            "training and serving see different pixels (shards made by an older xray shards, or another "
            "preprocessing? remake the shards and retrain)")


def test_images_as_sent(data_uri: str) -> tuple[list[bytes], np.ndarray, str]:
    """(encoded images, labels, where they came from): the original files when the manifest's source folder is
    reachable from here, else the bytes stored in the test shards."""
    manifest = manifests.read(data_uri)
    encoded, labels, paths = [], [], []
    for serialized in tf.data.TFRecordDataset(manifest.shard_paths("test")):
        example = parse_example(serialized)
        encoded.append(example["image_bytes"].numpy())
        labels.append(int(example["label"].numpy()))
        paths.append(example["source_path"].numpy().decode())
    source = manifest.source
    originals = [Path(source) / path for path in paths]
    if source and all(path.is_file() for path in originals):
        # As a client sends them: DICOM and TIFF through the clients' own conversion (xray.data.formats).
        return ([formats.to_decodable(path.read_bytes())[0] for path in originals], np.array(labels),
                f"original files under {source}")
    return encoded, np.array(labels), "bytes stored in the test shards (the original files are not reachable here)"


def _trained_inputs(data_uri: str) -> dict:
    manifest = manifests.read(data_uri)
    return {"kinds": manifest.inputs, "depth_rule": manifest.options.get("depth_rule", pixels.DEPTH_RULE),
            "resize": manifest.options.get("resize"), "max_pixels": formats.MAX_PIXELS,
            "stored_image_size": manifest.options.get("image_size")}


def serving_path_metrics(saved_model_dir: str, data_uri: str, batch_size: int = 16) -> dict:
    """ROC AUC of the exported serving_default signature on the test images, sent as a client sends them."""
    from sklearn import metrics as skm

    images, labels, origin = test_images_as_sent(data_uri)
    signature = tf.saved_model.load(saved_model_dir).signatures[contract.SIGNATURE_BYTES]
    probabilities = []
    for start in range(0, len(images), batch_size):
        outputs = signature(**{contract.INPUT_BYTES: tf.constant(images[start:start + batch_size])})
        probabilities.append(outputs[contract.OUTPUT_PROBABILITY].numpy().reshape(-1))
    probabilities = np.concatenate(probabilities)
    return {"roc_auc": float(skm.roc_auc_score(labels, probabilities)), "num_examples": len(labels), "images": origin}


# ----------------------------------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    workdir: str
    model_base: str
    model_name: str = contract.MODEL_NAME
    version: int | None = None
    data_uri: str | None = None  # default: the data the run trained on
    force: bool = False
    tolerance: float = DEFAULT_TOLERANCE


def export(request: ExportRequest, log=print) -> dict:
    """Evaluates, gates and writes one version; returns its model card (with ``version`` and ``path``)."""
    paths = Workdir(request.workdir)
    summary = read_summary(request.workdir)
    if summary is None or not tf.io.gfile.exists(paths.best_weights):
        raise ExportError(f"{request.workdir} has no finished training run (training.json and best.weights.h5); "
                          f"train into {request.workdir} first (xray train)")
    data_uri = request.data_uri or summary["data"]
    versions = list_versions(request.model_base)
    taken = {v["version"] for v in versions}
    version = request.version if request.version is not None else max(taken, default=0) + 1
    if version < 1:
        raise SettingError("version", version, " must be a positive integer")
    if version in taken:
        raise ExportError(f"version {version} already exists under {request.model_base}; leave the version unset to use {max(taken) + 1}")

    log(f"evaluating the candidate on the held-out test split of {data_uri} ...")
    metrics = evaluate.run(data_uri, request.workdir)
    training_auc = metrics["test"]["metrics"]["roc_auc"]
    config = Config.load(paths.config)
    threshold = float(metrics["test"]["threshold"])
    model = load_trained(config.model, paths.best_weights)
    module = XrayServingModule(model, config.model.image_size, threshold)

    base = request.model_base.rstrip("/")
    tf.io.gfile.makedirs(base)
    tmp = f"{base}/.tmp-{version}-{uuid.uuid4().hex[:8]}"
    final = f"{base}/{version}"
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        # The gate judges what the server will compute: the exported signature on the images as clients send them.
        log("evaluating the exported signature on the test images as a client sends them ...")
        serving = serving_path_metrics(tmp, data_uri)
        serving_auc = serving["roc_auc"]
        log(f"test AUC {training_auc:.4f} on the training path, {serving_auc:.4f} through serving_default "
            f"({serving['images']})")
        skew = skew_refusal(training_auc, metrics["test"]["ci95"].get("roc_auc"), serving_auc)
        if skew and not request.force:
            raise GateRefused(f"refusing to push: {skew}.")
        ok, explanation = check_gate(serving_auc, versions, request.tolerance)
        if not ok and not request.force:
            raise GateRefused(f"refusing to push: {explanation}.")
        log(("gate passed: " if ok else "gate overridden (forced): ") + explanation)
        tf.io.gfile.makedirs(f"{tmp}/assets.extra")
        with tf.io.TFRecordWriter(f"{tmp}/{contract.WARMUP_FILE}") as writer:
            for record in warmup_records(config.model.image_size, request.model_name):
                writer.write(record)
        card = {
            "model_name": request.model_name,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": _code_version(),
            "threshold": threshold,
            "threshold_method": metrics["threshold_method"],
            "metrics": metrics["test"]["metrics"],
            "ci95": metrics["test"]["ci95"],
            "serving_path": serving,
            "test_examples": metrics["test"]["num_examples"],
            "image_size": config.model.image_size,
            "config": config.to_dict(),
            "data": data_uri,
            "data_manifest_sha256": _sha256(f"{data_uri.rstrip('/')}/manifest.json"),
            # What the model was trained on (kinds of source file, the pixel rule, the size bound), so that a
            # user can tell whether their inputs are like those.
            "inputs": _trained_inputs(data_uri),
            "training": summary,
            "gate": {"passed": ok, "forced": request.force and not ok, "explanation": explanation,
                     "judged_on": "serving_path.roc_auc"},
        }
        with tf.io.gfile.GFile(f"{tmp}/{contract.MODEL_CARD}", "w") as f:
            json.dump(card, f, indent=2)
        # TF Serving only looks at integer directory names: the version appears complete or not at all.
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    ensure_models_config(request.model_base, request.model_name)
    log(f"exported version {version} to {final} (test AUC {serving_auc:.4f} through serving_default, threshold "
        f"{threshold:.3f})")
    return {**card, "path": final}


def ensure_models_config(model_base: str, model_name: str = contract.MODEL_NAME, base_path: str | None = None) -> str:
    """``<model_base>/models.config``, written when missing: the model at ``base_path`` (default: the model base itself
    when it is a bucket URI, which TF Serving reads directly; else /models/<name>, where the Deployment and make serve
    mount the model base), newest version served, no label. TF Serving reads it at
    start (--model_config_file) and xray promote keeps it in step with the running servers; an existing file is
    left alone (it holds the labels)."""
    from xray.serving import config as serving_config

    path = serving_config.config_path(model_base)
    if not tf.io.gfile.exists(path):
        if base_path is None:  # a bucket is read by the server where it is; a folder is mounted at /models/<name>
            base_path = model_base.rstrip("/") if "://" in model_base else f"/models/{model_name}"
        config = serving_config.models_config(base_path, name=model_name)
        serving_config.write_text_proto(config, path)
    return path
