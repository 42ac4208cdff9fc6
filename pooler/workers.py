"""`[maitred] workers = N`: one supervising process and N pooler processes sharing the port.

The supervisor binds the Unix socket once (every worker inherits it and accepts on it), forks the workers, and
does nothing else but pass signals on and replace a worker that dies. Each worker binds the TCP port itself with
SO_REUSEPORT, so the kernel spreads connections over them, and is a peer of the others (peers.py): worker k
gives out cancel keys with peer id `peer_id + k - 1` (peer_id 0 counts as 1) and listens on a socket of its own
in a private run directory, where its siblings forward the cancels meant for it and ask it console commands
(siblings.py). A cancel for a peer id outside its own range goes to `[peers]`, as with one process.

A worker that exits 0 was told to stop (SHUTDOWN, SIGTERM): it is not replaced, and once one has, none is. A
worker that cannot start (exit 1: a port in use, a bad certificate) stops the whole pooler, since its
replacement would fail alike. Any other end (a crash, SIGKILL, the OOM killer) is replaced at once, or after
RESTART_DELAY when the worker had not lived that long. The new worker runs the settings the others run (with what
SET changed, such as the autotuner's pool sizes), which they keep in the run directory (RUNNING_SETTINGS).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from . import logsink, sockopts, systemd
from .config import Config, ConfigError, PeerEntry, load_config
from .settings import MAITRED_SETTINGS, SETTINGS

log = logging.getLogger("maitred")

CANNOT_START = 1
RESTART_DELAY = 1.0
RUNNING_SETTINGS = "running-settings.json"      # in the run directory (Worker.keep_running_settings)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@dataclass
class Worker:
    """What a worker process knows of the others: its number, how many they are, where each listens."""

    index: int                                 # 1..count
    count: int
    run_dir: str
    unix_socket: socket.socket | None = None   # the shared Unix socket, bound by the supervisor
    first_peer_id: int = 1                     # worker k has peer id first_peer_id + k - 1

    @property
    def peer_id(self) -> int:
        return self.first_peer_id + self.index - 1

    def socket_path(self, index: int, port: int) -> str:
        return os.path.join(self.run_dir, str(index), f".s.PGSQL.{port}")

    def http_path(self, index: int) -> str:
        return os.path.join(self.run_dir, str(index), "http")

    def peer(self, peer_id: int, port: int) -> PeerEntry | None:
        """The worker with that peer id, reached on its socket in the run directory; None for another's id."""
        index = peer_id - self.first_peer_id + 1
        if not 1 <= index <= self.count:
            return None
        return PeerEntry(peer_id=peer_id, host=os.path.join(self.run_dir, str(index)), port=port)

    def siblings(self) -> list[int]:
        return [k for k in range(1, self.count + 1) if k != self.index]

    def sibling_peers(self, port: int) -> list[PeerEntry]:
        return [self.peer(self.first_peer_id + k - 1, port) for k in self.siblings()]

    def keep_running_settings(self, config: Config) -> None:
        """Leave the reloadable settings this worker runs (at its start, and after each RELOAD, SIGHUP, config
        watch or SET, which every worker applies alike) where the supervisor reads them for a worker it starts
        in place of a dead one. Plain values in JSON, which the supervisor checks against the catalogue: it may
        run as root, the workers as `user`. Written to a file of this worker's, then renamed over the shared
        one, so that a reader never sees half of it."""
        running = {name: config.get(name) for name in _RELOADABLE}
        path = os.path.join(self.run_dir, RUNNING_SETTINGS)
        own = f"{path}.{self.index}"
        try:
            with open(own, "w") as f:
                json.dump(running, f)
            os.replace(own, path)
        except OSError as exc:
            log.warning("worker %d: running settings not kept for a replacement worker: %s", self.index, exc)


_RELOADABLE = {name: s for catalogue in (SETTINGS, MAITRED_SETTINGS) for name, s in catalogue.items() if s.reloadable}
_FIXED = tuple(name for catalogue in (SETTINGS, MAITRED_SETTINGS) for name, s in catalogue.items() if not s.reloadable)
_JSON_TYPES = {"int": int, "float_seconds": (int, float), "bool": bool, "enum": str, "str": str, "path": str,
               "list": list}


def with_running_settings(config: Config, running: dict) -> list[str]:
    """Put the workers' running settings (as keep_running_settings wrote them) into `config`, which the file
    gave; the names of those that differ. A name or value that is not a reloadable setting's is left out."""
    changed = []
    for name, value in running.items():
        setting = _RELOADABLE.get(name)
        if setting is None or not isinstance(value, _JSON_TYPES[setting.kind]) or \
                (setting.kind == "int" and isinstance(value, bool)):
            continue
        if setting.kind == "list":
            value = tuple(str(item) for item in value)
        if config.get(name) != value:
            config.set(name, value)
            changed.append(name)
    return changed


def bind_unix_socket(config: Config) -> socket.socket | None:
    """The pooler's Unix socket, as Pooler.listen makes it, bound once for all workers."""
    sock_dir = config.get("unix_socket_dir")
    if not sock_dir:
        return None
    path = os.path.join(sock_dir, f".s.PGSQL.{config.get('listen_port')}")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sockopts.unix_socket_access(path, config)
    sock.listen(config.get("listen_backlog"))
    log.info("listening on unix:%s (shared by %d workers)", path, config.get("workers"))
    return sock


