#!/usr/bin/env bash
# Installs Eclipse EDC control-plane class paths from Maven Central, one per version:
#   $SYSTEMS_DIR/edc-<version>/lib/*.jar
# (e2e/src/systems/edc.rs runs `java -cp 'lib/*' org.eclipse.edc.boot.system.runtime.BaseRuntime`).
# What is on the class path is e2e/systems/edc/pom.xml: controlplane-base-bom + iam-mock, and
#   $SYSTEMS_DIR/edc-<version>/ext/participant-policy.jar
# compiled here from e2e/systems/edc/participant-policy (the participant constraints a Factory-X
# connector's policy extension evaluates; rebuilt when its sources change).
#
# Usage: SYSTEMS_DIR=… bash e2e/systems/edc/install.sh [version …]
#   versions also from EDC_VERSIONS (space-separated); default 0.15.1 (see edc.rs for why).
# Needs java (17+) and mvn on PATH and Maven Central. A version already installed is skipped (its
# lib/ is only ever renamed into place complete, with a .complete marker).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
systems_dir="${SYSTEMS_DIR:-$root/target/systems}"
default_versions="0.15.1"
if [ $# -gt 0 ]; then versions=("$@"); else read -r -a versions <<<"${EDC_VERSIONS:-$default_versions}"; fi

for tool in java javac jar mvn; do
  command -v "$tool" >/dev/null || { echo "edc: $tool is not on PATH (Debian: apt-get install openjdk-17-jdk-headless maven)" >&2; exit 1; }
done

# The participant-policy extension, compiled against one version's jars into its ext/.
build_extension() {
  local target=$1 sources sum
  sources="$here/participant-policy/src"
  sum=$(cd "$sources" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$target/ext/.source-sha256" 2>/dev/null)" = "$sum" ]; then
    echo "edc: participant-policy extension up to date in $target/ext"
    return
  fi
  rm -rf "$target/ext.partial" && mkdir -p "$target/ext.partial/classes"
  javac --release 17 -Xlint:all -Werror -cp "$target/lib/*" -d "$target/ext.partial/classes" \
    $(find "$sources" -name '*.java')
  cp -r "$sources/META-INF" "$target/ext.partial/classes/"
  jar --create --file "$target/ext.partial/participant-policy.jar" -C "$target/ext.partial/classes" .
  rm -rf "$target/ext.partial/classes"
  echo "$sum" >"$target/ext.partial/.source-sha256"
  rm -rf "$target/ext"
  mv "$target/ext.partial" "$target/ext"
  echo "edc: built the participant-policy extension into $target/ext"
}

for version in "${versions[@]}"; do
  target="$systems_dir/edc-$version"
  if [ -f "$target/lib/.complete" ]; then
    echo "edc $version: already installed in $target/lib ($(cat "$target/lib/.complete") jars)"
    build_extension "$target"
    continue
  fi
  echo "edc $version: resolving controlplane-base-bom + iam-mock from Maven Central into $target/lib"
  mkdir -p "$target"
  rm -rf "$target/lib.partial"
  # -q hides Maven's download chatter; errors still show.
  mvn -B -q -Dstyle.color=never -f "$here/pom.xml" -Dedc.version="$version" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$target/lib.partial"
  count=$(find "$target/lib.partial" -name '*.jar' | wc -l)
  if [ "$count" -eq 0 ]; then
    echo "edc $version: Maven copied no jars" >&2
    exit 1
  fi
  echo "$count" >"$target/lib.partial/.complete"
  rm -rf "$target/lib"
  mv "$target/lib.partial" "$target/lib"
  echo "edc $version: installed $count jars ($(du -sh "$target/lib" | cut -f1))"
  build_extension "$target"
done
