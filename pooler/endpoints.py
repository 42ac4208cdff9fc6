"""The HTTP side of the pooler: /metrics for Prometheus, /healthz and /readyz for Kubernetes probes.

A few lines of asyncio instead of a web framework: three GET routes on the pooler's own event loop, so the
metrics read the pools without locks or threads.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .metrics import registry_for

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.http")


async def start(app: "Pooler") -> asyncio.AbstractServer | None:
    port = app.config.get("http_port")
    if not port:
        return None
    registry = registry_for(app)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"method not allowed\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", generate_latest(registry), CONTENT_TYPE_LATEST
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

    server = await asyncio.start_server(handle, app.config.get("http_addr") or None, port)
    log.info("HTTP endpoint on %s:%s (/metrics /healthz /readyz)", app.config.get("http_addr") or "*", port)
    return server
