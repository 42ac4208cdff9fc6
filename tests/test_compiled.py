"""The compiled hot path (setup.py, pooler/compiled.py, scripts/build-hotpath.sh): under CI the tests run against
the compiled modules, and a built module older than its source is refused rather than run."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from pooler import compiled

from tests.support import missing

ROOT = Path(__file__).resolve().parent.parent
BUILT = EXTENSION_SUFFIXES[0]   # the suffix this interpreter imports first, e.g. .cpython-311-x86_64-linux-gnu.so


def test_hot_modules_are_the_compiled_ones():
    files = {name: importlib.import_module(f"pooler.{name}").__file__ for name in compiled.COMPILED_MODULES}
    if not all(f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files.values()):
        missing(f"the hot path runs pure Python ({files}); scripts/build-hotpath.sh builds it")
    assert compiled.is_compiled()


def test_version_says_whether_the_hot_path_is_compiled():
    out = subprocess.run([sys.executable, "-m", "maitred.cli", "pooler", "-V"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip().endswith(compiled.describe()), out


def test_the_startup_line_says_whether_the_hot_path_is_compiled(pooler):
    # Logged once the loop runs, after the port is bound (which is all the pooler fixture waits for).
    pooler.wait_log(f"process up: maitred pooler, pid {pooler.proc.pid}, {compiled.describe()}")


def scratch_tree(tmp_path: Path) -> Path:
    """A copy of the checkout's pooler package and setup.py, with a stand-in built module for each compiled module,
    newer than every source (the stale check reads only modification times, so nothing is compiled here)."""
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copytree(ROOT / "pooler", tmp_path / "pooler",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html"))
    sources = [p for p in (tmp_path / "pooler").iterdir() if p.suffix in (".py", ".pxd")]
    for source in sources:
        os.utime(source, (1_000_000, 1_000_000))
    for name in compiled.COMPILED_MODULES:
        built = tmp_path / "pooler" / f"{name}{BUILT}"
        built.write_bytes(b"")
        os.utime(built, (2_000_000, 2_000_000))
    return tmp_path


def edit(path: Path) -> None:
    os.utime(path, (3_000_000, 3_000_000))


def test_an_up_to_date_build_is_not_stale(tmp_path):
    assert compiled.build_problems(scratch_tree(tmp_path) / "pooler") == []


@pytest.mark.parametrize("edited, stale", [("client.py", ["client"]), ("app.py", ["app"]),
                                           ("objects.pxd", ["objects", "server", "client", "app", "login"]),
                                           ("logsink.pxd", ["logsink"])])
def test_a_source_edited_after_the_build_makes_its_built_modules_stale(tmp_path, edited, stale):
    package = scratch_tree(tmp_path) / "pooler"
    edit(package / edited)
    found = compiled.build_problems(package)
    assert [line.split("/")[-1].split(".")[0] for line in found] == stale
    assert all(f"older than {edited}" in line for line in found)


def test_an_installed_package_is_not_checked(tmp_path):
    """Outside a checkout (no setup.py next to the package) the install's file times mean nothing."""
    package = scratch_tree(tmp_path) / "pooler"
    (tmp_path / "setup.py").unlink()
    edit(package / "client.py")
    assert compiled.build_problems(package) == []


def test_a_partly_built_hot_path_is_refused(tmp_path):
    """The three cimport each other's types: a pure-Python client next to a compiled server cannot import."""
    package = scratch_tree(tmp_path) / "pooler"
    (package / f"client{BUILT}").unlink()
    assert compiled.build_problems(package) == ["client not built while the others are"]


def test_a_stale_built_module_refuses_to_import_and_names_the_rebuild(tmp_path):
    tree = scratch_tree(tmp_path)
    edit(tree / "pooler" / "client.py")
    out = subprocess.run([sys.executable, "-c", "import pooler.client"], cwd=tree, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(tree)})
    assert out.returncode != 0
    assert "ImportError: stale compiled hot path" in out.stderr
    assert f"client{BUILT} is older than client.py" in out.stderr
    assert compiled.REBUILD in out.stderr


def build_hotpath(tree: Path) -> subprocess.CompletedProcess:
    """scripts/build-hotpath.sh in the scratch tree, with /bin/false as its Python: any build attempt fails."""
    (tree / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "build-hotpath.sh", tree / "scripts")
    return subprocess.run(["bash", str(tree / "scripts" / "build-hotpath.sh"), "/bin/false"], capture_output=True,
                          text=True, timeout=60)


def test_build_hotpath_is_a_no_op_when_up_to_date(tmp_path):
    out = build_hotpath(scratch_tree(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""


def test_build_hotpath_removes_a_stale_set_even_when_the_build_fails(tmp_path):
    tree = scratch_tree(tmp_path)
    edit(tree / "pooler" / "server.py")
    out = build_hotpath(tree)
    assert out.returncode != 0
    assert not list((tree / "pooler").glob("*.so")), "left behind to shadow the edited server.py"
