"""The admin console: PgBouncer's virtual database `pgbouncer`, its SHOW commands and its control commands.

A client that logs in to `pgbouncer` is handed here after authentication and this takes its connection
over; it never gets a pool. Users in admin_users may run everything, users in stats_users only SHOW
(except SHOW FDS), as in PgBouncer; anyone else is told "not allowed". Simple query protocol only.

Commands are parsed with PgBouncer's grammar (a word and an optional argument, or SET key = value), errors
are PgBouncer's words with SQLSTATE 08P01, and the session stays usable after one. Result columns are PgBouncer
1.25's, in its order and with its types (admin.c), so exporters and runbooks read them unchanged; where Debian's
PgBouncer 1.18 named a column differently (SHOW DATABASES' reserve_pool) that name is there too, at the end.
The work itself is done by control.py, the same code the signals and the config-file watch use.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from maitred import __version__

from . import control, protocol, siblings, stats
from .client import ACTIVE, AUTH, LOGIN_WAIT, STARTUP
from .config import RESERVED_DATABASE, ConfigError
from .settings import MAITRED_SETTINGS, SETTINGS

if TYPE_CHECKING:
    from .app import Pooler
    from .client import Client
    from .objects import Pool
    from .server import Server

log = logging.getLogger("maitred.admin")

VERSION = "1.25.0"      # the PgBouncer whose console this one speaks
ADMIN_POOL_SIZE = 2     # what PgBouncer reports for its admin database

# PgBouncer's result-type letters (pktbuf.c): text, int4, int8, numeric, bytea.
_OIDS = {"s": 25, "i": 23, "q": 20, "N": 1700, "b": 17}

# A console command is a line of text; anything longer is not one.
MAX_QUERY = 1 << 20


def columns(types: str, *names: str) -> list[tuple[str, int]]:
    assert len(types) == len(names)
    return [(name, _OIDS[kind]) for kind, name in zip(types, names)]


class ConsoleError(Exception):
    """A command failed; the client gets an ErrorResponse and the session goes on."""

    def __init__(self, message: str, sqlstate: str = protocol.PROTOCOL_VIOLATION, detail: str | None = None):
        super().__init__(message)
        self.sqlstate, self.detail = sqlstate, detail


# -- the session -------------------------------------------------------------------------------------------


def start(client: "Client") -> None:
    """Called once `client` has authenticated to the `pgbouncer` database: admit it, or refuse it."""
    cfg = client.app.config
    if client.own_user or client.user in cfg.get("admin_users"):
        Console(client, admin=True)
    elif client.user in cfg.get("stats_users"):
        Console(client, admin=False)
    else:
        client.fatal(protocol.PROTOCOL_VIOLATION, "not allowed")


class Console(asyncio.Protocol):
    """One console session; it replaces the Client as its transport's protocol."""

    def __init__(self, client: "Client", admin: bool):
        self.client = client
        self.app = client.app
        self.admin = admin              # decided at login, as PgBouncer does: a RELOAD does not change it
        self.transport = client.transport
        self.buffer = b""
        self.busy = False               # a command is running (PAUSE, WAIT_CLOSE): later ones wait their turn
        self.closed = False
        self.task: asyncio.Task | None = None
        self.transport.set_protocol(self)
        client.state = ACTIVE
        client.cancel_key = self.app.register_cancel_key(client)
        stats.window(self.app).console.client_logins += 1
        welcome = [protocol.parameter_status(k, v) for k, v in (
            ("server_version", VERSION + "/bouncer"), ("client_encoding", "UTF8"), ("server_encoding", "UTF8"),
            ("DateStyle", "ISO"), ("TimeZone", "GMT"), ("standard_conforming_strings", "on"),
            ("is_superuser", "on"))]
        welcome += [protocol.backend_key_data(client.cancel_key),
                    self.app.rules.notice, protocol.ready_for_query()]
        self.transport.write(b"".join(welcome))
        self.app.log_event(log, f"login attempt: db={RESERVED_DATABASE} user={client.user}", client)
        leftover, client.startup = client.startup, b""
        if leftover:
            self.data_received(leftover)

    def data_received(self, data: bytes) -> None:
        self.client.active = True       # for the janitor's client_idle_timeout
        self.buffer += data
        self._next()

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        self.client.connection_lost(exc)

    def _next(self) -> None:
        """Run the messages that have arrived, one at a time."""
        while not self.busy and not self.closed and len(self.buffer) >= 5:
            length = protocol.read_int(self.buffer, 1)
            if length < 4 or length > MAX_QUERY:
                self._bad_packet(f"invalid message length {length}")
                return
            if len(self.buffer) < 1 + length:
                return
            kind, body = self.buffer[0], self.buffer[5:1 + length]
            self.buffer = self.buffer[1 + length:]
            if kind == 0x51:        # 'Q'
                self._query(body.rstrip(b"\x00").decode(errors="replace"))
            elif kind == 0x58:      # 'X'
                self.client.close()
                return
            elif kind in b"PBE":
                self._bad_packet("extended query protocol not supported by admin console")
                return
            else:
                self._bad_packet(f"unsupported packet type for admin console: {chr(kind)}")
                return

    def _bad_packet(self, text: str) -> None:
        self._log_error(text)
        self.transport.write(protocol.error_response(protocol.PROTOCOL_VIOLATION, text))
        self.client.fatal(protocol.PROTOCOL_VIOLATION, "bad packet")

    def _query(self, sql: str) -> None:
        console_stats = stats.window(self.app).console
        console_stats.query_count += 1
        console_stats.xact_count += 1
        log.debug("got admin query: %s", sql)
        try:
            result = execute(self, sql) if self.app.worker is None else siblings.execute(self, sql)
        except ConsoleError as exc:
            self._reply(self._error(exc))
            return
        if result is None:          # SHUTDOWN: no answer, the connection goes with the process
            self.busy = True
        elif inspect.isawaitable(result):
            self.busy = True
            self.task = self.app.spawn(self._finish(result))
        else:
            self._reply(result)

    async def _finish(self, pending: Awaitable[bytes]) -> None:
        try:
            reply = await pending
        except ConsoleError as exc:
            reply = self._error(exc)
        except ValueError as exc:
            reply = self._error(ConsoleError(str(exc)))
        self.task = None
        self.busy = False
        if not self.closed:
            self._reply(reply)
            self._next()

    def _error(self, exc: ConsoleError) -> bytes:
        self._log_error(str(exc))
        return protocol.error_response(exc.sqlstate, str(exc), detail=exc.detail)

    def _log_error(self, text: str) -> None:
        if self.app.config.get("log_pooler_errors"):
            log.warning("%s pooler error: %s", self.client.describe(), text)

    def _reply(self, data: bytes) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.write(data + protocol.ready_for_query())

    def need_admin(self) -> None:
        if not self.admin:
            raise ConsoleError("admin access needed")


