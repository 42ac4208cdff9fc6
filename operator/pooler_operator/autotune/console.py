"""A small asyncio client for a pooler's admin console (PgBouncer's or maitred's) and what it reports.

The console speaks only the simple query protocol (PgBouncer refuses Parse/Bind), so no PostgreSQL driver
fits: this client does the startup, the authentication (trust, cleartext, md5, SCRAM-SHA-256 through scramp)
and simple queries, and nothing else. Every wait is bounded; every failure is a ConsoleError whose text says
what happened (the server's ErrorResponse, a timeout, a refused connection).
"""
from __future__ import annotations

import asyncio
import hashlib
import struct

import scramp

from .model import PoolSample, ProcessSample

ADMIN_DATABASE = "pgbouncer"


class ConsoleError(Exception):
    """The console could not be reached, refused us, or rejected a command; str() says which."""


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _error_text(body: bytes) -> str:
    fields = {chr(p[0]): p[1:].decode(errors="replace") for p in body.split(b"\0") if p}
    return fields.get("M", "unknown error") + (f" ({fields['C']})" if "C" in fields else "")


class Console:
    """One open admin-console connection; use `async with await Console.connect(...)`, or call close()."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: str,
                 timeout: float):
        self.reader, self.writer, self.endpoint, self.timeout = reader, writer, endpoint, timeout

    @classmethod
    async def connect(cls, host: str, port: int, user: str, password: str | None, *,
                      timeout: float = 5.0, database: str = ADMIN_DATABASE) -> "Console":
        endpoint = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except asyncio.TimeoutError:
            raise ConsoleError(f"{endpoint}: no connection within {timeout:g}s") from None
        except OSError as exc:
            raise ConsoleError(f"{endpoint}: {exc.strerror or exc}") from None
        console = cls(reader, writer, endpoint, timeout)
        try:
            await console._bounded(console._startup(user, password, database))
        except BaseException:
            await console.close()
            raise
        return console

    async def __aenter__(self) -> "Console":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if not self.writer.is_closing():
            try:
                self.writer.write(_message(b"X", b""))
            except (OSError, RuntimeError):
                pass
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except (OSError, asyncio.TimeoutError):
            pass

    async def query(self, sql: str) -> list[dict[str, str | None]]:
        """The rows of one simple query, as column name -> text value (None for NULL)."""
        rows, _tag = await self._bounded(self._simple_query(sql))
        return rows

    async def command(self, sql: str) -> str:
        """Run a command (SET, RELOAD, ...); its CommandComplete tag."""
        _rows, tag = await self._bounded(self._simple_query(sql))
        return tag

    # -- the protocol ------------------------------------------------------------------------------------

    async def _bounded(self, coro):
        try:
            return await asyncio.wait_for(coro, self.timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise ConsoleError(f"{self.endpoint}: no answer within {self.timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise ConsoleError(f"{self.endpoint}: connection lost ({exc.__class__.__name__})") from None

    async def _read(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        length = struct.unpack("!I", header[1:])[0]
        return header[:1], await self.reader.readexactly(length - 4)

    async def _startup(self, user: str, password: str | None, database: str) -> None:
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                          for k, v in (("user", user), ("database", database)))
        body = struct.pack("!I", 196608) + params + b"\0"
        self.writer.write(struct.pack("!I", len(body) + 4) + body)
        scram: scramp.ScramClient | None = None
        while True:
            kind, body = await self._read()
            if kind == b"E":
                raise ConsoleError(f"{self.endpoint}: {_error_text(body)}")
            if kind == b"Z":
                return
            if kind != b"R":
                continue        # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!I", body[:4])[0]
            if code == 0:
                continue
            if password is None:
                raise ConsoleError(f"{self.endpoint}: the console asks for a password and none was given")
            if code == 3:
                self.writer.write(_message(b"p", password.encode() + b"\0"))
            elif code == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self.writer.write(_message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                if "SCRAM-SHA-256" not in mechanisms:
                    raise ConsoleError(f"{self.endpoint}: unsupported SASL mechanisms {mechanisms}")
                scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                first = scram.get_client_first().encode()
                self.writer.write(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
            elif code == 11 and scram is not None:
                scram.set_server_first(body[4:].decode())
                self.writer.write(_message(b"p", scram.get_client_final().encode()))
            elif code == 12 and scram is not None:
                try:
                    scram.set_server_final(body[4:].decode())
                except scramp.ScramException as exc:
                    raise ConsoleError(f"{self.endpoint}: the server's SCRAM signature is wrong ({exc})") from None
            else:
                raise ConsoleError(f"{self.endpoint}: unsupported authentication request {code}")

    async def _simple_query(self, sql: str) -> tuple[list[dict[str, str | None]], str]:
        self.writer.write(_message(b"Q", sql.encode() + b"\0"))
        names: list[str] = []
        rows: list[dict[str, str | None]] = []
        tag, error = "", None
        while True:
            kind, body = await self._read()
            if kind == b"T":
                names = _row_description(body)
            elif kind == b"D":
                rows.append(dict(zip(names, _data_row(body))))
            elif kind == b"C":
                tag = body.rstrip(b"\0").decode()
            elif kind == b"E":
                error = _error_text(body)
            elif kind == b"Z":
                if error is not None:
                    raise ConsoleError(f"{self.endpoint}: {sql.strip()}: {error}")
                return rows, tag


def _row_description(body: bytes) -> list[str]:
    count = struct.unpack("!H", body[:2])[0]
    names, pos = [], 2
    for _ in range(count):
        end = body.index(b"\0", pos)
        names.append(body[pos:end].decode())
        pos = end + 1 + 18          # table oid, column, type oid, size, modifier, format
    return names


def _data_row(body: bytes) -> list[str | None]:
    count = struct.unpack("!H", body[:2])[0]
    values: list[str | None] = []
    pos = 2
    for _ in range(count):
        length = struct.unpack("!i", body[pos:pos + 4])[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos:pos + length].decode(errors="replace"))
            pos += length
    return values


# -- what the console reports, as model values -----------------------------------------------------------

def _int(value: str | None) -> int:
    try:
        return int(value) if value not in (None, "") else 0
    except ValueError:
        return int(float(value))


def parse_pools(rows: list[dict[str, str | None]]) -> tuple[PoolSample, ...]:
    """SHOW POOLS, without the console's own virtual database."""
    pools = []
    for r in rows:
        if r.get("database") == ADMIN_DATABASE:
            continue
        maxwait = _int(r.get("maxwait")) + _int(r.get("maxwait_us")) / 1e6
        pools.append(PoolSample(database=r.get("database") or "", user=r.get("user") or "",
                                cl_active=_int(r.get("cl_active")), cl_waiting=_int(r.get("cl_waiting")),
                                sv_active=_int(r.get("sv_active")), sv_idle=_int(r.get("sv_idle")),
                                sv_used=_int(r.get("sv_used")), sv_login=_int(r.get("sv_login")),
                                maxwait_s=maxwait))
    return tuple(pools)


