"""The operator's /metrics: PostgresPooler conditions and the autotuner's state, budget and decisions, scraped
over HTTP from the same server `maitred operator --metrics-port` starts."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from maitred.local.postgres import free_port
from pooler_operator.metrics import METRICS, OperatorMetrics, serve
from pooler_operator.status import Outcome, compute_status

SPEC = {"mode": "deployment", "replicas": 2, "autotune": {"enabled": True}}
READY_DEPLOYMENT = {"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}
HOLDING = {"enabled": True, "state": "Holding", "poolSize": 8, "budget": 80, "share": 72, "server": "7301",
           "missingSignals": ["cpu", "console of 1 of 2 processes"]}


def pooler(name: str, status: dict, generation: int = 1, paused: bool = False) -> dict:
    return {"metadata": {"namespace": "shop", "name": name, "generation": generation},
            "spec": {**SPEC, "paused": paused}, "status": status}


def applied() -> Outcome:
    return Outcome("Applied", "ok", config_hash="a", restart_hash="b", pool_size=8, budget=16)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"namespace": "shop", **labels}.items())))
    assert key in samples, f"no {name}{labels}"
    return samples[key]


@pytest.fixture
def served():
    metrics = OperatorMetrics()
    port = free_port()
    serve(metrics, port, "127.0.0.1")
    return metrics, port


def test_conditions_and_autotune_state_are_scraped_from_status(served):
    metrics, port = served
    ready = compute_status(None, generation=1, spec=SPEC, outcome=applied(), deployment=READY_DEPLOYMENT,
                           deployment_known=True, now="2026-01-01T00:00:00Z")
    metrics.observe(pooler("orders", {**ready, "autotune": HOLDING}))
    stale = compute_status(None, generation=1, spec=SPEC, outcome=applied(), deployment={"status": {}},
                           deployment_known=True, now="2026-01-01T00:00:00Z")
    metrics.observe(pooler("billing", stale, generation=3, paused=True))
    samples = scrape(port)
    assert value(samples, "maitred_pooler_condition", postgrespooler="orders", type="Ready", status="true") == 1
    assert value(samples, "maitred_pooler_condition", postgrespooler="orders", type="Ready", status="false") == 0
    assert value(samples, "maitred_pooler_condition", postgrespooler="billing", type="Ready", status="false") == 1
    assert value(samples, "maitred_pooler_generation_lag", postgrespooler="billing") == 2
    assert value(samples, "maitred_pooler_generation_lag", postgrespooler="orders") == 0
    assert value(samples, "maitred_pooler_paused", postgrespooler="billing") == 1
    assert value(samples, "maitred_autotune_state", postgrespooler="orders", state="Holding") == 1
    assert value(samples, "maitred_autotune_state", postgrespooler="orders", state="Tuning") == 0
    assert value(samples, "maitred_autotune_missing_signal", postgrespooler="orders", signal="cpu") == 1
    assert value(samples, "maitred_autotune_pool_size", postgrespooler="orders") == 8
    assert value(samples, "maitred_autotune_budget_connections", postgrespooler="orders", server="7301") == 80
    assert value(samples, "maitred_autotune_share_connections", postgrespooler="orders", server="7301") == 72


def test_a_deleted_pooler_leaves_the_metrics(served):
    metrics, port = served
    metrics.observe(pooler("orders", {"autotune": HOLDING}))
    metrics.forget("shop", "orders")
    assert not [k for k in scrape(port) if ("postgrespooler", "orders") in k[1]]


def test_decisions_are_counted_by_direction_and_rule(served):
    metrics, port = served
    for direction, rule in (("grow", "grow"), ("hold", "signal"), ("hold", "signal")):
        metrics.decided("shop", "orders", direction, rule)
    samples = scrape(port)
    assert value(samples, "maitred_autotune_decisions_total", postgrespooler="orders", direction="hold",
                 rule="signal") == 2
    assert value(samples, "maitred_autotune_decisions_total", postgrespooler="orders", direction="grow",
                 rule="grow") == 1


def test_every_listed_metric_is_what_a_scrape_shows(served):
    metrics, port = served
    metrics.observe(pooler("orders", {"conditions": [{"type": "Ready", "status": "True"}], "autotune": HOLDING}))
    metrics.decided("shop", "orders", "hold", "signal")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        families = {f.name: f.type for f in text_string_to_metric_families(resp.read().decode())}
    shown = {(name + "_total" if kind == "counter" else name): kind for name, kind in families.items()
             if name.startswith("maitred_")}
    assert shown == {name: kind for name, (kind, _) in METRICS.items()}
