"""The life of a client connection: startup packet, authentication, then relaying to whichever server it holds.

Once logged in, `received` (asyncio's data_received) is the hot path: it reads only the 5-byte message
headers, to count the ReadyForQuery messages the server will owe (one per Query, Sync and FunctionCall), to
catch Terminate, and to refuse what is not a frontend message; the bytes go to the server exactly as they came.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from . import identity, protocol, sockopts
from .access import OWN_CONSOLE_USER, is_own_user, peer_pid, peer_uid, remote_refusal
from .auth import AuthFailed, ClientAuth
from .auth_query import LookupFailed
from .prepare import EXTENDED, FRONTEND_TYPES, Tracker, client_data
from .config import RESERVED_DATABASE
from .login import RESTING, Login, LoginField
from .logsink import info, info_enabled
from .counters import next_socket_id
from .server import Server
from .session import param_key, shared_params

if TYPE_CHECKING:
    from .app import Pooler
    from .objects import Pool

log = logging.getLogger("maitred.client")

_unpack_int = struct.Struct("!I").unpack_from
_Q, _S, _F, _X = 0x51, 0x53, 0x46, 0x58

STARTUP, AUTH, LOGIN_WAIT, ACTIVE, CLOSED = range(5)
_TRUE = ("t", "tr", "tru", "true", "y", "ye", "yes", "on", "1")
_FALSE = ("f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0")

# Above this many bytes queued while the client waits for a server, stop reading from it.
PENDING_LIMIT = 256 * 1024

_PAUSE = {"waiting": 1, "server": 2, "auth_query": 4, "suspend": 8}
_NONE: Mapping[str, str] = MappingProxyType({})


def _ip4(host: str) -> int:
    """A dotted IPv4 address as one integer, read digit by digit: compiled, C arithmetic on the characters
    instead of inet_aton and struct calls, once per client."""
    address = part = 0
    for char in host:
        if char == ".":
            address = address << 8 | part
            part = 0
        else:
            part = part * 10 + (ord(char) - 48)
    return address << 8 | part


def auth_failure(method: str) -> str:
    """What PgBouncer tells a client whose credentials are wrong: the detail stays in the log."""
    return "SASL authentication failed" if method == "scram-sha-256" else "password authentication failed"


GREETINGS_KEPT = 1000


def _welcome(tracked: dict[str, str], welcome: dict[str, str], asked: dict[str, str], options: Mapping[str, str],
             ) -> tuple[dict[str, str], dict[str, str], tuple, bytes]:
    """What a client that asked for `asked` and `options` is told at login, and keeps: (welcome, its tracked
    parameters with the server's values where it set none, their param_key, the ParameterStatus messages).
    The same for every client that asks the same, so a pool keeps it (Pool.greetings). A tracked parameter
    the server does not report stays unset unless the client asks for it, so no server is set to an empty value."""
    reported = dict(welcome)
    params = dict(asked)
    for name in tracked.values():
        if name in params:
            reported[name] = params[name]
        elif name in welcome:
            params[name] = welcome[name]
    for name, value in options.items():
        if name in reported:         # a reported setting (search_path on PostgreSQL 18)
            reported[name] = value
    params = shared_params(params)
    return (welcome, params, param_key(tracked, params, options),
            b"".join([protocol.parameter_status(k, v) for k, v in reported.items()]))


class Client:
    """One connection from an application to the pooler. An idle client is mostly its transport: it keeps only
    slots, holds no buffer or dict of its own (empty ones are shared constants), and what every client of a
    pool shares (max_packet_size, the greeting) stays on the pool."""

    __slots__ = ("app", "transport", "state", "pool", "server", "user", "params", "options",
                 "replication", "param_key", "login",
                 "pending", "pending_bytes", "pending_syncs", "requested", "skip", "partial",
                 "wait_started", "connected_at", "idle_since", "active", "paused_by", "write_blocked",
                 "unsynced", "tracker", "cancel_key", "counted", "id", "peer_ip4", "peer_port")

    # Kept only until login (login.py): a logged-in client reads them as b"", None and False.
    startup = LoginField("startup")
    auth = LoginField("auth")
    queried_secret = LoginField("queried_secret")
    handshaking = LoginField("handshaking")
    tls = LoginField("tls")                         # it made a TLS handshake (tls_info reads it during the login)
    own_user = LoginField("own_user")
    unix = LoginField("unix")
    wait_notified = LoginField("wait_notified")     # told once it is queued (query_wait_notify): few ever are

    def __init__(self, app: "Pooler", unix: bool = False):
        self.app = app
        self.login: Login | None = Login(unix)  # dropped once logged in
        self.id = next_socket_id()              # SHOW CLIENTS' id, KILL_CLIENT's argument
        self.transport: asyncio.Transport | None = None
        self.state = STARTUP
        self.pool: Pool | None = None
        self.server: Server | None = None      # the server bytes go to right now
        self.user = ""
        self.params: dict[str, str] = {}        # the tracked session parameters (shared_params once logged in)
        self.options: Mapping[str, str] = _NONE  # other settings from its `options`; never mutated after login
        # A replication connection: what its dedicated server's StartupMessage adds (empty for any other).
        self.replication: Mapping[str, str] = _NONE
        self.param_key: tuple | None = None     # param_key(params), for the hand-off's quick comparison
        self.pending: list[bytes] | tuple = ()  # bytes waiting for a server (a list once there are any)
        self.pending_bytes = 0
        self.pending_syncs = 0
        self.requested = False                 # waiting for, or being handed, a server
        self.skip = 0
        self.partial = b""
        self.wait_started = 0.0
        self.connected_at = app.arrival()
        self.idle_since = self.connected_at
        self.active = False
        self.paused_by = 0                      # why reading is paused: bits of _PAUSE
        self.write_blocked = False              # its socket's send buffer is full (pause_writing)
        # Extended-protocol messages went to the server with no Sync after them: until one follows, the server
        # may hold an implicit transaction, or ignore everything up to the next Sync after an error.
        self.unsynced = False
        self.tracker: Tracker | None = None     # set once the client uses the extended protocol (see prepare)
        self.cancel_key = 0                     # BackendKeyData as one int: pid << 32 | key
        self.counted = False                    # in app.db_clients and app.user_clients
        self.peer_ip4 = 0                       # an IPv4 peer's address and port, once a log line asked (peer)
        self.peer_port = 0

    @property
    def dbname(self) -> str:
        """Its pool's name once it has a pool, else the database it asked for, kept in its Login (a compiled
        property: every logout reads it)."""
        pool = self.pool
        if pool is not None:
            return pool.name
        login = self.login
        return (RESTING if login is None else login).dbname

    @dbname.setter
    def dbname(self, value: str) -> None:
        login = self.login
        if login is None:
            login = self.login = Login()
        login.dbname = value

    def eof_received(self):
        return None

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        app = self.app
        app.client_connected(self)
        size = app.rules.socket_buffer
        if size:
            sockopts.tune_client(transport, size)
        if app.suspended:       # SUSPEND: a new connection waits, unread, until RESUME
            self.pause_reading("suspend")

    def connection_lost(self, exc) -> None:
        self._gone("client unexpected eof")      # PgBouncer's words, for a close without Terminate

    def received(self, data: bytes) -> None:
        """What asyncio calls data_received (see __call__)."""
        if self.state != ACTIVE:
            self._login_data(data)
            return
        self.active = True
        if self.tracker is not None:
            self._tracked_data(data)
            return
        # Scan the message headers: count the ReadyForQuery messages this owes, find Terminate, refuse junk.
        partial = self.partial
        sent = 0            # how much of `scan` the server has already
        if partial:
            scan = partial + data
            self.partial = b""
            if partial[0] != _X:       # the start of a Terminate is never sent
                sent = len(partial)
        else:
            scan = data
        pos = self.skip
        end = len(scan)
        syncs = 0
        terminate = -1
        begun = -1          # where a Terminate cut short starts
        unsynced = self.unsynced
        pool = self.pool
        track = pool.tracks_statements and not self.replication
        max_length = pool.max_length
        while pos < end:
            kind = scan[pos]
            if track and EXTENDED[kind]:
                self._start_tracking(scan, sent, pos, syncs)
                return
            if end - pos < 5:
                # A header cut short: its start goes on now, but not junk's, nor a Terminate's (the server would
                # wait for the rest, and could serve no one after).
                if not FRONTEND_TYPES[kind]:
                    self.protocol_violation(f"invalid frontend message type {kind}")
                    return
                if kind == _X:
                    begun = pos
                self.partial = scan[pos:]
                pos = end
                break
            length = _unpack_int(scan, pos + 1)[0]
            if kind == _Q:
                if pool.pqexec_disallowed:
                    self.refuse_pqexec()
                    return
                syncs += 1
            elif kind == _S:
                syncs += 1
                unsynced = False
            elif kind == _F:
                syncs += 1
            elif EXTENDED[kind]:
                unsynced = True
            elif kind == _X:
                terminate = pos
                break
            elif not FRONTEND_TYPES[kind]:
                self.protocol_violation(f"invalid frontend message type {kind}")
                return
            if length < 4 or length > max_length:
                self.protocol_violation(f"invalid message length {length}")
                return
            pos += 1 + length
        self.skip = pos - end
        self.unsynced = unsynced
        if terminate >= 0:
            # Forward what came before Terminate; the server connection stays with the pooler.
            data = scan[sent:terminate]
            self.skip = 0
        elif begun >= 0:
            data = scan[sent:begun]
        self._forward(data, syncs)
        if terminate >= 0:
            self._gone("client close request")

    # uvloop keeps `protocol.data_received` for every connection: a bound method would cost each client 64 bytes,
    # the client itself, called as data_received, costs nothing.
    def __call__(self, data: bytes) -> None:
        self.received(data)

    @property
    def data_received(self) -> "Client":
        return self

    def _forward(self, data: bytes, syncs: int) -> None:
        """Send bytes as they are to the server, or queue them and ask the pool for one."""
        server = self.server
        if data:
            if server is not None:
                if syncs:
                    if not server.expected:
                        server.start_query(self.app.now())
                    server.expected += syncs
                server.transport.write(data)
            else:
                if self.pending:
                    self.pending.append(data)
                else:
                    self.pending = [data]
                self.pending_bytes += len(data)
                self.pending_syncs += syncs
                if not self.requested:
                    self.requested = True
                    self.pool.acquire(self)
                if self.pending_bytes > PENDING_LIMIT:
                    self.pause_reading("waiting")
            self.pool.stats.bytes_received += len(data)

    def _start_tracking(self, scan: bytes, forwarded: int, pos: int, syncs: int) -> None:
        """The first extended-protocol message: what came before goes as it is, the rest is tracked."""
        self._forward(scan[forwarded:pos], syncs)
        self.skip = 0
        self.partial = b""
        self.tracker = Tracker()
        server = self.server
        if server is not None and server.partial:
            server.forwarded_partial = len(server.partial)
        self._tracked_data(scan[pos:])

    def _tracked_data(self, data: bytes) -> None:
        server = self.server
        try:
            if server is not None:
                if client_data(self, server, data):
                    self._gone("client close request")
                return
            tracker = self.tracker
            held = tracker.held + data
            if held and protocol.TERMINATE.startswith(held):      # a goodbye, whole or begun, needs no server
                tracker.held = held
                if held == protocol.TERMINATE:
                    self._gone("client close request")
                return
            tracker.held = held
            if not self.requested:
                self.requested = True
                self.pool.acquire(self)
            if len(tracker.held) > PENDING_LIMIT:
                self.pause_reading("waiting")
        except protocol.ProtocolError as exc:
            self.protocol_violation(str(exc))

    def at_boundary(self) -> bool:
        """No half-sent message is on its way to the server, so the server may go to someone else."""
        if self.tracker is not None:
            return not self.tracker.queue and not self.unsynced     # held bytes never reached the server
        return self.skip == 0 and (not self.partial or self.partial[0] == _X) and not self.unsynced

    # -- login -----------------------------------------------------------------------------------------

    # The login path reads and writes its fields on `self.login` itself: the client's LoginField descriptors are
    # for everyone else, and a descriptor call per access is a sizeable share of a connection's setup.

    def _login_data(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        login = self.login
        login.startup += data
        try:
            while login.startup and self.state in (STARTUP, AUTH):
                if self.state == STARTUP:
                    if not self._startup_packet():
                        return
                else:
                    if not self._password_message():
                        return
        except protocol.ProtocolError as exc:
            self.protocol_violation(str(exc))
            return
        # Sent before ReadyForQuery, while the login waits for a server: kept for finish_login, within bounds.
        if self.state == LOGIN_WAIT and len(login.startup) > PENDING_LIMIT:
            self.pause_reading("waiting")

    def _startup_packet(self) -> bool:
        login = self.login
        buf = login.startup
        if len(buf) < 8:
            return False
        length, code = struct.unpack_from("!II", buf)
        if length < 8 or length > protocol.MAX_STARTUP_PACKET:
            raise protocol.ProtocolError(f"invalid length of startup packet: {length}")
        if len(buf) < length:
            return False
        body, login.startup = buf[8:length], buf[length:]
        if code in (protocol.SSL_REQUEST_CODE, protocol.GSSENC_REQUEST_CODE) and length == 8:
            if code == protocol.SSL_REQUEST_CODE and self._ssl_request():
                return False
            self.transport.write(b"N")
            return True
        if code == protocol.CANCEL_REQUEST_CODE and length == 16:
            self.app.cancel(*struct.unpack("!II", body))
            self.close()
            return False
        if code >> 16 != 3:
            raise protocol.ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xffff}: "
                                         "server supports 3.0")
        if self.app.tls.client_required and not login.unix and \
                self.transport.get_extra_info("ssl_object") is None:
            self.fatal(protocol.PROTOCOL_VIOLATION, "SSL required")      # PgBouncer's words
            return False
        self._start(protocol.startup_params(body))
        return True

    def _ssl_request(self) -> bool:
        """SSLRequest with client TLS on, over TCP: answer S and let the TLS layer take the socket."""
        context = self.app.tls.client
        if context is None or self.unix:
            return False
        if self.transport.get_extra_info("ssl_object") is not None:
            raise protocol.ProtocolError("SSL request inside SSL")
        if self.startup:    # the handshake must not start on bytes that came in plain text (CVE-2021-23214)
            raise protocol.ProtocolError("received unencrypted data after SSL request")
        self.handshaking = True
        self.transport.pause_reading()      # until start_tls, nothing may reach this protocol unencrypted
        self.transport.write(b"S")
        self.app.spawn(self._tls_accept(context))
        return True

    async def _tls_accept(self, context) -> None:
        try:
            transport = await self.app.loop.start_tls(self.transport, self, context, server_side=True)
        except Exception as exc:     # no certificate or an untrusted one, no common version, the client left
            log.warning("%s TLS handshake failed: %s", self.describe(), exc)
            self.close()
            return
        self.handshaking = False
        self.tls = True
        if self.closed or transport.is_closing():     # closed by the pooler (login timeout, shutdown) meanwhile
            transport.close()
            self.close()
            return
        self.transport = transport

    def _start(self, params: dict[str, str]) -> None:
        app = self.app
        login = self.login
        user = self.user = sys.intern(params.pop("user", ""))     # shared by every client of that user
        if not user:
            self.fatal(protocol.PROTOCOL_VIOLATION, "no username supplied")
            return
        dbname = login.dbname = sys.intern(params.pop("database", "") or user)
        rules = app.rules
        remote_access = rules.remote_access
        refused = remote_access != "all" and remote_refusal(
            remote_access, self.transport.get_extra_info("peername"), user, dbname, rules.console_users)
        if refused:
            self.fatal(protocol.INVALID_AUTHORIZATION, refused)
            return
        if rules.add_host:
            params["application_name"] = self._add_host(params.get("application_name"))
        replication = params.pop("replication", "")
        if replication.lower() in _TRUE or replication == "database":
            # Relayed as it is to a server of its own: its parameters go there unchanged.
            self.replication = dict(params, replication=replication)
        elif replication and replication.lower() not in _FALSE:
            self.fatal(protocol.PROTOCOL_VIOLATION, f'invalid value for parameter "replication": "{replication}"')
            return
        elif not self._start_params(params):
            return
        if len(app.clients) > rules.max_client_conn:
            self.fatal(protocol.PROTOCOL_VIOLATION, "no more connections allowed (max_client_conn)")
            return
        if app.shutting_down and dbname != RESERVED_DATABASE:    # only the console, as PgBouncer
            self.fatal(protocol.CANNOT_CONNECT_NOW, "pooler is shutting down")
            return
        if login.unix and user == OWN_CONSOLE_USER and \
                is_own_user(peer_uid(self.transport.get_extra_info("socket")), os.getuid(), user, dbname):
            login.own_user = True
            app.log_event(log, "pgbouncer access from unix socket", self)
            self._authenticated()
            return
        # An unknown database is told only to a client that logs in (_authenticated); until then it gets the
        # same exchange as any other, and a user unknown to the auth_file a mock one (PgBouncer's fake database).
        secret = app.userlist.get(user)
        if secret is None and app.auth_query.enabled(dbname):
            self.state = LOGIN_WAIT            # nothing is read from the client until PostgreSQL answers
            self.pause_reading("auth_query")
            app.spawn(self._query_secret())
            return
        self._check_secret(secret)

    def _add_host(self, application_name: str | None) -> str:
        """application_name_add_host: PgBouncer's `<name> - <address>` (its pga_details; `app` when the client
        gave no name), so that the server's pg_stat_activity says where each client connects from."""
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            address = f"[{peer[0]}]:{peer[1]}" if len(peer) == 4 else f"{peer[0]}:{peer[1]}"
        else:
            pid = peer_pid(self.transport.get_extra_info("socket"))
            port = self.app.config.get("listen_port")
            address = f"unix({pid}@{socket.gethostname()}):{port}" if pid else f"unix:{port}"
        return f"{'app' if application_name is None else application_name} - {address}"

    async def _query_secret(self) -> None:
        """The secret of a user missing from the auth_file, from PostgreSQL; then the login goes on."""
        try:
            secret = await self.app.auth_query.secret(self.dbname, self.user)
        except LookupFailed as exc:
            self.fatal(exc.sqlstate, str(exc))
            return
        if self.closed:
            return
        self.queried_secret = secret
        self.resume_reading("auth_query")
        self._check_secret(secret, queried=True)
        if self.startup and self.state == AUTH:      # what the client sent meanwhile
            self._login_data(b"")

    def _check_secret(self, secret: str | None, queried: bool = False) -> None:
        method = self.app.rules.auth_type
        rule = None
        if method == "hba":      # else the method is auth_type's, without a call (identity.choose says the same)
            method, rule = identity.choose(self)
        if method is None:
            self.fatal(protocol.PROTOCOL_VIOLATION, identity.LOGIN_REJECTED)
            return
        if queried and secret is None:      # PgBouncer has no mock login after auth_query, and says so
            self.app.log_event(log, "login failed: db=%s", self, self.dbname)
            self.fatal(protocol.PROTOCOL_VIOLATION, "no such user")
            return
        known = secret is not None or not self.app.rules.has_auth_file
        if method == "trust":
            if not known:
                log.info("%s no such user: %s", self.describe(), self.user)
                self.fatal(protocol.PROTOCOL_VIOLATION, '"trust" authentication failed')
                return
            self._authenticated()
            return
        if method in ("cert", "peer"):
            refusal = identity.refusal(method, rule, self, known)
            if refusal:
                self.app.log_event(log, f"login failed: {refusal}", self)
                self.fatal(protocol.PROTOCOL_VIOLATION, identity.FAILED[method])
                return
            self._authenticated()
            return
        try:
            self.auth = ClientAuth(method, self.user, secret, self.app.rules.scram_iterations)
        except AuthFailed as exc:
            self.app.log_event(log, f"login failed: {exc}", self)
            self.fatal(protocol.PROTOCOL_VIOLATION, auth_failure(method))
            return
        self.state = AUTH
        self.transport.write(self.auth.start())

    def _start_params(self, params: dict[str, str]) -> bool:
        """Keep the tracked parameters and the `options` settings; refuse what PgBouncer refuses.

        As in PgBouncer, each `-c name=value` of `options` counts as a startup parameter of that name, and
        an ignored name, or `options` in ignore_startup_parameters, ignores it. Unlike PgBouncer, any other
        setting is kept rather than refused: the pooler applies it on every server the client lands on."""
        ignored = self.app.rules.ignored
        given = params.pop("options", "")
        try:
            settings = protocol.parse_options(given) if given else ()
        except ValueError as exc:
            self.fatal(protocol.PROTOCOL_VIOLATION, str(exc))
            return False
        names = self.app.tracked
        tracked = self.params
        options = {}      # no dict kept when there are none: most clients set nothing
        for name, value in settings:     # before the other parameters, which win over them, as in PostgreSQL
            canonical = names.get(name.lower())
            if canonical is not None:
                tracked[canonical] = value
            elif name.lower() not in ignored and "options" not in ignored:
                options[name.lower()] = value
        if options:
            self.options = options
        for name, value in params.items():
            canonical = names.get(name.lower())
            if canonical is not None:
                tracked[canonical] = value
            elif name.lower() not in ignored:
                self.fatal(protocol.PROTOCOL_VIOLATION, f"unsupported startup parameter: {name}")
                return False
        return True

    def _password_message(self) -> bool:
        login = self.login
        buf = login.startup
        messages, used = protocol.split_messages(buf, 65536)
        if not messages:
            if len(buf) >= 5 and buf[0] != 0x70:
                raise protocol.ProtocolError(f"expected password response, got message type {buf[0]}")
            return False
        kind, body = messages[0]
        login.startup = buf[5 + len(body):]
        if kind != 0x70:
            raise protocol.ProtocolError(f"expected password response, got message type {kind}")
        auth = login.auth
        try:
            reply, done = auth.feed(body)
        except AuthFailed as exc:
            self.app.log_event(log, f"login failed: {exc}", self)
            self.fatal(protocol.PROTOCOL_VIOLATION, auth_failure(auth.method))
            return False
        if reply:
            self.transport.write(reply)
        if done:
            login.auth = None
            self._authenticated(auth.scram_keys)
        return True

    def _authenticated(self, scram_keys: tuple[bytes, bytes] | None = None) -> None:
        app = self.app
        login = self.login
        dbname = login.dbname
        console = dbname == RESERVED_DATABASE
        db = None if console else app.config.database_for(dbname)
        if not console and db is None:
            self.fatal(protocol.PROTOCOL_VIOLATION, f"no such database: {dbname}")
            return
        limits = app.db_limits.get(dbname)
        if limits is not None and limits.disabled:
            self.fatal(protocol.PROTOCOL_VIOLATION, f'database "{dbname}" is disabled')
            return
        if db is not None:
            exceeded = app.admit(self, db, dbname)
            if exceeded:
                self.fatal(protocol.PROTOCOL_VIOLATION, f"client connections exceeded ({exceeded})")
                return
        if console:
            self.transport.write(protocol.AUTH_OK)
            from .admin import start      # here, not above: the console imports this module
            start(self)
            return
        pool = app.get_pool(dbname, self.user, db)
        welcome = pool.welcome
        failing = pool.login_failing()
        if welcome is None or self.replication or failing:
            self.transport.write(protocol.AUTH_OK)
            welcome = None      # else AuthenticationOk goes out with the welcome below, in one write
        if failing:      # PgBouncer's fast fail, with the error PostgreSQL gave last
            sqlstate, message = pool.login_error
            self.fatal(sqlstate, f"server login has been failing, cached error: {message} (server_login_retry)")
            pool.probe()
            return
        self.pool = pool
        if scram_keys is not None and pool.server_user == self.user:
            pool.scram_keys = scram_keys        # the server login may need them (auth.ServerLogin)
        queried = login.queried_secret
        if queried and pool.db.user is None:     # auth_query's secret logs in to the server too
            pool.server_password = pool.queried_secret = queried
        pool.client_count += 1
        pool.stats.client_logins += 1
        if self.replication:
            # Never pooled: a walsender's state (a slot in use, a running backup) must not reach anyone else.
            self.state = LOGIN_WAIT
            Server(pool, dedicated=self).start()
            return
        if welcome is not None:
            self.finish_login(welcome, protocol.AUTH_OK)
            return
        # The first client of a pool waits for a server to learn what to tell it (server_version, ...).
        self.state = LOGIN_WAIT
        self.requested = True
        pool.acquire(self)

    def finish_login(self, welcome: dict[str, str], greeting: bytes = b"") -> None:
        """Tell the client its parameters, its cancel key and that it is ready, after `greeting` (AuthenticationOk
        when it has not gone out yet), in one write."""
        self.requested = False
        greetings = self.pool.greetings
        tracked = self.app.tracked
        asked = param_key(tracked, self.params, self.options)    # None where the client set nothing
        known = greetings.get(asked)
        if known is None or known[0] is not welcome:
            known = greetings[asked] = _welcome(tracked, welcome, self.params, self.options)
            if len(greetings) > GREETINGS_KEPT:      # every client with an application_name of its own
                greetings.clear()
        _, self.params, self.param_key, parameters = known
        self.cancel_key = self.app.register_cancel_key(self)
        self.transport.write(b"".join((
            greeting, parameters, protocol.backend_key_data(self.cancel_key),
            self.app.rules.notice, protocol.READY_FOR_QUERY)))
        self.state = ACTIVE
        self.log_login()       # while the client still has its Login (tls_info)
        login, self.login = self.login, None
        # What the client sent without waiting for ReadyForQuery (after its startup packet or password, or while
        # the login waited for a server) is ordinary traffic.
        leftover = login.startup if login is not None else b""
        if leftover:
            login.startup = b""
            self.resume_reading("waiting")
            self.received(leftover)

    @property
    def closed(self) -> bool:
        """Gone: everything it held is released (_gone), and nothing it sends is read any more."""
        return self.state == CLOSED

    @property
    def login_pending(self) -> bool:
        """Waiting for a server only to learn the welcome parameters: of the clients a pool queues, only the
        first of a pool is not logged in yet (replication and auth_query waits are never in its queue)."""
        return self.state == LOGIN_WAIT

    # -- servers ---------------------------------------------------------------------------------------

    def replication_ready(self, server: "Server") -> None:
        """The dedicated server of a replication connection logged in: the two stay linked until one goes."""
        if self.closed:
            server.close("replication client left")
            return
        server.client = self
        self.server = server
        self.finish_login(dict(server.params))

    def attach(self, server: "Server", now: float = 0.0) -> None:
        """The server is ours: send what waited for it (`now`: the hand-off's clock reading, if taken)."""
        self.server = server
        self.requested = False
        pending = self.pending
        if pending:
            if self.pending_syncs and not server.expected:
                server.start_query(now or self.app.now())
            server.expected += self.pending_syncs
            server.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
            self.pending = ()
            self.pending_bytes = self.pending_syncs = 0
        if self.tracker is not None and self.tracker.held:
            self._tracked_data(b"")
        if self.paused_by:
            self.resume_reading("waiting")
        if self.write_blocked:
            server.pause_reading()

    def server_unavailable(self, reason: str, sqlstate: str = protocol.CONNECTION_FAILURE) -> None:
        """No server can be had (PostgreSQL refused the login, the pooler shuts down): say so instead of hanging."""
        self.requested = False
        self.fatal(sqlstate, reason)

    def server_lost(self, server: "Server", reason: str) -> None:
        if self.server is server:
            self.server = None
        self.requested = False
        self.fatal(protocol.PROTOCOL_VIOLATION, reason)     # PgBouncer's disconnect_client: 08P01

    def statement_mode_violation(self, server: "Server") -> None:
        server.client = None
        self.server = None
        server.close("transaction blocks not allowed in statement pooling mode")
        self.fatal(protocol.PROTOCOL_VIOLATION, "transaction blocks not allowed in statement pooling mode")

    def between_transactions(self) -> bool:
        """Logged in, and closing now would cut no transaction and lose no query in flight."""
        if self.state != ACTIVE or self.requested or self.pending:
            return False
        server = self.server
        return server is None or (not server.expected and server.status == protocol.IDLE
                                  and self.at_boundary())

    def drain_if_idle(self) -> None:
        """While the pooler drains, a client is let go as soon as it is between transactions."""
        if not self.closed and self.between_transactions():
            self.fatal(protocol.ADMIN_SHUTDOWN, "server shutting down")

    # -- back-pressure ---------------------------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        """Stop reading from the client for `reason` ("waiting", "server", "auth_query") until it resumes."""
        if not self.paused_by and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused_by |= _PAUSE[reason]

    def resume_reading(self, reason: str) -> None:
        bit = _PAUSE[reason]
        if self.paused_by & bit:
            self.paused_by &= ~bit
            if not self.paused_by and not self.closed:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.server is not None:
            self.server.pause_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.server is not None:
            self.server.resume_reading()

    # -- the end ---------------------------------------------------------------------------------------

    def fatal(self, sqlstate: str, text: str) -> None:
        """Tell the client why, then close it."""
        if self.closed:
            return
        self.log_closing(text)
        if self.app.config.get("log_pooler_errors"):
            log.warning("%s pooler error: %s", self.describe(), text)
        if self.transport is not None and not self.transport.is_closing() and not self.handshaking:
            self.transport.write(protocol.fatal(sqlstate, text))
        self.close()

    def refuse_pqexec(self) -> None:
        """disable_pqexec: a simple query ends the client, with PgBouncer's error and log line. Its server goes
        too: what came before the query in the same read never reached it."""
        log.error("%s client used 'Q' packet type", self.describe())
        self.protocol_violation("PQexec disallowed")

    def protocol_violation(self, text: str) -> None:
        server = self.server
        if server is not None:
            # Part of this chunk may never reach the server: its state is unknown, so it cannot be reused.
            self.server = None
            server.client = None
            server.close("client protocol violation")
        self.fatal(protocol.PROTOCOL_VIOLATION, text)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._gone()

    def _gone(self, reason: str | None = None) -> None:
        """Release everything this client held, exactly once; `reason`, when the client chose to go, is logged."""
        if self.closed:
            return
        if reason is not None:
            self.log_closing(reason)
        self.state = CLOSED
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()      # after Terminate, as PostgreSQL does: a client may wait for the close
        pool = self.pool
        self.app.client_disconnected(self)
        if pool is None:
            return
        pool.client_count -= 1
        if self.requested:
            pool.cancel_wait(self)
        server = self.server
        self.server = None
        if server is None or server.closed:
            return
        if server.dedicated is not None:
            server.client = None
            server.close("replication client left")
        elif server.expected or server.status != protocol.IDLE or not self.at_boundary():
            # Mid-transaction or mid-result: its transaction, locks and state must not reach anyone else.
            server.client = None
            server.close("client disconnect while server was not ready")
        elif not pool.transactional or self.app.rules.reset_always:
            server.client = None
            server.reset(server.detach)
        else:
            server.detach()

    def describe(self) -> str:
        """PgBouncer's log prefix for a client: `C-0x…: db/user@host:port`, in one string made from C fields
        once the peer is known (a line per login and per logout)."""
        pool = self.pool
        dbname = (pool.name if pool is not None else self.dbname) or "(nodb)"
        user = self.user or "(nouser)"
        address = id(self)
        if not self.peer_port:
            other = self._ask_peer()
            if other is not None:
                return f"C-0x{address:x}: {dbname}/{user}@{other}"
        ip = self.peer_ip4      # the whole prefix in one string, from the C fields
        return (f"C-0x{address:x}: {dbname}/{user}@"
                f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}:{self.peer_port}")

    def log_login(self) -> None:
        """log_connections: PgBouncer's `login attempt: db=… user=… tls=…` line (a line per connection: read
        and made here, in C calls when compiled, not through a Pooler method)."""
        if self.app.log_connections and info_enabled(log):
            info(log, f"{self.describe()} login attempt: db={self.pool.name} user={self.user} tls={self.tls_info()}")

    def log_closing(self, reason: str) -> None:
        """log_disconnections: PgBouncer's `closing because: REASON (age=Ns)` line (a line per connection)."""
        if self.app.log_disconnections and info_enabled(log):
            age = int(self.app.now() - self.connected_at)      # %d's truncation
            info(log, f"{self.describe()} closing because: {reason} (age={age}s)")

    def tls_info(self) -> str:
        """`no`, or the protocol and cipher, as PgBouncer's login line has them."""
        login = self.login
        if login is not None and not login.tls:     # while it logs in, the client knows whether it made a handshake
            return "no"
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        if ssl_object is None:
            return "no"
        return f"{ssl_object.version()}/{ssl_object.cipher()[0]}"

    def peer(self) -> str:
        """host:port of the client, asked of the socket when a log line first needs it. An IPv4 peer is then kept
        in two C integers of the compiled Client, which cost an idle client nothing (its object's size class stays
        the same), for the next line about it: a line per login and per logout."""
        if not self.peer_port:
            other = self._ask_peer()
            if other is not None:
                return other
        ip = self.peer_ip4
        return f"{ip >> 24}.{ip >> 16 & 255}.{ip >> 8 & 255}.{ip & 255}:{self.peer_port}"

    def _ask_peer(self) -> str | None:
        """Ask the socket for the peer: an IPv4 one is kept in peer_ip4 and peer_port (None is returned); any other
        is returned as its text, `unix` or `host:port`."""
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        if not isinstance(peer, tuple):
            return "unix"
        if len(peer) == 2 and peer[1]:      # (host, port) of IPv4; IPv6 has four
            self.peer_ip4 = _ip4(peer[0])
            self.peer_port = peer[1]
            return None
        return f"{peer[0]}:{peer[1]}"
