"""Who may log in from outside the host: `[maitred] remote_access`.

A sidecar pooler serves its own pod's application over loopback, but the operator's autotuner must reach its
admin console on the pod IP. With `remote_access = console` the pooler listens everywhere and a client from
any address but loopback (or the Unix socket) may only log in to the admin console, as one of admin_users or
stats_users; with `all` (the default) the address does not matter, as in PgBouncer.
"""
from __future__ import annotations

import ipaddress

from .config import RESERVED_DATABASE


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
