"""Held-out evaluation: threshold chosen on val, metrics on test with bootstrap CIs, plots.

    xray evaluate --data build/shards --workdir build/run

Writes ``<workdir>/eval/``: metrics.json, predictions.csv, roc.png, pr.png, confusion.png.
All metric arithmetic is scikit-learn's.
"""

from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
from sklearn import metrics as skm

from xray.data.atomic import write_atomic
from xray.trainer.config import Config, EvalConfig

METRIC_NAMES = ("loss", "accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1", "brier")


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, config: EvalConfig) -> float:
    """Youden's J (max TPR - FPR) on the validation split, or the highest threshold reaching the target sensitivity."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("the validation split needs both classes to choose a threshold")
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if config.threshold_method == "youden":
        index = int(np.argmax(tpr - fpr))
    else:
        index = int(np.flatnonzero(tpr >= config.target_sensitivity)[0])
    return float(thresholds[index])


def point_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    return {
        "loss": float(skm.log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(labels, probabilities)) if both else float("nan"),
        "sensitivity": float(skm.recall_score(labels, predicted, pos_label=1, zero_division=0)),
        "specificity": float(skm.recall_score(labels, predicted, pos_label=0, zero_division=0)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        # Mean squared error of the probabilities: 0 is perfect, 0.25 is a constant 0.5 (calibration.png).
        "brier": float(skm.brier_score_loss(labels, probabilities, pos_label=1)),
    }


def bootstrap_intervals(labels, probabilities, threshold: float, samples: int, seed: int) -> dict:
    """95% percentile intervals over resamples of the test set (resamples with one class are skipped for AUCs)."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities)
    rng = np.random.default_rng(seed)
    values = {name: [] for name in METRIC_NAMES}
    for _ in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        result = point_metrics(labels[index], probabilities[index], threshold)
        for name, value in result.items():
            if not np.isnan(value):
                values[name].append(value)
    return {
        name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
        for name, v in values.items()
    }


def summarize(labels, probabilities, threshold: float, config: EvalConfig) -> dict:
    labels = np.asarray(labels).astype(int)
    result = point_metrics(labels, probabilities, threshold)
    matrix = skm.confusion_matrix(labels, (np.asarray(probabilities) >= threshold).astype(int), labels=[0, 1])
    return {
        "threshold": threshold,
        "metrics": result,
        "ci95": bootstrap_intervals(labels, probabilities, threshold, config.bootstrap_samples, config.seed),
        "confusion_matrix": {"labels": ["NORMAL", "PNEUMONIA"], "rows_true_cols_predicted": matrix.tolist()},
        "num_examples": int(len(labels)),
        "num_positive": int(labels.sum()),
    }


def predict_split(model, data_uri: str, split: str, image_size: int, batch_size: int = 64):
    """(labels, probabilities, paths) for one split, in a fixed order."""
    from xray.data import manifest as manifests
    from xray.data import reader

    dataset = reader.dataset(manifests.read(data_uri), split, batch_size, training=False, image_size=image_size,
                             with_paths=True)
    labels, probabilities, paths = [], [], []
    for images, batch_labels, batch_paths in dataset:
        probabilities.append(model(images, training=False).numpy().reshape(-1))
        labels.append(batch_labels.numpy().reshape(-1))
        paths.extend(p.decode() for p in batch_paths.numpy())
    return np.concatenate(labels).astype(int), np.concatenate(probabilities), paths


def _operating_point(ax, metrics: dict, ci95: dict | None, threshold: float) -> None:
    """The chosen threshold on the ROC curve, with the 95% intervals of sensitivity and specificity."""
    x, y = 1 - metrics["specificity"], metrics["sensitivity"]
    xerr = yerr = None
    if ci95 and ci95.get("specificity") and ci95.get("sensitivity"):
        low_spec, high_spec = ci95["specificity"]
        low_sens, high_sens = ci95["sensitivity"]
        # False-positive rate = 1 - specificity: its interval is the specificity's, mirrored.
        xerr = [[max(0.0, x - (1 - high_spec))], [max(0.0, (1 - low_spec) - x)]]
        yerr = [[max(0.0, y - low_sens)], [max(0.0, high_sens - y)]]
    ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", color="crimson", capsize=4,
                label=f"threshold {threshold:.3f}: sens {y:.2f}, spec {1 - x:.2f} (95% CI)")
    ax.legend(loc="lower right", fontsize=8)


def _learning_curve(figure, history: list[dict]) -> None:
    """Loss and AUC per epoch, training vs validation, with the best epoch (lowest val_loss) marked."""
    epochs = [row["epoch"] for row in history]
    best = min(history, key=lambda row: row.get("val_loss", float("inf")))["epoch"]
    for ax, (train_key, val_key, title) in zip(figure.subplots(1, 2), (("loss", "val_loss", "loss"),
                                                                       ("auc", "val_auc", "AUC"))):
        for key, style in ((train_key, "-"), (val_key, "--")):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker=".", label=key)
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=8)


