"""The uvloop relay floor: not a pooler, the least a transaction pooler on uvloop does (target `relay-floor`).

It welcomes every client with canned bytes (no authentication, no logging, no statistics), and relays each
client's messages to one of POOL_SIZE server connections to PostgreSQL, opened at its start, which the client
holds until the server's answer ends with ReadyForQuery; a client that finds every server busy waits in line.
It knows nothing of message boundaries but that last one, nothing of sessions, prepared statements, errors or
cancels. So what it costs per connection (S2) and per transaction (S1, S5) is a bound on a pooler built on
uvloop in Python: what it pays before it checks, counts, logs or parses anything of its own.

Run as `python3 -m bench.relay_floor PORT PG_PORT POOL_SIZE`; it logs in to PostgreSQL as the bench role. Target
`relay-floor-c` runs the same module compiled by Cython, as maitred's hot path is: the least such a pooler pays.
"""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import sys

import uvloop

from . import pgclient
from .floor import welcome
from .targets import DATABASE, HOST, PASSWORD, USER

_IDLE = b"Z\0\0\0\x05I"     # ReadyForQuery outside a transaction: the server goes back to the pool


class Pool:
    """The server connections: idle ones, and the clients waiting for one (with what they sent meanwhile)."""

    def __init__(self) -> None:
        self.idle: list[Server] = []
        self.waiting: collections.deque[Client] = collections.deque()

    def release(self, server: "Server") -> None:
        while self.waiting:
            client = self.waiting.popleft()
            if not client.closed:
                client.attach(server)
                return
        server.client = None
        self.idle.append(server)


class Server(asyncio.Protocol):
    """One logged-in PostgreSQL connection: what it sends goes to its client, until ReadyForQuery outside a
    transaction gives it back."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if not client.closed:
            client.transport.write(data)
        if data.endswith(_IDLE):
            client.server = None
            self.pool.release(self)

    def connection_lost(self, exc) -> None:
        print(f"relay floor: a server connection was lost ({exc})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


class Client(asyncio.Protocol):
    """One client: a StartupMessage first (SSLRequest and GSSENCRequest refused), then bytes to relay."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.buffer = b""
        self.started = False
        self.closed = False
        self.server: Server | None = None
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self._startup(data)
            return
        if data[:1] == b"X":        # Terminate, with nothing before it
            self.closed = True
            self.transport.close()
            return
        server = self.server
        if server is not None:
            server.transport.write(data)
        elif self.pending:
            self.pending.append(data)
        elif self.pool.idle:
            self.attach(self.pool.idle.pop(), data)
        else:
            self.pending.append(data)
            self.pool.waiting.append(self)

    def attach(self, server: Server, data: bytes | None = None) -> None:
        self.server = server
        server.client = self
        server.transport.write(data if data is not None else b"".join(self.pending))
        self.pending.clear()

    def _startup(self, data: bytes) -> None:
        self.started, rest = welcome(self.buffer + data, self.transport)
        self.buffer = b"" if self.started else rest
        if self.started and rest:
            self.data_received(rest)


async def _server(loop, pool: Pool, pg_port: int) -> Server:
    """A server connection logged in with pgclient (SCRAM), then its socket taken over by a Server protocol."""
    conn = await pgclient.connect(HOST, pg_port, USER, PASSWORD, DATABASE)
    sock = socket.socket(fileno=os.dup(conn.writer.get_extra_info("socket").fileno()))
    conn.writer.transport.abort()
    _, server = await loop.create_connection(lambda: Server(pool), sock=sock)
    return server


async def serve(port: int, pg_port: int, pool_size: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    pool = Pool()
    pool.idle.extend(await asyncio.gather(*(_server(loop, pool, pg_port) for _ in range(pool_size))))
    listener = await loop.create_server(lambda: Client(pool), "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"uvloop relay floor listening on 127.0.0.1:{port}, {pool_size} servers", flush=True)
    await stop
    listener.close()


def main(argv: list[str]) -> None:
    """PORT PG_PORT POOL_SIZE; a function, so that the compiled module (target relay-floor-c) runs it too."""
    uvloop.run(serve(int(argv[0]), int(argv[1]), int(argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
