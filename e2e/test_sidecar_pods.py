"""Sidecar injection on the real node: the operator serves the webhook (kube-apiserver calls it on 127.0.0.1), an
annotated Deployment's pod in an opted-in namespace runs the pooler as a native sidecar, the app container's
queries reach PostgreSQL through 127.0.0.1, and the autotuner reaches the sidecar's console on the pod IP.

The app container runs the maitred image with a small asyncpg loop (asyncpg is one of maitred's dependencies).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from e2e.test_autotune import secret
from e2e.test_pods import pod_postgres, ready  # noqa: F401 - pod_postgres is a fixture used here
from e2e.test_webhook import Webhook
from maitred.local.controlplane import wait_for
from maitred.local.operator import install
from pooler_operator.inject import INJECT_ANNOTATION, NAMESPACE_LABEL, SIDECAR_NAME
from pooler_operator.webhook_config import CONFIGURATION_NAME

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

PASSWORD = "sidecar-secret"
MONITOR_PASSWORD = "monitor-secret"

APP = """
import asyncio, os, asyncpg

async def main():
    while True:
        try:
            conn = await asyncpg.connect(os.environ["MAITRED_DATABASE_URL"], user=os.environ["APP_USER"],
                                         password=os.environ["APP_PASSWORD"], timeout=5)
            try:
                while True:
                    row = await conn.fetchrow("SELECT host(inet_server_addr()), 42")
                    print("answer", row[0], row[1], flush=True)
                    await asyncio.sleep(1)
            finally:
                await conn.close()
        except Exception as exc:
            print("error", repr(exc), flush=True)
            await asyncio.sleep(1)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def webhook(pod_platform, tmp_path_factory):
    """The operator with its webhook, making sidecars of the node's image."""
    install(pod_platform.cluster)
    hook = Webhook(pod_platform.cluster, tmp_path_factory.mktemp("sidecar-operator"), image=pod_platform.image)
    try:
        yield hook.start()
    finally:
        hook.stop()
        pod_platform.cluster.kubectl("delete", "mutatingwebhookconfiguration", CONFIGURATION_NAME,
                                     "--ignore-not-found")


@dataclass
class App:
    """The annotated Deployment `app` and the sidecar PostgresPooler `tier` it asks for."""

    cluster: Any
    namespace: str
    user: str
    webhook: Webhook

    def kubectl(self, *args: str, **kwargs) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args, **kwargs)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-o", "json"))

    def pods(self) -> list[dict[str, Any]]:
        pods = json.loads(self.kubectl("get", "pods", "-l", "app=sidecar-app", "-o", "json"))["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def describe(self) -> str:
        return (self.kubectl("get", "pods,deploy,pgp", "-o", "wide") + "\n" +
                self.kubectl("get", "events", "--sort-by=.lastTimestamp") + "\noperator:\n" + self.webhook.logs())

    def ready_pod(self, timeout: float = 180) -> dict[str, Any]:
        def one_ready():
            pods = self.pods()
            return len(pods) == 1 and ready(pods[0]) and pods[0]
        try:
            return wait_for(one_ready, timeout=timeout, what="the app's pod Ready")
        except TimeoutError:
            raise AssertionError(self.describe()) from None


def sidecar_tier(pod_platform, pod_postgres, prefix: str, password: str, *, pool: dict[str, Any],
                 pooler: dict[str, Any]) -> tuple[str, str]:
    """A fresh namespace `prefix-…`, opted in, with the sidecar PostgresPooler `tier` (autotuned every 5 s, so its
    console has the autotuner's user) in front of a role and database of its own on pod_postgres; the namespace
    and the role (whose password is `password`)."""
    cluster = pod_platform.cluster
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, f"{NAMESPACE_LABEL}=enabled")
    wait_for(lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False),
             timeout=30, what=f"the default ServiceAccount in {namespace}")
    user, dbname, monitor = (f"{p}_{uuid.uuid4().hex[:8]}" for p in ("u", "d", "m"))
    pod_postgres.create_role(user, password)
    pod_postgres.create_database(dbname, owner=user)
    pod_postgres.create_role(monitor, MONITOR_PASSWORD)
    pod_postgres.psql(f"GRANT pg_monitor TO {monitor}")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        secret("tier-users", namespace, {user: password}),
        secret("tier-monitor", namespace, {"username": monitor, "password": MONITOR_PASSWORD}),
        {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
         "metadata": {"name": "tier", "namespace": namespace},
         "spec": {"mode": "sidecar", "poolMode": "transaction",
                  "database": {"host": pod_platform.host, "port": pod_postgres.port, "dbname": dbname},
                  "auth": {"type": "scram-sha-256", "usersSecret": {"name": "tier-users"}},
                  "pool": pool,
                  "autotune": {"enabled": True, "intervalSeconds": 5, "minPoolSize": 2, "maxPoolSize": 8,
                               "postgresSecret": {"name": "tier-monitor"}},
                  "pooler": {**pooler, "shutdownTimeoutSeconds": 5}}},
    ]))
    return namespace, user


