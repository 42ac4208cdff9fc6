"""One autotuner tick, front-end agnostic: read every signal, decide per tier, budget per server, actuate.

The operator and `maitred autotune` both build TierTargets and call `Autotuner.tick`; neither sees a console
or a connection. A tick never raises for a bad signal: what went wrong is in the TierReport, and a tier whose
signals are missing holds (the policy says so) while the budget still counts it at the most it may hold.

Actuation order keeps the budget's promise while sizes move: every process that must shrink is told first,
and grows wait until those processes have closed what they no longer may hold (or until the next tick).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Sequence

from . import budget as budgeting
from . import policy
from .console import Console, ConsoleError, parse_server_pids, sample, set_settings
from .model import Allocation, DatabaseSample, Decision, Demand, History, PolicyParams, ProcessSample, TierSignals
from .signals import CpuReading, Totals, backends_left, read_cpu, read_database, tier_signals


@dataclass(frozen=True)
class ConsoleTarget:
    """One pooler process's admin console."""

    host: str
    port: int
    user: str
    password: str | None
    label: str      # shown to people, e.g. "shop/shop-pooler-7d9f/10.1.0.5:5432" or "127.0.0.1:6432"


@dataclass(frozen=True)
class PostgresTarget:
    """The monitoring connection to the PostgreSQL server (an asyncpg DSN)."""

    dsn: str


@dataclass(frozen=True)
class PrometheusTarget:
    url: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)   # token or basic auth already turned into headers

    def key(self) -> tuple:
        return (self.url, self.query, tuple(sorted(self.headers.items())))


@dataclass(frozen=True)
class TierTarget:
    """What one tick needs to know about one tier."""

    tier: str                               # "namespace/name" (operator) or the console label (CLI)
    consoles: tuple[ConsoleTarget, ...]     # every process the front end could find
    expected_processes: int                 # counted in the budget even when not found/reachable
    postgres: PostgresTarget
    prometheus: PrometheusTarget | None
    params: PolicyParams
    headroom: int
    dry_run: bool = False
    due: bool = True        # False: read and counted in the budget, but its own interval has not passed: it holds


@dataclass(frozen=True)
class TierReport:
    """The outcome of one tick for one tier; the front ends print or post it."""

    tier: str
    at: float
    signals: TierSignals | None
    decision: Decision
    allocation: Allocation | None
    budget: int | None
    server: str | None
    from_size: int | None
    to_size: int | None
    applied: bool
    errors: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.from_size is not None and self.to_size is not None and self.from_size != self.to_size

    def line(self) -> str:
        """One human line: time, tier, from -> to, reason, the signals seen."""
        stamp = datetime.fromtimestamp(self.at).strftime("%H:%M:%S")
        sizes = f"{_or_dash(self.from_size)} -> {_or_dash(self.to_size)}"
        reason = self.decision.reason
        if self.allocation is not None and self.allocation.limited and self.to_size is not None \
                and self.to_size < self.decision.size:
            reason += f" (budget: {self.to_size} of {self.decision.size} wanted)"
        if self.changed and not self.applied:
            reason += " [dry run]" if not self.errors else " [not applied]"
        return f"{stamp} {self.tier} {sizes} {reason} | {describe(self.signals, self.budget)}"


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def describe(signals: TierSignals | None, budget: int | None) -> str:
    """The signals of one tick, as key=value words."""
    if signals is None:
        return "no signals"
    words = [f"cl_waiting={signals.cl_waiting}", f"cl_active={signals.cl_active}",
             f"sv_active={signals.sv_active}", f"sv_idle={signals.sv_idle}", f"maxwait={signals.maxwait_s:.1f}s"]
    if signals.xact_per_s is not None:
        words.append(f"xact/s={signals.xact_per_s:.0f}")
    if signals.avg_xact_time_ms is not None:
        words.append(f"xact={signals.avg_xact_time_ms:.1f}ms")
    if signals.avg_wait_time_ms is not None:
        words.append(f"wait={signals.avg_wait_time_ms:.1f}ms")
    if signals.cpu is not None:
        words.append(f"cpu={signals.cpu:.2f}")
    if signals.backends_active:
        words.append(f"on_cpu={signals.backends_on_cpu}/{signals.backends_active}")
    if budget is not None:
        words.append(f"budget={budget}")
    if signals.reachable < signals.processes:
        words.append(f"processes={signals.reachable}/{signals.processes}")
    return " ".join(words)


