"""`[maitred] remote_access = console`: from an address other than loopback only the admin console answers,
to admin_users and stats_users (how a sidecar lets the operator's autotuner in and nobody else)."""
from __future__ import annotations

import socket

import psycopg
import pytest

from pooler.access import is_local, remote_refusal
from tests.support import missing
from tests.test_admin import USERS, start

ADMINS = ("admin", "watcher")


def host_address() -> str:
    """This machine's own address on its default route: a peer that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))        # no packet is sent: this only picks the source address
        except OSError:
            missing("no network address besides loopback")
        return s.getsockname()[0]


@pytest.mark.parametrize("peer, local", [
    (("127.0.0.1", 5000), True), (("127.8.9.10", 1), True), (("::1", 1, 0, 0), True),
    (("::ffff:127.0.0.1", 1, 0, 0), True), ("/tmp/.s.PGSQL.6432", True), (None, True),
    (("10.1.2.3", 5000), False), (("fd00::2", 1, 0, 0), False), (("::ffff:10.1.2.3", 1, 0, 0), False),
])
def test_loopback_and_unix_socket_peers_are_local(peer, local):
    assert is_local(peer) is local


def test_console_access_refuses_remote_logins_but_admins_to_the_console():
    remote = ("10.1.2.3", 5000)
    assert remote_refusal("all", remote, "app", "app", ADMINS) is None
    assert remote_refusal("console", ("127.0.0.1", 1), "app", "app", ADMINS) is None
    assert remote_refusal("console", remote, "admin", "pgbouncer", ADMINS) is None
    assert remote_refusal("console", remote, "watcher", "pgbouncer", ADMINS) is None
    assert "remote_access = console" in remote_refusal("console", remote, "app", "app", ADMINS)
    assert remote_refusal("console", remote, "admin", "app", ADMINS), "an admin reaches no pool from outside"
    assert remote_refusal("console", remote, "app", "pgbouncer", ADMINS)


def test_a_pooler_with_console_access_serves_everyone_on_loopback_and_only_the_console_elsewhere(pooler_factory):
    address = host_address()
    pooler = start(pooler_factory, listen_addr="*", maitred={"remote_access": "console"})
    with psycopg.connect(pooler.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="remote_access = console"):
        psycopg.connect(pooler.dsn(host=address), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="remote_access = console"):
        psycopg.connect(pooler.dsn(user="admin", dbname="app", password=USERS["admin"], host=address))
    with psycopg.connect(pooler.dsn(user="admin", dbname="pgbouncer", password=USERS["admin"], host=address),
                         autocommit=True, prepare_threshold=None) as con:
        assert con.execute("SHOW POOLS").fetchall()
    assert pooler.alive()


def test_without_remote_access_set_any_address_may_use_the_pools(pooler_factory):
    pooler = start(pooler_factory, listen_addr="*")
    with psycopg.connect(pooler.dsn(host=host_address()), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
