#!/usr/bin/env bash
# Builds the compiled hot path (setup.py: pooler/objects.py, server.py, client.py by Cython) next to the .py
# files when one is missing or older than its .py or a hot .pxd, with the checkout's .venv (or the Python given).
# A no-op when up to date. Without a compiler or Python's headers the pure-Python modules run, except under
# CI=true, where that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"

# The three cimport each other's types and work only together: any missing or stale, all are rebuilt, and
# removed first so that a failed build leaves the pure-Python modules rather than a stale or partial set.
stale=0
for name in objects server client; do
  built=(pooler/"$name".cpython-*.so)
  [ -e "${built[0]}" ] || stale=1
  for so in "${built[@]}"; do
    for source in "pooler/$name.py" pooler/objects.pxd pooler/server.pxd pooler/client.pxd; do
      if [ "$source" -nt "$so" ]; then stale=1; fi
    done
  done
done
[ "$stale" -eq 0 ] || rm -f pooler/objects.cpython-*.so pooler/server.cpython-*.so pooler/client.cpython-*.so
[ "$stale" -eq 1 ] || exit 0

# The build's requirements are pyproject.toml's [build-system] requires (Cython among them), in the venv.
"$python" -c "import Cython" >/dev/null 2>&1 || "$python" -m pip install -q --disable-pip-version-check \
  $("$python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
echo "building the compiled hot path (pooler/objects.py, server.py, client.py)"
# --force: a module whose C file did not change is still linked anew, so every built module is newer than
# every source the staleness check compares it with.
"$python" setup.py -q build_ext --inplace --force
