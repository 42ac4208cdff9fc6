#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs unit, integration, e2e and benchmark-harness tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec python3 -m pytest -q -p no:cacheprovider "$@"
