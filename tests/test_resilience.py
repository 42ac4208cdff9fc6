"""The pooler when things go wrong around it: clients killed mid-transaction, PostgreSQL restarted under load,
and a client too slow to read what it asked for."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psycopg
import pytest

from tests.support import PASSWORDS, server_connections, wait_for
from tests.wire import Wire, query, rss_kib


def _no_open_transaction(pg) -> bool:
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                   "AND state LIKE 'idle in transaction%'") == "0"


def _lock_holder_process(pooler) -> subprocess.Popen:
    """A separate process that takes the row lock in a transaction, says so, and waits to be killed."""
    script = textwrap.dedent(f"""
        import sys, time, psycopg
        conn = psycopg.connect({pooler.dsn()!r})
        conn.execute("UPDATE resilience_probe SET v = v + 1 WHERE id = 1")
        conn.execute("INSERT INTO resilience_log VALUES ('from the killed client')")
        print("locked", flush=True)
        time.sleep(120)
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("how", ["SIGKILL", "TCP reset"])
def test_client_killed_mid_transaction_frees_its_server_and_rolls_back(pooler_factory, pg, mode, how):
    pg.psql("DROP TABLE IF EXISTS resilience_probe, resilience_log; "
            "CREATE TABLE resilience_probe (id int PRIMARY KEY, v int); INSERT INTO resilience_probe VALUES (1, 0);"
            "CREATE TABLE resilience_log (note text)", dbname="app", user="app")
    pooler = pooler_factory(pool_mode=mode, default_pool_size=1, query_wait_timeout=20)
    if how == "SIGKILL":
        holder = _lock_holder_process(pooler)
        assert holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    else:
        wire = Wire(pooler.port)
        wire.login(user="app", password=PASSWORDS["app"])
        wire.query("BEGIN")
        wire.query("UPDATE resilience_probe SET v = v + 1 WHERE id = 1")
        wire.query("INSERT INTO resilience_log VALUES ('from the killed client')")
        wire.abort()
    # The next client gets the only server and the row lock, and sees none of the killed client's work.
    with Wire(pooler.port, timeout=15) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.query("SET lock_timeout = '10s'")
        assert wire.rows("UPDATE resilience_probe SET v = v + 10 WHERE id = 1 RETURNING v", limit=15) == [("10",)]
        assert wire.rows("SELECT count(*) FROM resilience_log") == [("0",)]
    wait_for(lambda: _no_open_transaction(pg), timeout=10, message="no transaction left open by the pooler")
    assert server_connections(pg) <= 1


def test_postgresql_restart_under_load_errors_clients_then_recovers(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=5, server_login_retry=1,
                            query_wait_timeout=15, max_client_conn=100)
    env = dict(os.environ, PGPASSWORD=PASSWORDS["app"])
    bench = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(pooler.port), "-U", "app", "-n", "-S",
                              "-c", "8", "-j", "2", "-T", "12", "app"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        pg.restart()
        out, err = bench.communicate(timeout=90)   # ends on its own: no client hangs on a dead server
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode is not None
    assert "aborted" in err or "error" in err.lower(), (out, err)
    assert pooler.alive()
    pg.wait_ready()

    def works() -> bool:
        try:
            with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as conn:
                return conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()[0] == 1
        except psycopg.OperationalError:
            return False

    wait_for(works, timeout=20, interval=0.5, message="new clients to work through the pooler after the restart")
    result = pooler.pgbench("-n", "-S", "-c", "4", "-j", "2", "-T", "2")
    assert result.returncode == 0, result.stderr
    assert "number of failed transactions: 0 " in result.stdout
    assert pooler.alive()


