"""Whether the hot path runs compiled, and the guard against a stale compiled module.

setup.py compiles the modules below with Cython next to their .py files, where the import system prefers them.
A built module older than its .py or .pxd would silently run the old code, so in a checkout (the tree that builds
them, with setup.py) the package refuses to import until it is rebuilt. The set is built, and refused, as a whole.
"""
from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# The relay, and the pooler state and login settings that a login, a logout and a hand-off read: compiled with
# the C types of their .pxd files, which cimport each other's.
HOT_MODULES = ("objects", "server", "client", "app", "login")
# The rest of a login and a logout (a connection per transaction runs them all): compiled as they are, without
# types, which takes the interpreter's dispatch out of their calls (bench/README.md, "A compiled hot path"), but
# for the connection lines' path in logsink and param_key in session, typed in their .pxd files.
UNTYPED_MODULES = ("logsink", "session", "protocol", "config", "identity", "registry", "counters", "tls",
                   "access")
COMPILED_MODULES = HOT_MODULES + UNTYPED_MODULES
REBUILD = "scripts/build-hotpath.sh"
PACKAGE = Path(__file__).parent


def build_problems(package: Path = PACKAGE) -> list[str]:
    """What is wrong with the checkout's built modules: one older than its .py (or, for a hot module, a hot .pxd),
    or only some of them built (the hot modules cimport each other's types, so they work only together; the rest
    are built with them). None outside a checkout (no setup.py next to the package): an install's file times
    mean nothing."""
    if not (package.parent / "setup.py").exists():
        return []
    found, unbuilt = [], []
    pxds = [package / f"{m}.pxd" for m in HOT_MODULES]
    for name in COMPILED_MODULES:
        # A module's own .pxd types it; one of the hot modules' reaches them all.
        own = [package / f"{name}.py", package / f"{name}.pxd"]
        sources = [p for p in dict.fromkeys(own + (pxds if name in HOT_MODULES else [])) if p.exists()]
        built = [package / f"{name}{suffix}" for suffix in EXTENSION_SUFFIXES if (package / f"{name}{suffix}").exists()]
        if not built:
            unbuilt.append(name)
        for module in built:
            if newer := [p.name for p in sources if p.stat().st_mtime > module.stat().st_mtime]:
                found.append(f"{module} is older than {' and '.join(newer)}")
    if unbuilt and len(unbuilt) < len(COMPILED_MODULES):
        found.append(f"{', '.join(unbuilt)} not built while the others are")
    return found


def refuse_stale(package: Path = PACKAGE) -> None:
    if problems := build_problems(package):
        raise ImportError(f"stale compiled hot path: {'; '.join(problems)}. Rebuild it with {REBUILD} "
                          f"(or delete pooler/*.so to run pure Python)")


def is_compiled() -> bool:
    """True when every compiled module imports from its extension rather than its .py file."""
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        if spec is None or not (spec.origin or "").endswith(tuple(EXTENSION_SUFFIXES)):
            return False
    return True


def describe() -> str:
    return "hot path compiled (Cython)" if is_compiled() else "hot path pure Python"
