"""PostgreSQL v3 wire protocol: the few constants and message builders the pooler needs.

Everything here is a pure function over bytes. The relay itself never builds messages for traffic it
forwards; these are for what the pooler says on its own behalf (login, errors, the admin console).
"""
from __future__ import annotations

import struct

PROTOCOL_V3 = 196608
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104

# The longest startup packet PostgreSQL accepts (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000

# ReadyForQuery transaction status bytes.
IDLE, IN_TRANSACTION, FAILED_TRANSACTION = 0x49, 0x54, 0x45   # 'I', 'T', 'E'

# SQLSTATEs the pooler sends on its own behalf.
PROTOCOL_VIOLATION = "08P01"
INVALID_AUTHORIZATION = "28000"
TOO_MANY_CONNECTIONS = "53300"
ADMIN_SHUTDOWN = "57P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT_NOW = "57P03"
INVALID_DATABASE = "3D000"


def transient_login_error(sqlstate: str) -> bool:
    """A refused login that a retry may get past: PostgreSQL starting up or shutting down (57P03, 57P01,
    57P02), out of connections or resources (class 53), or a connection problem (class 08)."""
    return sqlstate[:2] in ("08", "53") or sqlstate in ("57P01", "57P02", "57P03")


_pack_header = struct.Struct("!cI").pack
_unpack_int = struct.Struct("!I").unpack_from


def message(kind: bytes, body: bytes = b"") -> bytes:
    """One backend or frontend message: type byte, length (including itself), body."""
    return _pack_header(kind, len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def error_response(sqlstate: str, text: str, severity: str = "ERROR", detail: str | None = None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    if detail:
        body += b"D" + cstr(detail)
    return message(b"E", body + b"\x00")


def fatal(sqlstate: str, text: str, detail: str | None = None) -> bytes:
    return error_response(sqlstate, text, "FATAL", detail)


def notice_response(text: str, sqlstate: str = "00000") -> bytes:
    body = b"S" + cstr("NOTICE") + b"V" + cstr("NOTICE") + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    return message(b"N", body + b"\x00")


def auth_request(code: int, payload: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!I", code) + payload)


AUTH_OK = auth_request(0)
AUTH_CLEARTEXT = auth_request(3)


def auth_md5(salt: bytes) -> bytes:
    return auth_request(5, salt)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return auth_request(10, b"".join(cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: bytes) -> bytes:
    return auth_request(11, data)


def auth_sasl_final(data: bytes) -> bytes:
    return auth_request(12, data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


_pack_key_data = struct.Struct("!cIQ").pack


def backend_key_data(cancel_key: int) -> bytes:
    """BackendKeyData for the key as one int, pid << 32 | secret key (as Client.cancel_key keeps it)."""
    return _pack_key_data(b"K", 12, cancel_key)


def ready_for_query(status: int = IDLE) -> bytes:
    return message(b"Z", bytes((status,)))


READY_FOR_QUERY = ready_for_query()


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def password_message(data: bytes) -> bytes:
    return message(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + struct.pack("!i", len(data)) + data)


def startup_message(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_V3)
    for key, value in params.items():
        body += cstr(key) + cstr(value)
    body += b"\x00"
    return struct.pack("!I", len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid, key)


TERMINATE = message(b"X")
SYNC = message(b"S")


def row_description(columns: list[tuple[str, int]]) -> bytes:
    """Columns as (name, type oid); text format, no table."""
    body = struct.pack("!H", len(columns))
    for name, oid in columns:
        body += cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, 0)
    return message(b"T", body)


def data_row(values: list[object]) -> bytes:
    body = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            body += b"\xff\xff\xff\xff"
        else:
            raw = str(value).encode()
            body += struct.pack("!I", len(raw)) + raw
    return message(b"D", body)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


# -- parsing -------------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is closed after an 08P01 error."""


def parse_startup_params(body: bytes) -> dict[str, str]:
    """The key/value pairs of a StartupMessage body after its protocol version."""
    if not body.endswith(b"\x00"):
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    try:
        parts = body[:-1].decode().split("\x00")      # NUL never occurs inside a UTF-8 sequence
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid startup packet: parameters are not valid UTF-8") from exc
    if parts[-1] == "":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolError("invalid startup packet layout: odd number of key/value fields")
    pairs = iter(parts)
    return dict(zip(pairs, pairs))


_STARTUP_KEPT = 256           # distinct startup packets remembered (each at most _STARTUP_BODY_KEPT bytes)
_STARTUP_BODY_KEPT = 1024
_startup_params: dict[bytes, dict[str, str]] = {}


def startup_params(body: bytes) -> dict[str, str]:
    """parse_startup_params, remembered by the packet's bytes: an application's connections send one startup
    packet over and over, and a connection per transaction parses it per transaction. A fresh dict each time,
    which the login may change."""
    known = _startup_params.get(body)
    if known is None:
        known = parse_startup_params(body)
        if len(body) <= _STARTUP_BODY_KEPT:
            if len(_startup_params) >= _STARTUP_KEPT:
                _startup_params.clear()
            _startup_params[body] = known
    return dict(known)


OPTIONS_ERROR = "unsupported options startup parameter: only '-c config=val' is allowed"    # PgBouncer's words


def parse_options(value: str) -> list[tuple[str, str]]:
    """The settings in an `options` startup parameter, read as PostgreSQL reads them: words split at
    whitespace, a backslash keeps the character after it, each setting is `-c name=value`, `-cname=value`
    or `--name=value`, and dashes in a name are underscores. Any other switch is a ValueError."""
    words: list[str] = []
    word: list[str] = []
    in_word = escaped = False
    for char in value:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = in_word = True
        elif char.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            continue
        else:
            word.append(char)
        in_word = True
    if in_word:
        words.append("".join(word))
    settings, i = [], 0
    while i < len(words):
        switch = words[i]
        if switch == "-c" and i + 1 < len(words):
            setting, i = words[i + 1], i + 2
        elif switch.startswith(("-c", "--")) and len(switch) > 2:
            setting, i = switch[2:], i + 1
        else:
            raise ValueError(OPTIONS_ERROR)
        name, equals, setting_value = setting.partition("=")
        if not equals or not name:
            raise ValueError(OPTIONS_ERROR)
        settings.append((name.replace("-", "_"), setting_value))
    return settings


def parse_error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, keyed by their one-letter codes."""
    fields = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, value, _ = body.split(b"\x00", 2)
    return name.decode(), value.decode(errors="replace")


def read_int(data: bytes, offset: int = 0) -> int:
    return _unpack_int(data, offset)[0]


def split_messages(data: bytes, max_length: int = 1 << 30) -> tuple[list[tuple[int, bytes]], int]:
    """Whole messages at the start of `data` as (type byte, body), and how many bytes they took.

    For the slow paths only (login, internal queries, the admin console); the relay never calls it.
    """
    messages, pos, end = [], 0, len(data)
    while pos + 5 <= end:
        length = _unpack_int(data, pos + 1)[0]
        if length < 4 or length > max_length:
            raise ProtocolError(f"invalid message length {length}")
        stop = pos + 1 + length
        if stop > end:
            break
        messages.append((data[pos], data[pos + 5:stop]))
        pos = stop
    return messages, pos
