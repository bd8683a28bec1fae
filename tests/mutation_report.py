"""The score of `make mutate`, per module: detected / (mutants - equivalent ones), from mutmut's results in mutants/.

mutmut runs each mutant's tests in a child forked from one process and stops it at a limit scaled from the tests'
own time; a child that inherits the state of threads (gRPC, TensorFlow) can hang or abort there where a fresh
process would not, so a "timeout" or a crash (an exit by a signal) says little. `--recheck` runs each such mutant's
tests again in a fresh pytest process (MUTANT_UNDER_TEST set, mutmut's own switch) and records the verdict in
mutants/rechecked.json: a failed test is killed, a pass is survived, and only a test that still runs past
RECHECK_LIMIT_S counts as detected by a hang.

A mutant that no selected test reaches ("no tests") or that outlives its tests ("survived") counts against the
score; one listed in tests/mutation_equivalents.txt (a mutant name and why no test can tell it from the original)
is left out of it. Where SCOPE names functions, only their mutants count: the module's other functions are
tested through training (tests that take minutes), not the fast tests `make mutate` runs.

    python tests/mutation_report.py [--recheck] [xray.data.split xray.trainer.config ...]   (exit 1 when a module is under 85%)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.85
RECHECK_LIMIT_S = 300
SCOPE = {"xray.trainer.feature_cache": ("why_not", "cache_dir", "cache_key")}
# Functions left out of a module's score, with where they are tested instead. LocalModel runs TensorFlow, whose
# thread pools do not survive mutmut's fork: tests/test_local_model.py and test_serving.py, in ordinary processes.
LEFT_OUT = {"xray.clients.predict": ("LocalModel",)}
UNDECIDED = ("timeout", "exit ")  # statuses a fresh process must confirm: a hang, or a crash by a signal
STATUS = {0: "survived", 1: "killed", 33: "no tests", 34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout",
          152: "timeout", 255: "timeout"}


def equivalents(path: Path = ROOT / "tests" / "mutation_equivalents.txt") -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            found[name] = reason.strip()
    return found


def results(mutants: Path = ROOT / "mutants") -> dict[str, dict[str, str]]:
    """{module: {mutant name: status}} for every mutant mutmut ran (or left pending); a rechecked timeout or crash has
    the recheck's verdict."""
    rechecked_path = mutants / "rechecked.json"
    rechecked = json.loads(rechecked_path.read_text()) if rechecked_path.is_file() else {}
    modules: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            function = name[len(module) + 1:].split("__mutmut_")[0].removeprefix("x_").split(".")[-1]
            owner = function.split("ǁ")[1] if "ǁ" in function else ""
            function = function.split("ǁ")[-1]  # methods: Class ǁ method
            if module in SCOPE and function not in SCOPE[module]:
                continue
            if owner in LEFT_OUT.get(module, ()):
                continue
            status = "pending" if code is None else STATUS.get(code, f"exit {code}")
            if status.startswith(UNDECIDED) and name in rechecked:
                status = rechecked[name]
            modules.setdefault(module, {})[name] = status
    return modules


def recheck(mutants: Path = ROOT / "mutants", run=subprocess.run) -> dict[str, str]:
    """Runs each timed-out or crashed mutant's tests in a fresh process; returns and saves {mutant name: verdict}."""
    stats = json.loads((mutants / "mutmut-stats.json").read_text())["tests_by_mangled_function_name"]
    path = mutants / "rechecked.json"
    verdicts = json.loads(path.read_text()) if path.is_file() else {}
    statuses = {name: status for module in results(mutants).values() for name, status in module.items()}
    pending = [name for name, status in statuses.items() if status.startswith(UNDECIDED) and name not in verdicts]
    for count, name in enumerate(pending, 1):
        tests = sorted(stats.get(name.split("__mutmut_")[0], []))
        try:
            result = run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          *tests], cwd=mutants, env=dict(os.environ, MUTANT_UNDER_TEST=name), capture_output=True,
                         timeout=RECHECK_LIMIT_S)
            verdict = {0: "survived", 1: "killed"}.get(result.returncode, f"exit {result.returncode}")
        except subprocess.TimeoutExpired:
            verdict = "timeout"  # a hang in a fresh process too: the mutant stops a test from finishing
        verdicts[name] = verdict
        path.write_text(json.dumps(verdicts, indent=1))
        print(f"recheck {count}/{len(pending)} {name}: {verdict}", flush=True)
    return verdicts


def main(argv: list[str]) -> int:
    if not (ROOT / "mutants").is_dir():
        print("no mutants/ folder: run make mutate", file=sys.stderr)
        return 2
    if argv[:1] == ["--recheck"]:
        recheck()
        argv = argv[1:]
    known = equivalents()
    below = []
    print(f"{'module':<24} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} {'other':>5} "
          f"{'equivalent':>10} {'score':>6}")
    for module, mutants in results().items():
        if argv and module not in argv:
            continue
        counts = Counter(status for name, status in mutants.items() if name not in known)
        equivalent = sum(1 for name in mutants if name in known)
        counted = sum(counts.values())
        detected = counts["killed"] + counts["timeout"]
        score = detected / counted if counted else 1.0
        other = counted - detected - counts["survived"] - counts["no tests"]
        print(f"{module:<24} {len(mutants):>7} {counts['killed']:>6} {counts['timeout']:>7} {counts['survived']:>8} "
              f"{counts['no tests']:>8} {other:>5} {equivalent:>10} {score:>6.1%}")
        if score < THRESHOLD:
            below.append(module)
    if below:
        print(f"under {THRESHOLD:.0%}: {', '.join(below)}; `mutmut results` lists the survivors, `mutmut show NAME` "
              "shows one")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
