"""Periodic sweeps: timeouts, idle and aged servers, the reserve pool and min_pool_size.

The hot path never reads the clock; it only sets an `active` flag. Every sweep turns those flags into
"idle since" times, so every timeout is accurate to within one sweep period.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import protocol
from .client import ACTIVE, AUTH, LOGIN_WAIT, STARTUP

if TYPE_CHECKING:
    from .app import Pooler
    from .objects import Pool

log = logging.getLogger("maitred.janitor")

PERIOD = 0.25
QUEUED_NOTICE = protocol.notice_response("No server connection available in postgres backend, client being queued")


async def run(app: "Pooler") -> None:
    while True:
        await asyncio.sleep(PERIOD)
        try:
            sweep(app)
        except Exception:  # a bug in one sweep must not stop all the sweeps after it
            log.exception("janitor sweep failed")


def sweep(app: "Pooler") -> None:
    now = app.now()
    cfg = app.config
    _sweep_clients(app, now, cfg)
    _create_warm_pools(app, cfg)
    for pool in list(app.pools.values()):
        _sweep_pool(pool, now, cfg)
    _free_empty_pools(app, now, cfg.get("pool_idle_timeout"))
    _free_unused_autodbs(app, now, cfg.get("autodb_idle_timeout"))


def _free_empty_pools(app: "Pooler", now: float, timeout: float) -> None:
    """pool_idle_timeout: a pool with no client and no server for this long is freed, its counters with it."""
    for key, pool in list(app.pools.items()):
        if pool.client_count or pool.servers or pool.waiting:
            pool.empty_since = 0.0
        elif not pool.empty_since:
            pool.empty_since = now
        elif timeout and now - pool.empty_since > timeout:
            del app.pools[key]


def _free_unused_autodbs(app: "Pooler", now: float, timeout: float) -> None:
    """autodb_idle_timeout: a database made from the `*` entry none of whose pools has had a client or a server
    for this long is forgotten, its pools and their counters with it, as PgBouncer's; its next client makes it
    again. A paused or disabled one is kept, with its state. Without a `*` entry there is none to look for."""
    configured = app.config.databases
    if not timeout or "*" not in configured:
        return
    in_use: set[str] = set()
    unused_since: dict[str, float] = {}     # its pools' latest empty_since (_free_empty_pools keeps them)
    for pool in app.pools.values():
        if pool.name in configured:
            continue
        if pool.empty_since:
            unused_since[pool.name] = max(pool.empty_since, unused_since.get(pool.name, 0.0))
        else:
            in_use.add(pool.name)
    for name, since in unused_since.items():
        limits = app.db_limits.get(name)
        if name in in_use or now - since <= timeout or limits is not None and (limits.paused or limits.disabled):
            continue
        for key in [key for key, pool in app.pools.items() if pool.name == name]:
            del app.pools[key]
        app.db_limits.pop(name, None)
        app.db_clients.pop(name, None)
        app.config.auto_entries.pop(name, None)
        log.info("freed unused auto-database: db=%s", name)


def _create_warm_pools(app: "Pooler", cfg) -> None:
    """As PgBouncer does, a forced-user database with a min_pool_size gets its pool, so its warm servers, before
    any client comes (a pool per user cannot be, as its users are not known until they log in)."""
    for name, db in cfg.databases.items():
        if db.user and name != "*" and (db.min_pool_size if db.min_pool_size is not None
                                        else cfg.get("min_pool_size")) > 0 and (name, db.user) not in app.pools:
            app.get_pool(name, db.user)


def _sweep_clients(app: "Pooler", now: float, cfg) -> None:
    login_timeout = cfg.get("client_login_timeout")
    idle_timeout = cfg.get("client_idle_timeout")
    for client in list(app.clients):
        if client.active:
            client.active = False
            client.idle_since = now
        if client.state in (STARTUP, AUTH, LOGIN_WAIT):
            if login_timeout and now - client.connected_at > login_timeout:
                client.fatal(protocol.PROTOCOL_VIOLATION, "client_login_timeout")
        elif client.state == ACTIVE and client.server is None and not client.requested:
            user = cfg.users.get(client.user)
            timeout = getattr(user, "client_idle_timeout", None) or idle_timeout
            if timeout and now - client.idle_since > timeout:
                client.fatal(protocol.PROTOCOL_VIOLATION, "client_idle_timeout")


def _sweep_pool(pool: "Pool", now: float, cfg) -> None:
    user = cfg.users.get(pool.user)
    query_timeout = getattr(user, "query_timeout", None) or cfg.get("query_timeout")
    idle_tx_timeout = getattr(user, "idle_transaction_timeout", None) or cfg.get("idle_transaction_timeout")
    tx_timeout = getattr(user, "transaction_timeout", None) or cfg.get("transaction_timeout")

    # Clients waiting for a server.
    notify_after = cfg.get("query_wait_notify")
    for client in list(pool.waiting):
        waited = now - client.wait_started
        if notify_after and waited > notify_after and not client.wait_notified and not client.login_pending:
            client.wait_notified = True      # once per connection, as PgBouncer
            client.transport.write(QUEUED_NOTICE)
        if pool.query_wait_timeout and waited > pool.query_wait_timeout:
            pool.cancel_wait(client)
            client.requested = False
            client.fatal(protocol.PROTOCOL_VIOLATION, "query_wait_timeout")
        elif query_timeout and waited > query_timeout:
            pool.cancel_wait(client)
            client.requested = False
            client.fatal(protocol.PROTOCOL_VIOLATION, "query_timeout")     # a waiting client: PgBouncer's words
    if pool.waiting:
        use_reserve = pool.reserve_size > 0 and pool.oldest_wait(now) > cfg.get("reserve_pool_timeout")
        pool.grow(use_reserve)

    # Servers.
    server_idle_timeout = cfg.get("server_idle_timeout")
    fast_close = cfg.get("server_fast_close") and not pool.transactional
    for server in list(pool.servers):
        if server.active:
            server.active = False
            server.idle_since = now if server.client is not None else server.idle_since
        client = server.client
        if client is not None and server.ready and server.internal is None:
            if server.expected and server.z_count != server.z_seen:
                server.z_seen = server.z_count
                server.busy_since = now
            elif not server.expected:
                server.z_seen = -1
            if query_timeout and server.expected and now - server.busy_since > query_timeout:
                server.close("query timeout")     # the client hears it with PgBouncer's 08P01
                continue
            if fast_close and server.close_needed and client.between_transactions():
                _close_with_client(server, protocol.PROTOCOL_VIOLATION, "database configuration changed")
                continue
            in_tx = server.status != protocol.IDLE and not server.expected
            if in_tx and idle_tx_timeout and now - max(client.idle_since, server.idle_since) > idle_tx_timeout:
                _close_with_client(server, protocol.PROTOCOL_VIOLATION, "idle transaction timeout")
            elif tx_timeout and (server.expected or server.status != protocol.IDLE) \
                    and now - server.xact_started > tx_timeout:
                _close_with_client(server, protocol.PROTOCOL_VIOLATION, "transaction timeout")
    for server in list(pool.idle):
        if server_idle_timeout and now - server.idle_since > server_idle_timeout \
                and len(pool.servers) > pool.min_size:
            server.close("server idle timeout")
        elif pool.server_lifetime and now - server.connected_at > pool.server_lifetime:
            server.close("server lifetime over")

    # Warm connections.
    if len(pool.servers) < pool.min_size and pool.may_open() \
            and now - pool.last_connect_failure > cfg.get("server_login_retry"):
        pool.open_server()


def _close_with_client(server, sqlstate: str, reason: str) -> None:
    """Close a server and its client, which is told PgBouncer's reason; an open transaction is rolled back
    by PostgreSQL when the connection goes."""
    client = server.client
    server.client = None
    client.server = None
    server.close(reason)
    client.fatal(sqlstate, reason)
