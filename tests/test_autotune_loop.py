"""The autotuner's loop against real parts: a PostgreSQL with max_connections = 40, two maitred poolers of that
server with small pools, pgbench bursts through one of them, and a pg_stat_activity sampler that proves the
server's budget was never exceeded."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from dataclasses import replace

import psycopg
import pytest

from maitred.local.postgres import LocalPostgres
from maitred.local.prometheus import CPU_QUERY, LocalPrometheus
from pooler_operator.autotune.loop import (Autotuner, ConsoleTarget, PostgresTarget, PrometheusTarget, TierReport,
                                           TierTarget)
from pooler_operator.autotune.model import PolicyParams
from tests.support import PASSWORDS, PoolerProcess, PoolerSet, require_binary, wait_for
from tests.test_admin import USERS
from tests.test_autotune_console import config_of

TICK = 0.5
HEADROOM = 2
# What the poolers may hold: max_connections 40, 3 reserved for superusers, the headroom, and two backends
# that are not theirs (the sampler's and the autotuner's monitoring connection).
BUDGET = 40 - 3 - HEADROOM - 2


@pytest.fixture(scope="module")
def small_pg():
    """A server whose 40 connections two poolers must share."""
    require_binary("pgbench")
    cluster = LocalPostgres(settings={"max_connections": "40"})
    cluster.start()
    try:
        cluster.create_role("app", PASSWORDS["app"])
        cluster.create_database("app", owner="app")
        PoolerProcess.pgbench_init(cluster)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def poolers(small_pg, tmp_path):
    started = PoolerSet(small_pg, tmp_path)

    def start(**settings):
        settings.setdefault("default_pool_size", 2)
        return started.start(pool_mode="transaction", max_client_conn=200, userlist=USERS, admin_users="admin",
                             **settings)
    yield start
    started.close()


class Sampler:
    """Counts the poolers' server connections (role app) in pg_stat_activity every 20 ms, in a thread."""

    def __init__(self, pg: LocalPostgres):
        self.conn = psycopg.connect(f"host={pg.socket_dir} port={pg.port} user=postgres dbname=postgres",
                                    autocommit=True)
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            n = self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                  "AND usename = 'app'").fetchone()[0]
            self.peak = max(self.peak, n)
            self.samples += 1
            time.sleep(0.02)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.conn.close()


def tier(pooler, pg: LocalPostgres, dry_run: bool = False, **params) -> TierTarget:
    console = ConsoleTarget("127.0.0.1", pooler.port, "admin", USERS["admin"], f"127.0.0.1:{pooler.port}")
    params.setdefault("min_pool_size", 2)
    params.setdefault("max_pool_size", 40)
    return TierTarget(console.label, (console,), 1, PostgresTarget(pg.dsn()), None, PolicyParams(**params),
                      HEADROOM, dry_run)


