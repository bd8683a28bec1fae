"""`xray export`, `xray promote`, `xray predict`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xray.commands import UserError, user_error
from xray.data.errors import SettingError


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
    from xray.serving import config as serving_config
    from xray.serving import contract, export

    name = args.name or contract.MODEL_NAME
    base = args.model_base.rstrip("/")
    if args.list:
        print(export.format_versions(base))
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
        print(f"xray export: {error} Use --force to push anyway.", file=sys.stderr)
        return 3
    except (export.ExportError, FileNotFoundError, SettingError) as error:
        raise user_error(error) from None
    print(json.dumps({"version": card["version"], "path": card["path"], "roc_auc": card["metrics"]["roc_auc"],
                      "serving_roc_auc": card["serving_path"]["roc_auc"], "threshold": card["threshold"]}))
    return 0


def _move_label(args, base: str, name: str) -> int:
    if args.server:
        raise UserError("--server is gone: a running TF Serving takes label moves through its ReloadConfig RPC; use "
                        f"xray promote --model-base {base} --label {args.label} --version N --grpc HOST:8500")
    return _promote(base, args.label, [], name=name, version=args.version, base_path=args.serving_base_path, wait_s=0)


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
    from xray.serving import contract, promote

    name = args.name or contract.MODEL_NAME
    if args.service:
        replicas = promote.dns_replicas(args.service, names=promote.parse_names(os.environ.get("XRAY_REPLICA_NAMES", "")))
    else:
        for target in args.grpc:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"--grpc {target!r} is not HOST:PORT (e.g. localhost:8500)")
        replicas = [promote.Replica(target, target) for target in args.grpc]
    return _promote(args.model_base.rstrip("/"), args.label, replicas, name=name, version=args.version,
                    from_label=args.from_label, rollback=args.rollback, base_path=args.serving_base_path, wait_s=args.wait)


def _promote(base: str, label: str, replicas, **options) -> int:
    """xray.serving.promote.promote, its refusal as one line and exit 1 (the label stays where it was)."""
    from xray.serving import promote

    try:
        move = promote.promote(base, label, replicas, log=lambda line: print(line, flush=True), **options)
    except promote.PromoteError as error:
        print(f"xray promote: {error}; {label} still points where it did", file=sys.stderr)
        return 1
    print(f"{label} -> version {move.version} in {promote.config_path(base)} (labels: {move.labels})")
    return 0


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
    from xray.clients import ServingError
    from xray.clients import predict as predicting
    from xray.serving import contract

    name = args.name or contract.MODEL_NAME
    if args.explain and not args.model:
        raise UserError("--explain runs the model in-process: use it with --model DIR")
    paths = predicting.collect_files(args.images)
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.images)}")
    try:
        if args.rest:
            from xray.clients.rest import RestClient

            client = RestClient(args.rest, name, args.version, args.label, timeout=args.timeout, **_transport(args))
        elif args.grpc:
            from xray.clients.grpc import GrpcClient

            client = GrpcClient(args.grpc, name, args.version, args.label, timeout=args.timeout, **_transport(args))
        else:
            client = predicting.LocalModel(args.model)
        rows = []
        for row in predicting.predict_files(client, paths, args.batch_size):
            rows.append(row)
            if args.format == "jsonl":
                print(predicting.format_jsonl(row), flush=True)
    except ServingError as error:
        message = error.message  # the library names its batch_size argument; here it is --batch-size
        message = "--batch-size" + message[len("batch_size"):] if message.startswith("batch_size ") else message
        raise UserError(f"{error.code}: {message}") from None
    except ValueError as error:  # a client option that cannot work (plain http with TLS, a key without its cert)
        raise user_error(error) from None
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


def register(sub) -> None:
    for add in (_add_export, _add_promote, _add_predict,):
        add(sub)