def make_run_dir(count: int, user: str) -> str:
    """A private directory with one folder per worker, for the sockets only the workers use."""
    run_dir = tempfile.mkdtemp(prefix="maitred-workers-")
    for index in range(1, count + 1):
        os.mkdir(os.path.join(run_dir, str(index)), 0o700)
    if user and os.geteuid() == 0:        # the workers switch to `user` (-u) and must still reach each other
        account = pwd.getpwnam(user)
        for folder in [run_dir] + [os.path.join(run_dir, str(k)) for k in range(1, count + 1)]:
            os.chown(folder, account.pw_uid, account.pw_gid)
    return run_dir


class Supervisor:
    """Starts the workers, replaces those that die, passes signals on; `run` returns the exit status."""

    def __init__(self, config: Config, user: str, work: Callable[[Worker, Config], int]):
        self.config = config
        self.latest = config        # the config file as last read (SIGHUP, a new worker)
        self.count = config.get("workers")
        self.work = work
        self.run_dir = make_run_dir(self.count, user)
        self.unix_socket = bind_unix_socket(config)
        self.children: dict[int, tuple[int, float]] = {}    # pid: (worker index, start time)
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        for signum in FORWARDED:
            signal.signal(signum, self._signal)
        try:
            for index in range(1, self.count + 1):
                self._start(index)
            log.info("process up: maitred pooler supervisor, pid %d, %d workers", os.getpid(), self.count)
            systemd.notify_ready()      # from the main process, the only one systemd listens to by default
            while self.children:
                pid, wait_status = os.wait()
                index, started = self.children.pop(pid, (0, 0.0))
                if index:
                    self._ended(index, started, wait_status)
        finally:
            if self.unix_socket is not None:
                self.unix_socket.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        log.info("all workers stopped")
        return self.status

    def _start(self, index: int, replacing: bool = False) -> None:
        worker = Worker(index, self.count, self.run_dir, self.unix_socket, self.config.get("peer_id") or 1)
        config = self._replacement_config() if replacing else self.latest
        pid = os.fork()
        if pid == 0:
            for signum in FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            status = 70
            try:
                status = self.work(worker, config)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        self.children[pid] = (index, time.monotonic())
        log.info("worker %d started, pid %d", index, pid)

    def _ended(self, index: int, started: float, wait_status: int) -> None:
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if code == 0 or self.stopping:
            log.info("worker %d stopped (%s)", index, how)
            self._stop()
            return
        if code == CANNOT_START:
            log.error("worker %d could not start: stopping the pooler", index)
            self.status = CANNOT_START
            self._stop(signal.SIGQUIT)
            return
        log.warning("worker %d died (%s): starting another", index, how)
        if time.monotonic() - started < RESTART_DELAY:
            time.sleep(RESTART_DELAY)
        if not self.stopping:
            self._start(index, replacing=True)

    def _signal(self, signum: int, _frame) -> None:
        if signum in STOPPING:
            self.stopping = True
            self._close_unix_socket()
        if signum == signal.SIGHUP:
            self._reopen_logfile()
        self._send(signum)

    def _reopen_logfile(self) -> None:
        """SIGHUP: the workers reload the config and reopen their logfile, and the supervisor's own lines follow
        them, to a new file of the same name after logrotate, or to a new `logfile`. A config that does not load
        leaves the path as it was: the workers keep their config too, and say why."""
        logsink.reopen_logfile(self._config_now(quiet=True).get("logfile"))

    def _replacement_config(self) -> Config:
        """What a worker started in place of a dead one runs: the settings the other workers run (those that
        need a restart as the pooler started), and the databases, users and peers of the config file as it is
        now (what the others serve since their last RELOAD, SIGHUP or config watch, unless the file was changed
        since without one)."""
        config = copy.deepcopy(self._config_now())
        for name in _FIXED:      # what cannot change without a restart, as the others started
            config.set(name, self.config.get(name))
        try:
            with open(os.path.join(self.run_dir, RUNNING_SETTINGS)) as f:
                running = json.load(f)
        except (OSError, ValueError) as exc:
            log.warning("the workers' running settings not read, the new worker takes the file's: %s", exc)
            return config
        changed = with_running_settings(config, running if isinstance(running, dict) else {})
        if changed:
            log.info("the new worker runs the other workers' %s, not the file's", ", ".join(sorted(changed)))
        return config

    def _config_now(self, quiet: bool = False) -> Config:
        """The config file as it is now; when it no longer loads, the last one that did, as the workers keep
        theirs."""
        try:
            self.latest = load_config(self.config.path)
        except (ConfigError, OSError) as exc:
            if not quiet:
                log.warning("config file not read, the new worker starts with the one read before: %s", exc)
        return self.latest

    def _stop(self, signum: int | None = None) -> None:
        """No more workers; the supervisor's copy of the Unix socket goes, so it stops taking connections."""
        self.stopping = True
        self._close_unix_socket()
        if signum is not None:
            self._send(signum)

    def _close_unix_socket(self) -> None:
        if self.unix_socket is not None:
            self.unix_socket.close()
            self.unix_socket = None

    def _send(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
