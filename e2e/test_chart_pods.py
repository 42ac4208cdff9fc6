"""The chart on the real node: `helm install` runs the operator as a pod, which reconciles a PostgresPooler to
serving pooler pods, injects the sidecar into an annotated pod through the chart's webhook Service, and carries a
change of the PostgresPooler to that running sidecar; `helm uninstall` then leaves nothing of maitred's behind.

The operator pod reaches the API server at the `kubernetes` Service, and the API server reaches the webhook
Service at the operator pod's address (maitred/local/node.py and controlplane.py say how). The tests run in file
order: the last one uninstalls the release.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from e2e.test_autotune import secret
from e2e.test_pods import PASSWORD, Tier, pod_namespace, pod_postgres, ready  # noqa: F401 - fixtures used here
from e2e.test_sidecar_pods import sidecar_tier
from maitred.local.controlplane import Cluster, wait_for
from pooler_operator.inject import INJECT_ANNOTATION, INJECTED_ANNOTATION, PORT_NAMES, SIDECAR_NAME
from pooler_operator.objects import CONSOLE_USER, Names
from pooler_operator.webhook_config import CONFIGURATION_NAME

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

CHART = Path(__file__).resolve().parent.parent / "charts" / "maitred"
# What Kubernetes itself puts into every namespace: not the release's, and no reason to call it left behind.
NAMESPACE_DEFAULTS = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


@dataclass
class Release:
    """The chart installed as `name` in `namespace`, with helm's homes in a directory of the test run's."""

    cluster: Cluster
    helm: Path
    env: dict[str, str]
    name: str
    namespace: str

    @property
    def operator(self) -> str:
        return f"{self.name}-maitred-operator"

    @property
    def webhook_service(self) -> str:
        return f"{self.name}-maitred-webhook"

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out = subprocess.run([str(self.helm), *args, "--namespace", self.namespace], env=self.env, input=input,
                             capture_output=True, text=True, timeout=300)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}\n{self.logs()}")
        return out.stdout

    def logs(self, tail: int = 60) -> str:
        """The operator pod's log, its last `tail` lines (-1: all)."""
        return self.cluster.kubectl("logs", "-n", self.namespace, f"deployment/{self.operator}", f"--tail={tail}",
                                    check=False)

    def operator_pods(self) -> list[dict[str, Any]]:
        return json.loads(self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "json", "-l",
            f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"))["items"]


@pytest.fixture(scope="module")
def release(pod_platform, helm, tmp_path_factory):
    """The chart with the node's image (imported into containerd: pullPolicy Never), Ready (helm --wait)."""
    cluster = pod_platform.cluster
    env = cluster.env()
    homes = tmp_path_factory.mktemp("helm")
    for kind in ("CONFIG", "CACHE", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(homes / kind.lower())
    suffix = uuid.uuid4().hex[:6]
    rel = Release(cluster, helm, env, f"mtd{suffix}", f"maitred-{suffix}")
    repository, _, tag = pod_platform.image.rpartition(":")
    values = {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}}
    rel.run("install", rel.name, str(CHART), "--create-namespace", "--values", "-", "--wait", "--timeout", "3m",
            input=yaml.safe_dump(values))
    try:
        yield rel
    finally:
        rel.run("uninstall", rel.name, "--ignore-not-found", "--wait", "--timeout", "2m", check=False)
        cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def opted_in(pod_platform, release, pod_postgres):  # noqa: F811
    """An opted-in namespace with the sidecar PostgresPooler `tier` (autotuned, so that its console has the
    autotuner's user) and its own role and database on pod_postgres; its name."""
    cluster = pod_platform.cluster
    namespace, _ = sidecar_tier(pod_platform, pod_postgres, "chart-sidecar", PASSWORD,
                                pool={"defaultPoolSize": 4, "maxClientConn": 100}, pooler={})
    # The webhook looks the PostgresPooler up when the pod is created: the pod comes once its ConfigMap exists.
    wait_for(lambda: cluster.kubectl("get", "configmap", Names("tier").config, "-n", namespace, check=False),
             timeout=60, what="the sidecar tier's ConfigMap")
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def injected(pod_platform, opted_in):
    """A pod annotated to get the sidecar of `tier`, Ready; the pod as stored and running."""
    cluster, namespace = pod_platform.cluster, opted_in
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": namespace, "annotations": {INJECT_ANNOTATION: "tier"}},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "app", "image": pod_platform.image, "imagePullPolicy": "Never", "command": ["sleep", "infinity"]}]},
    }))

    def running():
        pod = json.loads(cluster.kubectl("get", "pod", "app", "-n", namespace, "-o", "json"))
        return ready(pod) and pod
    try:
        return wait_for(running, timeout=180, what="the annotated pod Ready")
    except TimeoutError:
        raise AssertionError(cluster.kubectl("get", "pods,events", "-n", namespace, "-o", "wide")) from None


