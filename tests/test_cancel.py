"""Cancel requests through the pooler: they reach the right backend, and only with the right key."""
from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.support import PASSWORDS, wait_for
from tests.wire import Wire, query, send_cancel


def wait_until_sleeping(pg, count: int = 1) -> None:
    wait_for(lambda: int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                                 "AND state = 'active' AND query LIKE 'SELECT pg_sleep%'")) >= count,
             timeout=10, message=f"{count} pg_sleep running")


def cancel_from_another_thread(conn: psycopg.Connection, pg) -> threading.Thread:
    def cancel() -> None:
        wait_until_sleeping(pg)
        conn.cancel()

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psycopg_cancel_stops_a_running_query_through_the_pooler(pooler_factory, pg, mode):
    pooler = pooler_factory(pool_mode=mode, default_pool_size=2)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        thread = cancel_from_another_thread(conn, pg)
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(60)")
        thread.join()
        assert time.monotonic() - started < 30, "the query ran on: the cancel did not reach the backend"
        # The connection stays usable after the cancel.
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cancel_leaves_other_clients_queries_alone(pooler_factory, pg, mode):
    pooler = pooler_factory(pool_mode=mode, default_pool_size=3)
    results: dict[str, object] = {}

    def bystander() -> None:
        try:
            with psycopg.connect(pooler.dsn(), autocommit=True) as other:
                results["bystander"] = other.execute("SELECT pg_sleep(3), 'finished'").fetchone()[1]
        except Exception as exc:  # asserted in the main thread
            results["bystander"] = exc

    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        other_thread = threading.Thread(target=bystander)
        other_thread.start()
        wait_until_sleeping(pg)
        thread = cancel_from_another_thread(conn, pg)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(60)")
        thread.join()
        other_thread.join()
    assert results["bystander"] == "finished"


def test_asyncpg_timeout_cancels_the_query_through_the_pooler(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="session", default_pool_size=2)

    async def scenario() -> int:
        conn = await asyncpg.connect(host="127.0.0.1", port=pooler.port, user="app", password=PASSWORDS["app"],
                                     database="app", statement_cache_size=0)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(60)", timeout=1)
            return await conn.fetchval("SELECT 7")
        finally:
            await asyncio.wait_for(conn.close(), 5)     # asyncpg waits for the pooler to close its side

    assert asyncio.run(scenario()) == 7
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' "
                             "AND state = 'active'") == "0", timeout=10, message="the cancelled query to stop")


@pytest.mark.parametrize("wrong", ["key", "pid"])
def test_cancel_with_a_wrong_key_does_nothing(pooler_factory, pg, wrong):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        pid, key = wire.backend_key
        wire.send(query("SELECT pg_sleep(2), 'done'"))
        wait_until_sleeping(pg)
        if wrong == "key":
            send_cancel(pooler.port, pid, (key + 1) & 0xffffffff)
        else:
            send_cancel(pooler.port, (pid + 1) & 0x7fffffff, key)
        messages = wire.read_until(b"Z", limit=10)
        assert b"E" not in [kind for kind, _ in messages]
        assert (b"C", b"SELECT 1\0") in messages
    # The right key, for contrast, does cancel.
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.send(query("SELECT pg_sleep(60)"))
        wait_until_sleeping(pg)
        send_cancel(pooler.port, *wire.backend_key)
        error = wire.expect_error(limit=10)
        assert error.sqlstate == "57014"


def test_cancel_for_an_idle_client_does_not_touch_the_server_it_used(pooler_factory, pg):
    """A transaction-mode client between transactions owns no server: its cancel must hit nobody else."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with Wire(pooler.port) as idle, psycopg.connect(pooler.dsn(), autocommit=True) as busy:
        idle.login(user="app", password=PASSWORDS["app"])
        idle.query("SELECT 1")             # it used the only server, then gave it back
        result = {}

        def run() -> None:
            try:
                result["value"] = busy.execute("SELECT pg_sleep(2), 'done'").fetchone()[1]
            except Exception as exc:  # asserted below
                result["value"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        wait_until_sleeping(pg)
        send_cancel(pooler.port, *idle.backend_key)
        thread.join()
        assert result["value"] == "done"


def test_cancel_keys_stay_distinct_past_one_block_of_randomness(tmp_path):
    from pooler.app import Pooler
    from pooler.client import Client
    from pooler.config import load_config

    ini = tmp_path / "pooler.ini"
    ini.write_text("[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = trust\n")

    async def keys() -> list[int]:
        app = Pooler(load_config(ini))
        return [app.register_cancel_key(Client(app)) for _ in range(2000)]

    handed = asyncio.run(keys())
    assert len(set(handed)) == len(handed)
    assert all(0 <= key < 1 << 63 for key in handed)      # the pid half is never negative
