#!/usr/bin/env bash
# Installs what the tests and `make demo` need besides Rust: Debian's mosquitto and
# rabbitmq-server packages, when they are missing. As root it runs apt-get; otherwise it prints
# the command to run and fails. The packages' own services are not used (and not started here):
# the dev stack (e2e/src/brokers) starts its own instances on free 127.0.0.1 ports with its own
# CA, so a packaged instance elsewhere would not collide.
# kubectl is optional: `make demo` uses it when it is on PATH and says what it uses otherwise.
set -euo pipefail

need=()
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]}; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  echo "== installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

{ mosquitto -h 2>&1 || true; } | head -1
dpkg-query -W -f='rabbitmq-server ${Version}\n' rabbitmq-server 2>/dev/null || echo "rabbitmq-server (not from a Debian package)"
