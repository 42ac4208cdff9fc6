"""The workload: phases whose best fixed pool size differs, tiers whose demand moves, and the fixed sizes the
sweep tries.

- io-wait: many clients, each transaction a short wait on something other than CPU (`pg_sleep`, as a lock or
  a slow disk would), so throughput grows with every server connection the pool may open.
- cpu: the same clients, each transaction tens of ms of pure CPU (an md5 aggregate that stays in memory: no
  temp files, no parallel workers), so past the core count more connections only share the same cores.
- idle: no client at all; a tuned pool should give its connections back.

Two tiers (the default) are two poolers in front of one PostgreSQL, sharing its max_connections: "app" waits
on I/O, then burns CPU while "reports" starts waiting on I/O. One fixed size for every tier either starves
the tier that waits or, summed over the tiers, breaks the budget; that sharing is what the autotuner is for.
With one tier a fixed size equal to the whole budget is as good as any autotuner.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """What one tier's clients run during a phase: one statement per transaction."""

    tier: str
    sql: str
    clients: int

    def script(self, folder: str) -> str:
        """Write this load's pgbench script into `folder` (one file per tier); its path."""
        path = os.path.join(folder, f"{self.tier}.sql")
        with open(path, "w") as f:
            f.write(self.sql + ";\n")
        return path


@dataclass(frozen=True)
class Phase:
    name: str
    loads: tuple[Load, ...]   # at most one per tier, all at the same time; none: every tier idles
    seconds: int

    def load(self, tier: str) -> Load | None:
        return next((x for x in self.loads if x.tier == tier), None)


@dataclass(frozen=True)
class Plan:
    """Everything a benchmark run is made of; FULL and QUICK are the shapes, options override fields."""

    tiers: tuple[str, ...]         # one pooler process each, all in front of the same PostgreSQL
    phases: tuple[Phase, ...]
    sizes: tuple[int, ...]         # fixed default_pool_size values of the sweep, the same for every tier
    rounds: int = 1
    threads: int = 2               # pgbench -j
    max_connections: int = 40      # PostgreSQL's, the budget's ceiling
    headroom: int = 4              # connections the budget leaves free (maitred autotune --headroom)
    min_pool_size: int = 2         # every autotuned pool starts here, as after an idle spell
    max_pool_size: int = 40        # above the budget on purpose: the budget, not this bound, must cap growth
    interval: float = 1.0          # seconds between autotuner ticks (and Prometheus scrapes)
    sample_every: float = 0.5      # seconds between sampler readings
    cpu_signal: str = "postgres"   # what the autotuner reads as CPU: PostgreSQL's share, or the whole node's

    @property
    def max_clients(self) -> int:
        """The most clients one tier's pooler ever has at once."""
        return max((x.clients for p in self.phases for x in p.loads), default=0)


IO_WAIT_SQL = "SELECT pg_sleep(0.01)"
CPU_SQL = "SELECT sum(length(md5(i::text))) FROM generate_series(1, 5000) AS i"
APP, REPORTS = "app", "reports"


def _one_tier(clients: int, seconds: int, idle: int, sizes: tuple[int, ...]) -> Plan:
    return Plan(tiers=(APP,), sizes=sizes,
                phases=(Phase("io-wait", (Load(APP, IO_WAIT_SQL, clients),), seconds),
                        Phase("cpu", (Load(APP, CPU_SQL, clients),), seconds),
                        Phase("idle", (), idle)))


def _two_tiers(clients: int, seconds: int, idle: int, sizes: tuple[int, ...]) -> Plan:
    return Plan(tiers=(APP, REPORTS), sizes=sizes,
                phases=(Phase("io-wait", (Load(APP, IO_WAIT_SQL, clients),), seconds),
                        Phase("cpu + io-wait", (Load(APP, CPU_SQL, clients), Load(REPORTS, IO_WAIT_SQL, clients)),
                              seconds),
                        Phase("idle", (), idle)))


SHAPES = {1: _one_tier, 2: _two_tiers}
FULL = {tiers: shape(48, 25, 15, (2, 4, 8, 16, 32)) for tiers, shape in SHAPES.items()}
QUICK = {tiers: shape(6, 3, 2, (2, 4)) for tiers, shape in SHAPES.items()}


def server_settings(plan: Plan) -> dict[str, str]:
    """The benchmark server's settings: a small max_connections is the budget, and one backend per query (no
    parallel workers) keeps a CPU transaction's cost the same whatever the pool size."""
    return {"max_connections": str(plan.max_connections), "max_parallel_workers_per_gather": "0"}