def save_plots(labels, probabilities, threshold: float, out_dir: str, test: dict | None = None,
               history: list[dict] | None = None) -> list[str]:
    """roc.png (operating point with CIs), pr.png, confusion.png, calibration.png (Brier score) and, given the
    run's history, learning_curve.png; returns the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    metrics = test["metrics"] if test else point_metrics(labels, probabilities, threshold)
    ci95 = test["ci95"] if test else None

    def roc(ax):
        skm.RocCurveDisplay.from_predictions(labels, probabilities, ax=ax, name="test")
        _operating_point(ax, metrics, ci95, threshold)

    def calibration(ax):
        from sklearn.calibration import CalibrationDisplay

        CalibrationDisplay.from_predictions(labels, probabilities, n_bins=10, strategy="quantile", ax=ax,
                                                name="test")
        ax.set_title(f"calibration (Brier score {metrics['brier']:.3f})")

    plots = {
        "roc.png": roc,
        "pr.png": lambda ax: skm.PrecisionRecallDisplay.from_predictions(labels, probabilities, ax=ax, name="test"),
        "confusion.png": lambda ax: skm.ConfusionMatrixDisplay.from_predictions(
            labels, predicted, display_labels=["NORMAL", "PNEUMONIA"], ax=ax, colorbar=False),
        "calibration.png": calibration,
    }
    titles = {"roc.png": "ROC", "pr.png": "PR", "confusion.png": f"confusion (threshold {threshold:.3f})"}
    for name, draw in plots.items():
        figure, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
        draw(ax)
        if name in titles:
            ax.set_title(titles[name])
        written.append(_save(figure, out_dir, name))
    if history:
        figure = plt.figure(figsize=(9, 3.8), dpi=100)
        _learning_curve(figure, history)
        written.append(_save(figure, out_dir, "learning_curve.png"))
    return written


def _save(figure, out_dir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(f"{out_dir}/{name}", buffer.getvalue())
    return name


def run(data_uri: str, workdir: str, overrides: list[str] | None = None) -> dict:
    """Evaluates the run's best weights; returns and writes metrics.json."""
    import tensorflow as tf

    from xray.trainer.model import load_trained
    from xray.trainer.workdir import Workdir

    paths = Workdir(workdir)
    if not tf.io.gfile.exists(paths.best_weights):
        raise FileNotFoundError(f"no trained model at {paths.best_weights}; train into {workdir} first (xray train)")
    config = Config.load(paths.config).override(overrides or [])
    model = load_trained(config.model, paths.best_weights)
    size = config.model.image_size
    val_labels, val_probabilities, _ = predict_split(model, data_uri, "val", size)
    threshold = choose_threshold(val_labels, val_probabilities, config.eval)
    test_labels, test_probabilities, test_paths = predict_split(model, data_uri, "test", size)

    out_dir = paths.path("eval")
    tf.io.gfile.makedirs(out_dir)
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": paths.best_weights,
        "data": data_uri,
        "threshold_method": config.eval.threshold_method,
        "target_sensitivity": config.eval.target_sensitivity if config.eval.threshold_method == "sensitivity" else None,
        "val": {"num_examples": len(val_labels), "roc_auc": float(skm.roc_auc_score(val_labels, val_probabilities))},
        "test": summarize(test_labels, test_probabilities, threshold, config.eval),
    }
    from xray.trainer.callbacks import read_history

    history = read_history(paths.history_jsonl) if tf.io.gfile.exists(paths.history_jsonl) else []
    result["plots"] = save_plots(test_labels, test_probabilities, threshold, out_dir, result["test"], history)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "probability", "predicted"])
    for path, label, probability in zip(test_paths, test_labels, test_probabilities):
        writer.writerow([path, int(label), f"{probability:.6f}", int(probability >= threshold)])
    write_atomic(f"{out_dir}/predictions.csv", buffer.getvalue())
    write_atomic(f"{out_dir}/metrics.json", json.dumps(result, indent=2))
    result["out_dir"] = out_dir
    return result


def format_summary(result: dict) -> str:
    test = result["test"]
    m, ci = test["metrics"], test["ci95"]

    def line(name):
        interval = ci.get(name)
        bounds = f"  [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        return f"  {name:12s} {m[name]:.3f}{bounds}"

    lines = [f"test split: {test['num_examples']} images ({test['num_positive']} pneumonia); threshold "
             f"{test['threshold']:.3f} ({result['threshold_method']}, chosen on {result['val']['num_examples']} val images)",
             "  metric       value  [95% bootstrap CI]"]
    lines += [line(name) for name in METRIC_NAMES]
    (tn, fp), (fn, tp) = test["confusion_matrix"]["rows_true_cols_predicted"]
    lines.append(f"  confusion    TN {tn}  FP {fp}  FN {fn}  TP {tp}")
    lines.append(f"written to {result['out_dir']}/ (metrics.json, predictions.csv, {', '.join(result['plots'])})")
    return "\n".join(lines)
