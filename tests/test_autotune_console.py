"""The autotuner's console client against real poolers: maitred's and Debian's PgBouncer, every auth method,
the ProcessSample it reads, and errors that say what happened."""
from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest

from pooler_operator.autotune.console import Console, ConsoleError, sample, set_settings
from tests.support import require_binary, server_connections, wait_for
from tests.test_admin import USERS
from tests.test_admin_pgbouncer import PgBouncer


def run(coro):
    return asyncio.run(coro)


def admin_pooler(pooler_factory, **settings):
    settings.setdefault("pool_mode", "transaction")
    settings.setdefault("default_pool_size", 4)
    return pooler_factory(userlist=USERS, admin_users="admin", stats_users="watcher", **settings)


def backend_pids(pg) -> set[int]:
    out = pg.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = 'app'")
    return {int(p) for p in out.split()}


def config_of(port: int) -> tuple[int, int]:
    """(default_pool_size, max_db_connections) of a running pooler, read through its console."""
    got = run(sample("127.0.0.1", port, "admin", USERS["admin"]))
    return got.default_pool_size, got.max_db_connections


@pytest.fixture
def pgbouncer(pg):
    pgb = PgBouncer(require_binary("pgbouncer"),
                    {"listen_addr": "127.0.0.1", "auth_type": "scram-sha-256", "pool_mode": "transaction",
                     "admin_users": "admin", "stats_users": "watcher", "default_pool_size": 3,
                     "unix_socket_dir": ""},
                    {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, USERS)
    yield pgb
    pgb.stop()


@pytest.mark.parametrize("auth_type", ["trust", "plain", "md5", "scram-sha-256"])
def test_the_console_logs_in_with_every_auth_method(pooler_factory, auth_type):
    pooler = admin_pooler(pooler_factory, auth_type=auth_type)

    async def version():
        async with await Console.connect("127.0.0.1", pooler.port, "admin", USERS["admin"]) as console:
            return await console.query("SHOW VERSION")

    rows = run(version())
    assert len(rows) == 1 and "version" in rows[0]


def test_a_wrong_password_is_an_error_with_the_poolers_words(pooler_factory):
    pooler = admin_pooler(pooler_factory)
    with pytest.raises(ConsoleError, match=r"SASL authentication failed \(08P01\)"):
        run(Console.connect("127.0.0.1", pooler.port, "admin", "wrong"))


def test_a_refused_command_raises_the_error_response_text_and_the_connection_stays_usable(pooler_factory):
    pooler = admin_pooler(pooler_factory)

    async def go():
        async with await Console.connect("127.0.0.1", pooler.port, "admin", USERS["admin"]) as console:
            with pytest.raises(ConsoleError, match="SET default_pool_size = lots: .*"):
                await console.command("SET default_pool_size = lots")
            return await console.command("SET default_pool_size = 6")

    assert run(go()).startswith("SET")


def test_a_console_that_never_answers_times_out_and_a_closed_port_is_refused():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(ConsoleError, match="no answer within 0.3s"):
            run(Console.connect("127.0.0.1", silent.getsockname()[1], "admin", "x", timeout=0.3))
        port = silent.getsockname()[1]
    with pytest.raises(ConsoleError, match="127.0.0.1:%d: " % port):
        run(Console.connect("127.0.0.1", port, "admin", "x", timeout=1))


def test_sample_reads_pools_stats_servers_and_config_of_a_maitred_pooler(pooler_factory, pg):
    pooler = admin_pooler(pooler_factory, max_db_connections=7, reserve_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as client:
        for _ in range(3):
            client.execute("SELECT 1")
        got = run(sample("127.0.0.1", pooler.port, "admin", USERS["admin"]))
        assert got.error is None
        assert [(p.database, p.user) for p in got.pools] == [("app", "app")]
        assert got.pools[0].cl_active == 1 and got.pools[0].cl_waiting == 0
        assert (got.default_pool_size, got.max_db_connections, got.reserve_pool_size) == (4, 7, 1)
        assert got.xact_count >= 3 and got.query_count >= 3
        assert got.server_pids and got.server_pids == backend_pids(pg)


def test_sample_of_an_unreachable_console_carries_the_error():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    got = run(sample("127.0.0.1", number, "admin", "x", timeout=1))
    assert not got.reachable and f"127.0.0.1:{number}" in got.error


def test_sample_and_set_work_on_debians_pgbouncer(pgbouncer, pg):
    with psycopg.connect(pgbouncer.dsn("app", "app"), autocommit=True, prepare_threshold=None) as client:
        client.execute("SELECT 1")
        got = run(sample("127.0.0.1", pgbouncer.port, "admin", USERS["admin"]))
        assert got.error is None, got.error
        assert [(p.database, p.user) for p in got.pools] == [("app", "app")]
        assert got.default_pool_size == 3 and got.max_db_connections == 0
        assert got.server_pids == backend_pids(pg)
    run(set_settings("127.0.0.1", pgbouncer.port, "admin", USERS["admin"],
                     {"max_db_connections": 9, "default_pool_size": 8}))
    got = run(sample("127.0.0.1", pgbouncer.port, "admin", USERS["admin"]))
    assert (got.default_pool_size, got.max_db_connections) == (8, 9)


def test_pgbouncer_refuses_a_stats_user_set_and_the_error_says_so(pgbouncer):
    with pytest.raises(ConsoleError, match="admin access needed"):
        run(set_settings("127.0.0.1", pgbouncer.port, "watcher", USERS["watcher"], {"default_pool_size": 5}))


def test_a_console_without_a_password_for_a_password_method_says_so(pooler_factory):
    pooler = admin_pooler(pooler_factory)
    with pytest.raises(ConsoleError, match="asks for a password"):
        run(Console.connect("127.0.0.1", pooler.port, "admin", None))



def test_a_lowered_max_db_connections_closes_servers_beyond_it_as_their_clients_release_them(pooler_factory, pg):
    pooler = admin_pooler(pooler_factory, default_pool_size=6)
    clients = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(6)]
    try:
        for c in clients:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        assert server_connections(pg) == 6
        run(set_settings("127.0.0.1", pooler.port, "admin", USERS["admin"], {"max_db_connections": 2}))
        assert server_connections(pg) == 6         # a server inside a transaction is never cut
        for c in clients[:3]:
            c.execute("COMMIT")
        wait_for(lambda: server_connections(pg) == 3, timeout=5, message="3 servers left")
        for c in clients[3:]:
            c.execute("COMMIT")
        wait_for(lambda: server_connections(pg) == 2, timeout=5, message="2 servers left, the new cap")
        for c in clients:
            c.execute("SELECT 1")
        assert server_connections(pg) == 2
    finally:
        for c in clients:
            c.close()
