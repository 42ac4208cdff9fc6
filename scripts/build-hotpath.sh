#!/usr/bin/env bash
# Builds the compiled hot path (setup.py: the modules pooler/compiled.py names, by Cython) next to the .py files
# when one is missing or older than its .py or a .pxd, with the checkout's .venv (or the Python given).
# A no-op when up to date. Without a compiler or Python's headers the pure-Python modules run, except under
# CI=true, where that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"

# The hot modules cimport each other's types and work only together, and the set is built as a whole: any
# missing or stale, all are rebuilt, and removed first so that a failed build leaves the pure-Python modules
# rather than a stale or partial set. The names are COMPILED_MODULES in pooler/compiled.py.
modules=$(sed -n '/^HOT_MODULES = (/,/^COMPILED_MODULES/p' pooler/compiled.py | grep -v "^#" | grep -o '"[a-z_]*"' | tr -d '"')
[ -n "$modules" ] || { echo "build-hotpath.sh: no module names found in pooler/compiled.py" >&2; exit 1; }
stale=0
for name in $modules; do
  built=(pooler/"$name".cpython-*.so)
  [ -e "${built[0]}" ] || stale=1
  for so in "${built[@]}"; do
    for source in "pooler/$name.py" pooler/*.pxd; do
      if [ "$source" -nt "$so" ]; then stale=1; fi
    done
  done
done
if [ "$stale" -eq 1 ]; then
  for name in $modules; do rm -f pooler/"$name".cpython-*.so; done
fi
[ "$stale" -eq 1 ] || exit 0

# The build's requirements are pyproject.toml's [build-system] requires (Cython among them), in the venv.
"$python" -c "import Cython" >/dev/null 2>&1 || "$python" -m pip install -q --disable-pip-version-check \
  $("$python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
echo "building the compiled hot path (pooler/: $(echo $modules))"
# --force: a module whose C file did not change is still linked anew, so every built module is newer than
# every source the staleness check compares it with.
"$python" setup.py -q build_ext --inplace --force --parallel "$(nproc)"
