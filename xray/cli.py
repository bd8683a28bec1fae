"""The `xray` command line: one subcommand per pipeline stage.

Each stage's module is imported only when its subcommand runs, so `xray --help` is instant and the
REST client never imports TensorFlow. Errors the user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  xray synth --out build/synth --num-patients 300 --seed 1
  xray shards --src build/synth --out build/shards --num-shards 8 --image-size 64
  xray train --data build/shards --workdir build/run --preset demo --workers 2
  xray evaluate --data build/shards --workdir build/run
  xray export --workdir build/run --model-base build/models
  xray predict build/synth/test --model build/models
  xray predict chest.jpeg --grpc localhost:8500      (or --rest http://localhost:8501)
"""


class UserError(Exception):
    """Something the user can fix; printed as one line, exit status 2."""


# Storage the commands can read and write, checked once here for every path argument. TensorFlow 2.21 reads
# local paths and gs:// itself; its S3 filesystem moved to tensorflow-io, which no longer loads with current
# TensorFlow (tf.io.gfile.exists("s3://b/x") raises UnimplementedError), so s3:// is refused, not half-supported.
PATH_ARGUMENTS = ("data", "workdir", "out", "model_base", "src", "model", "dest", "config")
SUPPORTED_SCHEMES = ("gs://", "file://")


def check_storage_uri(value: str, flag: str) -> None:
    if "://" not in value or value.startswith(SUPPORTED_SCHEMES):
        return
    scheme = value.split("://", 1)[0]
    if scheme == "s3":
        raise UserError(f"--{flag} {value}: s3:// is not supported (TensorFlow 2.21 has no S3 filesystem; "
                        "tensorflow-io, which had one, does not load with it). Use gs://, a path on a "
                        "PersistentVolume, or the bucket mounted as a local path by a CSI driver (e.g. Mountpoint "
                        "for Amazon S3)")
    raise UserError(f"--{flag} {value}: {scheme}:// is not supported; use a local path or gs://")


def _add_synth(sub):
    p = sub.add_parser("synth", help="write a synthetic chest X-ray-like data set (Kaggle layout)",
                       description="Writes OUT/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg: drawn chest films "
                       "where pneumonia adds opacities. Not medical data; deterministic for a seed.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-patients", type=int, default=300, help="patients (1-3 images each, ~3:1 pneumonia:normal)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--image-size", type=int, default=256, help="image width in pixels (height varies +-15%%)")
    p.add_argument("--difficulty", type=float, default=None,
                   help="0 (easy caricature) to 1 (default 0.5: calibrated for a demo test AUC in 0.85-0.97): "
                        "0.3 x difficulty of the pneumonia films show nothing (occult); above 0.5 also fainter and "
                        "fewer opacities, benign densities, exposure, noise, positioning, side markers and text")
    p.set_defaults(run=_run_synth)


def _run_synth(args):
    from tqdm import tqdm

    from trainer import synth

    started = time.monotonic()
    with tqdm(desc="synth", unit="img", dynamic_ncols=True) as bar:
        summary = synth.synthesize(args.out, args.num_patients, args.seed, args.image_size, progress=bar.update,
                                   difficulty=synth.DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty)
    for split, per_class in summary.counts.items():
        patients = summary.patients[split]
        print(f"{split:5s}: " + ", ".join(f"{n} {c} images ({patients[c]} patients)" for c, n in per_class.items()))
    print(f"wrote {summary.num_images} images to {args.out} in {time.monotonic() - started:.1f}s")


