"""The operator's Prometheus metrics: each PostgresPooler's conditions and the autotuner's state and decisions.

Conditions and autotune numbers are read from the resources' own status at scrape time, so /metrics and
`kubectl get pgp` never disagree; decisions are counted as the autotuner publishes them, since status keeps
only the last one. The alerts and the dashboard in charts/maitred use these names.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

from collections import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

TIER = ["namespace", "postgrespooler"]

# name: (type, help). Every name here is what a scrape of the operator shows.
METRICS = {
    "maitred_pooler_condition": ("gauge", "1 for the status (true, false, unknown) each condition of a "
                                          "PostgresPooler has, 0 for the others."),
    "maitred_pooler_paused": ("gauge", "1 while spec.paused leaves a PostgresPooler's objects as they are."),
    "maitred_pooler_generation_lag": ("gauge", "metadata.generation minus status.observedGeneration: specs "
                                               "the operator has not reconciled yet."),
    "maitred_autotune_state": ("gauge", "1 for the autotuner's state of a tier (Disabled, Waiting, Tuning, "
                                        "Holding, Misconfigured), 0 for the others."),
    "maitred_autotune_missing_signal": ("gauge", "1 for each signal (or console) a holding tier's last tick "
                                                 "could not read."),
    "maitred_autotune_pool_size": ("gauge", "default_pool_size the autotuner set on every process of a tier."),
    "maitred_autotune_budget_connections": ("gauge", "Server connections every pooler of the tier's PostgreSQL "
                                                     "server may open in all."),
    "maitred_autotune_share_connections": ("gauge", "Server connections this tier may open: per-process cap "
                                                    "x processes."),
    "maitred_autotune_decisions_total": ("counter", "Autotuner decisions by direction (grow, shrink, hold) and "
                                                    "the policy rule that took them."),
}
CONDITION_STATUSES = ("True", "False", "Unknown")
AUTOTUNE_STATES = ("Disabled", "Waiting", "Tuning", "Holding", "Misconfigured")


def _gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name][1], labels=labels)


def status_families(bodies: Iterable[dict[str, Any]]) -> list[Metric]:
    """The gauges of every PostgresPooler body, from its metadata, spec and status alone."""
    condition = _gauge("maitred_pooler_condition", TIER + ["type", "status"])
    paused = _gauge("maitred_pooler_paused", TIER)
    lag = _gauge("maitred_pooler_generation_lag", TIER)
    state = _gauge("maitred_autotune_state", TIER + ["state"])
    missing = _gauge("maitred_autotune_missing_signal", TIER + ["signal"])
    pool_size = _gauge("maitred_autotune_pool_size", TIER)
    budget = _gauge("maitred_autotune_budget_connections", TIER + ["server"])
    share = _gauge("maitred_autotune_share_connections", TIER + ["server"])
    for body in bodies:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        tier = [meta.get("namespace", ""), meta.get("name", "")]
        paused.add_metric(tier, 1 if (body.get("spec") or {}).get("paused") else 0)
        if meta.get("generation") is not None:
            lag.add_metric(tier, max(0, meta["generation"] - (status.get("observedGeneration") or 0)))
        for c in status.get("conditions") or []:
            for value in CONDITION_STATUSES:
                condition.add_metric(tier + [c.get("type", ""), value.lower()],
                                     1 if c.get("status") == value else 0)
        autotune = status.get("autotune") or {}
        if not autotune:
            continue
        for value in AUTOTUNE_STATES:
            state.add_metric(tier + [value], 1 if autotune.get("state") == value else 0)
        for signal in autotune.get("missingSignals") or []:
            missing.add_metric(tier + [signal], 1)
        if autotune.get("poolSize") is not None:
            pool_size.add_metric(tier, autotune["poolSize"])
        server = [autotune.get("server") or ""]
        if autotune.get("budget") is not None:
            budget.add_metric(tier + server, autotune["budget"])
        if autotune.get("share") is not None:
            share.add_metric(tier + server, autotune["share"])
    return [condition, paused, lag, state, missing, pool_size, budget, share]


class OperatorMetrics:
    """The PostgresPoolers the operator last saw, and the decisions it published, as one registry."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self._guard = threading.Lock()
        self._decisions: Counter[tuple[str, str, str, str]] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        with self._guard:
            self._bodies[(meta.get("namespace", ""), meta.get("name", ""))] = body

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._bodies.pop((namespace, name), None)

    def decided(self, namespace: str, name: str, direction: str, rule: str) -> None:
        with self._guard:
            self._decisions[(namespace, name, direction, rule)] += 1

    def collect(self) -> list[Metric]:
        with self._guard:
            bodies, decisions = list(self._bodies.values()), dict(self._decisions)
        counted = CounterMetricFamily("maitred_autotune_decisions", METRICS["maitred_autotune_decisions_total"][1],
                                      labels=TIER + ["direction", "rule"])
        for labels, count in decisions.items():
            counted.add_metric(list(labels), count)
        return status_families(bodies) + [counted]


def serve(metrics: OperatorMetrics, port: int, addr: str = "0.0.0.0") -> None:
    """/metrics on a thread of its own, beside kopf's liveness endpoint."""
    from prometheus_client import start_http_server

    start_http_server(port, addr, registry=metrics.registry)
