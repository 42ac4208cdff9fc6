"""The autotuner's signal readers against real parts: Prometheus scraping Debian's node-exporter, PostgreSQL's
settings and pg_stat_activity, the poolers' own connections told apart by pid; and a tier's signals derived
from differenced SHOW STATS."""
from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from maitred.local.prometheus import CPU_QUERY, LocalPrometheus
from pooler_operator.autotune.budget import server_budget
from pooler_operator.autotune.console import sample
from pooler_operator.autotune.model import PoolSample, ProcessSample
from pooler_operator.autotune.signals import CpuReading, Totals, read_cpu, read_database, tier_signals
from tests.support import PASSWORDS, require_binary
from tests.test_admin import USERS


@pytest.fixture(scope="module")
def prometheus():
    require_binary("prometheus")
    require_binary("prometheus-node-exporter")
    with LocalPrometheus() as prom:
        yield prom


def run(coro):
    return asyncio.run(coro)


# -- Prometheus --------------------------------------------------------------------------------------------

def test_cpu_is_node_exporters_non_idle_share_between_0_and_1(prometheus):
    reading = run(read_cpu(prometheus.url, CPU_QUERY))
    assert reading.missing is None
    assert 0.0 <= reading.value <= 1.0


@pytest.mark.parametrize("query, reason", [
    ("rate(", "refused the query: invalid parameter \"query\": 1:6: parse error"),
    ("vector(0) / 0", "the query returned NaN"),
    ("absent(up)", "the query returned no series"),
    ("vector(7)", "7 is outside 0..1"),
    ("vector(1.2)", "1.2 is outside 0..1"),
])
def test_a_nonsensical_cpu_answer_is_missing_with_its_reason(prometheus, query, reason):
    reading = run(read_cpu(prometheus.url, query))
    assert reading.value is None and reason in reading.missing


def test_a_rate_a_little_past_1_is_a_saturated_cpu_not_a_missing_one(prometheus):
    """rate() over a short window of a saturated host reads 1.01..1.07 with scrape jitter."""
    assert run(read_cpu(prometheus.url, "vector(1.07)")) == CpuReading(1.0)


def test_a_stale_cpu_sample_is_missing(prometheus):
    reading = run(read_cpu(prometheus.url, CPU_QUERY, max_age=60, clock=lambda: time.time() + 600))
    assert reading.value is None and "old" in reading.missing


def test_prometheus_down_is_a_missing_cpu_that_names_it():
    prom = LocalPrometheus().start()
    url = prom.url
    prom.stop()
    reading = run(read_cpu(url, CPU_QUERY, timeout=2))
    assert reading == CpuReading(None, f"cpu: Prometheus at {url} unreachable (ConnectionError)")


# -- PostgreSQL --------------------------------------------------------------------------------------------

def test_postgres_reports_its_limits_identity_and_client_backends(pg):
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname=app password={PASSWORDS['app']}",
                         autocommit=True) as direct:
        pid = direct.info.backend_pid
        db = run(read_database(pg.dsn()))
    assert db.error is None
    assert (db.max_connections, db.superuser_reserved_connections, db.reserved_connections) == (300, 3, 0)
    assert db.system_identifier == pg.psql("SELECT system_identifier FROM pg_control_system()")
    assert pid in db.backend_pids
    assert db.by_user["app"] >= 1 and db.by_database["app"] >= 1
    assert sum(db.by_state.values()) == len(db.backend_pids)


def test_wrong_postgres_credentials_and_a_closed_port_are_errors_that_say_why(pg):
    db = run(read_database(pg.dsn(password="wrong")))
    assert "password authentication failed" in db.error and db.max_connections == 0
    db = run(read_database(f"postgresql://postgres:postgres@127.0.0.1:1/postgres", timeout=2))
    assert db.error.startswith("postgres: ")


def test_the_poolers_connections_are_told_apart_by_pid_not_by_role(pooler_factory, pg):
    """A direct connection as the poolers' own role is someone else's: only SHOW SERVERS pids are theirs."""
    poolers = [pooler_factory(pool_mode="transaction", default_pool_size=3, userlist=USERS, admin_users="admin")
               for _ in range(2)]
    clients = [psycopg.connect(p.dsn(), autocommit=True) for p in poolers]
    direct = psycopg.connect(f"host=127.0.0.1 port={pg.port} user=app dbname=app password={PASSWORDS['app']}",
                             autocommit=True)
    try:
        for c in clients:
            c.execute("SELECT 1")
        samples = [run(sample("127.0.0.1", p.port, "admin", USERS["admin"])) for p in poolers]
        db = run(read_database(pg.dsn()))
        pooler_pids = samples[0].server_pids | samples[1].server_pids
        assert len(pooler_pids) == 2 and pooler_pids <= db.backend_pids
        assert direct.info.backend_pid not in pooler_pids
        others = db.backend_pids - pooler_pids
        assert direct.info.backend_pid in others
        assert server_budget(db, pooler_pids, headroom=2) == 300 - 3 - len(others) - 2
    finally:
        direct.close()
        for c in clients:
            c.close()