# -- parsing -----------------------------------------------------------------------------------------------

_WS0, _WS1 = r"[ \t\n\r]*", r"[ \t\n\r]+"
_WORD = r'("(?:[^"]|"")*"|[0-9a-z_]+)'
_VALUE = r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|[^ \t\n\r;'"]+)"""
_END = rf"{_WS0}(?:;{_WS0})?$"
_COMMAND = re.compile(rf"^{_WS0}{_WORD}(?:{_WS1}{_WORD})?{_END}", re.IGNORECASE)
_SET = re.compile(rf"^{_WS0}set{_WS1}{_WORD}{_WS0}(?:=|to){_WS0}{_VALUE}{_END}", re.IGNORECASE)


def _unquote(text: str | None) -> str:
    if not text:
        return ""
    if text[0] in "'\"" and len(text) >= 2:
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


def execute(con: Console, sql: str) -> bytes | Awaitable[bytes] | None:
    """Run one console query: its reply without ReadyForQuery, an awaitable of it, or None for none."""
    if not sql.strip(" \t\n\r;"):
        return protocol.message(b"I")          # EmptyQueryResponse, as any server answers an empty query
    if m := _COMMAND.match(sql):
        command = COMMANDS.get(_unquote(m[1]).lower())
        if command is None:
            raise _invalid(sql)
        return command(con, _unquote(m[2]), sql)
    if m := _SET.match(sql):
        key = _unquote(m[1])
        if not key:
            raise ConsoleError("bad arguments")
        return set_command(con, key, _unquote(m[2]))
    raise _invalid(sql)


def _invalid(sql: str) -> ConsoleError:
    return ConsoleError(f"invalid command '{sql}', use SHOW HELP;")


def _no_arg(arg: str, sql: str) -> None:
    if arg:
        raise _invalid(sql)


# -- control commands --------------------------------------------------------------------------------------

def _known_database(app: "Pooler", name: str) -> None:
    if name != RESERVED_DATABASE and app.config.database_for(name) is None and name not in app.db_limits:
        raise ConsoleError(f"no such database: {name}")


def _not_admin_db(name: str, what: str) -> None:
    if name == RESERVED_DATABASE:
        raise ConsoleError(f"cannot {what} admin db: {name}")


def pause_command(con: Console, arg: str, sql: str):
    con.need_admin()
    app = con.app
    if app.paused or app.suspended:
        raise ConsoleError("already suspended/paused")
    if arg:
        _known_database(app, arg)
        _not_admin_db(arg, "pause")
    log.info("PAUSE %scommand issued", f"'{arg}' " if arg else "")

    async def paused() -> bytes:
        await control.pause(app, arg or None)
        return protocol.command_complete("PAUSE")
    return paused()


def resume_command(con: Console, arg: str, sql: str) -> bytes:
    con.need_admin()
    app = con.app
    if arg:
        log.info("RESUME '%s' command issued", arg)
        _known_database(app, arg)
        limits = app.db_limits.get(arg)
        if limits is None or not limits.paused:
            raise ConsoleError(f"database {arg} is not paused")
    else:
        log.info("RESUME command issued")
        if app.shutting_down:
            raise ConsoleError("pooler is shutting down")
        if not app.paused and not app.suspended and not any(limits.paused for limits in app.db_limits.values()):
            raise ConsoleError("pooler is not paused/suspended")
    control.resume(app, arg or None)
    return protocol.command_complete("RESUME")


def suspend_command(con: Console, arg: str, sql: str):
    _no_arg(arg, sql)
    con.need_admin()
    app = con.app
    if app.paused or app.suspended:
        raise ConsoleError("already suspended/paused")
    if any(limits.paused for limits in app.db_limits.values()):
        raise ConsoleError("cannot suspend with paused databases")     # its buffers could not flush
    log.info("SUSPEND command issued")

    async def suspended() -> bytes:
        await control.suspend(app)
        return protocol.command_complete("SUSPEND")
    return suspended()


def disable_command(con: Console, arg: str, sql: str, disable: bool = True) -> bytes:
    con.need_admin()
    word = "DISABLE" if disable else "ENABLE"
    if not arg:
        raise ConsoleError("a database is required")
    log.info("%s '%s' command issued", word, arg)
    _known_database(con.app, arg)
    if arg == RESERVED_DATABASE:
        raise ConsoleError(f"cannot {word.lower()} admin db: {arg}")
    control.disable(con.app, arg, disable)
    return protocol.command_complete(word)


def enable_command(con: Console, arg: str, sql: str) -> bytes:
    return disable_command(con, arg, sql, disable=False)


def _databases_in_use(app: "Pooler") -> list[str]:
    names = {name for name in app.config.databases if name != "*"}
    return sorted(names | {pool.name for pool in app.pools.values()})


def kill_command(con: Console, arg: str, sql: str) -> bytes:
    con.need_admin()
    app = con.app
    if app.paused or app.suspended:
        raise ConsoleError("already suspended/paused")
    if arg:
        log.info("KILL '%s' command issued", arg)
        _known_database(app, arg)
        _not_admin_db(arg, "kill")
        _call("", control.kill, app, arg)
    else:
        log.info("KILL command issued")
        for name in _databases_in_use(app):
            _call("", control.kill, app, name)
    return protocol.command_complete("KILL")


def kill_client_command(con: Console, arg: str, sql: str) -> bytes:
    con.need_admin()
    if not arg.isdigit():
        raise ConsoleError("invalid client pointer supplied")
    wanted = int(arg)
    for client in list(con.app.clients):
        if client.id == wanted and client.state in (ACTIVE, LOGIN_WAIT):
            client.fatal(protocol.ADMIN_SHUTDOWN, "admin forced disconnect")
            return protocol.command_complete("KILL_CLIENT")
    raise ConsoleError("client not found")


def reconnect_command(con: Console, arg: str, sql: str) -> bytes:
    con.need_admin()
    if arg:
        log.info("RECONNECT '%s' command issued", arg)
        _known_database(con.app, arg)
        _not_admin_db(arg, "reconnect")
    else:
        log.info("RECONNECT command issued")
    _call("", control.reconnect, con.app, arg or None)
    return protocol.command_complete("RECONNECT")


def wait_close_command(con: Console, arg: str, sql: str):
    con.need_admin()
    app = con.app
    if arg:
        _known_database(app, arg)
        if arg == RESERVED_DATABASE:
            raise ConsoleError(f"cannot wait in admin db: {arg}")
    log.info("WAIT_CLOSE %scommand issued", f"'{arg}' " if arg else "")

    async def closed() -> bytes:
        await control.wait_close(app, arg or None)
        return protocol.command_complete("WAIT_CLOSE")
    return closed()


def reload_command(con: Console, arg: str, sql: str) -> bytes:
    _no_arg(arg, sql)
    con.need_admin()
    log.info("RELOAD command issued")
    try:
        messages = control.reload(con.app)
    except ConfigError as exc:
        log.error("RELOAD failed: %s", exc)
        raise ConsoleError("RELOAD failed, see logs for additional details", "F0000", str(exc)) from None
    return b"".join(protocol.notice_response(m) for m in messages) + protocol.command_complete("RELOAD")


SHUTDOWN_MODES = {"": "immediate", "wait_for_servers": "wait_for_servers", "wait_for_clients": "wait_for_clients"}


def shutdown_command(con: Console, arg: str, sql: str) -> bytes | None:
    mode = SHUTDOWN_MODES.get(arg.lower())
    if mode is None:
        raise _invalid(sql)
    con.need_admin()
    log.info("SHUTDOWN%s command issued", f" {arg.upper()}" if arg else "")
    control.shutdown(con.app, mode)
    return None if mode == "immediate" else protocol.command_complete("SHUTDOWN")


def _call(prefix: str, func: Callable, *args):
    """Run a control function; the ValueError it raises for bad arguments becomes the client's error."""
    try:
        return func(*args)
    except ValueError as exc:
        raise ConsoleError(f"{prefix}{exc}") from None


# Parameters that drivers SET or SHOW on connect; PgBouncer answers them without a server.
FAKE_PARAMS = {"client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
               "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT",
               "extra_float_digits": "2"}


def set_command(con: Console, key: str, value: str) -> bytes:
    if key.lower() in FAKE_PARAMS:
        return protocol.notice_response("SET ignored") + protocol.command_complete("SET")
    con.need_admin()
    log.info("SET %s = %s", key, value)
    notice = _call("SET failed: ", control.set_setting, con.app, key, value)
    done = protocol.command_complete(f"SET {key}={value}")
    return protocol.notice_response(notice) + done if notice else done


# -- SHOW --------------------------------------------------------------------------------------------------

def show_command(con: Console, arg: str, sql: str) -> bytes:
    name = arg.lower()
    if name in FAKE_PARAMS:
        return result([(name, _OIDS["s"])], [(FAKE_PARAMS[name],)])
    if name == "help":
        return show_help()
    show = SHOWS.get(name)
    if show is None:
        raise _invalid(sql)
    if name == "fds":
        con.need_admin()
    cols, rows = show(con.app)
    return result(cols, rows)


def result(cols: list[tuple[str, int]], rows) -> bytes:
    out = [protocol.row_description(cols)]
    out += [protocol.data_row(list(row)) for row in rows]
    out.append(protocol.command_complete("SHOW"))
    return b"".join(out)


HELP = """
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION
\tSHOW PEERS|PEER_POOLS
\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE
\tSHOW DNS_HOSTS|DNS_ZONES
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tSUSPEND
\tSHUTDOWN
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
\tWAIT_CLOSE [<db>]"""


def show_help() -> bytes:
    body = b"SNOTICE\x00VNOTICE\x00C00000\x00MConsole usage\x00D" + HELP.encode() + b"\x00\x00"
    return protocol.message(b"N", body) + protocol.command_complete("SHOW")


POOLS = columns("ss" + "i" * 13 + "ss",
                "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
                "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts")


def _load_balance_hosts(db) -> str | None:
    """Shown only for a database with a host list, as PgBouncer does."""
    return (db.load_balance_hosts or "round-robin") if db.host and "," in db.host else None


def _consoles(app: "Pooler") -> list["Client"]:
    return [c for c in app.clients if isinstance(c.transport.get_protocol(), Console)]


def show_pools(app: "Pooler"):
    now = app.now()
    rows = []
    for (name, user), pool in sorted(app.pools.items()):
        counts = pool.counts()
        wait = pool.oldest_wait(now)
        rows.append((name, user, counts["cl_active"], counts["cl_waiting"], 0, 0, counts["sv_active"], 0,
                     counts["sv_being_canceled"], counts["sv_idle"], counts["sv_used"], counts["sv_tested"],
                     counts["sv_login"], int(wait), int(wait * 1e6) % 1_000_000, pool.mode,
                     _load_balance_hosts(pool.db)))
    rows.append((RESERVED_DATABASE, RESERVED_DATABASE, len(_consoles(app))) + (0,) * 12 + ("statement", None))
    return POOLS, sorted(rows, key=lambda r: (r[0], r[1]))


STATS_TOTAL_NAMES = ("total_server_assignment_count", "total_xact_count", "total_query_count", "total_received",
                     "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                     "total_client_parse_count", "total_server_parse_count", "total_bind_count",
                     "total_client_login_count")
STATS_AVG_NAMES = ("avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
                   "avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count",
                   "avg_server_parse_count", "avg_bind_count", "avg_client_login_count")
STATS = columns("s" + "N" * 24, "database", *STATS_TOTAL_NAMES, *STATS_AVG_NAMES)
STATS_TOTALS = columns("s" + "N" * 12, "database", "server_assignment_count", "xact_count", "query_count",
                       "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                       "client_parse_count", "server_parse_count", "bind_count", "client_login_count")
STATS_AVERAGES = columns("s" + "N" * 12, "database", "server_assignment_count", "xact_count", "query_count",
                         "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                         "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count",
                         "client_login_count")
TOTALS = columns("sN", "name", "value")
# SHOW TOTALS names its rows after PgBouncer's counters (stats.c), not after SHOW STATS' columns.
TOTALS_NAMES = ("server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes",
                "xact_time", "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count",
                "ps_bind_count", "client_login_count")


def show_stats(app: "Pooler"):
    return STATS, [(name, *total, *avg) for name, total, avg in stats.by_database(app)]


def show_stats_totals(app: "Pooler"):
    return STATS_TOTALS, [(name, *total) for name, total, _ in stats.by_database(app)]


def show_stats_averages(app: "Pooler"):
    return STATS_AVERAGES, [(name, *avg) for name, _, avg in stats.by_database(app)]


def show_totals(app: "Pooler"):
    total, avg = stats.overall(app)
    rows = [("total_" + n, v) for n, v in zip(TOTALS_NAMES, total)]
    return TOTALS, rows + [("avg_" + n, v) for n, v in zip(TOTALS_NAMES, avg)]


SOCKET_NAMES = ("type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
                "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid",
                "tls", "application_name", "prepared_statements", "id")
SOCKET_TYPES = "ssssss" "isi" "ss" "iii" "ss" "i" "ss" "ii"
SOCKETS_DEBUG_NAMES = ("recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail")
SOCKETS = columns(SOCKET_TYPES, *SOCKET_NAMES)
SOCKETS_DEBUG = columns(SOCKET_TYPES + "i" * 7, *SOCKET_NAMES, *SOCKETS_DEBUG_NAMES)

def _ptr(conn) -> str:
    return f"{id(conn):#x}" if conn is not None else ""


def _timestamp(app: "Pooler", loop_time: float) -> str:
    wall = time.time() - (app.now() - loop_time)
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall))


