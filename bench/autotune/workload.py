"""The workload: phases whose best fixed pool size differs, and the fixed sizes the sweep tries.

- io-wait: many clients, each transaction a short wait on something other than CPU (`pg_sleep`, as a lock or
  a slow disk would), so throughput grows with every server connection the pool may open.
- cpu: the same clients, each transaction tens of ms of pure CPU (an md5 aggregate that stays in memory: no
  temp files, no parallel workers), so past the core count more connections only share the same cores.
- idle: no client at all; a tuned pool should give its connections back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    sql: str | None      # the one statement of every transaction; None: no client runs
    clients: int
    seconds: int

    def script(self, folder: str) -> str | None:
        """Write the pgbench script of this phase into `folder`; its path, or None for an idle phase."""
        if self.sql is None:
            return None
        path = os.path.join(folder, f"{self.name}.sql")
        with open(path, "w") as f:
            f.write(self.sql + ";\n")
        return path


@dataclass(frozen=True)
class Plan:
    """Everything a benchmark run is made of; FULL and QUICK are the two shapes, options override fields."""

    phases: tuple[Phase, ...]
    sizes: tuple[int, ...]         # fixed default_pool_size values of the sweep
    rounds: int = 1
    threads: int = 2               # pgbench -j
    max_connections: int = 40      # PostgreSQL's, the budget's ceiling
    headroom: int = 4              # connections the budget leaves free (maitred autotune --headroom)
    min_pool_size: int = 2         # the autotuned pool starts here, as after an idle spell
    max_pool_size: int = 40        # above the budget on purpose: the budget, not this bound, must cap growth
    interval: float = 1.0          # seconds between autotuner ticks (and Prometheus scrapes)
    sample_every: float = 0.5      # seconds between sampler readings
    cpu_signal: str = "postgres"   # what the autotuner reads as CPU: PostgreSQL's share, or the whole node's

    @property
    def max_clients(self) -> int:
        return max(p.clients for p in self.phases)


IO_WAIT_SQL = "SELECT pg_sleep(0.01)"
CPU_SQL = "SELECT sum(length(md5(i::text))) FROM generate_series(1, 5000) AS i"

FULL = Plan(
    phases=(Phase("io-wait", IO_WAIT_SQL, clients=48, seconds=25),
            Phase("cpu", CPU_SQL, clients=48, seconds=25),
            Phase("idle", None, clients=0, seconds=15)),
    sizes=(2, 4, 8, 16, 32),
)
QUICK = Plan(
    phases=(Phase("io-wait", IO_WAIT_SQL, clients=6, seconds=3),
            Phase("cpu", CPU_SQL, clients=6, seconds=3),
            Phase("idle", None, clients=0, seconds=2)),
    sizes=(2, 4),
)



def server_settings(plan: Plan) -> dict[str, str]:
    """The benchmark server's settings: a small max_connections is the budget, and one backend per query (no
    parallel workers) keeps a CPU transaction's cost the same whatever the pool size."""
    return {"max_connections": str(plan.max_connections), "max_parallel_workers_per_gather": "0"}
