#!/usr/bin/env bash
# The quick start: installs what is missing, then runs a local PostgreSQL and a maitred pooler in front of it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec python3 -m maitred.quickstart "$@"
