"""The life of a server connection: connect, log in, serve clients in turn, run the pooler's own queries.

While a client is linked, `data_received` is the hot path: bytes go to the client as they came, and only
message headers are read, to count ReadyForQuery messages and to see ParameterStatus changes.
"""
from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
import struct
from typing import TYPE_CHECKING, Callable

from . import protocol, sockopts
from .auth import AuthFailed, ServerLogin
from .hosts import Target, choice_for
from .counters import WAIT_BUCKETS, next_socket_id
from .prepare import ServerCache, server_data, stale_plan
from .session import options_statements, param_key, set_statement, shared_params
from .tls import SSL_REQUEST

if TYPE_CHECKING:
    from .client import Client
    from .objects import Pool

log = logging.getLogger("maitred.server")


def _length(data: bytes, pos: int) -> int:
    """The Int32 length of the message whose type byte is at `pos`; the caller knows its 4 bytes are there.
    Compiled (server.pxd), it reads the bytes' own buffer and makes no object; `high` is wide enough there
    that the shift cannot overflow."""
    high = data[pos + 1]
    return high << 24 | data[pos + 2] << 16 | data[pos + 3] << 8 | data[pos + 4]


_Z, _S, _E, _IDLE = 0x5A, 0x53, 0x45, protocol.IDLE
_READ = bytearray(256)      # the message types the relay reads, not only forwards
for _t in (_Z, _S, _E):
    _READ[_t] = 1