def _endpoint(transport, which: str, unix_port: int) -> tuple[str, int]:
    info = transport.get_extra_info(which) if transport is not None else None
    if isinstance(info, tuple):
        return info[0], info[1]
    return "unix", unix_port


def client_state(client: "Client") -> str:
    """PgBouncer 1.25's words: active (holding a server), waiting (queued for one) or idle."""
    if client.server is not None:
        return "active"
    if client.requested or client.state == LOGIN_WAIT:
        return "waiting"
    return "idle"


def _pooled_clients(app: "Pooler") -> list["Client"]:
    """Logged-in clients and those waiting for their pool's first server, with the console sessions."""
    shown = [c for c in app.clients if c.state in (ACTIVE, LOGIN_WAIT)]
    return sorted(shown, key=lambda c: (c.dbname, c.user, c.connected_at))


def _client_row(app: "Pooler", client: "Client", state: str) -> tuple:
    port = app.config.get("listen_port")
    addr, rport = _endpoint(client.transport, "peername", port)
    local, lport = _endpoint(client.transport, "sockname", port)
    wait = app.now() - client.wait_started if client.wait_started else 0.0
    return ("C", client.user, client.dbname, "none", state, addr, rport, local, lport,
            _timestamp(app, client.connected_at), _timestamp(app, max(client.idle_since, client.connected_at)),
            int(wait), int(wait * 1e6) % 1_000_000, 0, _ptr(client), _ptr(client.server), 0, "",
            client.params.get("application_name", ""), 0, client.id)


