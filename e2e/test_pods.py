"""A pooler tier on real pods: the image, the pod spec the operator writes, the kubelet's ConfigMap updates
reaching running poolers, rolling restarts under load, and a deleted pod replaced. On the real node
(maitred/local/node.py) here, and on kind in the kind suite: the same tests.

Tests reach the pods by their addresses: the pods are the run's own hosts, on its own bridge.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from maitred.local.controlplane import wait_for
from maitred.local.operator import OperatorProcess, install
from maitred.local.postgres import DEFAULT_HBA, LocalPostgres

pytestmark = pytest.mark.slow

PASSWORD = "pods-secret"
REPLICAS = 2


@pytest.fixture(scope="module")
def pod_postgres(pod_platform):
    """A PostgreSQL the pods reach: listening on this machine's address on the pods' network too."""
    pg = LocalPostgres(settings={"listen_addresses": f"'127.0.0.1,{pod_platform.host}'"},
                       hba=[*DEFAULT_HBA, f"host all all {pod_platform.pod_network} scram-sha-256"])
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        pg.destroy()


@pytest.fixture(scope="module")
def pod_operator(pod_platform, tmp_path_factory):
    """`maitred operator` for the node, making Deployments of the node's image; in the kind suite, the chart's."""
    if pod_platform.node is None:
        yield None
        return
    install(pod_platform.cluster)
    op = OperatorProcess(pod_platform.cluster, tmp_path_factory.mktemp("pod-operator"), "--all-namespaces",
                         "--standalone", env={"MAITRED_POOLER_IMAGE": pod_platform.image})
    try:
        yield op.wait_live()
    finally:
        op.stop()
        print("operator log (tail):\n" + op.logs(60))


@pytest.fixture
def pod_namespace(request, pod_platform):
    """A fresh namespace of the pod platform's cluster, named after the test; deleted after it."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"pods-{stem}-{uuid.uuid4().hex[:6]}"
    pod_platform.cluster.kubectl("create", "namespace", name)
    wait_for(lambda: pod_platform.cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False),
             timeout=30, what=f"the default ServiceAccount in {name}")
    yield name
    pod_platform.cluster.kubectl("delete", "namespace", name, "--wait=false")


@dataclass
class Tier:
    """A PostgresPooler of REPLICAS pods and the database behind it; the test's view of the tier."""

    cluster: Any
    namespace: str
    name: str
    user: str
    dbname: str
    operator: OperatorProcess | None

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args)

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name or self.name, "-o", "json"))

    def pods(self, terminating: bool = False) -> list[dict[str, Any]]:
        """The tier's pods that are not being deleted (with `terminating`, those still shutting down too)."""
        labels = self.get("deployment")["spec"]["selector"]["matchLabels"]
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json"))["items"]
        return [p for p in pods if terminating or not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods() if ready(p)]

    def wait_ready(self, replicas: int = REPLICAS, timeout: float = 180) -> list[dict[str, Any]]:
        """Every desired pod Ready and the PostgresPooler saying so; the pods."""
        def done():
            pods, pgp = self.ready_pods(), self.get("pgp")
            status = pgp.get("status") or {}
            return len(pods) == replicas == len(self.pods()) and status.get("readyReplicas") == replicas and \
                condition(pgp, "Ready") == "True" and pods
        try:
            return wait_for(done, timeout=timeout, what=f"{replicas} ready pods of {self.name}")
        except TimeoutError:
            raise AssertionError(self.describe()) from None

    def describe(self) -> str:
        logs = self.operator.logs(30) if self.operator else ""
        return (self.kubectl("get", "pods,deploy,pgp,pdb", "-o", "wide") + "\n" +
                self.cluster.kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp") +
                "\noperator:\n" + logs)

    def connect(self, pod: dict[str, Any], **kwargs) -> psycopg.Connection:
        return psycopg.connect(host=pod["status"]["podIP"], port=container_port(pod, "postgres"), user=self.user,
                               password=PASSWORD, dbname=self.dbname, connect_timeout=5, **kwargs)


def ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def condition(obj: dict[str, Any], type_: str) -> str | None:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def container_port(pod: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == name)


def container_ids(pods: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["containerID"] for p in pods}


def pool_sizes(pod: dict[str, Any]) -> set[float]:
    """The pool sizes in force in the pod's pooler, from its /metrics."""
    url = f"http://{pod['status']['podIP']}:{container_port(pod, 'http')}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {float(m) for m in re.findall(r"^maitred_pool_size\{.*\} (\S+)$", text, flags=re.M)}


