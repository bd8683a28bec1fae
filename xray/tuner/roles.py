"""KerasTuner's distributed roles from the environment: KERASTUNER_TUNER_ID=chief is the oracle, another id a
worker that runs trials (it waits for its chief, and stops when the chief is gone), none: a search alone."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

ORACLE_WAIT_ENV = "XRAY_TUNE_ORACLE_WAIT_S"


def complete_tuner_id(env=os.environ) -> None:
    """In a Kubernetes Indexed Job every worker pod gets KERASTUNER_TUNER_ID=tuner; make it unique."""
    if env.get("KERASTUNER_TUNER_ID") == "tuner" and env.get("JOB_COMPLETION_INDEX", "").isdigit():
        env["KERASTUNER_TUNER_ID"] = f"tuner{env['JOB_COMPLETION_INDEX']}"


def role() -> str:
    complete_tuner_id()
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    if not tuner_id:
        return "alone"
    return "chief" if "chief" in tuner_id else "worker"


def _oracle_address() -> tuple[str, int]:
    host = os.environ.get("KERASTUNER_ORACLE_IP")
    port = os.environ.get("KERASTUNER_ORACLE_PORT")
    if not host or not port:
        raise ValueError("KERASTUNER_TUNER_ID is set but KERASTUNER_ORACLE_IP/KERASTUNER_ORACLE_PORT are not")
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(port)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=3):
            return True
    except OSError:
        return False


def wait_for_oracle(deadline_s: float) -> None:
    """A worker that starts before the chief retries until ``deadline_s``, then fails with a clear error."""
    address = _oracle_address()
    deadline = time.monotonic() + deadline_s
    while not _reachable(address):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the tuner chief (oracle) at {address[0]}:{address[1]} did not answer within "
                               f"{deadline_s:.0f}s; is the chief running and KERASTUNER_ORACLE_IP/PORT right?")
        time.sleep(1)


def watch_oracle(interval_s: float = 5, misses: int = 3) -> threading.Thread:
    """KerasTuner's client waits up to an hour for a dead chief; stop the worker when the chief is gone."""
    address = _oracle_address()

    def watch():
        missed = 0
        while True:
            time.sleep(interval_s)
            missed = 0 if _reachable(address) else missed + 1
            if missed >= misses:
                print(f"[tune] the chief at {address[0]}:{address[1]} is gone; this worker stops", file=sys.stderr, flush=True)
                os._exit(3)

    thread = threading.Thread(target=watch, daemon=True, name="oracle-watch")
    thread.start()
    return thread
