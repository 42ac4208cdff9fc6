"""Plain values shared by the autotuner's signals, policy, budget and actuation.

A *tier* is what one pool size is decided for: one PostgresPooler (all its pods and worker processes), or one
`--pooler` console of `maitred autotune`. A *process* is one pooler process with its own console; every
process of a tier runs the same `default_pool_size`. Sizes are per (database, user) pool per process, as in
PgBouncer; connection counts are server connections to PostgreSQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PoolSample:
    """One (database, user) pool of one process, from SHOW POOLS."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int = 0
    sv_login: int = 0
    maxwait_s: float = 0.0


@dataclass(frozen=True)
class ProcessSample:
    """What one pooler process reported this tick; `error` set (and the rest empty) when it did not answer."""

    endpoint: str                      # host:port of its console, as shown to people
    error: str | None = None
    pools: tuple[PoolSample, ...] = ()
    default_pool_size: int | None = None
    max_db_connections: int | None = None   # 0 = unlimited, as in PgBouncer
    reserve_pool_size: int = 0
    # SHOW STATS summed over databases, cumulative since the process started (differenced by the loop).
    xact_count: int = 0
    xact_time_us: int = 0
    query_count: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    server_pids: frozenset[int] = frozenset()   # remote_pid of every server connection (SHOW SERVERS)
    # Worker processes behind this console (maitred's `workers`; 1 for PgBouncer): one console answers for all
    # of them, its SHOW rows summed, and each holds `default_pool_size` per pool on its own.
    processes: int = 1

    @property
    def reachable(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class DatabaseSample:
    """One PostgreSQL server as pg_settings / pg_stat_activity show it; `error` set when unreachable."""

    error: str | None = None
    system_identifier: str | None = None     # the same server, however it is addressed
    max_connections: int = 0
    superuser_reserved_connections: int = 0
    reserved_connections: int = 0            # PostgreSQL 16+, else 0
    backend_pids: frozenset[int] = frozenset()   # client backends (pg_stat_activity backend_type = client backend)
    by_state: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)       # client backends per role
    by_database: dict[str, int] = field(default_factory=dict)   # client backends per database
    active_pids: frozenset[int] = frozenset()   # client backends running a query (state = active)
    on_cpu_pids: frozenset[int] = frozenset()   # ... and waiting on nothing (no wait_event): on the CPU or queued for it


@dataclass(frozen=True)
class TierSignals:
    """Everything the policy sees about one tier in one tick; derived by the loop from raw samples.

    Rates are over the last tick (cumulative SHOW STATS differenced); None when not known yet (first tick, a
    process restarted, or no transaction ran). `missing` names every signal that is absent or nonsensical:
    a non-empty tuple means the policy must not grow.
    """

    processes: int                   # processes the tier has (reachable or not)
    reachable: int                   # processes that answered
    pool_size: int                   # default_pool_size in force now (per pool per process)
    pools: int                       # (database, user) pools per process, at least 1
    cl_waiting: int
    cl_active: int
    sv_active: int
    sv_idle: int
    maxwait_s: float
    xact_per_s: float | None
    avg_xact_time_ms: float | None   # server time per transaction
    avg_wait_time_ms: float | None   # client wait per transaction
    cpu: float | None                # database host CPU use, 0..1; None when Prometheus is not configured
    missing: tuple[str, ...] = ()
    contended: bool = False          # other tiers of the same server were budget-limited last tick
    backends_active: int | None = None   # this tier's server backends PostgreSQL shows running a query
    backends_on_cpu: int | None = None   # ... of them on the CPU (no wait event); None: PostgreSQL not read


@dataclass(frozen=True)
class PolicyParams:
    """The spec's bounds and the policy's knobs."""

    min_pool_size: int = 5
    max_pool_size: int = 100
    cpu_high: float = 0.85           # at or above: hold, then shrink
    cpu_low: float = 0.70            # below: growth allowed
    cooldown_ticks: int = 1          # ticks after a change before the next change in the other direction
    max_step_factor: float = 2.0     # with no CPU signal, growth is at most x2 per tick
    idle_shrink_ticks: int = 3       # ticks with idle servers and no waiting before a shrink
    shrink_factor: float = 0.75      # an uncontended shrink keeps at least this share of the size per tick
    idle_margin: float = 0.25        # spare servers kept above the recent peak of sv_active
    latency_tolerance: float = 2.0   # server time per transaction at this multiple of the baseline is queueing
    throughput_gain: float = 0.10    # ... unless throughput rose by more than this share with the last growth
    ceiling_ticks: int = 120         # a congestion ceiling lasts this long while clients keep waiting


@dataclass(frozen=True)
class History:
    """What the policy remembers between ticks: recent signals and decisions, newest last. Plain data, so the
    loop can keep it in memory and rebuild it empty after a restart without harm."""

    signals: tuple[TierSignals, ...] = ()
    decisions: tuple["Decision", ...] = ()
    baseline_xact_ms: float | None = None    # lowest recent server time per transaction (the no-queue latency)
    ceiling: int | None = None               # the size congestion last shrank from: growth stays below it
    ceiling_age: int = 0                     # ticks since then


@dataclass(frozen=True)
class Decision:
    """The policy's answer: the size it wants (before the budget) and one line why."""

    size: int
    reason: str          # e.g. "grow: 12 clients waiting, cpu 0.41", "hold: cpu signal missing"
    direction: str       # "grow", "shrink" or "hold"
    rule: str = ""       # the rule that decided, for the history and for tests: one of policy.RULES


@dataclass(frozen=True)
class Demand:
    """One tier's claim on its server's budget, in server connections."""

    tier: str
    processes: int       # counted at the most it may have: desired replicas x workers, unreachable ones included
    pools: int           # connections one process may open per unit of pool size (databases x users), >= 1
    wanted: int          # pool size the policy wants
    floor: int           # min pool size from the spec
    pinned: int = 0      # connections its unreachable processes may hold at their last cap: no decision can
                         # take them back, so they are reserved before anything is shared


@dataclass(frozen=True)
class Allocation:
    """One tier's share: the pool size to set and the per-process cap of server connections."""

    tier: str
    pool_size: int       # default_pool_size to set (<= the policy's wish)
    per_process_cap: int # max server connections one process may open (max_db_connections when one database)
    connections: int     # per_process_cap x processes: what this tier may open in all
    limited: bool        # True when the budget, not the policy, set pool_size
