"""The HTTP side of the pooler: /metrics for Prometheus, /healthz and /readyz for Kubernetes probes.

A few lines of asyncio instead of a web framework: three GET routes on the pooler's own event loop, so the
metrics read the pools without locks or threads.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import siblings
from .metrics import registry_for

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.http")


async def start(app: "Pooler") -> list[asyncio.AbstractServer]:
    """The endpoint on http_port. With workers, each worker also serves its own /metrics on a socket in the run
    directory, and worker 1 alone the public endpoint, whose /metrics adds up every worker's."""
    port = app.config.get("http_port")
    if not port:
        return []
    registry = registry_for(app)

    async def own() -> bytes:
        return generate_latest(registry)

    async def total() -> bytes:
        return await siblings.metrics(app, generate_latest(registry))

    servers = []
    worker = app.worker
    if worker is not None:
        path = worker.http_path(worker.index)
        if os.path.exists(path):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(_handler(app, own), path))
        os.chmod(path, 0o777)       # reachable after -u switches user; the run directory keeps others out
        if worker.index != 1:
            return servers
    public = await _listen(_handler(app, own if worker is None else total), app.config.get("http_addr") or None, port)
    return servers + ([public] if public is not None else [])


def _handler(app: "Pooler", metrics):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"method not allowed\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", await metrics(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            elif path == "/readyz":
                if app.ready:
                    status, body = "200 OK", b"ready\n"
                else:
                    status, body = "503 Service Unavailable", b"not ready: draining or not listening\n"
                ctype = "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head + (body if method != "HEAD" else b""))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return handle


async def _listen(handle, addr: str | None, port: int) -> asyncio.AbstractServer | None:
    """The endpoint on its port; when that port is taken (a second pooler on the host, from the same config), on a
    free one, said in the log; when even that fails, none. It never keeps the pooler from serving clients."""
    try:
        server = await asyncio.start_server(handle, addr, port)
        log.info("HTTP endpoint on %s (/metrics /healthz /readyz)", _where(server))
        return server
    except OSError as exc:
        error = exc
    if error.errno == errno.EADDRINUSE:
        try:
            server = await asyncio.start_server(handle, addr, 0)
            log.warning("HTTP port %s is in use (another pooler on this host?): /metrics /healthz /readyz are on "
                        "%s instead; set [maitred] http_port to a free port, or 0 for none", port, _where(server))
            return server
        except OSError as exc:
            error = exc
    log.warning("HTTP endpoint not started, the pooler serves without /metrics /healthz /readyz: cannot listen "
                "on %s:%s: %s", addr or "*", port, os.strerror(error.errno) if (error.errno or 0) > 0 else error)
    return None


def _where(server: asyncio.AbstractServer) -> str:
    return ", ".join("%s:%s" % sock.getsockname()[:2] for sock in server.sockets)
