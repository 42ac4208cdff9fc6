"""Keeps `python3 -m bench autotune` working: its verdict, tables, budget and schedule on fixed records (the
--quick runs end to end are tests/test_bench_autotune.py). No speed is asserted: the figures are the
benchmark's output, read by people."""
from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from bench.autotune import dbhost, pgcpu, runs, sampler, summary, workload

PLAN = workload.Plan(tiers=("app",), phases=(workload.Phase("io-wait", (workload.Load("app", "SELECT 1", 4),), 2),
                                             workload.Phase("idle", (), 1)),
                     sizes=(2, 8), rounds=2)
TWO_TIERS = workload.Plan(tiers=("app", "reports"), sizes=(8, 32), phases=(
    workload.Phase("both", (workload.Load("app", "SELECT 2", 4), workload.Load("reports", "SELECT 1", 4)), 2),))


def _run(label: str, size: int | None, total: int, p99: float, violations: int = 0, backends: int = 9) -> dict:
    return {"label": label, "size": size, "status": "ok", "total_xacts": total, "p99_ms": p99,
            "violations": violations, "max_client_backends": backends, "limit": 33, "samples": [{}] * 3,
            "phases": [{"name": "io-wait", "tps": total / 2, "p99_ms": p99, "tiers": {"app": {"tps": total / 2}}},
                       {"name": "idle", "tps": None, "p99_ms": None, "tiers": {}}]}


def _two_tier_run(label: str, size: int | None, app: int, reports: int, violations: int = 0) -> dict:
    return {"label": label, "size": size, "status": "ok", "total_xacts": (app + reports) * 2, "p99_ms": 5.0,
            "violations": violations, "max_client_backends": 40 if violations else 20, "limit": 33,
            "phases": [{"name": "both", "tps": app + reports, "p99_ms": 5.0,
                        "tiers": {"app": {"tps": app}, "reports": {"tps": reports}}}]}


def _summary(records: list[dict], plan: workload.Plan = PLAN) -> dict:
    return summary.summarize(records, plan=plan, versions={"PostgreSQL": "15"}, cores=2,
                             started=datetime(2026, 1, 2, tzinfo=timezone.utc))


def test_best_static_is_the_largest_median_total_and_the_autotuned_row_is_its_ratio():
    result = _summary([_run("static 2", 2, 100, 5.0), _run("static 2", 2, 300, 7.0),
                       _run("static 8", 8, 400, 9.0), _run("static 8", 8, 600, 11.0),
                       _run("autotuned", None, 450, 8.0), _run("autotuned", None, 600, 10.0)])
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["static 2", "static 8", "autotuned"]
    assert result["best_static"] == "static 8"
    assert rows["static 8"]["total_xacts"] == 500 and rows["static 8"]["p99_ms"] == 10.0
    assert rows["autotuned"]["vs_best"] == pytest.approx(1.05)
    assert result["verdict"] == {"met": True, "checks": {"throughput": True, "p99": True, "violations": True}}
    table = summary.markdown(result)
    assert "| static 8 (best static) | 500 | 1.00× | 10.0 | 0 | 9 / 33 | 250 | 10.0 |" in table
    assert "| autotuned | 525 | 1.05× | 9 | 0 | 9 / 33 | 262 | 9 |" in table
    assert "Target (autotuned total ≥ 1.0× best static within the budget, p99 no worse, 0 violations): met" in table
    assert "Throughput per tier" not in table   # one tier: the totals are its figures


def test_a_static_size_whose_tiers_together_break_the_budget_is_marked_and_never_the_best():
    result = _summary([_two_tier_run("static 8", 8, 100, 200), _two_tier_run("static 32", 32, 300, 900, 4),
                       _two_tier_run("autotuned", None, 250, 500)], TWO_TIERS)
    assert result["best_static"] == "static 8"
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["static 32"]["over_budget"] and not rows["static 8"]["over_budget"]
    assert rows["autotuned"]["vs_best"] == pytest.approx(2.5)
    table = summary.markdown(result)
    assert "| static 32 (over budget) | 2,400 | 4.00× |" in table
    assert ("- static 32: over budget: its tiers together opened up to 40 client backends, above the limit of "
            "33; not a valid configuration, so not a candidate for the best static size.") in table
    assert "| pool | both: app | both: reports |" in table
    assert "| autotuned | 250 | 500 |" in table