def show_config(pod: dict[str, Any], password: str) -> dict[str, str]:
    """SHOW CONFIG of the pod's sidecar, on the pod IP as the autotuner asks it."""
    port = next(p["containerPort"] for p in pod["spec"]["initContainers"][0]["ports"]
                if p["name"] == PORT_NAMES["postgres"])
    with psycopg.connect(host=pod["status"]["podIP"], port=port, user=CONSOLE_USER, password=password,
                         dbname="pgbouncer", connect_timeout=5, autocommit=True, prepare_threshold=None) as conn:
        return {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}


def sidecar_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == SIDECAR_NAME)


# -- the tests ----------------------------------------------------------------------------------------------


def test_the_chart_operator_runs_as_a_pod_and_brings_a_postgrespooler_to_serving_pods(
        release, pod_platform, pod_postgres, pod_namespace):  # noqa: F811
    (operator,) = release.operator_pods()
    assert ready(operator) and operator["spec"]["nodeName"] == pod_platform.node.name
    assert operator["spec"]["containers"][0]["image"] == pod_platform.image

    user, dbname = f"u_{uuid.uuid4().hex[:8]}", f"d_{uuid.uuid4().hex[:8]}"
    pod_postgres.create_role(user, PASSWORD)
    pod_postgres.create_database(dbname, owner=user)
    pod_platform.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        secret("tier-users", pod_namespace, {user: PASSWORD}),
        {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
         "metadata": {"name": "tier", "namespace": pod_namespace},
         "spec": {"replicas": 1, "poolMode": "transaction",
                  "database": {"host": pod_platform.host, "port": pod_postgres.port, "dbname": dbname},
                  "auth": {"type": "scram-sha-256", "usersSecret": {"name": "tier-users"}},
                  "pooler": {"shutdownTimeoutSeconds": 5}}},
    ]))
    tier = Tier(pod_platform.cluster, pod_namespace, "tier", user, dbname, None)
    (pod,) = tier.wait_ready(replicas=1)
    assert pod["spec"]["containers"][0]["image"] == pod_platform.image, "the chart's image is the pooler's"
    with tier.connect(pod) as conn:
        assert conn.execute("SELECT current_user, 42").fetchone() == (user, 42)
    assert f"[{pod_namespace}/tier]" in release.logs(tail=-1), "the chart's operator reconciled it"
    tier.kubectl("delete", "pgp", "tier", "--wait=true", "--timeout=60s")


def test_an_annotated_pod_gets_the_sidecar_from_the_chart_operator_through_the_webhook_service(
        release, injected, pod_platform):
    assert injected["metadata"]["annotations"][INJECTED_ANNOTATION] == "tier"
    assert [c["name"] for c in injected["spec"]["initContainers"]] == [SIDECAR_NAME]
    assert injected["spec"]["initContainers"][0]["image"] == pod_platform.image, "the chart's image, by default"
    assert sidecar_status(injected)["ready"]

    configuration = json.loads(release.cluster.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION_NAME,
                                                       "-o", "json"))
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    assert (service["namespace"], service["name"]) == (release.namespace, release.webhook_service)
    (operator,) = release.operator_pods()
    endpoints = json.loads(release.cluster.kubectl("get", "endpoints", release.webhook_service, "-n",
                                                   release.namespace, "-o", "json"))
    addresses = [a["ip"] for subset in endpoints["subsets"] for a in subset["addresses"]]
    assert addresses == [operator["status"]["podIP"]], "the API server called the operator pod"


