#!/usr/bin/env bash
# Fails when a secret that a test registered (e2e::logs::register_secret) appears in the tracing
# output of the test run (MQTT_DSP_TEST_LOG). Never prints a secret: only how many leaked.
set -euo pipefail
log=${1:?usage: check-log-secrets.sh <tracing log>}
secrets="$log.secrets"
if [ ! -s "$log" ] || [ ! -s "$secrets" ]; then
  echo "secret leak check: no log or no registered secrets (nothing was captured)" >&2
  exit 1
fi
leaked=0
while IFS= read -r secret; do
  [ -n "$secret" ] || continue
  if grep -aqF -- "$secret" "$log"; then leaked=$((leaked + 1)); fi
done < <(sort -u "$secrets")
lines=$(wc -l < "$log")
count=$(sort -u "$secrets" | wc -l)
if [ "$leaked" -gt 0 ]; then
  echo "secret leak check: $leaked of $count registered secrets appear in $lines log lines ($log)" >&2
  exit 1
fi
echo "secret leak check: none of $count registered secrets in $lines log lines"