def test_clients_waiting_during_an_outage_get_an_error_instead_of_hanging(pooler_factory, pg):
    """Queued through the outage (PgBouncer's retry), then told so once query_wait_timeout is up."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, server_login_retry=1,
                            query_wait_timeout=4, server_connect_timeout=3)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    pg.stop()
    try:
        with Wire(pooler.port, timeout=10) as wire:
            wire.login(user="app", password=PASSWORDS["app"])
            wire.send(query("SELECT 1"))
            error = wire.expect_error(limit=20)
            assert (error.fields["S"], error.message) == ("FATAL", "query_wait_timeout")
            assert wire.closed_by_peer(5)
    finally:
        pg.start()
    wait_for(lambda: _works(pooler), timeout=20, interval=0.5, message="the pooler to serve again")


def _works(pooler) -> bool:
    try:
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone()[0] == 1
    except psycopg.OperationalError:
        return False


def test_slow_reader_does_not_make_the_pooler_buffer_the_result(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    rows, width = 300, 1_000_000          # a 300 MB result
    with Wire(pooler.port, timeout=30, rcvbuf=65536) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        assert wire.rows("SELECT repeat('x', 1000)")[0][0] == "x" * 1000   # warm up the relay paths
        pid = pooler.proc.pid
        before = rss_kib(pid)
        peak = [before]
        wire.send(query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})"))
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:        # the client reads nothing meanwhile
            peak.append(rss_kib(pid))
            time.sleep(0.1)
        growth_mb = (max(peak) - before) / 1024
        assert growth_mb < 60, f"the pooler's RSS grew by {growth_mb:.0f} MB for a 300 MB result nobody read"
        # Then everything arrives, whole and in order.
        count, expected = 0, b"x" * width
        while True:
            kind, body = wire.read_message(limit=60)
            if kind == b"D":
                assert body[2:6] == width.to_bytes(4, "big") and body[6:] == expected
                count += 1
            elif kind == b"C":
                assert body == b"SELECT 300\0"
            elif kind == b"Z":
                break
            else:
                assert kind in (b"T",), (kind, body[:200])
        assert count == rows
        assert wire.rows("SELECT 'after'") == [("after",)]


def test_slow_reader_does_not_hold_up_other_clients(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    with Wire(pooler.port, timeout=30, rcvbuf=65536) as slow:
        slow.login(user="app", password=PASSWORDS["app"])
        slow.send(query("SELECT repeat('x', 1000000) FROM generate_series(1, 50)"))
        time.sleep(0.5)
        done = threading.Event()

        def other() -> None:
            with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                for _ in range(20):
                    conn.execute("SELECT 1")
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(20)
        assert done.is_set(), "another client was held up by a client that does not read"
        slow.close()


def test_fast_writer_to_a_stalled_server_does_not_make_the_pooler_buffer_its_data(pooler_factory, pg):
    """COPY FROM STDIN into a locked table: PostgreSQL stops reading, so the pooler must stop reading too."""
    pg.psql("DROP TABLE IF EXISTS bp_copy; CREATE TABLE bp_copy (line text)", dbname="app", user="app")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    chunk_rows = 1000
    chunk = b"".join(message_row(b"y" * 999) for _ in range(chunk_rows))     # ~1 MB of CopyData
    chunks = 300
    with psycopg.connect(pg.dsn(dbname="app")) as holder, Wire(pooler.port, timeout=60) as wire:
        holder.execute("LOCK TABLE bp_copy IN ACCESS EXCLUSIVE MODE")
        wire.login(user="app", password=PASSWORDS["app"])
        wire.rows("SELECT 1")
        pid = pooler.proc.pid
        before = rss_kib(pid)
        sent = []

        def writer() -> None:
            wire.send(query("COPY bp_copy FROM STDIN"))
            for _ in range(chunks):
                wire.sock.sendall(chunk)
                sent.append(len(chunk))
            wire.sock.sendall(b"c\x00\x00\x00\x04")

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        peak = [before]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak.append(rss_kib(pid))
            time.sleep(0.1)
        growth_mb = (max(peak) - before) / 1024
        assert sum(sent) < chunks * len(chunk), "the whole 300 MB went through although the server read nothing"
        assert growth_mb < 60, f"the pooler's RSS grew by {growth_mb:.0f} MB holding a stalled client's data"
        holder.commit()
        thread.join(120)
        assert not thread.is_alive()
        messages = wire.read_until(b"Z", limit=120)
        assert (b"C", f"COPY {chunks * chunk_rows}\0".encode()) in messages
    assert pg.psql("SELECT count(*) FROM bp_copy", dbname="app") == str(chunks * chunk_rows)


def message_row(line: bytes) -> bytes:
    return b"d" + (len(line) + 5).to_bytes(4, "big") + line + b"\n"