def burst(pooler, seconds: int, clients: int = 30) -> subprocess.Popen:
    """Short transactions that wait on something other than CPU or locks (a 10 ms sleep), so that a larger pool
    really serves more of them: pgbench's default script updates one branch row and only queues on its lock."""
    script = Path(pooler.workdir) / "burst.sql"
    script.write_text("SELECT pg_sleep(0.01);\n")
    return subprocess.Popen(["pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", "2", "-T", str(seconds),
                             "-h", "127.0.0.1", "-p", str(pooler.port), "-U", "app", "app"],
                            env=dict(os.environ, PGPASSWORD=PASSWORDS["app"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def run_ticks(tuner: Autotuner, tiers: list[TierTarget], until, limit: int) -> list[list[TierReport]]:
    """Tick every TICK seconds until `until(history)` is true or `limit` ticks ran."""
    history: list[list[TierReport]] = []
    while len(history) < limit:
        history.append(await tuner.tick(tiers))
        if until(history):
            break
        await asyncio.sleep(TICK)
    return history


def of(history: list[list[TierReport]], name: str) -> list[TierReport]:
    return [r for reports in history for r in reports if r.tier == name]


def clean(bench: subprocess.Popen) -> None:
    out, err = bench.communicate(timeout=60)
    assert bench.returncode == 0, err
    assert "number of failed transactions: 0 " in out, out


def through_burst(tuner: Autotuner, tiers: list[TierTarget], pooler, seconds: int,
                  enough=lambda history: False) -> list[list[TierReport]]:
    """Tick while pgbench runs `seconds` through `pooler`, or until `enough(history)`: a tick count, not the
    machine's speed, bounds what the loop must achieve. No transaction may fail."""
    bench = burst(pooler, seconds)
    history = asyncio.run(run_ticks(tuner, tiers, lambda h: bench.poll() is not None or enough(h),
                                    limit=8 * seconds))
    if bench.poll() is None:                 # stopped early: no summary, but no client may have failed so far
        bench.terminate()
        _, err = bench.communicate(timeout=60)
        assert "abort" not in err and "ERROR" not in err, err
    else:
        clean(bench)
    return history


def assert_within_budget(history: list[list[TierReport]], sampler: Sampler) -> None:
    """Every tick's shares fit its budget, and what PostgreSQL saw fits the poolers' budget."""
    assert all(sum(r.allocation.connections for r in reports) <= reports[0].budget for reports in history)
    assert max(reports[0].budget for reports in history) == BUDGET
    assert sampler.samples > 50 and 0 < sampler.peak <= BUDGET, sampler.peak


def test_the_pool_grows_while_clients_wait_and_shrinks_after_the_burst_within_the_budget(poolers, small_pg):
    busy, quiet = poolers(), poolers()
    tiers = [tier(busy, small_pg), tier(quiet, small_pg)]
    tuner = Autotuner(timeout=3)
    with Sampler(small_pg) as sampler:
        during = through_burst(tuner, tiers, busy, seconds=8)
        peak = max(r.to_size for r in of(during, tiers[0].tier))
        after = asyncio.run(run_ticks(tuner, tiers, lambda h: of(h, tiers[0].tier)[-1].to_size < peak, limit=20))
    busy_reports = of(during, tiers[0].tier)
    grew = [r for r in busy_reports if r.decision.direction == "grow"]
    assert grew and grew[0].signals.cl_waiting > 0 and grew[0].to_size > grew[0].from_size and grew[0].applied
    assert peak > 2
    assert of(after, tiers[0].tier)[-1].to_size < peak, [r.line() for r in of(after, tiers[0].tier)]
    assert_within_budget(during + after, sampler)
    size, cap = config_of(busy.port)
    assert size == of(after, tiers[0].tier)[-1].to_size and 0 < cap <= BUDGET


def test_a_console_that_dies_holds_and_stays_counted_at_its_cap(small_pg, poolers):
    busy, doomed = poolers(), poolers(default_pool_size=10, expect_alive=False)
    tiers = [tier(busy, small_pg), tier(doomed, small_pg, min_pool_size=10, max_pool_size=10)]
    tuner = Autotuner(timeout=2)
    first = asyncio.run(tuner.tick(tiers))
    last_cap = first[1].allocation.per_process_cap
    assert last_cap == 10 and config_of(doomed.port) == (10, 10)
    doomed.signal(signal.SIGKILL)
    doomed.proc.wait()
    history = through_burst(tuner, tiers, busy, seconds=5)
    for reports in history:
        busy_report, dead = reports
        assert dead.decision.direction == "hold" and not dead.applied and dead.signals is None
        assert any(dead.tier in e for e in dead.errors)
        assert busy_report.allocation.connections + dead.allocation.connections + last_cap <= busy_report.budget
    assert max(r.to_size for r in of(history, tiers[0].tier)) > 2


def test_a_dry_run_reports_a_decision_and_changes_nothing(small_pg, poolers):
    busy = poolers()
    tiers = [tier(busy, small_pg, dry_run=True)]
    tuner = Autotuner(timeout=2)
    bench = burst(busy, seconds=3, clients=10)
    history = asyncio.run(run_ticks(tuner, tiers, lambda h: h[-1][0].to_size > 2, limit=20))
    clean(bench)
    report = history[-1][0]
    assert report.to_size > report.from_size == 2 and not report.applied
    assert "[dry run]" in report.line()
    assert config_of(busy.port) == (2, 0)


def test_a_tier_not_due_holds_at_its_size_stays_counted_and_learns_nothing(small_pg, poolers):
    waiting = poolers()
    target = replace(tier(waiting, small_pg), due=False)
    tuner = Autotuner(timeout=2)
    bench = burst(waiting, seconds=3, clients=10)
    history = asyncio.run(run_ticks(tuner, [target], lambda h: h[-1][0].signals.cl_waiting > 0, limit=20))
    clean(bench)
    report = history[-1][0]
    assert report.signals.cl_waiting > 0 and report.decision.direction == "hold", report.line()
    assert "its own interval" in report.decision.reason
    assert report.allocation.pool_size == 2 and report.to_size == 2     # in the budget at the size it has
    assert target.tier not in tuner.history and config_of(waiting.port) == (2, 2)


def test_postgres_unreachable_holds_every_tier_and_sets_nothing(small_pg, poolers):
    pooler = poolers()
    target = tier(pooler, small_pg)
    broken = TierTarget(target.tier, target.consoles, 1, PostgresTarget(small_pg.dsn(password="wrong")), None,
                        target.params, HEADROOM)
    (report,) = asyncio.run(Autotuner(timeout=2).tick([broken]))
    assert report.decision.direction == "hold" and report.allocation is None and not report.applied
    assert any("password authentication failed" in e for e in report.errors)
    assert config_of(pooler.port) == (2, 0)


def test_an_idle_pooler_gives_back_what_a_waiting_one_needs_shrinking_first(small_pg, poolers):
    idle, busy = poolers(default_pool_size=25), poolers()
    warm = burst(idle, seconds=2, clients=25)        # the idle pooler holds 25 servers it no longer uses
    clean(warm)
    tiers = [tier(idle, small_pg), tier(busy, small_pg)]
    tuner = Autotuner(timeout=3)
    with Sampler(small_pg) as sampler:
        history = through_burst(tuner, tiers, busy, seconds=60,
                                enough=lambda h: max(r.to_size or 0 for r in of(h, tiers[1].tier)) > BUDGET - 25)
    gave, took = of(history, tiers[0].tier), of(history, tiers[1].tier)
    assert gave[-1].to_size < 25
    assert max(r.to_size for r in took) > BUDGET - 25, [r.line() for r in took[-6:] + gave[-6:]]
    assert_within_budget(history, sampler)


def test_cpu_from_prometheus_at_the_high_water_mark_holds_then_shrinks(small_pg, poolers):
    require_binary("prometheus")
    require_binary("prometheus-node-exporter")
    pooler = poolers(default_pool_size=10)
    with LocalPrometheus() as prom:
        target = replace(tier(pooler, small_pg, cpu_high=0.0, cpu_low=0.0),
                         prometheus=PrometheusTarget(prom.url, CPU_QUERY))
        tuner = Autotuner(timeout=3)
        first, second = [asyncio.run(tuner.tick([target]))[0] for _ in range(2)]
    assert 0.0 <= first.signals.cpu <= 1.0
    assert first.decision.direction == "hold" and "cpu" in first.decision.reason and first.to_size == 10
    assert second.decision.direction == "shrink" and second.to_size < 10 and second.applied
    assert config_of(pooler.port)[0] == second.to_size


def test_a_pooler_with_workers_is_one_console_counted_as_each_of_its_processes(poolers, small_pg):
    """`workers = 2`: one console answers for two processes, each holding the pool size on its own; the tier is
    not held for a missing console, and what both may open together stays within the budget."""
    busy = poolers(maitred={"workers": 2})
    wait_for(lambda: busy.log_text().count(f"listening on 127.0.0.1:{busy.port}") >= 2,
             message="two workers to listen")
    tiers = [replace(tier(busy, small_pg), expected_processes=2)]
    tuner = Autotuner(timeout=3)
    with Sampler(small_pg) as sampler:
        during = through_burst(tuner, tiers, busy, seconds=6,
                               enough=lambda h: any(r.decision.direction == "grow" for r in of(h, tiers[0].tier)))
        history = during + asyncio.run(run_ticks(tuner, tiers, lambda h: False, limit=4))
    reports = of(history, tiers[0].tier)
    assert all(r.signals is None or (r.signals.processes, r.signals.reachable) == (2, 2) for r in reports)
    assert not any("console" in problem for r in reports for problem in r.errors), [r.line() for r in reports]
    grew = [r for r in reports if r.decision.direction == "grow"]
    assert grew and grew[0].applied, [r.line() for r in reports]
    assert all(r.allocation.connections == 2 * r.allocation.per_process_cap for r in reports if r.allocation)
    assert_within_budget(history, sampler)
