"""Limits and timeouts, with PgBouncer's names, semantics and wording. Timeouts are 1–2 s to keep this fast."""
from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from tests.support import PASSWORDS, server_connections, wait_for
from tests.wire import ServerError, Wire, query

APP = PASSWORDS["app"]


def login(pooler, user: str = "app", database: str = "app") -> Wire:
    wire = Wire(pooler.port, timeout=10)
    wire.login(user=user, password=PASSWORDS[user], database=database)
    return wire


def assert_closed_with(wire: Wire, pattern: str, limit: float = 10) -> ServerError:
    """The pooler sends a FATAL error whose message matches `pattern`, then closes the connection."""
    error = wire.expect_error(limit)
    assert error.fields.get("S") == "FATAL", error.fields
    assert re.fullmatch(pattern, error.message), error.message
    assert wire.closed_by_peer(5)
    return error


def sampler(pg, users: tuple[str, ...]):
    """Sample the pooler's server connections in the background; returns (stop, samples)."""
    stop, seen = threading.Event(), []

    def run() -> None:
        while not stop.is_set():
            seen.append(server_connections(pg, users))
            time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()

    def finish() -> list[int]:
        stop.set()
        thread.join()
        return seen

    return finish


def hammer(pooler, clients: list[tuple[str, str]], seconds: float = 3) -> list[str]:
    """Each (user, database) runs short transactions for `seconds`; returns the errors seen."""
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def work(user: str, database: str) -> None:
        try:
            with psycopg.connect(pooler.dsn(user=user, dbname=database)) as conn:
                while time.monotonic() < deadline:
                    conn.execute("SELECT pg_sleep(0.05)")
                    conn.commit()
        except Exception as exc:  # asserted by the caller
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=c) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# -- waiting and client limits ----------------------------------------------------------------------------

def test_query_wait_timeout_disconnects_a_client_queued_too_long(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, query_wait_timeout=1)
    with login(pooler) as holder, login(pooler) as queued:
        holder.query("BEGIN")
        holder.query("SELECT 1")
        queued.send(query("SELECT 'never'"))
        error = assert_closed_with(queued, "query_wait_timeout")
        assert error.sqlstate == "08P01"
        assert holder.rows("SELECT 'holder unaffected'") == [("holder unaffected",)]
        holder.query("COMMIT")
    with login(pooler) as later:
        assert later.rows("SELECT 1") == [("1",)]


def test_max_client_conn_refuses_the_connection_over_the_limit(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, max_client_conn=2)
    first, second = login(pooler), login(pooler)
    try:
        with Wire(pooler.port) as third:
            with pytest.raises(ServerError) as caught:
                third.login(user="app", password=APP)
            assert caught.value.message == "no more connections allowed (max_client_conn)"
            assert third.closed_by_peer(5)
        assert first.rows("SELECT 1") == [("1",)]
    finally:
        first.close()
    wait_for(lambda: _can_log_in(pooler), timeout=10, message="a free client slot after a client left")
    second.close()


def _can_log_in(pooler) -> bool:
    try:
        with login(pooler) as wire:
            return wire.rows("SELECT 1") == [("1",)]
    except ServerError:
        return False


def test_client_idle_timeout_closes_an_idle_client_but_not_a_busy_one(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, client_idle_timeout=1)
    with login(pooler) as idle, login(pooler) as busy:
        idle.query("SELECT 1")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert busy.rows("SELECT 1") == [("1",)]
            time.sleep(0.2)
        assert_closed_with(idle, "client_idle_timeout", limit=5)
        assert busy.rows("SELECT 'still here'") == [("still here",)]


# -- server timeouts -------------------------------------------------------------------------------------

