"""The policy and the budget in a closed loop against a small deterministic model of a database, tick by tick.

The model: a server with `cores` CPUs; a transaction spends `cpu_ms` on a CPU and `io_ms` waiting on I/O. With A
transactions in flight, one takes max(cpu_ms + io_ms, cpu_ms x A / cores) (processor sharing once the CPUs are
full), so throughput stops rising at the knee A* = cores x (cpu_ms + io_ms) / cpu_ms and only latency climbs
past it. Each tier offers a rate of transactions; what its pool cannot serve queues as waiting clients, up to
the application's number of connections (the rest is turned away). The loop
is the real one in miniature: signals -> decide -> remember -> allocate, each tick.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pooler_operator.autotune.budget import allocate, server_budget, within_budget
from pooler_operator.autotune.model import (DatabaseSample, Demand, History, PolicyParams,
                                            TierSignals)
from pooler_operator.autotune.policy import decide, remember

TICK_S = 5.0


@dataclass
class Tier:
    name: str
    rate: dict[int, float]             # offered transactions/s from a tick on (a step function)
    processes: int = 1
    pools: int = 1
    clients: int = 200                 # the application's connections: at most this many wait or run
    size: int = 2
    backlog: float = 0.0
    history: History = field(default_factory=History)

    def offered_at(self, tick: int) -> float:
        start = max((t for t in self.rate if t <= tick), default=None)
        return 0.0 if start is None else self.rate[start]


@dataclass
class Server:
    cores: int
    cpu_ms: float
    io_ms: float
    max_connections: int = 100
    superuser_reserved: int = 3
    other_backends: int = 2

    def latency_ms(self, in_flight: float) -> float:
        return max(self.cpu_ms + self.io_ms, self.cpu_ms * in_flight / self.cores)

    def budget(self, headroom: int = 5) -> int:
        others = frozenset(range(self.other_backends))
        db = DatabaseSample(max_connections=self.max_connections, superuser_reserved_connections=self.superuser_reserved,
                            backend_pids=others | {1000, 1001})
        return server_budget(db, frozenset({1000, 1001}), headroom)


def serve(server: Server, demand_rate: list[float], capacity: list[int]) -> tuple[list[float], float]:
    """In-flight transactions per tier and the latency (s) where the tiers' pools and the server agree."""
    def in_flight(total: float) -> list[float]:
        r = server.latency_ms(total) / 1000
        return [min(c, d * r) for d, c in zip(demand_rate, capacity)]

    lo, hi = 0.0, float(sum(capacity))
    for _ in range(60):                 # sum(in_flight(A)) - A falls as A rises: bisect its zero
        mid = (lo + hi) / 2
        if sum(in_flight(mid)) >= mid:
            lo = mid
        else:
            hi = mid
    return in_flight(lo), server.latency_ms(lo) / 1000


@dataclass
class Trace:
    sizes: dict[str, list[int]]
    waiting: dict[str, list[int]]
    cpu: list[float]
    within: list[bool]
    budget: int


