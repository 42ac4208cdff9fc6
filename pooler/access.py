"""Who may log in from where: `[maitred] remote_access`, and PgBouncer's console rule for its own OS user.

A sidecar pooler serves its own pod's application over loopback, but the operator's autotuner must reach its
admin console on the pod IP. With `remote_access = console` the pooler listens everywhere and a client from
any address but loopback (or the Unix socket) may only log in to the admin console, as one of admin_users or
stats_users; with `all` (the default) the address does not matter, as in PgBouncer.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

from .config import RESERVED_DATABASE

OWN_CONSOLE_USER = "pgbouncer"
_UCRED = struct.Struct("3i")     # struct ucred: pid, uid, gid


def is_local(peer: object) -> bool:
    """A Unix-socket peer or a loopback address (IPv4-mapped IPv6 included)."""
    if not isinstance(peer, tuple):
        return True
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def remote_refusal(remote_access: str, peer: object, user: str, dbname: str,
                   console_users: tuple[str, ...]) -> str | None:
    """Why this login is refused for where it comes from; None when it may go on to authentication."""
    if remote_access != "console" or is_local(peer) or (dbname == RESERVED_DATABASE and user in console_users):
        return None
    return (f"from a remote address only admin_users and stats_users may log in, to the admin console "
            f"({RESERVED_DATABASE}): remote_access = console")


def _peer_credentials(sock) -> tuple[int, int, int] | None:
    """pid, uid and gid of the process at the other end of a Unix socket (SO_PEERCRED); None when unknown."""
    try:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError):
        return None


def peer_uid(sock) -> int | None:
    """The OS user of the process at the other end of a Unix socket; None when unknown."""
    credentials = _peer_credentials(sock)
    return credentials[1] if credentials else None


def peer_pid(sock) -> int | None:
    """The process at the other end of a Unix socket; None when unknown."""
    credentials = _peer_credentials(sock)
    return credentials[0] if credentials else None


def is_own_user(uid: int | None, own_uid: int, user: str, dbname: str) -> bool:
    """PgBouncer's rule: the user `pgbouncer`, connecting to the console over the Unix socket from a process of
    the pooler's own OS user, logs in without a password and with admin rights."""
    return uid is not None and uid == own_uid and user == OWN_CONSOLE_USER and dbname == RESERVED_DATABASE
