import numpy as np
import pytest
from sklearn import metrics as skm

from xray.trainer.config import EvalConfig
from xray.trainer import evaluate
from xray.trainer.evaluate import bootstrap_intervals, choose_threshold, point_metrics, summarize

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROBS = np.array([0.1, 0.3, 0.35, 0.8, 0.4, 0.55, 0.6, 0.7, 0.9, 0.95])


def test_point_metrics_match_scikit_learn_and_hand_counts():
    m = point_metrics(LABELS, PROBS, threshold=0.5)
    # At 0.5: TN 3 (0.1, 0.3, 0.35), FP 1 (0.8), FN 1 (0.4), TP 5.
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["f1"] == pytest.approx(5 / 6)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, PROBS))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(LABELS, PROBS))
    assert m["loss"] == pytest.approx(skm.log_loss(LABELS, PROBS))


def test_youden_threshold_maximises_tpr_minus_fpr():
    threshold = choose_threshold(LABELS, PROBS, EvalConfig(threshold_method="youden"))
    predicted = PROBS >= threshold
    j = predicted[LABELS == 1].mean() - predicted[LABELS == 0].mean()
    for candidate in np.unique(PROBS):
        p = PROBS >= candidate
        assert j >= p[LABELS == 1].mean() - p[LABELS == 0].mean() - 1e-12


def test_target_sensitivity_threshold_is_the_highest_that_reaches_it():
    threshold = choose_threshold(LABELS, PROBS, EvalConfig(threshold_method="sensitivity", target_sensitivity=1.0))
    assert threshold == pytest.approx(0.4)  # the lowest positive score: all 6 positives caught
    threshold = choose_threshold(LABELS, PROBS, EvalConfig(threshold_method="sensitivity", target_sensitivity=0.5))
    assert threshold == pytest.approx(0.7)  # 0.7, 0.9, 0.95 = 3 of 6


def test_single_class_validation_is_a_clear_error():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(4), np.full(4, 0.5), EvalConfig())


def test_bootstrap_interval_brackets_the_point_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 400), 0, 1)
    small = bootstrap_intervals(labels[:40], probs[:40], 0.5, 300, seed=1)
    large = bootstrap_intervals(labels, probs, 0.5, 300, seed=1)
    auc = skm.roc_auc_score(labels, probs)
    assert large["roc_auc"][0] < auc < large["roc_auc"][1]
    assert large["roc_auc"][1] - large["roc_auc"][0] < small["roc_auc"][1] - small["roc_auc"][0]


def test_summary_confusion_matrix_rows_are_truth():
    result = summarize(LABELS, PROBS, 0.5, EvalConfig(bootstrap_samples=20))
    assert result["confusion_matrix"]["rows_true_cols_predicted"] == [[3, 1], [1, 5]]
    assert result["num_examples"] == 10 and result["num_positive"] == 6


def test_plots_mark_the_operating_point_calibration_and_the_learning_curve(tmp_path):
    from xray.trainer.config import EvalConfig

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probabilities = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 200), 0, 1)
    test = evaluate.summarize(labels, probabilities, 0.5, EvalConfig(bootstrap_samples=50))
    history = [{"epoch": e, "loss": 1 / e, "val_loss": 1 / e + (0.1 if e == 3 else 0.2), "auc": 0.5 + e / 10,
                "val_auc": 0.5 + e / 12} for e in range(1, 5)]
    written = evaluate.save_plots(labels, probabilities, 0.5, str(tmp_path), test, history)
    assert written == ["roc.png", "pr.png", "confusion.png", "calibration.png", "learning_curve.png"]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert test["metrics"]["brier"] == pytest.approx(float(np.mean((probabilities - labels) ** 2)))


def test_xray_evaluate_threshold_flags_and_json(trained_workdir, shards_dir, tmp_path):
    """Through the command: --threshold-method sensitivity --target-sensitivity T chooses, on the val split, the
    highest threshold at which val sensitivity reaches T (checked on the model's own val scores); --json prints
    the metrics.json it wrote; a target outside (0, 1] is one line naming the key."""
    import json
    import shutil

    from conftest import run_xray
    from xray.trainer.model import load_trained
    from xray.trainer.config import Config

    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    result = run_xray("evaluate", "--data", shards_dir, "--workdir", workdir, "--threshold-method", "sensitivity",
                      "--target-sensitivity", 0.8, "--json")
    printed = json.loads(result.stdout)
    assert printed.pop("out_dir") == str(workdir / "eval")
    assert printed == json.loads((workdir / "eval" / "metrics.json").read_text())
    assert printed["threshold_method"] == "sensitivity" and printed["target_sensitivity"] == 0.8
    threshold = printed["test"]["threshold"]

    config = Config.load(str(workdir / "config.json"))
    labels, scores, _ = evaluate.predict_split(load_trained(config.model, str(workdir / "best.weights.h5")),
                                               str(shards_dir), "val", config.model.image_size)
    positives = np.sort(scores[labels == 1])
    assert np.mean(positives >= threshold) >= 0.8  # the target is reached at the chosen threshold
    higher = positives[positives > threshold]
    assert higher.size == 0 or np.mean(positives >= higher.min()) < 0.8  # and not at the next higher score

    text = run_xray("evaluate", "--data", shards_dir, "--workdir", workdir)  # the default: Youden, as a summary
    assert "(youden, chosen on" in text.stdout
    refused = run_xray("evaluate", "--data", shards_dir, "--workdir", workdir, "--threshold-method", "sensitivity",
                       "--target-sensitivity", 1.5, check=False)
    assert refused.returncode == 2 and "eval.target_sensitivity" in refused.stderr and "Traceback" not in refused.stderr
