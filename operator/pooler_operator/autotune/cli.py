"""`maitred autotune`: the autotuner outside Kubernetes, for PgBouncer-style fleets on VMs.

Each `--pooler` console is a tier of one process; every tier whose PostgreSQL is the same server shares its
budget. It speaks only PgBouncer's console, so it tunes PgBouncer as well as maitred. One line per decision,
one when a signal goes missing or comes back; SIGINT or SIGTERM ends it cleanly.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from datetime import datetime
from typing import TextIO
from urllib.parse import unquote, urlsplit

from typing import TYPE_CHECKING

from .model import PolicyParams

if TYPE_CHECKING:   # the loop pulls in asyncpg and requests: imported when `autotune` runs, not by every command
    from .loop import ConsoleTarget, TierReport, TierTarget

DEFAULT_CPU_QUERY = '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[1m]))'   # node-exporter's non-idle share
DEFAULT_INTERVAL = 10.0
DEFAULT_HEADROOM = 5
ADMIN_DATABASE = "pgbouncer"


def pooler_dsn(text: str) -> "ConsoleTarget":
    """postgresql://USER:PASSWORD@HOST:PORT/pgbouncer, an admin user of that pooler's console."""
    from .loop import ConsoleTarget

    url = urlsplit(text)
    if url.scheme not in ("postgresql", "postgres"):
        raise argparse.ArgumentTypeError(f"{text!r}: a pooler DSN is postgresql://USER:PASSWORD@HOST:PORT/pgbouncer")
    try:
        port = url.port or 6432
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number") from None
    if not url.hostname or not url.username:
        raise argparse.ArgumentTypeError(f"{text!r}: a pooler DSN names a user and a host")
    if unquote(url.path.lstrip("/")) != ADMIN_DATABASE:
        raise argparse.ArgumentTypeError(f"{text!r}: the database must be {ADMIN_DATABASE} (the admin console)")
    host = url.hostname
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ConsoleTarget(host, port, unquote(url.username),
                         unquote(url.password) if url.password is not None else None, label)


def postgres_dsn(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("postgresql", "postgres") or not (url.hostname or "host=" in url.query):
        raise argparse.ArgumentTypeError(f"{text!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
    return text


def prometheus_url(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: expected http(s)://HOST:PORT")
    return text.rstrip("/")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pooler", action="append", required=True, type=pooler_dsn, metavar="DSN",
                   help="a pooler's admin console, postgresql://USER:PASSWORD@HOST:PORT/pgbouncer (repeat)")
    p.add_argument("--postgres", required=True, type=postgres_dsn, metavar="DSN",
                   help="monitoring connection to PostgreSQL (reads pg_settings, pg_stat_activity)")
    p.add_argument("--prometheus", type=prometheus_url, metavar="URL",
                   help="Prometheus for the database host's CPU (without it, no CPU signal)")
    p.add_argument("--cpu-query", default=DEFAULT_CPU_QUERY, metavar="PROMQL",
                   help=f"PromQL for the CPU share, 0..1 (default: {DEFAULT_CPU_QUERY})")
    p.add_argument("--interval", type=positive_seconds, default=DEFAULT_INTERVAL, metavar="SECONDS",
                   help=f"seconds between ticks (default: {DEFAULT_INTERVAL:g})")
    p.add_argument("--min-pool-size", type=count(1), default=PolicyParams.min_pool_size, metavar="N",
                   help=f"smallest default_pool_size to set (default: {PolicyParams.min_pool_size})")
    p.add_argument("--max-pool-size", type=count(1), default=PolicyParams.max_pool_size, metavar="N",
                   help=f"largest default_pool_size to set (default: {PolicyParams.max_pool_size})")
    p.add_argument("--headroom", type=count(0), default=DEFAULT_HEADROOM, metavar="N",
                   help=f"connections of max_connections left to everyone else (default: {DEFAULT_HEADROOM})")
    p.add_argument("--dry-run", action="store_true", help="decide and print, change nothing")


def targets(args: argparse.Namespace) -> "list[TierTarget]":
    """One tier per --pooler; ValueError for arguments that do not fit together."""
    from .loop import PostgresTarget, PrometheusTarget, TierTarget

    labels = [c.label for c in args.pooler]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a pooler is given twice: {sorted({x for x in labels if labels.count(x) > 1})}")
    if args.min_pool_size > args.max_pool_size:
        raise ValueError(f"--min-pool-size {args.min_pool_size} is above --max-pool-size {args.max_pool_size}")
    params = PolicyParams(min_pool_size=args.min_pool_size, max_pool_size=args.max_pool_size)
    prometheus = PrometheusTarget(args.prometheus, args.cpu_query) if args.prometheus else None
    return [TierTarget(c.label, (c,), 1, PostgresTarget(args.postgres), prometheus, params, args.headroom,
                       args.dry_run) for c in args.pooler]


class Printer:
    """Prints a report when it changes a size or the policy's rule changes (a steady hold is said once), and a
    line when a signal goes missing or comes back (known by what its error names first: a console, cpu, ...)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.said: dict[str, str] = {}
        self.missing: dict[str, dict[str, str]] = {}

    def report(self, r: "TierReport") -> None:
        stamp = datetime.fromtimestamp(r.at).strftime("%H:%M:%S")
        now = {e.split(": ")[0]: e for e in r.errors}
        before = self.missing.get(r.tier, {})
        for key in now.keys() - before.keys():
            self._print(f"{stamp} {r.tier} missing: {now[key]}")
        for key in before.keys() - now.keys():
            self._print(f"{stamp} {r.tier} back: {key}")
        self.missing[r.tier] = now
        what = (r.from_size, r.to_size, r.decision.direction, r.decision.rule)   # not the reason's numbers
        if r.changed or self.said.get(r.tier) != repr(what):
            self._print(r.line())
        self.said[r.tier] = repr(what)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


async def loop(tiers: "list[TierTarget]", interval: float, out: TextIO, stop: asyncio.Event) -> None:
    from .loop import Autotuner

    tuner = Autotuner(timeout=min(5.0, max(2.0, interval)))
    printer = Printer(out)
    while not stop.is_set():
        started = time.monotonic()
        tick = asyncio.ensure_future(tuner.tick(tiers))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({tick, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not tick.done():
            tick.cancel()
            return
        for report in tick.result():
            printer.report(report)
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, interval - (time.monotonic() - started)))
        except asyncio.TimeoutError:
            pass


def run(args: argparse.Namespace) -> int:
    try:
        tiers = targets(args)
    except ValueError as exc:
        print(f"maitred autotune: error: {exc}", file=sys.stderr)
        return 2
    print(f"autotuning {len(tiers)} pooler{'s' if len(tiers) > 1 else ''} every {args.interval:g}s"
          f"{' (dry run)' if args.dry_run else ''}: {', '.join(t.tier for t in tiers)}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        await loop(tiers, args.interval, sys.stdout, stop)

    asyncio.run(main())
    print("stopped", flush=True)
    return 0
