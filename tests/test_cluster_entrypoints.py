"""The commands the cluster Jobs run, taken from the rendered manifests and run here on real files: the shards
Job, the train Job started from the run config it is given, and the export Job (evaluate + gated export).
Paths as the pods see them (/mnt/xray/...) are mapped to temporary folders; everything else is as rendered.
The pods' environment and `$(VAR)` expansion come from tests/kubelet_standin.py (the real kubelet cannot run a
command on this machine's files); test_k8s_real_node.py checks that stand-in against the real kubelet."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from kubelet_standin import container_env, expand
from xray.trainer.config import preset
from xray.cluster import render

pytestmark = pytest.mark.slow


def _rendered(tmp_path, request):
    out = render.render_kustomization(request, tmp_path / f"k8s-{request.component}")
    return render.kustomize(out), out


def _job_container(objects, name):
    job = next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == name)
    return job["spec"]["template"]["spec"]["containers"][0]


def _xray(args, env=None):
    return subprocess.run([sys.executable, "-m", "xray", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_the_shards_job_command_on_real_images(synth_dir, tmp_path):
    objects, _ = _rendered(tmp_path, render.RenderRequest("shards", image="r/x:1", src="/mnt/xray/incoming/demo"))
    container = _job_container(objects, "xray-shards")
    env = container_env(objects, container, {"/mnt/xray/incoming/demo": str(synth_dir),
                                              "/mnt/xray/shards": str(tmp_path / "shards")})
    result = _xray(expand(container["args"], env))
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["options"]["num_shards"] == 4 and manifest["options"]["image_size"] == 64  # the local overlay's


def test_the_train_job_starts_from_its_run_config_and_the_export_job_ships_it(shards_dir, tmp_path):
    best = tmp_path / "best_config.json"
    preset("tiny").override(["model.dropout1=0.35"]).save(str(best))
    objects, out = _rendered(tmp_path, render.RenderRequest("train", image="r/x:1", workers=2, config_file=str(best),
                                                            overrides=("train.epochs=1",)))
    container = _job_container(objects, "xray-train")
    run = tmp_path / "run"
    env = container_env(objects, container, {"/mnt/xray/shards": str(shards_dir), "/mnt/xray/runs/train": str(run)})
    args = [str(out / "config.json") if a == "/etc/xray/run/config.json" else a for a in expand(container["args"], env)]
    # One worker of the group alone (the multi-worker path is tested elsewhere): the pod's args, its config.
    result = _xray(args)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["dropout1"] == 0.35 and saved["train"]["epochs"] == 1

    objects, _ = _rendered(tmp_path, render.RenderRequest("export", image="r/x:1"))
    container = _job_container(objects, "xray-export")
    env = container_env(objects, container, {"/mnt/xray/shards": str(shards_dir), "/mnt/xray/runs/train": str(run),
                                              "/mnt/xray/models": str(tmp_path / "models")})
    script = container["args"][0]
    bin_dir = os.path.dirname(sys.executable)  # the venv's `xray` console script, as on the image's PATH
    result = subprocess.run([*container["command"], script], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "eval" / "metrics.json").exists() and (tmp_path / "models" / "1" / "saved_model.pb").exists()
    assert json.loads(result.stdout.strip().splitlines()[-1])["version"] == 1