def simulate(server: Server, tiers: list[Tier], ticks: int, params: PolicyParams, *, prometheus: bool = True,
             outage: range = range(0), others: dict[int, int] | None = None) -> Trace:
    """Run the loop; without `prometheus` there is no CPU signal, during `outage` it is missing; `others` sets
    the client backends that are not the poolers' from a tick on."""
    budget = server.budget()
    trace = Trace({t.name: [] for t in tiers}, {t.name: [] for t in tiers}, [], [], budget)
    limited: dict[str, bool] = {}
    for tick in range(ticks):
        if others and tick in others:
            server.other_backends = others[tick]
            budget = server.budget()
        demand = [t.offered_at(tick) + t.backlog / TICK_S for t in tiers]
        capacity = [t.size * t.processes * t.pools for t in tiers]
        flight, latency = serve(server, demand, capacity)
        throughput = [a / latency for a in flight]
        cpu = min(1.0, sum(throughput) * server.cpu_ms / 1000 / server.cores)
        demands = []
        for t, a, x in zip(tiers, flight, throughput):
            t.backlog = min(max(0.0, t.clients - a), max(0.0, t.backlog + (t.offered_at(tick) - x) * TICK_S))
            waiting = round(t.backlog)
            signals = TierSignals(
                processes=t.processes, reachable=t.processes, pool_size=t.size, pools=t.pools,
                cl_waiting=waiting, cl_active=round(a), sv_active=round(a),
                sv_idle=t.size * t.processes * t.pools - round(a),
                maxwait_s=t.backlog / x if waiting and x else 0.0, xact_per_s=x if x else None,
                avg_xact_time_ms=latency * 1000 if x else None, avg_wait_time_ms=None,
                cpu=round(cpu, 3) if prometheus and tick not in outage else None,
                missing=("cpu",) if tick in outage else (), contended=any(v for k, v in limited.items() if k != t.name))
            decision = decide(signals, t.history, params)
            t.history = remember(t.history, signals, decision, params)
            demands.append(Demand(t.name, t.processes, t.pools, decision.size, params.min_pool_size))
            trace.waiting[t.name].append(waiting)
        allocations = allocate(demands, budget)
        trace.within.append(within_budget(allocations, demands, budget))
        trace.cpu.append(cpu)
        limited = {k: a.limited for k, a in allocations.items()}
        for t in tiers:
            t.size = allocations[t.name].pool_size
            trace.sizes[t.name].append(t.size)
    return trace


def fair_share(tiers: list[Tier], need: dict[str, int], budget: int, params: PolicyParams) -> dict[str, int]:
    """What allocate gives each tier when every tier asks exactly for what its load needs."""
    shares = allocate([Demand(t.name, t.processes, t.pools, need[t.name], params.min_pool_size) for t in tiers],
                      budget)
    return {k: a.pool_size for k, a in shares.items()}


def need(server: Server, rate: float, processes: int = 1, pools: int = 1) -> int:
    """Pool size that serves `rate` without a queue when the server is below its knee (Little's law)."""
    return math.ceil(rate * (server.cpu_ms + server.io_ms) / 1000 / (processes * pools))


IO_BOUND = Server(cores=8, cpu_ms=1.0, io_ms=19.0, max_connections=100)   # knee at 160 in flight: budget binds
PARAMS = PolicyParams(min_pool_size=2, max_pool_size=200)


def test_a_pool_whose_clients_start_waiting_reaches_its_fair_share_within_5_ticks():
    burst = Tier("burst", {0: 50.0, 10: 2000.0})          # needs 40 from tick 10
    steady = Tier("steady", {0: 1000.0})                  # needs 20 all along
    trace = simulate(IO_BOUND, [burst, steady], 30, PARAMS)
    fair = fair_share([burst, steady], {"burst": need(IO_BOUND, 2000), "steady": need(IO_BOUND, 1000)},
                      trace.budget, PARAMS)
    assert fair["burst"] == 40
    assert trace.sizes["burst"][9] < 10
    assert trace.sizes["burst"][10 + 4] >= fair["burst"], trace.sizes["burst"]
    assert all(trace.within)


def test_a_pool_gives_back_what_it_no_longer_uses_within_10_ticks_when_another_tier_needs_it():
    first = Tier("first", {0: 3000.0, 30: 200.0})         # wants 60 of the budget 90, then only 4
    second = Tier("second", {0: 500.0, 30: 2500.0})       # needs 10, then 50: more than is left to it
    trace = simulate(IO_BOUND, [first, second], 60, PARAMS)
    assert trace.budget == 90
    assert trace.sizes["first"][29] >= 60
    after = fair_share([first, second], {"first": need(IO_BOUND, 200), "second": need(IO_BOUND, 2500)},
                       trace.budget, PARAMS)
    assert after["second"] == 50
    assert trace.sizes["second"][30 + 4] >= after["second"], trace.sizes["second"]   # fair share in 5 ticks
    assert trace.sizes["first"][30 + 9] <= math.ceil(need(IO_BOUND, 200) * 1.25) + 1, trace.sizes["first"]
    assert all(trace.within)


