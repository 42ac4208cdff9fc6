"""The operator's /metrics against a real API server: `maitred operator --metrics-port` shows each
PostgresPooler's conditions as the API has them, follows them as they change, and forgets a deleted one."""
from __future__ import annotations

import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from maitred.local.controlplane import free_port, wait_for
from maitred.local.operator import OperatorProcess, install

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory):
    install(control_plane, peering="maitred")
    port = free_port()
    op = OperatorProcess(control_plane, tmp_path_factory.mktemp("operator"), "--all-namespaces",
                         "--peering", "maitred", "--metrics-port", str(port),
                         env={"MAITRED_POOLER_IMAGE": "registry.invalid/maitred:e2e"})
    op.metrics_port = port
    try:
        yield op.wait_live()
    finally:
        op.stop()
        print("operator log (tail):\n" + op.logs(200))


def samples(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def degraded(port: int, namespace: str, status: str) -> float | None:
    key = ("maitred_pooler_condition", tuple(sorted({"namespace": namespace, "postgrespooler": "pool",
                                                     "type": "Degraded", "status": status}.items())))
    return samples(port).get(key)


def test_metrics_follow_a_poolers_conditions_and_forget_it_when_deleted(control_plane, operator, namespace):
    cp, port = control_plane, operator.metrics_port
    cr = {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
          "metadata": {"name": "pool", "namespace": namespace},
          "spec": {"database": {"host": "postgres.example", "dbname": "app"},
                   "auth": {"usersSecret": {"name": "pool-users"}}}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(cr))      # its Secret does not exist yet: Degraded
    wait_for(lambda: degraded(port, namespace, "true") == 1, timeout=60, what="Degraded on /metrics")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pool-users", "namespace": namespace},
              "stringData": {"app": "app-secret"}}
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    wait_for(lambda: degraded(port, namespace, "false") == 1, timeout=60, what="Degraded false on /metrics")
    lag = samples(port)[("maitred_pooler_generation_lag",
                         (("namespace", namespace), ("postgrespooler", "pool")))]
    assert lag == 0
    cp.kubectl("delete", "pgp", "pool", "-n", namespace, "--wait=true")
    wait_for(lambda: degraded(port, namespace, "false") is None, timeout=60, what="the pooler gone from /metrics")
