"""`python -m xray.localcluster COMMAND` (the make cluster-* and image-load targets): see USAGE."""

import os
import sys
from pathlib import Path

from xray.localcluster import host
from xray.localcluster.controlplane import DEFAULT_ROOT, ControlPlane, ControlPlaneError, build

USAGE = """usage: python -m xray.localcluster COMMAND
  up [--no-node]        start the cluster under $XRAY_CLUSTER_ROOT (default build/cluster); --no-node: KWOK only
  down                  stop it, take back what the node added to the host, remove its data (logs stay)
  build                 build (or find in the cache) the binaries; prints their folder
  image NAME[:TAG]...   build the project image from the Dockerfile (cached by content) and load it into the
                        node's containerd under each NAME
  image-archive         build the project image's archive only (no cluster needed); prints its path
  derived NAME:TAG DIR  build DIR/Dockerfile FROM the project image (build argument PROJECT_IMAGE; cached by
                        content) and load it into the node under NAME:TAG
  kueue up|down|build   install Kueue (built from its Go module, cached) on the running cluster, take it out
                        again, or only build it (no cluster needed)"""


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def _running(plane: ControlPlane, root: Path) -> ControlPlane:
    """The cluster the command works on, or the one line that says to start it."""
    if not plane.running():
        raise ControlPlaneError(f"no local cluster runs at {root}: make cluster-up first")
    return plane


def main(argv: list[str]) -> int:
    from xray.localcluster import images, kueue

    if not argv or argv[0] not in ("up", "down", "build", "image", "image-archive", "derived", "kueue") \
            or argv[0] == "kueue" and (len(argv) != 2 or argv[1] not in ("up", "down", "build")) \
            or argv[0] != "up" and "--no-node" in argv or argv[0] == "image" and len(argv) < 2 \
            or argv[0] == "derived" and (len(argv) != 3 or ":" not in argv[1]) \
            or argv[0] in ("down", "build", "image-archive") and len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    root = Path(os.environ.get("XRAY_CLUSTER_ROOT", DEFAULT_ROOT))
    plane = ControlPlane(root)
    try:
        if argv[0] == "build":
            print(build())
        elif argv[0] == "up":
            node = "--no-node" not in argv
            kubeconfig = plane.up(node=node)
            what = "control plane, node xray-node and 2 KWOK nodes" if node else "control plane and 2 KWOK nodes"
            print(f"{what} up: KUBECONFIG={kubeconfig} (logs in {plane.logs})")
        elif argv[0] == "kueue":
            if argv[1] == "build":
                print(kueue.build(_log))
            elif argv[1] == "up":
                kueue.up(_running(plane, root), log=_log)
                print(f"Kueue {kueue.VERSION} runs in namespace {kueue.NAMESPACE}: make a ClusterQueue and a "
                      "LocalQueue (docs/kubernetes.md, Gang admission with Kueue), then QUEUE=<local queue>")
            else:
                kueue.down(_running(plane, root))
                print(f"Kueue {kueue.VERSION} removed (its CRDs, queues and workloads with it)")
        elif argv[0] == "image-archive":
            print(images.project_archive(log=_log))
        elif argv[0] == "derived":
            _running(plane, root)
            context = Path(argv[2])
            if not (context / "Dockerfile").is_file():
                raise ControlPlaneError(f"{context} has no Dockerfile")
            name = argv[1].split(":", 1)[0].rsplit("/", 1)[-1]
            archive = images.derived_archive(name, context, log=_log)
            plane.load_image(archive, argv[1])
            print(f"loaded {argv[1]} into node xray-node ({archive.name})")
        elif argv[0] == "image":
            _running(plane, root)
            archive = images.project_archive(log=_log)
            plane.load_image(archive, *argv[1:])
            print(f"loaded {', '.join(argv[1:])} into node xray-node ({archive.name})")
        else:
            stopped = plane.down()
            print(f"stopped {', '.join(stopped) or 'nothing (not running)'}; data removed, logs kept in {plane.logs}")
    except (ControlPlaneError, host.HostError, images.ImageError, kueue.KueueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


sys.exit(main(sys.argv[1:]))