def _add_shards(sub):
    from data.split import DEFAULT_PATIENT_PATTERN

    p = sub.add_parser("shards", help="convert image folders to sharded TFRecords + manifest.json",
                       description="Reads SRC/{train,test[,val]}/{NORMAL,PNEUMONIA}/ (Kaggle chest_xray layout), "
                       "skips bad files (listed in the manifest), carves a patient-disjoint, class-stratified "
                       "validation split from train, and writes train/val/test shards atomically.")
    p.add_argument("--src", required=True, help="image folder in the Kaggle chest_xray layout")
    p.add_argument("--out", required=True, help="output directory or gs:// URI")
    p.add_argument("--num-shards", type=int, default=8, help="shards per split (>= the number of training workers)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of train images (by patient) for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and shard order")
    p.add_argument("--image-size", type=int, default=None,
                   help="re-encode each image as a PX x PX grayscale JPEG (default: keep the original bytes)")
    p.add_argument("--patient-pattern", default=DEFAULT_PATIENT_PATTERN,
                   help="regex whose first group is the patient id in a file name (default: Kaggle's names)")
    p.add_argument("--workers", type=int, default=0,
                   help="threads decoding, resizing and re-encoding images (default 0: one per CPU of this process's cgroup limit)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(run=_run_shards)


def _run_shards(args):
    from data import convert
    from data.lock import LockedError
    from data.schema import SPLITS

    try:
        options = convert.ShardOptions(args.num_shards, args.val_fraction, args.seed, args.image_size, args.patient_pattern,
                                       args.workers)
        manifest = convert.convert(args.src, args.out, options, show_progress=True)
    except (convert.SourceLayoutError, ValueError, LockedError) as error:
        raise UserError(str(error)) from None
    if args.json:
        print(manifest.to_json())
        return
    for split in SPLITS:
        counts = manifest.counts[split]
        print(f"{split:5s}: {sum(counts.values()):6d} images ({', '.join(f'{n} {c}' for c, n in counts.items())}), "
              f"{manifest.num_patients[split]} patients, {len(manifest.shards[split])} shard(s)")
    print("inputs: " + ", ".join(f"{n} {kind}" for kind, n in manifest.inputs.items()))
    if manifest.renamed:
        print(f"{len(manifest.renamed)} file name(s) were not valid UTF-8 and are recorded with \\xNN escapes "
              f"(e.g. {manifest.renamed[0]['path']}); see manifest.json")
    if manifest.skipped:
        print(f"skipped {manifest.num_skipped} file(s):")
        for item in manifest.skipped[:20]:
            print(f"  {item['path']}: {item['reason']}")
        if manifest.num_skipped > 20:
            print(f"  ... and {manifest.num_skipped - 20} more (see manifest.json)")
    if manifest.test_patients_also_in_train:
        print(f"warning: {len(manifest.test_patients_also_in_train)} patient id(s) of test/ also appear in train/ "
              "(from the source folders); see manifest.json")
    print(f"{manifest.num_images_found} files in {manifest.seconds:.1f}s "
          f"({manifest.images_per_second} images/s, {manifest.source_megabytes} MB read); "
          f"manifest: {args.out.rstrip('/')}/manifest.json")


def _config_from_args(args):
    """The preset (or --config file) with the key=value overrides; a bad one is a one-line UserError."""
    from trainer.config import Config, ConfigError, preset

    try:
        config = Config.load(args.config) if args.config else preset(args.preset)
        return config.override(args.overrides)
    except ConfigError as error:
        raise UserError(str(error)) from None


def _add_train(sub):
    from trainer.config import PRESETS

    p = sub.add_parser("train", help="train (or resume) the classifier; --workers N runs N local processes",
                       description="Trains the ResNet50V2 classifier with MultiWorkerMirroredStrategy. Without "
                       "--workers this process is one worker (its identity comes from TF_CONFIG, an Indexed Job's "
                       "JOB_COMPLETION_INDEX, or it is alone). Re-running on the same workdir resumes from the "
                       "backup; a finished run is not retrained.",
                       epilog="overrides: key=value, e.g. train.epochs=5 model.dropout1=0.4 learning_rate=3e-4")
    p.add_argument("--data", required=True, help="shards directory/URI written by xray shards")
    p.add_argument("--workdir", required=True, help="run directory/URI (shared by all workers)")
    p.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="named config (default: seed)")
    p.add_argument("--config", help="a config.json to start from instead of a preset (e.g. the tuner's best_config.json)")
    p.add_argument("--workers", type=int, help="start N local worker processes on 127.0.0.1 (the pod entry point without it)")
    p.add_argument("--verify-shards", action="store_true",
                   help="check every shard's sha256 against the manifest before training (sizes are always checked)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value")
    p.set_defaults(run=_run_train)


