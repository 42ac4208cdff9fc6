"""What the load is pointed at: PostgreSQL itself (direct), Debian's PgBouncer, or maitred.

PostgreSQL runs for the whole benchmark. Each pooler is started fresh for every measured run, from the same
settings (bench/poolconf.py), and stopped after it, so that no run inherits another run's memory or state.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterator

from maitred.local.postgres import LocalPostgres, free_port

from . import pgclient, poolconf
from .tls import TlsFiles

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGBOUNCER = "/usr/sbin/pgbouncer"
PR_SET_PDEATHSIG = 1

USER = "bench"
PASSWORD = "bench-secret"
DATABASE = "bench"
HOST = "127.0.0.1"


class TargetError(RuntimeError):
    """A target could not be started or did not become ready."""


@dataclass
class Endpoint:
    """Where clients connect, and the processes whose cost we charge to the target (none for direct)."""

    port: int
    pid: int | None = None
    host: str = HOST
    user: str = USER
    password: str = PASSWORD
    database: str = DATABASE


@dataclass(frozen=True)
class PoolSettings:
    pool_size: int
    max_client_conn: int
    auth_type: str
    tls: TlsFiles | None = None       # TLS on both sides of the pooler (S6)


def unprivileged() -> str | None:
    """PgBouncer refuses to run as root; when we are root it runs as Debian's `postgres` account."""
    return "postgres" if os.geteuid() == 0 else None


def die_with_parent() -> None:
    """In the pooler child: get SIGTERM when the harness dies, so a killed benchmark leaves no pooler behind.
    Runs after the switch to the unprivileged user, which would otherwise clear the setting."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def version_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


# -- PostgreSQL -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_postgres(settings: dict[str, str] | None = None) -> Iterator[LocalPostgres]:
    """A PostgreSQL cluster with the `bench` role (SCRAM password) owning a pgbench database of scale 1;
    `settings` override postgresql.conf (max_connections is 200 unless they say otherwise)."""
    with LocalPostgres(settings={"max_connections": "200", **(settings or {})}) as pg:
        pg.create_role(USER, PASSWORD, encryption="scram-sha-256")
        pg.create_database(DATABASE, owner=USER)
        init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", HOST, "-p", str(pg.port), "-U", USER,
                               DATABASE], env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)
        if init.returncode != 0:
            raise TargetError(f"pgbench -i failed:\n{init.stdout}")
        yield pg


def checkout_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH: its `pooler` and `bench` packages are the ones run."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=REPO + (os.pathsep + path if path else ""))


def client_env() -> dict[str, str]:
    """libpq settings for pgbench: the password, and no TLS or GSS negotiation round trip on any target."""
    return dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable", PGGSSENCMODE="disable")


# -- targets ----------------------------------------------------------------------------------------------


@dataclass
class Direct:
    """pgbench straight to PostgreSQL."""

    pg: LocalPostgres
    name: str = "direct"
    label: str = "direct"

    def unavailable(self) -> str | None:
        return None

    def inapplicable(self, load: str, auth_type: str) -> str | None:
        return "thousands of direct PostgreSQL connections are not possible" if load == "idle" else None

    def version(self) -> str:
        return version_line([os.path.join(self.pg.bindir, "postgres"), "--version"])

    @contextlib.contextmanager
    def serve(self, settings: PoolSettings) -> Iterator[Endpoint]:
        yield Endpoint(port=self.pg.port)


@dataclass
class _Pooler:
    """A pooler process started from a config file in a run folder of its own, ready once a client can log in
    and run a query through it."""

    pg: LocalPostgres
    start_timeout: float = 20.0
    stop_timeout: float = 10.0
    run_as: str | None = field(default=None)
    prefix: tuple[str, ...] = ()        # a program the pooler runs under (bench/instructions.py: callgrind)

    def argv(self, config_path: str) -> list[str]:
        raise NotImplementedError

    def inapplicable(self, load: str, auth_type: str) -> str | None:
        """Why this target cannot run `load` with `auth_type` (reported n/a), or None."""
        return None

    def config(self, settings: dict[str, dict[str, str]], run_dir: str) -> dict[str, dict[str, str]]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @contextlib.contextmanager
    def serve(self, settings: PoolSettings) -> Iterator[Endpoint]:
        run_dir = tempfile.mkdtemp(prefix=f"maitred-bench-{self.name}-")
        proc = None
        try:
            if self.run_as:
                pw = pwd.getpwnam(self.run_as)
                os.chown(run_dir, pw.pw_uid, pw.pw_gid)
            port = free_port()
            auth_file = os.path.join(run_dir, "userlist.txt")
            self._write(auth_file, poolconf.render_userlist({USER: PASSWORD}))
            shared = poolconf.shared_settings(pg_port=self.pg.port, listen_port=port, database=DATABASE,
                                              auth_type=settings.auth_type, auth_file=auth_file,
                                              pool_size=settings.pool_size,
                                              max_client_conn=settings.max_client_conn, tls=settings.tls)
            config_path = os.path.join(run_dir, f"{self.name}.ini")
            self._write(config_path, poolconf.render_ini(self.config(shared, run_dir)))
            log_path = os.path.join(run_dir, "output.log")
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([*self.prefix, *self.argv(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=run_dir, env=self.env(),
                                        user=self.run_as, start_new_session=True,
                                        preexec_fn=die_with_parent)
            self._wait_ready(proc, port, run_dir)
            yield Endpoint(port=port, pid=proc.pid)
        finally:
            if proc is not None:
                self._stop(proc)
            shutil.rmtree(run_dir, ignore_errors=True)

    def _write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _wait_ready(self, proc: subprocess.Popen, port: int, run_dir: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TargetError(f"{self.label} exited with {proc.returncode}:\n{_logs(run_dir)}")
            try:
                asyncio.run(pgclient.probe(HOST, port, USER, PASSWORD, DATABASE, timeout=5.0))
                return
            except (OSError, EOFError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    pgclient.LoginError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise TargetError(f"{self.label} not ready after {self.start_timeout:.0f} s ({last}):\n{_logs(run_dir)}")

    def _stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _logs(run_dir: str, lines: int = 20) -> str:
    out = []
    for name in ("output.log", "pgbouncer.log", "maitred.log"):
        try:
            with open(os.path.join(run_dir, name), errors="replace") as f:
                out.extend(f.readlines()[-lines:])
        except OSError:
            pass
    return "".join(out).rstrip()


@dataclass
class PgBouncer(_Pooler):
    """Debian's PgBouncer, run as the unprivileged `postgres` account when we are root."""

    name: str = "pgbouncer"
    label: str = "PgBouncer"
    run_as: str | None = field(default_factory=unprivileged)

    def unavailable(self) -> str | None:
        return None if os.access(PGBOUNCER, os.X_OK) else f"{PGBOUNCER} not found (Debian package pgbouncer)"

    def version(self) -> str:
        return version_line([PGBOUNCER, "--version"]).removeprefix("PgBouncer ").strip()

    def argv(self, config_path: str) -> list[str]:
        return [PGBOUNCER, "-q", config_path]

    def config(self, settings, run_dir):
        return poolconf.for_pgbouncer(settings, logfile=os.path.join(run_dir, "pgbouncer.log"))


