"""The console and /metrics of a pooler made of several workers: ask every worker, answer once.

A console command given to one worker is also given to each of its siblings over their sockets in the run
directory (as the `pgbouncer` user of the pooler's own OS user, PgBouncer's peer rule, so no password is
involved), and their answers are merged (merge.py). SET, RELOAD, PAUSE, RESUME, KILL, RECONNECT, SUSPEND,
DISABLE, ENABLE and SHUTDOWN apply to every worker; a sibling runs what it is asked only for itself.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Awaitable

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from . import admin, merge, protocol
from .client import Client

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.admin")

TIMEOUT = 10.0       # a sibling that has not answered by then is left out, and the answer says so
WAITING = {"pause", "wait_close", "suspend"}     # commands that wait for the servers: no time limit
EVERYWHERE = {"set", "reload", "pause", "resume", "kill", "kill_client", "reconnect", "wait_close", "suspend",
              "disable", "enable", "shutdown"}


class SiblingError(Exception):
    pass


class SiblingClient(Client):
    """A connection from another worker of this pooler, on this worker's own socket: a forwarded cancel or a
    console command. It is nobody's client: not counted, listed, logged or waited for at shutdown, and read even
    while SUSPEND holds every other connection (RESUME comes this way)."""

    __slots__ = ()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.unix = True

    def log_login(self) -> None:
        """Not logged: nobody's client."""

    def log_closing(self, reason: str) -> None:
        """Not logged: nobody's client."""


def execute(con: admin.Console, sql: str) -> bytes | Awaitable[bytes] | None:
    """admin.execute for the whole pooler."""
    if isinstance(con.client, SiblingClient):       # a sibling asks this worker only
        return admin.execute(con, sql)
    word, arg = _command(sql)
    if word == "show" and (arg in merge.LISTED or arg in merge.KEYED):
        local = admin.execute(con, sql)          # also refuses what this user may not see
        return _show(con.app, sql, arg, local)
    if word == "shutdown":
        if arg not in admin.SHUTDOWN_MODES:
            raise admin._invalid(sql)
        con.need_admin()
        return _then_here(con, sql)
    if word not in EVERYWHERE:
        return admin.execute(con, sql)
    try:
        local = admin.execute(con, sql)
    except admin.ConsoleError:
        if word != "kill_client":             # the client may be another worker's
            raise
        return _anywhere(con.app, sql)
    return _everywhere(con.app, sql, local, None if word in WAITING else TIMEOUT)


def _command(sql: str) -> tuple[str, str]:
    if m := admin._COMMAND.match(sql):
        return admin._unquote(m[1]).lower(), admin._unquote(m[2]).lower()
    return ("set", "") if admin._SET.match(sql) else ("", "")


async def _show(app: "Pooler", sql: str, show: str, local: bytes) -> bytes:
    answers = await _ask_all(app, sql)
    columns, rows = _rows(local)
    sets = [rows]
    notices = []
    for index, answer in answers:
        if isinstance(answer, Exception):
            notices.append(_left_out(index, answer))
        else:
            sets.append(_rows(answer)[1])
    return b"".join(notices) + admin.result(columns, merge.merged(show, columns, sets))


async def _everywhere(app: "Pooler", sql: str, local: bytes | Awaitable[bytes], timeout: float | None) -> bytes:
    here = local if isinstance(local, bytes) else None
    answers = await asyncio.gather(_ask_all(app, sql, timeout), *([] if here is not None else [local]))
    if here is None:
        here = answers[1]
    notices = [_left_out(index, answer) for index, answer in answers[0] if isinstance(answer, Exception)]
    return b"".join(notices) + here


async def _anywhere(app: "Pooler", sql: str) -> bytes:
    """A command that succeeds on one worker at most (KILL_CLIENT of another worker's client)."""
    for _index, answer in await _ask_all(app, sql):
        if not isinstance(answer, Exception):
            return answer
    raise admin.ConsoleError("no such client")