def test_a_steady_load_settles_on_one_size_and_stays_there():
    tiers = [Tier("a", {0: 1200.0}), Tier("b", {0: 700.0}), Tier("c", {0: 300.0, 5: 900.0})]
    trace = simulate(IO_BOUND, tiers, 80, PARAMS)
    for name, sizes in trace.sizes.items():
        assert len(set(sizes[20:])) == 1, (name, sizes)
        assert max(trace.waiting[name][20:]) == 0, (name, trace.waiting[name])
    assert all(trace.within)


def test_a_cpu_bound_load_settles_below_the_cpu_high_water_mark_and_stays_there():
    cpu_bound = Server(cores=2, cpu_ms=4.0, io_ms=16.0, max_connections=100)   # knee at 10 in flight
    tiers = [Tier("hot", {0: 0.0, 5: 800.0}), Tier("warm", {0: 100.0})]        # 800/s is past what 2 cores do
    trace = simulate(cpu_bound, tiers, 80, PolicyParams(min_pool_size=2, max_pool_size=100))
    hot = trace.sizes["hot"]
    assert max(trace.cpu[:30]) >= 0.85 and max(hot) > hot[-1], hot   # it overshot the knee, then came back
    assert len(set(hot[30:])) == 1, hot
    assert hot[-1] <= 10, hot                                  # not past the knee: more would only add latency
    assert max(trace.cpu[30:]) < 0.85 and min(trace.cpu[30:]) >= 0.70, trace.cpu
    assert all(trace.within)


def test_the_budget_is_never_exceeded_with_many_tiers_processes_and_pools_under_changing_load():
    tiers = [Tier(f"t{i}", {0: 100.0 * i, 10 + i: 400.0 * (7 - i), 40: 50.0}, processes=1 + i % 3, pools=1 + i % 2)
             for i in range(7)]
    trace = simulate(IO_BOUND, tiers, 60, PolicyParams(min_pool_size=1, max_pool_size=100))
    assert all(trace.within)
    assert max(trace.sizes["t6"]) > 1                          # the loop did act


def test_without_a_cpu_signal_latency_alone_stops_the_pool_near_the_knee_and_it_stays():
    cpu_bound = Server(cores=2, cpu_ms=4.0, io_ms=16.0, max_connections=100)   # knee at 10 in flight
    tiers = [Tier("hot", {0: 0.0, 5: 800.0}), Tier("warm", {0: 100.0})]
    trace = simulate(cpu_bound, tiers, 120, PolicyParams(min_pool_size=2, max_pool_size=100), prometheus=False)
    hot = trace.sizes["hot"]
    assert max(hot) >= 32 and len(set(hot[20:])) == 1, hot      # overshot, came back, then held for 100 ticks
    assert hot[-1] < 20, hot


def test_prometheus_down_in_the_middle_of_a_steady_load_changes_no_size_and_growth_waits_for_it():
    tiers = [Tier("a", {0: 1200.0}), Tier("b", {0: 300.0, 42: 1500.0})]        # b's load rises while cpu is gone
    trace = simulate(IO_BOUND, tiers, 70, PARAMS, outage=range(40, 50))
    assert len(set(trace.sizes["a"][20:])) == 1
    assert len(set(trace.sizes["b"][39:50])) == 1 and max(trace.waiting["b"][43:50]) > 0
    assert trace.sizes["b"][55] > trace.sizes["b"][49]
    assert all(trace.within)


def test_a_budget_that_shrinks_under_the_allocation_takes_the_sizes_down_at_once_and_back_up_after():
    server = Server(cores=8, cpu_ms=1.0, io_ms=19.0, max_connections=100)
    tiers = [Tier("a", {0: 2000.0}), Tier("b", {0: 1500.0})]                   # need 40 and 30 of 90
    trace = simulate(server, tiers, 50, PARAMS, others={20: 42, 35: 2})         # 42 other backends: budget 50
    assert trace.sizes["a"][19] + trace.sizes["b"][19] >= 70
    assert trace.sizes["a"][20] + trace.sizes["b"][20] <= 50 and trace.sizes["b"][20] >= 20   # max-min fair
    assert trace.sizes["a"][35 + 5] >= 40 and trace.sizes["b"][35 + 5] >= 30
    assert all(trace.within)
