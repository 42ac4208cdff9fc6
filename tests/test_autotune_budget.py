"""The connection budget: the server's formula, the allocation's examples, and its guarantee over random input."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from pooler_operator.autotune.budget import allocate, server_budget, transition_order, units, within_budget
from pooler_operator.autotune.model import Allocation, DatabaseSample, Demand


def db(**kw) -> DatabaseSample:
    base = dict(max_connections=100, superuser_reserved_connections=3, reserved_connections=2,
                backend_pids=frozenset(range(1, 31)))
    base.update(kw)
    return DatabaseSample(**base)


@pytest.mark.parametrize("sample, poolers, headroom, expected", [
    (db(), frozenset(range(1, 21)), 5, 100 - 3 - 2 - 10 - 5),          # 10 client backends are not the poolers'
    (db(), frozenset(range(1, 31)), 0, 95),
    (db(), frozenset({500, 501}), 0, 100 - 3 - 2 - 30),                 # a pooler pid PostgreSQL did not list
    (db(reserved_connections=0), frozenset(), 0, 67),                   # before PostgreSQL 16
    (db(max_connections=20), frozenset(), 10, 0),                       # never negative
    (db(error="connection refused"), frozenset(), 0, 0),                # PostgreSQL unreachable
    (db(max_connections=0), frozenset(), 0, 0),                         # nothing read
])
def test_server_budget_is_max_connections_less_reserved_others_and_headroom(sample, poolers, headroom, expected):
    assert server_budget(sample, poolers, headroom) == expected


def shares(allocations: dict[str, Allocation]) -> dict[str, int]:
    return {tier: a.pool_size for tier, a in allocations.items()}


def test_everyone_gets_what_they_want_when_it_fits_with_caps_per_process_and_pool():
    demands = [Demand("a", processes=3, pools=2, wanted=10, floor=5), Demand("b", 1, 1, 40, 5)]
    out = allocate(demands, 200)
    assert out["a"] == Allocation("a", 10, 20, 60, False)
    assert out["b"] == Allocation("b", 40, 40, 40, False)


def test_the_rest_is_shared_max_min_fair_above_the_floors():
    demands = [Demand("small", 1, 1, 8, 2), Demand("big", 1, 1, 100, 2), Demand("bigger", 1, 1, 200, 2)]
    out = allocate(demands, 108)
    assert shares(out) == {"small": 8, "big": 50, "bigger": 50}
    assert [out[t].limited for t in ("small", "big", "bigger")] == [False, True, True]


def test_the_level_is_a_pool_size_so_a_tier_with_more_processes_gets_more_connections():
    out = allocate([Demand("wide", 4, 1, 100, 1), Demand("narrow", 1, 1, 100, 1)], 50)
    assert shares(out) == {"wide": 10, "narrow": 10}
    assert out["wide"].connections == 40 and out["narrow"].connections == 10


def test_steps_left_under_the_next_level_go_to_the_cheapest_tiers_first():
    out = allocate([Demand("a", 3, 1, 100, 0), Demand("b", 2, 1, 100, 0), Demand("c", 2, 1, 100, 0)], 25)
    assert shares(out) == {"a": 3, "b": 4, "c": 4}                     # 3x7 = 21, then b and c one step each


def test_floors_that_do_not_fit_are_scaled_down_in_proportion():
    demands = [Demand("a", 2, 1, 50, 10), Demand("b", 1, 1, 50, 10), Demand("c", 1, 1, 3, 10)]
    out = allocate(demands, 23)                                           # floors cost 20 + 10 + 3 = 33
    assert shares(out) == {"a": 6, "b": 6, "c": 2}
    assert sum(a.connections for a in out.values()) <= 23


def test_pinned_connections_are_reserved_before_anything_is_shared():
    demands = [Demand("half-down", 2, 1, 20, 5, pinned=30), Demand("b", 1, 1, 100, 5)]
    out = allocate(demands, 60)
    assert shares(out) == {"half-down": 10, "b": 10}                    # 30 left: 2 x 10 + 1 x 10
    assert within_budget(out, demands, 60)
    starved = allocate(demands, 25)                                       # pinned alone exceed it: nothing more
    assert sum(a.connections for a in starved.values()) == 0 and within_budget(starved, demands, 25)


def test_a_tier_named_twice_is_refused_rather_than_counted_once():
    with pytest.raises(ValueError, match="one demand per tier"):
        allocate([Demand("a", 1, 1, 10, 1), Demand("a", 5, 1, 10, 1)], 100)


def test_within_budget_catches_an_allocation_that_would_exceed_it():
    demands = [Demand("a", 2, 1, 20, 5, pinned=4)]
    assert within_budget({"a": Allocation("a", 8, 8, 16, False)}, demands, 20)
    assert not within_budget({"a": Allocation("a", 9, 9, 18, False)}, demands, 20)


def test_transitions_apply_every_shrink_and_removal_before_any_grow_and_skip_the_unchanged():
    old = {"a": Allocation("a", 10, 10, 10, False), "b": Allocation("b", 10, 10, 20, False),
           "gone": Allocation("gone", 5, 5, 5, False), "same": Allocation("same", 3, 3, 3, False)}
    new = {"a": Allocation("a", 20, 20, 20, False), "b": Allocation("b", 5, 5, 10, False),
           "new": Allocation("new", 5, 5, 5, False), "same": Allocation("same", 3, 3, 3, False)}
    assert transition_order(old, new) == ["b", "gone", "a", "new"]


# -- properties -----------------------------------------------------------------------------------------------

demand_strategy = st.builds(Demand, tier=st.sampled_from([f"t{i}" for i in range(40)]),
                            processes=st.integers(0, 40), pools=st.integers(0, 5), wanted=st.integers(-2, 300),
                            floor=st.integers(0, 30), pinned=st.integers(0, 50))
demands_strategy = st.lists(demand_strategy, max_size=25, unique_by=lambda d: d.tier)
budgets = st.integers(-10, 5000)


@settings(max_examples=250, deadline=None)
@given(demands_strategy, budgets)
def test_the_allocation_never_exceeds_the_budget_and_never_takes_pinned_connections(demands, budget):
    out = allocate(demands, budget)
    assert set(out) == {d.tier for d in demands}
    assert within_budget(out, demands, budget)
    free = max(0, budget - sum(d.pinned for d in demands))
    assert sum(a.connections for a in out.values()) <= free
    for d in demands:
        a = out[d.tier]
        assert 0 <= a.pool_size <= max(0, d.wanted)
        assert a.per_process_cap == a.pool_size * max(1, d.pools)
        assert a.connections == a.per_process_cap * max(1, d.processes)
        assert a.limited == (a.pool_size < max(0, d.wanted))


@settings(max_examples=200, deadline=None)
@given(demands_strategy, budgets)
def test_floors_are_respected_when_they_fit_and_what_is_left_is_too_little_for_the_next_in_line(demands, budget):
    out = allocate(demands, budget)
    free = max(0, budget - sum(d.pinned for d in demands))
    if sum(min(d.floor, max(0, d.wanted)) * units(d) for d in demands) > free:
        return
    for d in demands:
        assert out[d.tier].pool_size >= min(d.floor, max(0, d.wanted))
    left = free - sum(a.connections for a in out.values())
    limited = [d for d in demands if out[d.tier].limited]
    lowest = min((out[d.tier].pool_size for d in limited), default=None)
    assert all(units(d) > left for d in limited if out[d.tier].pool_size == lowest)


@settings(max_examples=200, deadline=None)
@given(demands_strategy, budgets, st.integers(1, 300))
def test_more_budget_never_gives_any_tier_less(demands, budget, more):
    before, after = allocate(demands, budget), allocate(demands, budget + more)
    assert all(after[t].pool_size >= before[t].pool_size for t in before)


@settings(max_examples=200, deadline=None)
@given(demands_strategy, budgets, st.randoms(use_true_random=False))
def test_the_order_of_the_demands_does_not_matter(demands, budget, rnd: random.Random):
    shuffled = list(demands)
    rnd.shuffle(shuffled)
    assert allocate(shuffled, budget) == allocate(demands, budget)


@settings(max_examples=200, deadline=None)
@given(demands_strategy, demands_strategy, budgets)
def test_applying_transitions_in_order_never_passes_the_larger_total(old_demands, new_demands, budget):
    old, new = allocate(old_demands, budget), allocate(new_demands, budget)
    ceiling = max(sum(a.connections for a in old.values()), sum(a.connections for a in new.values()))
    current = dict(old)
    for tier in transition_order(old, new):
        if tier in new:
            current[tier] = new[tier]
        else:
            del current[tier]
        assert sum(a.connections for a in current.values()) <= ceiling
    assert {t: a.connections for t, a in current.items()} == {t: a.connections for t, a in new.items()}
