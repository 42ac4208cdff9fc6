"""Peering, as PgBouncer 1.19+ does it: the cancel key says which pooler process gave it out.

Several poolers behind one port (so_reuseport, a load balancer, or maitred's own workers) each hold their own
clients, but a CancelRequest is a new connection that may land on any of them. So a peered pooler writes its
`peer_id` into every cancel key it hands out, and a cancel whose key names another peer is forwarded to that
peer's address from `[peers]`. The bytes are PgBouncer's, so maitred and PgBouncer can peer with each other:
the 2nd and 3rd bytes of the 8-byte key hold the peer id (low byte first), the last two bits a TTL that each
forward decrements (3 hops at most), and the sign bit of the first 4 bytes (the "pid") is clear.
"""
from __future__ import annotations

import os

from .config import PeerEntry

TTL_MASK = 0x03
_PEER_BITS = 0xFFFF << 40
_SIGN = 1 << 63


def stamp(key: int, peer_id: int) -> int:
    """`key` (8 bytes as one int) carrying `peer_id` and a full TTL; unchanged when peering is off."""
    if not peer_id:
        return key
    key = (key & ~_PEER_BITS) | (peer_id & 0xFF) << 48 | (peer_id >> 8 & 0xFF) << 40
    return (key | TTL_MASK) & ~_SIGN


def owner(key: int) -> int:
    """The peer id a cancel key carries."""
    return (key >> 48 & 0xFF) | (key >> 40 & 0xFF) << 8


def ttl(key: int) -> int:
    return key & TTL_MASK


def address(peer: PeerEntry) -> str:
    """Where to connect to a peer: `unix:PATH` for a socket directory (PgBouncer's `host=/dir`), else host:port."""
    host = peer.host or ""
    if host.startswith("/"):
        return "unix:" + os.path.join(host, f".s.PGSQL.{peer.port}")
    return f"{host}:{peer.port}"