@dataclass
class Maitred(_Pooler):
    """`maitred pooler CONFIG.ini` from this checkout (the console script when installed)."""

    name: str = "maitred"
    label: str = "maitred"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("pooler.main") is None:
            return "pooler.main is missing: `maitred pooler` cannot run from this checkout yet"
        return None

    def version(self) -> str:
        import maitred

        commit = version_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        return f"{maitred.__version__} ({commit})" if "unknown" not in commit else maitred.__version__

    def argv(self, config_path: str) -> list[str]:
        exe = shutil.which("maitred")
        return ([exe] if exe else [sys.executable, "-m", "maitred.cli"]) + ["pooler", "-q", config_path]

    def env(self) -> dict[str, str]:
        return checkout_env()

    def config(self, settings, run_dir):
        return poolconf.for_maitred(settings, logfile=os.path.join(run_dir, "maitred.log"))


@dataclass
class MaitredWorkers(Maitred):
    """maitred with `[maitred] workers = 2`: two pooler processes on the port, under one supervisor."""

    name: str = "maitred-w2"
    label: str = "maitred workers=2"

    def config(self, settings, run_dir):
        return poolconf.for_maitred(settings, logfile=os.path.join(run_dir, "maitred.log"), workers=2)


@dataclass
class MaitredPurePython(Maitred):
    """maitred running the pure-Python hot path: the pooler package copied without its compiled modules, first on
    PYTHONPATH, so that one run compares the compiled hot path with the code it is compiled from."""

    name: str = "maitred-py"
    label: str = "maitred pure Python"

    @contextlib.contextmanager
    def serve(self, settings: PoolSettings) -> Iterator[Endpoint]:
        tree = tempfile.mkdtemp(prefix="maitred-bench-py-")
        try:
            shutil.copytree(os.path.join(REPO, "pooler"), os.path.join(tree, "pooler"),
                            ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
            self._tree = tree
            with super().serve(settings) as endpoint:
                yield endpoint
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = self._tree + os.pathsep + env["PYTHONPATH"]
        return env


@dataclass
class UvloopFloor(_Pooler):
    """Not a pooler: bench/floor.py, canned answers on uvloop with no PostgreSQL behind them, for the least a
    pooler on uvloop pays per connection (S2). Only S2: with no server side, its S1 would be half a relay."""

    name: str = "floor"
    label: str = "uvloop floor"

    def unavailable(self) -> str | None:
        return None if importlib.util.find_spec("uvloop") else "uvloop is not installed"

    def inapplicable(self, load: str, auth_type: str) -> str | None:
        if load == "churn" and auth_type == "trust":
            return None
        return "the floor is for S2: it lets any login in and answers with canned bytes, with no server side"

    def version(self) -> str:
        import uvloop
        return f"(uvloop {uvloop.__version__})"

    def argv(self, config_path: str) -> list[str]:
        return [sys.executable, "-m", "bench.floor", self.port]

    def config(self, settings, run_dir):
        self.port = settings["pgbouncer"]["listen_port"]
        return settings

    def env(self) -> dict[str, str]:
        return checkout_env()


@dataclass
class UvloopRelayFloor(UvloopFloor):
    """Not a pooler: bench/relay_floor.py, canned logins and a bare relay to pooled PostgreSQL connections on
    uvloop, for the least a transaction pooler on uvloop pays per connection (S2) and per transaction (S1, S5)."""

    name: str = "relay-floor"
    label: str = "uvloop relay floor"

    def inapplicable(self, load: str, auth_type: str) -> str | None:
        if load in ("steady", "idle") or (load == "churn" and auth_type == "trust"):
            return None     # steady and idle: a login per client, whose skipped authentication nothing measures
        return ("the relay floor lets any login in and relays plain text to servers it keeps, with no prepared "
                "statements: it is for S1, S2 with trust, S4 and S5")

    def argv(self, config_path: str) -> list[str]:
        return [sys.executable, "-m", "bench.relay_floor", self.port, str(self.pg.port), self.pool_size]

    def config(self, settings, run_dir):
        self.pool_size = settings["pgbouncer"]["default_pool_size"]
        return super().config(settings, run_dir)


@dataclass
class CompiledRelayFloor(UvloopRelayFloor):
    """The relay floor compiled by Cython, as maitred's hot path is, from a copy of this package (built once, and
    kept in the user's cache): the least a transaction pooler on uvloop pays, its Python compiled."""

    name: str = "relay-floor-c"
    label: str = "uvloop relay floor, compiled"
    _tree: str = ""

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("Cython") is None:
            return "Cython is not installed (the bench extra, maitred[bench], has it)"
        return super().unavailable()

    def config(self, settings, run_dir):
        self._tree = self._tree or compiled_relay_floor()
        return super().config(settings, run_dir)

    def argv(self, config_path: str) -> list[str]:
        return [sys.executable, "-c", "import sys; from bench.relay_floor import main; main(sys.argv[1:])",
                self.port, str(self.pg.port), self.pool_size]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = self._tree + os.pathsep + env["PYTHONPATH"]
        return env


def compiled_relay_floor() -> str:
    """A folder holding a copy of the bench package with relay_floor.py compiled in place, in the user's cache
    under the hash of the package's sources, so that later runs reuse it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(name for name in os.listdir(here) if name.endswith(".py"))
    digest = hashlib.sha256()
    for name in sources:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tree = os.path.join(cache, "maitred", f"relay-floor-{digest.hexdigest()[:16]}")
    package = os.path.join(tree, "bench")
    if glob.glob(os.path.join(package, "relay_floor.*.so")):
        return tree
    os.makedirs(os.path.dirname(tree), exist_ok=True)
    building = tempfile.mkdtemp(prefix="relay-floor-", dir=os.path.dirname(tree))
    os.mkdir(os.path.join(building, "bench"))
    for name in sources:
        shutil.copy(os.path.join(here, name), os.path.join(building, "bench", name))
    build = subprocess.run([sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3", "-q",
                            os.path.join(building, "bench", "relay_floor.py")], cwd=building, capture_output=True,
                           text=True, timeout=300)
    if build.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise TargetError(f"compiling bench/relay_floor.py failed:\n{build.stderr[-2000:]}")
    try:
        os.rename(building, tree)
    except OSError:         # another run built it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return tree


TARGETS = ("direct", "pgbouncer", "maitred", "maitred-w2", "maitred-py", "floor", "relay-floor", "relay-floor-c")
DEFAULT_TARGETS = ("direct", "pgbouncer", "maitred")


def make_targets(names: list[str], pg: LocalPostgres) -> list:
    kinds = {"direct": Direct, "pgbouncer": PgBouncer, "maitred": Maitred, "maitred-w2": MaitredWorkers,
             "maitred-py": MaitredPurePython, "floor": UvloopFloor, "relay-floor": UvloopRelayFloor,
             "relay-floor-c": CompiledRelayFloor}
    return [kinds[name](pg) for name in names]
