"""auth_user and auth_query: the secrets of users missing from the auth_file, looked up in PostgreSQL.

PgBouncer's rules: when auth_user is set (on the client's [databases] entry, else globally), a user the
auth_file does not know is looked up with auth_query, run as auth_user in the database of the auth_dbname
entry, else of the client's own entry. auth_user's password comes from the auth_file, else from that entry's
`password=` when its `user=` is auth_user. The query returns (user name, secret): no row, or a NULL name,
means no such user; a NULL secret (the default query's answer for a role past its VALID UNTIL) means a user
no password logs in as. The secret, a SCRAM verifier or an md5 hash, then checks the client's password and
logs the pooler in to PostgreSQL: SCRAM from the keys the client's proof reveals, md5 from the hash.

Lookups run on asyncpg, so a login waiting for one never blocks the event loop: at most POOL_SIZE
connections per target, closed after IDLE_LIFETIME seconds unused, and server_connect_timeout for connecting
and querying together. Answers are cached, a secret for FOUND_TTL seconds and "no such user" or "no
password" for MISSING_TTL, and logins of one user while its lookup runs wait for that same query, so a burst
of logins makes one query; a password changed in PostgreSQL counts at the pooler once FOUND_TTL has passed.
Failures are not cached: the next login asks again. RELOAD forgets every answer and closes the connections.

Logins to the admin console (PgBouncer 1.25) are looked up too, with the global auth_user and auth_query, in
the global auth_dbname: the console has no database to run the query in, so without auth_dbname its logins of
users missing from the auth_file end in `bouncer config error`. admin_users and stats_users decide afterwards.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from . import protocol
from .auth import secret_kind
from .config import RESERVED_DATABASE

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.auth_query")

FOUND_TTL = 15.0      # seconds a secret is reused without asking again
MISSING_TTL = 5.0     # seconds "no such user" or "no password" is
POOL_SIZE = 2         # connections per target; more lookups at once wait for one
IDLE_LIFETIME = 60.0  # seconds an unused connection stays open


class LookupFailed(Exception):
    """PostgreSQL could not be asked, or gave no usable answer; the message is what the client is told.

    PostgreSQL out of reach is said as it is (08006). Anything else, a query or auth_user login that fails or
    an answer of the wrong shape, is a configuration problem whose details go to the log only: the client, who
    has not logged in yet, gets PgBouncer's `bouncer config error` (08P01)."""

    def __init__(self, text: str = "bouncer config error", sqlstate: str = protocol.PROTOCOL_VIOLATION):
        super().__init__(text)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Target:
    """Where, and as whom, auth_query runs: one asyncpg pool each."""

    hosts: tuple[str, ...]
    port: int
    dbname: str
    user: str
    password: str | None
    ssl: bool | str | ssl.SSLContext     # False, "prefer", or the server_tls_* context when TLS is required

    @property
    def address(self) -> str:
        return f"{','.join(self.hosts)}:{self.port}"

    def describe(self) -> str:
        return f"{self.address}/{self.dbname} as {self.user}"


