#!/usr/bin/env bash
# `make deploy`: installs or upgrades the Helm chart charts/mqtt-dsp-operator as release
# mqtt-dsp-operator in the current kube-context, like `helm upgrade --install --wait`.
#
# There is no helm binary: Helm is helm-python-sdk (Helm's Go SDK behind a C ABI) in the venv that
# charts/check.sh creates (target/chart-venv), and the SDK installs and upgrades releases itself.
#
#   NAMESPACE  release namespace, created if missing     (default mqtt-dsp-operator)
#   IMAGE      the operator image, repo[:tag] or repo@sha256:… (default: the chart's values)
#   VALUES     an extra values file, applied before IMAGE (default: none)
#   TIMEOUT    seconds to wait for the release to become ready (default 300)
#
# `deploy/deploy.sh --dry-run` (`make deploy DRY_RUN=1`) prints the manifests it would apply
# instead, rendered the same way but offline: no cluster or kube-context needed.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "make deploy: $*" >&2
  exit 1
}

dry_run=
case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  *) echo "usage: deploy/deploy.sh [--dry-run]" >&2; exit 2 ;;
esac

namespace=${NAMESPACE:-mqtt-dsp-operator}
if [ -n "${VALUES:-}" ] && [ ! -f "$VALUES" ]; then
  die "VALUES=$VALUES: no such file"
fi

context=
if [ -z "$dry_run" ]; then
  command -v kubectl >/dev/null \
    || die "kubectl is not installed; it tells which cluster to install into (kubectl config current-context)"
  if ! context=$(kubectl config current-context 2>&1) || [ -z "$context" ]; then
    die "no current kube-context (kubectl config current-context: ${context:-empty}).
Create a cluster (kind create cluster) or choose one (kubectl config use-context NAME), then run make deploy again."
  fi
fi

# The venv, exactly as charts/check.sh builds it (its block, so the pinned versions stay in one place).
venv_setup=$(sed -n '/^venv=/,/^fi$/p' charts/check.sh)
[ -n "$venv_setup" ] || die "cannot find the venv set-up in charts/check.sh"
eval "$venv_setup" >&2
"$venv/bin/python" -c 'import helm_python' || die "helm-python-sdk is not importable from $venv"

export DEPLOY_NAMESPACE=$namespace DEPLOY_CONTEXT=$context DEPLOY_DRY_RUN=$dry_run
export DEPLOY_IMAGE=${IMAGE:-} DEPLOY_VALUES=${VALUES:-} DEPLOY_TIMEOUT=${TIMEOUT:-300}
exec "$venv/bin/python" - <<'PY'
import os
import sys

import helm_python as helm
import yaml

RELEASE = "mqtt-dsp-operator"
CHART = "charts/mqtt-dsp-operator"
namespace = os.environ["DEPLOY_NAMESPACE"]
context = os.environ["DEPLOY_CONTEXT"] or None
dry_run = bool(os.environ["DEPLOY_DRY_RUN"])


def fail(message: str) -> None:
    print(f"make deploy: {message}", file=sys.stderr)
    sys.exit(1)


def image_values(image: str) -> dict:
    """repo[:tag] or repo@digest as the chart's image values (a registry port is no tag)."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return {"repository": repository, "digest": digest}
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return {"repository": image[:colon], "tag": image[colon + 1:], "digest": ""}
    return {"repository": image, "digest": ""}


values: dict = {}
if os.environ["DEPLOY_VALUES"]:
    with open(os.environ["DEPLOY_VALUES"]) as f:
        loaded = yaml.safe_load(f)
    if loaded is not None and not isinstance(loaded, dict):
        fail(f"VALUES={os.environ['DEPLOY_VALUES']} is not a YAML mapping")
    values = loaded or {}
if os.environ["DEPLOY_IMAGE"]:
    values["image"] = {**values.get("image", {}), **image_values(os.environ["DEPLOY_IMAGE"])}

chart = helm.Chart.load(CHART)
try:
    chart.validate_schema(values)
except helm.HelmValuesError as e:
    fail(f"the chart's values.schema.json refuses these values: {e}")
try:
    with helm.Config(namespace=namespace, kube_context=context) as cfg:
        if dry_run:
            release = cfg.install(chart, RELEASE, values, namespace=namespace, dry_run="client")
            print(release["manifest"])
            sys.exit(0)
        try:
            cfg.history(RELEASE, max_revisions=1)
            exists = True
        except helm.HelmNotFoundError:
            exists = False
        timeout = int(os.environ["DEPLOY_TIMEOUT"])
        if exists:
            # reset_values: the release gets exactly the chart's defaults plus VALUES and IMAGE.
            release = cfg.upgrade(chart, RELEASE, values, namespace=namespace, wait="watcher", timeout=timeout,
                                  reset_values=True)
        else:
            release = cfg.install(chart, RELEASE, values, namespace=namespace, wait="watcher", timeout=timeout,
                                  create_namespace=True)
except helm.HelmError as e:
    if dry_run:
        fail(f"rendering the chart failed: {e}")
    fail(f"helm upgrade --install failed: {e}\n"
         f"  see: kubectl -n {namespace} get pods; kubectl -n {namespace} logs deployment/{RELEASE}")
print(f"make deploy: release {RELEASE} revision {release.get('revision')} is {release.get('status')} "
      f"in namespace {namespace} of kube-context {context}")
PY
