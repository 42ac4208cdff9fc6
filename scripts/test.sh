#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs unit, integration, e2e and benchmark-harness tests
# with the checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