def test_idle_transaction_timeout_closes_the_client_and_rolls_back(pooler_factory, pg):
    pg.psql("DROP TABLE IF EXISTS idle_tx_probe; CREATE TABLE idle_tx_probe (x int)", dbname="app", user="app")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, idle_transaction_timeout=1)
    with login(pooler) as wire:
        wire.query("BEGIN")
        wire.query("INSERT INTO idle_tx_probe VALUES (1)")
        assert_closed_with(wire, "idle transaction timeout", limit=10)
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                             "AND state LIKE 'idle in transaction%'") == "0", timeout=10,
             message="no transaction left open")
    assert pg.psql("SELECT count(*) FROM idle_tx_probe", dbname="app") == "0"
    with login(pooler) as later:
        assert later.rows("SELECT count(*) FROM idle_tx_probe") == [("0",)]


def test_idle_transaction_timeout_spares_a_transaction_that_keeps_working(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, idle_transaction_timeout=1)
    with login(pooler) as wire:
        wire.query("BEGIN")
        for _ in range(6):
            wire.query("SELECT pg_sleep(0.4)")
        wire.query("COMMIT")
        assert wire.rows("SELECT 1") == [("1",)]


def test_query_timeout_ends_a_query_running_too_long(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, query_timeout=1)
    try:
        with login(pooler) as wire:
            wire.send(query("SELECT pg_sleep(31)"))
            assert_closed_with(wire, "query.timeout", limit=15)
        with login(pooler) as later:
            assert later.rows("SELECT pg_sleep(0.2), 1") == [("", "1")]
    finally:
        pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(31)'")


def test_server_idle_timeout_closes_unused_servers(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3, server_idle_timeout=1)
    with login(pooler) as wire:
        assert wire.rows("SELECT 1") == [("1",)]
        assert server_connections(pg) == 1
        wait_for(lambda: server_connections(pg) == 0, timeout=10, message="the idle server to be closed")
        assert wire.rows("SELECT 2") == [("2",)]      # a new server is opened on demand


def test_server_lifetime_retires_a_server_once_it_is_released(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, server_lifetime=1)
    with login(pooler) as wire:
        first = wire.rows("SELECT pg_backend_pid()")
        assert wire.rows("SELECT pg_backend_pid()") == first     # still young: reused
        time.sleep(1.5)
        assert wire.rows("SELECT pg_backend_pid()") != first
        wait_for(lambda: server_connections(pg) <= 1, timeout=5, message="the old server gone")


# -- server limits ---------------------------------------------------------------------------------------

def test_max_db_connections_caps_servers_over_all_pools_of_a_database(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, max_db_connections=3,
                            query_wait_timeout=30)
    finish = sampler(pg, ("app", "md5_role"))
    try:
        errors = hammer(pooler, [("app", "app")] * 4 + [("md5_role", "app")] * 4)
    finally:
        seen = finish()
    assert errors == []
    assert max(seen) <= 3, seen
    assert max(seen) == 3, seen      # the cap was reached: the test did push against it


