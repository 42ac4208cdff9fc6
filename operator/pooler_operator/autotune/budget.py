"""The connection budget: pure integer arithmetic that shares one PostgreSQL server among every pooler process.

budget = max_connections - superuser_reserved_connections - reserved_connections
         - client backends that are not the poolers' - headroom

A tier's share is counted in *units*: one unit of pool size costs `processes x pools` server connections (every
process may open `pool_size` servers in each of its pools). `allocate` reserves the pinned connections first,
then gives each tier its floor (min(floor, wanted)), scaled down in proportion when the floors do not fit, then
shares the rest by max-min fair water-filling on the wanted sizes: one common level, each tier at
min(wanted, max(floor, level)), and the connections left under the next level go one size step each to the
cheapest tiers at that level. It is exact integer arithmetic in O(n log n); the guarantee, whatever the input:

    sum(Allocation.connections) + sum(Demand.pinned) <= budget     (all connections 0 when the pinned alone exceed it)
"""
from __future__ import annotations

from .model import Allocation, DatabaseSample, Demand


def server_budget(db: DatabaseSample, pooler_pids: frozenset[int], headroom: int) -> int:
    """Server connections every pooler of this server may open in all; 0 when the server cannot tell."""
    if db.error is not None or db.max_connections <= 0:
        return 0
    others = len(db.backend_pids - pooler_pids)
    return max(0, db.max_connections - max(0, db.superuser_reserved_connections)
               - max(0, db.reserved_connections) - others - max(0, headroom))


def units(d: Demand) -> int:
    """Server connections one step of pool size costs this tier."""
    return max(1, d.processes) * max(1, d.pools)


def allocate(demands: list[Demand], budget: int) -> dict[str, Allocation]:
    """Each tier's pool size and per-process cap; what they may open never sums past `budget` (minus pinned)."""
    if len({d.tier for d in demands}) != len(demands):
        raise ValueError("one demand per tier: a tier named twice would be counted once")
    free = max(0, budget - sum(max(0, d.pinned) for d in demands))
    wanted = {d.tier: max(0, d.wanted) for d in demands}
    floors = {d.tier: min(max(0, d.floor), wanted[d.tier]) for d in demands}
    cost = {d.tier: units(d) for d in demands}
    floor_cost = sum(floors[t] * cost[t] for t in cost)
    if floor_cost > free:                  # floors scaled down in proportion; integer, so never past `free`
        sizes = {t: floors[t] * free // floor_cost for t in cost}
    else:
        sizes = _water_fill(cost, floors, wanted, free)
    return {d.tier: Allocation(d.tier, sizes[d.tier], sizes[d.tier] * max(1, d.pools),
                               sizes[d.tier] * cost[d.tier], sizes[d.tier] < wanted[d.tier])
            for d in demands}


def _water_fill(step_cost: dict[str, int], floors: dict[str, int], wanted: dict[str, int],
                free: int) -> dict[str, int]:
    """Max-min fair sizes above the floors: the highest level L with sum(min(wanted, max(floor, L)) x units) <=
    free, then one more step at L for the tiers still below their wish, cheapest first (ties by name)."""
    rows = [(floors[t], wanted[t], u) for t, u in step_cost.items()]

    def cost(level: int) -> int:
        return sum((w if w < level else f if f > level else level) * u for f, w, u in rows)

    lo, hi = 0, max(wanted.values(), default=0)
    if cost(hi) <= free:
        return dict(wanted)
    while lo < hi:                         # cost(lo) <= free < cost(hi)
        mid = (lo + hi + 1) // 2
        if cost(mid) <= free:
            lo = mid
        else:
            hi = mid - 1
    sizes = {t: min(wanted[t], max(floors[t], lo)) for t in step_cost}
    left = free - cost(lo)
    at_level = sorted((u, t) for t, u in step_cost.items() if floors[t] <= lo < wanted[t])
    for cost_of_step, tier in at_level:    # ascending cost: the tiers served form a prefix, so more budget
        if cost_of_step > left:            # never takes a step back from anyone
            break
        sizes[tier] += 1
        left -= cost_of_step
    return sizes


def within_budget(allocations: dict[str, Allocation], demands: list[Demand], budget: int) -> bool:
    """The guarantee: shares plus pinned connections fit the budget (shares are all 0 when pinned alone do not)."""
    pinned = sum(max(0, d.pinned) for d in demands)
    shares = sum(a.connections for a in allocations.values())
    return shares + pinned <= budget or shares == 0


def transition_order(old: dict[str, Allocation], new: dict[str, Allocation]) -> list[str]:
    """The tiers whose share changes, in the order to apply them: every shrink (and every tier that is gone)
    before any grow, so what the poolers may open never passes the larger of the old and new totals."""
    def share(allocations: dict[str, Allocation], tier: str) -> tuple[int, int, int] | None:
        a = allocations.get(tier)
        return None if a is None else (a.connections, a.pool_size, a.per_process_cap)

    def grows(tier: str) -> bool:
        return (share(new, tier) or (0,))[0] > (share(old, tier) or (0,))[0]

    changed = sorted(t for t in old.keys() | new.keys() if share(old, t) != share(new, t))
    return sorted(changed, key=grows)
