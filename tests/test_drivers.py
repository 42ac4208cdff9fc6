"""The drivers of common application stacks, each with its own pool and its default prepared-statement
behaviour, through maitred in transaction mode on a pool of 2 servers (the programs: tests/drivers/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psycopg
import pytest

from tests.support import PASSWORDS, require_binary, server_connections, wait_for
from tests.test_admin_pgbouncer import PgBouncer

DRIVERS = Path(__file__).parent / "drivers"
BUILD = Path(__file__).parent.parent / "scripts" / "build-drivers.sh"
CLIENTS, ROUNDS, POOL_SIZE = 20, 12, 8
ADMIN = {"admin": "admin-secret"}


@pytest.fixture
def tx_pooler(pooler_factory):
    return pooler_factory(pool_mode="transaction", default_pool_size=2, max_client_conn=100,
                          userlist={**PASSWORDS, **ADMIN}, admin_users="admin")


def table(pg, driver: str) -> str:
    """An empty table of the driver's own, for its rollback and error steps."""
    name = f"drivers_{driver.replace('-', '_')}"
    pg.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, note text);"
            f"GRANT ALL ON {name} TO app", dbname="app")
    return name


def built(driver: str, *binaries: str) -> str:
    """The driver's cached build (scripts/build-drivers.sh makes it once, then finds it)."""
    for binary in binaries:
        require_binary(binary)
    result = subprocess.run([str(BUILD), driver], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def console(pooler) -> psycopg.Connection:
    """The console of maitred or of PgBouncer, whichever listens on `pooler.port`."""
    return psycopg.connect(host="127.0.0.1", port=pooler.port, user="admin", dbname="pgbouncer",
                           password=ADMIN["admin"], autocommit=True, prepare_threshold=None)


def show(pooler, what: str) -> list[dict]:
    with console(pooler) as conn:
        cur = conn.execute(f"SHOW {what}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def app_clients(pooler) -> list[dict]:
    return [row for row in show(pooler, "CLIENTS") if row["database"] == "app"]


def app_stats(pooler) -> dict:
    return next(row for row in show(pooler, "STATS") if row["database"] == "app")


def server_pids(pg) -> set[int]:
    return {int(pid) for pid in pg.psql("SELECT pid FROM pg_stat_activity WHERE usename = 'app' "
                                        "AND backend_type = 'client backend'").split()}


class Run:
    """One run of a driver program: its steps as printed, and what the pooler and PostgreSQL showed around
    the RECONNECT that the test issues when the program waits for it."""

    def __init__(self, command: list[str], pooler, pg, table: str, env: dict[str, str] | None = None):
        self.steps: dict[str, dict] = {}
        env = {**os.environ, **(env or {}), "PGHOST": "127.0.0.1", "PGPORT": str(pooler.port), "PGUSER": "app",
               "PGPASSWORD": PASSWORDS["app"], "PGDATABASE": "app", "CLIENTS": str(CLIENTS),
               "ROUNDS": str(ROUNDS), "POOL_SIZE": str(POOL_SIZE), "TABLE": table}
        with tempfile.TemporaryFile("w+") as stderr:
            proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
            watchdog = threading.Timer(180, proc.kill)
            watchdog.start()
            try:
                for line in proc.stdout:
                    step = json.loads(line)
                    self.steps[step["step"]] = step
                    if step["step"] == "awaiting-reconnect":
                        self.reconnect(pooler, pg)
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                self.returncode = proc.wait()
            finally:
                watchdog.cancel()
                proc.kill()
            stderr.seek(0)
            self.stderr = stderr.read()
        self.stats_after = app_stats(pooler)

    def reconnect(self, pooler, pg) -> None:
        # The driver's own pool holds more connections to the pooler than the pooler has servers (HikariCP
        # opens them in the background).
        wait_for(lambda: len(app_clients(pooler)) > 2, message="more clients than servers")
        self.servers_before = server_pids(pg)
        self.stats_before = app_stats(pooler)
        with console(pooler) as conn:
            conn.execute("RECONNECT")


def check(run: Run, pg, named_statements: bool, parse_counts: bool = True) -> None:
    """What every driver must get through the pooler, and see of it; `parse_counts` where SHOW STATS has them
    (maitred, PgBouncer 1.21+)."""
    assert run.returncode == 0, run.stderr[-4000:]
    expected_sum = CLIENTS * (CLIENTS - 1) // 2 * ROUNDS * (ROUNDS - 1) // 2
    concurrent = run.steps["concurrent"]
    assert concurrent["sum"] == expected_sum
    assert 1 <= len(concurrent["pids"]) <= 2, "a pool of 2 servers"
    assert len(run.servers_before) <= 2

    prepared = run.steps["prepared"]
    assert prepared["values"] == [2 * i for i in range(8)]
    assert prepared["server_prepared"] is named_statements
    if parse_counts and named_statements:
        assert run.stats_before["total_server_parse_count"] > 0
        assert run.stats_before["total_bind_count"] > run.stats_before["total_client_parse_count"], \
            "named statements are bound again without a new Parse"
    elif parse_counts:
        assert run.stats_before["total_client_parse_count"] == 0

    assert run.steps["rollback"]["ids"] == [1]
    error = run.steps["error"]
    assert error["sqlstates"] == ["22012", "25P02"]   # division_by_zero, in_failed_sql_transaction
    assert (error["after"], error["ids"]) == (1, [1])

    reconnected = run.steps["reconnected"]
    assert reconnected["sum"] == expected_sum
    assert 1 <= len(reconnected["pids"]) <= 2
    assert not set(reconnected["pids"]) & run.servers_before, "RECONNECT replaced every server"
    if named_statements and parse_counts:
        assert run.stats_after["total_server_parse_count"] > run.stats_before["total_server_parse_count"], \
            "the driver's statements were prepared again on the new servers"
    assert server_connections(pg) <= 2


def test_psycopg2_with_sqlalchemy_queuepool_and_pre_ping(tx_pooler, pg):
    run = Run([sys.executable, str(DRIVERS / "psycopg2" / "client.py")], tx_pooler, pg, table(pg, "psycopg2"))
    check(run, pg, named_statements=False)


def test_psycopg2_with_sqlalchemy_gets_the_same_through_pgbouncer(pg):
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                         "pool_mode": "transaction", "default_pool_size": 2, "admin_users": "admin"},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, {**PASSWORDS, **ADMIN})
    try:
        run = Run([sys.executable, str(DRIVERS / "psycopg2" / "client.py")], bouncer, pg, table(pg, "psycopg2"))
    finally:
        bouncer.stop()
    check(run, pg, named_statements=False, parse_counts=False)


def test_node_postgres_pool_with_named_statements(tx_pooler, pg):
    node_modules = built("node-postgres", "node", "npm")
    run = Run(["node", str(DRIVERS / "node-postgres" / "client.js")], tx_pooler, pg, table(pg, "node-postgres"),
              env={"NODE_PATH": node_modules})
    check(run, pg, named_statements=True)


def test_pgjdbc_with_hikaricp_past_its_prepare_threshold(tx_pooler, pg):
    jar = built("pgjdbc", "java", "mvn")
    run = Run(["java", "-jar", jar], tx_pooler, pg, table(pg, "pgjdbc"))
    check(run, pg, named_statements=True)
