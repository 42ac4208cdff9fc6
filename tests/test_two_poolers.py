"""Two poolers on one host from the same config: the HTTP endpoint's port can be taken, and the metrics endpoint
must never keep a pooler from serving; it moves to a free port and says so, or runs without it."""
from __future__ import annotations

import re

import psycopg

from maitred.local.postgres import free_port
from tests.test_metrics import http_get


def serves(pooler) -> bool:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT 1").fetchone()[0] == 1


def test_two_poolers_with_one_http_port_both_serve_and_the_second_says_where_its_metrics_went(pooler_factory):
    http_port = free_port()
    first = pooler_factory(maitred={"http_port": http_port})
    second = pooler_factory(maitred={"http_port": http_port})
    assert serves(first) and serves(second)
    assert http_get(http_port, "/healthz") == (200, "ok\n")
    log = second.wait_log(f"HTTP port {http_port} is in use")
    moved = re.search(rf"HTTP port {http_port} is in use .*are on 127\.0\.0\.1:(\d+) instead", log)
    assert moved, log[-3000:]
    status, text = http_get(int(moved.group(1)), "/metrics")
    assert status == 200 and "maitred_up 1.0" in text
    log = first.wait_log("process up")      # logged after the HTTP endpoint started (or said why it moved)
    assert "is in use" not in log, log[-3000:]


def test_a_pooler_whose_http_address_cannot_be_had_serves_without_the_endpoint(pooler_factory):
    pooler = pooler_factory(maitred={"http_addr": "192.0.2.1", "http_port": free_port()})   # TEST-NET-1
    assert serves(pooler)
    pooler.wait_log("HTTP endpoint not started, the pooler serves without /metrics /healthz /readyz")
