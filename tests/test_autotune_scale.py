"""`python3 -m bench autotune-scale` in a small configuration: it runs, prints its table and counts no violation."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_scale_benchmark_prints_per_tick_times_and_no_budget_violation():
    run = subprocess.run([sys.executable, "-m", "bench", "autotune-scale", "--tiers", "20", "--processes", "150",
                          "--ticks", "8", "--budget", "400"],
                         cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "20 tiers, 150 processes, budget 400, 8 ticks" in run.stdout
    assert "| whole tick |" in run.stdout and "budget violations: 0" in run.stdout


def test_the_scale_benchmark_refuses_a_fleet_with_fewer_processes_than_tiers():
    run = subprocess.run([sys.executable, "-m", "bench", "autotune-scale", "--tiers", "20", "--processes", "5"],
                         cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--processes >= --tiers" in run.stderr
