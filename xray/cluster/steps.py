"""The cluster steps as one library: each is pre-flight and render (preflight.check_and_render), the previous run of
the same Job replaced, `kubectl apply -k` of the rendered kustomization, and the workload followed until it ends
(watching.watch / rollout / pod_ready). `xray cluster STEP` and every make *-cluster target call ``run``; a script or CI
system can call it the same way:

    from xray.cluster import steps
    from xray.cluster.render import RenderRequest
    status = steps.run(RenderRequest("train", image="registry.example.com/xray:0.1.0", workers=2), "build/k8s/train")

``run`` returns the follow's exit status (watching.WATCH_EXIT: 0 succeeded, 1 failed, 3 gate refused, 4 cannot start);
a refusal before anything is applied raises kube.ClusterError with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from xray.cluster import kube, watching
from xray.cluster.preflight import check_and_render
from xray.cluster.render import WORKLOADS, RenderRequest

ClusterError = kube.ClusterError

# What each step follows once applied: a Job (watching.watch), deployment/NAME (its rollout) or pod/NAME (until Ready).
# The tuner's step is two Jobs: it ends when either fails (named) or both have succeeded.
FOLLOW = {"storage": None, "upload": "pod/xray-upload", "shards": "xray-shards", "train": "xray-train",
          "tune": ("xray-tune-chief", "xray-tune-workers"), "export": "xray-export", "serving": "deployment/xray-serving",
          "tensorboard": "deployment/xray-tensorboard", "promote": "xray-promote"}
STEPS = tuple(FOLLOW)
# A finished Job cannot be re-applied (its pod template is immutable): these steps delete the last run's Jobs first.
# The workdir on the volume keeps the run's backup and results.
REPLACED = {component: tuple(name for kind, name, _ in WORKLOADS[component] if kind == "Job") for component in FOLLOW}


@dataclasses.dataclass(frozen=True)
class Follow:
    """How a step is followed (xray jobs watch's --interval, --stuck-after and --start-timeout)."""
    interval_s: float = 10.0
    stuck_after_s: float = 45.0
    start_timeout_s: float = 900.0
    outage_s: float = 600.0

    def limits(self) -> watching.WatchLimits:
        return watching.WatchLimits(self.stuck_after_s, self.start_timeout_s, self.outage_s)


def kubectl(*args: str, namespace: str | None = None) -> None:
    """One kubectl command with its output on this terminal; a failure is a ClusterError naming the command."""
    command = ["kubectl", *(["-n", namespace] if namespace else []), *args]
    try:
        result = subprocess.run(command)
    except FileNotFoundError:
        raise ClusterError("kubectl is not installed here (https://kubernetes.io/docs/tasks/tools/)") from None
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(command)} exited {result.returncode} (its message is above)")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def apply(request: RenderRequest, out_dir: str | Path, say=print, warn=_stderr) -> None:
    """Pre-flight, render into out_dir, replace the step's previous Jobs, apply. Raises ClusterError on a refusal."""
    for warning in check_and_render(request, out_dir, check_cluster=True):
        warn(f"warning: {warning}")
    say(f"pre-flight passed; rendered {out_dir}/kustomization.yaml")
    for name in REPLACED[request.component]:
        kubectl("delete", "job", name, "--ignore-not-found", "--wait=true", namespace=request.namespace)
    kubectl("apply", "-k", str(out_dir))


def watch(target, namespace: str, how: Follow = Follow(), out=print, redraw: bool = False) -> int:
    """Follows a Job (NAME), a Deployment's rollout (deployment/NAME) or a pod until Ready (pod/NAME) until it ends;
    the exit status of `xray jobs watch TARGET`, which calls this too. ``redraw``: a Job's table is redrawn in place
    (a terminal) rather than printed again below the last."""
    if not isinstance(target, str):  # several Jobs that make one step
        return watching.watch(tuple(target), namespace, how.interval_s, out=out, limits=how.limits(), redraw=redraw)
    kind, _, name = target.rpartition("/")
    if kind == "deployment":
        return watching.rollout(name, namespace, min(how.interval_s, 2), out=out, limits=how.limits())
    if kind == "pod":
        return watching.pod_ready(name, namespace, min(how.interval_s, 2), out=out, limits=how.limits())
    return watching.watch(target, namespace, how.interval_s, out=out, limits=how.limits(), redraw=redraw)


