"""The operational settings PgBouncer documents and maitred had only accepted, against a real PostgreSQL through
the pooler: scram_iterations, autodb_idle_timeout, dns_max_ttl and dns_nxdomain_ttl, syslog."""
from __future__ import annotations

import time

import psycopg
import pytest

from pooler.config import ConfigError, load_config
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
