"""Protocol-level prepared statements in transaction mode.

A client's named statement lives on whichever server its transaction lands on, so the pooler tracks them:
every distinct (query text, parameter types) gets one internal name, `MAITRED_<n>`, shared by all clients;
each server keeps an LRU of the internal names it has prepared (max_prepared_statements). A client's Parse,
Bind, Describe and Close are rewritten to the internal name; a statement missing on the server is prepared
there first, and the responses the client did not ask for are swallowed, while those it asked for but the
server was never sent (a Parse of a statement the server already has, a Close) are made up, in order.

To keep that order, a tracking client's requests queue one entry each; the server's responses are matched
against the queue. After an error in an extended-protocol exchange, PostgreSQL ignores everything up to the
next Sync, and so does the queue; and when the error comes before that Sync has arrived from the client (a batch
in several reads), so does the tracker, for what arrives until it does (Tracker.skipping).

A table change can change a statement's result columns. PostgreSQL then refuses the statement in every session
that prepared it ("cached plan must not change result type") until that session prepares it again: its driver
described the old columns. The pooler keeps that promise per client although the server's statement is shared:
the first stale-plan error retires the Statement (`Registry.retire`), every server prepares its successor again
before using it, and a client still holding the retired one is refused as PostgreSQL would refuse it, until it
sends a Parse.
"""
from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .client import Client
    from .server import Server

_unpack_int = struct.Struct("!I").unpack_from

# Queue entries: (kind, internal statement name or None; for STALE, the ErrorResponse the client gets).
PARSE, BIND, CLOSE, DESCRIBE, EXECUTE, SYNC, QUERY = range(7)
SWALLOW_PARSE, SWALLOW_CLOSE, FAKE_PARSE, FAKE_CLOSE = range(7, 11)
# A Bind of a retired statement, sent to the server as a Bind it must refuse (_BIND_RETIRED): the server's error,
# and its skip to the next Sync, stand for the stale-plan error, which the client gets in its place: the one
# PostgreSQL gave when the statement was retired (drivers read its fields: asyncpg prepares again on its routine,
# RevalidateCachedQuery). A Describe of one is sent for its successor and answered with the successor's
# ParameterDescription, as PostgreSQL answers it before finding the plan stale; the columns are swallowed
# (SWALLOW_DESCRIBE) and a _BIND_RETIRED follows, for the error.
STALE, SWALLOW_DESCRIBE = 11, 12

# The response that completes each kind of request (besides an ErrorResponse).
_DONE = {PARSE: b"1", SWALLOW_PARSE: b"1", BIND: b"2", CLOSE: b"3", SWALLOW_CLOSE: b"3",
         DESCRIBE: b"Tn", SWALLOW_DESCRIBE: b"Tn", EXECUTE: b"CIs", SYNC: b"Z", QUERY: b"Z"}
_FAKE = {FAKE_PARSE: protocol.message(b"1"), FAKE_CLOSE: protocol.message(b"3")}
_SWALLOWED = (SWALLOW_PARSE, SWALLOW_CLOSE, SWALLOW_DESCRIBE)
# Entries whose answers the pooler rewrites (or whose failure changes what a server has prepared): while
# one is queued, the server's answers go through `server_data`; otherwise the relay's fast path is exact.
_SPECIAL = (PARSE, SWALLOW_PARSE, SWALLOW_CLOSE, FAKE_PARSE, FAKE_CLOSE, STALE, SWALLOW_DESCRIBE)
_DONE_TABLE = []
for _kind in range(SWALLOW_DESCRIBE + 1):
    _row = bytearray(256)
    for _b in _DONE.get(_kind, b""):
        _row[_b] = 1
    _DONE_TABLE.append(bytes(_row))
