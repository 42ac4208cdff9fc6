"""Session, transaction and statement pooling against a real PostgreSQL, with real drivers."""
from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from tests.support import run_threads, server_connections


def test_session_mode_keeps_session_state_for_the_whole_connection(pooler_factory):
    pooler = pooler_factory(pool_mode="session", default_pool_size=2)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SET work_mem = '7MB'")
        conn.execute("CREATE TEMP TABLE scratch (x int)")
        for _ in range(5):
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert conn.execute("SHOW work_mem").fetchone()[0] == "7MB"
        conn.execute("INSERT INTO scratch VALUES (1)")


def test_session_mode_resets_the_server_before_the_next_client(pooler_factory):
    pooler = pooler_factory(pool_mode="session", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        first_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SET work_mem = '7MB'")
        conn.execute("CREATE TEMP TABLE scratch (x int)")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == first_pid
        assert conn.execute("SHOW work_mem").fetchone()[0] != "7MB"
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'").fetchone()[0] == 0


def test_transaction_mode_shares_one_server_between_clients(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as a, psycopg.connect(pooler.dsn(), autocommit=True) as b:
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        pid_b = b.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pid_a == pid_b
        with a.transaction():
            a.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
            a.execute("INSERT INTO t VALUES (1)")
            assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == pid_a


def test_transaction_mode_gives_each_client_its_own_reported_parameters(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    a = psycopg.connect(pooler.dsn(application_name="alpha", options=""), autocommit=True)
    b = psycopg.connect(pooler.dsn(application_name="beta"), autocommit=True)
    try:
        b.execute("SET TimeZone = 'Asia/Tokyo'")
        a.execute("SET DateStyle = 'German'")
        for _ in range(3):
            assert b.execute("SELECT current_setting('application_name'), current_setting('TimeZone')"
                             ).fetchone() == ("beta", "Asia/Tokyo")
            name, zone, style = a.execute("SELECT current_setting('application_name'), "
                                          "current_setting('TimeZone'), current_setting('DateStyle')").fetchone()
            assert name == "alpha" and zone != "Asia/Tokyo" and style.startswith("German")
            assert not b.execute("SELECT current_setting('DateStyle')").fetchone()[0].startswith("German")
    finally:
        a.close()
        b.close()


def test_each_login_is_told_the_parameters_it_asked_for_when_others_asked_the_same_before(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    asked = [("alpha", "UTC"), ("beta", "UTC"), ("alpha", "UTC"), ("alpha", "Asia/Tokyo"), ("beta", "UTC")]
    conns = [psycopg.connect(pooler.dsn(application_name=name), options=f"-c TimeZone={zone}", autocommit=True)
             for name, zone in asked]
    try:
        told = [(c.info.parameter_status("application_name"), c.info.parameter_status("TimeZone")) for c in conns]
        assert told == asked
        assert len({c.info.backend_pid for c in conns}) == len(conns)    # each its own cancel key
    finally:
        for c in conns:
            c.close()


def test_transaction_mode_keeps_a_transaction_on_one_server_and_set_local_does_not_leak(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    with psycopg.connect(pooler.dsn()) as a, psycopg.connect(pooler.dsn(), autocommit=True) as b:
        a.execute("SET LOCAL work_mem = '9MB'")
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] != pid   # a still holds its server
        assert a.execute("SHOW work_mem").fetchone()[0] == "9MB"
        a.commit()
        for _ in range(4):
            assert b.execute("SHOW work_mem").fetchone()[0] != "9MB"


def test_statement_mode_refuses_multi_statement_transactions(pooler_factory):
    pooler = pooler_factory(pool_mode="statement", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError, match="transaction blocks not allowed"):
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
    # The pool is still usable, and no transaction was left open on the server.
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert pooler.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                          "AND state LIKE 'idle in transaction%'") == "0"


def _sample_max_connections(pg, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        seen.append(server_connections(pg))
        time.sleep(0.02)


def test_fifty_clients_share_five_servers_in_transaction_mode(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, max_client_conn=200)
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=_sample_max_connections, args=(pg, stop, seen))
    sampler.start()
    try:
        result = pooler.pgbench("-n", "-S", "-c", "50", "-j", "2", "-T", "5")
    finally:
        stop.set()
        sampler.join()
    assert result.returncode == 0, result.stderr
    assert "number of failed transactions: 0 " in result.stdout
    assert int(re.search(r"number of transactions actually processed: (\d+)", result.stdout).group(1)) > 0
    # Some samples at least (each opens a connection to PostgreSQL: few when the machine is busy), none above 5.
    assert len(seen) > 3 and max(seen) <= 5, seen


@pytest.mark.parametrize("protocol", ["extended", "prepared-simple-mix"])
def test_pipelined_extended_protocol_in_transaction_mode(pooler_factory, protocol):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    if protocol == "extended":
        result = pooler.pgbench("-n", "-M", "extended", "-c", "10", "-j", "2", "-T", "3")
        assert result.returncode == 0, result.stderr
        assert "number of failed transactions: 0 " in result.stdout
        return
    def worker(n: int) -> None:
        # Unnamed statements only: named ones in transaction mode are the prepared-statement suite's.
        with psycopg.connect(pooler.dsn(), autocommit=True, prepare_threshold=None) as conn:
            for i in range(30):
                with conn.pipeline():
                    cursors = [conn.execute("SELECT %s::int + %s::int", (n, j)) for j in range(5)]
                    conn.execute("SELECT pg_backend_pid()")
                assert [c.fetchone()[0] for c in cursors] == [n + j for j in range(5)]
                with conn.transaction():
                    with conn.pipeline():
                        conn.execute("CREATE TEMP TABLE IF NOT EXISTS p (x int) ON COMMIT DROP")
                        conn.execute("INSERT INTO p VALUES (%s)", (i,))
                        cur = conn.execute("SELECT count(*) FROM p")
                    assert cur.fetchone()[0] == 1

    assert run_threads(worker, 20) == []
