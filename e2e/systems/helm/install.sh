#!/usr/bin/env bash
# The `helm` command for the chart tests, built with `go build` from the Go module proxy
# (helm.sh/helm/v4, go.mod beside this script) into $SYSTEMS_DIR/helm-<version>/helm.
# Cached by version and go.sum; the first build takes 2–4 minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SYSTEMS_DIR=${SYSTEMS_DIR:-$here/../../../target/systems}
version=$(awk '$1 == "helm.sh/helm/v4" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")
out="$SYSTEMS_DIR/helm-$version"
stamp=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
if [ -x "$out/helm" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "helm $version: cached in $out"
  exit 0
fi
echo "building helm $version"
mkdir -p "$out"
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
  -o "$out/helm" helm.sh/helm/v4/cmd/helm)
echo "$stamp" > "$out/.stamp"
"$out/helm" version --short
