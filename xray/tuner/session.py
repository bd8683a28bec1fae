"""A tuning session: the search in this process's role, or a chief and N worker processes on this machine, then
the report and, when asked, the best config trained and evaluated.

`xray tune` calls ``run`` (alone, or as the chief or a worker of a pod) or ``run_parallel`` (--parallel N). The
processes ``run_parallel`` starts, and the fresh process a search continues in when memory runs short, are

    python -m xray.tuner.session '<TuneJob as JSON>'

which call the same ``run``. No process goes back through the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from xray.tuner import check_algorithm


@dataclasses.dataclass(frozen=True)
class TuneJob:
    data: str  # shards directory/URI
    workdir: str  # search directory, shared by the chief and the workers
    config: dict  # the base trainer config (xray.trainer.config.Config.to_dict())
    options: dict  # xray.tuner.search.SearchOptions fields
    space: dict  # xray.tuner.search.SearchSpace fields
    retrain_workers: int = 0  # then train best_config.json on this many local workers and evaluate it (0: no)

    def __post_init__(self):
        check_algorithm(self.options.get("algorithm", "bayesian"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TuneJob":
        return cls(**json.loads(text))

    def command(self) -> list[str]:
        from xray.trainer.launch import module_command

        return module_command("xray.tuner.session", self.to_json())


def run(job: TuneJob, sink=None) -> int:
    """Searches (or continues the search in ``job.workdir``) in this process's role (KERASTUNER_TUNER_ID: chief,
    a worker, or none: alone). Alone, it then reports and retrains. Returns an exit status."""
    from xray.tuner import search
    from xray.tuner.roles import role
    from xray.tuner.space import SearchOptions, SearchSpace
    from xray.trainer.config import Config

    options = SearchOptions(**job.options)
    space = SearchSpace(**{name: tuple(bounds) for name, bounds in job.space.items()})
    rows = search.run(job.data, job.workdir, Config.from_dict(job.config), options, space, restart=job.command())
    if role() != "alone":
        return 0
    return report_and_retrain(job, rows, sink)


def run_parallel(job: TuneJob, processes: int, sink=None) -> int:
    """A chief (the oracle) and ``processes`` workers on this machine, with the roles the tuner manifests give
    pods; then the report and the retraining. Returns an exit status."""
    from xray.trainer import launch
    from xray.trainer.ports import Reservation

    sink = sink or sys.stdout
    if processes < 1:
        raise ValueError(f"{processes} tuning processes: there must be at least 1")
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    command = job.command()
    with Reservation(1) as (port,):  # held until the chief and the workers are gone
        oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
        members = [("chief", command, {**oracle, "KERASTUNER_TUNER_ID": "chief", "CUDA_VISIBLE_DEVICES": ""})]
        members += [(f"tuner{i}", command, {**oracle, "KERASTUNER_TUNER_ID": f"tuner{i}", "XRAY_THREADS": threads})
                    for i in range(processes)]
        code = launch.run_group(members, sink)
    if code:
        print(f"tuning failed (status {code}); re-run the same command to continue the search", file=sys.stderr)
        return code
    return report_and_retrain(job, None, sink)


def report_and_retrain(job: TuneJob, rows: list[dict] | None, sink=None) -> int:
    """Prints the trial table and where the best config is; with ``retrain_workers``, trains it in WORKDIR/best
    and prints its evaluation."""
    from xray.tuner.reports import format_table
    from xray.tuner.space import SearchOptions

    sink = sink or sys.stdout
    workdir = job.workdir.rstrip("/")
    if rows is None:
        with open(f"{workdir}/trials.json") as f:
            rows = json.load(f)
    print(format_table(rows, SearchOptions(**job.options).objective), file=sink)
    print(f"best config: {workdir}/best_config.json  (xray train can start from it as its config)", file=sink)
    if not job.retrain_workers:
        return 0
    from xray.trainer import evaluate, launch
    from xray.trainer.config import Config
    from xray.trainer.worker import TrainJob

    best = Config.load(f"{workdir}/best_config.json")
    code = launch.launch(job.retrain_workers, TrainJob(job.data, f"{workdir}/best", best.to_dict()), sink)
    if code:
        return code
    print(evaluate.format_summary(evaluate.run(job.data, f"{workdir}/best", [])), file=sink)
    return 0


def main(argv: list[str]) -> int:
    """`python -m xray.tuner.session JOB_JSON`; a bad setting or a missing chief is one line and exit 2, as from
    `xray tune`."""
    from xray.trainer.worker import module_main

    return module_main(argv, "xray.tuner.session", "tune", lambda text: run(TuneJob.from_json(text)),
                       (ValueError, TimeoutError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