def follow(component: str, namespace: str, how: Follow = Follow(), out=print) -> int:
    """Follows what the step runs until it ends; its exit status (0 for a step with nothing to follow)."""
    target = FOLLOW[component]
    if target is None:
        return 0
    status = watch(target, namespace, how, out=out)
    if component == "promote":  # what the label move did, replica by replica, is in the Job's log
        try:
            kube.logs(target, namespace, tail=60, out=out)
        except (ClusterError, OSError) as error:
            out(f"(no log of job {target}: {error})")
    return status


def run(request: RenderRequest, out_dir: str | Path, how: Follow = Follow(), out=print, warn=_stderr) -> int:
    """One cluster step: apply (pre-flight, render, replace, kubectl apply -k), then follow it to its end. Progress
    goes to out, pre-flight's warnings to warn (standard error by default)."""
    apply(request, out_dir, say=out, warn=warn)
    return follow(request.component, request.namespace, how, out=out)


def data(src: str, dest: str, upload: RenderRequest, shards: RenderRequest, out_dir: str | Path,
         how: Follow = Follow(), out=print) -> int:
    """make data-cluster: the uploader pod, SRC copied through it onto the volume at DEST (xray.data.upload), the pod
    removed, then the shards Job over DEST. A refused SRC raises UploadError before the pod starts."""
    from xray.data import upload as sender

    sender.list_source(src)  # layout and member names: refused here, before the pod starts
    status = run(upload, Path(out_dir) / "upload", how, out=out)
    if status != 0:
        return status
    try:
        report = sender.upload(src, dest, sender.kubectl_exec(upload.namespace, "xray-upload"))
    finally:
        kubectl("delete", "pod", "xray-upload", "--wait=false", namespace=upload.namespace)
    out(json.dumps(report))  # what xray upload prints: files sent, skipped, removed per split
    return run(shards, Path(out_dir) / "shards", how, out=out)


WEIGHTS_DIR = "/mnt/xray/weights"  # on the volume; the train and tune pods' XRAY_WEIGHTS_PATH starts with it
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def weights(file: str, upload: RenderRequest, out_dir: str | Path, how: Follow = Follow(), out=print) -> int:
    """make weights-cluster: the ImageNet weights file copied once from this machine onto the volume (through the
    uploader pod), where every training and tuning pod finds it instead of downloading it (a cluster without egress
    works). A file that is not the notop HDF5 file is refused before the pod starts."""
    from xray.trainer.config import IMAGENET_WEIGHTS_FILE

    path = Path(os.path.expanduser(file))
    if not path.is_file():
        raise ClusterError(f"weights file {file}: no such file; Keras keeps it at ~/.keras/models/{IMAGENET_WEIGHTS_FILE} "
                           "once a run with model.weights=imagenet has downloaded it")
    with open(path, "rb") as f:
        if f.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise ClusterError(f"weights file {file} is not an HDF5 file; give {IMAGENET_WEIGHTS_FILE}")
        f.seek(0)
        digest = hashlib.file_digest(f, "sha256")
    status = run(upload, Path(out_dir) / "upload", how, out=out)
    if status != 0:
        return status
    command = ["kubectl", "exec", "-i", "-n", upload.namespace, "xray-upload", "--", "python", "-m", "xray.data.receiver",
               "file", WEIGHTS_DIR, IMAGENET_WEIGHTS_FILE]
    try:
        with open(path, "rb") as f:
            result = subprocess.run(command, stdin=f, capture_output=True)
    finally:
        kubectl("delete", "pod", "xray-upload", "--wait=false", namespace=upload.namespace)
    received = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or received != digest.hexdigest():
        raise ClusterError(f"copying {file} onto the volume failed (exit {result.returncode}, sha256 {received or '-'} "
                           f"for {digest.hexdigest()}): {result.stderr.decode(errors='replace').strip()[-300:]}")
    out(f"weights on the volume: {WEIGHTS_DIR}/{IMAGENET_WEIGHTS_FILE} ({path.stat().st_size / 1e6:.1f} MB, sha256 "
        f"{received[:12]}); training and tuning pods load them from there instead of downloading")
    return 0