@pytest.fixture
def tier(pod_platform, pod_operator, pod_postgres, pod_namespace):
    """A PostgresPooler of two pods in front of pod_postgres, Ready; its own role and database."""
    user, dbname = f"u_{uuid.uuid4().hex[:8]}", f"d_{uuid.uuid4().hex[:8]}"
    pod_postgres.create_role(user, PASSWORD)
    pod_postgres.create_database(dbname, owner=user)
    name, namespace = "tier", pod_namespace
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-users", "namespace": namespace},
         "stringData": {user: PASSWORD}},
        {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"replicas": REPLICAS, "poolMode": "transaction",
                  "database": {"host": pod_platform.host, "port": pod_postgres.port, "dbname": dbname},
                  "auth": {"type": "scram-sha-256", "usersSecret": {"name": f"{name}-users"}},
                  "pool": {"defaultPoolSize": 20},
                  "pooler": {"image": pod_platform.image, "imagePullPolicy": "IfNotPresent",
                             "shutdownTimeoutSeconds": 10}}},
    ]
    pod_platform.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    t = Tier(pod_platform.cluster, namespace, name, user, dbname, pod_operator)
    t.wait_ready()
    yield t


# -- the tests ----------------------------------------------------------------------------------------------


def test_pooler_pods_run_the_image_ready_by_their_probes_as_65532_on_a_read_only_root(tier, pod_platform):
    pods = tier.wait_ready()
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["image"] == pod_platform.image
        assert pod["status"]["containerStatuses"][0]["ready"]
        name = pod["metadata"]["name"]
        identity = tier.kubectl("exec", name, "--", "python3", "-c",
                                "import os; print(os.getuid(), os.getgid(), open('/proc/1/cmdline').read())")
        uid, gid, cmdline = identity.split(" ", 2)
        assert (uid, gid) == ("65532", "65532")
        assert container["args"] == cmdline.rstrip("\0\n").split("\0")[-2:], "PID 1 is the pooler"
        write = tier.cluster.kubectl("exec", "-n", tier.namespace, name, "--", "sh", "-c",
                                     "touch /x 2>&1; touch /tmp/ok && echo tmp-writable", check=False)
        assert "Read-only file system" in write and "tmp-writable" in write, write
        with tier.connect(pod) as conn:
            answer = conn.execute("SELECT current_user, current_database(), host(inet_client_addr())").fetchone()
        assert answer[:2] == (tier.user, tier.dbname)
        if pod_platform.node:  # kind's nodes masquerade their pods' traffic
            assert answer[2] == pod["status"]["podIP"], "the query reached PostgreSQL from the pod's own address"


def test_a_reloadable_change_reaches_the_running_pods_through_the_configmap_without_a_restart(tier):
    pods = tier.wait_ready()
    before = container_ids(pods)
    for pod in pods:
        with tier.connect(pod) as conn:  # the pool exists once a client used it
            conn.execute("SELECT 1")
        assert pool_sizes(pod) == {20.0}
    started = time.monotonic()
    tier.kubectl("patch", "pgp", tier.name, "--type=merge", "-p", '{"spec":{"pool":{"defaultPoolSize":30}}}')
    wait_for(lambda: all(pool_sizes(p) == {30.0} for p in pods), timeout=150, interval=0.5,
             what="default_pool_size 30 in every pod")
    took = time.monotonic() - started
    print(f"\nreload: kubectl patch -> default_pool_size 30 in all {len(pods)} pods' poolers in {took:.1f} s")
    after = tier.ready_pods()
    assert container_ids(after) == before, "no pod restarted or was replaced"
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in after)


@dataclass
class Writer:
    """A client writing two-row transactions through the tier, reconnecting to a ready pod when told to
    (57P01) or cut off. Each transaction has its own id; `committed` are those whose COMMIT returned,
    `uncertain` those cut off during COMMIT (applied or not, never half)."""

    tier: Tier
    committed: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    told: int = 0
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _connect(self) -> psycopg.Connection:
        def attempt():
            for pod in self.tier.ready_pods():
                try:
                    return self.tier.connect(pod, autocommit=True)
                except psycopg.OperationalError:
                    continue
        return wait_for(attempt, timeout=60, interval=0.2, what="a ready pod to connect to")

    def _run(self) -> None:
        conn, next_id = self._connect(), 0
        while not self.stop.is_set():
            next_id += 1
            stage = "begin"
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO ledger (id, part) VALUES (%s, 1)", (next_id,))
                    conn.execute("INSERT INTO ledger (id, part) VALUES (%s, 2)", (next_id,))
                    stage = "commit"
                self.committed.append(next_id)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if getattr(exc, "sqlstate", None) == "57P01":
                    self.told += 1
                if stage == "commit":
                    self.uncertain.append(next_id)
                conn.close()
                conn = self._connect()
                self.reconnects += 1
            time.sleep(0.01)
        conn.close()