def test_max_db_connections_evicts_an_idle_server_of_another_pool(pooler_factory, pg):
    """PgBouncer's evict_connection: a full database closes the most idle server of another pool."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, max_db_connections=2,
                            query_wait_timeout=5, server_idle_timeout=600)
    with login(pooler) as a, login(pooler) as b:
        a.query("BEGIN")
        b.query("BEGIN")
        a.query("COMMIT")
        b.query("COMMIT")
    assert server_connections(pg, ("app",)) == 2
    with login(pooler, user="md5_role") as other:
        assert other.rows("SELECT current_user") == [("md5_role",)]
    assert server_connections(pg, ("app", "md5_role")) <= 2


def test_max_user_connections_caps_servers_over_all_databases_of_a_user(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, max_user_connections=2,
                            query_wait_timeout=30,
                            databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                                       "app2": f"host=127.0.0.1 port={pg.port} dbname=app"})
    finish = sampler(pg, ("app",))
    try:
        errors = hammer(pooler, [("app", "app")] * 3 + [("app", "app2")] * 3)
    finally:
        seen = finish()
    assert errors == []
    assert max(seen) == 2, seen


def test_max_user_connections_evicts_an_idle_server_of_another_pool(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, max_user_connections=1,
                            query_wait_timeout=5,
                            databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                                       "app2": f"host=127.0.0.1 port={pg.port} dbname=app"})
    with login(pooler) as first:
        assert first.rows("SELECT 1") == [("1",)]
    with login(pooler, database="app2") as second:
        assert second.rows("SELECT 2") == [("2",)]
    assert server_connections(pg) == 1


def test_pool_size_caps_servers_of_one_pool(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, query_wait_timeout=30)
    finish = sampler(pg, ("app",))
    try:
        errors = hammer(pooler, [("app", "app")] * 6)
    finally:
        seen = finish()
    assert errors == []
    assert max(seen) == 2, seen


def test_min_pool_size_opens_servers_warm_and_keeps_them_through_server_idle_timeout(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, min_pool_size=3, server_idle_timeout=1)
    with login(pooler) as wire:
        assert wire.rows("SELECT 1") == [("1",)]
    wait_for(lambda: server_connections(pg) == 3, timeout=10, message="min_pool_size servers")
    time.sleep(2.5)       # beyond server_idle_timeout
    assert server_connections(pg) == 3


def test_min_pool_size_of_a_forced_user_database_opens_servers_before_any_client(pooler_factory, pg):
    """PgBouncer 1.25 creates the pools of forced-user databases up front, so they are warm from the start."""
    pooler_factory(pool_mode="transaction", default_pool_size=5, min_pool_size=2,
                   databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app user=app password={APP}"})
    wait_for(lambda: server_connections(pg) == 2, timeout=10, message="warm servers without any client")


def test_reserve_pool_serves_a_client_waiting_past_reserve_pool_timeout(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, reserve_pool_size=1,
                            reserve_pool_timeout=1, query_wait_timeout=10)
    with login(pooler) as holder, login(pooler) as waiter:
        holder.query("BEGIN")
        (holder_pid,) = holder.rows("SELECT pg_backend_pid()")[0]
        assert server_connections(pg) == 1
        (waiter_pid,) = waiter.rows("SELECT pg_backend_pid()", limit=15)[0]
        assert waiter_pid != holder_pid
        assert server_connections(pg) == 2
        holder.query("COMMIT")


def test_no_reserve_pool_means_waiting_for_the_pool(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, reserve_pool_size=0,
                            reserve_pool_timeout=1, query_wait_timeout=3)
    with login(pooler) as holder, login(pooler) as waiter:
        holder.query("BEGIN")
        holder.query("SELECT 1")
        waiter.send(query("SELECT 1"))
        assert_closed_with(waiter, "query_wait_timeout")
        assert server_connections(pg) == 1


# -- server login failures ---------------------------------------------------------------------------------

def test_server_login_retry_fails_clients_fast_then_tries_again(pooler_factory, pg):
    pg.create_role("retry_role", "retry-secret")
    pg.psql("ALTER ROLE retry_role NOLOGIN")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, server_login_retry=2,
                            userlist={"retry_role": "retry-secret"})

    def attempt() -> ServerError | None:
        with Wire(pooler.port, timeout=10) as wire:
            try:
                wire.login(user="retry_role", password="retry-secret")
            except ServerError as exc:
                assert wire.closed_by_peer(5)
                return exc
            assert wire.rows("SELECT current_user") == [("retry_role",)]
            return None

    first = attempt()
    assert first is not None and "not permitted to log in" in first.message
    second = attempt()
    assert second is not None
    assert second.message == "server login has been failing, cached error: role \"retry_role\" is not permitted " \
                             "to log in (server_login_retry)"
    pg.psql("ALTER ROLE retry_role LOGIN")
    wait_for(lambda: attempt() is None, timeout=15, interval=0.5, message="a login after server_login_retry")
