"""Whether the hot path runs compiled, and the guard against a stale compiled module.

setup.py compiles pooler/objects.py, server.py and client.py with Cython next to their .py files, where the
import system prefers them. A built module older than its .py or .pxd would silently run the old code, so in a
checkout (the tree that builds them, with setup.py) the package refuses to import until it is rebuilt.
"""
from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

HOT_MODULES = ("objects", "server", "client")
REBUILD = "scripts/build-hotpath.sh"
PACKAGE = Path(__file__).parent


def stale_modules(package: Path = PACKAGE) -> list[str]:
    """One line per built hot module older than its .py or a hot .pxd; none outside a checkout (no setup.py)."""
    if not (package.parent / "setup.py").exists():
        return []
    found = []
    for name in HOT_MODULES:
        # The three cimport each other's types, so a .pxd change reaches every one of them.
        sources = [p for p in (package / f"{name}.py", *(package / f"{m}.pxd" for m in HOT_MODULES)) if p.exists()]
        for built in (package / f"{name}{suffix}" for suffix in EXTENSION_SUFFIXES):
            newer = [p.name for p in sources if built.exists() and p.stat().st_mtime > built.stat().st_mtime]
            if newer:
                found.append(f"{built} is older than {' and '.join(newer)}")
    return found


def refuse_stale(package: Path = PACKAGE) -> None:
    if stale := stale_modules(package):
        raise ImportError(f"stale compiled hot path: {'; '.join(stale)}. Rebuild it with {REBUILD} "
                          f"(or delete the built module to run the pure-Python one)")


def is_compiled() -> bool:
    """True when every hot module imports from its compiled extension rather than its .py file."""
    for name in HOT_MODULES:
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        if spec is None or not (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES)):
            return False
    return True


def describe() -> str:
    return "hot path compiled (Cython)" if is_compiled() else "hot path pure Python"
