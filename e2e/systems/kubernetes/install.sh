#!/usr/bin/env bash
# The real Kubernetes control plane for the tests (e2e/src/systems/kubernetes.rs):
#   - etcd from Debian's etcd-server package (its own service is not used);
#   - kube-apiserver and kube-controller-manager built with `go build` from the Go module proxy
#     (go.mod beside this script: k8s.io/kubernetes with each staging module replaced by its
#     published v0.x.y), into $SYSTEMS_DIR/kubernetes-<version>/.
# Cached by version and by go.sum: a second run only checks. The first build takes 6–10 minutes on
# 2 cores; Go's module and build caches make a rebuild after a clean checkout about a minute.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SYSTEMS_DIR=${SYSTEMS_DIR:-$here/../../../target/systems}

if ! command -v etcd >/dev/null; then
  echo "installing Debian's etcd-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; }
  # The package may start its own etcd on the default ports; the tests start theirs.
  systemctl disable --now etcd >/dev/null 2>&1 || service etcd stop >/dev/null 2>&1 || true
fi
etcd --version | awk 'NR == 1'

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
out="$SYSTEMS_DIR/kubernetes-$version"
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "kube-apiserver and kube-controller-manager $version: cached in $out"
  exit 0
fi
echo "building kube-apiserver and kube-controller-manager $version (first time on this machine: 6–10 minutes)"
mkdir -p "$out"
# Without -X the servers report v0.0.0-master, which kubectl and Helm's kubeVersion checks refuse.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
(cd "$here" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
echo "$stamp" > "$out/.stamp"
"$out/kube-apiserver" --version
