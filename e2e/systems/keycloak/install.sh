#!/usr/bin/env bash
# Installs Keycloak's Quarkus distribution (org.keycloak:keycloak-quarkus-dist, a zip on Maven
# Central) under $SYSTEMS_DIR/keycloak-<version>/ for e2e/src/systems/keycloak.rs, and runs its
# Quarkus build step once so that every test binary starts it with `start --optimized` (the build
# pass otherwise runs on every start and costs tens of seconds).
#
# Needs only Java 17+ and Maven (Maven Central reachable). Cached by version and build options:
# a second run only reads the stamp file.
#
# Version: the newest 26.5 patch release. 26.5 is the newest minor whose every patch release is
# served here (26.5.0–26.5.6), it still supports OpenJDK 17 (the JDK on our machines), and a
# patch release of an established minor carries its fixes; 26.7 is too new to have seen patches.
set -euo pipefail
cd "$(dirname "$0")/../../.."

version=26.5.6
systems_dir=${SYSTEMS_DIR:-$PWD/target/systems}
mkdir -p "$systems_dir"
systems_dir=$(cd "$systems_dir" && pwd)
dest=$systems_dir/keycloak-$version
stamp=$dest/.mqtt-dsp-installed
# Build-time options (changing them needs another `kc.sh build`): the embedded H2 database on
# disk and the health endpoints on the management port. (`--cache` is a runtime option since 26.)
build_options=(--db=dev-file --health-enabled=true)
stamp_text="keycloak-quarkus-dist $version built with ${build_options[*]}, template database v1"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
  echo "keycloak: $version already installed in $dest"
  exit 0
fi

work=$(mktemp -d "$systems_dir/.keycloak-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "keycloak: fetching org.keycloak:keycloak-quarkus-dist:$version:zip with Maven"
mvn -B -ntp -q -Dstyle.color=never \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
  -Dartifact="org.keycloak:keycloak-quarkus-dist:$version:zip" \
  -DoutputDirectory="$work"

echo "keycloak: unpacking into $dest"
zip=$work/keycloak-quarkus-dist-$version.zip
if command -v unzip >/dev/null; then
  unzip -q "$zip" -d "$work/unpacked"
else
  # `jar` comes with every JDK; it does not keep the executable bits.
  mkdir "$work/unpacked"
  (cd "$work/unpacked" && jar xf "$zip")
fi
chmod +x "$work/unpacked/keycloak-$version"/bin/*.sh

echo "keycloak: kc.sh build ${build_options[*]}"
home=$work/unpacked/keycloak-$version
# The build writes lib/quarkus/ inside the distribution; a bounded heap keeps it polite on small
# machines. Keycloak writes its scratch files (vertx-cache, uploads) into the working directory.
(cd "$work" && JAVA_OPTS_APPEND="-Xmx512m" "$home/bin/kc.sh" build "${build_options[@]}") \
  >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; exit 1; }
grep -E "Quarkus augmentation completed" "$work/build.log" || true

# A template database: creating the schema and the master realm takes about 15 s of every first
# start, so it is done once here (`kc.sh export` initializes the database without starting the
# server) and each start copies the file. Keycloak creates its bootstrap admin only together with
# the master realm, so the admin is made here too, with a password random per installation that
# the launcher reads from template/admin-password (and registers as a secret to keep out of logs).
echo "keycloak: creating the template database (schema, master realm, bootstrap admin)"
mkdir -p "$work/template"
admin_password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
(cd "$work" && KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD="$admin_password" \
  JAVA_OPTS_APPEND="-Xmx512m -Djava.io.tmpdir=$work -Dquarkus.transaction-manager.object-store.directory=$work/tx" \
  "$home/bin/kc.sh" export --optimized --cache=local --realm master --file "$work/master.json" \
  "--db-url=jdbc:h2:file:$work/template/keycloakdb;NON_KEYWORDS=VALUE") \
  >"$work/template.log" 2>&1 || { tail -n 40 "$work/template.log"; exit 1; }
grep -q '"username" : "admin"' "$work/master.json" || {
  echo "keycloak: the template has no bootstrap admin"; tail -n 20 "$work/template.log"; exit 1
}
mkdir -p "$home/template"
cp "$work/template/keycloakdb.mv.db" "$home/template/"
(umask 077 && printf '%s' "$admin_password" >"$home/template/admin-password")

rm -rf "$dest"
mv "$home" "$dest"
echo "$stamp_text" >"$stamp"
echo "keycloak: $version installed in $dest"
