#!/usr/bin/env bash
# Installs what maitred and its tests need, when missing: Debian's PostgreSQL, PgBouncer, Prometheus and
# node-exporter packages, the Python distribution with its test and benchmark extras, and the Kubernetes
# binaries the e2e tests run. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v pgbench >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbouncer >/dev/null 2>&1 || need_apt+=(pgbouncer)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-node-exporter >/dev/null 2>&1 || need_apt+=(prometheus-node-exporter)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts a packaged cluster, a pgbouncer, a prometheus and a node-exporter service on install;
# maitred's tests start their own.
for svc in postgresql pgbouncer prometheus prometheus-node-exporter; do
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done

if ! python3 -c "import maitred, pooler, uvloop, scramp, hypothesis, psycopg, pytest_timeout, matplotlib" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .maitred/.installed ]; then
  echo "installing the maitred Python distribution with its test and benchmark extras"
  python3 -m pip install -q --disable-pip-version-check -e ".[test,bench]"
  mkdir -p .maitred && touch .maitred/.installed
fi

# etcd, kube-apiserver, kube-controller-manager, kubectl and helm for the e2e tests and the quick start:
# built once from e2e/k8s with Go (about 15 minutes on 2 cores), then reused from ~/.cache/maitred.
e2e/build-binaries.sh >/dev/null