def show_clients(app: "Pooler"):
    return SOCKETS, [_client_row(app, c, client_state(c)) for c in _pooled_clients(app)]


def server_state(server: "Server", idle: set) -> str:
    """PgBouncer's server lists: active (linked), idle, tested (running the pooler's own query) or new."""
    if not server.ready:
        return "new"
    if server.client is not None:
        return "active"
    if server in idle:
        return "idle"
    return "tested"


def _servers(app: "Pooler") -> list[tuple["Server", str]]:
    out = []
    for _, pool in sorted(app.pools.items()):
        idle = set(pool.idle)
        for server in sorted(pool.servers, key=lambda s: s.connected_at):
            out.append((server, server_state(server, idle)))
    return out


def _server_row(app: "Pooler", server: "Server", state: str) -> tuple:
    pool: Pool = server.pool
    host, _, port = server.address.rpartition(":")
    if server.address.startswith("unix:") or not port.isdigit():
        addr, rport = "unix", pool.db.port
    else:
        addr, rport = host, int(port)
    local, lport = _endpoint(server.transport, "sockname", pool.db.port)
    client = server.client
    return ("S", pool.server_user, pool.name, "none", state, addr, rport, local, lport,
            _timestamp(app, server.connected_at), _timestamp(app, server.last_used), 0, 0,
            int(server.close_needed), _ptr(server), _ptr(client), server.backend_pid, "",
            client.params.get("application_name", "") if client is not None else "", 0, server.id)


