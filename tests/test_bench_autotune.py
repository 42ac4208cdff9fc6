"""`python3 -m bench autotune --quick` end to end, with one tier and with the default two: it exits 0, writes
the table, the JSON file and the plot, every phase record holds each loaded tier's figures, the sampler read
every tier's console, and the one autotuner printed its decisions. No speed is asserted."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.support import missing, require_binary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=[["--tiers", "1"], []], ids=["one-tier", "two-tiers-default"])
def quick_run(request, tmp_path_factory):
    for tool in ("pgbench", "prometheus", "prometheus-node-exporter"):
        require_binary(tool)
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        missing("the PostgreSQL server is needed by the benchmark (scripts/install-deps.sh installs it)")
    if importlib.util.find_spec("matplotlib") is None:
        missing("matplotlib draws the benchmark's plot (pip install -e '.[bench]'; scripts/install-deps.sh)")
    out = tmp_path_factory.mktemp("autotune-results")
    proc = subprocess.run([sys.executable, "-m", "bench", "autotune", "--quick", *request.param, "--out", str(out)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stems = [p[:-3] for p in glob.glob(str(out / "autotune-*.md"))]
    assert len(stems) == 1, os.listdir(out)
    with open(stems[0] + ".json") as f:
        return stems[0], proc, json.load(f)


def test_quick_run_prints_a_row_for_every_fixed_size_and_the_autotuner_and_a_verdict(quick_run):
    stem, proc, result = quick_run
    with open(stem + ".md") as f:
        assert f.read().strip() == proc.stdout.strip()
    assert [r["label"] for r in result["rows"]] == ["static 2", "static 4", "autotuned"]
    for r in result["rows"]:
        assert r["status"] == "ok", r
        assert f"| {r['label']}" in proc.stdout
    assert set(result["verdict"]) >= {"met"} and "checks" in result["verdict"], result["verdict"]
    assert "Target (autotuned total ≥ 1.0× best static" in proc.stdout


def test_quick_run_draws_the_plot(quick_run):
    stem, _, _ = quick_run
    with open(stem + ".png", "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(stem + ".png") > 10_000


def test_quick_run_keeps_every_loaded_tiers_figures_in_each_phase_record(quick_run):
    _, proc, result = quick_run
    tiers = result["plan"]["tiers"]
    assert tiers == (["app", "reports"] if len(tiers) == 2 else ["app"])
    for run in result["runs"]:
        assert run["tiers"] == tiers and set(run["tier_per_second"]) == set(tiers)
        for phase, planned in zip(run["phases"], result["plan"]["phases"]):
            assert phase["status"] == "ok", phase
            assert sorted(phase["tiers"]) == sorted(x["tier"] for x in planned["loads"])
            for figures in phase["tiers"].values():
                assert figures["status"] == "ok" and figures["transactions"] > 0, figures
            if phase["tiers"]:
                assert phase["transactions"] == sum(f["transactions"] for f in phase["tiers"].values())
        assert run["total_xacts"] == sum(p["transactions"] for p in run["phases"])
    both = [p for p in result["runs"][0]["phases"] if len(p["tiers"]) == 2]
    assert len(both) == (1 if len(tiers) == 2 else 0)
    assert ("Throughput per tier" in proc.stdout) == (len(tiers) == 2)


def test_quick_run_sampled_every_tiers_console_and_pg_stat_activity(quick_run):
    _, _, result = quick_run
    tiers = result["plan"]["tiers"]
    for run in result["runs"]:
        read = [s for s in run["samples"] if s["pool_size"] is not None and s["client_backends"] is not None]
        assert len(read) >= 5, (run["label"], run["sampler_errors"])
        assert run["limit"] == 40 - 3 - 4 and run["violations"] is not None
        assert all(set(s["tiers"]) == set(tiers) for s in read)
        assert all(s["pool_size"] == sum(s["tiers"][t]["pool_size"] for t in tiers) for s in read)
        if run["size"] is not None:
            assert {s["tiers"][t]["pool_size"] for s in read for t in tiers} == {run["size"]}


def test_quick_run_runs_one_autotuner_for_every_tier(quick_run):
    _, _, result = quick_run
    tuned = next(r for r in result["runs"] if r["label"] == "autotuned")
    assert tuned["decisions"], "maitred autotune printed no line"
    first = tuned["decisions"][0][1]
    assert first.startswith(f"autotuning {len(tuned['tiers'])} pooler"), first
    assert all(console in first for console in tuned["consoles"].values()), (first, tuned["consoles"])
