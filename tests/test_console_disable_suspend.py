"""DISABLE, ENABLE and SUSPEND on the console, with PgBouncer's semantics and messages (side by side with
Debian's PgBouncer where it has them)."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.support import require_binary, wait_for
from tests.test_admin import USERS, console, show, start
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire


def login_error(port: int, database: str = "app") -> str:
    with Wire(port, timeout=10) as wire, pytest.raises(ServerError) as excinfo:
        wire.login(user="app", password=USERS["app"], database=database)
    return excinfo.value.message


def disable_exchange(port: int) -> list[str]:
    """What a console and a client are told around DISABLE and ENABLE: the same list from both poolers."""
    dsn = f"host=127.0.0.1 port={port} user=admin dbname=pgbouncer password={USERS['admin']}"
    seen = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as con, \
            psycopg.connect(f"host=127.0.0.1 port={port} user=app dbname=app password={USERS['app']}",
                            autocommit=True) as existing:
        for command in ("DISABLE", "DISABLE pgbouncer", "ENABLE pgbouncer", "DISABLE nosuchdb"):
            with pytest.raises(psycopg.Error) as excinfo:
                con.execute(command)
            seen.append(excinfo.value.diag.message_primary)
        seen.append(con.execute("DISABLE app").statusmessage)
        seen.append(login_error(port))
        seen.append(str(existing.execute("SELECT 1").fetchone()))      # an existing client goes on
        seen.append(con.execute("ENABLE app").statusmessage)
        with psycopg.connect(f"host=127.0.0.1 port={port} user=app dbname=app password={USERS['app']}") as c:
            seen.append(str(c.execute("SELECT 2").fetchone()))
    return seen


EXPECTED = ["a database is required", "cannot disable admin db: pgbouncer", "cannot enable admin db: pgbouncer",
            "no such database: nosuchdb", "DISABLE", 'database "app" is disabled', "(1,)", "ENABLE",
            "(2,)"]


def test_disable_refuses_new_clients_and_enable_lets_them_in_again(pooler_factory):
    pooler = start(pooler_factory)
    assert disable_exchange(pooler.port) == EXPECTED


def test_pgbouncer_disables_and_enables_the_same_way(pg):
    """Debian's 1.18 says "cannot disable admin db" to ENABLE too; 1.25 (admin.c) says "enable", as maitred."""
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                         "admin_users": "admin", "pool_mode": "transaction"},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, USERS)
    try:
        seen = disable_exchange(bouncer.port)
        assert seen[2] == "cannot disable admin db: pgbouncer"
        assert seen[:2] + seen[3:] == EXPECTED[:2] + EXPECTED[3:]
    finally:
        bouncer.stop()


def test_show_databases_and_state_report_disable_and_suspend(pooler_factory):
    pooler = start(pooler_factory)
    with console(pooler) as con:
        con.execute("DISABLE app")
        assert [r["disabled"] for r in show(con, "DATABASES") if r["name"] == "app"] == [1]
        con.execute("ENABLE app")
        assert [r["disabled"] for r in show(con, "DATABASES") if r["name"] == "app"] == [0]
        assert con.execute("SUSPEND").statusmessage == "SUSPEND"
        assert {r["key"]: r["value"] for r in show(con, "STATE")}["suspended"] == "yes"
        con.execute("RESUME")
        assert {r["key"]: r["value"] for r in show(con, "STATE")}["suspended"] == "no"


def test_suspend_reads_nothing_until_resume(pooler_factory):
    pooler = start(pooler_factory)
    client = psycopg.connect(pooler.dsn(), autocommit=True)
    done: dict[str, object] = {}

    def query() -> None:
        done["query"] = client.execute("SELECT 42").fetchone()[0]

    def connect() -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=30) as late:
            done["login"] = late.execute("SELECT 43").fetchone()[0]

    with console(pooler) as con:
        assert con.execute("SUSPEND").statusmessage == "SUSPEND"
        threads = [threading.Thread(target=query), threading.Thread(target=connect)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        assert done == {}                          # neither the query nor the new login was read
        for command, message in (("SUSPEND", "already suspended/paused"), ("PAUSE", "already suspended/paused")):
            with pytest.raises(psycopg.errors.ProtocolViolation, match=f"^{message}$"):
                con.execute(command)
        assert con.execute("RESUME").statusmessage == "RESUME"
        for thread in threads:
            thread.join(20)
    assert done == {"query": 42, "login": 43}
    client.close()


def test_suspend_is_refused_while_a_database_is_paused(pooler_factory):
    pooler = start(pooler_factory)
    with console(pooler) as con:
        con.execute("PAUSE app")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="^cannot suspend with paused databases$"):
            con.execute("SUSPEND")
        con.execute("RESUME app")
        assert con.execute("SUSPEND").statusmessage == "SUSPEND"
        con.execute("RESUME")
    wait_for(lambda: psycopg.connect(pooler.dsn()).close() is None, message="a login after RESUME")
