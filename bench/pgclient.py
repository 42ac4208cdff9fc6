"""A minimal PostgreSQL v3 client: log in (cleartext, md5 or SCRAM-SHA-256), optionally run one simple
query, and otherwise sit idle.

The idle-client scenario holds 10,000 logged-in connections; asyncpg or libpq would cost more memory and
time per connection in the harness than the pooler under test spends, so the handshake is written out here.
The same client checks that a freshly started pooler is ready to serve.
"""
from __future__ import annotations

import asyncio
import hashlib
import struct

import scramp

PROTOCOL_VERSION = 196608  # 3.0

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


class LoginError(Exception):
    """The server refused the login or spoke something this client does not understand."""


def startup_message(user: str, database: str, application_name: str = "maitred-bench") -> bytes:
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                      (("user", user), ("database", database), ("application_name", application_name)))
    body = struct.pack("!i", PROTOCOL_VERSION) + params + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


def error_text(body: bytes) -> str:
    """The severity and message fields of an ErrorResponse body."""
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"


class Connection:
    """One logged-in connection; `close()` sends Terminate."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def _read(self) -> tuple[bytes, bytes]:
        header = await self.reader.readexactly(5)
        length = struct.unpack("!i", header[1:])[0]
        return header[:1], await self.reader.readexactly(length - 4)

    async def _login(self, user: str, password: str, database: str) -> None:
        self.writer.write(startup_message(user, database))
        scram: scramp.ScramClient | None = None
        while True:
            tag, body = await self._read()
            if tag == b"E":
                raise LoginError(error_text(body))
            if tag == b"Z":
                return
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!i", body[:4])[0]
            if code == AUTH_OK:
                continue
            if code == AUTH_CLEARTEXT:
                self.writer.write(message(b"p", password.encode() + b"\0"))
            elif code == AUTH_MD5:
                self.writer.write(message(b"p", md5_password(user, password, body[4:8]) + b"\0"))
            elif code == AUTH_SASL:
                offered = [m.decode() for m in body[4:].split(b"\0") if m]
                mechanisms = [m for m in offered if not m.endswith("-PLUS")]  # no TLS, no channel binding
                scram = scramp.ScramClient(mechanisms, user, password)
                first = scram.get_client_first().encode()
                self.writer.write(message(b"p", scram.mechanism_name.encode() + b"\0"
                                          + struct.pack("!i", len(first)) + first))
            elif code == AUTH_SASL_CONTINUE and scram is not None:
                scram.set_server_first(body[4:].decode())
                self.writer.write(message(b"p", scram.get_client_final().encode()))
            elif code == AUTH_SASL_FINAL and scram is not None:
                scram.set_server_final(body[4:].decode())
            else:
                raise LoginError(f"unsupported authentication request {code}")

    async def simple_query(self, sql: str) -> None:
        """Run `sql` with the simple query protocol and wait for ReadyForQuery; raise on ErrorResponse."""
        self.writer.write(message(b"Q", sql.encode() + b"\0"))
        failure = None
        while True:
            tag, body = await self._read()
            if tag == b"E":
                failure = error_text(body)
            elif tag == b"Z":
                break
        if failure:
            raise LoginError(failure)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(message(b"X", b""))
            self.writer.close()


async def connect(host: str, port: int, user: str, password: str, database: str,
                  timeout: float = 30.0) -> Connection:
    """Open a TCP connection and complete startup and authentication within `timeout` seconds."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    conn = Connection(reader, writer)
    try:
        await asyncio.wait_for(conn._login(user, password, database), timeout)
    except BaseException:
        writer.close()
        raise
    return conn


async def probe(host: str, port: int, user: str, password: str, database: str, timeout: float = 5.0) -> None:
    """Log in, run `SELECT 1`, log out: proves the whole client → pooler → server path works."""
    conn = await connect(host, port, user, password, database, timeout)
    try:
        await asyncio.wait_for(conn.simple_query("SELECT 1"), timeout)
    finally:
        conn.close()
