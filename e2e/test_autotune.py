"""The operator's autotuner on the local control plane: `maitred operator` (as its ServiceAccount, with
peering) tunes a PostgresPooler whose Deployment pod runs here as a local process (its console address annotated
on the pod, as its port is moved), in front of a real PostgreSQL; a pgbench burst through the pooler makes it
grow, the quiet after it makes it shrink, and the resource's status and Events show each decision.
"""
from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest

from maitred.local.controlplane import wait_for
from maitred.local.kubelet import Kubelet
from maitred.local.operator import OperatorProcess, install
from tests.support import require_binary

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

HEADROOM = 4
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory):
    install(control_plane, peering="maitred")
    op = OperatorProcess(control_plane, tmp_path_factory.mktemp("operator"), "--all-namespaces",
                         "--peering", "maitred", env={"MAITRED_POOLER_IMAGE": "registry.invalid/maitred:e2e"})
    try:
        yield op.wait_live()
    finally:
        op.stop()
        print("operator log (tail):\n" + op.logs(200))


@pytest.fixture
def postgres():
    from maitred.local.postgres import LocalPostgres

    require_binary("pgbench")
    with LocalPostgres(settings={"max_connections": str(MAX_CONNECTIONS)}) as pg:
        pg.create_role("app", "app-secret")
        pg.create_database("app", owner="app")
        pg.create_role("monitor", "monitor-secret")
        pg.psql("GRANT pg_monitor TO monitor")
        yield pg


def kubectl_json(cp, *args: str) -> dict[str, Any]:
    return json.loads(cp.kubectl(*args, "-o", "json"))


