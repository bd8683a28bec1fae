#!/usr/bin/env bash
# Build the local cluster (make cluster-build) from Kubernetes' own Go modules.
#   xray/localcluster/build.sh            -> prints the directory holding the binaries
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and etcd come from go/ (go.mod
# pins k8s.io/kubernetes and replaces its ./staging modules by their published versions); CoreDNS from
# coredns/ (its own module: only the plugins the node needs); KWOK from `go install`; the pause program
# (the sandbox's first process) from the C file in the k8s.io/kubernetes module, with gcc -static. The result
# is cached outside the clone, keyed on the version and on the hash of the Go module files and of this
# script, so a second `make test` on the same machine does not rebuild.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="v1.34.4"
KWOK_VERSION="v0.8.0"
key="$(cat "$here/go/go.mod" "$here/go/go.sum" "$here/coredns/go.mod" "$here/coredns/go.sum" "$here/coredns/main.go" \
  "$here/build.sh" | sha256sum | cut -c1-12)"
cache="${XRAY_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xray}/k8s-${K8S_VERSION}-${key}"
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kwok coredns pause)

complete() { for b in "${bins[@]}"; do [[ -x "$cache/bin/$b" ]] || return 1; done; [[ -d "$cache/kwok-stages" ]]; }
if complete; then echo "$cache"; exit 0; fi

command -v go >/dev/null || { echo "building the local control plane needs Go (>= 1.24) on PATH" >&2; exit 1; }
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "building Kubernetes $K8S_VERSION control plane, node + KWOK $KWOK_VERSION into $cache (cold build: tens of minutes on 2 cores)" >&2

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
(
  cd "$here/go"
  # One `go build` for all six: the packages they share compile once.
  go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ./cmd/etcd
)
(cd "$here/coredns" && go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .)
pause_c="$(cd "$here/go" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
command -v gcc >/dev/null || { echo "building the pause program needs gcc (apt-get install gcc libc6-dev)" >&2; exit 1; }
gcc -Os -static -DVERSION=v3.10-xray -o "$tmp/pause" "$pause_c"

GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

# KWOK ships its stages as data in its module, not as defaults: keep its stage files beside the binaries
# (the control plane picks the node/pod lifecycles and the chaos stage from them).
kwok_mod="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
mkdir -p "$tmp/kwok-stages"
for d in node/fast pod/fast pod/general pod/chaos; do
  for f in "$kwok_mod/$d"/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] || cp "$f" "$tmp/kwok-stages/${d//\//-}-$(basename "$f")"
  done
done

mkdir -p "$cache/bin"
for b in "${bins[@]}"; do mv "$tmp/$b" "$cache/bin/$b"; done
rm -rf "$cache/kwok-stages"; mv "$tmp/kwok-stages" "$cache/kwok-stages"
echo "built in $(( $(date +%s) - start )) s" >&2
echo "$cache"