class Server:
    """One connection from the pooler to PostgreSQL."""

    __slots__ = ("pool", "app", "transport", "client", "dedicated", "ready", "closed", "close_needed", "params",
                 "options", "param_key", "backend_pid", "backend_key", "expected", "status", "z_count", "z_seen",
                 "busy_since", "skip", "partial", "forwarded_partial", "cache", "internal", "internal_error",
                 "buffer", "login", "connected_at", "idle_since", "last_used", "active",
                 "query_started", "xact_started", "reading_paused", "address", "tls_requested", "cancels", "being_canceled",
                 "login_timer", "id", "target", "__weakref__")

    def __init__(self, pool: "Pool", dedicated: "Client | None" = None):
        self.pool = pool
        self.id = next_socket_id()      # SHOW SERVERS' id
        # A replication client this server was opened for: outside the pool's count, never reused, and in
        # session mode whatever the pool_mode (PgBouncer 1.23+ does the same).
        self.dedicated = dedicated
        self.app = pool.app
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.ready = False            # logged in
        self.closed = False
        self.close_needed = False     # retire at the next release (RECONNECT, config change)
        self.params: dict[str, str] = {}
        self.param_key: tuple = ()
        self.options: dict[str, str] = {}   # settings the pooler applied for a client's `options`; never mutated
        self.backend_pid = 0
        self.backend_key = 0
        self.expected = 0             # ReadyForQuery messages still owed to the linked client
        self.status = _IDLE           # the last ReadyForQuery status byte
        self.z_count = 0              # ReadyForQuery messages seen; the janitor measures progress with it
        self.z_seen = -1              # z_count when the janitor last saw this server busy
        self.busy_since = 0.0
        self.skip = 0                 # bytes of the current message not yet seen
        self.partial = b""            # a message start too short to read (header, or a Z/S message)
        self.forwarded_partial = 0    # how much of `partial` the fast path already sent on
        self.cache = ServerCache(self.app.config.get("max_prepared_statements"))
        self.internal: Callable[[str | None], None] | None = None
        self.internal_error: str | None = None
        self.buffer = b""             # slow-path input (login, internal queries)
        self.login: ServerLogin | None = None
        self.connected_at = self.app.now()
        self.idle_since = self.connected_at
        self.last_used = self.connected_at
        self.active = False           # saw traffic since the janitor last looked
        self.query_started = 0.0      # when the oldest ReadyForQuery still owed was asked for
        self.xact_started = 0.0       # when the transaction (or lone statement) under way started
        self.reading_paused = False
        self.address = ""
        self.tls_requested = False    # SSLRequest sent; PostgreSQL's one-byte answer not read yet
        self.cancels = 0              # cancel requests sent to PostgreSQL for this server, not yet answered
        self.being_canceled = False   # released while a cancel was in flight: held out of the pool until it ends
        self.login_timer: asyncio.TimerHandle | None = None   # server_connect_timeout, connect and login together
        self.target: Target | None = None    # the entry of the database's host list it connects to

    def eof_received(self):
        return None

    # -- connecting and logging in ----------------------------------------------------------------------

    def start(self) -> None:
        timeout = self.app.config.get("server_connect_timeout")
        if timeout:     # as PgBouncer: the connection and the login must both be done in time
            self.login_timer = self.app.loop.call_later(timeout, self._login_timeout, timeout)
        self.app.spawn(self._connect())

    def _login_timeout(self, timeout: float) -> None:
        self.login_timer = None
        self._login_failed(f"connect timeout: {self.address or 'the server'} did not complete the login within "
                           f"server_connect_timeout ({timeout:g}s)", transient=True)

    async def _connect(self) -> None:
        db = self.pool.db
        app = self.app
        loop = asyncio.get_running_loop()
        timeout = app.config.get("server_connect_timeout") or None
        target = self.target = choice_for(app, db).pick(db.load_balance_hosts or "round-robin", app.now(),
                                                        app.config.get("server_login_retry"))
        try:
            if target.unix:
                path = f"{target.host or app.config.get('unix_socket_dir')}/.s.PGSQL.{target.port}"
                self.address = f"unix:{path}"
                coro = loop.create_unix_connection(lambda: self, path)
            else:
                self.address = f"{target.host}:{target.port}"
                coro = app.resolver.connect(lambda: self, target.host, target.port)
            await asyncio.wait_for(coro, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = "connect timeout" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            self._login_failed(f"cannot connect to server {self.address}: {reason}", transient=True)

    def connection_made(self, transport) -> None:
        if self.closed:
            transport.close()
            return
        self.transport = transport
        if self.address.startswith("unix:"):
            self.app.log_event(log, "new connection to server", self)
        else:
            sockopts.tune_server(transport, self.app.config)
            local = transport.get_extra_info("sockname")
            self.app.log_event(log, "new connection to server (from %s:%s)", self, *local[:2])
        if self.app.tls.server is not None and not self.address.startswith("unix:"):
            self.tls_requested = True     # the StartupMessage waits for the answer, and the handshake
            transport.write(SSL_REQUEST)
        else:
            self._send_startup()

    def _send_startup(self) -> None:
        db = self.pool.db
        params = {"user": self.pool.server_user, "database": db.dbname or self.pool.name}
        params.update(getattr(db, "startup_params", None) or {})
        if self.dedicated is not None:
            params.update(self.dedicated.replication)
        self.login = ServerLogin(self.pool.server_user, self.pool.server_password, self.pool.scram_keys)
        self.transport.write(protocol.startup_message(params))

    def _tls_answer(self) -> None:
        """S: the handshake, then the StartupMessage. N: plain text, unless server_tls_sslmode requires TLS."""
        self.tls_requested = False
        answer, self.buffer = self.buffer[:1], self.buffer[1:]
        if answer == b"S" and not self.buffer:
            self.app.spawn(self._tls_connect())
        elif answer == b"N" and not self.app.tls.server_required:
            self._send_startup()
        elif answer == b"N":
            self._login_failed("server refused SSL")      # PgBouncer's words
        else:
            self._login_failed("received unencrypted data after SSL response" if answer == b"S"
                               else f"invalid answer to SSLRequest from server: {answer!r}")

    async def _tls_connect(self) -> None:
        try:
            self.transport = await self.app.loop.start_tls(
                self.transport, self, self.app.tls.server, server_hostname=self.target.host,
                ssl_handshake_timeout=self.app.config.get("server_connect_timeout") or None)
        except Exception as exc:      # a certificate that does not verify, no common version, the server left
            self._login_failed(f"server TLS handshake failed: {exc}")
            return
        if self.closed or self.transport.is_closing():
            self.transport.close()
            self._login_failed("server closed the connection during the TLS handshake", transient=True)
        else:
            self._send_startup()

    def _login_data(self) -> None:
        if self.tls_requested:
            self._tls_answer()
            return
        messages, used = protocol.split_messages(self.buffer)
        self.buffer = self.buffer[used:]
        for kind, body in messages:
            if kind == 0x52:      # 'R' authentication request
                code = protocol.read_int(body)
                try:
                    reply = self.login.answer(code, body[4:])
                except (AuthFailed, ValueError) as exc:
                    self._login_failed(f"server login failed: {exc}")
                    return
                if reply:
                    self.transport.write(reply)
            elif kind == _S:
                name, value = protocol.parse_parameter_status(body)
                self.params[name] = value
                self.param_key = param_key(self.app.tracked, self.params, self.options)
            elif kind == 0x4B:    # 'K' BackendKeyData
                self.backend_pid, self.backend_key = struct.unpack("!II", body[:8])
            elif kind == _E:
                fields = protocol.parse_error_fields(body)
                sqlstate = fields.get("C", protocol.CONNECTION_FAILURE)
                self._login_failed(fields.get("M", "server login failed"), sqlstate,
                                   protocol.transient_login_error(sqlstate))
                return
            elif kind == _Z:
                self.login = None
                self.status = body[0]
                self.buffer = b""
                connect_query = self.pool.db.connect_query
                if connect_query and self.dedicated is None:
                    self.run_internal(connect_query, self._connect_query_done)
                else:
                    self._logged_in()
                return

    def _connect_query_done(self, error: str | None) -> None:
        """connect_query ran (still within server_connect_timeout); an error is logged and ignored, as in
        PgBouncer, but a server it left inside a transaction has been closed."""
        if error:
            log.warning("%s connect_query failed: %s", self.describe(), error)
        if not self.closed:
            self._logged_in()

    def _logged_in(self) -> None:
        self.ready = True
        choice_for(self.app, self.pool.db).succeeded(self.target)
        self._stop_login_timer()
        if self.dedicated is not None:
            self.dedicated.replication_ready(self)
        else:
            self.pool.server_ready(self)

    def _login_failed(self, reason: str, sqlstate: str = protocol.CONNECTION_FAILURE, transient: bool = False) -> None:
        """The login did not succeed. `sqlstate` and `reason` are PostgreSQL's when it refused us, which is what
        waiting clients are told; `transient`: PostgreSQL is unreachable or not accepting yet (a restart),
        so waiting clients stay queued and the pool tries again after server_login_retry."""
        self._stop_login_timer()
        if self.closed:
            return
        log.warning("%s %s", self.describe(), reason)
        self.closed = True
        if transient and self.target is not None:      # skipped in its host list for server_login_retry
            choice_for(self.app, self.pool.db).failed(self.target, self.app.now())
        if self.transport is not None:
            self.transport.close()
        if self.dedicated is not None:        # PostgreSQL's refusal goes to its one client, as it is
            self.dedicated.fatal(sqlstate, reason)
            return
        self.pool.server_closed(self, login_failed=True, reason=reason, sqlstate=sqlstate, transient=transient)

    def _stop_login_timer(self) -> None:
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None

    # -- hand-off -------------------------------------------------------------------------------------

    def assign(self, client: "Client", now: float = 0.0) -> None:
        """Link a client; bring the session parameters in line first when they differ (`now`: the release's
        clock reading, if taken)."""
        self.client = client
        pool = self.pool
        stats = pool.stats
        now = now or self.app.now()
        if client.wait_started:
            waited = now - client.wait_started
            stats.wait_time += waited
            stats.wait_buckets[bisect_left(WAIT_BUCKETS, waited)] += 1
            client.wait_started = 0.0
        if client.login_pending:
            self.client = None
            client.finish_login(pool.welcome)
            pool.release(self)
            return
        stats.assignments += 1      # as PgBouncer: a client linked to a server, not a first login waiting
        stale = pool.check_query is not None and now - self.last_used > pool.check_delay
        if client.param_key is not self.param_key or stale:
            checks = [pool.check_query] if stale else []
            params = self.params
            diff = {k: v for k, v in client.params.items() if params.get(k) != v}
            if diff:
                checks.append(set_statement(diff))
            if client.options or self.options:
                checks += options_statements(self.options, client.options)
            if checks:
                self.run_internal(";".join(checks), self._link_after_setup)
                return
        client.attach(self, now)

    def _link_after_setup(self, error: str | None) -> None:
        client = self.client
        if not error and client is not None and self.options is not client.options:
            self.options = client.options       # applied, even if the client has left meanwhile
            self.param_key = param_key(self.app.tracked, self.params, self.options)
        if client is None or client.closed:
            self.client = None
            self.pool.release(self)
        elif error:
            self.client = None
            client.fatal(protocol.PROTOCOL_VIOLATION, error)
            self.pool.release(self)
        else:
            client.attach(self)

    def detach(self, now: float = 0.0) -> None:
        """The linked client is done with this server (transaction end, or it left cleanly)."""
        client = self.client
        self.client = None
        if client is not None and client.server is self:
            client.server = None
        now = self.last_used = now or self.app.now()
        if self.reading_paused:
            self.resume_reading()
        self.pool.release(self, now)
        if self.app.draining and client is not None:
            client.drain_if_idle()

    def start_query(self, now: float) -> None:
        """A client's query goes out while none is owed; from an idle server, it starts a transaction. As in
        PgBouncer, queries pipelined behind it count with it: one query per stretch the server is busy."""
        self.query_started = now
        self.pool.stats.query_count += 1
        if self.status == _IDLE:
            self.xact_started = now

    def park(self) -> None:
        self.idle_since = self.app.now()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            if not self.app.suspended:      # else RESUME does it (control.end_suspend)
                self.transport.resume_reading()

    # -- the pooler's own queries ----------------------------------------------------------------------

    def run_internal(self, sql: str, done: Callable[[str | None], None]) -> None:
        """Send one simple query whose results nobody sees; `done(error or None)` runs at its ReadyForQuery."""
        self.internal = done
        self.internal_error = None
        self.transport.write(protocol.query(sql))

    def _internal_data(self) -> None:
        messages, used = protocol.split_messages(self.buffer)
        self.buffer = self.buffer[used:]
        for kind, body in messages:
            if kind == _S:
                self._parameter_changed(body)
            elif kind == _E and self.internal_error is None:
                self.internal_error = protocol.parse_error_fields(body).get("M", "internal query failed")
            elif kind == _Z:
                self.status = body[0]
                done, self.internal = self.internal, None
                self.buffer = b""
                if self.status != _IDLE:
                    self.close("server left in a transaction by an internal query")
                    done(self.internal_error or "server left in a transaction")
                else:
                    done(self.internal_error)
                return

    def reset(self, done: Callable[[], None]) -> None:
        """Run server_reset_query (session pooling, or always when server_reset_query_always is set)."""
        query = self.app.config.get("server_reset_query")
        if not query:
            done()
            return

        words = query.upper().replace(" ", "")
        if words in ("DISCARDALL", "DEALLOCATEALL"):
            self.cache.clear()        # every prepared statement is gone from this server
        resets_settings = "DISCARDALL" in words or "RESETALL" in words

        def finished(error: str | None) -> None:
            if error and not self.closed:
                self.close(f"server_reset_query failed: {error}")
            elif resets_settings and self.options:
                self.options = {}
                self.param_key = param_key(self.app.tracked, self.params)
            done()

        self.run_internal(query, finished)

    def _parameter_changed(self, body: bytes) -> None:
        name, value = protocol.parse_parameter_status(body)
        self.params[name] = value
        tracked = self.app.tracked
        self.param_key = param_key(tracked, self.params, self.options)
        client = self.client
        if client is not None and name in client.params and client.params[name] != value:
            client.params = shared_params({**client.params, name: value})
            client.param_key = param_key(tracked, client.params, client.options)

    # -- relaying ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or self.internal is not None or client.server is not self:
            self.buffer += data
            self._slow_path()
            return
        self.active = True
        tracker = client.tracker
        if tracker is not None and tracker.queue:
            self._tracked_data(client, data)
            return
        partial = self.partial
        if partial:
            scan = partial + data
            self.partial = b""
            # The client may already have the start of that message (this path forwards everything).
            sent = self.forwarded_partial
            out = data if sent == len(partial) else scan[sent:]
        else:
            scan = out = data
        pos = self.skip
        end = len(scan)
        last = end - 5          # the last place a whole header can start
        released = False
        now = 0.0
        while pos <= last:
            kind = scan[pos]
            stop = pos + 1 + _length(scan, pos)
            if _READ[kind]:
                if stop > end:
                    self.partial = scan[pos:]
                    pos = end
                    break
                if kind == _Z:
                    self.z_count += 1
                    status = self.status = scan[pos + 5]
                    expected = self.expected - 1
                    if expected <= 0:
                        self.expected = 0
                        now = self.app.now()
                        stats = self.pool.stats
                        stats.query_time += now - self.query_started
                        released = status == _IDLE
                        if released:      # as PgBouncer: from the transaction's first query to its end
                            stats.xact_count += 1
                            stats.xact_time += now - self.xact_started
                        if status != _IDLE and self.pool.statement and self.dedicated is None:
                            client.statement_mode_violation(self)
                            return
                    else:
                        self.expected = expected
                elif kind == _S:
                    self._parameter_changed(scan[pos + 5:stop])
                elif tracker is not None:
                    stale_plan(self, tracker, scan[pos + 5:stop])
            pos = stop
        if pos < end:           # a header cut short
            self.partial = scan[pos:]
            pos = end
        self.skip = pos - end
        self.forwarded_partial = len(self.partial)
        client.transport.write(out)
        pool = self.pool
        pool.stats.bytes_sent += len(out)
        if released and pool.transactional and self.dedicated is None and client.at_boundary():
            self.detach(now)

    def _tracked_data(self, client: "Client", data: bytes) -> None:
        finished, status = server_data(self, client, data)
        if not finished:
            return
        now = self.app.now()
        stats = self.pool.stats
        stats.query_time += now - self.query_started
        if status == _IDLE:
            stats.xact_count += 1
            stats.xact_time += now - self.xact_started
            if self.pool.transactional and self.dedicated is None and client.at_boundary():
                self.detach(now)
        elif self.pool.statement and self.dedicated is None:
            client.statement_mode_violation(self)

    def _slow_path(self) -> None:
        try:
            if self.internal is not None:      # the pooler's own query, connect_query during the login too
                self._internal_data()
            elif not self.ready:
                self._login_data()
            else:
                self._unsolicited()
        except protocol.ProtocolError as exc:
            self.close(f"protocol error from server: {exc}")

    def _unsolicited(self) -> None:
        """Data from a server no client is linked to: a parameter change, a notice, or a goodbye."""
        messages, used = protocol.split_messages(self.buffer)
        self.buffer = self.buffer[used:]
        for kind, body in messages:
            if kind == _S:
                self._parameter_changed(body)
            elif kind == _E:
                self.close("server error: " + protocol.parse_error_fields(body).get("M", "?"))
                return

    # -- back-pressure from the server's socket --------------------------------------------------------

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading("server")

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading("server")

    # -- the end ----------------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_login_timer()
        self.app.log_closing(log, self, reason)
        if self.transport is not None:
            if self.ready and self.internal is None:
                self.transport.write(protocol.TERMINATE)
            self.transport.close()
        client = self.client
        self.client = None
        if client is not None:
            client.server_lost(self, reason)
        self.pool.server_closed(self, login_failed=not self.ready, reason=reason)

    def connection_lost(self, exc) -> None:
        if not self.closed:
            if not self.ready:
                self._login_failed("server closed the connection during login", transient=True)
            else:
                self.close("server conn crashed?")

    def describe(self) -> str:
        """PgBouncer's log prefix for a server: `S-0x…: db/user@host:port`."""
        return f"S-{id(self):#x}: {self.pool.name}/{self.pool.server_user}@{self.address or '?'}"