def show_servers(app: "Pooler"):
    return SOCKETS, [_server_row(app, s, state) for s, state in _servers(app)]


def _buffered(conn) -> int:
    transport = conn.transport
    return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0


def _socket_rows(app: "Pooler", only_active: bool) -> list[tuple]:
    rows = []
    for client in _pooled_clients(app):
        state = "cl_waiting" if client_state(client) == "waiting" else "cl_active"
        rows.append((_client_row(app, client, state), client.pending_bytes, _buffered(client)))
    for server, state in _servers(app):
        rows.append((_server_row(app, server, "sv_" + ("login" if state == "new" else state)),
                     len(server.buffer), _buffered(server)))
    for client in app.clients:
        if client.state in (STARTUP, AUTH):
            rows.append((_client_row(app, client, "cl_login"), len(client.startup), _buffered(client)))
    return [row + (0, 0, 0, 0, 0, pending, sending) for row, pending, sending in rows
            if not only_active or pending or sending]


def show_sockets(app: "Pooler"):
    return SOCKETS_DEBUG, _socket_rows(app, only_active=False)


def show_active_sockets(app: "Pooler"):
    return SOCKETS_DEBUG, _socket_rows(app, only_active=True)


DATABASES = columns("ssissiiiissiiiiiii",
                    "name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                    "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                    "current_connections", "max_client_connections", "current_client_connections", "paused",
                    "disabled", "reserve_pool")


