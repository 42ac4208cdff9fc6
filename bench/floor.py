"""The uvloop floor: not a pooler, a uvloop server that answers every login and every query at once with canned
bytes, with no PostgreSQL behind it, no pooling and no logging (target `floor`).

What it costs per connection is what any pooler built on uvloop pays before doing anything of its own: the
accept, the transport, a read callback per message batch, a write per answer, the close. It bounds what
maitred's connect path (S2) can reach, and is run side by side with PgBouncer like any target. It has no server
side, so it stands for S2 only: under S1 it would be half a relay.

It speaks just enough of the protocol for `pgbench -S` (with or without -C): AuthenticationOk and a welcome for
any StartupMessage, the two answers pgbench asks for at its start (`count(*)` of pgbench_branches, then its
partition query), and one canned row for any other simple Query. Run as `python3 -m bench.floor PORT`.
"""
from __future__ import annotations

import asyncio
import signal
import struct
import sys

import uvloop

from .pgclient import message

_LENGTH = struct.Struct("!I")
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def _parameter(name: str, value: str) -> bytes:
    return message(b"S", f"{name}\0{value}\0".encode())


def _column(name: str) -> bytes:
    """An int4 column of no table, in RowDescription."""
    return name.encode() + b"\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)


def _result(columns: list[str], values: list[bytes | None]) -> bytes:
    row = b"".join(_LENGTH.pack(0xFFFFFFFF) if v is None else _LENGTH.pack(len(v)) + v for v in values)
    return (message(b"T", struct.pack("!h", len(columns)) + b"".join(map(_column, columns)))
            + message(b"D", struct.pack("!h", len(values)) + row)
            + message(b"C", b"SELECT 1\0") + message(b"Z", b"I"))


WELCOME = (message(b"R", _LENGTH.pack(0))
           + b"".join(_parameter(k, v) for k, v in (
               ("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
               ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on")))
           + message(b"K", struct.pack("!ii", 1, 2)) + message(b"Z", b"I"))
# pgbench's start: the scale (a count of pgbench_branches), then whether pgbench_accounts is partitioned
# (columns: the table's presence, partition strategy NULL, partition count 0).
SCALE = _result(["count"], [b"1"])
PARTITIONS = _result(["n", "partstrat", "count"], [b"1", None, b"0"])
ROW = _result(["abalance"], [b"0"])


def welcome(buf: bytes, transport: asyncio.Transport) -> tuple[bool, bytes]:
    """Read the start of a connection: refuse SSLRequest and GSSENCRequest, answer a StartupMessage with WELCOME.
    Whether the StartupMessage came, and the bytes after what was read."""
    while len(buf) >= 8:
        length, code = struct.unpack_from("!II", buf)
        if len(buf) < length:
            break
        buf = buf[length:]
        if code not in (SSL_REQUEST, GSSENC_REQUEST):
            transport.write(WELCOME)
            return True, buf
        transport.write(b"N")
    return False, buf


class Canned(asyncio.Protocol):
    """One client: a StartupMessage first (SSLRequest and GSSENCRequest refused), then typed messages."""

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        if not self.started:
            self.started, buf = welcome(buf, self.transport)
        while self.started:
            if len(buf) < 5:
                break
            end = 1 + _LENGTH.unpack_from(buf, 1)[0]
            if len(buf) < end:
                break
            kind, body, buf = buf[0], buf[5:end], buf[end:]
            if kind == 0x58:        # Terminate
                self.transport.close()
                break
            if kind == 0x51:        # Query
                self.transport.write(PARTITIONS if b"partstrat" in body else
                                     SCALE if b"pgbench_branches" in body else ROW)
        self.buffer = buf


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await loop.create_server(Canned, "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"uvloop floor listening on 127.0.0.1:{port}", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
