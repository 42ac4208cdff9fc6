"""`maitred pooler CONFIG.ini`: load the config, listen, serve until told to stop.

The switches are PgBouncer's (-d, -u, -q, -v), so a systemd unit or init script written for pgbouncer runs
unchanged: -d detaches once the config is read, -u switches user once the sockets are bound.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import resource
import signal
import sys
from dataclasses import dataclass

from . import compiled, control, endpoints, janitor, logsink, stats, syslogsink, systemd, watch
from .app import Pooler
from .config import ConfigError, load_config
from .workers import CANNOT_START, Supervisor, Worker

log = logging.getLogger("maitred")


@dataclass(frozen=True)
class Switches:
    """The command line beside the config file, as PgBouncer's."""

    daemon: bool = False      # -d: detach; needs pidfile and logfile
    user: str = ""            # -u: the Unix user to switch to; else the config's `user`
    quiet: bool = False       # -q: nothing on stderr (the logfile still gets everything)
    verbose: int = 0          # -v, repeatable: debug messages


def setup_logging(logfile: str | None, quiet: bool, verbose: int) -> None:
    level = logsink.level_for(verbose)
    logsink.use_cheap_records()
    fmt = logsink.Formatter()
    handlers: list[logging.Handler] = [] if quiet else [logsink.BatchHandler(sys.stderr)]
    if logfile:
        handlers.append(logsink.file_handler(logfile))
    if not handlers:        # -q without a logfile: nothing anywhere, not even logging's last-resort stderr
        handlers.append(logging.NullHandler())
    root = logging.getLogger()
    root.handlers = []
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)
    logsink.route_lines(handlers)


def raise_fd_limit() -> None:
    """Each client and server is a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def daemon_refusal(config) -> str | None:
    """Why -d cannot detach with this config: PgBouncer's rule, a pidfile and somewhere to log."""
    missing = [name for name in ("pidfile", "logfile") if not config.get(name)]
    return f"-d needs {' and '.join(missing)} set in the config" if missing else None


def running_pid(pidfile: str) -> int | None:
    """The live process a pidfile names; a stale pidfile counts as none."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def detach() -> None:
    """Fork twice around setsid, stdio to /dev/null, as PgBouncer's -d; the caller is the daemon."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)


def change_user(name: str) -> None:
    """Become `name` (its groups too); allowed when started as root or already running as that user."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise OSError(f"cannot switch to user {name}: no such user") from None
    if os.getuid() == account.pw_uid:
        return
    if os.geteuid() != 0:
        raise OSError(f"cannot switch to user {name}: only root may")
    os.initgroups(name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    log.info("switched to user %s", name)


async def serve(config, user: str = "", worker: Worker | None = None) -> None:
    app = Pooler(config, worker)
    if worker is not None:
        worker.keep_running_settings(config)
    await app.listen()
    http = await endpoints.start(app)
    if user:
        change_user(user)
    if worker is not None:          # after change_user, which would clear it
        die_with_parent()
    app.spawn(janitor.run(app))
    app.spawn(stats.run(app))
    app.spawn(watch.run(app))
    loop = asyncio.get_running_loop()
    # PgBouncer's signals: TERM waits for clients, INT for servers, either during a shutdown and QUIT stop at once.
    loop.add_signal_handler(signal.SIGTERM, control.signal_shutdown, app, "wait_for_clients")
    loop.add_signal_handler(signal.SIGINT, control.signal_shutdown, app, "wait_for_servers")
    loop.add_signal_handler(signal.SIGQUIT, control.shutdown, app, "immediate")
    loop.add_signal_handler(signal.SIGHUP, watch.reload_and_log, app, "SIGHUP")
    loop.add_signal_handler(signal.SIGUSR1, lambda: app.spawn(control.pause(app, None)))
    loop.add_signal_handler(signal.SIGUSR2, control.resume, app, None)
    if worker is None:
        log.info("process up: maitred pooler, pid %d, %s", os.getpid(), compiled.describe())
        systemd.notify_ready()
    await app.stopped.wait()
    for server in http:
        server.close()
    log.info("shutdown complete")


def run(path: str, switches: Switches = Switches()) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"maitred: {exc}", file=sys.stderr)
        return 1
    pidfile = config.get("pidfile")
    refusal = daemon_refusal(config) if switches.daemon else None
    if refusal is None and pidfile and running_pid(pidfile):
        refusal = f"pidfile {pidfile} names running process {running_pid(pidfile)}: another pooler is running?"
    if refusal:
        print(f"maitred: {refusal}", file=sys.stderr)
        return 1
    if switches.daemon:
        detach()
    # -v and the `verbose` setting are one knob, as in PgBouncer: the switch adds to the file's value.
    setup_logging(config.get("logfile"), switches.quiet or switches.daemon, switches.verbose + config.get("verbose"))
    syslogsink.apply(config)
    for warning in config.warnings:
        log.warning("%s", warning)
    raise_fd_limit()
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    user = switches.user or config.get("user")
    try:
        if config.get("workers") > 1:
            return Supervisor(config, user, lambda worker, given: serve_process(given, user, worker)).run()
        return serve_process(config, user)
    except OSError as exc:         # the supervisor could not bind the Unix socket
        log.error("cannot start: %s", exc)
        return CANNOT_START
    finally:
        _remove(pidfile)


def serve_process(config, user: str, worker: Worker | None = None) -> int:
    """Run one pooler process (the only one, or a worker) until it stops; 1 when it could not start."""
    try:
        import uvloop
        uvloop.run(serve(config, user, worker))
    except (OSError, ConfigError) as exc:      # a port in use, an unusable TLS certificate, ...
        log.error("cannot start: %s", exc)
        return CANNOT_START
    return 0


def die_with_parent() -> None:
    """A worker gets SIGTERM (a drain) when its supervisor is gone, however it went (Linux's PR_SET_PDEATHSIG);
    and it leaves the terminal's process group, so that Ctrl-C reaches it once, through the supervisor."""
    os.setpgid(0, 0)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _remove(pidfile: str) -> None:
    """Remove the pidfile at exit; after -u its folder may no longer be writable, as with PgBouncer."""
    try:
        if pidfile and os.path.exists(pidfile):
            os.unlink(pidfile)
    except OSError as exc:
        log.warning("cannot remove pidfile: %s", exc)
