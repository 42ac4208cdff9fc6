"""PgBouncer 1.25 settings that maitred builds, each against the real PostgreSQL: the timeouts, the client
limits, the notices, connect_query, server_fast_close, pool_idle_timeout, and prepared statements that
DISCARD ALL clears or a live max_prepared_statements bounds."""
from __future__ import annotations

import time

import psycopg
import pytest

from tests.support import PASSWORDS, require_binary, wait_for
from tests.test_admin import USERS, console, show
from tests.test_admin_pgbouncer import PgBouncer
from tests.test_limits import assert_closed_with, login
from tests.wire import SYNC, ServerError, Wire, bind, execute, parse, query

QUEUED = "No server connection available in postgres backend, client being queued"


def notices(messages: list) -> list[str]:
    return [dict((f[:1], f[1:]) for f in body.decode().split("\0") if f)["M"]
            for kind, body in messages if kind == b"N"]


# -- timeouts and limits ---------------------------------------------------------------------------------

def test_transaction_timeout_closes_a_transaction_that_keeps_working_too_long(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, transaction_timeout=1)
    with login(pooler) as long, login(pooler) as short:
        long.query("BEGIN")
        with pytest.raises((ServerError, TimeoutError, OSError)):
            for _ in range(20):                       # busy all along: idle_transaction_timeout would not fire
                long.query("SELECT pg_sleep(0.25)")
                assert short.rows("SELECT 1") == [("1",)]     # short transactions are never timed out
        assert long.closed_by_peer(5)
        assert short.rows("SELECT 'still here'") == [("still here",)]


def test_transaction_timeout_message_is_pgbouncers(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="session", users={"app": "transaction_timeout=1"})
    with login(pooler) as wire:
        wire.send(query("SELECT pg_sleep(5)"))
        error = assert_closed_with(wire, "transaction timeout", limit=10)
        assert error.sqlstate == "08P01"