def parse_stats(rows: list[dict[str, str | None]]) -> dict[str, int]:
    """SHOW STATS totals summed over the databases (times in microseconds, as PgBouncer gives them)."""
    columns = {"xact_count": "total_xact_count", "xact_time_us": "total_xact_time",
               "query_count": "total_query_count", "query_time_us": "total_query_time",
               "wait_time_us": "total_wait_time"}
    return {field: sum(_int(r.get(column)) for r in rows if r.get("database") != ADMIN_DATABASE)
            for field, column in columns.items()}


def parse_server_pids(rows: list[dict[str, str | None]]) -> frozenset[int]:
    """SHOW SERVERS: the PostgreSQL backend pid of every server connection (0 while still logging in)."""
    return frozenset(pid for pid in (_int(r.get("remote_pid")) for r in rows) if pid > 0)


def parse_config(rows: list[dict[str, str | None]]) -> dict[str, str | None]:
    return {r.get("key") or "": r.get("value") for r in rows}


async def sample(host: str, port: int, user: str, password: str | None, *, timeout: float = 5.0,
                 endpoint: str | None = None) -> ProcessSample:
    """One process's SHOW POOLS/STATS/SERVERS/CONFIG as a ProcessSample; `error` set when it did not answer."""
    endpoint = endpoint or f"{host}:{port}"
    try:
        async with await Console.connect(host, port, user, password, timeout=timeout) as console:
            pools = parse_pools(await console.query("SHOW POOLS"))
            stats = parse_stats(await console.query("SHOW STATS"))
            pids = parse_server_pids(await console.query("SHOW SERVERS"))
            config = parse_config(await console.query("SHOW CONFIG"))
    except (ConsoleError, ValueError) as exc:     # ValueError: a number column that is not a number
        return ProcessSample(endpoint=endpoint, error=str(exc) if isinstance(exc, ConsoleError)
                             else f"{endpoint}: unexpected console answer ({exc})")
    size = config.get("default_pool_size")
    if size is None:
        return ProcessSample(endpoint=endpoint, error=f"{endpoint}: SHOW CONFIG has no default_pool_size")
    return ProcessSample(endpoint=endpoint, pools=pools, default_pool_size=_int(size),
                         max_db_connections=_int(config.get("max_db_connections")),
                         reserve_pool_size=_int(config.get("reserve_pool_size")), server_pids=pids,
                         processes=max(1, _int(config.get("workers")) or 1), **stats)


async def set_settings(host: str, port: int, user: str, password: str | None, settings: dict[str, int], *,
                       timeout: float = 5.0) -> None:
    """SET each setting in order on one console; the first refusal raises ConsoleError."""
    async with await Console.connect(host, port, user, password, timeout=timeout) as console:
        for key, value in settings.items():
            await console.command(f"SET {key} = {value}")
