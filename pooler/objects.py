"""Pool bookkeeping: who waits, which servers are idle, and the limits that say whether one more may open.

One `Pool` per (database, user). Servers are reused LIFO (PgBouncer's default, server_round_robin = 0), so
a busy pool keeps its warm connections and lets the cold ones age out through server_idle_timeout; with
server_round_robin, the one idle longest goes first, which spreads the load over a round-robin address behind
the database. Clients wait FIFO.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from .counters import WAIT_BUCKETS
from .hosts import choice_for
from .protocol import ADMIN_SHUTDOWN, CONNECTION_FAILURE

if TYPE_CHECKING:
    from .app import Pooler
    from .client import Client
    from .server import Server

log = logging.getLogger("maitred.pool")


class Limits:
    """Connection counts shared by every pool of one database, or of one user (max_*_connections)."""

    __slots__ = ("name", "max_connections", "connections", "paused", "disabled")

    def __init__(self, name: str, max_connections: int = 0):
        self.name = name
        self.max_connections = max_connections
        self.connections = 0
        self.paused = False
        self.disabled = False       # DISABLE: new clients of this database are refused

    def full(self) -> bool:
        return 0 < self.max_connections <= self.connections


class Stats:
    """Counters one pool adds to on the hot path; the console and /metrics read them. Times in seconds."""

    __slots__ = ("xact_count", "query_count", "bytes_received", "bytes_sent", "wait_time", "xact_time",
                 "query_time", "assignments", "client_logins", "login_failures", "parse_count", "bind_count",
                 "server_parse_count", "wait_buckets")

    def __init__(self):
        self.xact_count = self.query_count = self.bytes_received = self.bytes_sent = 0
        self.assignments = self.client_logins = self.login_failures = 0
        self.parse_count = self.bind_count = self.server_parse_count = 0
        self.wait_time = self.xact_time = self.query_time = 0.0
        self.wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)   # the last one is +Inf


class Pool:
    """The servers of one (database, user) pair and the clients that take turns on them."""

    def __init__(self, app: "Pooler", name: str, db, user: str, server_user: str, server_password: str | None,
                 db_limits: Limits, user_limits: Limits):
        self.app = app
        self.name = name              # the client-facing database name
        self.db = db                  # config.DatabaseEntry
        self.user = user
        self.server_user = server_user
        self.server_password = server_password
        self.db_limits = db_limits
        self.user_limits = user_limits
        self.idle: list[Server] = []
        self.servers: set[Server] = set()
        self.waiting: deque[Client] = deque()
        self.client_count = 0         # logged-in clients (app.clients has them all; a set here would cost each one)
        self.connecting = 0
        self.welcome: dict[str, str] | None = None
        # What clients are told at login, by what they asked for (client.finish_login); built from `welcome`.
        self.greetings: dict[tuple, tuple] = {}
        self.scram_keys: tuple[bytes, bytes] | None = None   # from a client's SCRAM proof, for SCRAM pass-through
        self.queried_secret: str | None = None   # server_user's secret from auth_query, kept over a RELOAD
        self.last_connect_failure = 0.0     # when the last login failed; 0 once one succeeds
        self.login_error = (CONNECTION_FAILURE, "")   # its SQLSTATE and message, for clients that arrive meanwhile
        self.empty_since = 0.0              # when its last client and server left (pool_idle_timeout)
        self.stats = Stats()
        self.configure()

    # -- settings ---------------------------------------------------------------------------------------

    def configure(self) -> None:
        """(Re)read this pool's effective settings: user entry over database entry over [pgbouncer]."""
        cfg = self.app.config
        user_entry = cfg.users.get(self.user)

        def pick(key: str, global_key: str):
            for entry in (user_entry, self.db):
                value = getattr(entry, key, None) if entry is not None else None
                if value is not None:
                    return value
            return cfg.get(global_key)

        self.mode = pick("pool_mode", "pool_mode")
        self.size = pick("pool_size", "default_pool_size")
        self.reserve_size = pick("reserve_pool_size", "reserve_pool_size")
        self.min_size = getattr(self.db, "min_pool_size", None)
        if self.min_size is None:
            self.min_size = cfg.get("min_pool_size")
        self.server_lifetime = getattr(self.db, "server_lifetime", None) or cfg.get("server_lifetime")
        qwt = getattr(user_entry, "query_wait_timeout", None) if user_entry else None
        if qwt is None:
            qwt = getattr(self.db, "query_wait_timeout", None)
        self.query_wait_timeout = cfg.get("query_wait_timeout") if qwt is None else qwt
        # Servers beyond this many close as they come back (a smaller pool, or the reserve no longer needed).
        self.max_servers = self.size + self.reserve_size if self.size > 0 else 1 << 30
        check_query = cfg.get("server_check_query")
        # None: no check; "" is PgBouncer 1.25's default, an empty Query, the cheapest round trip there is.
        self.check_query = "" if check_query == "<empty>" else check_query or None
        self.check_delay = cfg.get("server_check_delay")
        self.transactional = self.mode != "session"
        # Named prepared statements need tracking only when a client's statements may land on any server.
        self.tracks_statements = self.transactional and cfg.get("max_prepared_statements") > 0
        self.statement = self.mode == "statement"
        self.pqexec_disallowed = cfg.get("disable_pqexec")     # not reloadable: the same for every client
        self.round_robin = cfg.get("server_round_robin")
        self.max_length = cfg.get("max_packet_size") or (1 << 31) - 1     # the longest message a client may send
        self.trim()
        self.serve_waiting()

    # -- clients asking for servers --------------------------------------------------------------------

    def acquire(self, client: "Client") -> None:
        """Give `client` a server now if one is idle, else queue it and open a connection if allowed."""
        if self.idle and not (self.app.paused or self.db_limits.paused):
            self.stats.wait_buckets[0] += 1
            server = self.next_idle()
            server.assign(client)
            return
        if self.app.shutdown_mode == "wait_for_servers":      # SHUTDOWN WAIT_FOR_SERVERS: no new transaction
            client.server_unavailable("server shutting down", ADMIN_SHUTDOWN)
            return
        client.wait_started = self.app.now()
        self.waiting.append(client)
        if len(self.servers) < self.max_servers or self.last_connect_failure:
            self.grow()

    def next_idle(self) -> "Server":
        """The idle server to use next: the last one parked (LIFO), or with server_round_robin the one parked
        longest ago (`idle` is in parking order)."""
        return self.idle.pop(0) if self.round_robin else self.idle.pop()

    def cancel_wait(self, client: "Client") -> None:
        try:
            self.waiting.remove(client)
        except ValueError:
            pass

    def release(self, server: "Server", now: float = 0.0) -> None:
        """A clean server comes back: hand it to the first waiting client, park it, or retire it."""
        if server.closed:
            return
        if server.cancels:
            # A cancel still on its way could stop the next client's query: hold the server until it lands.
            server.being_canceled = True
            return
        if server.close_needed or self.over_size() or self.app.paused \
                or self.db_limits.paused or (self.server_lifetime and (now or self.app.now())
                                             - server.connected_at >= self.server_lifetime):
            reason = self.retire_reason(server)
            server.close(reason)
            self.serve_waiting()
            return
        if self.waiting:
            server.assign(self.waiting.popleft(), now)
        else:
            server.park()
            self.idle.append(server)

    def cancel_resolved(self, server: "Server") -> None:
        """A cancel sent for `server` is over (PostgreSQL closed its connection, so the backend has the signal
        and drops it when no query runs): once none is left in flight, a server held back serves again."""
        server.cancels -= 1
        if not server.cancels and server.being_canceled:
            server.being_canceled = False
            self.release(server)

    def retire_reason(self, server: "Server") -> str:
        """Why a server coming back must close instead of serving again."""
        if server.close_needed:
            return "database configuration changed"
        if self.paused():
            return "pause mode"
        if self.over_size():
            return "too many servers in the pool"
        return "server lifetime over"

    def paused(self) -> bool:
        return self.app.paused or self.db_limits.paused

    def serve_waiting(self) -> None:
        if self.paused():
            return
        while self.waiting and self.idle:
            server = self.next_idle()
            server.assign(self.waiting.popleft())
        if self.waiting:
            self.grow()

    # -- server connections -----------------------------------------------------------------------------

    def capacity(self, use_reserve: bool = False) -> int:
        size = self.size if self.size > 0 else 1 << 30
        return size + (self.reserve_size if use_reserve else 0)

    def over_size(self) -> bool:
        """More servers than the pool may keep, or than its database's or user's limit allows (lowered live):
        the surplus must close. Runs at every release, hence the limits' comparisons inline."""
        db, user = self.db_limits, self.user_limits
        return (len(self.servers) > self.max_servers or 0 < db.max_connections < db.connections
                or 0 < user.max_connections < user.connections)

    def may_open(self, use_reserve: bool = False) -> bool:
        return (len(self.servers) < self.capacity(use_reserve) and not self.db_limits.full()
                and not self.user_limits.full() and not self.paused())

    def grow(self, use_reserve: bool = False) -> None:
        """Open connections for waiting clients that no connection in progress will serve."""
        if self.last_connect_failure:
            # PostgreSQL refused or was out of reach: waiting clients stay queued (query_wait_timeout bounds their
            # wait) while one connection at a time tries again every server_login_retry, as in PgBouncer.
            if self.waiting:
                self.probe(use_reserve)
            return
        while self.connecting < len(self.waiting) and (self.may_open(use_reserve) or self.evict(use_reserve)):
            if len(self.servers) >= self.capacity():
                log.warning("%s taking connection from reserve_pool", self.waiting[0].describe())
            self.open_server()

    def probe(self, use_reserve: bool = False) -> None:
        """After a failed login: one new attempt, once server_login_retry has passed since the failure."""
        if not self.connecting and self.app.now() - self.last_connect_failure >= \
                self.app.config.get("server_login_retry") and (self.may_open(use_reserve) or self.evict(use_reserve)):
            self.open_server()

    def login_failing(self) -> bool:
        """PgBouncer's fast fail: the last login failed and no logged-in server is left to serve a new client."""
        return bool(self.last_connect_failure) and len(self.servers) == self.connecting

    def evict(self, use_reserve: bool) -> bool:
        """PgBouncer's evict_connection: when only the database's or the user's limit stands in the way, close
        the most idle server of another pool under that limit, so one pool's idle servers cannot starve
        another's waiting clients. True when this pool may open a server now."""
        full = [limits for limits in (self.db_limits, self.user_limits) if limits.full()]
        if not full or len(self.servers) >= self.capacity(use_reserve) or self.paused():
            return False
        idle = [server for pool in self.app.pools.values() if pool is not self
                and all(limits is pool.db_limits or limits is pool.user_limits for limits in full)
                for server in pool.idle]
        if not idle:
            return False
        min(idle, key=lambda server: server.idle_since).close("evicted")
        return self.may_open(use_reserve)

    def open_server(self) -> None:
        from .server import Server

        self.connecting += 1
        self.db_limits.connections += 1
        self.user_limits.connections += 1
        server = Server(self)
        self.servers.add(server)
        server.start()

    def server_ready(self, server: "Server") -> None:
        self.connecting -= 1
        self.last_connect_failure = 0.0
        if self.welcome is None:
            self.welcome = dict(server.params)
        self.release(server)

    def server_closed(self, server: "Server", login_failed: bool, reason: str, sqlstate: str = CONNECTION_FAILURE,
                      transient: bool = True) -> None:
        """Account for a server that went away. A login PostgreSQL refused for good (`transient` false: a role
        that may not log in, a wrong password) fails the waiting clients with PostgreSQL's own error, unless
        a logged-in server can still serve them; any other failure leaves them queued for the next attempt."""
        if server not in self.servers:
            return
        self.servers.discard(server)
        self.db_limits.connections -= 1
        self.user_limits.connections -= 1
        try:
            self.idle.remove(server)
        except ValueError:
            pass
        if login_failed:
            self.connecting -= 1
            self.stats.login_failures += 1
            now = self.app.now()
            if transient and choice_for(self.app, self.db).another_left(now, self.app.config.get("server_login_retry")):
                self.serve_waiting()        # another host of the list is tried at once
                return
            self.last_connect_failure = now
            self.login_error = (sqlstate, reason)
            if not transient and not any(s.ready for s in self.servers):
                self.fail_waiting(reason, sqlstate)
                return
        self.serve_waiting()

    def fail_waiting(self, reason: str, sqlstate: str = CONNECTION_FAILURE) -> None:
        waiting, self.waiting = self.waiting, deque()
        for client in waiting:
            client.server_unavailable(reason, sqlstate)

    def trim(self) -> None:
        """Close idle servers beyond the pool size or a lowered cap now, so a smaller pool takes effect at once."""
        while self.idle and self.over_size():
            self.idle.pop(0).close("too many servers in the pool")

    # -- state for the console, the metrics and the janitor ---------------------------------------------

    def oldest_wait(self, now: float) -> float:
        return now - self.waiting[0].wait_started if self.waiting else 0.0

    def counts(self) -> dict[str, int]:
        active = sum(1 for s in self.servers if s.client is not None)
        canceled = sum(1 for s in self.servers if s.being_canceled)
        login = self.connecting
        idle = len(self.idle)
        return {
            "cl_active": self.client_count - len(self.waiting),
            "cl_waiting": len(self.waiting),
            "sv_active": active,
            "sv_being_canceled": canceled,
            "sv_idle": idle,
            "sv_used": 0,
            "sv_tested": max(0, len(self.servers) - active - canceled - idle - login),
            "sv_login": login,
        }