def test_max_db_client_connections_refuses_the_client_over_the_limit_until_one_leaves(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", max_db_client_connections=2)
    first, second = login(pooler), login(pooler, user="md5_role")
    try:
        with Wire(pooler.port) as third, pytest.raises(ServerError) as caught:
            third.login(user="app", password=PASSWORDS["app"])
        assert caught.value.message == "client connections exceeded (max_db_client_connections)"
        assert caught.value.sqlstate == "08P01"
        first.close()
        wait_for(lambda: _logs_in(pooler, "app"), timeout=10, message="the slot freed by the client that left")
    finally:
        first.close()
        second.close()


def test_max_user_client_connections_of_the_users_section_counts_that_user_only(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", users={"app": "max_user_client_connections=1"})
    with login(pooler):
        with Wire(pooler.port) as again, pytest.raises(ServerError) as caught:
            again.login(user="app", password=PASSWORDS["app"])
        assert caught.value.message == "client connections exceeded (max_user_client_connections)"
        assert _logs_in(pooler, "md5_role")


def test_max_db_client_connections_of_a_databases_entry_wins_over_the_global_one(pooler_factory, pg):
    db = f"host=127.0.0.1 port={pg.port} dbname=app"
    pooler = pooler_factory(pool_mode="transaction", max_db_client_connections=5,
                            databases={"app": db + " max_db_client_connections=1", "other": db})
    with login(pooler):
        with Wire(pooler.port) as again, pytest.raises(ServerError) as caught:
            again.login(user="md5_role", password=PASSWORDS["md5_role"], database="app")
        assert caught.value.message == "client connections exceeded (max_db_client_connections)"
        with login(pooler, database="other"), login(pooler, user="md5_role", database="other") as second:
            assert second.rows("SELECT 1") == [("1",)]          # another entry keeps the global limit


def test_global_max_user_client_connections_counts_a_user_across_databases(pooler_factory, pg):
    db = f"host=127.0.0.1 port={pg.port} dbname=app"
    pooler = pooler_factory(pool_mode="transaction", max_user_client_connections=1,
                            databases={"app": db, "other": db})
    with login(pooler):
        with Wire(pooler.port) as again, pytest.raises(ServerError) as caught:
            again.login(user="app", password=PASSWORDS["app"], database="other")
        assert caught.value.message == "client connections exceeded (max_user_client_connections)"
        assert _logs_in(pooler, "md5_role")


def _logs_in(pooler, user: str) -> bool:
    try:
        with login(pooler, user=user) as wire:
            return wire.rows("SELECT 1") == [("1",)]
    except ServerError:
        return False


# -- notices ---------------------------------------------------------------------------------------------

def test_query_wait_notify_tells_a_queued_client_once(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, query_wait_notify=1)
    with login(pooler) as holder, login(pooler) as queued:
        holder.query("BEGIN")
        queued.send(query("SELECT 'served'"))
        message = queued.read_message(6)
        assert message is not None and notices([message]) == [QUEUED]
        holder.query("COMMIT")
        assert notices(queued.read_until(b"Z")) == []
        assert queued.rows("SELECT 1") == [("1",)]


def test_login_notify_message_is_a_notice_at_login(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", login_notify_message="'welcome to maitred'")
    with Wire(pooler.port) as wire:
        assert notices(wire.login(user="app", password=PASSWORDS["app"])) == ["'welcome to maitred'"]


# -- server connections ----------------------------------------------------------------------------------

def test_connect_query_runs_on_each_new_server_and_a_failing_one_is_only_logged(pooler_factory, pg):
    db = f"host=127.0.0.1 port={pg.port} dbname=app"
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, databases={
        "app": db + " connect_query='SET maitred.probe TO ''42'''",
        "broken": db + " connect_query='SELECT no_such_function()'"})
    with login(pooler) as first, login(pooler) as second:
        first.query("BEGIN")
        second.query("BEGIN")                       # two servers, each with its own connect_query
        assert first.rows("SELECT current_setting('maitred.probe')") == [("42",)]
        assert second.rows("SELECT current_setting('maitred.probe')") == [("42",)]
    with login(pooler, database="broken") as wire:
        assert wire.rows("SELECT 1") == [("1",)]
    pooler.wait_log("connect_query failed: function no_such_function() does not exist")


@pytest.mark.parametrize("fast_close", [True, False])
def test_server_fast_close_ends_an_idle_session_whose_server_must_reconnect(pooler_factory, pg, fast_close):
    pooler = pooler_factory(pool_mode="session", userlist=USERS, admin_users="admin",
                            server_fast_close=int(fast_close))
    with login(pooler) as session, console(pooler) as con:
        session.query("SELECT 1")
        assert con.execute("RECONNECT app").statusmessage == "RECONNECT"
        if fast_close:
            assert_closed_with(session, "database configuration changed", limit=5)
        else:
            time.sleep(1)
            assert session.rows("SELECT 'kept'") == [("kept",)]


def test_pool_idle_timeout_frees_a_pool_left_without_clients_and_servers(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", userlist=USERS, admin_users="admin", server_idle_timeout=1,
                            pool_idle_timeout=1)
    with login(pooler) as wire:
        wire.query("SELECT 1")
    with console(pooler) as con:
        assert any(row["database"] == "app" for row in show(con, "POOLS"))
        wait_for(lambda: not any(row["database"] == "app" for row in show(con, "POOLS")), timeout=10,
                 message="the empty pool freed")
    with login(pooler) as wire:
        assert wire.rows("SELECT 1") == [("1",)]


# -- prepared statements -------------------------------------------------------------------------------

def _extended(wire, sql: str, name: str = "") -> list:
    """Parse `sql` as statement `name`, bind and execute it, sync: the messages up to ReadyForQuery."""
    wire.send(parse(sql, name) + bind(statement=name) + execute() + SYNC)
    return wire.read_until(b"Z")


def test_discard_all_by_the_extended_protocol_clears_what_the_server_had_prepared(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with login(pooler) as wire:
        _extended(wire, "SELECT 1", "s1")
        _extended(wire, "DISCARD ALL")
        rows = [body for kind, body in _extended(wire, "SELECT 1", "s2") if kind == b"D"]
        assert len(rows) == 1
        with pytest.raises(ServerError, match='prepared statement "s1" does not exist'):
            wire.send(bind(statement="s1") + execute() + SYNC)
            wire.read_until(b"Z")


def test_deallocate_all_by_the_extended_protocol_forgets_the_clients_statements(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with login(pooler) as wire:
        _extended(wire, "SELECT 1", "s1")
        _extended(wire, "DEALLOCATE ALL")
        with pytest.raises(ServerError, match='prepared statement "s1" does not exist'):
            wire.send(bind(statement="s1") + execute() + SYNC)
            wire.read_until(b"Z")
        wire.read_until(b"Z")                                    # the failed batch's ReadyForQuery
        rows = [body for kind, body in _extended(wire, "SELECT 2", "s1") if kind == b"D"]     # the name is free again
        assert rows == [b"\x00\x01\x00\x00\x00\x012"]


def test_set_max_prepared_statements_bounds_the_running_servers(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, userlist=USERS, admin_users="admin")
    with login(pooler) as wire, console(pooler) as con:
        wire.query("SELECT 1")                        # the server exists before the SET
        con.execute("SET max_prepared_statements = 2")
        for n in range(4):
            wire.send(parse(f"SELECT {n}", f"s{n}") + bind(statement=f"s{n}") + execute() + SYNC)
            wire.read_until(b"Z")
        assert wire.rows("SELECT count(*) FROM pg_prepared_statements") == [("2",)]



# -- side by side with Debian's PgBouncer 1.18, which has server_fast_close and connect_query -------------

def fast_close_and_connect_query(port: int) -> tuple[str, list]:
    """What a session client is told when its server must reconnect, and what connect_query left set."""
    with Wire(port, timeout=10) as session:
        session.login(user="app", password=USERS["app"])
        probe = session.rows("SELECT current_setting('maitred.probe')")
        dsn = f"host=127.0.0.1 port={port} user=admin dbname=pgbouncer password={USERS['admin']}"
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as con:
            con.execute("RECONNECT app")
        return session.expect_error(10).message, probe


def test_server_fast_close_and_connect_query_behave_as_pgbouncers(pooler_factory, pg):
    settings = {"pool_mode": "session", "server_fast_close": 1, "admin_users": "admin"}
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app connect_query='SET maitred.probe TO ''7'''"}
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "",
                                                      "auth_type": "scram-sha-256", **settings}, databases, USERS)
    try:
        expected = fast_close_and_connect_query(bouncer.port)
    finally:
        bouncer.stop()
    assert expected == ("database configuration changed", [("7",)])
    pooler = pooler_factory(userlist=USERS, databases=databases, **settings)
    assert fast_close_and_connect_query(pooler.port) == expected
