#!/usr/bin/env bash
# Builds the driver programs of tests/drivers once each, into ~/.cache/maitred/drivers/<driver>/<hash of its
# sources>: node-postgres's node_modules by `npm ci` from the lockfile, pgjdbc's shaded jar by Maven (with its
# local repository in the same cache). Later runs find the build there and need no network. Prints the path
# of each build: node_modules for node-postgres, the jar for pgjdbc. Arguments: the drivers (default: both).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/maitred/drivers"
mkdir -p "$cache"

key() { cat "$@" | sha256sum | cut -c1-16; }

# Runs a build command quietly; its output only when it fails.
quiet() {
  local log
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; return 1; }
  rm -f "$log"
}

node_postgres() {
  local src=tests/drivers/node-postgres out tmp
  out="$cache/node-postgres/$(key "$src/package.json" "$src/package-lock.json")"
  if [ ! -d "$out/node_modules" ]; then
    mkdir -p "$cache/node-postgres"
    tmp="$(mktemp -d "$out.XXXXXX")"
    cp "$src/package.json" "$src/package-lock.json" "$tmp/"
    quiet npm ci --prefix "$tmp" --omit=dev --no-audit --no-fund
    mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"   # another run got there first
  fi
  echo "$out/node_modules"
}

pgjdbc() {
  local src=tests/drivers/pgjdbc out tmp
  out="$cache/pgjdbc/$(key "$src/pom.xml" $(find "$src/src" -type f | sort))"
  if [ ! -f "$out/driver-pgjdbc.jar" ]; then
    mkdir -p "$cache/pgjdbc"
    tmp="$(mktemp -d "$out.XXXXXX")"
    quiet mvn -B -f "$src/pom.xml" -Dmaven.repo.local="$cache/m2" -Dbuild.dir="$tmp/target" package
    mv "$tmp/target/driver-pgjdbc.jar" "$tmp/"
    rm -rf "$tmp/target"
    mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
  fi
  echo "$out/driver-pgjdbc.jar"
}

drivers=("$@")
[ $# -gt 0 ] || drivers=(node-postgres pgjdbc)
for driver in "${drivers[@]}"; do
  case "$driver" in
    node-postgres) node_postgres ;;
    pgjdbc) pgjdbc ;;
    *) echo "unknown driver: $driver" >&2; exit 2 ;;
  esac
done
