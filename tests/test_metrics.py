"""/metrics, /healthz and /readyz over HTTP, produced from the pools' own counters."""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from maitred.local.postgres import free_port
from pooler.metrics import METRICS


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format; fails when it is absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


@pytest.fixture
def http_pooler(pooler_factory):
    port = free_port()
    proc = pooler_factory(pool_mode="transaction", default_pool_size=3,
                          maitred={"http_addr": "127.0.0.1", "http_port": port})
    proc.http_port = port
    return proc


def test_metrics_count_the_workload_per_pool(http_pooler):
    status, before = http_get(http_pooler.http_port, "/metrics")
    assert status == 200
    result = http_pooler.pgbench("-n", "-S", "-c", "6", "-j", "2", "-t", "50")
    assert result.returncode == 0, result.stderr
    _, text = http_get(http_pooler.http_port, "/metrics")
    assert metric(text, "maitred_transactions_total", database="app", user="app") >= 300
    assert metric(text, "maitred_queries_total", database="app", user="app") >= 300
    assert metric(text, "maitred_sent_bytes_total", database="app", user="app") > 0
    assert metric(text, "maitred_received_bytes_total", database="app", user="app") > 0
    assert metric(text, "maitred_pool_size", database="app", user="app") == 3
    assert metric(text, "maitred_client_logins_total", database="app", user="app") >= 6
    assert metric(text, "maitred_pool_servers", database="app", user="app", state="idle") <= 3
    assert metric(text, "maitred_client_wait_seconds_count", database="app", user="app") >= 300
    assert metric(text, "maitred_up") == 1 and metric(text, "maitred_ready") == 1


def test_metrics_show_waiting_clients_and_maxwait(http_pooler):
    holder = psycopg.connect(http_pooler.dsn())
    holders = [psycopg.connect(http_pooler.dsn()) for _ in range(2)]
    waiter = psycopg.connect(http_pooler.dsn(), autocommit=True)
    try:
        for conn in [holder] + holders:
            conn.execute("SELECT 1")          # each now holds one of the 3 servers in a transaction
        waiter.pgconn.send_query(b"SELECT 1")  # queued: no server is free
        import time
        time.sleep(0.5)
        _, text = http_get(http_pooler.http_port, "/metrics")
        assert metric(text, "maitred_pool_clients", database="app", user="app", state="waiting") == 1
        assert metric(text, "maitred_pool_maxwait_seconds", database="app", user="app") >= 0.3
        assert metric(text, "maitred_pool_servers", database="app", user="app", state="active") == 3
        holder.commit()
        assert waiter.pgconn.get_result().status == psycopg.pq.ExecStatus.TUPLES_OK
    finally:
        for conn in [holder, waiter] + holders:
            conn.close()


def test_health_and_readiness_endpoints(http_pooler):
    assert http_get(http_pooler.http_port, "/healthz") == (200, "ok\n")
    assert http_get(http_pooler.http_port, "/readyz")[0] == 200
    assert http_get(http_pooler.http_port, "/nope")[0] == 404


def test_readiness_stays_up_while_postgresql_is_unreachable(pooler_factory):
    """A pooler whose database is down is still the right place for clients: the first waits for it (here
    until client_login_timeout), the next get a clear error at once."""
    port = free_port()
    proc = pooler_factory(databases={"app": f"host=127.0.0.1 port={free_port()} dbname=app"},
                          pool_mode="transaction", maitred={"http_port": port}, client_login_timeout=1)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proc.dsn(), connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="cached error: cannot connect to server"):
        psycopg.connect(proc.dsn(), connect_timeout=10)
    assert http_get(port, "/readyz")[0] == 200
    _, text = http_get(port, "/metrics")
    assert metric(text, "maitred_server_login_failures_total", database="app", user="app") >= 1


def test_every_metric_is_documented_in_the_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in METRICS if f"`{name}`" not in readme]
    assert missing == []
