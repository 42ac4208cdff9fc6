"""The quick start as a user runs it, the README's `scripts/quickstart.sh` with Debian's python3 first on PATH,
in a temporary state dir and on free ports: the setup makes and uses the checkout's .venv, the whole product
comes up, a query goes through the pooler, and when it stops nothing it started is left running.

Every process the quick start starts inherits MAITRED_QUICKSTART_DIR, a fresh folder per test, which is how
the leftovers are found without mistaking anyone else's processes for them.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from maitred.local.controlplane import cached_binaries_dir, free_port
from tests.support import missing

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BOUND = 180  # seconds: the quick start takes about 15 on a warm machine
DEBIAN_PYTHON = Path("/usr/bin/python3")
# A fresh Debian's PATH: its python3 is the only one; Go's default place stays reachable for the build.
DEBIAN_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin"


@pytest.fixture
def quickstart():
    """Runs the quick start in its own session; afterwards, kills (by pid) whatever it left behind.

    The state dir is not under pytest's tmp_path: PostgreSQL runs as `postgres` when the tests run as root,
    and must reach its folder."""
    if not shutil.which("psql") or cached_binaries_dir() is None or not DEBIAN_PYTHON.exists():
        missing("PostgreSQL, the Kubernetes binaries or Debian's python3 are missing "
                "(scripts/install-deps.sh provides them)")
    state = Path(tempfile.mkdtemp(prefix="maitred-quickstart-"))
    state.chmod(0o755)
    ports = {"postgres": free_port(), "pooler": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYENV"))}
    env.update(MAITRED_QUICKSTART_DIR=str(state), PATH=DEBIAN_PATH)

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(["scripts/quickstart.sh", "--postgres-port", str(ports["postgres"]),
                                 "--port", str(ports["pooler"]), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    start.state, start.ports = state, ports
    yield start
    for pid in leftovers(state):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(state, ignore_errors=True)


def leftovers(state: Path) -> list[int]:
    """Pids of the processes that carry this test's state dir in their environment."""
    marker = f"MAITRED_QUICKSTART_DIR={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass  # gone, or not ours to read
    return found


def test_the_setup_puts_maitred_in_the_checkouts_venv_of_debians_python_and_not_in_the_system():
    if not DEBIAN_PYTHON.exists() or not (ROOT / ".venv").exists():
        missing("Debian's python3 or the checkout's .venv (scripts/install-deps.sh makes it)")
    base = subprocess.run([ROOT / ".venv/bin/python", "-c", "import sys, maitred; print(sys.base_prefix, maitred.__file__)"],
                          capture_output=True, text=True, cwd="/", env={"PATH": DEBIAN_PATH})
    assert base.stdout.split() == ["/usr", str(ROOT / "maitred" / "__init__.py")], base.stderr
    system = subprocess.run([DEBIAN_PYTHON, "-c", "import maitred"], capture_output=True, text=True, cwd="/",
                            env={"PATH": DEBIAN_PATH})
    assert "ModuleNotFoundError" in system.stderr


def test_check_brings_up_everything_serves_a_query_and_stops_it_all(quickstart):
    proc = quickstart("--check")
    out, _ = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, out
    port = quickstart.ports["pooler"]
    assert f"PGPASSWORD=change-me psql -h 127.0.0.1 -p {port} -U app shop" in out
    assert "it answered app@shop, PostgreSQL" in out
    table = out[out.index("kubectl get pgp -A\n"):].splitlines()
    assert re.split(r"\s{2,}", table[2].strip())[:8] == ["shop", "shop-pooler", "deployment", "transaction", "1/1",
                                                         "20", "25", "True"]
    assert "AllReplicasReady" in out and "export KUBECONFIG=" in out
    sizes = [tuple(map(int, m)) for m in re.findall(r"  pool (\d+) -> (\d+)  ", out)]
    assert any(b > a for a, b in sizes) and any(b < a for a, b in sizes), out  # the burst: grown, given back
    assert out.rstrip().endswith("==> stopped")
    assert leftovers(quickstart.state) == []


def test_ctrl_c_in_the_foreground_stops_everything(quickstart):
    proc = quickstart()
    lines: list[str] = []
    deadline = time.monotonic() + BOUND
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line or time.monotonic() > deadline:
            break
    assert "Press Ctrl-C" in lines[-1], "".join(lines)
    started = set(leftovers(quickstart.state)) - {proc.pid}
    assert len(started) >= 5, "PostgreSQL, etcd, kube-apiserver, kube-controller-manager, operator, pooler"
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out
    assert out.rstrip().endswith("==> stopped")
    assert leftovers(quickstart.state) == []
