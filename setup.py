"""The compiled hot path: the modules pooler/compiled.py names, compiled by Cython (pure-Python mode: the relay's
objects.py, server.py and client.py with the types in the augmenting .pxd files next to them, the connect path's
modules as they are); everything else is in pyproject.toml.

The .py files stay the source a person reads and the fallback: without a C compiler or Python's headers the
build says so and the pure-Python modules run, except under CI=true, where that is a failure. The modules are
also built in place, next to their .py files, so that a checkout on PYTHONPATH imports them; scripts/
build-hotpath.sh rebuilds them when a .py or .pxd is newer (pooler/compiled.py refuses a stale one).
"""
import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The list lives with the package's stale-build check; read from its file, as the package may not import yet.
COMPILED_MODULES = runpy.run_path(str(Path(__file__).parent / "pooler" / "compiled.py"))["COMPILED_MODULES"]
DIRECTIVES = {"language_level": 3, "annotation_typing": False}
# gcc predefines the macro `unix`, which is also a Client field.
COMPILE_ARGS = ["-O2", "-Uunix"]
FALLBACK = ("maitred: the compiled hot path was not built ({why}); the pooler runs its pure-Python modules. "
            "Install a C compiler and Python's headers (Debian: gcc python3-dev) and run scripts/build-hotpath.sh.")


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class BuildHotPath(build_ext):
    """build_ext that falls back to pure Python when compiling fails, and always copies into the source tree."""

    def run(self):
        # An editable install builds elsewhere and maps the package to the checkout; the modules must sit next
        # to their .py files for a checkout on PYTHONPATH (how tests and benchmarks start poolers).
        if getattr(self, "editable_mode", False):
            self.inplace = True
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: setuptools raises several kinds of errors
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        message = FALLBACK.format(why=f"{type(exc).__name__}: {exc}".strip())
        if _ci():
            raise SystemExit(f"{message}\nCI=true: a pure-Python hot path is a failure.")
        print(f"\n{message}\n", file=sys.stderr)


def _extensions():
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # only when built outside pip's build environment without Cython
        if _ci():
            raise
        print(FALLBACK.format(why=exc), file=sys.stderr)
        return []
    modules = [Extension(f"pooler.{name}", [f"pooler/{name}.py"], extra_compile_args=COMPILE_ARGS)
               for name in COMPILED_MODULES]
    return cythonize(modules, compiler_directives=DIRECTIVES, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildHotPath})
