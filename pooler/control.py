"""Live changes to a running pooler: reload, SET, pause, reconnect, kill, drain and shut down.

The admin console, the signal handlers and the config-file watch all come through here, so that a pool
resized from the console behaves exactly like one resized by an edited file: bigger lets waiting clients in
at once; smaller closes idle servers first and retires busy ones as their clients release them.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING

from . import hba, logsink, protocol, sockopts, syslogsink, tls
from .client import ACTIVE
from .config import RESERVED_DATABASE, Config, load_config, parse_value
from .login import LoginRules
from .objects import Limits
from .settings import MAITRED_SETTINGS, SETTINGS, inert

if TYPE_CHECKING:
    from .app import Pooler
    from .objects import Pool

log = logging.getLogger("maitred.control")

SHUTDOWN_MODES = ("immediate", "wait_for_servers", "wait_for_clients")


def _setting(name: str):
    return SETTINGS.get(name) or MAITRED_SETTINGS.get(name)


def _server_target(entry) -> tuple:
    """What identifies the PostgreSQL a database entry points at; servers must reconnect when it moves."""
    return (entry.host, entry.port, entry.dbname, entry.user, entry.password, entry.startup_params)


# -- configuration -------------------------------------------------------------------------------------

def apply_config(app: "Pooler", new: Config, contexts: tls.Contexts | None = None) -> list[str]:
    """Switch a running pooler to `new`; what cannot change without a restart is kept, and said.

    `contexts` are TLS contexts the caller built from `new`; otherwise they are rebuilt only when a TLS
    setting changed. Either way they are built before anything changes, so a bad TLS setting changes nothing.
    """
    old = app.config
    server_tls_changed = tls.changed(old, new, tls.SERVER_SETTINGS) and contexts is not app.tls
    if contexts is None and (server_tls_changed or tls.changed(old, new, tls.CLIENT_SETTINGS)):
        contexts = tls.build(new)
    access = hba.load(new)      # auth_hba_file and auth_ident_file are read again; a bad line changes nothing
    messages = []
    for section, catalogue in ((new.settings, SETTINGS), (new.maitred, MAITRED_SETTINGS)):
        for name, setting in catalogue.items():
            before, after = old.get(name), section[name]
            if before == after:
                continue
            if not setting.reloadable:
                messages.append(f"{name} cannot change without a restart; keeping {before!r}")
                section[name] = before
            else:
                messages.append(f"{name} changed from {before!r} to {after!r}")
    app.config = new
    if any(old.get(name) != new.get(name) for name in syslogsink.SETTINGS):
        syslogsink.apply(new)
    app.log_connections = bool(new.get("log_connections"))
    if app.worker is None:          # a worker's peer id is fixed at its start, its siblings' follow it
        app.peer_id = new.get("peer_id")
    app.log_disconnections = bool(new.get("log_disconnections"))
    app.rules = LoginRules(new)
    if old.get("verbose") != new.get("verbose"):     # RELOAD and SET take the file's value, as PgBouncer's
        logging.getLogger().setLevel(logsink.level_for(new.get("verbose")))
    app.load_userlist()
    app.hba = access
    if contexts is not None:
        app.tls = contexts
    if server_tls_changed:      # as PgBouncer: no server keeps a connection the new TLS settings would refuse
        messages.append("server TLS settings changed: servers reconnect")
        for pool in app.pools.values():
            retire_servers(pool)
    for (dbname, _user), pool in list(app.pools.items()):
        entry = new.database_for(dbname)
        if entry is None:
            messages.append(f"database {dbname} removed: its servers close as their clients release them")
            retire_servers(pool)
            continue
        if _server_target(entry) != _server_target(pool.db):
            messages.append(f"database {dbname} now points elsewhere: its servers reconnect")
            retire_servers(pool)
            pool.welcome = None if entry.host != pool.db.host or entry.port != pool.db.port else pool.welcome
        pool.db = entry
        if entry.user is None:
            pool.server_password = app.userlist.get(pool.server_user, pool.queried_secret)
        else:
            pool.server_password = entry.password
        pool.db_limits.max_connections = entry.max_db_connections or new.get("max_db_connections")
        user_entry = new.users.get(pool.server_user)
        pool.user_limits.max_connections = user_entry.max_user_connections \
            if user_entry and user_entry.max_user_connections is not None else new.get("max_user_connections")
        pool.configure()
    if any(old.get(name) != new.get(name) for name in sockopts.RELOADABLE):
        sockopts.tune_listeners(app)
    if old.get("max_prepared_statements") != new.get("max_prepared_statements"):
        resize_statement_caches(app, new.get("max_prepared_statements"))
    for message in messages:
        log.info("%s", message)
    if app.worker is not None:
        app.worker.keep_running_settings(new)
    return messages


def resize_statement_caches(app: "Pooler", capacity: int) -> None:
    """A new max_prepared_statements holds on the running servers too: each evicts its least recently used
    statements down to it before it prepares the next one. 0 stops tracking for clients that have not begun."""
    for pool in app.pools.values():
        for server in pool.servers:
            server.cache.capacity = capacity


def reload(app: "Pooler") -> list[str]:
    """Read the config file again and apply it (RELOAD, SIGHUP, a changed file)."""
    new = load_config(app.config.path)
    for warning in new.warnings:
        log.warning("%s", warning)
    messages = apply_config(app, new, tls.build(new))    # certificate files are read again, as PgBouncer does
    logsink.reopen_logfile(new.get("logfile"))     # after a log rotation, as PgBouncer's RELOAD and SIGHUP
    app.auth_query.clear()      # secrets looked up in PostgreSQL are looked up again
    return messages


TLS_KEPT = "TLS settings could not be applied, still using old configuration"


def set_setting(app: "Pooler", key: str, raw: str) -> str | None:
    """SET key = value from the console: validated like the file, applied like a reload; a notice, if any.

    As in PgBouncer, a TLS setting is stored even when the TLS settings it completes cannot be used yet (the
    key file set before its certificate): the running TLS contexts are kept, with a notice, until a later SET
    or RELOAD makes a usable set."""
    key = key.strip().lower()
    setting = _setting(key)
    if setting is None:
        raise ValueError(f"unknown parameter: {key}")
    if not setting.reloadable:
        raise ValueError(f"{key} cannot be changed without a restart")
    value = parse_value(setting, raw.strip())
    new = copy.deepcopy(app.config)
    new.warnings = []
    new.set(key, value)
    if key not in tls.CLIENT_SETTINGS + tls.SERVER_SETTINGS:
        apply_config(app, new)
        if key == "logfile":
            logsink.reopen_logfile(value)
        return inert(setting) or None
    try:
        contexts = tls.build(new)
    except tls.TLSConfigError as exc:
        log.warning("%s: %s", TLS_KEPT, exc)
        apply_config(app, new, app.tls)
        return TLS_KEPT
    apply_config(app, new, contexts)
    return inert(setting) or None


# -- pools -------------------------------------------------------------------------------------------------

def _pools(app: "Pooler", db: str | None) -> list["Pool"]:
    if db is not None and db not in app.db_limits and app.config.database_for(db) is None:
        raise ValueError(f"no such database: {db}")
    return [p for p in app.pools.values() if db is None or p.name == db]


def retire_servers(pool: "Pool") -> None:
    """Idle servers close now; busy ones close when their clients release them."""
    for server in list(pool.servers):
        server.close_needed = True
    for server in list(pool.idle):
        server.close("database configuration changed")


async def _until(predicate, period: float = 0.05) -> None:
    while not predicate():
        await asyncio.sleep(period)


async def pause(app: "Pooler", db: str | None) -> None:
    """PAUSE: no new server work starts; returns once every server of `db` (or all) is released and closed."""
    pools = _pools(app, db)
    if db is None:
        app.paused = True
    else:
        app.db_limits.setdefault(db, Limits(db)).paused = True
    for pool in pools:
        for server in list(pool.idle):
            server.close("pause mode")
    await _until(lambda: all(not p.servers for p in _pools(app, db)))


def resume(app: "Pooler", db: str | None) -> None:
    pools = _pools(app, db)
    if db is None:
        app.paused = False
        for limits in app.db_limits.values():
            limits.paused = False
        if app.suspended:
            end_suspend(app)
    elif db in app.db_limits:
        app.db_limits[db].paused = False
    for pool in pools:
        pool.serve_waiting()


def disable(app: "Pooler", db: str, disabled: bool) -> None:
    """DISABLE / ENABLE: refuse, or again accept, new clients of `db`; its existing clients go on."""
    _pools(app, db)
    app.db_limits.setdefault(db, Limits(db)).disabled = disabled


def kill(app: "Pooler", db: str) -> None:
    """KILL: drop every client and server of `db` now; new clients wait until RESUME."""
    pools = _pools(app, db)
    app.db_limits.setdefault(db, Limits(db)).paused = True
    for client in [c for c in app.clients if c.pool is not None and c.pool in pools]:
        client.fatal(protocol.ADMIN_SHUTDOWN, "database removed")
    for pool in pools:
        for server in list(pool.servers):
            server.close("database removed")


def reconnect(app: "Pooler", db: str | None) -> None:
    """RECONNECT: every server is replaced, idle ones now and busy ones at their release."""
    for pool in _pools(app, db):
        retire_servers(pool)


async def wait_close(app: "Pooler", db: str | None) -> None:
    await _until(lambda: not any(s.close_needed for p in _pools(app, db) for s in p.servers))


# -- suspend -----------------------------------------------------------------------------------------

async def suspend(app: "Pooler") -> None:
    """SUSPEND: stop reading from every socket but the consoles', new connections included, and return once
    every buffered reply is written out; a connection that cannot flush within suspend_timeout is dropped."""
    app.suspended = True
    for client in list(app.clients):
        if client.dbname != RESERVED_DATABASE or client.state != ACTIVE:
            client.pause_reading("suspend")
    for pool in app.pools.values():
        for server in pool.servers:
            if server.transport is not None and not server.reading_paused:
                server.transport.pause_reading()
    timeout = app.config.get("suspend_timeout") or None
    try:
        await asyncio.wait_for(_until(lambda: not _unflushed(app)), timeout)
    except asyncio.TimeoutError:
        for conn in _unflushed(app):
            log.warning("%s could not flush its buffers within suspend_timeout: dropped", conn.describe())
            if hasattr(conn, "fatal"):
                conn.fatal(protocol.ADMIN_SHUTDOWN, "suspend_timeout")
            else:
                conn.close("suspend_timeout")


def _unflushed(app: "Pooler") -> list:
    conns = [c for c in app.clients if c.dbname != RESERVED_DATABASE]
    conns += [s for p in app.pools.values() for s in p.servers]
    return [c for c in conns if c.transport is not None and not c.transport.is_closing()
            and c.transport.get_write_buffer_size()]


def end_suspend(app: "Pooler") -> None:
    """RESUME after SUSPEND: every socket is read again."""
    app.suspended = False
    for client in list(app.clients):
        client.resume_reading("suspend")
    for pool in app.pools.values():
        for server in pool.servers:
            if server.transport is not None and not server.reading_paused and not server.closed:
                server.transport.resume_reading()


# -- shutdown ------------------------------------------------------------------------------------------

# After shutdown_timeout, how long clients have to end their transaction before everything is closed; it
# stays under the grace period the operator adds to shutdown_timeout.
LAST_TRANSACTIONS = 3.0


def shutdown(app: "Pooler", mode: str) -> None:
    """PgBouncer 1.23's shutdowns. immediate: close everything now. wait_for_clients (SIGTERM): no new client
    but on the console's Unix socket, existing clients keep working, exit once they have all left.
    wait_for_servers (SIGINT): the same, but no transaction starts any more (waiting clients and clients that
    ask for a server get `server shutting down`), exit once every server is released and closed.

    Beyond PgBouncer, [maitred] shutdown_timeout bounds the wait: then each client is let go (57P01) at its
    next transaction boundary, and LAST_TRANSACTIONS later whatever is left is closed.
    """
    if mode not in SHUTDOWN_MODES:
        raise ValueError(f"unknown shutdown mode: {mode}")
    if app.shutting_down and mode != "immediate":
        return
    log.info("shutdown requested (%s)", mode)
    app.shutting_down = True
    app.shutdown_mode = mode
    if mode == "immediate":
        _close_everything(app, "server shutting down")
        return
    app.stop_listening(keep_unix=True)
    if mode == "wait_for_servers":
        app.paused = True          # released servers close; Pool.acquire refuses new work
        for pool in app.pools.values():
            for server in list(pool.idle):
                server.close("server shutting down")
            pool.fail_waiting("server shutting down", protocol.ADMIN_SHUTDOWN)
    app.spawn(_wait_then_exit(app, mode))


def signal_shutdown(app: "Pooler", mode: str) -> None:
    """SIGTERM and SIGINT: a second one, or either during a shutdown, makes it immediate (PgBouncer 1.23)."""
    shutdown(app, "immediate" if app.shutting_down else mode)


async def _wait_then_exit(app: "Pooler", mode: str) -> None:
    if mode == "wait_for_clients":
        done, what = (lambda: not app.clients), "client"
    else:
        done, what = (lambda: not any(p.servers for p in app.pools.values())), "server"
    timeout = app.config.get("shutdown_timeout")
    try:
        await asyncio.wait_for(_until(done), timeout or None)
        log.info("%s connections dropped, exiting", what)      # PgBouncer's words
    except asyncio.TimeoutError:
        log.warning("shutdown_timeout (%ss) passed: %d clients left go at their next transaction boundary",
                    timeout, len(app.clients))
        app.draining = True
        for client in list(app.clients):
            client.drain_if_idle()
        try:
            await asyncio.wait_for(_until(lambda: not app.clients), LAST_TRANSACTIONS)
        except asyncio.TimeoutError:
            log.warning("closing the %d clients still in a transaction", len(app.clients))
    _close_everything(app, "server shutting down")


def _close_everything(app: "Pooler", reason: str) -> None:
    app.stop_listening()
    for client in list(app.clients):
        client.fatal(protocol.ADMIN_SHUTDOWN, reason)
    for pool in app.pools.values():
        for server in list(pool.servers):
            server.close(reason)
    app.stopped.set()
