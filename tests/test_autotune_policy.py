"""The pool-size policy: one tick at a time (a table), adversarial sequences, and properties over random input."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from pooler_operator.autotune.model import Decision, History, PolicyParams, TierSignals
from pooler_operator.autotune.policy import HISTORY_TICKS, RULES, congestion_ceiling, decide, remember

PARAMS = PolicyParams(min_pool_size=5, max_pool_size=100)


def sig(**kw) -> TierSignals:
    """One healthy tier of one process and one pool: size 10, all servers busy, no client waiting."""
    base = dict(processes=1, reachable=1, pool_size=10, pools=1, cl_waiting=0, cl_active=10, sv_active=10,
                sv_idle=0, maxwait_s=0.0, xact_per_s=500.0, avg_xact_time_ms=20.0, avg_wait_time_ms=0.0, cpu=0.40)
    base.update(kw)
    return TierSignals(**base)


def run(ticks: list[dict], params: PolicyParams = PARAMS, size: int = 10,
        history: History = History()) -> tuple[list[Decision], History]:
    """Feed signals tick by tick; the pool size in force follows each decision unless a tick sets it."""
    decisions = []
    for kw in map(dict, ticks):
        size = kw.pop("pool_size", size)
        signals = sig(pool_size=size, **kw)
        decision = decide(signals, history, params)
        history = remember(history, signals, decision, params)
        decisions.append(decision)
        size = decision.size
    return decisions, history


def sizes(decisions: list[Decision]) -> list[int]:
    return [d.size for d in decisions]


# -- one tick -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signals, size, direction, rule, reason", [
    (sig(cl_waiting=14, maxwait_s=0.8, cpu=0.42), 24, "grow", "grow",
     "grow: 14 clients waiting (maxwait 0.8 s), cpu 0.42"),
    (sig(cl_waiting=3), 13, "grow", "grow", "grow: 3 clients waiting"),                # to what waits, not x2
    (sig(cl_waiting=14, cpu=None), 20, "grow", "grow", "clients waiting (maxwait 0.0 s)"),   # no Prometheus
    (sig(cl_waiting=40, processes=4, reachable=4), 20, "grow", "grow", "40 clients waiting"),
    (sig(cl_waiting=14, cpu=0.78), 10, "hold", "cpu-band", "hold: 14 clients waiting (maxwait 0.0 s), cpu 0.78 >= 0.70"),
    (sig(cl_waiting=14, pool_size=100), 100, "hold", "max", "at max_pool_size 100"),
    (sig(pool_size=150), 100, "shrink", "bounds", "shrink: back to max_pool_size 100"),
    (sig(pool_size=2), 5, "grow", "bounds", "grow: back to min_pool_size 5"),
    (sig(cl_waiting=14, missing=("cpu",)), 10, "hold", "signal", "hold: cpu missing"),
    (sig(cl_waiting=14, missing=("postgres",)), 10, "hold", "signal", "hold: postgres missing"),
    (sig(cl_waiting=14, cpu=float("nan")), 10, "hold", "signal", "hold: cpu nan nonsensical"),
    (sig(cl_waiting=14, cpu=7.0), 10, "hold", "signal", "cpu 7.0 nonsensical"),
    (sig(cl_waiting=-3), 10, "hold", "signal", "hold: cl_waiting -3 nonsensical"),
    (sig(cl_waiting=14, xact_per_s=-40.0), 10, "hold", "signal", "xact_per_s -40.0 nonsensical"),
    (sig(cl_waiting=14, processes=3, reachable=2), 10, "hold", "signal", "console of 1 of 3 processes missing"),
    (sig(cl_waiting=14, processes=0, reachable=0), 10, "hold", "signal", "consoles missing"),
    (sig(pool_size=150, missing=("cpu",)), 100, "shrink", "signal", "back to max_pool_size 100 (cpu missing)"),
    (sig(pool_size=2, missing=("cpu",)), 2, "hold", "signal", "hold: cpu missing"),       # not even to the floor
    (sig(cpu=0.91), 10, "hold", "cpu", "hold: cpu 0.91 >= 0.85, shrink if it stays"),
    (sig(cpu=0.91, pool_size=5), 5, "hold", "cpu", "at min_pool_size 5"),
    (sig(sv_active=3, sv_idle=7), 10, "hold", "steady", "hold: steady, 3 of 10 servers active"),  # too soon to shrink
])
def test_one_tick_decides_the_size_direction_and_reason(signals, size, direction, rule, reason):
    decision = decide(signals, History(), PARAMS)
    assert (decision.size, decision.direction, decision.rule) == (size, direction, rule), decision
    assert reason in decision.reason
    assert decision.rule in RULES and "\n" not in decision.reason


def test_a_large_waiting_queue_is_served_in_one_tick_when_the_cpu_has_headroom():
    decisions, _ = run([dict(cl_waiting=46, sv_active=2, cpu=0.10)], size=5, params=replace(PARAMS, max_pool_size=40))
    assert sizes(decisions) == [40] and decisions[0].rule == "grow"
    decisions, _ = run([dict(cl_waiting=20, sv_active=5, cpu=0.10)], size=5)
    assert sizes(decisions) == [25]                                    # what waits, not the bound


def test_without_a_cpu_signal_growth_is_multiplicative_and_reaches_a_large_need_in_a_few_ticks():
    decisions, _ = run([dict(cl_waiting=200, sv_active=s, cpu=None) for s in (5, 10, 20, 40, 80)], size=5)
    assert sizes(decisions) == [10, 20, 40, 80, 100]


@pytest.mark.parametrize("start, settled", [(5, 25), (80, 25)])   # 20 in use plus the 25 % margin
def test_a_load_that_needs_20_servers_settles_and_stays_from_below_and_from_above(start, settled):
    size, history, seen = start, History(), []
    for _ in range(40):             # whatever the pool lacks waits, whatever it has beyond 20 sits idle
        signals = sig(pool_size=size, cl_waiting=max(0, 20 - size) * 5, sv_active=min(size, 20),
                      sv_idle=max(0, size - 20))
        decision = decide(signals, history, PARAMS)
        history, size = remember(history, signals, decision, PARAMS), decision.size
        seen.append(size)
    assert seen[-1] == settled and len(set(seen[15:])) == 1, seen


# -- adversarial sequences ------------------------------------------------------------------------------------

def test_a_load_that_comes_and_goes_every_tick_never_makes_the_size_go_up_and_down():
    decisions, _ = run([dict(cl_waiting=6) if i % 2 == 0 else dict(sv_active=4, sv_idle=6) for i in range(30)])
    assert all(d.direction != "shrink" for d in decisions), [d.reason for d in decisions]
    assert sizes(decisions) == sorted(sizes(decisions))


def test_a_load_that_comes_and_goes_slowly_changes_direction_only_once_per_phase():
    phase = [dict(cl_waiting=30)] * 6 + [dict(sv_active=4, sv_idle=36)] * 12
    decisions, _ = run(phase * 3)
    directions = [d.direction for d in decisions if d.direction != "hold"]
    reversals = sum(1 for a, b in zip(directions, directions[1:]) if a != b)
    assert reversals <= 5, directions
    assert min(sizes(decisions)[6:]) >= 5


def test_cpu_spikes_of_one_tick_hold_and_never_shrink():
    ticks = [dict(cl_waiting=2, cpu=0.97) if i % 3 == 0 else dict(cpu=0.30) for i in range(24)]
    decisions, _ = run(ticks)
    spikes = decisions[::3]
    assert all(d.direction == "hold" and d.rule == "cpu" for d in spikes), [d.reason for d in spikes]
    assert all(d.direction != "shrink" for d in decisions)


def test_cpu_past_the_high_water_mark_holds_one_tick_then_shrinks_and_growth_stops_below_that_size():
    decisions, history = run([dict(cl_waiting=50, cpu=0.95)] * 3 + [dict(cl_waiting=50, cpu=0.60)] * 4, size=40)
    assert [d.direction for d in decisions[:3]] == ["hold", "shrink", "shrink"]
    assert sizes(decisions)[:3] == [40, 30, 22]
    assert "shrink: cpu 0.95 >= 0.85" in decisions[1].reason
    assert congestion_ceiling(history, PARAMS) == 30
    assert max(sizes(decisions)[3:]) == 29                      # grows back, but not to where the CPU saturated
    assert decisions[-1].rule == "ceiling"


def test_cpu_congestion_stops_shrinking_once_a_shrink_cost_throughput():
    saturated = dict(cl_waiting=40, cpu=0.95)
    ticks = [dict(saturated, xact_per_s=250.0)] * 3 + [dict(saturated, xact_per_s=180.0)] * 3
    decisions, _ = run(ticks, size=20)
    assert sizes(decisions) == [20, 15, 11, 11, 11, 11], [d.reason for d in decisions]
    assert decisions[3].reason.endswith("throughput 180/s below 250/s at size 15, measuring again")
    assert "throughput 180/s below 250/s at size 15: fewer servers only cost throughput" in decisions[4].reason
    assert [d.rule for d in decisions[3:]] == ["cpu", "knee", "knee"] and "at the knee" in decisions[-1].reason


def test_one_noisy_tick_below_the_larger_sizes_throughput_does_not_stop_the_shrinking():
    saturated = dict(cl_waiting=40, cpu=0.95)
    ticks = [dict(saturated, xact_per_s=250.0)] * 3 + [dict(saturated, xact_per_s=180.0),
                                                       dict(saturated, xact_per_s=250.0)]
    decisions, _ = run(ticks, size=20)
    assert sizes(decisions) == [20, 15, 11, 11, 8], [d.reason for d in decisions]


def test_the_knee_holds_for_as_long_as_the_congestion_lasts_even_once_larger_sizes_leave_the_history():
    saturated = dict(cl_waiting=40, cpu=0.95)
    ticks = [dict(saturated, xact_per_s=250.0)] * 3 + [dict(saturated, xact_per_s=180.0)] * (HISTORY_TICKS + 5)
    decisions, _ = run(ticks, size=20)
    assert set(sizes(decisions)[3:]) == {11}, [d.reason for d in decisions[-3:]]


def test_a_cpu_that_hovers_about_the_high_water_mark_still_shrinks_as_the_band_is_hysteresis():
    """Once at cpu_high, the episode lasts until the CPU falls below cpu_low: 0.86, 0.75, 0.86, ... shrinks."""
    ticks = [dict(cl_waiting=30, cpu=0.86 if i % 2 == 0 else 0.75) for i in range(4)]
    decisions, _ = run(ticks, size=16)
    assert sizes(decisions) == [16, 12, 9, 6], [d.reason for d in decisions]
    assert decisions[1].reason == "shrink: cpu 0.75 >= 0.70 since it reached 0.85 for 2 ticks or more"
    after, _ = run([dict(cl_waiting=30, cpu=0.86), dict(cl_waiting=30, cpu=0.60)], size=16)
    assert [d.rule for d in after] == ["cpu", "grow"]         # below cpu_low: the episode is over


@pytest.mark.parametrize("on_cpu, direction, rule", [(1, "grow", "grow"), (9, "hold", "cpu"), (None, "hold", "cpu")])
def test_a_tier_whose_backends_wait_off_the_cpu_may_grow_while_another_tier_saturates_it(on_cpu, direction, rule):
    signals = sig(cl_waiting=30, cpu=0.95, backends_active=10 if on_cpu is not None else None,
                  backends_on_cpu=on_cpu)
    decision = decide(signals, History(), PARAMS)
    assert (decision.direction, decision.rule) == (direction, rule), decision.reason
    if direction == "grow":
        assert decision.size == 40
        assert decision.reason == ("grow: 30 clients waiting (maxwait 0.0 s), cpu 0.95 "
                                   "(only 1 of its 10 running backends on the CPU)")


def test_a_tier_off_the_cpu_is_still_held_back_by_its_own_latency():
    """More servers that only queue (latency doubles, throughput flat) stop growing, whatever the CPU says."""
    off = dict(cpu=0.95, backends_active=10, backends_on_cpu=1, cl_waiting=30)
    ticks = [dict(off, pool_size=10, avg_xact_time_ms=10.0, xact_per_s=1000.0),
             dict(off, avg_xact_time_ms=25.0, xact_per_s=1000.0), dict(off, avg_xact_time_ms=25.0, xact_per_s=1000.0)]
    decisions, _ = run(ticks, size=10)
    assert [d.rule for d in decisions] == ["grow", "latency", "latency"], [d.reason for d in decisions]
    assert decisions[-1].direction == "shrink"


def test_the_congestion_ceiling_lasts_while_clients_wait_and_ends_when_they_stop_or_it_expires():
    congested = [dict(cl_waiting=50, cpu=0.95)] * 2 + [dict(cl_waiting=50, cpu=0.60)] * 3
    _, history = run(congested, size=40)
    assert congestion_ceiling(history, PARAMS) == 40
    waiting, _ = run([dict(cl_waiting=50, cpu=0.60)] * 200, history=history, size=39)
    assert waiting[PARAMS.ceiling_ticks - 6].rule == "ceiling" and waiting[-1].size > 39     # then it probes
    _, calm = run([dict(sv_active=20, sv_idle=19)], history=history, size=39)
    assert congestion_ceiling(calm, PARAMS) is None


def test_the_baseline_is_kept_while_congestion_holds_the_pool_below_its_ceiling():
    quiet = [dict(avg_xact_time_ms=20.0, xact_per_s=500.0)]
    saturated = [dict(pool_size=40, cl_waiting=50, cpu=0.95, avg_xact_time_ms=80.0, xact_per_s=500.0)] * 2
    below = [dict(cl_waiting=50, cpu=0.60, avg_xact_time_ms=38.0, xact_per_s=500.0)] * (2 * HISTORY_TICKS)
    _, history = run(quiet + saturated + below)
    assert history.ceiling == 40 and history.baseline_xact_ms == 20.0


def test_prometheus_down_holds_whatever_waits_and_names_the_signal_then_growth_resumes():
    decisions, _ = run([dict(cl_waiting=30, missing=("cpu",), cpu=None)] * 5 + [dict(cl_waiting=30)])
    assert sizes(decisions) == [10] * 5 + [40]
    assert all(d.reason == "hold: cpu missing" for d in decisions[:5])


def test_postgresql_unreachable_holds_even_with_idle_servers_then_shrinks_later():
    down = dict(sv_active=1, sv_idle=9, missing=("postgres",))
    decisions, _ = run([down] * 6 + [dict(sv_active=1, sv_idle=9)] * 4, size=40)
    assert sizes(decisions)[:6] == [40] * 6 and all("postgres missing" in d.reason for d in decisions[:6])
    assert [d.direction for d in decisions[6:]] == ["hold", "hold", "shrink", "shrink"]  # a fresh idle window


def test_a_budget_that_shrinks_under_the_allocation_leaves_the_wish_bounded_by_the_size_in_force():
    ticks = [dict(cl_waiting=30, sv_active=40)] * 2 + [dict(pool_size=12, cl_waiting=60, sv_active=12)] * 4
    decisions, _ = run(ticks, size=40)
    after = decisions[2:]
    assert all(d.size <= 12 + 60 for d in after), [d.size for d in after]   # what the budget left and what waits
    assert all(d.direction == "grow" for d in after)


def test_a_process_restart_that_resets_counters_holds_one_tick_and_keeps_the_baseline():
    ticks = [dict()] * 3 + [dict(cl_waiting=5, xact_per_s=-1200.0, avg_xact_time_ms=-3.0)] + \
        [dict(cl_waiting=5, xact_per_s=None, avg_xact_time_ms=None)]
    decisions, history = run(ticks)
    assert decisions[3].direction == "hold" and "xact_per_s -1200.0 nonsensical" in decisions[3].reason
    assert decisions[4].direction == "grow"
    assert history.baseline_xact_ms == 20.0


def test_latency_that_climbs_while_throughput_does_not_holds_then_shrinks():
    base = [dict(pool_size=10, avg_xact_time_ms=20.0, xact_per_s=500.0)] * 3
    queued = [dict(pool_size=20, cl_waiting=10, avg_xact_time_ms=45.0, xact_per_s=510.0)] * 2
    decisions, history = run(base + queued)
    assert [d.direction for d in decisions[3:]] == ["hold", "shrink"]
    assert decisions[4].rule == "latency" and "latency 45.0 ms = 2.2x baseline 20.0 ms" in decisions[4].reason
    assert congestion_ceiling(history, PARAMS) == 20


def test_a_workload_change_at_a_constant_size_is_not_congestion_and_forgets_what_was_learnt():
    io_wait = [dict(pool_size=16, sv_active=16, avg_xact_time_ms=11.0, xact_per_s=1100.0)] * 3 + \
        [dict(pool_size=31, sv_active=31, avg_xact_time_ms=11.3, xact_per_s=1099.0)] * 3
    cpu_heavy = [dict(pool_size=31, cl_waiting=45, avg_xact_time_ms=150.0, xact_per_s=117.0, cpu=0.50)] * 4
    decisions, history = run(io_wait + cpu_heavy, params=replace(PARAMS, max_pool_size=40))
    assert all(d.rule == "grow" for d in decisions[6:]), [d.reason for d in decisions[6:]]
    assert history.baseline_xact_ms == 150.0 and len(history.signals) == 4
    grown = [dict(pool_size=40, cl_waiting=36, avg_xact_time_ms=320.0, xact_per_s=118.0, cpu=0.50)] * 2
    decisions, _ = run(grown, history=history)                      # growth that adds only latency still counts
    assert [d.rule for d in decisions] == ["latency", "latency"] and decisions[-1].direction == "shrink"


def test_a_workload_change_forgets_the_congestion_ceiling():
    congested = [dict(pool_size=20, cl_waiting=30, cpu=0.95)] * 2
    _, history = run(congested)
    assert congestion_ceiling(history, PARAMS) == 20
    below = dict(pool_size=15, cl_waiting=30, cpu=0.50)
    decisions, history = run([below, dict(below, avg_xact_time_ms=200.0)], history=history)
    assert congestion_ceiling(history, PARAMS) is None and decisions[-1].size == 45


def test_latency_that_climbs_with_throughput_is_more_load_not_queueing():
    base = [dict(pool_size=10, avg_xact_time_ms=20.0, xact_per_s=500.0)] * 3
    busier = [dict(pool_size=20, cl_waiting=10, avg_xact_time_ms=45.0, xact_per_s=900.0)]
    decisions, _ = run(base + busier)
    assert decisions[-1].direction == "grow"


def test_unused_servers_go_back_slowly_alone_and_quickly_when_other_tiers_need_them():
    idle = dict(sv_active=4, sv_idle=76)
    alone, _ = run([idle] * 10, size=80)
    contended, _ = run([dict(idle, contended=True)] * 10, size=80)
    assert sizes(alone) == [80, 80, 60, 45, 33, 24, 18, 13, 9, 6]
    assert sizes(contended)[:5] == [40, 20, 10, 5, 5]
    assert "other tiers need them" in contended[0].reason


def test_a_change_is_not_reversed_within_the_cool_down():
    params = replace(PARAMS, cooldown_ticks=3, idle_shrink_ticks=1)
    decisions, _ = run([dict(cl_waiting=8)] + [dict(sv_active=2, sv_idle=16)] * 4, params=params)
    assert [d.direction for d in decisions] == ["grow", "hold", "hold", "hold", "shrink"]
    assert "cool-down after grow" in decisions[1].reason


def test_history_stays_bounded_and_the_baseline_forgets_what_left_its_window():
    _, history = run([dict(avg_xact_time_ms=12.0)] + [dict(avg_xact_time_ms=20.0)] * (HISTORY_TICKS - 1))
    assert history.baseline_xact_ms == 12.0
    _, history = run([dict(avg_xact_time_ms=20.0)] * 100, history=history)
    assert len(history.signals) == len(history.decisions) == HISTORY_TICKS
    assert history.baseline_xact_ms == 20.0


# -- properties -----------------------------------------------------------------------------------------------

counts = st.integers(min_value=-2, max_value=400)
rates = st.one_of(st.none(), st.floats(min_value=-10, max_value=1e5), st.just(float("nan")))
signals_strategy = st.builds(
    TierSignals, processes=st.integers(0, 12), reachable=st.integers(0, 12), pool_size=st.integers(-1, 300),
    pools=st.integers(0, 4), cl_waiting=counts, cl_active=counts, sv_active=counts, sv_idle=counts,
    maxwait_s=st.floats(allow_nan=True, allow_infinity=True), xact_per_s=rates, avg_xact_time_ms=rates,
    avg_wait_time_ms=rates, cpu=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    missing=st.lists(st.sampled_from(["cpu", "postgres", "console"]), max_size=2).map(tuple),
    contended=st.booleans())
params_strategy = st.builds(
    PolicyParams, min_pool_size=st.integers(1, 20), max_pool_size=st.integers(20, 200),
    cooldown_ticks=st.integers(0, 3), idle_shrink_ticks=st.integers(1, 5))


def check_tick(signals: TierSignals, decision: Decision, params: PolicyParams) -> None:
    size, lo, hi = signals.pool_size, params.min_pool_size, params.max_pool_size
    assert decision.direction == ("grow" if decision.size > size else "shrink" if decision.size < size else "hold")
    assert decision.rule in RULES and decision.reason.startswith(decision.direction + ":")
    if signals.missing:
        assert decision.size <= size and ("missing" in decision.reason)
    if decision.rule == "signal":                                  # hold, or back to max
        assert decision.size == size or decision.size == hi < size
        return
    if decision.rule == "bounds":                                  # the only move not bounded by the step
        assert decision.size in (lo, hi)
        return
    if lo <= size <= hi:
        assert lo <= decision.size <= hi
    need = size + -(-max(0, signals.cl_waiting) // max(1, signals.reachable))     # what waits, in one tick
    assert decision.size <= max(size + 1, need if signals.cpu is not None else math.ceil(size * params.max_step_factor))
    assert decision.size >= size - size // 2


@settings(max_examples=300, deadline=None)
@given(st.lists(signals_strategy, min_size=1, max_size=25), params_strategy)
def test_any_sequence_stays_in_bounds_steps_boundedly_and_never_grows_on_a_missing_signal(ticks, params):
    history = History()
    for signals in ticks:
        decision = decide(signals, history, params)
        check_tick(signals, decision, params)
        history = remember(history, signals, decision, params)
        assert len(history.signals) <= HISTORY_TICKS
        if history.ceiling is None:         # the running baseline is the window's lowest sane latency
            sane = [s.avg_xact_time_ms for s, d in zip(history.signals, history.decisions)
                    if d.rule != "signal" and s.xact_per_s is not None and (s.avg_xact_time_ms or 0) > 0]
            assert history.baseline_xact_ms == (min(sane) if sane else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.floats(0, 1), st.booleans()),
                min_size=1, max_size=40), params_strategy)
def test_sane_sequences_that_follow_their_own_decisions_stay_within_min_and_max(ticks, params):
    size, history = params.min_pool_size, History()
    for waiting, active, cpu, contended in ticks:
        signals = sig(pool_size=size, cl_waiting=waiting, sv_active=min(active, size), sv_idle=0, cpu=cpu,
                      contended=contended)
        decision = decide(signals, history, params)
        check_tick(signals, decision, params)
        history, size = remember(history, signals, decision, params), decision.size
        assert params.min_pool_size <= size <= params.max_pool_size
