"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtualenv, run from
a directory that is not the clone."""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

from conftest import PACKAGES, REPO


def test_an_installed_xray_renders_the_manifests_it_ships_from_another_directory(tmp_path):
    """`pip install` of the wheel into a fresh virtualenv, then `xray preflight --offline` from an empty folder:
    the kustomization it writes stands on the overlays inside the installed package, and kubectl renders it.

    One shortcut, said here: the wheel is installed with --no-deps, and the third-party dependencies come from
    the test virtualenv through PYTHONPATH (TensorFlow is a large download; what is checked is what the project
    itself ships). PYTHONPATH entries do not run .pth files, so the test virtualenv's editable install of this
    clone stays invisible: the only `xray` the fresh one can import is the installed wheel's."""
    source = tmp_path / "src"  # a copy: building in the clone would write build/ and egg-info into it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in PACKAGES:
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("xray_classifier-*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"xray"}  # no generic top-level names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "--quiet", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import xray; print(xray.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(venv), package  # the wheel's, not the clone's

    result = subprocess.run([str(venv / "bin" / "xray"), "preflight", "--component", "train", "--image",
                             "registry.example.com/xray:0.1.0", "--workers", "2", "--out", "out", "--offline",
                             "train.epochs=3"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    kustomization = yaml.safe_load((elsewhere / "out" / "kustomization.yaml").read_text())
    (overlay,) = kustomization["resources"]
    assert (elsewhere / "out" / overlay).resolve() == package / "k8s" / "overlays" / "local" / "train"

    rendered = subprocess.run(["kubectl", "kustomize", "out"], cwd=elsewhere, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["spec"]["completions"] == 2
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/xray:0.1.0"
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "config.json" in o.get("data", {})]
    assert json.loads(config["data"]["config.json"])["train"]["epochs"] == 3
