"""The config loader: PgBouncer's ini format and semantics, so an existing pgbouncer.ini works unchanged.

What it copies from PgBouncer: sections and keys are case-sensitive; `;` and `#` start a comment only at
the start of a line or after a section header; the value is the rest of the line, trailing spaces removed;
`%include FILE` reads FILE (relative to the working directory) in the current section, a section it opens
stays open after it, and includes nest at most 10 deep. What it changes: an unknown key or section is a
warning instead of a fatal error, so a newer pgbouncer.ini still loads; negative numbers are refused;
booleans also accept yes/no, on/off and true/false.
"""

import copy
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pooler.hosts import parse_hosts
from pooler.settings import (
    DATABASE_KEY_ALIASES,
    DATABASE_KEYS,
    MAITRED_SETTINGS,
    MAX_PEER_ID,
    PEER_KEYS,
    SETTINGS,
    UNSUPPORTED_CHOICES,
    USER_KEYS,
    Setting,
    inert,
)

MAX_INCLUDE_DEPTH = 10
RESERVED_DATABASE = "pgbouncer"
STARTUP_PARAMS = {
    "client_encoding": "client_encoding",
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "application_name": "application_name",
}


class ConfigError(Exception):
    """An unreadable or invalid config; str() is `FILE:LINE: MESSAGE`, as compilers print it."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str | None = None):
        super().__init__(message)
        self.message, self.file, self.line, self.key = message, file, line, key

    def __str__(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line) if part is not None)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class DatabaseEntry:
    """One [databases] entry. None means "inherit the global setting"; host None means the Unix socket in
    unix_socket_dir, as PgBouncer does."""

    name: str
    host: str | None = None
    port: int = 5432
    dbname: str = ""
    user: str | None = None
    password: str | None = None
    auth_user: str | None = None
    auth_query: str | None = None
    auth_dbname: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_db_connections: int | None = None
    max_db_client_connections: int | None = None
    pool_mode: str | None = None
    connect_query: str | None = None
    server_lifetime: float | None = None
    query_wait_timeout: float | None = None
    load_balance_hosts: str | None = None
    target_session_attrs: str | None = None
    startup_params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dbname = self.dbname or self.name


@dataclass
class UserEntry:
    """One [users] entry; None means "inherit"."""

    name: str
    pool_mode: str | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_user_connections: int | None = None
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None


@dataclass(frozen=True)
class PeerEntry:
    """One [peers] entry: where the pooler with that peer id listens, for the cancels meant for it."""

    peer_id: int
    host: str | None = None
    port: int = 6432
    pool_size: int | None = None


AUTO_ENTRIES_KEPT = 10_000


@dataclass
class Config:
    path: str
    settings: dict[str, object]
    maitred: dict[str, object]
    databases: dict[str, DatabaseEntry] = field(default_factory=dict)
    users: dict[str, UserEntry] = field(default_factory=dict)
    peers: dict[int, PeerEntry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # The entries made from `*`, by database name: one per name for as long as this config is in force, rather
    # than a copy of `*` per login (RELOAD makes a new Config; the janitor drops a freed auto-database's).
    auto_entries: dict[str, DatabaseEntry] = field(default_factory=dict, repr=False, compare=False)

    def get(self, name: str) -> object:
        """The typed value of a [pgbouncer] or [maitred] setting."""
        return self.settings[name] if name in self.settings else self.maitred[name]

    def set(self, name: str, value: object) -> None:
        """Give a [pgbouncer] or [maitred] setting a typed value (SET, a replacement worker's settings)."""
        (self.settings if name in self.settings else self.maitred)[name] = value

    def database_for(self, name: str) -> DatabaseEntry | None:
        """The entry a client asking for database `name` uses: its own, else the `*` fallback."""
        if name in self.databases:
            return self.databases[name]
        entry = self.auto_entries.get(name)
        if entry is not None:
            return entry
        fallback = self.databases.get("*")
        if fallback is None:
            return None
        entry = copy.deepcopy(fallback)
        entry.name = name
        if fallback.dbname == "*":
            entry.dbname = name
        if len(self.auto_entries) >= AUTO_ENTRIES_KEPT:     # names asked for and never freed: start again
            self.auto_entries.clear()
        self.auto_entries[name] = entry
        return entry


# strtol(…, 0) syntax, as PgBouncer parses integers: 0x1f is hex, 0777 is octal.
_INT = re.compile(r"[+-]?(?:0[xX](?P<hex>[0-9a-fA-F]+)|0(?P<oct>[0-7]*)|(?P<dec>[1-9][0-9]*))")
_SECONDS = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


def _parse_int(raw: str) -> int:
    m = _INT.fullmatch(raw)
    if not m:
        raise ValueError(f"{raw!r} is not an integer")
    if raw.startswith("-"):
        raise ValueError(f"{raw!r} is negative")
    if m["hex"] is not None:
        return int(m["hex"], 16)
    if m["oct"] is not None:
        return int(m["oct"] or "0", 8)
    return int(m["dec"])


def _parse_seconds(raw: str) -> float:
    if not _SECONDS.fullmatch(raw) or not math.isfinite(float(raw)):
        raise ValueError(f"{raw!r} is not a number of seconds (unit suffixes are not accepted)")
    if raw.startswith("-"):
        raise ValueError(f"{raw!r} is negative")
    return float(raw)


def _parse_bool(raw: str) -> bool:
    """PgBouncer's booleans are integers (non-zero is on); the words are accepted too."""
    if raw.lower() in _BOOLS:
        return _BOOLS[raw.lower()]
    try:
        return _parse_int(raw) != 0
    except ValueError:
        raise ValueError(f"{raw!r} is not a boolean (0/1, yes/no, on/off, true/false)") from None


def _parse_enum(setting: Setting, raw: str) -> str:
    value = raw.lower()
    if value in setting.choices:
        return value
    supported = ", ".join(setting.choices)
    if value in UNSUPPORTED_CHOICES.get(setting.name, ()):
        raise ValueError(f"{raw!r} is not supported by maitred (supported: {supported})")
    raise ValueError(f"{raw!r} is not one of {supported}")


def parse_value(setting: Setting, raw: str) -> object:
    """Turn the text of a setting into its typed value; ValueError says why it is invalid or refused."""
    value = _parse_value(setting, raw.strip())
    if setting.refused and value != setting.default:
        raise ValueError(f"{raw.strip()!r} is refused: {setting.refused}")
    if setting.bounds and not setting.bounds[0] <= value <= setting.bounds[1]:
        raise ValueError(f"{raw.strip()!r} is out of range: {setting.bounds[0]} to {setting.bounds[1]}")
    return value


def _parse_value(setting: Setting, raw: str) -> object:
    if setting.kind == "int":
        return _parse_int(raw)
    if setting.kind == "float_seconds":
        return _parse_seconds(raw)
    if setting.kind == "bool":
        return _parse_bool(raw)
    if setting.kind == "enum":
        return _parse_enum(setting, raw)
    if setting.kind == "list":
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if setting.name == "auth_dbname" and raw == RESERVED_DATABASE:    # PgBouncer's words, at load instead of login
        raise ValueError(f'cannot use the reserved "{RESERVED_DATABASE}" database as an auth_dbname')
    if setting.kind in ("str", "path"):
        return raw
    raise ValueError(f"unknown kind {setting.kind!r} for {setting.name}")


def _unquote_name(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


_SECTION = re.compile(r"\[([^\]]*)\]\s*(?:[;#].*)?")
_KEY_VALUE = re.compile(r'("(?:[^"]|"")*"|[A-Za-z0-9_.*-]+)[ \t]*=[ \t]*(.*)')
_INCLUDE = re.compile(r"%include\s+(\S.*)")
_CONNINFO_PAIR = re.compile(r"\s*([^=\s]+)\s*=\s*(?:'((?:[^']|'')*)'(?!\S)|([^'\s]\S*))?\s*")


def _read_ini(path: str, depth: int = 0) -> Iterator[tuple[str, int, str | None, str | None, str | None]]:
    """Yield (file, line, section_or_None, key, value): a section header yields (…, name, None, None)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"could not read config file: {getattr(exc, 'strerror', None) or exc}", path) from None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            header = _SECTION.fullmatch(line)
            if not header:
                raise ConfigError("syntax error: a section header is [name]", path, number)
            yield path, number, header[1], None, None
        elif line.startswith("%"):
            include = _INCLUDE.fullmatch(line)
            if not include:
                raise ConfigError("syntax error: the only directive is %include FILE", path, number)
            if depth >= MAX_INCLUDE_DEPTH:
                raise ConfigError(f"%include nested deeper than {MAX_INCLUDE_DEPTH}", path, number)
            if not Path(include[1]).is_file():
                raise ConfigError(f"could not read included file {include[1]!r}", path, number)
            yield from _read_ini(include[1], depth + 1)
        elif pair := _KEY_VALUE.fullmatch(line):
            yield path, number, None, _unquote_name(pair[1]), pair[2]
        else:
            raise ConfigError("syntax error: expected key = value", path, number)


def _split_conninfo(text: str) -> list[tuple[str, str]]:
    """Split `key=value key='quoted ''value'''` pairs, as PgBouncer's connection strings are written."""
    pairs, pos = [], 0
    while pos < len(text.rstrip()):
        m = _CONNINFO_PAIR.match(text, pos)
        if not m:
            raise ValueError(f"expected key=value at {text[pos:].strip()!r}")
        key, quoted, plain = m.groups()
        value = plain or (quoted or "").replace("''", "'")
        if not value:
            problem = "badly quoted value" if text.startswith("'", m.end()) else "empty value"
            raise ValueError(f"{problem} for {key!r}")
        pairs.append((key, value))
        pos = m.end()
    return pairs


def _entry_fields(keys: dict[str, Setting], what: str, where: tuple[str, int, str], conninfo: str,
                  warnings: list[str], aliases: dict[str, str] | None = None) -> dict[str, object]:
    """Typed fields of a [databases] or [users] entry; -1 leaves an inheritable number unset, as in PgBouncer."""
    file, line, name = where
    try:
        pairs = _split_conninfo(conninfo)
    except ValueError as exc:
        raise ConfigError(f"invalid settings for {what} {name!r}: {exc}", file, line, name) from None
    fields = {}
    for key, raw in pairs:
        key = (aliases or {}).get(key, key)
        if key not in keys:
            warnings.append(f"{file}:{line}: unknown parameter {key!r} for {what} {name!r}, ignored")
        elif keys[key].default is None and keys[key].kind in ("int", "float_seconds") and raw == "-1":
            fields[key] = None
        else:
            try:
                fields[key] = parse_value(keys[key], raw)
            except ValueError as exc:
                raise ConfigError(f"invalid value for {key} of {what} {name!r}: {exc}", file, line, name) from None
    return fields


def _database_entry(where: tuple[str, int, str], conninfo: str, warnings: list[str]) -> DatabaseEntry:
    file, line, name = where
    if name == RESERVED_DATABASE:
        raise ConfigError(f"database name {name!r} is reserved for the admin console", file, line, name)
    fields = _entry_fields(DATABASE_KEYS, "database", where, conninfo, warnings, DATABASE_KEY_ALIASES)
    if not 0 < fields.get("port", 5432) < 65536:
        raise ConfigError(f"invalid port for database {name!r}: {fields['port']}", file, line, name)
    try:
        parse_hosts(fields.get("host"), fields.get("port", 5432))
    except ValueError as exc:
        raise ConfigError(f"invalid host for database {name!r}: {exc}", file, line, name) from None
    params = {STARTUP_PARAMS[key]: fields.pop(key) for key in list(fields) if key in STARTUP_PARAMS}
    return DatabaseEntry(name=name, startup_params=params, **fields)


def _user_entry(where: tuple[str, int, str], conninfo: str, warnings: list[str]) -> UserEntry:
    return UserEntry(name=where[2], **_entry_fields(USER_KEYS, "user", where, conninfo, warnings))


def _peer_entry(where: tuple[str, int, str], conninfo: str, warnings: list[str]) -> PeerEntry:
    file, line, name = where
    try:
        peer_id = _parse_int(name)
    except ValueError:
        peer_id = -1
    if not 0 < peer_id <= MAX_PEER_ID:
        raise ConfigError(f"invalid peer id {name!r}: a number from 1 to {MAX_PEER_ID}", file, line, name)
    fields = _entry_fields(PEER_KEYS, "peer", where, conninfo, warnings)
    if not fields.get("host"):
        raise ConfigError(f"peer {name} has no host", file, line, name)
    return PeerEntry(peer_id=peer_id, **fields)


def _check_peering(config: "Config") -> None:
    """What the loader cannot say line by line: the peer ids in use (workers take one each) stay in range."""
    workers = config.get("workers")
    if workers < 1:
        raise ConfigError("invalid value for workers: at least 1", config.path, key="workers")
    last = (config.get("peer_id") or (1 if workers > 1 else 0)) + workers - 1
    if last > MAX_PEER_ID:
        raise ConfigError(f"invalid value for peer_id: the peer ids in use would go up to {last}, above "
                          f"{MAX_PEER_ID}", config.path, key="peer_id")


def load_config(path: str | Path) -> Config:
    """Read a pgbouncer.ini-style file; raises ConfigError naming file, line and key of the first problem."""
    path = str(path)
    config = Config(path, {s.name: s.default for s in SETTINGS.values()},
                    {s.name: s.default for s in MAITRED_SETTINGS.values()})
    catalogues = {"pgbouncer": (SETTINGS, config.settings), "maitred": (MAITRED_SETTINGS, config.maitred)}
    section = None
    for file, line, header, key, raw in _read_ini(path):
        if header is not None:
            section = header
            if section not in (*catalogues, "databases", "users", "peers"):
                config.warnings.append(
                    f"{file}:{line}: section [{section}] is not supported, its keys are ignored")
        elif section is None:
            raise ConfigError(f"{key} is outside any section", file, line, key)
        elif section == "databases":
            config.databases[key] = _database_entry((file, line, key), raw, config.warnings)
        elif section == "users":
            config.users[key] = _user_entry((file, line, key), raw, config.warnings)
        elif section == "peers":
            entry = _peer_entry((file, line, key), raw, config.warnings)
            config.peers[entry.peer_id] = entry
        elif section in catalogues:
            known, values = catalogues[section]
            if key not in known:
                config.warnings.append(f"{file}:{line}: unknown setting {key!r} in [{section}], ignored")
            else:
                try:
                    values[key] = parse_value(known[key], raw)
                except ValueError as exc:
                    raise ConfigError(f"invalid value for {key}: {exc}", file, line, key) from None
                if values[key] != known[key].default and (why := inert(known[key])):
                    config.warnings.append(f"{file}:{line}: {why}")
    config.settings["conffile"] = config.settings["conffile"] or path
    _check_peering(config)
    return config
