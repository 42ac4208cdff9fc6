"""A throwaway PostgreSQL cluster in a folder of its own, for the quick start, the tests and the benchmarks.

initdb refuses to run as root, so when we are root the cluster is owned by and run as the unprivileged
`postgres` account that Debian's package creates.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres"

DEFAULT_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> str:
    """The newest PostgreSQL server installed from Debian's packages."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; "
                           "install Debian's postgresql package (scripts/install-deps.sh)")
    return os.path.dirname(candidates[-1])


def _run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster on 127.0.0.1, created by initdb in `base_dir` (a temporary folder by default)."""

    base_dir: str | None = None
    port: int = 0
    hba: list[str] = field(default_factory=lambda: list(DEFAULT_HBA))
    settings: dict[str, str] = field(default_factory=dict)
    keep: bool = False

    def __post_init__(self) -> None:
        self.bindir = postgres_bindir()
        if self.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="maitred-pg-")
        self.base_dir = os.path.abspath(self.base_dir)
        self.datadir = os.path.join(self.base_dir, "data")
        self.socket_dir = os.path.join(self.base_dir, "socket")
        self.logfile = os.path.join(self.base_dir, "postgres.log")
        if not self.port:
            self.port = free_port()

    # -- life cycle -------------------------------------------------------------------------------------

    def _cmd(self, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), check=check, user=_run_as(),
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.STDOUT if capture else None, text=True)

    def _chown(self, path: str) -> None:
        owner = _run_as()
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> "LocalPostgres":
        os.makedirs(self.base_dir, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        self._chown(self.base_dir)
        if os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            return self
        os.makedirs(self.socket_dir, exist_ok=True)
        self._chown(self.socket_dir)
        pwfile = os.path.join(self.base_dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(SUPERUSER_PASSWORD + "\n")
        self._chown(pwfile)
        try:
            self._cmd(os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", SUPERUSER,
                      "--pwfile", pwfile, "-A", "trust", "-E", "UTF8", "--locale", "C.UTF-8")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed:\n{exc.stdout}") from exc
        finally:
            os.unlink(pwfile)
        return self

    def write_config(self) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "password_encryption": "'scram-sha-256'",
            "log_min_messages": "warning",
        }
        conf.update(self.settings)
        with open(os.path.join(self.datadir, "postgresql.auto.conf"), "w") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write("\n".join(self.hba) + "\n")

    def start(self) -> "LocalPostgres":
        self.init()
        self.write_config()
        try:
            self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
                      "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"PostgreSQL did not start:\n{exc.stdout}\n{self.log_tail()}") from exc
        return self

    def stop(self, mode: str = "fast") -> None:
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop",
                      check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        self.write_config()
        self._cmd(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "reload")

    def destroy(self) -> None:
        self.stop(mode="immediate")
        if not self.keep:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- use --------------------------------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.logfile) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def psql(self, sql: str, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """Run SQL as the superuser over the Unix socket; return the unaligned, tuples-only output."""
        proc = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
             "-p", str(self.port), "-U", user, "-d", dbname, "-c", sql],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create_role(self, name: str, password: str | None, encryption: str = "scram-sha-256",
                    superuser: bool = False) -> None:
        """A login role whose password is stored with `encryption` (scram-sha-256 or md5)."""
        pw = "NULL" if password is None else "'" + password.replace("'", "''") + "'"
        attrs = "SUPERUSER" if superuser else ""
        self.psql(f"SET password_encryption = '{encryption}'; "
                  f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN {attrs} PASSWORD {pw}")

    def create_database(self, name: str, owner: str = SUPERUSER) -> None:
        self.psql(f"CREATE DATABASE {name} OWNER {owner}")

    def dsn(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD, dbname: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not become ready:\n" + self.log_tail())
