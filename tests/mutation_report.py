"""The score of `make mutate`, per module: killed / (mutants - equivalent ones), from mutmut's results in mutants/.

A mutant that no selected test reaches ("no tests") or that outlives its tests ("survived") counts against the
score; one listed in tests/mutation_equivalents.txt (a mutant name and why no test can tell it from the original)
is left out of it. Where SCOPE names functions, only their mutants count: the module's other functions are
tested through training (tests that take minutes), not the fast tests `make mutate` runs.

    python tests/mutation_report.py [data.split trainer.config ...]   (exit 1 when a module is under 85%)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.85
SCOPE = {"trainer.feature_cache": ("why_not", "cache_dir", "cache_key")}
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
    """{module: {mutant name: status}} for every mutant mutmut ran (or left pending)."""
    modules: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            function = name[len(module) + 1:].split("__mutmut_")[0].removeprefix("x_").split(".")[-1]
            function = function.split("ǁ")[-1]  # methods: Class ǁ method
            if module in SCOPE and function not in SCOPE[module]:
                continue
            status = "pending" if code is None else STATUS.get(code, f"exit {code}")
            modules.setdefault(module, {})[name] = status
    return modules


def main(argv: list[str]) -> int:
    if not (ROOT / "mutants").is_dir():
        print("no mutants/ folder: run make mutate", file=sys.stderr)
        return 2
    known = equivalents()
    below = []
    print(f"{'module':<24} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'other':>5} "
          f"{'equivalent':>10} {'score':>6}")
    for module, mutants in results().items():
        if argv and module not in argv:
            continue
        counts = Counter(status for name, status in mutants.items() if name not in known)
        equivalent = sum(1 for name in mutants if name in known)
        counted = sum(counts.values())
        score = counts["killed"] / counted if counted else 1.0
        other = counted - counts["killed"] - counts["survived"] - counts["no tests"]
        print(f"{module:<24} {len(mutants):>7} {counts['killed']:>6} {counts['survived']:>8} {counts['no tests']:>8} "
              f"{other:>5} {equivalent:>10} {score:>6.1%}")
        if score < THRESHOLD:
            below.append(module)
    if below:
        print(f"under {THRESHOLD:.0%}: {', '.join(below)}; `mutmut results` lists the survivors, `mutmut show NAME` "
              "shows one")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
