"""`python3 -m bench autotune-scale`: how long the autotuner's pure decisions take for a large fleet, per tick.

One PostgreSQL server, `--tiers` poolers with `--processes` processes in all (one to three pools each), each with
its own synthetic load that drifts from tick to tick (seeded, so every run sees the same). A tick is what the
loop does between reading signals and applying: `decide` and `remember` for every tier, then one `allocate` and
`transition_order` for the server. Prints the median and p99 milliseconds per tick, and the budget violations
(always 0: `within_budget` is checked every tick). Times are this process's CPU time, so other work on a shared
machine does not inflate them.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from pooler_operator.autotune.budget import allocate, transition_order, within_budget
from pooler_operator.autotune.model import Demand, History, PolicyParams, TierSignals
from pooler_operator.autotune.policy import decide, remember


def fleet(tiers: int, processes: int, rnd: random.Random) -> list[tuple[str, int, int]]:
    """(tier, processes, pools): `processes` spread over the tiers, at least one each."""
    counts = [1] * tiers
    for _ in range(max(0, processes - tiers)):
        counts[rnd.randrange(tiers)] += 1
    return [(f"ns{i // 50}/pooler-{i}", counts[i], rnd.randint(1, 3)) for i in range(tiers)]


def signals_for(processes: int, pools: int, size: int, load: float, cpu: float) -> TierSignals:
    """What a tier whose load needs `load` servers per pool per process would report at `size`."""
    units = processes * pools
    active = min(size, round(load)) * units
    waiting = max(0, round((load - size) * units * 3))
    return TierSignals(processes=processes, reachable=processes, pool_size=size, pools=pools, cl_waiting=waiting,
                       cl_active=active, sv_active=active, sv_idle=size * units - active,
                       maxwait_s=0.5 if waiting else 0.0, xact_per_s=50.0 * active, avg_xact_time_ms=20.0,
                       avg_wait_time_ms=0.0, cpu=cpu)


def run(tiers: int, processes: int, ticks: int, budget: int, seed: int = 1) -> dict[str, list[float]]:
    """Milliseconds per tick for each phase, and the budget violations seen."""
    rnd = random.Random(seed)
    params = PolicyParams(min_pool_size=1, max_pool_size=100)
    shape = fleet(tiers, processes, rnd)
    load = {name: rnd.uniform(0.5, 30) for name, _, _ in shape}
    size = {name: params.min_pool_size for name, _, _ in shape}
    history = {name: History() for name, _, _ in shape}
    previous: dict = {}
    times: dict[str, list[float]] = {"decide": [], "allocate": [], "tick": []}
    violations = 0
    for _ in range(ticks):
        cpu = rnd.uniform(0.2, 0.8)
        for name in load:                                   # the load drifts; not timed
            load[name] = max(0.0, load[name] * rnd.uniform(0.8, 1.25))
        inputs = [(name, p, k, signals_for(p, k, size[name], load[name], cpu)) for name, p, k in shape]
        started = time.process_time()
        demands = []
        for name, p, k, signals in inputs:
            decision = decide(signals, history[name], params)
            history[name] = remember(history[name], signals, decision, params)
            demands.append(Demand(name, p, k, decision.size, params.min_pool_size))
        decided = time.process_time()
        allocations = allocate(demands, budget)
        transition_order(previous, allocations)
        done = time.process_time()
        violations += not within_budget(allocations, demands, budget)
        previous = allocations
        size = {name: a.pool_size for name, a in allocations.items()}
        times["decide"].append((decided - started) * 1000)
        times["allocate"].append((done - decided) * 1000)
        times["tick"].append((done - started) * 1000)
    times["violations"] = [float(violations)]
    return times


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def table(times: dict[str, list[float]], tiers: int, processes: int, budget: int) -> str:
    lines = [f"{tiers} tiers, {processes} processes, budget {budget}, {len(times['tick'])} ticks", "",
             "| phase | median CPU ms | p99 CPU ms |", "| --- | ---: | ---: |"]
    for phase in ("decide", "allocate", "tick"):
        label = {"decide": "decide + remember, all tiers", "allocate": "allocate + transition_order",
                 "tick": "whole tick"}[phase]
        lines.append(f"| {label} | {statistics.median(times[phase]):.2f} | {p99(times[phase]):.2f} |")
    lines += ["", f"budget violations: {int(times['violations'][0])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench autotune-scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiers", type=int, default=1000)
    p.add_argument("--processes", type=int, default=10000, help="processes in all, at least one per tier")
    p.add_argument("--ticks", type=int, default=100)
    p.add_argument("--budget", type=int, default=100000, help="the server's connection budget")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.tiers < 1 or args.processes < args.tiers or args.ticks < 1 or args.budget < 0:
        print("need --tiers >= 1, --processes >= --tiers, --ticks >= 1, --budget >= 0", file=sys.stderr)
        return 2
    times = run(args.tiers, args.processes, args.ticks, args.budget, args.seed)
    print(table(times, args.tiers, args.processes, args.budget))
    return 0 if times["violations"][0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
