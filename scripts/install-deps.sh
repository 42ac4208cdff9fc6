#!/usr/bin/env bash
# Installs what maitred and its tests need, when missing: Debian's PostgreSQL, PgBouncer, Prometheus (with
# promtool), node-exporter, valgrind and Lua 5.1 packages, a JDK, Maven, Node.js and npm for the driver tests (whose
# npm and Maven dependencies scripts/build-drivers.sh fetches once into ~/.cache/maitred/drivers), what the
# real node runs on (containerd, runc, the CNI plugins, buildah, debootstrap, iptables), the Python
# distribution with its test and benchmark extras in the checkout's own virtual environment .venv, and the
# Kubernetes binaries the e2e tests run; then gcc and Python's headers build the compiled hot path
# (scripts/build-hotpath.sh). Quiet, and safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's python3, the only one a fresh Debian has; it refuses `pip install` outside a virtual environment
# (PEP 668), so the distribution goes into .venv and nothing into the system's site-packages.
python="${MAITRED_PYTHON:-/usr/bin/python3}"
[ -x "$python" ] || python="$(command -v python3)"

need_apt=()
has() { command -v "$1" >/dev/null 2>&1; }
has pgbench && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
has psql || need_apt+=(postgresql-client)
has pgbouncer || need_apt+=(pgbouncer)
has openssl || need_apt+=(openssl)
"$python" -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
# The compiled hot path (setup.py): a C compiler with the C library's headers, and Python's headers.
has gcc && [ -e /usr/include/stdio.h ] || need_apt+=(gcc libc6-dev)
[ -e "$("$python" -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ] || need_apt+=(python3-dev)
has containerd && has ctr || need_apt+=(containerd)
has runc || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
has buildah || need_apt+=(buildah)
has debootstrap || need_apt+=(debootstrap)
has iptables || need_apt+=(iptables)
has prometheus || need_apt+=(prometheus)
has prometheus-node-exporter || need_apt+=(prometheus-node-exporter)
has valgrind || need_apt+=(valgrind)   # python3 -m bench instructions (callgrind), and its harness test
has lua5.1 || need_apt+=(lua5.1)   # runs the chart's Argo CD health check (Argo CD's Lua is 5.1)
has java && has javac || need_apt+=(default-jdk-headless)   # pgjdbc and HikariCP (tests/drivers/pgjdbc)
has mvn || need_apt+=(maven)
has node || need_apt+=(nodejs)                               # node-postgres (tests/drivers/node-postgres)
has npm || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts a packaged cluster, a pgbouncer, a prometheus, a node-exporter and a containerd service on
# install; maitred's tests start their own.
for svc in postgresql pgbouncer prometheus prometheus-node-exporter containerd; do
  (has service && service "$svc" stop >/dev/null 2>&1) || true
done

if [ ! -x .venv/bin/python ]; then
  echo "making the virtual environment .venv with $python"
  "$python" -m venv .venv
fi
if [ ! -e .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ] || [ setup.py -nt .venv/.installed ]; then
  echo "installing the maitred Python distribution with its test and benchmark extras into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[local,test,bench]"
  touch .venv/.installed
fi
# The install above builds the compiled hot path; this rebuilds it once a hot .py or .pxd has changed since.
scripts/build-hotpath.sh .venv/bin/python

scripts/build-drivers.sh >/dev/null

# etcd, the Kubernetes binaries and helm for the e2e tests and the quick start: built once from e2e/k8s with
# Go (about 15 minutes on 2 cores), then reused from ~/.cache/maitred.
e2e/build-binaries.sh >/dev/null
