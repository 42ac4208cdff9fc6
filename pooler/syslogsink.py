"""PgBouncer's syslog, syslog_ident and syslog_facility: the log lines also go to the local syslog daemon, through
/dev/log, as syslog(3) sends them: `<priority>ident[pid]: message`, INFO and above, at the facility named.

The handler is logging's SysLogHandler, kept as the root logger's one handler of its kind and replaced when a
RELOAD or SET changes one of the three settings, as PgBouncer reopens syslog on reload. While it is there,
logsink's shortcut for the connection lines steps aside (route_lines), so those lines reach syslog too.
"""
from __future__ import annotations

import logging
import os
from logging.handlers import SysLogHandler

from . import logsink

ADDRESS = "/dev/log"        # syslog(3)'s
SETTINGS = ("syslog", "syslog_ident", "syslog_facility")
FACILITIES = ("auth", "authpriv", "daemon", "user") + tuple(f"local{n}" for n in range(8))

log = logging.getLogger("maitred")


class Handler(SysLogHandler):
    """syslog(3)'s datagram: no trailing NUL, and a line no daemon takes is dropped without a word, the next
    one trying to connect again."""

    append_nul = False

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class Line(logging.Formatter):
    """`ident[pid]: message`, with the pid of the process that logs (a worker's, not its supervisor's) and a
    line break followed by a tab, as PgBouncer's."""

    def __init__(self, ident: str) -> None:
        super().__init__()
        self.ident = ident

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.ident}[{os.getpid()}]: " + super().format(record).replace("\n", "\n\t")


def handler(config) -> Handler | None:
    """The syslog handler `config` asks for; None when syslog is off. An unknown facility is daemon, as in
    PgBouncer, with a warning."""
    if not config.get("syslog"):
        return None
    facility = config.get("syslog_facility")
    if facility not in FACILITIES:
        log.warning("unknown syslog_facility %r: using daemon", facility)
        facility = "daemon"
    found = Handler(ADDRESS, SysLogHandler.facility_names[facility])
    found.setLevel(logging.INFO)
    found.setFormatter(Line(config.get("syslog_ident")))
    return found


def apply(config) -> None:
    """Put the root logger's syslog handler in line with `config`: added, replaced or removed."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, Handler)]:
        root.removeHandler(old)
        old.close()
    new = handler(config)
    if new is not None:
        root.addHandler(new)
    logsink.route_lines(root.handlers)
