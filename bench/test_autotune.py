"""Keeps `python3 -m bench autotune` working: its verdict, table and schedule on fixed records, and one --quick
run end to end (a row per fixed size and one autotuned, the plot written, the sampler's readings). No speed is
asserted: the figures are the benchmark's output, read by people."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from bench.autotune import pgcpu, runs, sampler, summary, workload
from tests.support import missing, require_binary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = workload.Plan(phases=(workload.Phase("io-wait", "SELECT 1", 4, 2), workload.Phase("idle", None, 0, 1)),
                     sizes=(2, 8), rounds=2)


def _run(label: str, size: int | None, total: int, p99: float, violations: int = 0) -> dict:
    return {"label": label, "size": size, "status": "ok", "total_xacts": total, "p99_ms": p99,
            "violations": violations, "max_client_backends": 9, "limit": 33, "samples": [{}] * 3,
            "phases": [{"name": "io-wait", "tps": total / 2, "p99_ms": p99}, {"name": "idle", "tps": None,
                                                                             "p99_ms": None}]}


def _summary(records: list[dict]) -> dict:
    return summary.summarize(records, plan=PLAN, versions={"PostgreSQL": "15"}, cores=2,
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
    assert "Target (autotuned total ≥ 1.0× best static, p99 no worse, 0 violations): met" in table


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


# -- one quick run of the real thing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    for tool in ("pgbench", "prometheus", "prometheus-node-exporter"):
        require_binary(tool)
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        missing("the PostgreSQL server is needed by the benchmark (scripts/install-deps.sh installs it)")
    if importlib.util.find_spec("matplotlib") is None:
        missing("matplotlib draws the benchmark's plot (pip install -e '.[bench]'; scripts/install-deps.sh)")
    out = tmp_path_factory.mktemp("autotune-results")
    proc = subprocess.run([sys.executable, "-m", "bench", "autotune", "--quick", "--out", str(out)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stems = [p[:-3] for p in glob.glob(str(out / "autotune-*.md"))]
    assert len(stems) == 1, os.listdir(out)
    with open(stems[0] + ".json") as f:
        return stems[0], proc, json.load(f)


def test_quick_run_prints_a_row_for_every_fixed_size_and_the_autotuner(quick_run):
    stem, proc, result = quick_run
    with open(stem + ".md") as f:
        assert f.read().strip() == proc.stdout.strip()
    assert [r["label"] for r in result["rows"]] == ["static 2", "static 4", "autotuned"]
    for r in result["rows"]:
        assert r["status"] == "ok", r
        assert f"| {r['label']}" in proc.stdout
    assert result["best_static"] in ("static 2", "static 4")
    assert "Target (autotuned total ≥ 1.0× best static" in proc.stdout


def test_quick_run_draws_the_plot(quick_run):
    stem, _, _ = quick_run
    with open(stem + ".png", "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(stem + ".png") > 10_000


def test_quick_run_sampled_console_and_pg_stat_activity_in_every_run(quick_run):
    _, _, result = quick_run
    for run in result["runs"]:
        read = [s for s in run["samples"] if s["pool_size"] is not None and s["client_backends"] is not None]
        assert len(read) >= 5, (run["label"], run["sampler_errors"])
        assert run["limit"] == 40 - 3 - 4 and run["violations"] is not None
        assert all(p["status"] == "ok" for p in run["phases"]), run["phases"]
        if run["size"] is not None:
            assert {s["pool_size"] for s in read} == {run["size"]}


def test_quick_run_kept_what_the_autotuner_printed(quick_run):
    _, _, result = quick_run
    tuned = next(r for r in result["runs"] if r["label"] == "autotuned")
    assert tuned["decisions"], "maitred autotune printed no line"
