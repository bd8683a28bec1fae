"""The `xray` command line: one subcommand per pipeline stage (xray/commands/, by area), the storage check of
every path argument, logging, and the one place errors become exit statuses.

Each stage's library is imported only when its subcommand runs, so `xray --help` is instant and the REST client
never imports TensorFlow. Errors the user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from xray.commands import UserError
from xray.commands import cluster as cluster_commands
from xray.commands import data as data_commands
from xray.commands import serving as serving_commands
from xray.commands import training as training_commands

EXAMPLES = """examples:
  xray synth --out build/synth --num-patients 300 --seed 1
  xray shards --src build/synth --out build/shards --num-shards 8 --image-size 64
  xray train --data build/shards --workdir build/run --preset demo --workers 2
  xray evaluate --data build/shards --workdir build/run
  xray export --workdir build/run --model-base build/models
  xray predict build/synth/test --model build/models
  xray predict chest.jpeg --grpc localhost:8500      (or --rest http://localhost:8501)
"""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xray", description="Chest X-ray classifier pipeline: data, training, evaluation, export, prediction.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in (data_commands, training_commands, serving_commands, cluster_commands):
        area.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xray.trainer.worker import configure_logging  # the same format in the worker processes

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
