"""What the kubelet does to a container's environment and arguments, re-implemented for one purpose: running
a Job's command on this machine's files (tests/test_cluster_entrypoints.py), which a real node cannot do.

Only the parts those Jobs use: envFrom ConfigMaps, literal values, and ``$(VAR)`` in args. Downward-API fields
(``fieldRef``, ``resourceFieldRef``) are left to the real kubelet. tests/test_k8s_real_node.py checks this
against the real kubelet on the rendered train Job: the same objects must give the same argv here and there.
"""

from __future__ import annotations

import re


def container_env(objects: list[dict], container: dict, mapping: dict[str, str] | None = None) -> dict[str, str]:
    """envFrom ConfigMaps, then literal env values (later wins, as in the kubelet); values found in ``mapping``
    (paths as the pods see them) are replaced by the local ones."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    mapping = mapping or {}
    return {k: mapping.get(v, v) for k, v in env.items()}


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` replaced by its value (every reference in these manifests is defined)."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]
