"""SHOW STATS counted, and sockets numbered, as PgBouncer does: the same workload through Debian's PgBouncer and
maitred gives the same transaction, query and byte counts, exactly, since each is fixed by the messages sent."""
from __future__ import annotations

import time

import psycopg

from tests.support import PASSWORDS, require_binary
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import SYNC, TERMINATE, Wire, bind, execute, parse, query

USERS = {"app": PASSWORDS["app"], "admin": "admin-secret"}
SETTINGS = {"auth_type": "scram-sha-256", "pool_mode": "transaction", "default_pool_size": 1, "admin_users": "admin",
            "stats_period": 1}
EXACT = ("total_xact_count", "total_query_count", "total_received", "total_sent")


def extended(sql: str) -> bytes:
    return parse(sql) + bind() + execute()


# (what goes out in one write, how many ReadyForQuery messages come back)
WORKLOAD = [
    (query("SELECT 1"), 1),
    (query("SELECT 1"), 1),
    (query("BEGIN"), 1), (query("SELECT 2"), 1), (query("COMMIT"), 1),
    (query("SELECT 1; SELECT 2"), 1),
    (query("SELECT 1/0"), 1),
    (query("BEGIN"), 1), (query("SELECT 1/0"), 1), (query("ROLLBACK"), 1),
    (extended("SELECT 3") + SYNC, 1),
    (extended("SELECT 4") + SYNC + extended("SELECT 5") + SYNC, 2),
    (query("BEGIN") + query("SELECT 6") + query("COMMIT"), 3),
]


def run_workload(port: int) -> None:
    with Wire(port) as wire:
        wire.login(user="app", password=USERS["app"])
        for data, ready in WORKLOAD:
            wire.send(data)
            for _ in range(ready):
                wire.read_until(b"Z", raise_errors=False)
        wire.send(TERMINATE)
        assert wire.closed_by_peer(5)


def show(port: int, command: str) -> list[dict]:
    dsn = f"host=127.0.0.1 port={port} user=admin dbname=pgbouncer password={USERS['admin']}"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute(f"SHOW {command}")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def app_stats(port: int) -> dict:
    return {row["database"]: row for row in show(port, "STATS")}["app"]


def test_show_stats_counts_the_same_workload_as_pgbouncer_does(pooler_factory, pg):
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}
    maitred = pooler_factory(userlist=USERS, databases=databases, **SETTINGS)
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "", **SETTINGS},
                        databases, USERS)
    try:
        for port in (bouncer.port, maitred.port):
            run_workload(port)
        time.sleep(2.5)         # PgBouncer folds the counters into SHOW STATS each stats_period
        theirs, ours = app_stats(bouncer.port), app_stats(maitred.port)
    finally:
        bouncer.stop()
    assert {k: ours[k] for k in EXACT} == {k: theirs[k] for k in EXACT}
    # PgBouncer 1.25 counts a client linked to a server (1.18 has no such column): once per transaction here.
    assert ours["total_server_assignment_count"] == theirs["total_xact_count"]
    for name in ("total_xact_time", "total_query_time"):
        assert ours[name] > 0 and theirs[name] > 0, name
    assert ours["total_query_time"] <= ours["total_xact_time"]



def test_clients_and_servers_are_numbered_from_one_sequence_in_the_order_they_came(pooler_factory, pg):
    """PgBouncer 1.25 numbers every client and server socket from one counter when it is made (objects.c)."""
    maitred = pooler_factory(userlist=USERS, databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app"},
                             **SETTINGS)
    with Wire(maitred.port) as first:
        first.login(user="app", password=USERS["app"])      # the pool's first server is opened for it
        with Wire(maitred.port) as second:
            second.login(user="app", password=USERS["app"])
            clients = [row["id"] for row in show(maitred.port, "CLIENTS") if row["database"] == "app"]
            servers = [row["id"] for row in show(maitred.port, "SERVERS")]
    assert len(clients) == 2 and len(servers) == 1
    assert clients[0] < servers[0] < clients[1]


def test_xact_time_covers_transactions_not_the_session_holding_the_server(pooler_factory, pg):
    """PgBouncer counts a transaction's time from its first query to its end: in session mode the idle time of a
    client holding its server is not transaction time."""
    settings = {**SETTINGS, "pool_mode": "session"}
    maitred = pooler_factory(userlist=USERS, databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app"},
                             **settings)
    with Wire(maitred.port) as wire:
        wire.login(user="app", password=USERS["app"])
        wire.query("SELECT 1")
        time.sleep(1.5)
        wire.query("SELECT 2")
    time.sleep(2.5)          # the next stats_period
    stats = app_stats(maitred.port)
    assert stats["total_xact_count"] == 2
    assert 0 < stats["total_xact_time"] < 1_000_000, stats["total_xact_time"]
