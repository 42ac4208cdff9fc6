"""Watch the config file and apply it when it changes, with no signal needed (`[maitred] config_watch`).

A Kubernetes ConfigMap volume swaps a `..data` symlink rather than writing the file, so the watch compares
the resolved path as well as the inode, size and modification time, and polls: inotify on the old target
would never fire.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from . import control
from .config import ConfigError

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.watch")

PERIOD = 0.5


def fingerprint(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns


def reload_and_log(app: "Pooler", why: str) -> None:
    log.info("reloading config (%s)", why)
    try:
        control.reload(app)
    except ConfigError as exc:
        log.error("config not applied, keeping the running one: %s", exc)


async def run(app: "Pooler") -> None:
    path = app.config.path
    seen = fingerprint(path)
    while True:
        await asyncio.sleep(PERIOD)
        if not app.config.get("config_watch"):
            continue
        current = fingerprint(path)
        if current is not None and current != seen:
            seen = current
            reload_and_log(app, f"{path} changed")
