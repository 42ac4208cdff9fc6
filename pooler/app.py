"""The pooler process: its config, its pools, its listening sockets and the registry of cancel keys."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from functools import partial
from typing import TYPE_CHECKING, Awaitable

from . import hba, logsink, peers, sockopts
from .auth_query import AuthQuery
from .client import Client
from .config import Config, DatabaseEntry, PeerEntry
from .hosts import HostChoice
from .login import LoginRules
from .objects import Limits, Pool
from .prepare import Registry
from .protocol import cancel_request
from .registry import Clients
from .resolver import Resolver
from .session import tracked_params
from .tls import build as build_tls
from .userlist import load_userlist

if TYPE_CHECKING:
    from .server import Server
    from .workers import Worker

log = logging.getLogger("maitred")

# Cancel keys are drawn from the OS 512 at a time, not with a system call per client.
_RANDOM_KEYS = struct.Struct("!512Q")
ARRIVAL_SHARED = 0.1       # seconds


class Pooler:
    """Everything one pooler process knows; the clients, servers and pools all hang off it."""

    def __init__(self, config: Config, worker: Worker | None = None):
        self.config = config
        self.worker = worker           # one of `workers` processes (workers.py); None when the pooler is one
        self.peer_id = worker.peer_id if worker is not None else config.get("peer_id")
        self.peer_listener: asyncio.AbstractServer | None = None   # a worker's own socket, for its siblings
        self.forwards: dict[int, asyncio.Semaphore] = {}            # per peer: cancels forwarded at once
        self.loop = asyncio.get_running_loop()
        self.now = time.monotonic      # microsecond resolution; uvloop's loop.time() has milliseconds
        self.arrived = 0.0             # the reading `arrival` shares
        self.userlist: dict[str, str] = {}
        self.pools: dict[tuple[str, str], Pool] = {}
        self.db_limits: dict[str, Limits] = {}
        self.user_limits: dict[str, Limits] = {}
        # Logged-in clients per database and per login user, for max_db/user_client_connections.
        self.db_clients: dict[str, int] = {}
        self.user_clients: dict[str, int] = {}
        self.cancel_keys: dict[int, Client] = {}
        self.random_keys: list[int] = []    # drawn for cancel keys still to hand out; this process's own
        self.clients = Clients(self.cancel_keys)       # every client, each in one registry (registry.py)
        self.host_choices: dict[tuple, HostChoice] = {}     # per host= list: where the next server goes
        self.resolver = Resolver(self)      # server host names, cached for dns_max_ttl
        self.statements = Registry()     # prepared statements' internal names, shared by all clients
        # The session parameters kept per client; track_extra_parameters is read once, as PgBouncer reads it.
        self.tracked = tracked_params(config.get("track_extra_parameters"))
        self.listeners: list[asyncio.AbstractServer] = []
        self.unix_listener: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()
        self.started_at = time.time()
        self.paused = False            # PAUSE without a database: every pool
        self.suspended = False         # SUSPEND: nothing is read from any socket until RESUME
        self.draining = False          # shutdown_timeout passed: let clients go between transactions
        self.shutting_down = False     # no new clients (but the console, over the Unix socket)
        self.shutdown_mode = ""        # control.SHUTDOWN_MODES, once shutting down
        self.stopped = asyncio.Event()  # set when the process should exit
        self.log_connections = bool(config.get("log_connections"))
        self.log_disconnections = bool(config.get("log_disconnections"))
        self.rules = LoginRules(config)     # the settings each login reads, read once per config
        self.tls = build_tls(config)    # SSL contexts for both sides, rebuilt on reload (control.apply_config)
        self.auth_query = AuthQuery(self)   # secrets of users the auth_file lacks, from PostgreSQL
        self.hba = hba.load(config)         # auth_type = hba's rules, read again on every reload
        self.load_userlist()

    # -- configuration ---------------------------------------------------------------------------------

    def load_userlist(self) -> None:
        path = self.config.get("auth_file")
        self.userlist = load_userlist(path) if path else {}

    # -- pools -------------------------------------------------------------------------------------------

    def get_pool(self, dbname: str, user: str, db: DatabaseEntry | None = None) -> Pool:
        """The pool for a client of `dbname` as `user` (a [databases] entry with user= pins the server user);
        `db`: the entry for `dbname`, when the caller has it already."""
        if db is None:
            db = self.config.database_for(dbname)
        server_user = db.user or user
        key = (dbname, server_user)
        pool = self.pools.get(key)
        if pool is None:
            if dbname not in self.config.databases and dbname not in self.db_limits:
                log.info("registered new auto-database: db=%s", dbname)     # from the `*` entry
            password = db.password if db.user else None
            if password is None:
                password = self.userlist.get(server_user)
            db_limits = self.db_limits.setdefault(dbname, Limits(dbname))
            db_limits.max_connections = db.max_db_connections or self.config.get("max_db_connections")
            user_limits = self.user_limits.get(server_user)
            if user_limits is None:
                entry = self.config.users.get(server_user)
                maximum = entry.max_user_connections if entry and entry.max_user_connections is not None \
                    else self.config.get("max_user_connections")
                user_limits = self.user_limits[server_user] = Limits(server_user, maximum)
            pool = self.pools[key] = Pool(self, dbname, db, server_user, server_user, password,
                                          db_limits, user_limits)
        return pool

    # -- clients -----------------------------------------------------------------------------------------

    def arrival(self) -> float:
        """now(), or a reading at most ARRIVAL_SHARED old: the clients that connect together share one float,
        which an idle one keeps as connected_at and idle_since, both only ever used to the second."""
        now = self.now()
        if now - self.arrived >= ARRIVAL_SHARED:
            self.arrived = now
        return self.arrived

    def client_connected(self, client: Client) -> None:
        self.clients.logins[client] = None

    def client_disconnected(self, client: Client) -> None:
        self.clients.logins.pop(client, None)
        if self.cancel_keys.get(client.cancel_key) is client:
            del self.cancel_keys[client.cancel_key]
        if client.counted:
            client.counted = False
            self.db_clients[client.dbname] -= 1
            self.user_clients[client.user] -= 1

    def admit(self, client: Client, db, dbname: str) -> str | None:
        """Count a logged-in client of `dbname` against max_db_client_connections and max_user_client_connections
        (its database's and its user's own, else the global ones; 0 is no limit); the limit it exceeds, if one."""
        rules = self.rules
        db_count = self.db_clients.get(dbname, 0)
        limit = db.max_db_client_connections
        if limit is None:
            limit = rules.max_db_client_connections
        if limit and db_count >= limit:
            return "max_db_client_connections"
        name = client.user
        user = self.config.users.get(name)
        user_count = self.user_clients.get(name, 0)
        limit = user.max_user_client_connections if user is not None else None
        if limit is None:
            limit = rules.max_user_client_connections
        if limit and user_count >= limit:
            return "max_user_client_connections"
        self.db_clients[dbname] = db_count + 1
        self.user_clients[name] = user_count + 1
        client.counted = True
        return None

    def register_cancel_key(self, client: Client) -> int:
        """A fresh BackendKeyData for `client`, as one int: pid << 32 | secret key. Within 60 bits, where an int
        takes 32 bytes (48 from 61 bits on): an idle client keeps it."""
        while True:
            if not self.random_keys:
                self.random_keys = list(_RANDOM_KEYS.unpack(os.urandom(_RANDOM_KEYS.size)))
            key = self.random_keys.pop() & 0x0fffffffffffffff
            if self.peer_id:
                key = peers.stamp(key, self.peer_id)
            if key not in self.cancel_keys:
                if client in self.clients.logins:     # a sibling worker's connection is no client of ours
                    del self.clients.logins[client]
                    self.cancel_keys[key] = client
                return key

    def cancel(self, pid: int, key: int) -> None:
        """Forward a CancelRequest to the server running that client's query, and to nothing else; with
        peering, a key another peer gave out goes to that peer."""
        key = pid << 32 | key
        if self.peer_id:
            if peers.owner(key) != self.peer_id:
                self._forward_cancel(key)
                return
            key |= peers.TTL_MASK        # a forwarded request arrives with its TTL spent in part
        client = self.cancel_keys.get(key)
        server = client.server if client is not None else None
        if server is None or not server.ready:
            return
        server.cancels += 1       # until it is answered, the server goes to no other client (Pool.release)
        self.spawn(self._send_cancel(server))

    async def _send_cancel(self, server: Server) -> None:
        """Send the CancelRequest and wait for PostgreSQL to close the connection, which it does once the
        backend has been signalled; only then may the server's next client start a query on it."""
        address = server.address
        peer = None if address.startswith("unix:") else server.transport.get_extra_info("peername")
        if peer:        # the backend's own address: its name may have several
            address = f"{peer[0]}:{peer[1]}"
        try:
            await asyncio.wait_for(_cancel_exchange(address, server.backend_pid, server.backend_key),
                                   self.config.get("server_connect_timeout") or None)
        except OSError as exc:       # refused, or cut: either way no cancel is on its way any more
            log.warning("cancel request to %s failed: %s", address, exc)
        except asyncio.TimeoutError:
            log.warning("cancel request to %s unanswered: the server it targets is retired", address)
            server.close_needed = True      # it may still land on whatever query runs next
        finally:
            server.pool.cancel_resolved(server)

    def peer(self, peer_id: int) -> PeerEntry | None:
        """Where the pooler process with `peer_id` listens: a sibling worker, else a [peers] entry."""
        sibling = self.worker.peer(peer_id, self.config.get("listen_port")) if self.worker is not None else None
        return sibling or self.config.peers.get(peer_id)

    def _forward_cancel(self, key: int) -> None:
        owner = peers.owner(key)
        peer = self.peer(owner)
        if not peers.ttl(key):
            log.warning("cancel request for peer %d dropped: its TTL is exhausted", owner)
        elif peer is None:
            log.warning("cancel request for peer %d dropped: no such peer", owner)
        else:
            self.spawn(self._send_forward(peer, key - 1))

    async def _send_forward(self, peer: PeerEntry, key: int) -> None:
        limit = self.forwards.get(peer.peer_id)
        if limit is None:
            size = peer.pool_size or self.config.get("default_pool_size") or 1 << 16
            limit = self.forwards[peer.peer_id] = asyncio.Semaphore(size)
        address = peers.address(peer)
        async with limit:
            try:
                await asyncio.wait_for(_cancel_exchange(address, key >> 32, key & 0xffffffff),
                                       self.config.get("cancel_wait_timeout") or None)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("forwarding a cancel request to peer %d at %s failed: %s", peer.peer_id, address,
                            exc or "no answer")

    # -- listening ---------------------------------------------------------------------------------------

    async def listen(self) -> None:
        cfg = self.config
        port = cfg.get("listen_port")
        backlog = cfg.get("listen_backlog")
        reuse_port = bool(cfg.get("so_reuseport")) or self.worker is not None
        # The Unix socket first, with its mode set: once TCP accepts, every listener is ready.
        sock_dir = cfg.get("unix_socket_dir")
        shared = self.worker.unix_socket if self.worker is not None else None
        if shared is not None:          # bound once by the supervisor: every worker accepts on it
            server = await self.loop.create_unix_server(lambda: Client(self, unix=True), sock=shared, backlog=backlog)
            self.listeners.append(server)
            self.unix_listener = server
        elif sock_dir:
            path = os.path.join(sock_dir, f".s.PGSQL.{port}")
            if os.path.exists(path):
                os.unlink(path)
            server = await self.loop.create_unix_server(lambda: Client(self, unix=True), path, backlog=backlog)
            sockopts.unix_socket_access(path, cfg)
            self.listeners.append(server)
            self.unix_listener = server
            log.info("listening on unix:%s", path)
        addrs = [a.strip() for a in (cfg.get("listen_addr") or "").split(",") if a.strip()]
        for addr in addrs:
            host = None if addr == "*" else addr
            # functools.partial, not a lambda: uvloop calls it per accepted connection, without a Python frame.
            server = await self.loop.create_server(partial(Client, self), host, port, backlog=backlog,
                                                   reuse_address=True, reuse_port=reuse_port)
            self.listeners.append(server)
            for sock in server.sockets:
                log.info("listening on %s", _address(sock))
        if not self.listeners:
            raise RuntimeError("nothing to listen on: set listen_addr or unix_socket_dir")
        sockopts.tune_listeners(self)
        if self.worker is not None:     # open until the process exits, so cancels reach a draining worker
            path = self.worker.socket_path(self.worker.index, port)
            if os.path.exists(path):
                os.unlink(path)
            from .siblings import SiblingClient      # here: siblings imports client, which cimports this module
            self.peer_listener = await self.loop.create_unix_server(lambda: SiblingClient(self), path,
                                                                    backlog=backlog)
            os.chmod(path, 0o777)       # the run directory, 0700, is what keeps others out

    @property
    def ready(self) -> bool:
        """Accepting new clients: what /readyz reports."""
        return bool(self.listeners) and not self.shutting_down

    def stop_listening(self, keep_unix: bool = False) -> None:
        """Close the listeners; `keep_unix`: the Unix socket stays, for the console (PgBouncer's shutdown)."""
        kept = [self.unix_listener] if keep_unix and self.unix_listener in self.listeners else []
        for server in self.listeners:
            if server not in kept:
                server.close()
        self.listeners = kept

    # -- helpers -----------------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable) -> asyncio.Task:
        """Run a background task and keep a reference until it ends (asyncio keeps only weak ones)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def log_event(self, logger: logging.Logger, text: str, conn, *args: object) -> None:
        """log_connections: `text % args` about `conn`, built only when the line is logged."""
        if not (self.log_connections and logsink.info_enabled(logger)):
            return
        from .siblings import SiblingClient      # here, as in listen
        if type(conn) is not SiblingClient:
            logsink.info(logger, f"{conn.describe()} {text % args if args else text}")

    def log_closing(self, logger: logging.Logger, server, reason: str) -> None:
        """log_disconnections: PgBouncer's `closing because: REASON (age=Ns)` line about a server (a client
        writes its own: Client.log_closing)."""
        if self.log_disconnections and logsink.info_enabled(logger):
            logsink.info(logger, f"{server.describe()} closing because: {reason} "
                                 f"(age={int(self.now() - server.connected_at)}s)")    # %d's truncation


async def _cancel_exchange(address: str, pid: int, key: int) -> None:
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(cancel_request(pid, key))
        await reader.read()           # PostgreSQL sends nothing back and closes once the signal is sent
    finally:
        writer.close()


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
