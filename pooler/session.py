"""The session parameters a pooled server carries from one client to the next: which ones the pooler tracks,
how a client's and a server's sets compare, and the statements that bring a server in line with a client.

Apart from server.py so that client.py can import them without importing the server module first (compiled,
the two modules import each other's types when they load)."""
from __future__ import annotations

BUILT_IN_PARAMS = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name")

# How PostgreSQL spells the parameters it reports. A setting's name is case-insensitive but a ParameterStatus
# name is not, so a track_extra_parameters entry is matched to the reported name whatever its case.
_REPORTED = {name.lower(): name for name in (
    "application_name", "client_encoding", "DateStyle", "default_transaction_read_only", "in_hot_standby",
    "integer_datetimes", "IntervalStyle", "is_superuser", "scram_iterations", "search_path", "server_encoding",
    "server_version", "session_authorization", "standard_conforming_strings", "TimeZone")}


def tracked_params(extra: tuple[str, ...]) -> dict[str, str]:
    """The parameters kept per client, the built-in ones and track_extra_parameters (PgBouncer 1.20+), by
    lower-case name: each once, spelled as PostgreSQL reports it (an extension's own as written)."""
    tracked: dict[str, str] = {}
    for name in BUILT_IN_PARAMS + tuple(extra):
        tracked.setdefault(name.lower(), _REPORTED.get(name.lower(), name))
    return tracked


_param_keys: dict[tuple, tuple] = {}


def param_key(tracked: dict[str, str], params: dict[str, str], options: dict[str, str] | None = None) -> tuple:
    """The `tracked` parameters, and the settings from `options` when there are any, as one interned tuple:
    equal sets of values are the same object, so the hand-off compares a client and a server with `is`
    instead of a lookup per parameter."""
    key = tuple([params.get(name) for name in tracked.values()])
    if options:
        key += (tuple(sorted(options.items())),)
    return _param_keys.setdefault(key, key)


_shared_params: dict[tuple, dict[str, str]] = {}


def shared_params(params: dict[str, str]) -> dict[str, str]:
    """One dict per distinct set of client parameters, shared by every client that has it (thousands of
    idle clients mostly have the same few). Never mutate the result: replace it."""
    key = tuple(sorted(params.items()))
    return _shared_params.setdefault(key, params)


def _literal(value: str) -> str:
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


# A list whose names PostgreSQL quotes, reported so (`"$user", public`) on PostgreSQL 18 and with Citus: SET
# would take a quoted value for one name, set_config reads it as a list, as `-c` does (PgBouncer sends it
# unquoted, for the same reason).
_QUOTED_LISTS = ("search_path",)


def set_statement(diff: dict[str, str]) -> str:
    """One simple query that brings a server's tracked parameters to a client's values."""
    return ";".join(f"SELECT pg_catalog.set_config('{name}', {_literal(value)}, false)" if name in _QUOTED_LISTS
                    else f'SET "{name}" TO {_literal(value)}' for name, value in diff.items())


def options_statements(current: dict[str, str], wanted: dict[str, str]) -> list[str]:
    """Bring a server's settings from a client's `options` (current) to another client's (wanted).

    set_config takes a value as `-c name=value` does, unquoted lists included (search_path=a,b), which
    SET name TO 'a,b' would not; RESET goes back to the server's own default."""
    out = [f"SELECT pg_catalog.set_config({_literal(name)}, {_literal(value)}, false)"
           for name, value in wanted.items() if current.get(name) != value]
    out += ['RESET "' + name.replace('"', '""') + '"' for name in current if name not in wanted]
    return out
