"""`maitred pooler CONFIG.ini`: load the config, listen, serve until told to stop."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys

from . import control, endpoints, janitor, stats, watch
from .app import Pooler
from .config import ConfigError, load_config

log = logging.getLogger("maitred")


def setup_logging(logfile: str | None, quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    fmt = logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile))
    root = logging.getLogger()
    root.handlers = []
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)


def raise_fd_limit() -> None:
    """Each client and server is a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config) -> None:
    app = Pooler(config)
    await app.listen()
    http = await endpoints.start(app)
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
    log.info("process up: maitred pooler, pid %d", os.getpid())
    await app.stopped.wait()
    if http is not None:
        http.close()
    log.info("shutdown complete")


def run(path: str, quiet: bool = False, verbose: bool = False) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"maitred: {exc}", file=sys.stderr)
        return 1
    setup_logging(config.get("logfile"), quiet, verbose)
    for warning in config.warnings:
        log.warning("%s", warning)
    raise_fd_limit()
    pidfile = config.get("pidfile")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        import uvloop
        uvloop.run(serve(config))
    except (OSError, ConfigError) as exc:      # a port in use, an unusable TLS certificate, ...
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if pidfile and os.path.exists(pidfile):
            os.unlink(pidfile)
    return 0