def test_a_change_to_the_postgrespooler_reaches_the_running_sidecar_without_a_restart(release, injected, opted_in):
    cluster, namespace = release.cluster, opted_in
    password = base64.b64decode(json.loads(cluster.kubectl(
        "get", "secret", Names("tier").console, "-n", namespace, "-o", "json"))["data"]["password"]).decode()
    assert show_config(injected, password)["max_client_conn"] == "100"
    before = sidecar_status(injected)

    started = time.monotonic()
    cluster.kubectl("patch", "pgp", "tier", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"pool":{"maxClientConn":150}}}')
    # The kubelet refreshes the projected ConfigMap at its next sync of the pod (syncFrequency 10 s here).
    try:
        wait_for(lambda: show_config(injected, password)["max_client_conn"] == "150", timeout=120, interval=1,
                 what="max_client_conn 150 in the sidecar")
    except TimeoutError:
        raise AssertionError(release.logs()) from None
    print(f"\nsidecar reload: kubectl patch -> max_client_conn 150 in SHOW CONFIG in {time.monotonic() - started:.1f} s")
    after = sidecar_status(json.loads(cluster.kubectl("get", "pod", "app", "-n", namespace, "-o", "json")))
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], before["restartCount"]) \
        and after["ready"], "the sidecar reloaded in place"
    log = cluster.kubectl("logs", "app", "-c", SIDECAR_NAME, "-n", namespace)
    assert "reloading config (" in log and "changed)" in log, "the new config came as a changed file, not a SET"


def test_helm_uninstall_leaves_nothing_of_maitred_behind(release, opted_in):
    cluster = release.cluster
    # Autotuned PostgresPoolers carry kopf's finalizer: they go while their operator still runs, as users do it.
    cluster.kubectl("delete", "pgp", "--all", "-n", opted_in, "--wait=true", "--timeout=60s")
    manifest = release.run("get", "manifest", release.name)
    release.run("uninstall", release.name, "--wait", "--timeout", "2m")
    try:
        wait_for(lambda: not leftovers(release, manifest), timeout=120, interval=1,
                 what="the release's objects and the operator's own to be gone")
    except TimeoutError:
        raise AssertionError(f"left behind: {leftovers(release, manifest)}") from None
    assert release.run("list", "--all", "-q").strip() == ""


def leftovers(release: Release, manifest: str) -> list[str]:
    """What is left of the release: its manifest's objects, anything labelled with its name, anything in its
    namespace beyond what Kubernetes puts in every namespace (Events aside), the webhook configuration.
    The CRDs stay: Helm never deletes what it installed from crds/ (NOTES.txt says so)."""
    cluster = release.cluster
    found = []
    live = cluster.kubectl("get", "--ignore-not-found", "-o", "name", "-f", "-", input=manifest)
    found += live.split()
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    items = json.loads(cluster.kubectl("get", ",".join(kinds), "-n", release.namespace, "-o", "json"))["items"]
    found += [f"{o['kind']}/{o['metadata']['name']}" for o in items
              if (o["kind"], o["metadata"]["name"]) not in NAMESPACE_DEFAULTS]
    cluster_kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced=false", "-o", "name").split()
    found += cluster.kubectl("get", ",".join(cluster_kinds), "-o", "name",
                             "-l", f"app.kubernetes.io/instance={release.name}").split()
    found += cluster.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION_NAME, "--ignore-not-found",
                             "-o", "name").split()
    return found