class AuthQuery:
    """The lookups and their cache, for one pooler process."""

    def __init__(self, app: "Pooler"):
        self.app = app
        self._cache: dict[tuple, tuple[float, str | None]] = {}   # (target, query, user) -> (expiry, secret)
        self._running: dict[tuple, asyncio.Task] = {}
        self._pools: dict[Target, asyncio.Task] = {}
        self._generation = 0     # answers to lookups started before a RELOAD are not cached

    def enabled(self, dbname: str) -> bool:
        """Whether users missing from the auth_file are looked up for clients of `dbname` (the console's, with
        the global auth_user)."""
        if dbname == RESERVED_DATABASE:
            return bool(self.app.config.get("auth_user"))
        db = self.app.config.database_for(dbname)
        return db is not None and bool(db.auth_user or self.app.config.get("auth_user"))

    async def secret(self, dbname: str, user: str) -> str | None:
        """`user`'s secret for a client of `dbname`: None when no such user, "" when no password logs in."""
        if dbname != RESERVED_DATABASE and self.app.config.database_for(dbname) is None:
            return None     # gone in a RELOAD: a mock login, as unknown ones get
        target, query = self._target(dbname)
        key = (target, query, user)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.app.now():
            return cached[1]
        task = self._running.get(key)
        if task is None:
            task = self._running[key] = self.app.loop.create_task(self._lookup(target, query, user))
            generation = self._generation
            task.add_done_callback(lambda done: self._store(key, generation, done))
        return await asyncio.shield(task)     # a client that goes away does not cancel the others' lookup

    def clear(self) -> None:
        """RELOAD: forget every answer; close the connections, whose settings may have changed."""
        self._generation += 1
        self._cache.clear()
        self._running.clear()
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            self.app.spawn(self._close(pool))

    # -- where -------------------------------------------------------------------------------------------

    def _target(self, dbname: str) -> tuple[Target, str]:
        """As PgBouncer: the console has no [databases] entry of its own, so its logins use the global auth_user,
        auth_query and auth_dbname, and without auth_dbname there is nowhere to run the query."""
        cfg = self.app.config
        db = cfg.database_for(dbname) if dbname != RESERVED_DATABASE else None
        auth_user = (db and db.auth_user) or cfg.get("auth_user")
        query = (db and db.auth_query) or cfg.get("auth_query")
        auth_dbname = (db and db.auth_dbname) or cfg.get("auth_dbname")
        if db is None and not auth_dbname:
            log.error('auth_query: cannot use the reserved "%s" database as an auth_dbname: set auth_dbname for '
                      'console logins of users missing from the auth_file', RESERVED_DATABASE)
            raise LookupFailed()
        if auth_dbname:
            db = cfg.database_for(auth_dbname)
            if db is None:
                log.error('auth_query: authentication database "%s" is not configured', auth_dbname)
                raise LookupFailed()
        password = self.app.userlist.get(auth_user)
        if password is None and db.user == auth_user:
            password = db.password
        if password is not None and secret_kind(password) != "plain":
            password = None      # asyncpg logs in from a password only; _failure says so if one is asked for
        host = db.host or cfg.get("unix_socket_dir")
        hosts = tuple(h.strip() for h in host.split(",") if h.strip())
        tls = self.app.tls
        if tls.server is None or all(h.startswith("/") for h in hosts):
            mode: bool | str | ssl.SSLContext = False
        elif tls.server_required:
            mode = tls.server
        else:
            mode = "prefer"     # TLS when PostgreSQL accepts it, as server_tls_sslmode allow and prefer
        return Target(hosts, db.port, db.dbname, auth_user, password, mode), query

    # -- asking ------------------------------------------------------------------------------------------

    async def _lookup(self, target: Target, query: str, user: str) -> str | None:
        timeout = self.app.config.get("server_connect_timeout") or None
        try:
            row = await asyncio.wait_for(self._fetch(target, query, user), timeout)
        except asyncio.TimeoutError:
            reason = f"no answer from server {target.address} within server_connect_timeout ({timeout:g}s)"
            unreachable = True
        except Exception as exc:     # connection refused, TLS, login or query errors: all end the login alike
            reason = self._failure(target, exc)
            unreachable = _unreachable(exc)
        else:
            if row is None or row[0] is None:
                return None
            if len(row) == 2:
                return "" if row[1] is None else str(row[1])
            reason = f"auth_query returned {len(row)} columns instead of two (user name, secret)"
            unreachable = False
        log.warning('auth_query for user "%s" on %s failed: %s', user, target.describe(), reason)
        if unreachable:
            raise LookupFailed(f"auth_query failed: {reason}", protocol.CONNECTION_FAILURE)
        raise LookupFailed()

    async def _fetch(self, target: Target, query: str, user: str):
        task = self._pools.get(target)
        if task is None or task.done() and (task.cancelled() or task.exception() is not None):
            task = self._pools[target] = self.app.loop.create_task(self._open(target))
        pool = await asyncio.shield(task)
        async with pool.acquire() as conn:
            return await conn.fetchrow(query, user)

    async def _open(self, target: Target) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            host=list(target.hosts), port=target.port, database=target.dbname, user=target.user,
            password=target.password, ssl=target.ssl, min_size=0, max_size=POOL_SIZE,
            max_inactive_connection_lifetime=IDLE_LIFETIME,
            server_settings={"application_name": "maitred auth_query"})

    def _failure(self, target: Target, exc: Exception) -> str:
        if _unreachable(exc):
            return f"cannot connect to server {target.address}: {exc.strerror or exc}"
        reason = (str(exc) or type(exc).__name__).splitlines()[0]     # asyncpg adds hints on further lines
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) and target.password is None:
            secret = self.app.userlist.get(target.user)
            if secret is not None and secret_kind(secret) != "plain":
                reason += " (auth_user logs in with a plain-text password only, not a hash from auth_file)"
        return reason

    def _store(self, key: tuple, generation: int, task: asyncio.Task) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled() or task.exception() is not None or generation != self._generation:
            return
        secret = task.result()
        now = self.app.now()
        self._cache.pop(key, None)      # to the end: the oldest answers stay first
        self._cache[key] = (now + (FOUND_TTL if secret else MISSING_TTL), secret)
        while self._cache:              # the cache holds no more than FOUND_TTL seconds of lookups
            first = next(iter(self._cache))
            if self._cache[first][0] > now:
                break
            del self._cache[first]

    async def _close(self, task: asyncio.Task) -> None:
        try:
            pool = await task
        except Exception:       # never opened: nothing to close
            return
        try:
            await asyncio.wait_for(pool.close(), self.app.config.get("server_connect_timeout") or None)
        except asyncio.TimeoutError:     # a lookup still running: its client is told it failed
            pool.terminate()


def _unreachable(exc: Exception) -> bool:
    """PostgreSQL could not be reached at all (not a TLS, login or query failure)."""
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)
