"""systemd's readiness notification, as PgBouncer sends it: the `Type=notify` unit Debian ships for pgbouncer
waits for READY=1 from the main process and kills a service that never sends it."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("maitred")


def notify_ready() -> None:
    """READY=1 to $NOTIFY_SOCKET (a path, or an abstract name after `@`); nothing when systemd did not ask."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(b"READY=1", address)
    except OSError as exc:
        log.warning("cannot tell systemd the pooler is ready (NOTIFY_SOCKET=%s): %s", address.lstrip("\0"), exc)
