"""`xray` as a user runs it, in a subprocess of this interpreter from the clone: the one helper the benchmarks and
the tests share (tests/conftest.py imports it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class XrayFailed(AssertionError):
    """The command exited non-zero; the message holds the command and the tails of its output."""


def run_xray(*args, timeout: float | None = 600, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m xray ARGS` in the clone with the environment plus ``env``; raises XrayFailed when ``check``
    and the exit status is not 0."""
    result = subprocess.run([sys.executable, "-m", "xray", *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise XrayFailed(f"xray {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                         f"{result.stderr[-4000:]}")
    return result