def _inherit(value, cfg, setting: str):
    """An entry's own value, or the [pgbouncer] setting it inherits."""
    return cfg.get(setting) if value is None else value


def _clients_by(app: "Pooler", attribute: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for client in app.clients:
        if client.state in (ACTIVE, LOGIN_WAIT):
            key = getattr(client, attribute)
            counts[key] = counts.get(key, 0) + 1
    return counts


def show_databases(app: "Pooler"):
    cfg = app.config
    clients = _clients_by(app, "dbname")
    rows = []
    for name in _databases_in_use(app):
        db = cfg.database_for(name)
        if db is None:          # removed by a reload; its pools live on until they empty
            db = next(p.db for p in app.pools.values() if p.name == name)
        limits = app.db_limits.get(name)
        reserve = _inherit(db.reserve_pool_size, cfg, "reserve_pool_size")
        rows.append((name, db.host, db.port, db.dbname, db.user, _inherit(db.pool_size, cfg, "default_pool_size"),
                     _inherit(db.min_pool_size, cfg, "min_pool_size"), reserve,
                     int(db.server_lifetime or cfg.get("server_lifetime")), db.pool_mode, _load_balance_hosts(db),
                     db.max_db_connections or cfg.get("max_db_connections"), limits.connections if limits else 0,
                     db.max_db_client_connections or cfg.get("max_db_client_connections"), clients.get(name, 0),
                     int(bool(limits and limits.paused)),
                     int(bool(limits and limits.disabled)), reserve))
    rows.append((RESERVED_DATABASE, None, cfg.get("listen_port"), RESERVED_DATABASE, RESERVED_DATABASE,
                 ADMIN_POOL_SIZE, 0, 0, int(cfg.get("server_lifetime")), "statement", None,
                 cfg.get("max_db_connections"), 0, cfg.get("max_db_client_connections"), len(_consoles(app)),
                 0, 0, 0))
    return DATABASES, sorted(rows, key=lambda r: r[0])


USERS = columns("ssssiiii", "name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                "current_connections", "max_user_client_connections", "current_client_connections")


def _user_names(app: "Pooler") -> list[str]:
    names = set(app.userlist) | set(app.config.users) | {RESERVED_DATABASE}
    names |= {pool.user for pool in app.pools.values()}
    return sorted(names)


def show_users(app: "Pooler"):
    cfg = app.config
    clients = _clients_by(app, "user")
    rows = []
    for name in _user_names(app):
        entry = cfg.users.get(name)
        own = {key: getattr(entry, key, None) for key in ("pool_size", "reserve_pool_size", "pool_mode",
                                                           "max_user_connections", "max_user_client_connections")}
        limits = app.user_limits.get(name)
        rows.append((name, "" if own["pool_size"] is None else str(own["pool_size"]),
                     "" if own["reserve_pool_size"] is None else str(own["reserve_pool_size"]), own["pool_mode"],
                     _inherit(own["max_user_connections"], cfg, "max_user_connections"),
                     limits.connections if limits else 0,
                     _inherit(own["max_user_client_connections"], cfg, "max_user_client_connections"),
                     clients.get(name, 0)))
    return USERS, rows


def config_text(setting, value) -> str | None:
    """A setting's value as PgBouncer's SHOW CONFIG prints it: booleans 0/1, whole seconds without a point."""
    if value is None:
        return None
    if setting.kind == "bool":
        return "1" if value else "0"
    if setting.kind == "float_seconds":
        return str(int(value)) if float(value).is_integer() else str(value)
    if setting.kind == "list":
        return ",".join(value)
    if setting.name == "unix_socket_mode":
        return f"0{value:o}"
    return str(value)


CONFIG = columns("ssss", "key", "value", "default", "changeable")


def show_config(app: "Pooler"):
    rows = []
    for catalogue in (SETTINGS, MAITRED_SETTINGS):
        for name, setting in catalogue.items():
            rows.append((name, config_text(setting, app.config.get(name)), config_text(setting, setting.default),
                         "yes" if setting.reloadable else "no"))
    return CONFIG, sorted(rows)


LISTS = columns("si", "list", "items")


def show_lists(app: "Pooler"):
    servers = sum(len(pool.servers) for pool in app.pools.values())
    logins = sum(1 for c in app.clients if c.state in (STARTUP, AUTH))
    return LISTS, [("databases", len(_databases_in_use(app)) + 1), ("users", len(_user_names(app))),
                   ("peers", len(show_peers(app)[1])), ("pools", len(app.pools) + 1), ("peer_pools", 0), ("free_clients", 0),
                   ("used_clients", len(app.clients)), ("login_clients", logins), ("free_servers", 0),
                   ("used_servers", servers), ("dns_names", len(app.resolver.answers)), ("dns_zones", 0),
                   ("dns_queries", len(app.resolver.lookups)), ("dns_pending", 0)]


def show_version(app: "Pooler"):
    return columns("s", "version"), [(f"maitred {__version__} (PgBouncer {VERSION} compatible)",)]


def show_state(app: "Pooler"):
    return columns("ss", "key", "value"), [("active", "no" if app.paused or app.suspended else "yes"),
                                          ("paused", "yes" if app.paused else "no"),
                                          ("suspended", "yes" if app.suspended else "no")]


FDS = columns("issssiqisssssbb", "fd", "task", "user", "database", "addr", "port", "cancel", "link",
              "client_encoding", "std_strings", "datestyle", "timezone", "password", "scram_client_key",
              "scram_server_key")


def _fd(transport) -> int:
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock.fileno() if sock is not None else -1


def show_fds(app: "Pooler"):
    """For a look only: maitred hands no sockets over (no online restart), so no fds are passed."""
    rows = []
    for listener in app.listeners:
        for sock in listener.sockets:
            name = sock.getsockname()
            addr, port = (name[0], name[1]) if isinstance(name, tuple) else ("unix", app.config.get("listen_port"))
            rows.append((sock.fileno(), "pooler", None, None, addr, port, 0, 0) + (None,) * 7)
    for client in _pooled_clients(app):
        addr, port = _endpoint(client.transport, "peername", app.config.get("listen_port"))
        pid, key = client.cancel_key >> 32, client.cancel_key & 0xffffffff
        rows.append((_fd(client.transport), "client", client.user, client.dbname, addr, port, pid << 32 | key,
                     _fd(client.server.transport) if client.server else 0, client.params.get("client_encoding"),
                     client.params.get("standard_conforming_strings"), client.params.get("DateStyle"),
                     client.params.get("TimeZone"), None, None, None))
    for server, _ in _servers(app):
        addr, port = _endpoint(server.transport, "peername", server.pool.db.port)
        rows.append((_fd(server.transport), "server", server.pool.server_user, server.pool.name, addr, port,
                     server.backend_pid << 32 | server.backend_key,
                     _fd(server.client.transport) if server.client else 0, server.params.get("client_encoding"),
                     server.params.get("standard_conforming_strings"), server.params.get("DateStyle"),
                     server.params.get("TimeZone"), None, None, None))
    return FDS, rows


def show_mem(app: "Pooler"):
    """PgBouncer's slab caches have no counterpart in a Python process: the columns, no rows."""
    return columns("siiii", "name", "size", "used", "free", "memtotal"), []


def show_peers(app: "Pooler"):
    siblings = app.worker.sibling_peers(app.config.get("listen_port")) if app.worker is not None else []
    peers = siblings + sorted(app.config.peers.values(), key=lambda p: p.peer_id)
    size = app.config.get("default_pool_size")
    return columns("isii", "peer_id", "host", "port", "pool_size"), \
        [(p.peer_id, p.host, p.port, p.pool_size or size) for p in peers]


def show_peer_pools(app: "Pooler"):
    return columns("iiiii", "peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel",
                   "sv_login"), []


def show_dns_hosts(app: "Pooler"):
    return columns("sqs", "hostname", "ttl", "addrs"), app.resolver.rows()


def show_dns_zones(app: "Pooler"):
    return columns("sqi", "zonename", "serial", "count"), []


SHOWS: dict[str, Callable] = {
    "pools": show_pools, "stats": show_stats, "stats_totals": show_stats_totals,
    "stats_averages": show_stats_averages, "totals": show_totals, "clients": show_clients,
    "servers": show_servers, "sockets": show_sockets, "active_sockets": show_active_sockets,
    "databases": show_databases, "users": show_users, "config": show_config, "lists": show_lists,
    "version": show_version, "state": show_state, "fds": show_fds, "mem": show_mem, "peers": show_peers,
    "peer_pools": show_peer_pools, "dns_hosts": show_dns_hosts, "dns_zones": show_dns_zones,
}

COMMANDS: dict[str, Callable] = {
    "show": show_command, "select": show_command, "pause": pause_command, "resume": resume_command,
    "kill": kill_command, "kill_client": kill_client_command, "reconnect": reconnect_command,
    "wait_close": wait_close_command, "reload": reload_command, "shutdown": shutdown_command,
    "suspend": suspend_command, "disable": disable_command, "enable": enable_command,
}