def _run_train(args):
    from trainer import worker
    from trainer.config import ConfigError

    job = worker.TrainJob(args.data, args.workdir, _config_from_args(args).to_dict(), args.verify_shards)
    if args.workers is not None:
        from trainer import launch

        if args.workers < 1:
            raise UserError(f"--workers {args.workers} must be at least 1")
        code = launch.launch(args.workers, job)
        if code:
            print(f"training failed (status {code}); re-run the same command to resume from the backup", file=sys.stderr)
        return code
    try:
        summary = worker.run(job)
    except (ConfigError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
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
    from trainer import evaluate
    from trainer.config import ConfigError

    overrides = []
    if args.threshold_method:
        overrides.append(f"eval.threshold_method={args.threshold_method}")
    if args.target_sensitivity is not None:
        overrides.append(f"eval.target_sensitivity={args.target_sensitivity}")
    try:
        metrics = evaluate.run(args.data, args.workdir, overrides)
    except (ConfigError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(evaluate.format_summary(metrics))


def _add_export(sub):
    p = sub.add_parser("export", help="export the best model as a versioned SavedModel for TF Serving (gated)",
                       description="Evaluates the run's best model on the held-out test split, refuses to push when its "
                       "AUC is lower than the current highest version's by more than --tolerance, then writes "
                       "MODEL_BASE/<version>/ atomically (SavedModel, warmup requests, model card). --list shows the "
                       "versions; --label points stable/canary at a version in MODEL_BASE/models.config.")
    p.add_argument("--model-base", required=True, help="directory/URI holding the integer version directories")
    p.add_argument("--workdir", help="training run to export (required unless --list or --label)")
    p.add_argument("--data", help="shards to evaluate on (default: the data the run trained on)")
    p.add_argument("--name", default=None, help="model name in TF Serving (default: xray)")
    p.add_argument("--version", type=int, help="version number (default: next free); with --label, the version to label")
    p.add_argument("--force", action="store_true", help="push even when the gate refuses")
    p.add_argument("--tolerance", type=float, default=None, help="allowed AUC drop vs the current version (default 0.01)")
    p.add_argument("--list", action="store_true", help="list versions with their metrics")
    p.add_argument("--label", choices=("stable", "canary"),
                   help="point this label at --version (default: newest) in models.config only, for a server that is "
                   "not running; a running one: xray promote")
    p.add_argument("--server", metavar="URL", help=argparse.SUPPRESS)  # refused with a pointer to xray promote
    p.add_argument("--serving-base-path", default=None,
                   help="the model base path as the server sees it, written into models.config (default: /models/<name>)")
    p.add_argument("--serving-config", metavar="OUTDIR",
                   help="write models.config (with MODEL_BASE's labels), batching.config and monitoring.config to OUTDIR")
    p.set_defaults(run=_run_export)


def _run_export(args):
    from serving import config as serving_config
    from serving import contract, export

    name = args.name or contract.MODEL_NAME
    base = args.model_base.rstrip("/")
    if args.list:
        versions = export.list_versions(base)
        labels = serving_config.read_labels(base)
        if not versions:
            print(f"no versions under {base}")
        for v in versions:
            card = v["card"] or {}
            m = {**card.get("metrics", {}), "roc_auc": export.recorded_auc(card) or float("nan")}
            tags = ",".join(label for label, version in labels.items() if version == v["version"])
            print(f"{v['version']:>4d}  {card.get('created', '?'):20s}  auc {m.get('roc_auc', float('nan')):.4f}  "
                  f"sens {m.get('sensitivity', float('nan')):.3f}  spec {m.get('specificity', float('nan')):.3f}  "
                  f"threshold {card.get('threshold', float('nan')):.3f}  {tags}")
        return 0
    if args.serving_config:
        labels = serving_config.read_labels(base)
        serving_base = args.serving_base_path or f"/models/{name}"
        names = serving_config.write_all(args.serving_config, serving_base, labels)
        models = export.ensure_models_config(base, name, serving_base)
        print(f"wrote {', '.join(names)} to {args.serving_config} (labels: {labels or 'none: serve the newest version'}); "
              f"the server reads {models}")
        return 0
    if args.label:
        return _move_label(args, base, name)
    if not args.workdir:
        raise UserError("--workdir is required to export (or use --list, --label or --serving-config)")
    request = export.ExportRequest(
        workdir=args.workdir, model_base=base, model_name=name, version=args.version, data_uri=args.data,
        force=args.force, tolerance=export.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
    try:
        card = export.export(request)
    except export.GateRefused as error:
        print(f"xray export: {error}", file=sys.stderr)
        return 3
    except (export.ExportError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    print(json.dumps({"version": card["version"], "path": card["path"], "roc_auc": card["metrics"]["roc_auc"],
                      "serving_roc_auc": card["serving_path"]["roc_auc"], "threshold": card["threshold"]}))
    return 0


def _move_label(args, base: str, name: str) -> int:
    if args.server:
        raise UserError("--server is gone: a running TF Serving takes label moves through its ReloadConfig RPC; use "
                        f"xray promote --model-base {base} --label {args.label} --version N --grpc HOST:8500")
    return _promote(base, name, args.label, args.version, [], args.serving_base_path, wait_s=0)


def _promote(base: str, name: str, label: str, version: int | None, replicas, serving_base_path: str | None,
             wait_s: float, from_label: str | None = None, rollback: bool = False) -> int:
    from serving import config as serving_config
    from serving import export, promote

    available = {v["version"] for v in export.list_versions(base)}
    labels = serving_config.read_labels(base)
    try:
        if rollback:
            version = promote.rollback_version(base, label)
        elif from_label:
            if from_label not in labels:
                raise promote.PromoteError(f"label {from_label} is not set in {base}/models.config (labels: "
                                           f"{labels or 'none'})")
            version = labels[from_label]
        elif version is None:
            version = max(available, default=0)
        move = promote.move_label(base, label, version, replicas, available=available, name=name,
                                  base_path=serving_base_path or f"/models/{name}", wait_s=wait_s,
                                  log=lambda line: print(line, flush=True))
    except promote.PromoteError as error:
        print(f"xray promote: {error}; {label} still points where it did", file=sys.stderr)
        return 1
    print(f"{label} -> version {move.version} in {promote.config_path(base)} (labels: {move.labels})")
    return 0


def _add_promote(sub):
    p = sub.add_parser(
        "promote", help="move a version label (stable/canary) on running TF Serving replicas, or roll it back",
        description="Points LABEL at a version on every replica and in MODEL_BASE/models.config, in the order TF "
        "Serving accepts: the version joins the version policy (labels unchanged), every replica reports it AVAILABLE, "
        "then the label moves. The file is written before each step's ReloadConfig RPC, so a server polling it and a "
        "restarted one agree. A replica that cannot load the version is named, the version leaves the policy again "
        "and the label stays (exit 1). Every move is logged in MODEL_BASE/label-history.json, which --rollback reads.",
        epilog="examples:\n"
        "  xray promote --model-base build/models --label canary --version 2 --grpc localhost:8500\n"
        "  xray promote --model-base build/models --label stable --from-label canary --grpc localhost:8500\n"
        "  xray promote --model-base build/models --label stable --rollback --grpc localhost:8500\n"
        "  make promote LABEL=stable VERSION=2      # on the cluster: a Job beside the replicas",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-base", required=True, help="the models folder the servers read (holds models.config)")
    p.add_argument("--label", required=True, choices=("stable", "canary"), help="the label to move")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="the version to point at (default: the newest)")
    which.add_argument("--from-label", choices=("stable", "canary"), help="the version another label points at "
                       "(promote canary to stable: --label stable --from-label canary)")
    which.add_argument("--rollback", action="store_true", help="back to where LABEL pointed before its last move")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--grpc", action="append", metavar="HOST:PORT", default=[],
                       help="a replica's gRPC address (repeat for each replica); none: only the file is written, "
                       "for a server that is not running")
    where.add_argument("--service", metavar="NAME", help="inside the cluster: every pod behind this headless Service, "
                       "from DNS (the Deployment's xray-serving-replicas lists every pod, ready or not); "
                       "XRAY_REPLICA_NAMES=IP=pod,... names them in messages")
    p.add_argument("--name", default=None, help="model name on the server (default: xray)")
    p.add_argument("--serving-base-path", default=None,
                   help="the model base path as the server sees it, when models.config does not exist yet "
                   "(default: /models/<name>)")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for every replica to load the version "
                   "(TF Serving retries a failed load 5 times, a minute apart; default 600)")
    p.set_defaults(run=_run_promote)


def _run_promote(args):
    from serving import contract, promote

    name = args.name or contract.MODEL_NAME
    if args.service:
        replicas = promote.dns_replicas(args.service, names=promote.parse_names(os.environ.get("XRAY_REPLICA_NAMES", "")))
    else:
        for target in args.grpc:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"--grpc {target!r} is not HOST:PORT (e.g. localhost:8500)")
        replicas = [promote.Replica(target, target) for target in args.grpc]
    return _promote(args.model_base.rstrip("/"), name, args.label, args.version, replicas, args.serving_base_path,
                    args.wait, from_label=args.from_label, rollback=args.rollback)


def _add_predict(sub):
    p = sub.add_parser("predict", help="probability and label for images, via TF Serving (gRPC/REST) or in-process",
                       description="Sends images in batches and prints one JSON line per file: "
                       '{"path", "probability", "label"} (or {"path", "error"} for a file that could not be scored). '
                       "JPEG, PNG, BMP and GIF are sent as they are; DICOM (.dcm) and TIFF are converted here to a 16-bit "
                       "or 8-bit PNG by the rule xray shards applies (docs/reference.md, 'The pixel rule').")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF, TIFF, DICOM), directories (searched "
                   "recursively) or glob patterns")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--rest", metavar="URL", help="TF Serving REST endpoint, e.g. http://localhost:8501")
    target.add_argument("--grpc", metavar="HOST:PORT", help="TF Serving gRPC endpoint, e.g. localhost:8500")
    target.add_argument("--model", metavar="DIR", help="a SavedModel (or model base: newest version) run in-process")
    p.add_argument("--name", default=None, help="model name on the server (default: xray)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a specific model version")
    which.add_argument("--label", help="a version label (stable, canary)")
    p.add_argument("--batch-size", type=int, default=16, help="images per request (1-64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--tls", action="store_true", help="TLS for either transport (REST: https); the server is verified "
                   "against the system's root certificates, or --ca-cert")
    p.add_argument("--ca-cert", metavar="PEM", help="CA bundle to verify the server with (implies --tls)")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS (with --client-key)")
    p.add_argument("--client-key", metavar="PEM", help="the client certificate's private key")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="sent with every request (gRPC: as call metadata), e.g. --header 'Authorization: Bearer ...'; "
                   "XRAY_SERVING_TOKEN=... sends 'Authorization: Bearer ...' without the token in your shell history")
    p.add_argument("--format", choices=("jsonl", "table"), default="jsonl", help="output format")
    p.add_argument("--explain", metavar="OUTDIR", help="also write a Grad-CAM overlay PNG per image (needs --model)")
    p.set_defaults(run=_run_predict)


