"""The log lines operators grep for, in PgBouncer's words: each event is run through Debian's PgBouncer and
maitred, and the same line, with PgBouncer's `C-0x…: db/user@addr` / `S-0x…:` prefix, must be in both logs."""
from __future__ import annotations

import re
import socket
import time

import psycopg
import pytest

from tests.support import PASSWORDS, require_binary, wait_for
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import TERMINATE, ServerError, Wire

USERS = {"app": PASSWORDS["app"]}
SETTINGS = {"auth_type": "scram-sha-256", "pool_mode": "transaction", "log_connections": 1, "log_disconnections": 1}
CLIENT = r"C-0x[0-9a-f]+: app/app@127\.0\.0\.1:\d+ "
SERVER = r"S-0x[0-9a-f]+: {db}/app@127\.0\.0\.1:\d+ "


def login(port: int, dbname: str = "app") -> Wire:
    wire = Wire(port)
    wire.login(user="app", password=USERS["app"], database=dbname)
    return wire


def client_close_request(port: int) -> None:
    with login(port) as wire:
        wire.query("SELECT 1")
        wire.send(TERMINATE)
        assert wire.closed_by_peer(5)


def client_unexpected_eof(port: int) -> None:
    with login(port) as wire:
        wire.query("SELECT 1")
        wire.sock.shutdown(socket.SHUT_RDWR)


def server_idle_timeout(port: int) -> None:
    with login(port) as wire:
        wire.query("SELECT 1")
        time.sleep(2.5)


def reserve_pool(port: int) -> None:
    holder = psycopg.connect(f"host=127.0.0.1 port={port} user=app dbname=app password={USERS['app']}")
    holder.execute("SELECT 1")              # holds the pool's only server in a transaction
    try:
        with login(port) as wire:
            wire.query("SELECT 1", limit=10)   # served by the reserve after reserve_pool_timeout
    finally:
        holder.close()


def unknown_database(port: int) -> None:
    with pytest.raises(ServerError):
        login(port, "nowhere")


def auto_database(port: int) -> None:
    with login(port, "postgres") as wire:
        wire.query("SELECT 1")


# event: (extra settings, extra [databases] entries, the action, the line's pattern)
EVENTS = {
    "login attempt": ({}, {}, client_close_request, CLIENT + "login attempt: db=app user=app tls=no"),
    "new connection to server": ({}, {}, client_close_request,
                                 SERVER.format(db="app") + r"new connection to server \(from 127\.0\.0\.1:\d+\)"),
    "client close request": ({}, {}, client_close_request,
                             CLIENT + r"closing because: client close request \(age=\d+s\)"),
    "client unexpected eof": ({}, {}, client_unexpected_eof,
                              CLIENT + r"closing because: client unexpected eof \(age=\d+s\)"),
    "server idle timeout": ({"server_idle_timeout": 1}, {}, server_idle_timeout,
                            SERVER.format(db="app") + r"closing because: server idle timeout \(age=\d+s\)"),
    "taking connection from reserve_pool": (
        {"default_pool_size": 1, "reserve_pool_size": 1, "reserve_pool_timeout": 1}, {}, reserve_pool,
        CLIENT + "taking connection from reserve_pool"),
    "pooler error": ({}, {}, unknown_database,       # PgBouncer 1.18 names the database (nodb) here
                     CLIENT.replace("app/app", r"\S+/app") + "pooler error: no such database: nowhere"),
    "registered new auto-database": ({}, {"*": "host=127.0.0.1 port={pg_port}"}, auto_database,
                                     "registered new auto-database: db=postgres"),
}


def test_a_clients_login_and_logout_lines_name_it_alike(pooler_factory, pg):
    """The logout line formats the peer the login line asked of the socket (Client.peer keeps it)."""
    maitred = pooler_factory(userlist=USERS, **SETTINGS)
    with login(maitred.port) as wire:
        port = wire.sock.getsockname()[1]
        wire.query("SELECT 1")
        wire.send(TERMINATE)
        assert wire.closed_by_peer(5)
    text = maitred.wait_log(f"@127.0.0.1:{port} closing because")
    prefix = re.search(rf"(C-0x[0-9a-f]+: app/app@127\.0\.0\.1:{port}) login attempt", text).group(1)
    assert f"{prefix} closing because: client close request" in text


@pytest.mark.parametrize("event", list(EVENTS))
def test_the_log_says_it_in_pgbouncers_words(pooler_factory, pg, event):
    settings, extra, action, pattern = EVENTS[event]
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                 **{k: v.format(pg_port=pg.port) for k, v in extra.items()}}
    maitred = pooler_factory(userlist=USERS, databases=databases, **SETTINGS, **settings)
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "",
                                                      **SETTINGS, **settings}, databases, USERS)
    try:
        logs = {}
        for name, port, read in (("pgbouncer", bouncer.port, bouncer.log), ("maitred", maitred.port,
                                                                             maitred.log_text)):
            action(port)
            logs[name] = wait_for(lambda: re.search(pattern, read()) and read(), timeout=10,
                                  message=lambda: f"{pattern!r} in {name}'s log:\n{read()[-2000:]}")
    finally:
        bouncer.stop()
    assert all(re.search(pattern, text) for text in logs.values())