@pytest.fixture(scope="module")
def app(pod_platform, webhook, pod_postgres):  # noqa: F811
    """In a fresh opted-in namespace: the sidecar PostgresPooler (autotuned every 5 s) in front of its own
    database on pod_postgres, and a one-pod Deployment annotated to get it."""
    cluster = pod_platform.cluster
    namespace, user = sidecar_tier(pod_platform, pod_postgres, "sidecar", PASSWORD, pool={"defaultPoolSize": 4},
                                   pooler={"image": pod_platform.image, "imagePullPolicy": "IfNotPresent"})
    # The webhook looks the PostgresPooler up when the pod is created: the Deployment comes once it is stored.
    wait_for(lambda: cluster.kubectl("get", "pgp", "tier", "-n", namespace, check=False), timeout=30,
             what="the PostgresPooler stored")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sidecar-app"}},
                 "template": {
                     "metadata": {"labels": {"app": "sidecar-app"}, "annotations": {INJECT_ANNOTATION: "tier"}},
                     "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                         "name": "app", "image": pod_platform.image, "imagePullPolicy": "IfNotPresent",
                         "command": ["python3", "-c", APP],
                         "env": [{"name": "APP_USER", "value": user}, {"name": "APP_PASSWORD", "value": PASSWORD}],
                     }]}}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))
    yield App(cluster, namespace, user, webhook)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def answers(app: App, pod: dict[str, Any]) -> list[str]:
    """The lines the app printed for its query's rows."""
    logs = app.kubectl("logs", pod["metadata"]["name"], "-c", "app", check=False) or ""
    return [line for line in logs.splitlines() if line.startswith("answer ")]


def test_an_annotated_deployment_runs_the_sidecar_and_its_queries_reach_postgresql_through_loopback(
        app, pod_platform, pod_postgres):  # noqa: F811
    pod = app.ready_pod()
    init, containers = pod["spec"]["initContainers"], pod["spec"]["containers"]
    assert [c["name"] for c in init] == [SIDECAR_NAME] and init[0]["restartPolicy"] == "Always"
    assert [c["name"] for c in containers] == ["app"]
    sidecar = pod["status"]["initContainerStatuses"][0]
    assert sidecar["name"] == SIDECAR_NAME and sidecar["ready"] and "running" in sidecar["state"], sidecar
    assert pod["status"]["containerStatuses"][0]["ready"]

    lines = wait_for(lambda: answers(app, pod), timeout=60, what="the app's query answered")
    assert lines[-1] == f"answer {pod_platform.host} 42", lines
    ip = pod["status"]["podIP"]
    clients = pod_postgres.psql(f"SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE usename = '{app.user}'")
    assert ip in clients.split(), f"no backend of {app.user} from the pod's address {ip}: {clients!r}"
    print(f"\nsidecar: {len(lines)} answers through 127.0.0.1; PostgreSQL sees {app.user} from {clients.split()}")


def test_the_autotuner_reaches_the_sidecar_console_on_the_pod_ip_and_counts_the_pod(app):
    app.ready_pod()

    def counted():
        auto = (app.get("pgp", "tier").get("status") or {}).get("autotune") or {}
        signals = (auto.get("lastDecision") or {}).get("signals") or {}
        return signals.get("reachable") == 1 and auto
    try:
        auto = wait_for(counted, timeout=90, what="a tick that reached the sidecar's console")
    except TimeoutError:
        raise AssertionError(json.dumps(app.get("pgp", "tier").get("status"), indent=1) + app.describe()) from None
    assert auto["lastDecision"]["signals"]["processes"] == 1
    assert auto["state"] == "Tuning", auto