async def _then_here(con: admin.Console, sql: str) -> bytes | None:
    """SHUTDOWN: the siblings first, since this worker may be gone the moment it runs it."""
    answers = await _ask_all(con.app, sql)
    for index, answer in answers:
        if isinstance(answer, Exception) and not isinstance(answer, (ConnectionError, asyncio.IncompleteReadError)):
            log.warning("worker %d: %s", index, answer)
    result = admin.execute(con, sql)
    if result is None:         # SHUTDOWN (immediate): the connection goes with the process
        await asyncio.Event().wait()
    return result


def _left_out(index: int, exc: Exception) -> bytes:
    log.warning("worker %d did not answer the console: %s", index, exc)
    return protocol.notice_response(f"worker {index} did not answer: {exc}")


async def _ask_all(app: "Pooler", sql: str, timeout: float | None = TIMEOUT) -> list[tuple[int, bytes | Exception]]:
    worker = app.worker
    port = app.config.get("listen_port")
    indexes = worker.siblings()
    answers = await asyncio.gather(*(asyncio.wait_for(ask(worker.socket_path(k, port), sql), timeout)
                                     for k in indexes), return_exceptions=True)
    return list(zip(indexes, [a if not isinstance(a, asyncio.TimeoutError) else SiblingError("timed out")
                              for a in answers]))


async def ask(path: str, sql: str) -> bytes:
    """Run one console command on the worker listening at `path`; its answer without ReadyForQuery. An
    ErrorResponse raises SiblingError."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(protocol.startup_message({"user": "pgbouncer", "database": "pgbouncer"}))
        await _until_ready(reader)
        writer.write(protocol.message(b"Q", sql.encode() + b"\x00"))
        answer = await _until_ready(reader)
        writer.write(protocol.TERMINATE)
        return answer
    finally:
        writer.close()


async def _until_ready(reader: asyncio.StreamReader) -> bytes:
    out = []
    while True:
        head = await reader.readexactly(5)
        body = await reader.readexactly(struct.unpack_from("!I", head, 1)[0] - 4)
        if head[:1] == b"Z":
            return b"".join(out)
        if head[:1] == b"E":
            raise SiblingError(_error_text(body))
        out.append(head + body)


def _error_text(body: bytes) -> str:
    for field in body.split(b"\x00"):
        if field[:1] == b"M":
            return field[1:].decode(errors="replace")
    return "error"


def _rows(answer: bytes) -> tuple[merge.Columns, list[merge.Row]]:
    """RowDescription and DataRows of an answer, the values as text."""
    columns: merge.Columns = []
    rows: list[merge.Row] = []
    pos = 0
    while pos < len(answer):
        kind = answer[pos:pos + 1]
        end = pos + 1 + struct.unpack_from("!I", answer, pos + 1)[0]
        body = answer[pos + 5:end]
        if kind == b"T":
            at = 2
            for _ in range(struct.unpack_from("!H", body)[0]):
                nul = body.index(b"\x00", at)
                name = body[at:nul].decode()
                oid = struct.unpack_from("!I", body, nul + 7)[0]
                columns.append((name, oid))
                at = nul + 19
        elif kind == b"D":
            at, row = 2, []
            for _ in range(struct.unpack_from("!H", body)[0]):
                size = struct.unpack_from("!i", body, at)[0]
                at += 4
                row.append(None if size < 0 else body[at:at + size].decode())
                at += max(size, 0)
            rows.append(tuple(row))
        pos = end
    return columns, rows


async def metrics(app: "Pooler", own: bytes) -> bytes:
    """The pooler's /metrics: this worker's and every sibling's, added up."""
    worker = app.worker
    texts = [own.decode()]
    fetched = await asyncio.gather(*(asyncio.wait_for(_fetch_metrics(worker.http_path(k)), TIMEOUT)
                                     for k in worker.siblings()), return_exceptions=True)
    for index, text in zip(worker.siblings(), fetched):
        if isinstance(text, Exception):
            log.warning("worker %d left out of /metrics: %s", index, text or type(text).__name__)
        else:
            texts.append(text)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merge.merged_metrics(texts)))
    return generate_latest(registry)


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


async def _fetch_metrics(path: str) -> str:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\n\r\n")
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SiblingError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return body.decode()
