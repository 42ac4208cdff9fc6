"""SHOW STATS arithmetic, as PgBouncer's stats.c does it: totals per database, and averages per second.

Every stats_period the totals of each pool are kept (PgBouncer's newer_stats; the snapshot before that is
older_stats). An average is the change since the older snapshot over the time since it was taken, so it
covers between one and two periods and follows the work as it happens; a time average (xact, query, wait)
is the change in time over the change in its count. Before the first period the older snapshot is all
zeros, taken one second before start, as PgBouncer's is.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from .config import RESERVED_DATABASE
from .objects import Stats

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.stats")

USEC = 1_000_000

# Pool.stats counters in PgBouncer 1.25's SHOW STATS order; times become whole microseconds here.
FIELDS = ("assignments", "xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time",
          "query_time", "wait_time", "parse_count", "server_parse_count", "bind_count", "client_logins")
_TIME_OVER_COUNT = {FIELDS.index(t): FIELDS.index(c)
                    for t, c in (("xact_time", "xact_count"), ("query_time", "query_count"),
                                 ("wait_time", "assignments"))}
ZERO = (0,) * len(FIELDS)


def totals(stats: Stats) -> tuple[int, ...]:
    return tuple(int(getattr(stats, name) * USEC) if name.endswith("_time") else getattr(stats, name)
                 for name in FIELDS)


def averages(current: tuple[int, ...], older: tuple[int, ...], seconds: float) -> tuple[int, ...]:
    """Counts and bytes per second over `seconds`; times per transaction, query or assignment, in µs."""
    span = int(seconds * USEC)
    if span <= 0:
        return ZERO
    delta = [c - o for c, o in zip(current, older)]
    out = [USEC * d // span for d in delta]
    for time_index, count_index in _TIME_OVER_COUNT.items():
        count = delta[count_index]
        out[time_index] = delta[time_index] // count if count > 0 else 0
    return tuple(out)


def _add(rows) -> tuple[int, ...]:
    return tuple(sum(column) for column in zip(ZERO, *rows))


class Window:
    """One pooler's two latest snapshots and when they were taken, plus the console's own counters."""

    def __init__(self, now: float):
        self.new_stamp = now
        self.old_stamp = now - 1.0
        self.newer: dict[Stats, tuple[int, ...]] = {}
        self.older: dict[Stats, tuple[int, ...]] = {}
        self.console = Stats()      # the `pgbouncer` database: console logins and commands

    def rotate(self, now: float, pools: list[Stats]) -> None:
        self.old_stamp, self.new_stamp = self.new_stamp, now
        self.older, self.newer = self.newer, {stats: totals(stats) for stats in pools}


_windows: "weakref.WeakKeyDictionary[Pooler, Window]" = weakref.WeakKeyDictionary()


def window(app: "Pooler") -> Window:
    found = _windows.get(app)
    if found is None:
        found = _windows[app] = Window(app.now())
    return found


def _groups(app: "Pooler") -> dict[str, list[Stats]]:
    groups: dict[str, list[Stats]] = {}
    for pool in list(app.pools.values()):
        groups.setdefault(pool.name, []).append(pool.stats)
    groups.setdefault(RESERVED_DATABASE, []).append(window(app).console)
    return groups


def by_database(app: "Pooler") -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(database, totals, averages) for every database with a pool, and the console's, sorted by name."""
    win = window(app)
    seconds = app.now() - win.old_stamp
    rows = []
    for name, members in sorted(_groups(app).items()):
        current = _add(totals(s) for s in members)
        rows.append((name, current, averages(current, _add(win.older.get(s, ZERO) for s in members), seconds)))
    return rows


def overall(app: "Pooler") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Totals and averages over every database (SHOW TOTALS)."""
    win = window(app)
    members = [s for group in _groups(app).values() for s in group]
    current = _add(totals(s) for s in members)
    return current, averages(current, _add(win.older.get(s, ZERO) for s in members), app.now() - win.old_stamp)


def refresh(app: "Pooler") -> None:
    """Take this period's snapshot; with log_stats, log the period's averages as PgBouncer does."""
    win = window(app)
    win.rotate(app.now(), [s for group in _groups(app).values() for s in group])
    if app.config.get("log_stats"):
        avg = dict(zip(FIELDS, overall(app)[1]))
        log.info("stats: %d xacts/s, %d queries/s, %d client parses/s, %d server parses/s, %d binds/s, "
                 "in %d B/s, out %d B/s, xact %d us, query %d us, wait %d us",
                 avg["xact_count"], avg["query_count"], avg["parse_count"], avg["server_parse_count"],
                 avg["bind_count"], avg["bytes_received"], avg["bytes_sent"], avg["xact_time"],
                 avg["query_time"], avg["wait_time"])


async def run(app: "Pooler") -> None:
    window(app)
    while True:
        await asyncio.sleep(max(1, app.config.get("stats_period")))
        try:
            refresh(app)
        except Exception:  # a bug here must not stop the periods after it
            log.exception("stats period failed")