@dataclass
class _Tier:
    """One tier's working state inside a tick."""

    target: TierTarget
    samples: list[ProcessSample]
    database: DatabaseSample
    signals: TierSignals | None = None
    decision: Decision | None = None
    demand: Demand | None = None
    allocation: Allocation | None = None
    budget: int | None = None
    server: str | None = None
    errors: list[str] = field(default_factory=list)
    from_size: int | None = None
    to_size: int | None = None
    applied: bool = False
    settings: dict[str, dict[str, int]] = field(default_factory=dict)   # console label -> SETs to send
    caps: dict[str, int] = field(default_factory=dict)                  # console label -> its new cap


class Autotuner:
    """Runs ticks; keeps what must survive between them: each tier's History, each console's last SHOW STATS
    totals (to difference), its last cap and server pids (to count it while it does not answer)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, timeout: float = 5.0):
        self.clock = clock
        self.timeout = timeout
        self.history: dict[str, History] = {}
        self.totals: dict[str, Totals] = {}
        self.caps: dict[str, int] = {}           # per process, by console
        self.workers: dict[str, int] = {}        # processes behind each console, as last reported
        self.pids: dict[str, frozenset[int]] = {}
        self.sizes: dict[str, int] = {}
        self.limited: dict[str, set[str]] = {}     # server -> tiers the budget limited last tick

    async def tick(self, tiers: Sequence[TierTarget]) -> list[TierReport]:
        at = self.clock()
        work = await self._read(tiers, at)
        servers: dict[str, list[_Tier]] = {}
        for t in work:
            self._decide(t)
            if t.database.error is None:
                servers.setdefault(t.database.system_identifier, []).append(t)
        for server, group in servers.items():
            self._allocate(server, group)
        await self._actuate(work)
        return [TierReport(t.target.tier, at, t.signals, t.decision, t.allocation, t.budget, t.server,
                           t.from_size, t.to_size, t.applied, tuple(dict.fromkeys(t.errors))) for t in work]

    # -- reading ---------------------------------------------------------------------------------------

    async def _read(self, tiers: Sequence[TierTarget], at: float) -> list[_Tier]:
        consoles = {c.label: c for t in tiers for c in t.consoles}
        dsns = list(dict.fromkeys(t.postgres.dsn for t in tiers))
        proms = {t.prometheus.key(): t.prometheus for t in tiers if t.prometheus is not None}
        console_reads = [self._sample(c) for c in consoles.values()]
        db_reads = [self._database(dsn) for dsn in dsns]
        cpu_reads = [read_cpu(p.url, p.query, p.headers, timeout=self.timeout, clock=self.clock)
                     for p in proms.values()]
        results = await asyncio.gather(*console_reads, *db_reads, *cpu_reads)
        samples = dict(zip(consoles, results[:len(consoles)]))
        dbs = dict(zip(dsns, results[len(consoles):len(consoles) + len(dsns)]))
        cpus: dict[tuple, CpuReading] = dict(zip(proms, results[len(consoles) + len(dsns):]))
        work = []
        for t in tiers:
            own = [samples[c.label] for c in t.consoles]
            cpu = cpus[t.prometheus.key()] if t.prometheus is not None else None
            tier = _Tier(t, own, dbs[t.postgres.dsn])
            tier.signals = tier_signals(own, self.totals, at, t.expected_processes, cpu, tier.database)
            tier.errors += [s.error for s in own if s.error]
            tier.errors += [f"{t.expected_processes - len(own)} of {t.expected_processes} processes not found"] \
                if len(own) < t.expected_processes else []
            tier.errors += [cpu.missing] if cpu is not None and cpu.missing else []
            tier.errors += [tier.database.error] if tier.database.error else []
            work.append(tier)
        for s in samples.values():
            if s.reachable:
                self.totals[s.endpoint] = Totals.of(s, at)
                self.pids[s.endpoint] = s.server_pids
                self.caps[s.endpoint] = _cap_in_force(s)
                self.workers[s.endpoint] = s.processes
        return work

    async def _sample(self, c: ConsoleTarget) -> ProcessSample:
        try:
            return await asyncio.wait_for(
                sample(c.host, c.port, c.user, c.password, timeout=self.timeout, endpoint=c.label), self.timeout)
        except asyncio.TimeoutError:
            return ProcessSample(endpoint=c.label, error=f"{c.label}: no answer within {self.timeout:g}s")

    async def _database(self, dsn: str) -> DatabaseSample:
        try:
            return await asyncio.wait_for(read_database(dsn, timeout=self.timeout), self.timeout * 2)
        except asyncio.TimeoutError:
            return DatabaseSample(error=f"postgres: no answer within {self.timeout * 2:g}s")

    # -- deciding --------------------------------------------------------------------------------------

    def _decide(self, t: _Tier) -> None:
        name = t.target.tier
        if t.signals is None:
            size = self.sizes.get(name)
            t.decision = Decision(size or 0, f"hold: {'; '.join(t.errors)}", "hold")
            return
        if not t.target.due:     # counted in the budget at the size it has; its policy waits for its interval
            t.decision = Decision(t.signals.pool_size, "hold: next decision at its own interval", "hold")
            self.sizes[name] = t.from_size = t.signals.pool_size
            return
        server = t.database.system_identifier
        contended = bool(self.limited.get(server, set()) - {name}) if server else False
        t.signals = replace(t.signals, contended=contended)
        history = self.history.get(name, History())
        t.decision = policy.decide(t.signals, history, t.target.params)
        self.history[name] = policy.remember(history, t.signals, t.decision, t.target.params)
        self.sizes[name] = t.signals.pool_size
        t.from_size = t.signals.pool_size

    def _allocate(self, server: str, group: list[_Tier]) -> None:
        """Share the server's budget among its tiers: every pooler pid seen on any console of the server is
        the poolers', and a process that did not answer keeps its last cap pinned."""
        pids: set[int] = set()
        for t in group:
            for c in t.target.consoles:
                pids |= self.pids.get(c.label, frozenset())
        headroom = max(t.target.headroom for t in group)
        budget = budgeting.server_budget(group[0].database, frozenset(pids), headroom)
        demands = []
        for t in group:
            pinned = sum(self.caps.get(s.endpoint, 0) * self._workers(s) for s in t.samples if not s.reachable)
            known = t.signals.pool_size if t.signals else self.sizes.get(t.target.tier, 0)
            processes = sum(self._workers(s) for s in t.samples)
            t.demand = Demand(t.target.tier, processes=max(t.target.expected_processes, processes),
                              pools=t.signals.pools if t.signals else 1,
                              wanted=t.decision.size if t.signals else known,
                              floor=t.target.params.min_pool_size, pinned=pinned)
            demands.append(t.demand)
        allocations = budgeting.allocate(demands, budget)
        self.limited[server] = {tier for tier, a in allocations.items() if a.limited}
        for t in group:
            t.allocation, t.budget, t.server = allocations[t.target.tier], budget, server
            if t.signals is None:
                continue
            t.to_size = max(1, t.allocation.pool_size)     # 0 would mean "unlimited" to a pooler
            if t.allocation.pool_size < 1:
                t.errors.append(f"budget {budget} leaves nothing for {t.target.tier}: holding at 1")
            cap = max(1, t.allocation.per_process_cap)
            for s in t.samples:
                if s.reachable:
                    t.settings[s.endpoint] = _settings(s, t.to_size, cap)
                    t.caps[s.endpoint] = cap

    # -- actuating -------------------------------------------------------------------------------------

    async def _actuate(self, work: list[_Tier]) -> None:
        """Shrinks first, everywhere; grows once the shrunk processes are within their new caps."""
        consoles = {c.label: c for t in work for c in t.target.consoles}
        live = [t for t in work if not t.target.dry_run]
        shrinking = {label: v for t in live for label, v in t.settings.items() if v and _shrinks(t, label)}
        growing = {label: v for t in live for label, v in t.settings.items() if v and label not in shrinking}
        failures = await self._send(consoles, shrinking)
        if growing and shrinking:     # a shrink that failed or has not closed its surplus yet holds every grow
            shrunk = {s.endpoint: (t.caps[s.endpoint] * self._workers(s), self.pids.get(s.endpoint, frozenset()), t.target.postgres.dsn)
                      for t in live for s in t.samples if s.endpoint in shrinking and s.endpoint not in failures}
            late = [label for label in shrinking if label in failures] + await self._settle(consoles, shrunk)
            if late:
                failures.update({label: f"grow deferred: {', '.join(late)} not yet within its new cap"
                                 for label in growing})
                growing = {}
        failures.update(await self._send(consoles, growing))
        for t in work:
            t.errors += [failures[label] for label in t.settings if label in failures]
            if not t.target.dry_run:
                self.caps.update({label: cap for label, cap in t.caps.items() if label not in failures})
            t.applied = not t.target.dry_run and any(t.settings.values()) and \
                not any(label in failures for label in t.settings)

    def _workers(self, s: ProcessSample) -> int:
        """Processes behind a console; one that does not answer counts as many as it last reported."""
        return s.processes if s.reachable else self.workers.get(s.endpoint, 1)

    async def _send(self, consoles: dict[str, ConsoleTarget], settings: dict[str, dict[str, int]]) -> dict[str, str]:
        async def one(label: str, values: dict[str, int]) -> str | None:
            c = consoles[label]
            try:
                await asyncio.wait_for(set_settings(c.host, c.port, c.user, c.password, values,
                                                    timeout=self.timeout), self.timeout)
            except ConsoleError as exc:
                return f"SET failed: {exc}"
            except asyncio.TimeoutError:
                return f"SET failed: {label}: no answer within {self.timeout:g}s"
            return None

        labels = [label for label, values in settings.items() if values]
        results = await asyncio.gather(*(one(label, settings[label]) for label in labels))
        return {label: error for label, error in zip(labels, results) if error is not None}

    async def _settle(self, consoles: dict[str, ConsoleTarget], shrunk: dict[str, tuple[int, frozenset[int], str]]
                      ) -> list[str]:
        """Wait (up to the timeout) until each shrunk console's processes hold no more servers than their caps and the
        backends it let go have left PostgreSQL; the processes that did not get there."""
        async def settled(label: str, cap: int, before: frozenset[int], dsn: str) -> bool:
            c = consoles[label]
            try:
                async with await Console.connect(c.host, c.port, c.user, c.password,
                                                 timeout=self.timeout) as con:
                    rows = await con.query("SHOW SERVERS")
            except ConsoleError:
                return False
            if len(rows) > cap:
                return False
            gone = before - parse_server_pids(rows)
            left = await backends_left(dsn, gone, timeout=self.timeout) if gone else frozenset()
            return left is not None and not left

        deadline = time.monotonic() + self.timeout
        pending = dict(shrunk)
        while pending and time.monotonic() < deadline:
            done = await asyncio.gather(*(settled(label, *v) for label, v in pending.items()))
            pending = {label: v for (label, v), ok in zip(pending.items(), done) if not ok}
            if pending:
                await asyncio.sleep(0.05)
        return list(pending)