def test_with_every_static_size_over_budget_there_is_no_best_and_no_verdict():
    result = _summary([_two_tier_run("static 32", 32, 300, 900, 4), _two_tier_run("autotuned", None, 250, 500)],
                      TWO_TIERS)
    assert result["best_static"] is None
    assert result["verdict"] == {"met": False,
                                 "why": "no autotuned result, or no static one within the budget, to compare"}


def test_a_single_violation_or_a_worse_p99_misses_the_target_and_the_table_says_which():
    result = _summary([_run("static 8", 8, 500, 10.0), _run("autotuned", None, 600, 12.0, violations=1)])
    assert result["verdict"] == {"met": False, "checks": {"throughput": True, "p99": False, "violations": False}}
    assert "not met (throughput ok, p99 missed, violations missed)" in summary.markdown(result)


def test_a_failed_round_fails_its_row_and_the_note_says_why():
    failed = dict(_run("autotuned", None, 0, 1.0), status="failed", reason="maitred autotune exited with 2")
    result = _summary([_run("static 2", 2, 100, 5.0), failed])
    table = summary.markdown(result)
    assert "| autotuned | failed | – |" in table
    assert "- autotuned: failed: maitred autotune exited with 2" in table
    assert result["verdict"]["met"] is False


def test_budget_limit_leaves_the_reserved_slots_and_the_headroom_and_counts_samples_above_it():
    limit = sampler.connection_limit({"max_connections": "40", "superuser_reserved_connections": "3",
                                      "reserved_connections": "2"}, headroom=4)
    assert limit == 31
    samples = [sampler.Sample(t=0, client_backends=n) for n in (30, 31, 32, None, 40)]
    assert sampler.violations(samples, limit) == 2


def test_a_sample_sums_its_tiers_and_leaves_a_field_unknown_when_a_tier_went_unread():
    app = {"pool_size": 8, "cl_waiting": 3, "maxwait_s": 0.5}
    assert sampler.over_tiers({"app": app, "reports": {"pool_size": 4, "cl_waiting": 0, "maxwait_s": 1.5}}) \
        == {"pool_size": 12, "cl_waiting": 3, "maxwait_s": 1.5}
    assert sampler.over_tiers({"app": app, "reports": {}}) == {}


def test_one_autotuner_is_given_every_tier_as_a_pooler():
    class Pg:
        def dsn(self):
            return "postgresql://postgres@127.0.0.1:5432/postgres"
    argv = runs.autotune_argv(TWO_TIERS, [7001, 7002], Pg(), "http://127.0.0.1:9090", "up")
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--pooler"] == [runs.console_dsn(7001),
                                                                            runs.console_dsn(7002)]


def test_postgres_cpu_counter_counts_a_process_tree_and_never_goes_down():
    counter = pgcpu.CpuCounter(os.getpid())
    first = counter.read()
    assert first > 0
    counter.value = first + 1000  # as after a reading that saw more than the next one will
    assert counter.read() == first + 1000
    assert pgcpu.cpu_query(2) == f"sum(rate({pgcpu.METRIC}[5s])) / 2"


def test_even_rounds_run_the_sweep_in_reverse_so_the_autotuner_is_not_always_last():
    assert runs.per_second([(10.2, 1), (10.9, 1), (12.5, 1), (99.0, 1)], t0=10.0, seconds=3) == [2, 0, 1]
    from bench.autotune.main import schedule
    assert schedule(PLAN) == [2, 8, None, None, 8, 2]


@pytest.mark.parametrize("cores, split", [(1, None), (2, ("1", "0")), (3, ("2", "0-1")), (4, ("2-3", "0-1")),
                                          (8, ("4-7", "0-3"))])
def test_the_database_host_gets_the_last_half_of_the_cores_and_the_clients_the_rest(cores, split):
    assert dbhost.split(cores) == split