def apply(cp, *docs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": data}


def resizes(cp, namespace: str) -> list[tuple[int, int]]:
    """(from, to) of every PoolResized Event on the resource, oldest first."""
    events = kubectl_json(cp, "get", "events", "-n", namespace, "--field-selector",
                          "involvedObject.kind=PostgresPooler,reason=PoolResized")["items"]
    out = []
    for e in sorted(events, key=lambda e: e.get("firstTimestamp") or e.get("eventTime") or ""):
        words = e["message"].split()       # "resized the pool 2 -> 4: grow: ..."
        arrow = words.index("->")
        out.append((int(words[arrow - 1]), int(words[arrow + 1].rstrip(":"))))
    return out


@pytest.fixture
def standby(control_plane, operator, tmp_path):
    """A second operator replica of lower priority in the same peering: kopf keeps it frozen."""
    op = OperatorProcess(control_plane, tmp_path, "--all-namespaces", "--peering", "maitred", "--priority", "1",
                         name="standby")
    try:
        def peers():
            status = kubectl_json(control_plane, "get", "clusterkopfpeering", "maitred").get("status")
            return len(status or {}) >= 2
        wait_for(peers, timeout=30, what=f"both replicas in the peering object:\n{op.logs()}")
        yield op
    finally:
        op.stop()


@pytest.fixture
def tuned_pool(control_plane, namespace, postgres, tmp_path):
    """PostgresPooler `pool` (autotuned every 5 s, sizes 2..16, from a pool of 2) and its pod, run here."""
    cp = control_plane
    spec = {"database": {"host": "127.0.0.1", "port": postgres.port, "dbname": "app"},
            "auth": {"usersSecret": {"name": "pool-users"}},
            "pool": {"defaultPoolSize": 2},
            "autotune": {"enabled": True, "intervalSeconds": 5, "minPoolSize": 2, "maxPoolSize": 16,
                         "budgetHeadroom": HEADROOM, "postgresSecret": {"name": "pool-monitor"}}}
    apply(cp, secret("pool-users", namespace, {"app": "app-secret"}),
          secret("pool-monitor", namespace, {"username": "monitor", "password": "monitor-secret"}),
          {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
           "metadata": {"name": "pool", "namespace": namespace}, "spec": spec})
    wait_for(lambda: (pooler_of(cp, namespace).get("status") or {}).get("configHash"), timeout=60,
             what="the first reconcile")
    kubelet = Kubelet(cp, namespace, kubectl_json(cp, "get", "deployment", "pool", "-n", namespace), tmp_path)
    kubelet.start()
    try:
        kubelet.report_ready()
        yield kubelet
    finally:
        kubelet.stop()


def pooler_of(cp, namespace: str) -> dict[str, Any]:
    return kubectl_json(cp, "get", "postgrespooler", "pool", "-n", namespace)


def burst(kubelet: Kubelet, tmp_path, seconds: int) -> subprocess.Popen:
    """12 pgbench clients whose transactions hold a server 50 ms each, through the pooler."""
    script = tmp_path / "hold.sql"
    script.write_text("SELECT pg_sleep(0.05);\n")
    conninfo = f"host=127.0.0.1 port={kubelet.port('postgres')} dbname=app user=app password=app-secret"
    return subprocess.Popen(["pgbench", "-n", "-c", "12", "-j", "2", "-T", str(seconds), "-f", str(script),
                             conninfo], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def grown(cp, namespace: str, operator) -> list[tuple[int, int]]:
    return wait_for(lambda: [r for r in resizes(cp, namespace) if r[1] > r[0]], timeout=40,
                    what=f"a PoolResized Event that grows the pool:\n{operator.logs()}")


def test_the_leader_grows_then_shrinks_a_pool_under_a_pgbench_burst(control_plane, operator, standby, namespace,
                                                                   postgres, tuned_pool, tmp_path):
    cp, kubelet = control_plane, tuned_pool
    pooler = lambda: pooler_of(cp, namespace)  # noqa: E731
    reserved = int(postgres.psql("SHOW superuser_reserved_connections"))
    # Ticks before the pod runs hold (no process found); the first one that reaches it tunes.
    wait_for(lambda: (pooler()["status"].get("autotune") or {}).get("state") == "Tuning", timeout=60,
             what=f"a tick that reaches the pod:\n{operator.logs()}")

    bench = burst(kubelet, tmp_path, 30)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(bench.communicate()[0]))
    reader.start()
    assert grown(cp, namespace, operator)[0][0] == 2
    reader.join(60)
    assert bench.returncode == 0, output

    # The quiet after it: idle servers are given back.
    wait_for(lambda: [r for r in resizes(cp, namespace) if r[1] < r[0]], timeout=150,
             what=f"a PoolResized Event that shrinks the pool:\n{operator.logs()}")
    steps = resizes(cp, namespace)
    first_shrink = next(i for i, r in enumerate(steps) if r[1] < r[0])
    assert all(r[1] > r[0] for r in steps[:first_shrink]), steps

    status = pooler()["status"]
    auto = status["autotune"]
    # No client but the autotuner's own monitoring connection while it read pg_stat_activity.
    assert auto["budget"] == MAX_CONNECTIONS - reserved - HEADROOM - 1, auto
    assert auto["server"] == postgres.psql("SELECT system_identifier FROM pg_control_system()")
    assert auto["share"] <= auto["budget"] and auto["poolSize"] >= 2
    assert set(auto["lastDecision"]) >= {"time", "from", "to", "reason", "signals"}
    assert (status["poolSizeSource"], status["poolSize"]) == ("autotune", auto["poolSize"])
    autotuned = next(c for c in status["conditions"] if c["type"] == "Autotuned")
    assert (autotuned["status"], autotuned["reason"]) == ("True", "Tuning")

    # The ConfigMap follows, so a new pod would start at the autotuned size.
    def config_size():
        ini = kubectl_json(cp, "get", "configmap", "pool-config", "-n", namespace)["data"]["pooler.ini"]
        return next(int(line.split("=")[1]) for line in ini.splitlines()
                    if line.startswith("default_pool_size"))
    wait_for(lambda: config_size() == pooler()["status"]["autotune"]["poolSize"], timeout=30,
             what="the ConfigMap to carry the autotuned size")
    assert kubelet.proc.poll() is None, "the pooler restarted"
    # Only the leader ticked: the frozen standby never ran the loop.
    assert f"{namespace}/pool " in operator.log.read_text()
    assert f"{namespace}/pool " not in standby.log.read_text(), standby.logs()


def test_a_standby_takes_over_from_a_killed_leader_at_the_size_the_pod_reports(control_plane, operator, standby,
                                                                                namespace, tuned_pool, tmp_path):
    """Last in this module: it kills the module's operator."""
    cp, kubelet = control_plane, tuned_pool
    bench = burst(kubelet, tmp_path, 20)
    try:
        grown(cp, namespace, operator)
    finally:
        bench.communicate(timeout=60)
    operator.proc.kill()                  # mid-run, no goodbye: its peering record stays until it expires
    operator.proc.wait()
    metrics = kubelet.http("/metrics")
    held = next(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
                if line.startswith('maitred_pool_size{database="app",user="app"}'))
    assert held > 2

    def standby_decision():
        lines = [line for line in standby.log.read_text().splitlines() if f"{namespace}/pool " in line]
        return lines and lines[0]
    first = wait_for(standby_decision, timeout=150, what=f"the standby to take over:\n{standby.logs()}")
    # Nothing was kept in memory: the new leader starts from what the pod reports, not from the spec.
    assert f"/pool {held} -> " in first, (held, first)
