"""Graceful drain: after SIGTERM clients keep working until [maitred] shutdown_timeout; then each one is let go
with 57P01 at its next transaction boundary, and the pooler exits (tests/test_shutdown.py: the rest of it)."""
from __future__ import annotations

import re
import signal
import subprocess
import time

import psycopg
import pytest

from maitred.local.postgres import free_port
from tests.support import PASSWORDS
from tests.test_metrics import http_get


def history_rows(pg) -> int:
    return int(pg.psql("SELECT count(*) FROM pgbench_history", dbname="app"))


def test_sigterm_during_pgbench_every_started_transaction_commits_or_is_never_sent(pooler_factory, pg):
    port = free_port()
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=4, expect_alive=False,
                            maitred={"http_port": port, "shutdown_timeout": 2})
    before = history_rows(pg)
    bench = subprocess.Popen(
        ["pgbench", "-n", "-c", "10", "-j", "2", "-T", "30", "-h", "127.0.0.1", "-p", str(pooler.port),
         "-U", "app", "app"], env={"PGPASSWORD": PASSWORDS["app"], "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    pooler.signal(signal.SIGTERM)
    assert http_get(port, "/readyz")[0] == 503          # readiness fails at once, before clients are gone
    out, err = bench.communicate(timeout=60)
    pooler.proc.wait(timeout=30)
    assert pooler.proc.returncode == 0
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    assert processed > 0
    # Each tpcb-like transaction inserts one history row: committed == counted, nothing cut in half.
    assert history_rows(pg) - before == processed
    aborted = [line for line in err.splitlines() if "abort" in line or "error" in line.lower()]
    assert aborted, err
    assert all("server shutting down" in line or "aborted" in line for line in aborted), err
    assert "unexpectedly" not in err


def test_sigterm_lets_an_open_transaction_finish_and_closes_idle_clients_after_shutdown_timeout(pooler_factory,
                                                                                                  pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, expect_alive=False,
                            maitred={"shutdown_timeout": 1})
    busy = psycopg.connect(pooler.dsn())
    idle = psycopg.connect(pooler.dsn(), autocommit=True)
    try:
        idle.execute("SELECT 1")
        busy.execute("CREATE TEMP TABLE IF NOT EXISTS drained (x int)")
        busy.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (0, 0, 0, 42, now())")
        pooler.signal(signal.SIGTERM)
        time.sleep(1.5)
        with pytest.raises(psycopg.OperationalError) as excinfo:
            idle.execute("SELECT 1")
        assert excinfo.value.sqlstate in (None, "57P01")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pooler.dsn(), connect_timeout=3)    # the listener is closed
        assert pooler.alive()                                  # still serving the open transaction
        assert busy.execute("SELECT count(*) FROM pgbench_history WHERE delta = 42").fetchone()[0] >= 1
        busy.commit()
        pooler.proc.wait(timeout=10)
        assert pooler.proc.returncode == 0
        assert pg.psql("SELECT count(*) FROM pgbench_history WHERE delta = 42", dbname="app") != "0"
    finally:
        busy.close()
        idle.close()
        pg.psql("DELETE FROM pgbench_history WHERE delta = 42", dbname="app")


def test_shutdown_timeout_closes_what_is_left(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, expect_alive=False,
                            maitred={"shutdown_timeout": 1})
    stuck = psycopg.connect(pooler.dsn())
    try:
        stuck.execute("SELECT 1")                      # in a transaction that never ends
        started = time.monotonic()
        pooler.signal(signal.SIGTERM)
        pooler.proc.wait(timeout=15)
        assert time.monotonic() - started >= 0.9
        assert pooler.proc.returncode == 0
        with pytest.raises(psycopg.OperationalError):
            stuck.execute("SELECT 1")
    finally:
        stuck.close()


def test_sigint_waits_for_busy_servers_then_exits(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, expect_alive=False)
    busy = psycopg.connect(pooler.dsn())
    try:
        busy.execute("SELECT 1")
        pooler.signal(signal.SIGINT)
        time.sleep(0.5)
        assert pooler.alive()
        busy.execute("SELECT 2")
        busy.commit()
        pooler.proc.wait(timeout=10)
        assert pooler.proc.returncode == 0
    finally:
        busy.close()
