"""`xray train`, `xray evaluate`, `xray tune`."""

from __future__ import annotations

import dataclasses
import json
import sys

from xray.commands import UserError, user_error, config_from_args


def _add_train(sub):
    from xray.trainer.config import EARLIER_NAMES, PRESETS

    p = sub.add_parser("train", help="train (or resume) the classifier; --workers N runs N local processes",
                       description="Trains the ResNet50V2 classifier with MultiWorkerMirroredStrategy. Without "
                       "--workers this process is one worker (its identity comes from TF_CONFIG, an Indexed Job's "
                       "JOB_COMPLETION_INDEX, or it is alone). Re-running on the same workdir resumes from the "
                       "backup; a finished run is not retrained.",
                       epilog="overrides: key=value, e.g. train.epochs=5 model.dropout1=0.4 learning_rate=3e-4")
    p.add_argument("--data", required=True, help="shards directory/URI written by xray shards")
    p.add_argument("--workdir", required=True, help="run directory/URI (shared by all workers)")
    p.add_argument("--preset", default="team", choices=sorted([*PRESETS, *EARLIER_NAMES]),
                   help="named config (default: team, the design document's settings; seed is its earlier name)")
    p.add_argument("--config", help="a config.json to start from instead of a preset (e.g. the tuner's best_config.json)")
    p.add_argument("--workers", type=int, help="start N local worker processes on 127.0.0.1 (the pod entry point without it)")
    p.add_argument("--verify-shards", action="store_true",
                   help="check every shard's sha256 against the manifest before training (sizes are always checked)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value")
    p.set_defaults(run=_run_train)


def _run_train(args):
    from xray.trainer import worker
    from xray.trainer.config import ConfigError

    job = worker.TrainJob(args.data, args.workdir, config_from_args(args).to_dict(), args.verify_shards)
    if args.workers is not None:
        from xray.trainer import launch

        if args.workers < 1:
            raise UserError(f"--workers {args.workers} must be at least 1")
        code = launch.launch(args.workers, job)
        if code:
            print(f"training failed (status {code}); re-run the same command to resume from the backup", file=sys.stderr)
        return code
    try:
        summary = worker.run(job)
    except (ConfigError, FileNotFoundError) as error:
        raise user_error(error) from None
    print(json.dumps(summary))
    return 0


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test-split metrics, threshold from val, ROC/PR/confusion plots",
                       description="Rebuilds the model from WORKDIR/config.json and best.weights.h5, picks the decision threshold on the validation "
                       "split, and writes WORKDIR/eval/metrics.json with bootstrap 95%% CIs plus roc.png, pr.png, "
                       "confusion.png and predictions.csv.")
    p.add_argument("--data", required=True, help="shards directory/URI")
    p.add_argument("--workdir", required=True, help="run directory holding best.weights.h5 and config.json")
    p.add_argument("--threshold-method", choices=("youden", "sensitivity"), help="override eval.threshold_method")
    p.add_argument("--target-sensitivity", type=float, help="override eval.target_sensitivity (with --threshold-method sensitivity)")
    p.add_argument("--json", action="store_true", help="print metrics.json on stdout")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args):
    from xray.trainer import evaluate
    from xray.trainer.config import ConfigError

    overrides = []
    if args.threshold_method:
        overrides.append(f"eval.threshold_method={args.threshold_method}")
    if args.target_sensitivity is not None:
        overrides.append(f"eval.target_sensitivity={args.target_sensitivity}")
    try:
        metrics = evaluate.run(args.data, args.workdir, overrides)
    except (ConfigError, FileNotFoundError) as error:
        raise user_error(error) from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(evaluate.format_summary(metrics))


def _add_tune(sub):
    from xray import tuner
    from xray.trainer.config import PRESETS

    p = sub.add_parser("tune", help="KerasTuner search of dropout, L2 and learning rate around the defaults",
                       description="Searches dropout1, dropout2, l2 and learning_rate around the preset's values (the "
                       "first trial is the preset itself). Writes WORKDIR/trials.csv, trials.json and best_config.json "
                       "(a trainer config: xray train --config WORKDIR/best_config.json). Re-running on the same "
                       "workdir continues the search. --parallel N runs a chief (oracle) and N worker processes, the "
                       "same roles the Kubernetes tuner manifests run (KERASTUNER_TUNER_ID/ORACLE_IP/ORACLE_PORT).")
    p.add_argument("--data", required=True, help="shards directory/URI")
    p.add_argument("--workdir", required=True, help="search directory (shared by chief and workers)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="base config (default: demo)")
    p.add_argument("--config", help="a config.json to search around instead of a preset")
    p.add_argument("--algorithm", default="bayesian", choices=(*tuner.ALGORITHMS, *tuner.REFUSED_ALGORITHMS),
                   help="bayesian (default) or random; hyperband is refused until its rounds carry their weights")
    p.add_argument("--objective", default="val_loss", choices=("val_loss", "val_auc"))
    p.add_argument("--max-trials", type=int, default=8, help="trials in total, counting earlier runs on this workdir")
    p.add_argument("--epochs-per-trial", type=int, default=0, help="default: the preset's train.epochs")
    p.add_argument("--patience", type=int, default=3, help="early stopping inside a trial")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="override a search range, e.g. --range dropout1=0.1:0.5 --range learning_rate=1e-5:1e-2")
    p.add_argument("--parallel", type=int, help="run a chief and N worker processes on this machine")
    p.add_argument("--retrain", action="store_true", help="then train the best config (WORKDIR/best) and evaluate it")
    p.add_argument("--workers", type=int, default=1, help="with --retrain: local training workers")
    p.add_argument("overrides", nargs="*", help="config overrides for the base config, key=value")
    p.set_defaults(run=_run_tune)


def _run_tune(args):
    from xray import tuner

    try:
        tuner.check_algorithm(args.algorithm)  # before --parallel starts any process
    except ValueError as error:
        raise user_error(error) from None
    if args.parallel is not None and args.parallel < 1:
        raise UserError(f"--parallel {args.parallel} must be at least 1")
    base = config_from_args(args)
    from xray.tuner import session, space

    try:
        options = space.SearchOptions(args.algorithm, args.objective, args.max_trials, args.epochs_per_trial,
                                      args.patience)
        job = session.TuneJob(args.data, args.workdir, base.to_dict(), dataclasses.asdict(options),
                              dataclasses.asdict(space.SearchSpace.parse(args.range)), args.workers if args.retrain else 0)
        if args.parallel is not None:
            return session.run_parallel(job, args.parallel)
        return session.run(job)
    except (ValueError, TimeoutError, FileNotFoundError) as error:
        raise user_error(error) from None


def register(sub) -> None:
    for add in (_add_train, _add_evaluate, _add_tune,):
        add(sub)
