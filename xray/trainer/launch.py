"""Runs the training entry point as N local worker processes, the way N pods would run it.

Each worker is `python -m xray.trainer.worker JOB` (xray.trainer.worker: the function a pod's `xray train` also ends in). It gets the TF_CONFIG a pod would get (hosts on 127.0.0.1 ports reserved by xray.trainer.ports), a share of
the CPU cores, and its output prefixed with ``[worker i]``. If one worker fails the others are stopped
(a worker blocked in a collective ignores SIGTERM, hence SIGKILL after a grace period) and the
launcher exits with the failed worker's status. Ctrl-C stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from xray.trainer import tfconfig
from xray.trainer.ports import Reservation
from xray.trainer.worker import TrainJob

GRACE_SECONDS = 10


def _stream(process: subprocess.Popen, prefix: str, sink) -> None:
    for line in iter(process.stdout.readline, b""):
        sink.write(f"{prefix} {line.decode(errors='replace').rstrip()}\n")
        sink.flush()


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run_group(members: list[tuple[str, list[str], dict]], sink=None) -> int:
    """Starts one process per (label, command, extra env); returns 0 when all succeed, else the first failure's
    status (after stopping the others)."""
    sink = sink or sys.stdout
    processes, streams = [], []
    for label, command, extra_env in members:
        env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        sink.write(f"[launcher] {label} pid {process.pid}\n")
        thread = threading.Thread(target=_stream, args=(process, f"[{label}]", sink), daemon=True)
        thread.start()
        streams.append(thread)
    sink.flush()
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, code = failed[0]
                sink.write(f"[launcher] {members[index][0]} exited with status {code}; stopping the others\n")
                _stop(processes)
                return code if code > 0 else 128 - code  # killed by signal N -> 128 + N, like a shell
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        sink.write("[launcher] interrupted; stopping all processes\n")
        _stop(processes)
        return 130
    finally:
        for thread in streams:
            thread.join(timeout=5)
        sink.flush()


def launch(num_workers: int, job: TrainJob, sink=None) -> int:
    """Runs ``job`` as ``num_workers`` local worker processes with pod-identical TF_CONFIGs."""
    if num_workers < 1:
        raise ValueError(f"{num_workers} workers: there must be at least 1")
    command = module_command("xray.trainer.worker", job.to_json())
    sink = sink or sys.stdout
    with Reservation(num_workers) as ports:  # held until the workers are gone
        hosts = [f"127.0.0.1:{port}" for port in ports]
        threads = os.environ.get(tfconfig.THREADS_ENV) or str(max(1, (os.cpu_count() or 1) // num_workers))
        members = []
        for index in range(num_workers):
            # TF_CONFIG takes precedence over any Indexed Job variables in the environment.
            env = {"TF_CONFIG": json.dumps(tfconfig.tf_config_for(hosts, index)), tfconfig.THREADS_ENV: threads}
            members.append((f"worker {index}", command, env))
            sink.write(f"[launcher] worker {index} at {hosts[index]} ({threads} thread(s))\n")
        return run_group(members, sink)
