"""PgBouncer's socket settings: the TCP ones (tcp_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt,
tcp_user_timeout, tcp_socket_buffer, tcp_defer_accept) as socket options, and the Unix socket's mode and group.

PgBouncer sets them on every socket it accepts or opens. Linux copies a listening socket's options to each
socket it accepts, so maitred sets the clients' keepalive and timeout options once, on the listening sockets,
and a login costs no system call more; RELOAD and SET set them there again, for the clients that come next
(PgBouncer's apply to new sockets only too). A server connection gets them when it is made. Unix sockets take
none of them.

tcp_socket_buffer is set per connection instead, and only when not 0: a socket's buffers, once set, no longer
grow on their own, and a listening socket could not be given that back on a RELOAD to 0. A keepalive timer of 0
is the OS default, read from a fresh socket, so that a RELOAD back to 0 undoes an earlier value.
"""
from __future__ import annotations

import functools
import grp
import logging
import os
import socket

log = logging.getLogger("maitred.pooler")

# How long the kernel holds back a connection that has sent nothing: PgBouncer sets 1 (its documentation says 45);
# a client that is still silent after it is accepted all the same.
DEFER_ACCEPT_SECONDS = 1
RELOADABLE = ("tcp_keepalive", "tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt", "tcp_user_timeout",
              "tcp_defer_accept")     # what RELOAD and SET set again on the listening sockets
_TCP = socket.IPPROTO_TCP
_INET = (socket.AF_INET, socket.AF_INET6)
_KEEPALIVE_TIMERS = (("tcp_keepidle", socket.TCP_KEEPIDLE), ("tcp_keepintvl", socket.TCP_KEEPINTVL),
                     ("tcp_keepcnt", socket.TCP_KEEPCNT))


@functools.cache
def _os_default(option: int) -> int:
    """What a fresh TCP socket has for a keepalive timer: the host's sysctl (net.ipv4.tcp_keepalive_*)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as fresh:
        return fresh.getsockopt(_TCP, option)


def connection_options(config) -> list[tuple[int, int, int]]:
    """(level, option, value): keepalive and user timeout of a TCP connection, client's or server's."""
    keepalive = bool(config.get("tcp_keepalive"))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive))]
    if keepalive:
        options += [(_TCP, option, config.get(name) or _os_default(option)) for name, option in _KEEPALIVE_TIMERS]
    return options + [(_TCP, socket.TCP_USER_TIMEOUT, config.get("tcp_user_timeout"))]


def buffer_options(size: int) -> list[tuple[int, int, int]]:
    return [(socket.SOL_SOCKET, socket.SO_SNDBUF, size), (socket.SOL_SOCKET, socket.SO_RCVBUF, size)] if size else []


def listener_options(config) -> list[tuple[int, int, int]]:
    """A TCP listening socket's: its clients' (copied on accept), and TCP_DEFER_ACCEPT, with which the pooler
    wakes once for a client, when its startup packet has come, rather than at its handshake and again then."""
    defer = DEFER_ACCEPT_SECONDS if config.get("tcp_defer_accept") else 0
    return connection_options(config) + [(_TCP, socket.TCP_DEFER_ACCEPT, defer)]


def apply(sock, options: list[tuple[int, int, int]], what: str) -> None:
    """Set `options` on `sock` (a TCP one; others are left alone); one the kernel refuses is logged, and the
    rest are still set."""
    if sock is None or sock.family not in _INET:
        return
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            log.warning("%s: cannot set socket option %s (level %s) to %s: %s", what, option, level, value, exc)


def tune_listeners(app) -> None:
    """Set the TCP settings on the pooler's listening sockets (at start, and after RELOAD or SET)."""
    options = listener_options(app.config)
    for server in app.listeners:
        for sock in server.sockets or ():
            apply(sock, options, "listening socket")


def tune_client(transport, size: int) -> None:
    """tcp_socket_buffer on an accepted client's socket, when it is set."""
    apply(transport.get_extra_info("socket"), buffer_options(size), "client connection")


def tune_server(transport, config) -> None:
    """The TCP settings on a new server connection's socket."""
    apply(transport.get_extra_info("socket"),
          connection_options(config) + buffer_options(config.get("tcp_socket_buffer")), "server connection")


def unix_socket_access(path: str, config) -> None:
    """unix_socket_mode and unix_socket_group on the Unix socket just bound at `path`."""
    os.chmod(path, config.get("unix_socket_mode"))     # already a number: the loader read "0777" as octal
    group = config.get("unix_socket_group")
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"unix_socket_group: no such group: {group}") from None
        os.chown(path, -1, gid)
