"""The connection budget: pure arithmetic that shares one PostgreSQL server among every pooler process.

budget = max_connections - superuser_reserved_connections - reserved_connections
         - client backends that are not the poolers' - headroom

First cut of the allocation: pinned connections first, then the floors (scaled down when they do not fit), then
the rest by demand. Refined in place; the signatures are the contract, and the one guarantee is
sum(Allocation.connections) <= budget, always.
"""
from __future__ import annotations

from .model import Allocation, DatabaseSample, Demand


def server_budget(db: DatabaseSample, pooler_pids: frozenset[int], headroom: int) -> int:
    """Server connections every pooler of this server may open in all; 0 when the server cannot tell."""
    if db.error is not None or db.max_connections <= 0:
        return 0
    others = len(db.backend_pids - pooler_pids)
    return max(0, db.max_connections - db.superuser_reserved_connections - db.reserved_connections
               - others - headroom)


def allocate(demands: list[Demand], budget: int) -> dict[str, Allocation]:
    """Each tier's pool size and per-process cap; the caps times processes never sum past `budget`."""
    out: dict[str, Allocation] = {}
    remaining = budget
    units = {d.tier: max(1, d.processes) * max(1, d.pools) for d in demands}
    sizes: dict[str, int] = {}
    for d in demands:                       # floors, scaled down when they do not fit
        sizes[d.tier] = 0
    floor_total = sum(d.floor * units[d.tier] for d in demands)
    for d in demands:
        size = d.floor if floor_total <= budget else (budget * d.floor * units[d.tier] // max(1, floor_total)) // units[d.tier]
        size = min(size, d.wanted) if d.wanted >= 0 else size
        sizes[d.tier] = size
        remaining -= size * units[d.tier]
    progress = True
    while remaining > 0 and progress:        # one step of pool size at a time, to whoever wants more
        progress = False
        for d in sorted(demands, key=lambda d: sizes[d.tier] / max(1, d.wanted)):
            if sizes[d.tier] < d.wanted and units[d.tier] <= remaining:
                sizes[d.tier] += 1
                remaining -= units[d.tier]
                progress = True
    for d in demands:
        size = sizes[d.tier]
        cap = size * max(1, d.pools)
        out[d.tier] = Allocation(d.tier, size, cap, cap * max(1, d.processes), size < d.wanted)
    return out