def test_a_restart_needing_change_rolls_the_pods_under_load_without_losing_a_transaction(tier, pod_postgres):
    pods = tier.wait_ready()
    before = container_ids(pods)
    pod_postgres.psql("CREATE TABLE ledger (id int NOT NULL, part int NOT NULL)", dbname=tier.dbname)
    pod_postgres.psql(f"GRANT ALL ON ledger TO {tier.user}", dbname=tier.dbname)
    writer = Writer(tier)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(writer.committed) >= 20 or writer.error, timeout=30, what="the writer under way")
        started = time.monotonic()
        tier.kubectl("patch", "pgp", tier.name, "--type=merge", "-p", '{"spec":{"pooler":{"workers":2}}}')
        # A terminating pooler keeps serving its clients (PgBouncer's WAIT_FOR_CLIENTS) until they leave or
        # shutdownTimeoutSeconds lets them go between transactions: wait until the old pods are really gone.
        wait_for(lambda: not set(before) & {p["metadata"]["name"] for p in tier.pods(terminating=True)}
                 or writer.error, timeout=240, what="every old pod gone")
        pods = tier.wait_ready()
        rolled = time.monotonic() - started
        committed_at_roll = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= committed_at_roll + 20 or writer.error, timeout=30,
                 what="the writer going on after the rollout")
    finally:
        writer.stop.set()
        thread.join(30)
    assert writer.error is None, repr(writer.error)
    print(f"\nrollout: {len(before)} pods replaced in {rolled:.1f} s under load; {len(writer.committed)} "
          f"transactions committed, {writer.reconnects} reconnects ({writer.told} told by 57P01), "
          f"{len(writer.uncertain)} cut off in COMMIT")
    assert not set(container_ids(pods).values()) & set(before.values())
    assert writer.reconnects >= 1, "the client was on a pod that went away"
    rows = pod_postgres.psql("SELECT id, string_agg(part::text, ',' ORDER BY part) FROM ledger GROUP BY id",
                             dbname=tier.dbname)
    parts = dict(line.split("|") for line in rows.splitlines()) if rows else {}
    parts = {int(k): v for k, v in parts.items()}
    assert all(v == "1,2" for v in parts.values()), "a transaction applied twice or cut in half"
    assert set(writer.committed) <= set(parts), "a committed transaction was lost"
    assert set(parts) <= set(writer.committed) | set(writer.uncertain), "a row no transaction committed"


def test_a_deleted_pod_is_replaced_and_the_status_follows(tier):
    pods = tier.wait_ready()
    victim = pods[0]["metadata"]["name"]
    tier.kubectl("delete", "pod", victim, "--wait=false")
    pods = tier.wait_ready()
    assert victim not in {p["metadata"]["name"] for p in pods}
    pdb = wait_for(lambda: (lambda s: s.get("currentHealthy") == REPLICAS and s)(tier.get("pdb").get("status") or {}),
                   timeout=60, what="the PodDisruptionBudget healthy again")
    assert pdb["disruptionsAllowed"] == 1
    status = tier.get("pgp")["status"]
    assert status["readyReplicas"] == REPLICAS and condition(tier.get("pgp"), "Ready") == "True"
    for pod in pods:
        with tier.connect(pod) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.local_control_plane
def test_a_stopped_node_leaves_no_container_mount_netns_or_process(pod_platform, pod_namespace):
    from maitred.local.node import Node

    first = pod_platform.node
    pause = first.pause
    second = Node.start(pod_platform.cluster, first.kubelet, pause)
    try:
        namespace = pod_namespace
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "namespace": namespace},
               "spec": {"nodeName": second.name, "containers": [{
                   "name": "sleeper", "image": pause.ref, "imagePullPolicy": "Never"}]}}
        pod_platform.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        wait_for(lambda: ready(json.loads(pod_platform.cluster.kubectl("get", "pod", "sleeper", "-n", namespace,
                                                                         "-o", "json"))),
                 timeout=90, what="a pod on the second node")
        assert any("netns" in m or "/rootfs" in m for m in second._mounts()), second._mounts()
    finally:
        second.stop()
    assert second.leftovers() == []
    assert not Path(second.workdir).exists()
