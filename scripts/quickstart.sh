#!/usr/bin/env bash
# The quick start: installs what is missing (the Kubernetes binaries are built the first time), then runs the
# whole product locally: PostgreSQL, a Kubernetes control plane, the operator, and the pooler of
# examples/postgrespooler.yaml in front of PostgreSQL. Ctrl-C stops it all. Arguments go to
# `python -m maitred.quickstart` in .venv (--check, --node, --state-dir, --postgres-port, --port).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec .venv/bin/python -m maitred.quickstart "$@"
