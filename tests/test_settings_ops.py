"""The operational settings PgBouncer documents and maitred had only accepted, against a real PostgreSQL through
the pooler: scram_iterations, autodb_idle_timeout, dns_max_ttl and dns_nxdomain_ttl, syslog."""
from __future__ import annotations

import socket
import time

import psycopg
import pytest

from pooler.config import ConfigError, load_config
from tests.private_mounts import MountedPooler, require_private_mounts
from tests.support import PASSWORDS, wait_for
from tests.test_admin import USERS, console, show
from tests.wire import Wire


def scram_iterations_shown(pooler, user: str = "app") -> int:
    """The i= of the server-first-message a SCRAM login is sent; the login completes."""
    with Wire(pooler.port) as wire:
        messages = wire.login(user, PASSWORDS[user])
    first = next(body[4:].decode() for kind, body in messages if kind == b"R" and body[:4] == b"\0\0\0\x0b")
    return int(dict(part.split("=", 1) for part in first.split(","))["i"])


def test_a_plain_text_password_is_hashed_with_scram_iterations_for_a_scram_login(pooler_factory):
    pooler = pooler_factory(userlist=USERS, admin_users="admin", scram_iterations=5000)
    assert scram_iterations_shown(pooler) == 5000
    with psycopg.connect(pooler.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with console(pooler) as con:
        con.execute("SET scram_iterations = 6000")
    assert scram_iterations_shown(pooler) == 6000


@pytest.mark.parametrize("count", ["4095", "10000001"])
def test_scram_iterations_that_scramp_refuses_are_refused_at_load(tmp_path, count):
    path = tmp_path / "pooler.ini"
    path.write_text(f"[pgbouncer]\nscram_iterations = {count}\n")
    with pytest.raises(ConfigError, match=f"scram_iterations: '{count}' is out of range: 4096 to 10000000"):
        load_config(path)


def test_a_database_made_from_the_fallback_entry_is_freed_once_unused_and_made_again_at_the_next_login(
        pooler_factory, pg):
    pooler = pooler_factory(databases={"*": f"host=127.0.0.1 port={pg.port}"}, userlist=USERS, admin_users="admin",
                            autodb_idle_timeout=1, server_idle_timeout=1)

    def listed() -> bool:
        with console(pooler) as con:
            return "app" in [row["name"] for row in show(con, "DATABASES")]

    for _ in range(2):
        with psycopg.connect(pooler.dsn()) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app",)
            time.sleep(1.5)        # in use all along: a client holds it
            assert listed()
        assert listed()            # its idle server keeps it until server_idle_timeout closes it
        wait_for(lambda: not listed(), timeout=10, message="app gone from SHOW DATABASES")
    pooler.wait_log("registered new auto-database: db=app", "freed unused auto-database: db=app", count=2)


def syslog_lines(log: socket.socket, wait: float = 0.5) -> list[str]:
    """The datagrams the syslog socket has, and any that arrive within `wait` seconds."""
    lines = []
    log.settimeout(wait)
    try:
        while True:
            lines.append(log.recv(65536).decode())
    except TimeoutError:
        return lines


def test_syslog_gets_the_log_lines_connection_lines_included_under_the_ident_and_facility_reload_applies(
        pooler_factory, tmp_path):
    require_private_mounts()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log:
        log.bind(str(tmp_path / "log"))
        pooler = pooler_factory(process=MountedPooler, mounts={"/dev/log": tmp_path / "log"}, userlist=USERS,
                                admin_users="admin", log_connections=1, log_disconnections=1)

        def session_then_reload(**settings) -> list[str]:
            """A client's login and logout, then a RELOAD that changes `settings`: the syslog lines of both."""
            psycopg.connect(pooler.dsn()).close()
            pooler.wait_log("closing because: client close request", count=session_then_reload.count)
            session_then_reload.count += 1
            pooler.settings.update(settings)
            pooler.write_config()
            with console(pooler) as con:
                con.execute("RELOAD")
            return syslog_lines(log)
        session_then_reload.count = 1

        head = f"<158>maitred-test[{pooler.proc.pid}]: "      # local3 (19) * 8 + info (6)
        lines = session_then_reload(syslog=1, syslog_ident="maitred-test", syslog_facility="local3")
        assert lines == [head + "syslog changed from False to True",      # the RELOAD's lines only
                         head + "syslog_ident changed from 'pgbouncer' to 'maitred-test'",
                         head + "syslog_facility changed from 'daemon' to 'local3'"]
        lines = session_then_reload(syslog_ident="other", syslog_facility="user")
        connection_lines = [line for line in lines if line.startswith(head + "C-0x") and "app/app@127.0.0.1:" in line]
        assert [line.split(" ", 3)[3] for line in connection_lines] == [
            "login attempt: db=app user=app tls=no", "closing because: client close request (age=0s)"], lines
        lines = session_then_reload(syslog=0)
        assert any(line.startswith(f"<14>other[{pooler.proc.pid}]: C-0x") and "login attempt" in line
                   for line in lines), lines       # user (1) * 8 + info (6)
        assert session_then_reload() == []
