"""The time series of one run, read every fraction of a second in a thread of its own while pgbench runs:

- from every tier's admin console: the pool size in force (SHOW DATABASES) and the pool's clients and servers
  (SHOW POOLS), what the autotuner sees and changes; kept per tier, and summed over the tiers;
- from pg_stat_activity: every client backend, the budget's subject: a sample with more client backends than
  max_connections - superuser_reserved_connections - reserved_connections - headroom is a budget violation;
- the host's CPU use from /proc/stat (node-exporter's metric), and PostgreSQL's own share of the machine
  (the postmaster's process tree, as `pgcpu` exports it).

A reading that fails leaves its fields None and is retried on a fresh connection next time.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field

from maitred.local.postgres import SUPERUSER, SUPERUSER_PASSWORD
from pooler_operator.autotune.console import Console, ConsoleError

from . import pgcpu
from .background import Background

ACTIVITY_SQL = ("SELECT count(*) AS client_backends, count(*) FILTER (WHERE usename = '{user}') AS pooler_backends "
                "FROM pg_stat_activity WHERE backend_type = 'client backend'")
LIMITS_SQL = ("SELECT name, setting FROM pg_settings WHERE name IN "
              "('max_connections', 'superuser_reserved_connections', 'reserved_connections')")


CONSOLE_FIELDS = ("pool_size", "cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait_s")


@dataclass(frozen=True)
class Sample:
    t: float                          # Unix time
    pool_size: int | None = None      # default_pool_size in force, summed over the tiers (None: a tier unread)
    cl_active: int | None = None
    cl_waiting: int | None = None
    sv_active: int | None = None
    sv_idle: int | None = None
    maxwait_s: float | None = None
    client_backends: int | None = None   # every client backend of the server, the sampler's own included
    pooler_backends: int | None = None   # those of the pooler's login user
    cpu: float | None = None             # host CPU use since the previous sample, 0..1
    pg_cpu: float | None = None          # PostgreSQL's CPU use since the previous sample, share of all cores
    tiers: dict[str, dict] = field(default_factory=dict)   # tier -> its console's CONSOLE_FIELDS ({}: unread)


def over_tiers(tiers: dict[str, dict]) -> dict:
    """The flat console fields of a sample: sums over the tiers (maxwait the longest), None where a tier
    went unread, as a partial sum would look like a smaller pool."""
    out = {}
    for key in CONSOLE_FIELDS:
        values = [t.get(key) for t in tiers.values()]
        if values and None not in values:
            out[key] = max(values) if key == "maxwait_s" else sum(values)
    return out


def connection_limit(settings: dict[str, str], headroom: int) -> int:
    """The most client backends the budget allows in all: max_connections less the reserved slots and the
    headroom (poolers' connections plus everyone else's, as in the autotuner's formula)."""
    reserved = sum(int(settings.get(k, 0)) for k in ("superuser_reserved_connections", "reserved_connections"))
    return int(settings["max_connections"]) - reserved - headroom


def violations(samples: list[Sample], limit: int) -> int:
    """Samples that saw more client backends than `limit`."""
    return sum(1 for s in samples if s.client_backends is not None and s.client_backends > limit)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; idle and iowait count as not busy."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - fields[3] - fields[4], total


class Sampler(Background):
    """Samples every tier's pooler console and a PostgreSQL server until stopped; `samples` is the series read
    so far."""

    def __init__(self, *, consoles: dict[str, tuple[str, int, str, str]], postgres: tuple[str, int],
                 postmaster: int, database: str, pooler_user: str, every: float) -> None:
        self.consoles = consoles           # tier -> host, port, admin user, password
        self.postgres = postgres           # host, port (the superuser logs in)
        self.postmaster = postmaster
        self.database = database
        self.pooler_user = pooler_user
        self.every = every
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.settings: dict[str, str] = {}
        super().__init__("sampler")

    def loop(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        conns: dict[str, Console | None] = {**{tier: None for tier in self.consoles}, "postgres": None}
        cpu_before = cpu_times()
        pg_counter = pgcpu.CpuCounter(self.postmaster)
        pg_before = (time.monotonic(), pg_counter.read())
        cores = os.cpu_count() or 1
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                busy, total = cpu_times()
                values = {"cpu": (busy - cpu_before[0]) / (total - cpu_before[1]) if total > cpu_before[1] else None}
                cpu_before = (busy, total)
                try:
                    pg_now = (started, pg_counter.read())
                    values["pg_cpu"] = (pg_now[1] - pg_before[1]) / ((pg_now[0] - pg_before[0]) * cores)
                    pg_before = pg_now
                except OSError as exc:
                    self.errors.append(f"postgres cpu: {exc}")
                tiers = {tier: await self._read(tier, conns, self._read_console) for tier in self.consoles}
                values.update(over_tiers(tiers), tiers=tiers)
                values.update(await self._read("postgres", conns, self._read_activity))
                self.samples.append(Sample(t=time.time(), **values))
                await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))
        finally:
            for conn in conns.values():
                if conn is not None:
                    await conn.close()

    async def _read(self, which: str, conns: dict, reader) -> dict:
        try:
            if conns[which] is None:
                conns[which] = await self._connect(which)
            return await reader(conns[which])
        except (ConsoleError, OSError, asyncio.TimeoutError) as exc:
            self.errors.append(f"{which}: {type(exc).__name__}: {exc}")
            if conns[which] is not None:
                await conns[which].close()
            conns[which] = None
            return {}

    async def _connect(self, which: str) -> Console:
        """A tier's admin console, or PostgreSQL's `postgres` database (the same simple protocol)."""
        if which in self.consoles:
            host, port, user, password = self.consoles[which]
            return await Console.connect(host, port, user, password)
        host, port = self.postgres
        conn = await Console.connect(host, port, SUPERUSER, SUPERUSER_PASSWORD, database="postgres")
        if not self.settings:
            self.settings = {r["name"]: r["setting"] for r in await conn.query(LIMITS_SQL)}
        return conn

    async def _read_console(self, conn: Console) -> dict:
        dbs = [r for r in await conn.query("SHOW DATABASES") if r["name"] == self.database]
        pools = [r for r in await conn.query("SHOW POOLS") if r["database"] == self.database]
        out: dict = {"pool_size": int(dbs[0]["pool_size"]) if dbs else None}
        for key in ("cl_active", "cl_waiting", "sv_active", "sv_idle"):
            out[key] = sum(int(r[key]) for r in pools)
        out["maxwait_s"] = max((int(r["maxwait"]) + int(r.get("maxwait_us") or 0) / 1e6 for r in pools), default=0.0)
        return out

    async def _read_activity(self, conn: Console) -> dict:
        row = (await conn.query(ACTIVITY_SQL.format(user=self.pooler_user)))[0]
        return {"client_backends": int(row["client_backends"]), "pooler_backends": int(row["pooler_backends"])}


def as_dicts(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
