"""Hold many logged-in, idle client connections on a pooler and see how much resident memory they cost it."""
from __future__ import annotations

import asyncio
import time

from . import pgclient, processes
from .targets import Endpoint


class IdleClientsFailed(RuntimeError):
    """Not every client could log in, or the pooler vanished."""


async def open_clients(endpoint: Endpoint, count: int, concurrency: int, deadline: float) -> list[pgclient.Connection]:
    """Log `count` clients in, at most `concurrency` handshakes at a time; all must succeed before `deadline`."""
    gate = asyncio.Semaphore(concurrency)
    conns: list[pgclient.Connection] = []

    async def one() -> None:
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError()
            conns.append(await pgclient.connect(endpoint.host, endpoint.port, endpoint.user, endpoint.password,
                                                endpoint.database, timeout=left))

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for conn in conns:
            conn.close()
        first = errors[0]
        raise IdleClientsFailed(f"{len(errors)} of {count} clients did not log in "
                                f"({type(first).__name__}: {first})")
    return conns


async def _measure(endpoint: Endpoint, count: int, concurrency: int, timeout: float, settle: float) -> float:
    deadline = time.monotonic() + timeout
    await asyncio.sleep(settle)
    before = processes.rss_bytes(processes.process_tree(endpoint.pid))
    conns = await open_clients(endpoint, count, concurrency, deadline)
    try:
        await asyncio.sleep(settle)
        tree = processes.process_tree(endpoint.pid)
        after = processes.rss_bytes(tree)
        if not after:
            raise IdleClientsFailed("the pooler process is gone")
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports flush Terminate
    return (after - before) / count


def rss_per_client(endpoint: Endpoint, count: int, *, concurrency: int = 100, timeout: float = 300.0,
                   settle: float = 1.0) -> float:
    """Bytes of pooler RSS per idle client: (VmRSS with `count` clients − VmRSS before) / `count`, summed
    over the pooler's process tree."""
    if endpoint.pid is None:
        raise ValueError("idle clients are measured on a pooler process")
    return asyncio.run(_measure(endpoint, count, concurrency, timeout, settle))