def _run_predict(args):
    from clients import ServingError
    from clients import predict as predicting
    from serving import contract

    name = args.name or contract.MODEL_NAME
    if args.explain and not args.model:
        raise UserError("--explain runs the model in-process: use it with --model DIR")
    paths = predicting.collect_files(args.images)
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.images)}")
    try:
        if args.rest:
            from clients.rest import RestClient

            client = RestClient(args.rest, name, args.version, args.label, timeout=args.timeout, **_transport(args))
        elif args.grpc:
            from clients.grpc import GrpcClient

            client = GrpcClient(args.grpc, name, args.version, args.label, timeout=args.timeout, **_transport(args))
        else:
            client = predicting.LocalModel(args.model)
        rows = []
        for row in predicting.predict_files(client, paths, args.batch_size):
            rows.append(row)
            if args.format == "jsonl":
                print(predicting.format_jsonl(row), flush=True)
    except ServingError as error:
        raise UserError(f"{error.code}: {error.message}") from None
    except ValueError as error:  # a client option that cannot work (plain http with TLS, a key without its cert)
        raise UserError(str(error)) from None
    if args.format == "table":
        print(predicting.format_table(rows))
    if args.explain:
        os.makedirs(args.explain, exist_ok=True)
        for row in rows:
            if "error" not in row:
                data = predicting.read_image(row["path"])
                out = os.path.join(args.explain, Path(row["path"]).stem + "_gradcam.png")
                predicting.save_overlay(data, client.explain(data), out)
        print(f"Grad-CAM overlays written to {args.explain}/", file=sys.stderr)
    failed = sum(1 for row in rows if "error" in row)
    if failed:
        print(f"{failed} of {len(rows)} file(s) could not be scored", file=sys.stderr)
    return 1 if failed else 0


