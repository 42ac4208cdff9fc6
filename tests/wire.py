"""A raw PostgreSQL protocol client for the tests that must see or send what no driver will."""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import time

from scramp import ScramClient

from tests.support import PASSWORDS, error_fields, startup_packet


class ServerError(Exception):
    """An ErrorResponse; `fields` has its one-letter codes ('C' is the SQLSTATE, 'M' the message)."""

    def __init__(self, fields: dict[str, str]):
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.message = fields.get("M")


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def parse(sql: str, name: str = "") -> bytes:
    return message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind(portal: str = "", statement: str = "") -> bytes:
    return message(b"B", portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


def execute(portal: str = "") -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", 0))


SYNC = message(b"S")
TERMINATE = message(b"X")


class Wire:
    """One raw connection; it keeps what it read past the last message it returned."""

    def __init__(self, port: int | None = None, timeout: float = 5, unix_path: str | None = None,
                 rcvbuf: int | None = None):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.auth_requests: list[int] = []     # the code of every Authentication message read, in order
        self.sock.connect(unix_path or ("127.0.0.1", port))
        self.buf = b""
        self.eof = False
        self.backend_key: tuple[int, int] | None = None
        self.params: dict[str, str] = {}

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset, as a killed process's socket may go."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_byte(self, limit: float = 5) -> bytes:
        deadline = time.monotonic() + limit
        while not self.buf:
            if not self._fill(deadline):
                return b""
        byte, self.buf = self.buf[:1], self.buf[1:]
        return byte

    def read_message(self, limit: float = 5) -> tuple[bytes, bytes] | None:
        """The next whole backend message, or None on timeout or end of stream."""
        deadline = time.monotonic() + limit
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + length:
                    kind, body = self.buf[:1], self.buf[5:1 + length]
                    self.buf = self.buf[1 + length:]
                    if kind == b"R":
                        self.auth_requests.append(struct.unpack("!I", body[:4])[0])
                    return kind, body
            if not self._fill(deadline):
                return None

    def read_until(self, kinds: bytes = b"Z", limit: float = 5, raise_errors: bool = True) -> list:
        """Messages up to and including the first of one of `kinds`; an ErrorResponse raises ServerError."""
        out = []
        deadline = time.monotonic() + limit
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise TimeoutError(f"no message of type {kinds!r} within {limit}s (eof={self.eof}): {out}")
            out.append(msg)
            if msg[0] == b"E" and raise_errors:
                raise ServerError(error_fields(msg[1]))
            if msg[0] in kinds:
                return out

    def expect_error(self, limit: float = 5) -> ServerError:
        """Read up to an ErrorResponse and return it."""
        try:
            self.read_until(b"E", limit)
        except ServerError as exc:
            return exc
        raise AssertionError("no ErrorResponse")

    def closed_by_peer(self, limit: float = 5) -> bool:
        """True when the other side closes the connection within `limit` (what it sent first is dropped)."""
        deadline = time.monotonic() + limit
        while not self.eof:
            self.buf = b""
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    # -- login -------------------------------------------------------------------------------------------

    def login(self, user: str = "app", password: str = "", database: str = "app", limit: float = 10,
              **params: str) -> list:
        """Send a startup packet and answer whatever authentication the pooler asks for."""
        self.send(startup_packet(user, database, **params))
        scram = None
        deadline = time.monotonic() + limit
        out = []
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise TimeoutError(f"login did not finish (eof={self.eof}): {out}")
            kind, body = msg
            out.append(msg)
            if kind == b"E":
                raise ServerError(error_fields(body))
            if kind == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 3:
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    self.send(message(b"p", outer.encode() + b"\0"))
                elif code == 10:
                    scram = ScramClient(["SCRAM-SHA-256"], user, password)
                    first = scram.get_client_first().encode()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:
                    scram.set_server_first(body[4:].decode())
                    self.send(message(b"p", scram.get_client_final().encode()))
                elif code == 12:
                    scram.set_server_final(body[4:].decode())
            elif kind == b"K":
                self.backend_key = struct.unpack("!II", body)
            elif kind == b"S":
                name, value, _ = body.split(b"\0", 2)
                self.params[name.decode()] = value.decode()
            elif kind == b"Z":
                return out

    def query(self, sql: str, limit: float = 10) -> list:
        self.send(query(sql))
        return self.read_until(b"Z", limit)

    def rows(self, sql: str, limit: float = 10) -> list[tuple]:
        """The text values of the DataRows a simple query returns; an error raises ServerError."""
        out = []
        error = None
        self.send(query(sql))
        for kind, body in self.read_until(b"Z", limit, raise_errors=False):
            if kind == b"E" and error is None:
                error = ServerError(error_fields(body))
            elif kind == b"D":
                out.append(data_row(body))
        if error:
            raise error
        return out


def data_row(body: bytes) -> tuple:
    (count,), pos, values = struct.unpack_from("!H", body), 2, []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos:pos + length].decode())
            pos += length
    return tuple(values)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!IIII", 16, 80877102, pid, key)


def send_cancel(port: int, pid: int, key: int) -> None:
    """A CancelRequest on a connection of its own, as libpq sends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(cancel_request(pid, key))
        try:
            sock.recv(1)
        except OSError:
            pass


def exchange(port: int, statements: list[str], between: "Wire | None" = None, limit: float = 15,
             between_limit: float = 10) -> list[list[tuple[bytes, bytes]]]:
    """Every message each simple query is answered with, through to its ReadyForQuery, as app; `between`, a client
    that must get the server after each answer (in transaction mode: the pooler counted the ReadyForQuery it
    owed)."""
    answers = []
    with Wire(port) as wire:
        wire.login("app", PASSWORDS["app"])
        for n, sql in enumerate(statements):
            wire.send(query(sql))
            answers.append(wire.read_until(b"Z", limit, raise_errors=False))
            if between is not None:
                assert between.rows(f"SELECT {n}", limit=between_limit) == [(str(n),)], \
                    f"the server was not free after {sql[:40]!r}"
    return answers


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
