"""What a search leaves: trials.json and trials.csv (a row per trial), best_config.json (a trainer config), a
progress line per finished trial, and the ranked table `xray tune` prints."""

from __future__ import annotations

import csv
import io
import json
import math

from xray.trainer.config import Config
from xray.tuner.restart import rss_mb
from xray.tuner.space import OBJECTIVES, SearchOptions, config_for

TRIAL_FIELDS = ("dropout1", "dropout2", "l2", "learning_rate")


def trial_rows(oracle, objective: str) -> list[dict]:
    rows = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: _trial_order(item[0])):
        metrics = {name: trial.metrics.get_best_value(name) for name in trial.metrics.metrics}
        row = {"trial": trial_id, "status": trial.status, "worker": getattr(oracle, "trial_workers", {}).get(trial_id),
               "objective": trial.score,
               **{name: trial.hyperparameters.values.get(name) for name in TRIAL_FIELDS},
               "val_auc": metrics.get("val_auc"), "val_loss": metrics.get("val_loss"),
               "epochs": int(metrics["epochs"]) if metrics.get("epochs") is not None else None,
               "seconds": metrics.get("seconds")}
        rows.append(row)
    reverse = OBJECTIVES[objective] == "max"
    finished = [r for r in rows if r["objective"] is not None and not math.isnan(r["objective"])]
    for rank, row in enumerate(sorted(finished, key=lambda r: r["objective"], reverse=reverse), 1):
        row["rank"] = rank
    return rows


def _trial_order(trial_id: str):
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def write_reports(oracle, base: Config, options: SearchOptions, workdir: str, announce: bool = True) -> list[dict]:
    """trials.json, trials.csv and best_config.json (``base`` with the best trial's values) in ``workdir``; with
    ``announce``, a progress line for the trial that just ended. Returns the rows."""
    import tensorflow as tf

    from xray.data.atomic import write_atomic

    rows = trial_rows(oracle, options.objective)
    tf.io.gfile.makedirs(workdir)
    write_atomic(f"{workdir}/trials.json", json.dumps(rows, indent=2))
    buffer = io.StringIO()
    columns = ["trial", "status", "worker", "rank", "objective", *TRIAL_FIELDS, "val_auc", "val_loss", "epochs", "seconds"]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(f"{workdir}/trials.csv", buffer.getvalue())
    ranked = sorted((r for r in rows if "rank" in r), key=lambda r: r["rank"])
    if ranked:
        best = ranked[0]
        config = config_for(base, best)
        write_atomic(f"{workdir}/best_config.json", json.dumps(config.to_dict(), indent=2))
    done = [r for r in rows if r["status"] in ("COMPLETED", "FAILED", "INVALID")]
    last = max(done, key=lambda r: _trial_order(r["trial"])) if done else None
    if last and announce:
        score = f"{options.objective} {last['objective']:.4f}" if last["objective"] is not None else "FAILED"
        best_text = f"; best {ranked[0]['objective']:.4f} (trial {ranked[0]['trial']})" if ranked else ""
        print(f"[tune] trial {last['trial']} {last['status'].lower()}: {score}{best_text} "
              f"({len(done)} of {options.max_trials} done; rss {rss_mb()} MB)", flush=True)
    return rows


def format_table(rows: list[dict], objective: str) -> str:
    ranked = sorted(rows, key=lambda r: (r.get("rank") is None, r.get("rank") or 0, _trial_order(r["trial"])))
    lines = [f"{'rank':>4s}  {'trial':>5s}  {'status':9s}  {objective:>9s}  {'val_auc':>7s}  {'dropout1':>8s}  "
             f"{'dropout2':>8s}  {'l2':>9s}  {'lr':>9s}  {'epochs':>6s}"]
    for r in ranked:
        number = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        lines.append(f"{r.get('rank', '-')!s:>4s}  {r['trial']:>5s}  {r['status']:9s}  {number(r['objective'], '9.4f')}  "
                     f"{number(r['val_auc'], '7.4f')}  {number(r['dropout1'], '8.3f')}  {number(r['dropout2'], '8.3f')}  "
                     f"{number(r['l2'], '9.2e')}  {number(r['learning_rate'], '9.2e')}  {number(r['epochs'], '6d')}")
    return "\n".join(lines)