def _transport(args) -> dict:
    """TLS files and headers for either client, checked here so that a wrong one is one line."""
    for flag in ("ca_cert", "client_cert", "client_key"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise UserError(f"--{flag.replace('_', '-')} {path}: no such file")
    if bool(args.client_cert) != bool(args.client_key):
        raise UserError("--client-cert and --client-key go together")
    headers = {}
    token = os.environ.get("XRAY_SERVING_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UserError(f"--header {item!r} is not 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return {"tls": args.tls, "ca_cert": args.ca_cert, "client_cert": args.client_cert, "client_key": args.client_key,
            "headers": headers}


def _add_tune(sub):
    import tuner
    from trainer.config import PRESETS

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
    import tuner

    try:
        tuner.check_algorithm(args.algorithm)  # before --parallel starts any process
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.parallel is not None and args.parallel < 1:
        raise UserError(f"--parallel {args.parallel} must be at least 1")
    base = _config_from_args(args)
    from tuner import session, space

    try:
        options = space.SearchOptions(args.algorithm, args.objective, args.max_trials, args.epochs_per_trial,
                                      args.patience)
        job = session.TuneJob(args.data, args.workdir, base.to_dict(), dataclasses.asdict(options),
                              dataclasses.asdict(space.SearchSpace.parse(args.range)), args.workers if args.retrain else 0)
        if args.parallel is not None:
            return session.run_parallel(job, args.parallel)
        return session.run(job)
    except (ValueError, TimeoutError, FileNotFoundError) as error:
        raise UserError(str(error)) from None


def _add_preflight(sub):
    from xray.render import WORKLOADS

    p = sub.add_parser("preflight", help="check a cluster step before applying it, and render its kustomization",
                       description="Checks the kube context, the namespace and volume claim (made by the storage step, "
                       "make volume), the image, that there are at least as many train shards as workers (when DATA is "
                       "readable from here), the run config (train/tune: the overlay's preset, or --config, with the "
                       "overrides; the batch must split over the workers) and that no job of the same name is still "
                       "running; then writes OUT/kustomization.yaml on top of xray/k8s/overlays/OVERLAY/COMPONENT "
                       "(apply it with kubectl apply -k OUT).",
                       epilog="overrides (train/tune): key=value, e.g. train.epochs=20 model.weights=/mnt/xray/weights/w.h5")
    p.add_argument("--component", choices=sorted(WORKLOADS), default="train")
    p.add_argument("--overlay", default="local", help="xray/k8s/overlays/<overlay> (local, gpu)")
    p.add_argument("--image", default="", help="project image registry/name:tag (every component but serving and storage); serving: a "
                   "TF Serving image in place of the overlay's tensorflow/serving:2.21.0")
    p.add_argument("--workers", type=int, default=2, help="training workers / tuning trial workers")
    p.add_argument("--data", default="/mnt/xray/shards", help="shards URI as the pods see it")
    p.add_argument("--workdir", default="", help="run directory as the pods see it (default: the overlay's)")
    p.add_argument("--config", default="", help="train/tune: a config.json to start from: a local file (sent in a "
                   "ConfigMap) or a path on the volume as the pods see it (/mnt/xray/runs/tune/best_config.json)")
    p.add_argument("--storage-class", default="", help="storage: the claim's storage class (default: the cluster's)")
    p.add_argument("--src", default="", help="shards: the image folder on the volume (default: the overlay's)")
    p.add_argument("--deadline", type=int, default=0, help="train: activeDeadlineSeconds (default: the manifest's, 3 days)")
    p.add_argument("--max-trials", type=int, default=0, help="tune: the number of trials (default: the overlay's)")
    p.add_argument("--replicas", type=int, default=0, help="serving: the autoscaler's minimum (default: the overlay's)")
    p.add_argument("--label", default="", help="promote: the label to move (stable, canary)")
    p.add_argument("--version", default="", help="promote: the version to point it at")
    p.add_argument("--from-label", default="", help="promote: the version another label points at")
    p.add_argument("--rollback", action="store_true", help="promote: back to where the label pointed before")
    p.add_argument("--wait", type=int, default=0, help="promote: seconds for every replica to load the version")
    p.add_argument("--namespace", default="xray")
    p.add_argument("--out", required=True, help="directory for the rendered kustomization")
    p.add_argument("--offline", action="store_true", help="skip the cluster checks (render only)")
    p.add_argument("overrides", nargs="*", help="train/tune config overrides, key=value")
    p.set_defaults(run=_run_preflight)


def _run_preflight(args):
    from xray import kube, preflight, render

    promote = []
    if args.component == "promote":
        promote = (["--label", args.label] if args.label else []) + (["--version", args.version] if args.version else []) \
            + (["--from-label", args.from_label] if args.from_label else []) + (["--rollback"] if args.rollback else [])
    request = render.RenderRequest(args.component, args.overlay, args.image, args.workers, args.data, args.workdir,
                                   args.namespace, args.config, tuple(args.overrides), args.storage_class, args.src,
                                   args.deadline, args.max_trials, args.replicas, tuple(promote), args.wait)
    try:
        warnings = preflight.check_and_render(request, args.out, check_cluster=not args.offline)
    except kube.ClusterError as error:
        raise UserError(str(error)) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"pre-flight passed; rendered {args.out}/kustomization.yaml (kubectl apply -k {args.out})")


def _add_upload(sub):
    p = sub.add_parser("upload", help="copy an image folder (or .zip/.tar) onto the cluster volume via the uploader pod",
                       description="Makes DEST match SRC's train/, val/ and test/ (Kaggle chest_xray layout; a .zip or .tar "
                       "of it works too), through a receiver in POD (kubectl exec), file by file like rsync: only files "
                       "whose size or sha256 differ are sent, files and splits gone from SRC are removed. The receiver "
                       "checks every file against the sender's list before a split is swapped in; an interrupted or bad "
                       "stream leaves the volume's copy as it was. Member names are checked first (no absolute paths, "
                       "'..', links or devices). make data-cluster starts the pod, runs this, then shards DEST on the "
                       "cluster.",
                       epilog="exit 0: DEST matches SRC; 1: a split could not be sent or verified (the volume keeps its "
                       "previous copy; re-run); 2: SRC is refused (layout, a member name), nothing sent. Details: "
                       "docs/reference.md, 'Upload'.")
    p.add_argument("src", help="local folder, .zip or .tar")
    p.add_argument("--dest", required=True, help="folder on the volume as the pod sees it, e.g. /mnt/xray/incoming/chest_xray")
    p.add_argument("-n", "--namespace", default="xray")
    p.add_argument("--pod", default="xray-upload")
    p.add_argument("--local", action="store_true", help="DEST is a folder on this machine (no pod): same layout")
    p.set_defaults(run=_run_upload)


def _run_upload(args):
    from data import upload

    transport = upload.local_exec() if args.local else upload.kubectl_exec(args.namespace, args.pod)
    try:
        report = upload.upload(args.src, args.dest, transport)
    except upload.UploadError as error:
        if error.code == 2:
            raise UserError(str(error)) from None
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report))


