"""One training worker: the function both ways of starting one end in, and the module local workers run.

A pod runs `xray train --data ... --workdir ... --config ...`: the command line resolves the config and calls
``run``. The local launcher (`xray train --workers N`, `make train`) starts N processes of

    python -m xray.trainer.worker '<TrainJob as JSON>'

which call the same ``run`` with the config the launcher resolved once. No worker process goes back through
the command line. Each process takes its place in the group from TF_CONFIG (or an Indexed Job's variables).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys


@dataclasses.dataclass(frozen=True)
class TrainJob:
    data: str  # shards directory/URI
    workdir: str  # run directory/URI, shared by the workers
    config: dict  # xray.trainer.config.Config.to_dict(), resolved before any worker starts
    verify_shards: bool = False  # check every shard's sha256 against the manifest before training

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainJob":
        return cls(**json.loads(text))


def run(job: TrainJob) -> dict:
    """Trains (or resumes) in this process's place in the group; returns the training summary."""
    from xray.trainer import train
    from xray.trainer.config import Config

    return train.run(job.data, job.workdir, Config.from_dict(job.config), verify_shards=job.verify_shards)


def configure_logging(verbose: bool = False) -> None:
    """The log format of every entry point (`xray ...` and the worker modules)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # TensorFlow's Python loggers print a line per collective op at INFO.
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def module_main(argv: list[str], module: str, command: str, run_job, errors: tuple[type[BaseException], ...]) -> int:
    """`python -m MODULE JOB_JSON` (this module, xray.tuner.session): ``run_job(job_json)`` gives the exit status. The
    same exits as `xray COMMAND`: ``errors`` are one line and exit 2, Ctrl-C exit 130."""
    if len(argv) != 1:
        print(f"usage: python -m {module} JOB_JSON (started by xray {command})", file=sys.stderr)
        return 2
    configure_logging()
    try:
        return run_job(argv[0])
    except errors as error:
        print(f"xray {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xray {command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str]) -> int:
    """`python -m xray.trainer.worker JOB_JSON`: prints the summary as one JSON line; a config or data problem is one
    line and exit 2, as from `xray train`."""
    from xray.trainer.config import ConfigError

    def run_and_print(text: str) -> int:
        print(json.dumps(run(TrainJob.from_json(text))))
        return 0

    return module_main(argv, "xray.trainer.worker", "train", run_and_print, (ConfigError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