def _databases(s: ProcessSample) -> int:
    return max(1, len({p.database for p in s.pools}))


def _cap_in_force(s: ProcessSample) -> int:
    """The most server connections this process may open now, as its settings say."""
    by_size = ((s.default_pool_size or 0) + s.reserve_pool_size) * max(1, len(s.pools))
    if s.max_db_connections:
        return min(by_size, s.max_db_connections * _databases(s)) if s.default_pool_size else \
            s.max_db_connections * _databases(s)
    return by_size


def _settings(s: ProcessSample, size: int, cap: int) -> dict[str, int]:
    """The SETs that bring one process to `size` under a per-process `cap`, shared among its databases (a
    process may open the smaller of the two, so any order of the SETs stays within old or new limits)."""
    per_db = max(1, cap // _databases(s))
    out: dict[str, int] = {}
    if s.max_db_connections != per_db:
        out["max_db_connections"] = per_db
    if s.default_pool_size != size:
        out["default_pool_size"] = size
    return out


def _shrinks(t: _Tier, label: str) -> bool:
    s = next(x for x in t.samples if x.endpoint == label)
    values = t.settings[label]
    cap = values.get("max_db_connections")
    return (values.get("default_pool_size", s.default_pool_size) or 0) < (s.default_pool_size or 0) or \
        (cap is not None and (s.max_db_connections == 0 or cap < s.max_db_connections))