def _add_jobs(sub):
    p = sub.add_parser("jobs", help="training/tuning jobs on Kubernetes: status, watch, logs, delete",
                       epilog="watch exits 0 when the job succeeded, 1 when it failed, 3 when the export gate refused "
                       "the model, 4 when a pod cannot start or run (the reason in one line: image pull errors, "
                       "unschedulable, an unbound claim, OOMKilled, a crash loop) or none started in time. "
                       "watch deployment/NAME follows a Deployment's rollout the same way, watch pod/NAME a pod until "
                       "it is Ready.",
                       description="Like kubectl, for our jobs: one row per worker pod (index, phase, restarts, node, age), "
                       "the latest epoch and metrics from the chief's log, recent warning events, and a summary.")
    p.add_argument("action", choices=("status", "watch", "logs", "delete"))
    p.add_argument("name", nargs="?", default="xray-train", help="job name (default: xray-train)")
    p.add_argument("-n", "--namespace", default="xray")
    p.add_argument("--index", type=int, default=0, help="logs: the worker index (0 is the chief)")
    p.add_argument("-f", "--follow", action="store_true", help="logs: stream")
    p.add_argument("--tail", type=int, default=None, help="logs: last N lines")
    p.add_argument("--interval", type=float, default=10.0, help="watch: seconds between refreshes")
    p.add_argument("--stuck-after", type=float, default=45.0, help="watch: give up (exit 4) when a pod has been unable "
                   "to start or run this many seconds: image pull errors, unschedulable, a volume that does not mount, "
                   "a crash loop (an OOM kill or an image name that can never be pulled: at once)")
    p.add_argument("--start-timeout", type=float, default=900.0, help="watch: give up (exit 4) when no pod has "
                   "started running after this many seconds")
    p.set_defaults(run=_run_jobs)


