"""PgBouncer's socket settings on the pooler's own sockets. The tcp_* ones are read from the running process
(pidfd_getfd), side by side with Debian's PgBouncer on the same settings: the accepted client's, the server
connection's and the listening socket's, and what SET changes for the clients that come next. The Unix socket's
mode and group are read from the file system."""
from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import socket
import stat

import psycopg
import pytest

from tests.support import require_binary
from tests.test_admin import USERS, console
from tests.test_admin_pgbouncer import PgBouncer

_libc = ctypes.CDLL(None, use_errno=True)
_PIDFD_OPEN, _PIDFD_GETFD = 434, 438        # the same number on every Linux architecture
TCP = socket.IPPROTO_TCP
SETTINGS = {"tcp_keepidle": 33, "tcp_keepintvl": 7, "tcp_keepcnt": 4, "tcp_user_timeout": 1234,
            "tcp_socket_buffer": 65536}


@contextlib.contextmanager
def sockets_of(pid: int):
    """Copies of every socket the process `pid` holds (root may take them with pidfd_getfd)."""
    pidfd = _libc.syscall(_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_open({pid})")
    taken = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = _libc.syscall(_PIDFD_GETFD, pidfd, int(name), 0)
            if fd >= 0:
                taken.append(socket.socket(fileno=fd))
        yield taken
    finally:
        for sock in taken:
            sock.close()
        os.close(pidfd)


def _peer(sock: socket.socket):
    try:
        return sock.getpeername()
    except OSError:
        return None


def options(sock: socket.socket) -> dict[str, int]:
    return {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepidle": sock.getsockopt(TCP, socket.TCP_KEEPIDLE),
            "keepintvl": sock.getsockopt(TCP, socket.TCP_KEEPINTVL),
            "keepcnt": sock.getsockopt(TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(TCP, socket.TCP_USER_TIMEOUT),
            "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}


def pooler_side(pid: int, client: psycopg.Connection, pg_port: int, listen_port: int) -> dict[str, dict]:
    """The options of the pooler's end of `client`, of one of its server connections, and TCP_DEFER_ACCEPT of
    its listening socket."""
    here = client.pgconn.socket
    mine = socket.socket(fileno=os.dup(here))
    try:
        own_end = mine.getsockname()
    finally:
        mine.close()
    found = {}
    with sockets_of(pid) as taken:
        for sock in taken:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            peer = _peer(sock)
            if peer == own_end:
                found["client"] = options(sock)
            elif peer is not None and peer[1] == pg_port:
                found["server"] = options(sock)
            elif peer is None and sock.getsockname()[1] == listen_port:
                found["defer_accept"] = sock.getsockopt(TCP, socket.TCP_DEFER_ACCEPT)
    assert set(found) == {"client", "server", "defer_accept"}, found
    return found


def _connect(port: int, user: str = "app") -> psycopg.Connection:
    conn = psycopg.connect(host="127.0.0.1", port=port, dbname="app", user=user, password=USERS[user],
                           autocommit=True)
    conn.execute("SELECT 1")        # a server connection now exists, idle in the pool
    return conn


def _fresh_socket_options() -> dict[str, int]:
    with socket.socket() as fresh:
        return options(fresh)


def test_tcp_settings_are_on_the_client_server_and_listening_sockets_as_pgbouncer_sets_them(pooler_factory, pg):
    settings = {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                "pool_mode": "transaction", **SETTINGS}
    pooler = pooler_factory(userlist=USERS, **settings)
    bouncer = PgBouncer(require_binary("pgbouncer"), settings, {"app": f"host=127.0.0.1 port={pg.port} dbname=app"},
                        USERS)
    try:
        with _connect(pooler.port) as ours, _connect(bouncer.port) as theirs:
            mine = pooler_side(pooler.proc.pid, ours, pg.port, pooler.port)
            pgbouncers = pooler_side(bouncer.proc.pid, theirs, pg.port, bouncer.port)
    finally:
        bouncer.stop()
    expected = {"keepalive": 1, "keepidle": 33, "keepintvl": 7, "keepcnt": 4, "user_timeout": 1234,
                "sndbuf": 2 * 65536}      # Linux doubles a buffer size it is given, for its own bookkeeping
    assert mine["client"] == expected and mine["server"] == expected
    assert mine["defer_accept"] > 0
    assert mine == pgbouncers


def test_the_defaults_turn_keepalive_on_with_the_os_timers_and_defer_accept_on(pooler_factory, pg):
    pooler = pooler_factory(userlist=USERS)
    with _connect(pooler.port) as client:
        found = pooler_side(pooler.proc.pid, client, pg.port, pooler.port)
    fresh = _fresh_socket_options()
    for end in ("client", "server"):      # a buffer left to the OS grows with the traffic: not compared
        assert {**found[end], "sndbuf": None} == {**fresh, "keepalive": 1, "sndbuf": None}, end
    assert found["defer_accept"] > 0


def test_set_changes_the_clients_that_come_next_and_leaves_the_connected_ones(pooler_factory, pg):
    pooler = pooler_factory(userlist=USERS, admin_users="admin", **SETTINGS)
    with _connect(pooler.port) as before, console(pooler) as con:
        for command in ("SET tcp_keepidle = 44", "SET tcp_user_timeout = 0", "SET tcp_socket_buffer = 0",
                        "SET tcp_defer_accept = 0"):
            con.execute(command)
        with _connect(pooler.port) as after:
            old = pooler_side(pooler.proc.pid, before, pg.port, pooler.port)
            new = pooler_side(pooler.proc.pid, after, pg.port, pooler.port)
        con.execute("SET tcp_keepalive = 0")
        with _connect(pooler.port) as unkept:
            off = pooler_side(pooler.proc.pid, unkept, pg.port, pooler.port)
    assert old["client"]["keepidle"] == 33 and old["client"]["user_timeout"] == 1234
    fresh = _fresh_socket_options()
    assert {**new["client"], "sndbuf": None} == {**fresh, "keepalive": 1, "keepidle": 44, "keepintvl": 7,
                                                 "keepcnt": 4, "sndbuf": None}
    assert new["client"]["sndbuf"] != 2 * 65536       # left to the OS again
    assert new["defer_accept"] == 0
    assert off["client"]["keepalive"] == 0


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_a_nonsense_tcp_setting_is_refused_by_set_and_changes_nothing(pooler_factory, pg, value):
    pooler = pooler_factory(userlist=USERS, admin_users="admin", tcp_keepidle=33)
    with console(pooler) as con:
        with pytest.raises(psycopg.Error):
            con.execute(f"SET tcp_keepidle = {value}")
        with _connect(pooler.port) as client:
            found = pooler_side(pooler.proc.pid, client, pg.port, pooler.port)
    assert found["client"]["keepidle"] == 33


def _other_group() -> grp.struct_group:
    return next(g for g in grp.getgrall() if g.gr_gid != os.getegid())


def test_unix_socket_group_and_mode_are_the_sockets(pooler_factory, pg, tmp_path):
    group = _other_group()
    pooler = pooler_factory(unix_socket_dir=str(tmp_path), unix_socket_mode="0770", unix_socket_group=group.gr_name)
    found = os.stat(tmp_path / f".s.PGSQL.{pooler.port}")
    assert (found.st_gid, stat.S_IMODE(found.st_mode)) == (group.gr_gid, 0o770)


def test_an_unknown_unix_socket_group_stops_the_start_naming_it(pooler_factory, pg, tmp_path):
    with pytest.raises(RuntimeError, match="cannot start") as failed:
        pooler_factory(expect_alive=False, unix_socket_dir=str(tmp_path), unix_socket_group="no-such-group-here")
    assert "unix_socket_group: no such group: no-such-group-here" in str(failed.value)
