"""A cancel reaches only the query of the client that sent it, even when it arrives as that query ends and the
server is about to serve someone else: the same race run through maitred and through Debian's PgBouncer."""
from __future__ import annotations

import threading

from tests.support import PASSWORDS, require_binary
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire, query, send_cancel

ITERATIONS = 300
QUERY_CANCELED = "57014"


def race(port: int) -> tuple[int, int, list[str]]:
    """Client A sends short queries, each followed at once by a cancel of its own; client B runs short queries
    on the same single server meanwhile. Returns A's cancelled queries, B's queries, and B's errors."""
    stop = threading.Event()
    innocent: dict[str, object] = {"queries": 0, "errors": []}

    def bystander() -> None:
        with Wire(port) as b:
            b.login(user="app", password=PASSWORDS["app"])
            while not stop.is_set():
                try:
                    b.rows("SELECT pg_sleep(0.002)")
                except ServerError as exc:
                    innocent["errors"].append(f"{exc.sqlstate}: {exc.message}")
                innocent["queries"] += 1

    thread = threading.Thread(target=bystander)
    thread.start()
    cancelled = 0
    try:
        with Wire(port) as a:
            a.login(user="app", password=PASSWORDS["app"])
            for _ in range(ITERATIONS):
                a.send(query("SELECT 1"))
                send_cancel(port, *a.backend_key)
                states = [kind for kind, body in a.read_until(b"Z", limit=10, raise_errors=False)
                          if kind == b"E" and f"C{QUERY_CANCELED}".encode() in body]
                cancelled += len(states)
    finally:
        stop.set()
        thread.join(30)
    return cancelled, innocent["queries"], innocent["errors"]


def test_a_late_cancel_never_stops_the_next_clients_query_on_a_pool_of_one(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    cancelled, queries, errors = race(pooler.port)
    print(f"maitred: A cancelled {cancelled} of {ITERATIONS}, B ran {queries}")
    assert queries > 0
    assert not errors, f"client B's queries were hit ({len(errors)} of {queries}; A's own: {cancelled}): {errors[:3]}"
    with Wire(pooler.port) as c:         # the held server went back into service
        c.login(user="app", password=PASSWORDS["app"])
        assert c.rows("SELECT 42") == [("42",)]


def test_pgbouncer_holds_a_server_with_a_cancel_in_flight_too(pg):
    """The side-by-side check: PgBouncer (since 1.18) passes the same race."""
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                         "pool_mode": "transaction", "default_pool_size": 1, "log_connections": 0,
                         "log_disconnections": 0},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, PASSWORDS)
    try:
        cancelled, queries, errors = race(bouncer.port)
    finally:
        bouncer.stop()
    print(f"pgbouncer: A cancelled {cancelled} of {ITERATIONS}, B ran {queries}")
    assert queries > 0
    assert not errors, f"PgBouncer let a cancel through: {errors[:3]}"