def _run_jobs(args):
    from xray import kube

    try:
        if args.action == "status":
            state, text = kube.status(args.name, args.namespace)
            print(text)
            return kube.WATCH_EXIT.get(state, 0)
        if args.action == "watch" and args.name.startswith(("deployment/", "pod/")):
            follow = kube.rollout if args.name.startswith("deployment/") else kube.pod_ready
            return follow(args.name.split("/", 1)[1], args.namespace, min(args.interval, 2),
                          limits=kube.WatchLimits(args.stuck_after, args.start_timeout))
        if args.action == "watch":
            return kube.watch(args.name, args.namespace, args.interval,
                              limits=kube.WatchLimits(args.stuck_after, args.start_timeout))
        if args.action == "logs":
            kube.logs(args.name, args.namespace, args.index, args.follow, args.tail)
            return 0
        kube.delete(args.name, args.namespace)
        print(f"deleted job {args.namespace}/{args.name} and its pods")
    except kube.ClusterError as error:
        raise UserError(str(error)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xray", description="Chest X-ray classifier pipeline: data, training, evaluation, export, prediction.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_synth, _add_shards, _add_train, _add_evaluate, _add_tune, _add_export, _add_promote, _add_predict,
                _add_preflight, _add_upload, _add_jobs):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.worker import configure_logging  # the same format in the worker processes

    configure_logging(args.verbose)
    try:
        for name in PATH_ARGUMENTS:
            value = getattr(args, name, None)
            if isinstance(value, str):
                check_storage_uri(value, name.replace("_", "-"))
        return args.run(args) or 0
    except UserError as error:
        print(f"xray {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xray {args.command}: interrupted", file=sys.stderr)
        return 130
