"""Test helpers: a maitred pooler as a real process, raw protocol sockets, and pg_stat_activity counts."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from maitred.local.postgres import LocalPostgres, free_port

PASSWORDS = {"app": "app-secret", "md5_role": "md5-secret", "plain_role": "plain-secret", "trust_role": ""}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """A missing prerequisite: a failure under CI (where scripts/install-deps.sh must have provided it),
    a skip on a developer's machine."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """The path of a program the tests need."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        missing(f"{name} is not installed (scripts/install-deps.sh installs it)")
    return path


class PoolerSet:
    """The pooler processes one test starts in front of one PostgreSQL; `close()` stops them all and fails
    the test if one that should have stayed up had died."""

    def __init__(self, pg: LocalPostgres, workdir: Path):
        self.pg = pg
        self.workdir = Path(workdir)
        self.started: list[PoolerProcess] = []

    def start(self, process: type["PoolerProcess"] | None = None, **kwargs) -> "PoolerProcess":
        """A pooler started on `kwargs`; `process`: a PoolerProcess of another kind (tests/private_mounts.py)."""
        proc = (process or PoolerProcess)(self.pg, self.workdir / f"pooler{len(self.started)}", **kwargs)
        self.started.append(proc)
        return proc.start()

    def close(self) -> None:
        errors = [f"pooler exited with {proc.proc.returncode}:\n{proc.log_text()[-3000:]}"
                  for proc in self.started if proc.expect_alive and not proc.alive()]
        for proc in self.started:
            proc.stop()
        assert not errors, "\n".join(errors)


class PoolerProcess:
    """`maitred pooler` on a config written from keyword arguments, listening on a free 127.0.0.1 port."""

    def __init__(self, pg: LocalPostgres, workdir: Path, databases: dict[str, str] | None = None,
                 users: dict[str, str] | None = None, userlist: dict[str, str] | None = None,
                 maitred: dict[str, object] | None = None, expect_alive: bool = True,
                 peers: dict[int, str] | None = None, port: int | None = None, **settings):
        self.pg = pg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()     # a given port: shared with another pooler (so_reuseport)
        self.peers = peers or {}
        self.expect_alive = expect_alive
        self.databases = databases if databases is not None else {
            "app": f"host=127.0.0.1 port={pg.port} dbname=app"}
        self.users = users or {}
        self.userlist = userlist if userlist is not None else dict(PASSWORDS)
        self.maitred = {"http_port": 0, **(maitred or {})}
        self.settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "scram-sha-256",
            "auth_file": str(self.workdir / "userlist.txt"),
            "log_connections": 0,
            "log_disconnections": 0,
            **settings,
        }
        self.config_path = self.workdir / "pooler.ini"
        self.log_path = self.workdir / "pooler.log"
        self.proc: subprocess.Popen | None = None

    def render(self) -> str:
        lines = ["[databases]"] + [f"{k} = {v}" for k, v in self.databases.items()]
        if self.users:
            lines += ["", "[users]"] + [f"{k} = {v}" for k, v in self.users.items()]
        lines += ["", "[pgbouncer]"] + [f"{k} = {v}" for k, v in self.settings.items()]
        lines += ["", "[maitred]"] + [f"{k} = {v}" for k, v in self.maitred.items()]
        if self.peers:
            lines += ["", "[peers]"] + [f"{k} = {v}" for k, v in self.peers.items()]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        with open(self.workdir / "userlist.txt", "w") as f:
            for user, secret in self.userlist.items():
                f.write(f'"{user}" "{secret}"\n')
        self.config_path.write_text(self.render())

    def start(self, wait: bool = True) -> "PoolerProcess":
        self.write_config()
        return self.launch(wait)

    def launch(self, wait: bool = True) -> "PoolerProcess":
        """Run the pooler on `config_path` as it is on disk."""
        self.logfile = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.logfile, stderr=subprocess.STDOUT)
        if wait:
            self.wait_listening()
        return self

    def command(self) -> list[str]:
        return [sys.executable, "-m", "maitred.cli", "pooler", str(self.config_path)]

    def wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pooler exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pooler did not listen within {timeout}s:\n{self.log_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "logfile", None):
            self.logfile.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, *texts: str, count: int = 1, timeout: float = 10, path: str | Path | None = None) -> str:
        """The log once each of `texts` is in it `count` times or more. The pooler writes its lines together,
        up to logsink.HOLD after the first (pooler/logsink.py), after what it sent to its clients meanwhile: a
        client can be answered before its line is in the file, so a test waits for the line rather than reading
        the log once. `path`: the pooler's `logfile` instead of its output."""
        assert texts, "wait_log needs a text to wait for"

        def read() -> str:
            if path is None:
                return self.log_text()
            try:
                return Path(path).read_text(errors="replace")
            except OSError:
                return ""

        def found() -> str | None:
            text = read()
            return text if all(text.count(t) >= count for t in texts) else None
        try:
            return wait_for(found, timeout, message=f"{list(texts)}{f' x{count}' if count > 1 else ''} in "
                                                     f"{path or self.log_path}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its tail:\n{read()[-3000:]}") from None

    def dsn(self, user: str = "app", dbname: str = "app", password: str | None = None, **extra) -> str:
        password = PASSWORDS.get(user, "") if password is None else password
        parts = [f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}",
                 f"password='{password}'" if password else ""]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(p for p in parts if p)

    def url(self, user: str = "app", dbname: str = "app") -> str:
        return f"postgresql://{user}:{PASSWORDS.get(user, '')}@127.0.0.1:{self.port}/{dbname}"

    def pgbench(self, *args: str, user: str = "app", timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGPASSWORD=PASSWORDS[user])
        return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, *args, "app"],
                              env=env, capture_output=True, text=True, timeout=timeout)

    @staticmethod
    def pgbench_init(pg: LocalPostgres) -> None:
        env = dict(os.environ, PGPASSWORD=PASSWORDS["app"])
        subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "app",
                        "app"], env=env, check=True, capture_output=True)


def server_connections(pg: LocalPostgres, users: tuple[str, ...] = ("app",)) -> int:
    """Client backends in PostgreSQL that belong to the given roles (the pooler's server connections)."""
    names = ",".join(f"'{u}'" for u in users)
    return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                       f"AND usename IN ({names})"))


def run_threads(target, count: int) -> list[str]:
    """Run target(0) … target(count - 1) in threads; the errors they raised, as reprs."""
    errors: list[str] = []

    def wrapped(n: int) -> None:
        try:
            target(n)
        except Exception as exc:  # collected for the assertion in the main thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=wrapped, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def wait_for(predicate, timeout: float = 10, interval: float = 0.05, message: str | Callable[[], str] = "condition"):
    """predicate()'s first true value within `timeout`; `message` says what was awaited (a callable: built at
    the timeout, e.g. from a log's tail as it was then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message() if callable(message) else message}")


# -- raw protocol, for what no driver will send ----------------------------------------------------------

def startup_packet(user: str = "app", database: str = "app", **params: str) -> bytes:
    body = struct.pack("!I", 196608)
    for key, value in {"user": user, "database": database, **params}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def raw_connect(port: int, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_messages(sock: socket.socket, until: bytes = b"Z", limit: float = 5) -> list[tuple[bytes, bytes]]:
    """Read backend messages until one of type `until`, an ErrorResponse, or the socket closes."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        while len(buf) >= 5:
            length = struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + length:
                break
            kind, body, buf = buf[:1], buf[5:1 + length], buf[1 + length:]
            out.append((kind, body))
            if kind in (until, b"E"):
                return out
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return out
        if not chunk:
            return out
        buf += chunk
    return out


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}
