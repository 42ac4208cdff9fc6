"""`maitred pooler CONFIG`: what it says about a bad config, and listening on a Unix socket."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import psycopg
import pytest

from maitred.local.postgres import free_port
from tests.support import PASSWORDS, PoolerProcess, require_binary

BASE = """\
[databases]
app = host=127.0.0.1 port={pg_port} dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
"""


def write_config(tmp_path, pg, extra: str = "", userlist: str | None = None) -> tuple[str, int]:
    """A config of BASE plus `extra` lines; returns its path and the line number of the first extra line."""
    userlist_path = tmp_path / "userlist.txt"
    userlist_path.write_text(userlist if userlist is not None else f'"app" "{PASSWORDS["app"]}"\n')
    text = BASE.format(pg_port=pg.port, port=free_port(), userlist=userlist_path)
    path = tmp_path / "pooler.ini"
    path.write_text(text + extra)
    return str(path), text.count("\n") + 1


def run_pooler(path: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maitred.cli", "pooler", path], capture_output=True, text=True,
                          timeout=timeout)


INVALID = {
    "max_client_conn = lots": "max_client_conn",
    "pool_mode = sometimes": "pool_mode",
    "server_idle_timeout = 10s": "server_idle_timeout",
    "default_pool_size = -5": "default_pool_size",
    "auth_type = ldap": "auth_type",
    "log_connections = maybe": "log_connections",
}


@pytest.mark.parametrize("line", list(INVALID))
def test_invalid_value_exits_non_zero_naming_file_line_and_key(tmp_path, pg, line):
    path, number = write_config(tmp_path, pg, line + "\n")
    result = run_pooler(path)
    assert result.returncode != 0
    assert f"{path}:{number}:" in result.stderr, result.stderr
    assert INVALID[line] in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_database_entry_exits_non_zero_naming_file_line_and_database(tmp_path, pg):
    path, number = write_config(tmp_path, pg)
    text = open(path).read().replace("[pgbouncer]", "broken = host=127.0.0.1 port=99999\n\n[pgbouncer]")
    open(path, "w").write(text)
    result = run_pooler(path)
    assert result.returncode != 0
    assert f"{path}:4:" in result.stderr and "broken" in result.stderr, result.stderr


def test_malformed_auth_file_exits_non_zero_naming_its_line(tmp_path, pg):
    path, _ = write_config(tmp_path, pg, userlist='"app" "secret"\nthis line is not quoted\n')
    result = run_pooler(path)
    assert result.returncode != 0
    assert f"{tmp_path / 'userlist.txt'}:2:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_non_zero(tmp_path):
    result = run_pooler(str(tmp_path / "nowhere.ini"))
    assert result.returncode != 0
    assert "nowhere.ini" in result.stderr


def test_unknown_key_only_warns_and_the_pooler_serves(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", frobnicate_level=11)
    lines = pooler.config_path.read_text().splitlines()
    number = lines.index("frobnicate_level = 11") + 1
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    pooler.wait_log(f"{pooler.config_path}:{number}:", "frobnicate_level", "WARNING")


def test_unknown_section_only_warns_and_the_pooler_serves(tmp_path, pg):
    path, number = write_config(tmp_path, pg, "\n[frobnicator]\nspeed = 3\n")
    port = int(next(line.split("=")[1] for line in open(path) if line.startswith("listen_port")))
    proc = subprocess.Popen([sys.executable, "-m", "maitred.cli", "pooler", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_connect(lambda: psycopg.connect(host="127.0.0.1", port=port, user="app", dbname="app",
                                              password=PASSWORDS["app"], autocommit=True))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert "[frobnicator]" in out and f"{path}:{number + 1}:" in out, out


def _wait_connect(connect, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect() as conn:
                assert conn.execute("SELECT 1").fetchone()[0] == 1
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def socket_dir():
    path = tempfile.mkdtemp(prefix="mtsock")     # short: a Unix socket path has a 107-byte limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unix_socket_serves_psql(pooler_factory, pg, socket_dir):
    psql = require_binary("psql")
    pooler = pooler_factory(pool_mode="transaction", unix_socket_dir=socket_dir)
    sock = os.path.join(socket_dir, f".s.PGSQL.{pooler.port}")
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o777
    result = subprocess.run([psql, "-X", "-A", "-t", "-h", socket_dir, "-p", str(pooler.port), "-U", "app",
                             "-d", "app", "-c", "SELECT current_user, 6 * 7"],
                            env=dict(os.environ, PGPASSWORD=PASSWORDS["app"]), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app|42"
    with psycopg.connect(host=socket_dir, port=pooler.port, user="app", dbname="app", password=PASSWORDS["app"],
                         autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_unix_socket_mode_is_read_as_octal(pooler_factory, pg, socket_dir):
    pooler = pooler_factory(pool_mode="transaction", unix_socket_dir=socket_dir, unix_socket_mode="0700")
    sock = os.path.join(socket_dir, f".s.PGSQL.{pooler.port}")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o700


def test_unix_socket_only_when_listen_addr_is_empty(pg, socket_dir):
    workdir = tempfile.mkdtemp(prefix="mtpool")
    proc = PoolerProcess(pg, workdir, pool_mode="transaction", listen_addr="", unix_socket_dir=socket_dir)
    proc.start(wait=False)       # nothing listens on TCP to wait for
    try:
        _wait_connect(lambda: psycopg.connect(host=socket_dir, port=proc.port, user="app", dbname="app",
                                              password=PASSWORDS["app"], autocommit=True))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=proc.port, user="app", dbname="app",
                            password=PASSWORDS["app"], connect_timeout=3)
        assert proc.alive()
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