_STALE_PLAN = b"cached plan must not change result type"
# A Bind PostgreSQL refuses, with an ERROR: of a statement no server has (clients' names are rewritten to
# MAITRED_<n>), and should a client's SQL-level PREPARE have made one of that name, cut short where it announces
# 65535 parameter format codes ("insufficient data left in message").
RETIRED_NAME = b"MAITRED_RETIRED"
# What PostgreSQL refuses a statement with in a failed transaction, before it looks at the statement's plan.
_IN_FAILED_TRANSACTION = protocol.error_response(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block")
_BIND_RETIRED = protocol.message(b"B", b"\x00" + RETIRED_NAME + b"\x00\xff\xff")

# PostgreSQL's frontend message types.
FRONTEND_TYPES = bytearray(256)
for _t in b"BCdcfDEHFPpQSX":
    FRONTEND_TYPES[_t] = 1

# Client messages that mean "this client uses the extended protocol": from then on it is tracked.
EXTENDED = bytearray(256)
for _t in b"PBDECH":
    EXTENDED[_t] = 1

_RESET_COMMANDS = (b"DEALLOCATE ALL", b"DISCARD ALL")


class Statement:
    """One distinct query text + parameter types, and the name every server knows it by."""

    __slots__ = ("name", "tail", "retired")

    def __init__(self, name: bytes, tail: bytes):
        self.name = name      # internal name, without the NUL
        self.tail = tail      # the Parse body after the statement name: query\0 + parameter types
        self.retired = b""    # once its columns may have changed: PostgreSQL's ErrorResponse that said so


class Registry:
    """The pooler-wide map from statement text to internal name."""

    def __init__(self):
        self.statements: dict[bytes, Statement] = {}

    def get(self, tail: bytes) -> Statement:
        stmt = self.statements.get(tail)
        if stmt is None:
            stmt = self.statements[tail] = Statement(b"MAITRED_%d" % (len(self.statements) + 1), tail)
        return stmt

    def retire(self, stmt: Statement, error_body: bytes) -> None:
        """A server said `stmt`'s plan is stale (`error_body`): its text now gets a successor under the same
        internal name, which the next Parse of it returns. Once only: a retired statement's other servers say
        it again."""
        if not stmt.retired and self.statements.get(stmt.tail) is stmt:
            stmt.retired = protocol.message(b"E", error_body)
            self.statements[stmt.tail] = Statement(stmt.name, stmt.tail)


class ServerCache:
    """The statements one server has prepared, least recently used first."""

    __slots__ = ("prepared", "to_close", "capacity")

    def __init__(self, capacity: int):
        self.prepared: OrderedDict[bytes, Statement] = OrderedDict()
        self.to_close: set[bytes] = set()      # prepared there, but to be closed before being used again
        self.capacity = capacity

    def clear(self) -> None:
        self.prepared.clear()
        self.to_close.clear()

    def stale(self, name: bytes | None = None) -> None:
        """A table changed under cached plans: close and prepare again before the next use here."""
        names = [name] if name else list(self.prepared)
        for each in names:
            if self.prepared.pop(each, None) is not None:
                self.to_close.add(each)


def stale_plan(server: "Server", tracker: "Tracker", error_body: bytes) -> None:
    """An ErrorResponse seen on the fast path: after a DDL change, every statement on it is suspect, and the one
    the failing batch binds or describes has changed its columns (a batch of two different ones never takes the
    fast path: which one failed, only the answer queue knows)."""
    if _STALE_PLAN in error_body:
        registry = server.pool.app.statements
        failing = server.z_count + 1        # the batch this error belongs to ends with the next ReadyForQuery
        for z, stmt in tracker.bound:
            if z == failing:
                registry.retire(stmt, error_body)
        server.cache.stale()


def _cstr_end(body: bytes, start: int) -> int:
    end = body.find(b"\x00", start)
    if end < 0:
        raise protocol.ProtocolError("unterminated string in message")
    return end


class Tracker:
    """A tracking client's side: its statement names, and the queue of responses its server owes."""

    __slots__ = ("statements", "queue", "held", "bound", "skipping")

    def __init__(self):
        self.statements: dict[bytes, Statement] = {}
        self.queue: deque[tuple[int, bytes | None]] = deque()
        self.held = b""       # the start of a message not complete yet: rewriting needs whole messages
        # (the ReadyForQuery number that ends its batch, the named statement the batch binds or describes), for
        # the batches its server still owes (stale_plan)
        self.bound: deque[tuple[int, Statement]] = deque()
        # PostgreSQL reported an error in an extended-protocol batch whose Sync the client has not sent yet: it
        # ignores every message until that Sync, so none of them may be rewritten, prepared or wait for an answer
        self.skipping = False


def client_data(client: "Client", server: "Server", data: bytes) -> bool:
    """Rewrite a tracking client's bytes for `server` and send them; queue what the server will answer.

    Returns True when the client sent Terminate.
    """
    tracker = client.tracker
    if tracker.held:
        data = tracker.held + data
        tracker.held = b""
    out: list[bytes] = []
    queue = tracker.queue
    bound = tracker.bound
    while bound and bound[0][0] <= server.z_count:     # batches answered
        bound.popleft()
    batch_z = server.z_count + server.expected + 1
    batch_stmt = None     # the named statement the batch so far binds or describes (stale_plan)
    crowded = False       # a batch with two different ones: on the fast path, a stale plan's would be ambiguous
    was_empty = not queue
    if was_empty and server.expected:
        # Answers the fast path still relays (an earlier batch, simple queries) come first: what this data is
        # answered with, made up or not, queues behind them, and their ReadyForQuery messages count here.
        queue.extend((QUERY, None) for _ in range(server.expected))
    kind = 0
    cache = server.cache
    stats = client.pool.stats
    max_length = client.pool.max_length
    pos, end = 0, len(data)
    syncs = 0
    terminated = False
    while pos < end:
        used = None           # the named statement this message binds or describes
        if end - pos < 5:
            tracker.held = data[pos:]
            break
        kind = data[pos]
        length = _unpack_int(data, pos + 1)[0]
        if length < 4 or length > max_length:
            raise protocol.ProtocolError(f"invalid message length {length}")
        stop = pos + 1 + length
        if stop > end:
            tracker.held = data[pos:]
            break
        if EXTENDED[kind] or kind == 0x53:
            client.unsynced = kind != 0x53     # see Client.unsynced
        if tracker.skipping and kind != 0x53 and kind != 0x58:
            if not FRONTEND_TYPES[kind]:
                raise protocol.ProtocolError(f"invalid frontend message type {kind}")
            pos = stop          # ignored by PostgreSQL: it need not see it
            continue
        tracker.skipping = False
        if kind == 0x50:      # Parse
            body = data[pos + 5:stop]
            name_end = _cstr_end(body, 0)
            stats.parse_count += 1
            if name_end == 0:
                out.append(data[pos:stop])
                queue.append((PARSE, None))
                if _resets(body[1:]):       # DEALLOCATE ALL / DISCARD ALL by the extended protocol
                    _forget_all(tracker, cache)
            else:
                stmt = client.app.statements.get(body[name_end + 1:])
                tracker.statements[body[:name_end]] = stmt
                if _ensure(server, stmt, out, queue, swallow=False):
                    queue.append((FAKE_PARSE, None))
        elif kind == 0x42:    # Bind: portal, statement, ...
            body = data[pos + 5:stop]
            portal_end = _cstr_end(body, 0)
            name_end = _cstr_end(body, portal_end + 1)
            stats.bind_count += 1
            stmt = tracker.statements.get(body[portal_end + 1:name_end]) if name_end > portal_end + 1 else None
            if stmt is None:
                out.append(data[pos:stop])
                queue.append((BIND, None))
            elif stmt.retired:
                out.append(_BIND_RETIRED)
                queue.append((STALE, stmt.retired))
            else:
                _ensure(server, stmt, out, queue, swallow=True)
                used = stmt
                out.append(protocol.message(b"B", body[:portal_end + 1] + stmt.name + body[name_end:]))
                queue.append((BIND, stmt.name))
                if _resets(stmt.tail):      # a named DEALLOCATE ALL / DISCARD ALL
                    _forget_all(tracker, cache)
        elif kind == 0x44 or kind == 0x43:    # Describe or Close: 'S' statement or 'P' portal
            body = data[pos + 5:stop]
            name = body[1:_cstr_end(body, 1)]
            stmt = tracker.statements.get(name) if body[:1] == b"S" and name else None
            if kind == 0x43 and stmt is not None:
                del tracker.statements[name]        # the server keeps it, for the next client
                queue.append((FAKE_CLOSE, None))
            elif stmt is None:
                out.append(data[pos:stop])
                queue.append((DESCRIBE if kind == 0x44 else CLOSE, None))
            elif stmt.retired:      # PostgreSQL checks a statement's plan when describing it, too
                successor = client.app.statements.get(stmt.tail)
                _ensure(server, successor, out, queue, swallow=True)
                out.append(protocol.message(b"D", b"S" + successor.name + b"\x00"))
                out.append(_BIND_RETIRED)
                queue.append((SWALLOW_DESCRIBE, successor.name))
                queue.append((STALE, stmt.retired))
            else:
                _ensure(server, stmt, out, queue, swallow=True)
                used = stmt
                out.append(protocol.message(b"D", b"S" + stmt.name + b"\x00"))
                queue.append((DESCRIBE, stmt.name))
        elif kind == 0x45:    # Execute
            out.append(data[pos:stop])
            queue.append((EXECUTE, None))
        elif kind == 0x53 or kind == 0x51 or kind == 0x46:   # Sync, Query, FunctionCall
            if kind == 0x51 and client.pool.pqexec_disallowed:
                client.refuse_pqexec()
                return False
            out.append(data[pos:stop])
            queue.append((SYNC, None) if kind == 0x53 else (QUERY, None))
            syncs += 1
            batch_z += 1
            batch_stmt = None
            if kind == 0x51 and _resets(data[pos + 5:stop]):
                _forget_all(tracker, cache)
        elif kind == 0x58:    # Terminate: the server stays with the pooler
            tracker.held = b""
            terminated = True
            break
        elif FRONTEND_TYPES[kind]:   # Flush, CopyData/Done/Fail: no response of their own
            out.append(data[pos:stop])
        else:
            raise protocol.ProtocolError(f"invalid frontend message type {kind}")
        if used is not None and used is not batch_stmt:
            crowded = crowded or batch_stmt is not None
            batch_stmt = used
            bound.append((batch_z, used))
        pos = stop
    if was_empty and kind == 0x53 and not tracker.held and not crowded and \
            not any(e[0] in _SPECIAL for e in queue):
        # Nothing rewritten in the answers, and a Sync ends the batch: the fast path can count them.
        queue.clear()
    else:
        _emit_fakes(client, queue)
    if syncs:
        if not server.expected:
            server.start_query(client.app.now())
        server.expected += syncs
    if out:
        payload = b"".join(out)
        stats.bytes_received += len(payload)
        server.transport.write(payload)
    return terminated


def _resets(query: bytes) -> bool:
    """The query is DEALLOCATE ALL or DISCARD ALL, which drop every prepared statement of the session."""
    return query.lstrip().upper().startswith(_RESET_COMMANDS)


def _forget_all(tracker: Tracker, cache: ServerCache) -> None:
    """As PgBouncer: the client's statements are gone, and so is everything its server had prepared."""
    tracker.statements.clear()
    cache.clear()


def _ensure(server: "Server", stmt: Statement, out: list[bytes], queue, swallow: bool) -> bool:
    """Make sure `server` has `stmt` prepared by the time the next message reaches it.

    Returns True when it already had it (the caller then answers the client's own Parse itself).
    """
    cache = server.cache
    name = stmt.name
    held = cache.prepared.get(name)
    if held is not None:
        if not held.retired:
            cache.prepared.move_to_end(name)
            return True
        # Prepared here before another server found the plan stale: this server's plan is just as stale.
        del cache.prepared[name]
        cache.to_close.add(name)
    if name in cache.to_close:
        cache.to_close.discard(name)
        out.append(protocol.message(b"C", b"S" + name + b"\x00"))
        queue.append((SWALLOW_CLOSE, name))
    while cache.capacity and len(cache.prepared) >= cache.capacity:
        old, _ = cache.prepared.popitem(last=False)
        out.append(protocol.message(b"C", b"S" + old + b"\x00"))
        queue.append((SWALLOW_CLOSE, old))
    out.append(protocol.message(b"P", name + b"\x00" + stmt.tail))
    queue.append((SWALLOW_PARSE if swallow else PARSE, name))
    cache.prepared[name] = stmt
    server.pool.stats.server_parse_count += 1
    return False


def _emit_fakes(client: "Client", queue) -> None:
    """Answers the pooler owes the client that no earlier response stands in front of: send them now."""
    fakes = []
    while queue and queue[0][0] in _FAKE:
        fakes.append(_FAKE[queue.popleft()[0]])
    if fakes:
        client.transport.write(b"".join(fakes))


def server_data(server: "Server", client: "Client", data: bytes) -> tuple[bool, int]:
    """Forward a server's responses to a tracking client, minus the swallowed, plus the made-up ones.

    Returns (a ReadyForQuery ended the last owed request, its status).
    """
    tracker = client.tracker
    queue = tracker.queue
    start = 0                 # start of the bytes not yet copied to `out`
    if server.partial:
        data = server.partial + data
        start = server.forwarded_partial      # the client already has these
        server.partial = b""
        server.forwarded_partial = 0
    out: list[bytes] = []
    pos, end = 0, len(data)
    skip = server.skip
    if skip:
        pos = min(skip, end)
        server.skip = skip - pos
    finished, status = False, protocol.IDLE
    while not server.skip:
        # At a message boundary: answers the pooler owes, with nothing of the server's in front, go now.
        while queue and queue[0][0] in _FAKE:
            out.append(data[start:pos])
            start = pos
            out.append(_FAKE[queue.popleft()[0]])
        if pos >= end:
            break
        kind = data[pos]
        stop = pos + 1 + _unpack_int(data, pos + 1)[0] if end - pos >= 5 else end + 1
        head = queue[0][0] if queue else None
        # An answer to swallow, or the error that stands for a stale plan: none of it may reach the client.
        withheld = head is not None and (head in _SWALLOWED and _DONE_TABLE[head][kind]
                                         or head == STALE and kind == 0x45)
        if stop > end and (end - pos < 5 or kind in b"EZS" or withheld):
            # Whole messages only; forward the start now unless it is withheld.
            server.partial = data[pos:]
            if withheld:
                end = pos
            else:
                server.forwarded_partial = end - pos
            break
        if kind == 0x45:      # ErrorResponse
            if head == STALE:     # the refusal of _BIND_RETIRED: the client gets the stale plan's error
                out.append(data[start:pos])
                out.append(_IN_FAILED_TRANSACTION if server.status == protocol.FAILED_TRANSACTION else queue[0][1])
                start = stop
            if head is not None and head != QUERY:
                _extended_error(server, tracker, data[pos + 5:stop])
            else:
                stale_plan(server, tracker, data[pos + 5:stop])
        elif kind == 0x53:
            server._parameter_changed(data[pos + 5:stop])
        elif head is not None and _DONE_TABLE[head][kind]:
            _, name = queue.popleft()
            if head in _SWALLOWED:
                out.append(data[start:pos])
                start = stop
            if kind == 0x5A:
                server.z_count += 1
                status = server.status = data[pos + 5]
                server.expected = max(0, server.expected - 1)
                finished = not server.expected
        if stop > end:
            server.skip = stop - end
            pos = end
        else:
            pos = stop
    out.append(data[start:end])
    payload = b"".join(out)
    if payload:
        client.transport.write(payload)
        client.pool.stats.bytes_sent += len(payload)
    return finished, status


def _extended_error(server: "Server", tracker: Tracker, body: bytes) -> None:
    """PostgreSQL skips to the next Sync after an error: drop what it will never answer, and what the client
    sends until that Sync if it has not sent it yet."""
    queue = tracker.queue
    kind, name = queue.popleft()
    cache = server.cache
    if kind in (PARSE, SWALLOW_PARSE) and name:
        cache.prepared.pop(name, None)
    elif kind in (BIND, DESCRIBE) and name and _STALE_PLAN in body:
        held = cache.prepared.get(name)
        if held is not None:
            server.pool.app.statements.retire(held, body)
        cache.stale(name)
    while queue and queue[0][0] != SYNC:
        kind, name = queue.popleft()
        if kind in (PARSE, SWALLOW_PARSE) and name:
            cache.prepared.pop(name, None)
        elif kind == SWALLOW_CLOSE and name:
            cache.to_close.add(name)         # never closed: close it before preparing it again
        elif kind == QUERY:
            server.expected = max(0, server.expected - 1)
    if not queue:
        tracker.skipping = True
