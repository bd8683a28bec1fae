"""When a tuner process continues in a fresh one: a trial count (XRAY_TUNE_TRIALS_PER_PROCESS) or a memory budget
(XRAY_TUNE_MEMORY_MB, by default half of the container's or the machine's memory); see xray.tuner.search.XrayTuner."""

from __future__ import annotations

import os

TRIALS_PER_PROCESS_ENV = "XRAY_TUNE_TRIALS_PER_PROCESS"
MEMORY_ENV = "XRAY_TUNE_MEMORY_MB"
MEMORY_SHARE = 0.5  # of the machine's or the container's memory, when XRAY_TUNE_MEMORY_MB is not set


def restart_policy() -> tuple[int | None, int]:
    """(trials per process from XRAY_TUNE_TRIALS_PER_PROCESS or None, memory budget in MB)."""
    count = os.environ.get(TRIALS_PER_PROCESS_ENV, "").strip()
    return (_non_negative_int(TRIALS_PER_PROCESS_ENV, count) if count else None), memory_budget_mb()


def _non_negative_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={text!r} must be a whole number >= 0 (unset it for the default)")
    return value


def memory_budget_mb() -> int:
    """XRAY_TUNE_MEMORY_MB, else MEMORY_SHARE of the smaller of the cgroup limit and the machine's memory."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        return _non_negative_int(MEMORY_ENV, text)
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # "max" or a huge number: no limit
            limits.append(int(value) // 2**20)
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError):
        pass
    return int(min(limits) * MEMORY_SHARE) if limits else 4096


def rss_mb_or_zero() -> int:
    rss = rss_mb()
    return rss if isinstance(rss, int) else 0


def rss_mb() -> int | str:
    """Resident memory of this process (Linux), shown per trial: it must not grow trial after trial."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return "?"
