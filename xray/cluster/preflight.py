"""Pre-flight of a cluster step (`xray preflight`, which every make *-cluster target runs first): what can be
checked from the workstation (the image, the worker count, the run config, the claim, no job of the same name
still running), then the kustomization rendered (xray/cluster/render.py). Refusals are one line (ClusterError).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from xray.cluster.kube import ClusterError, api_call, load_clients
from xray.cluster.monitor import job_summary
from xray.cluster.render import PROJECT_IMAGE, WORKLOADS, RenderError, RenderRequest, render_kustomization, split_image


def _default_storage_class(storage) -> str | None:
    for item in storage.list_storage_class().items:
        if (item.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
            return item.metadata.name
    return None


def check_and_render(request: RenderRequest, out_dir: str | Path, check_cluster: bool = True) -> list[str]:
    """Checks what can be checked from here, renders the kustomization; returns warnings, raises ClusterError."""
    warnings = []
    if request.component in PROJECT_IMAGE:
        name, _ = split_image(request.image)
        if not name or name == "xray":
            raise ClusterError(f"set the project image (got {request.image!r}): make image push "
                               "IMAGE=registry.example.com/xray TAG=0.1.0, then pass the same IMAGE and TAG to this "
                               "target (the bare 'xray' image exists on no registry)")
    if request.workers < 1:
        raise ClusterError(f"WORKERS={request.workers} must be at least 1")
    data = request.data
    if request.component in ("train", "tune", "export") and ("://" in data or os.path.exists(data)):
        from xray.data import manifest as manifests

        try:
            manifest = manifests.read(data)
        except FileNotFoundError as error:
            raise ClusterError(str(error)) from None
        shards = len(manifest.shards["train"])
        if request.component == "train" and shards < request.workers:
            raise ClusterError(f"{data} has {shards} train shard(s) for {request.workers} workers: re-run xray shards "
                               f"with --num-shards >= {request.workers} so that every worker reads its own files")
    elif request.component in ("train", "tune", "export"):
        warnings.append(f"{data} is not readable from here (a path inside the pods?): shard count not checked")
    if request.config_file and not os.path.exists(request.config_file):
        warnings.append(f"CONFIG={request.config_file} is read by the pods from the volume: not validated here")
    if request.component == "promote":
        request = _check_promote(request, check_cluster)
    if request.component == "serving" and request.replicas < 0:
        raise ClusterError(f"REPLICAS={request.replicas} must be at least 1")
    try:
        render_kustomization(request, out_dir)
    except RenderError as error:
        raise ClusterError(str(error)) from None
    if check_cluster:
        warnings += _cluster_checks(request, out_dir)
    return warnings


def _check_promote(request: RenderRequest, check_cluster: bool) -> RenderRequest:
    """A label move needs a label and one source of the version; with the cluster at hand, running serving pods,
    whose names go into the Job so that its messages name pods rather than addresses."""
    args = list(request.promote)
    if "--label" not in args:
        raise ClusterError("set LABEL (stable or canary), and VERSION=N, FROM=canary or ROLLBACK=1: "
                           "make promote LABEL=stable VERSION=2")
    label = args[args.index("--label") + 1]
    if label not in ("stable", "canary"):
        raise ClusterError(f"LABEL={label} is not a version label; use stable or canary")
    if "--version" in args and not args[args.index("--version") + 1].isdigit():
        raise ClusterError(f"VERSION={args[args.index('--version') + 1]} is not a version number")
    if sum(flag in args for flag in ("--version", "--from-label", "--rollback")) > 1:
        raise ClusterError("give one of VERSION=N, FROM=label, ROLLBACK=1")
    if not check_cluster:
        return request
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, _, context = load_clients()
    apps = client.AppsV1Api()
    try:
        api_call(context, apps.read_namespaced_deployment, "xray-serving", request.namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        raise ClusterError(f"no TF Serving in namespace {request.namespace}: make deploy-serving first") from None
    pods = api_call(context, core.list_namespaced_pod, request.namespace, label_selector="xray.io/role=serving").items
    names = ",".join(f"{p.status.pod_ip}={p.metadata.name}" for p in pods if p.status.pod_ip)
    return dataclasses.replace(request, replica_names=names)


def _claim_spec(claim) -> tuple[str, tuple[str, ...], str]:
    spec = claim["spec"] if isinstance(claim, dict) else claim.spec.to_dict()
    resources = spec.get("resources") or {}
    return (spec.get("storageClassName") or spec.get("storage_class_name") or "",
            tuple(sorted(spec.get("accessModes") or spec.get("access_modes") or [])),
            str((resources.get("requests") or {}).get("storage", "")))


def _keep_claim(request: RenderRequest, claim, out_dir: str | Path) -> list[str]:
    """The storage step on an existing claim: its class, access modes and size cannot change (the API server
    refuses), so the rendered claim is pinned to what exists; asking for something else is refused here."""
    from xray.cluster.render import kustomize, pin_claim

    have_class, have_modes, have_size = _claim_spec(claim)
    wanted = next(o for o in kustomize(Path(out_dir)) if o["kind"] == "PersistentVolumeClaim")
    want_class, want_modes, want_size = _claim_spec(wanted)
    where = f"claim xray-data in namespace {request.namespace}"
    fix = (f"use another NAMESPACE, or delete the claim and the data on it (kubectl -n {request.namespace} delete pvc "
           "xray-data) and run make volume again")
    if request.storage_class and request.storage_class != have_class:
        raise ClusterError(f"{where} exists with storage class {have_class or '(none)'}, and a claim's class cannot "
                           f"change (STORAGE_CLASS={request.storage_class}): {fix}")
    if not set(want_modes) <= set(have_modes):
        raise ClusterError(f"{where} exists as {','.join(have_modes)} {have_size}; overlay {request.overlay} needs "
                           f"{','.join(want_modes)} {want_size}, and a claim's access modes cannot change: {fix}")
    pin_claim(out_dir, have_class, have_modes, have_size)
    return [f"{where} exists (class {have_class or '(none)'}, {','.join(have_modes)}, {have_size}, "
            f"{claim.status.phase}): kept as it is"]


def _cluster_checks(request: RenderRequest, out_dir: str | Path) -> list[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, batch, context = load_clients()
    warnings = []
    try:
        api_call(context, core.read_namespace, request.namespace)
        claim = api_call(context, core.read_namespaced_persistent_volume_claim, "xray-data", request.namespace)
        if claim.status.phase != "Bound" and request.component != "storage":
            warnings.append(f"volume claim xray-data is {claim.status.phase}: pods wait until it is bound "
                            "(needs a ReadWriteMany storage class on multi-node clusters; see STORAGE_CLASS)")
        if request.component == "storage":
            return _keep_claim(request, claim, out_dir)
    except ApiException as error:
        if error.status != 404:
            raise
        if request.component != "storage":
            raise ClusterError(f"namespace {request.namespace} or its volume claim xray-data does not exist: run "
                               f"make volume NAMESPACE={request.namespace} first (the namespace and the claim are a step "
                               "of their own, so that deleting a component never deletes the data)") from None
    if request.component == "storage":
        storage = client.StorageV1Api()
        if request.storage_class:
            try:
                api_call(context, storage.read_storage_class, request.storage_class)
            except ApiException as error:
                if error.status != 404:
                    raise
                names = ", ".join(c.metadata.name for c in api_call(context, storage.list_storage_class).items)
                raise ClusterError(f"STORAGE_CLASS={request.storage_class} does not exist in context {context}; "
                                   f"storage classes: {names or 'none'}") from None
        elif api_call(context, _default_storage_class, storage) is None:
            warnings.append("the cluster has no default storage class: the claim stays Pending until a volume is "
                            "provisioned for it (set STORAGE_CLASS, or create a PersistentVolume)")
    for kind, name, _ in WORKLOADS[request.component]:
        if kind != "Job" or request.component == "tune" and name == "xray-tune-chief":
            continue
        try:
            job = api_call(context, batch.read_namespaced_job, name, request.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            continue
        state = job_summary(job)[0]
        if state in ("running", "pending"):
            raise ClusterError(f"job {name} is {state} in {request.namespace}: watch it with "
                               f"xray jobs watch {name} -n {request.namespace}, or delete it first (make delete JOB={name})")
        warnings.append(f"job {name} ({state}) will be replaced; the workdir keeps its backup and results")
    return warnings
