"""requirements.lock is what the virtualenv (and the image) run: fully pinned, hashed, and installed as written."""

import importlib.metadata
import re

from packaging.markers import Marker
from packaging.requirements import Requirement

from conftest import REPO


def _locked(path):
    entries = {}
    text = path.read_text()
    for block in re.split(r"\n(?=[a-z0-9])", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        requirement = first.rstrip(" \\")
        name_version, _, marker = requirement.partition(" ; ")
        name, version = name_version.split("==")
        entries.setdefault(name.lower(), []).append((version, marker, block.count("--hash=sha256:")))
    return entries


def test_every_locked_package_is_pinned_and_hashed():
    for lock in ("requirements.lock", "requirements-gpu.lock", "requirements-mutate.lock"):
        entries = _locked(REPO / lock)
        assert entries, lock
        for name, versions in entries.items():
            for version, _, hashes in versions:
                assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{lock}: {name}=={version}"
                assert hashes >= 1, f"{lock}: {name} has no hash"
    assert any(name.startswith("nvidia-cudnn") for name in _locked(REPO / "requirements-gpu.lock"))


def test_make_mutates_extra_lock_changes_no_version_of_the_main_one():
    """make mutate installs requirements-mutate.lock into the same virtualenv: what it shares with
    requirements.lock must be the same versions, so that the tests run against what they always run against."""
    main, extra = _locked(REPO / "requirements.lock"), _locked(REPO / "requirements-mutate.lock")
    assert [v for v, _, _ in extra["mutmut"]] == ["3.8.1"]
    shared = set(main) & set(extra)
    assert {"pytest", "coverage"} <= set(extra) and "pytest" in shared
    for name in shared:
        assert {v for v, _, _ in extra[name]} <= {v for v, _, _ in main[name]}, name


def test_the_virtualenv_runs_the_locked_versions():
    entries = _locked(REPO / "requirements.lock")
    checked = 0
    for name, versions in entries.items():
        applicable = [v for v, marker, _ in versions if not marker or Marker(marker).evaluate()]
        if not applicable:
            continue
        assert importlib.metadata.version(name) == applicable[0], f"{name}: installed differs from the lock"
        checked += 1
    assert checked > 50


def test_the_lock_covers_the_project_dependencies():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    entries = _locked(REPO / "requirements.lock")
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(spec)
        versions = [v for v, marker, _ in entries[requirement.name.lower()] if not marker or Marker(marker).evaluate()]
        assert versions and requirement.specifier.contains(versions[0]), spec