# -- a tier's signals --------------------------------------------------------------------------------------

def process(endpoint="a", xacts=0, xact_us=0, wait_us=0, waiting=0, error=None) -> ProcessSample:
    if error:
        return ProcessSample(endpoint=endpoint, error=error)
    pool = PoolSample("app", "app", cl_active=4, cl_waiting=waiting, sv_active=2, sv_idle=1, maxwait_s=0.5)
    return ProcessSample(endpoint=endpoint, pools=(pool,), default_pool_size=5, xact_count=xacts,
                         xact_time_us=xact_us, wait_time_us=wait_us)


def test_rates_come_from_stats_differenced_over_the_tick():
    previous = {"a": Totals(100.0, 1000, 2_000_000, 500_000), "b": Totals(100.0, 0, 0, 0)}
    signals = tier_signals([process("a", 1400, 2_800_000, 1_300_000, waiting=3), process("b", 100, 100_000, 0)],
                           previous, 102.0, 2, CpuReading(0.5))
    assert signals.xact_per_s == 250.0
    assert signals.avg_xact_time_ms == 1.8 and signals.avg_wait_time_ms == 1.6
    assert (signals.cl_waiting, signals.cl_active, signals.sv_active, signals.sv_idle) == (3, 8, 4, 2)
    assert (signals.processes, signals.reachable, signals.pool_size, signals.maxwait_s) == (2, 2, 5, 0.5)
    assert signals.cpu == 0.5 and signals.missing == ()


def test_the_first_tick_and_a_restarted_process_leave_rates_unknown_not_missing():
    first = tier_signals([process("a", 10, 10, 10)], {}, 1.0, 1, None)
    restarted = tier_signals([process("a", 10, 10, 10)], {"a": Totals(0.0, 500, 500, 500)}, 1.0, 1, None)
    for signals in (first, restarted):
        assert signals.xact_per_s is None and signals.avg_xact_time_ms is None and signals.missing == ()


def test_a_silent_console_a_lost_process_and_a_missing_cpu_are_named():
    signals = tier_signals([process("a"), process("b", error="b: no answer within 5s")], {}, 1.0, 3,
                           CpuReading(None, "cpu: the query returned NaN"))
    assert signals.missing == ("console b", "cpu")
    assert (signals.processes, signals.reachable) == (3, 1)
    assert tier_signals([process("b", error="down")], {}, 1.0, 1, None) is None


def test_a_tiers_running_backends_are_told_on_the_cpu_or_waiting_from_pg_stat_activity(pooler_factory, pg):
    """A backend in pg_sleep waits (wait event PgSleep), one computing has no wait event: the tier knows which
    of its servers load the CPU, by the pids the pooler reports."""
    poolers = {kind: pooler_factory(pool_mode="transaction", default_pool_size=2, userlist=USERS,
                                    admin_users="admin") for kind in ("sleep", "cpu")}
    work = {"sleep": "SELECT pg_sleep(4)",
            "cpu": "SELECT count(*) FROM generate_series(1, 3000000) AS i WHERE md5(i::text) < 'zz'"}
    conns = {kind: psycopg.connect(p.dsn(), autocommit=True) for kind, p in poolers.items()}

    async def busy_then_read():
        running = [asyncio.to_thread(conns[kind].execute, work[kind]) for kind in poolers]
        tasks = [asyncio.ensure_future(r) for r in running]
        await asyncio.sleep(1.0)       # both queries running
        samples = {kind: await sample("127.0.0.1", p.port, "admin", USERS["admin"]) for kind, p in poolers.items()}
        db = await read_database(pg.dsn())
        await asyncio.gather(*tasks)
        return samples, db

    try:
        samples, db = run(busy_then_read())
    finally:
        for c in conns.values():
            c.close()
    sleeping = tier_signals([samples["sleep"]], {}, 1.0, 1, None, db)
    computing = tier_signals([samples["cpu"]], {}, 1.0, 1, None, db)
    assert (sleeping.backends_active, sleeping.backends_on_cpu) == (1, 0)
    assert (computing.backends_active, computing.backends_on_cpu) == (1, 1)
    assert tier_signals([samples["cpu"]], {}, 1.0, 1, None, None).backends_on_cpu is None
