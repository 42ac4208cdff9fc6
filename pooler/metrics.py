"""Prometheus metrics, produced with prometheus-client from the pools' own counters at scrape time.

Nothing is recorded twice: the hot path only bumps plain integers on `Pool.stats`; this collector turns
them into metric families when /metrics is read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from .counters import WAIT_BUCKETS

if TYPE_CHECKING:
    from .app import Pooler

# name: (type, help). The README's metrics table is checked against this list by a test.
METRICS = {
    "maitred_up": ("gauge", "1 while the pooler process serves."),
    "maitred_ready": ("gauge", "1 while the pooler accepts new clients (what /readyz says)."),
    "maitred_client_connections": ("gauge", "Client connections, all pools and the console."),
    "maitred_pool_clients": ("gauge", "Clients of a pool by state: active (holding or not needing a server) "
                                      "or waiting (queued for a server)."),
    "maitred_pool_servers": ("gauge", "Server connections of a pool by state: active, idle, login."),
    "maitred_pool_maxwait_seconds": ("gauge", "How long the oldest waiting client of a pool has waited."),
    "maitred_pool_size": ("gauge", "The pool size in force (default_pool_size or its override)."),
    "maitred_pool_reserve_size": ("gauge", "The reserve pool size in force."),
    "maitred_pool_paused": ("gauge", "1 while the pool's database is paused."),
    "maitred_transactions_total": ("counter", "Transactions completed (ReadyForQuery with status I)."),
    "maitred_queries_total": ("counter", "Queries sent: Query, Sync and FunctionCall messages."),
    "maitred_received_bytes_total": ("counter", "Bytes received from clients."),
    "maitred_sent_bytes_total": ("counter", "Bytes sent to clients."),
    "maitred_server_assignments_total": ("counter", "Times a server was handed to a client."),
    "maitred_client_logins_total": ("counter", "Client logins."),
    "maitred_server_login_failures_total": ("counter", "Failed attempts to connect or log in to PostgreSQL."),
    "maitred_client_wait_seconds_total": ("counter", "Time clients spent waiting for a server."),
    "maitred_transaction_seconds_total": ("counter", "Time servers spent linked to clients in transactions."),
    "maitred_query_seconds_total": ("counter", "Time from sending a query to its ReadyForQuery."),
    "maitred_client_wait_seconds": ("histogram", "Client wait time for a server, per hand-off."),
}


class PoolCollector:
    """A prometheus-client collector over one pooler's pools."""

    def __init__(self, app: "Pooler"):
        self.app = app

    def collect(self):
        app = self.app
        now = app.now()
        fam = {}
        for name, (kind, doc) in METRICS.items():
            labels = ["database", "user"]
            if name in ("maitred_pool_clients", "maitred_pool_servers"):
                labels.append("state")
            if name in ("maitred_up", "maitred_ready", "maitred_client_connections"):
                labels = []
            short = name[:-6] if kind == "counter" else name
            cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
                   "histogram": HistogramMetricFamily}[kind]
            fam[name] = cls(short, doc, labels=labels)
        fam["maitred_up"].add_metric([], 1)
        fam["maitred_ready"].add_metric([], 1 if app.ready else 0)
        fam["maitred_client_connections"].add_metric([], len(app.clients))
        for pool in list(app.pools.values()):
            key = [pool.name, pool.user]
            counts = pool.counts()
            stats = pool.stats
            fam["maitred_pool_clients"].add_metric(key + ["active"], counts["cl_active"])
            fam["maitred_pool_clients"].add_metric(key + ["waiting"], counts["cl_waiting"])
            for state in ("active", "idle", "login"):
                fam["maitred_pool_servers"].add_metric(key + [state], counts["sv_" + state])
            fam["maitred_pool_maxwait_seconds"].add_metric(key, pool.oldest_wait(now))
            fam["maitred_pool_size"].add_metric(key, pool.size)
            fam["maitred_pool_reserve_size"].add_metric(key, pool.reserve_size)
            fam["maitred_pool_paused"].add_metric(key, 1 if pool.paused() else 0)
            for name, value in (("maitred_transactions_total", stats.xact_count),
                                ("maitred_queries_total", stats.query_count),
                                ("maitred_received_bytes_total", stats.bytes_received),
                                ("maitred_sent_bytes_total", stats.bytes_sent),
                                ("maitred_server_assignments_total", stats.assignments),
                                ("maitred_client_logins_total", stats.client_logins),
                                ("maitred_server_login_failures_total", stats.login_failures),
                                ("maitred_client_wait_seconds_total", stats.wait_time),
                                ("maitred_transaction_seconds_total", stats.xact_time),
                                ("maitred_query_seconds_total", stats.query_time)):
                fam[name].add_metric(key, value)
            cumulative, buckets = 0, []
            for bound, count in zip(list(WAIT_BUCKETS) + [float("inf")], stats.wait_buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            fam["maitred_client_wait_seconds"].add_metric(key, buckets, stats.wait_time)
        yield from fam.values()


def registry_for(app: "Pooler") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(app))
    return registry


