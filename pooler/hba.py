"""auth_type = hba: PgBouncer's subset of pg_hba.conf (auth_hba_file) and of the ident maps (auth_ident_file).

Both files are parsed whole when the pooler starts and on every RELOAD, into rules matched first line first, as
PostgreSQL does; no matching line refuses the login. A line that cannot be used stops the load with FILE:LINE
and the reason. PgBouncer logs such a line and skips it, which can silently drop a `reject` line; maitred keeps
the running rules instead (and does not start with them).

The subset (PgBouncer 1.25's): record types local, host, hostssl and hostnossl; databases `all`, `sameuser`,
`replication`, `@file` and names; users `all`, `@file` and names (`+group` is not supported: PgBouncer knows no
roles); addresses `all`, IPv4 and IPv6 with a /bits or a separate mask; methods trust, reject, md5, password,
scram-sha-256, cert and peer; the option `map=` for cert and peer. A quoted word is a name, never a keyword.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Callable

from .config import Config, ConfigError

METHODS = ("trust", "reject", "md5", "password", "scram-sha-256", "cert", "peer")
RECORD_TYPES = ("local", "host", "hostssl", "hostnossl")
MAPPED_METHODS = ("cert", "peer")
VERIFIED_MODES = ("verify-ca", "verify-full")
MAX_INCLUDE_DEPTH = 10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Token = tuple[str, bool]        # (text, quoted)


class HbaError(ConfigError, ValueError):
    """auth_hba_file or auth_ident_file cannot be used: a ConfigError to start and RELOAD, a ValueError to SET."""


@dataclass(frozen=True)
class Names:
    """A database or user field: the keywords it holds and the names it lists."""

    every: bool = False
    sameuser: bool = False
    replication: bool = False
    names: frozenset[str] = frozenset()

    def has_database(self, dbname: str, user: str, physical_replication: bool) -> bool:
        """As PostgreSQL: only `replication` matches a physical replication connection, which names no database."""
        if physical_replication:
            return self.replication
        return self.every or (self.sameuser and dbname == user) or dbname in self.names

    def has_user(self, user: str) -> bool:
        return self.every or user in self.names


@dataclass(frozen=True)
class Rule:
    line: int
    kind: str                   # one of RECORD_TYPES
    databases: Names
    users: Names
    network: Network | None     # None: any address (`all`, or a local line)
    method: str                 # one of METHODS
    map: str | None = None      # the ident map of a cert or peer line


@dataclass(frozen=True)
class Access:
    """The parsed rules and ident maps; `rule_for` and `mapped` are the decisions taken at login."""

    rules: tuple[Rule, ...]
    maps: dict[str, tuple[tuple[str, str | None], ...]] = field(default_factory=dict)  # name → (system, user|None=all)

    def rule_for(self, *, unix: bool, address: str | None, tls: bool, dbname: str, user: str,
                 physical_replication: bool = False) -> Rule | None:
        """The first rule for this connection, or None when no line matches."""
        client = None if unix else _client_address(address)
        for rule in self.rules:
            if unix != (rule.kind == "local"):
                continue
            if (rule.kind == "hostssl" and not tls) or (rule.kind == "hostnossl" and tls):
                continue
            if rule.network is not None and (client is None or client.version != rule.network.version
                                             or client not in rule.network):
                continue
            if rule.databases.has_database(dbname, user, physical_replication) and rule.users.has_user(user):
                return rule
        return None

    def mapped(self, map_name: str, system_names: tuple[str, ...], user: str) -> bool:
        """Whether the ident map lets one of `system_names` (a certificate's names, the peer's OS user) log in as
        `user`: a line naming one of them and the user, or `all`."""
        return any(system in system_names and (allowed is None or allowed == user)
                   for system, allowed in self.maps.get(map_name, ()))


def _client_address(address: str | None):
    if address is None:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return getattr(parsed, "ipv4_mapped", None) or parsed     # an IPv4 client of a dual-stack listener


# -- reading ---------------------------------------------------------------------------------------------------

def tokens(line: str) -> list[list[Token]]:
    """A line's fields, each a list of comma-separated tokens; `#` starts a comment outside quotes, `""` inside
    quotes is a quote. ValueError for an unterminated quote or a comma with nothing on one side."""
    fields: list[list[Token]] = []
    after_comma = False
    i, end = 0, len(line)
    while i < end:
        c = line[i]
        if c == "#":
            break
        if c.isspace():
            i += 1
            continue
        if c == ",":
            if not fields or after_comma:
                raise ValueError("a comma with no name before it")
            after_comma = True
            i += 1
            continue
        if c == '"':
            text, i = _quoted(line, i)
            token = (text, True)
        else:
            start = i
            while i < end and not line[i].isspace() and line[i] not in ',#"':
                i += 1
            token = (line[start:i], False)
        if after_comma:
            fields[-1].append(token)
        else:
            fields.append([token])
        after_comma = False
    if after_comma:
        raise ValueError("the line ends after a comma")
    return fields


def _quoted(line: str, start: int) -> tuple[str, int]:
    i, parts = start + 1, []
    while True:
        close = line.find('"', i)
        if close < 0:
            raise ValueError("unterminated quoted name")
        parts.append(line[i:close])
        if line.startswith('""', close):
            parts.append('"')
            i = close + 2
            continue
        return "".join(parts), close + 1


def parse_hba(text: str, path: str, maps: dict | None = None, read: Callable[[str], str] | None = None) -> Access:
    """The rules of an HBA file; `read` opens the files that `@file` names (relative to this file's folder)."""
    read = read or _read
    maps = maps or {}
    rules = []
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            fields = tokens(line)
            if fields:
                rules.append(_rule(number, fields, path, maps, read))
        except ValueError as exc:
            raise HbaError(str(exc), path, number) from None
    return Access(tuple(rules), maps)


def _rule(number: int, fields: list[list[Token]], path: str, maps: dict, read) -> Rule:
    kind = _word(fields[0], "record type")
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown record type {kind!r} (local, host, hostssl or hostnossl)")
    if len(fields) < (4 if kind == "local" else 5):
        raise ValueError("too few fields: expected type, database, user" + ("" if kind == "local" else ", address")
                         + " and method")
    databases = _names(fields[1], path, read, database=True)
    users = _names(fields[2], path, read, database=False)
    rest = fields[3:]
    network = None
    if kind != "local":
        network, rest = _network(rest)
    if not rest:
        raise ValueError("no authentication method")
    method = _word(rest[0], "method")
    if method not in METHODS:
        raise ValueError(f"unsupported authentication method {method!r} ({', '.join(METHODS)})")
    map_name = None
    for option in rest[1:]:
        key, _, value = _word(option, "option").partition("=")
        if key != "map" or not value:
            raise ValueError(f"unsupported option {key!r}: the only option is map=NAME, for cert and peer")
        if method not in MAPPED_METHODS:
            raise ValueError(f"map= applies to cert and peer only, not to {method}")
        if value not in maps:
            raise ValueError(f"ident map {value!r} is not in auth_ident_file")
        map_name = value
    return Rule(number, kind, databases, users, network, method, map_name)


def _word(field: list[Token], what: str) -> str:
    if len(field) != 1 or field[0][1]:
        raise ValueError(f"expected one unquoted {what}, got {','.join(text for text, _ in field)!r}")
    return field[0][0]


def _names(field: list[Token], path: str, read, database: bool, depth: int = 0) -> Names:
    every = sameuser = replication = False
    names: set[str] = set()
    for text, quoted in field:
        keyword = None if quoted else text
        if keyword == "all":
            every = True
        elif database and keyword == "sameuser":
            sameuser = True
        elif database and keyword == "replication":
            replication = True
        elif database and keyword in ("samerole", "samegroup"):
            raise ValueError(f"{keyword} is not supported")
        elif keyword is not None and keyword.startswith("+"):
            raise ValueError(f"group names ({keyword}) are not supported")
        elif keyword is not None and keyword.startswith("@"):
            included = _include(keyword[1:], path, read, database, depth)
            every, sameuser, replication = (every or included.every, sameuser or included.sameuser,
                                            replication or included.replication)
            names |= included.names
        else:
            names.add(text)
    return Names(every, sameuser, replication, frozenset(names))


def _include(name: str, parent: str, read, database: bool, depth: int) -> Names:
    """The names of an @file: tokens separated by spaces, commas or lines; keywords as on the line."""
    if depth >= MAX_INCLUDE_DEPTH:
        raise ValueError(f"@{name}: included files nest deeper than {MAX_INCLUDE_DEPTH}")
    path = os.path.join(os.path.dirname(parent), name)
    try:
        text = read(path)
    except OSError as exc:
        raise ValueError(f"cannot read @{name} ({path}): {exc.strerror or exc}") from None
    listed = [token for line in text.split("\n") for field in tokens(line) for token in field]
    return _names(listed, path, read, database, depth + 1)


def _network(fields: list[list[Token]]) -> tuple[Network | None, list[list[Token]]]:
    """The address field, and the mask field when it is a separate one; the fields after them."""
    text = _word(fields[0], "address")
    if text == "all":
        return None, fields[1:]
    if "/" in text:
        address, bits = text.split("/", 1)
        return _masked(text, address, bits), fields[1:]
    _address(text)          # the address itself first: a host name is not mistaken for a missing mask
    mask_text = _word(fields[1], "mask") if len(fields) > 1 else ""
    try:
        mask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise ValueError(f"address {text!r} needs /bits or a mask after it, not {mask_text!r}") from None
    if mask.version != _address(text).version:
        raise ValueError(f"mask {mask_text!r} is not of the address's IP version")
    width = mask.max_prefixlen
    bits = bin(int(mask)).count("1")
    if int(mask) != ((1 << bits) - 1) << (width - bits):
        raise ValueError(f"mask {mask_text!r} is not contiguous")
    return _masked(f"{text} {mask_text}", text, str(bits)), fields[2:]


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid address {text!r} (host names, samehost and samenet are not supported)") \
            from None


def _masked(shown: str, address: str, bits: str) -> Network:
    parsed = _address(address)
    if not bits.isdigit() or int(bits) > parsed.max_prefixlen:
        raise ValueError(f"invalid mask in {shown!r}")
    try:
        return ipaddress.ip_network(f"{parsed}/{bits}")
    except ValueError:
        raise ValueError(f"address does not match its mask: {shown!r}") from None


def parse_ident(text: str, path: str) -> dict[str, tuple[tuple[str, str | None], ...]]:
    """Ident maps: `map-name system-user database-user` per line; the database user may be `all`."""
    maps: dict[str, list[tuple[str, str | None]]] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            fields = tokens(line)
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError("expected: map-name system-username database-username")
            name, system, user = (_single(f) for f in fields)
            if name in ("include", "include_if_exists", "include_dir"):
                raise ValueError("include directives are not supported")
            if system.startswith("/") and not fields[1][0][1]:
                raise ValueError("regular expressions are not supported")
            if user.startswith(("+", "/")) and not fields[2][0][1]:
                raise ValueError("group names and regular expressions are not supported")
        except ValueError as exc:
            raise HbaError(str(exc), path, number) from None
        all_users = user == "all" and not fields[2][0][1]
        maps.setdefault(name, []).append((system, None if all_users else user))
    return {name: tuple(lines) for name, lines in maps.items()}


def _single(field: list[Token]) -> str:
    if len(field) != 1:
        raise ValueError(f"expected one name, got {','.join(text for text, _ in field)!r}")
    return field[0][0]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def load(config: Config) -> Access | None:
    """The rules auth_type = hba logins follow (None for any other auth_type), read from the files the config
    names; HbaError says what cannot be used. Checks too that cert logins can be trusted: the certificate must
    have been verified against client_tls_ca_file."""
    auth_type = config.get("auth_type")
    access = None
    if auth_type == "hba":
        hba_file, ident_file = config.get("auth_hba_file"), config.get("auth_ident_file")
        if not hba_file:
            raise HbaError("auth_type = hba needs auth_hba_file")
        try:
            maps = parse_ident(_read(ident_file), ident_file) if ident_file else {}
            access = parse_hba(_read(hba_file), hba_file, maps)
        except (OSError, UnicodeError) as exc:
            raise HbaError(f"cannot read {getattr(exc, 'filename', None) or hba_file}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    uses_cert = auth_type == "cert" or (access is not None and any(r.method == "cert" for r in access.rules))
    if uses_cert and config.get("client_tls_sslmode") not in VERIFIED_MODES:
        raise HbaError("cert authentication needs client_tls_sslmode verify-ca or verify-full (and "
                       "client_tls_ca_file): with any other mode a client certificate is not verified")
    return access
