"""The operator against a real API server: `maitred operator` runs as a process with the RBAC of
operator/rbac.yaml and kopf peering, PostgresPoolers are applied with kubectl, and what it makes is checked
in the API. Then the pooler of the Deployment runs as a local process from the ConfigMap and Secret the
operator wrote (the local control plane has no kubelet), in front of a real PostgreSQL.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from typing import Any

import pytest
import yaml

from maitred.local.controlplane import wait_for
from maitred.local.kubelet import Kubelet
from maitred.local.operator import OperatorProcess, install
from pooler_operator.render import render_documents
from tests.support import require_binary

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

IMAGE = "registry.invalid/maitred:e2e"
OWNED = [("configmap", "{}-config"), ("secret", "{}-auth"), ("deployment", "{}"), ("service", "{}"),
         ("serviceaccount", "{}")]


# -- the operator as a process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory):
    """`maitred operator` watching every namespace, as its ServiceAccount, peering through `maitred`."""
    install(control_plane, peering="maitred")
    op = OperatorProcess(control_plane, tmp_path_factory.mktemp("operator"), "--all-namespaces",
                         "--peering", "maitred", env={"MAITRED_POOLER_IMAGE": IMAGE})
    try:
        yield op.wait_live()
    finally:
        op.stop()
        print("operator log (tail):\n" + op.logs(200))


# -- kubectl helpers ----------------------------------------------------------------------------------------


def kubectl_result(cp, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", *args], env=cp.env(), input=input, capture_output=True, text=True)


def get(cp, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    out = kubectl_result(cp, "get", kind, name, "-n", namespace, "-o", "json")
    if out.returncode != 0:
        if "NotFound" in out.stderr:
            return None
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def pooler_doc(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def secret_doc(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": data}


def apply(cp, *docs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def patch(cp, name: str, namespace: str, spec: dict[str, Any]) -> None:
    cp.kubectl("patch", "pgp", name, "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": spec}))


def wait_applied(cp, op, name: str, namespace: str, generation: int | None = None,
                 timeout: float = 60) -> dict[str, Any]:
    def probe():
        obj = get(cp, "pgp", name, namespace)
        applied = condition(obj, "ConfigApplied")
        wanted = generation or obj["metadata"]["generation"]
        return obj if applied.get("status") == "True" and applied.get("observedGeneration") == wanted else None
    try:
        return wait_for(probe, timeout=timeout, what=f"ConfigApplied on {namespace}/{name}")
    except TimeoutError:
        raise AssertionError(f"{namespace}/{name}: {get(cp, 'pgp', name, namespace)}\n{op.logs()}") from None


def contains(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` (a live object) differs from `expected` (a rendered one); extra live fields are fine."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r} is not an object"]
        return [d for k, v in expected.items() for d in contains(v, actual.get(k, _MISSING), f"{path}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} != {expected!r}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in contains(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]


_MISSING = object()
USERS = {"app": "app-secret"}


def basic(namespace: str, name: str = "pool", **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    secret = secret_doc(f"{name}-users", namespace, USERS)
    cr = pooler_doc(name, namespace, {"database": {"host": "postgres.example", "dbname": "app"},
                                      "auth": {"usersSecret": {"name": f"{name}-users"}}, **spec})
    return secret, cr


# -- the tests ----------------------------------------------------------------------------------------------


def test_apply_makes_every_owned_object_as_rendered(control_plane, operator, namespace):
    cp = control_plane
    secret, cr = basic(namespace, replicas=2, pool={"defaultPoolSize": 15})
    apply(cp, secret, cr)
    live = wait_applied(cp, operator, "pool", namespace)
    uid = live["metadata"]["uid"]
    assert not live["metadata"].get("finalizers"), "the operator needs no finalizer"

    rendered, problems = render_documents([secret, cr], image=IMAGE)
    assert problems == []
    assert [m["kind"] for m in rendered] == ["ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment",
                                             "PodDisruptionBudget"]
    for manifest in rendered:
        obj = get(cp, manifest["kind"].lower(), manifest["metadata"]["name"], namespace)
        assert obj is not None, f"no {manifest['kind']}"
        if manifest["kind"] == "ConfigMap":  # its `;; inputs` line names Secret versions only the cluster knows
            for ini in (manifest["data"], obj["data"]):
                ini["pooler.ini"] = re.sub(r"(?m)^;; inputs .*$", "", ini["pooler.ini"])
        assert contains(manifest, obj) == [], manifest["kind"]
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("PostgresPooler", uid, True)

    status = live["status"]
    assert status["poolSize"] == 15 and status["budget"] == 30
    assert status["selector"] == "app.kubernetes.io/name=maitred,maitred.dev/pooler=pool"
    assert condition(live, "Degraded")["status"] == "False"
    ready = wait_for(lambda: condition(get(cp, "pgp", "pool", namespace), "Ready").get("reason") ==
                     "ReplicasNotReady" and get(cp, "pgp", "pool", namespace), what="Ready from the Deployment")
    assert ready["status"]["replicasReady"] == "0/2"  # no kubelet here: the pods stay Pending

    table = cp.kubectl("get", "pgp", "-n", namespace).splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == ["NAME", "MODE", "POOL MODE", "REPLICAS", "POOL SIZE",
                                                     "BUDGET", "READY", "AGE"]
    assert re.split(r"\s{2,}", table[1].strip())[:7] == ["pool", "deployment", "transaction", "0/2", "15",
                                                         "30", "False"]
    events = json.loads(cp.kubectl("get", "events", "-n", namespace, "-o", "json",
                                   "--field-selector", "involvedObject.name=pool"))["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["kind"] == "PostgresPooler"}
    assert "Created" in reasons, events


def test_reloadable_change_reaches_the_configmap_but_not_the_pod_template(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace))
    wait_applied(cp, operator, "pool", namespace)
    before = get(cp, "deployment", "pool", namespace)
    patch(cp, "pool", namespace, {"pool": {"defaultPoolSize": 42, "queryWaitTimeout": 30},
                                  "pooler": {"parameters": {"max_prepared_statements": 50}}})
    live = wait_applied(cp, operator, "pool", namespace, generation=2)
    ini = get(cp, "configmap", "pool-config", namespace)["data"]["pooler.ini"]
    assert "default_pool_size = 42" in ini and "max_prepared_statements = 50" in ini
    assert live["status"]["poolSize"] == 42
    after = get(cp, "deployment", "pool", namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]


def test_change_that_needs_a_restart_changes_the_pod_template(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace))
    wait_applied(cp, operator, "pool", namespace)
    before = get(cp, "deployment", "pool", namespace)
    patch(cp, "pool", namespace, {"pooler": {"workers": 2}})
    wait_applied(cp, operator, "pool", namespace, generation=2)
    after = get(cp, "deployment", "pool", namespace)
    annotation = "maitred.dev/restart-hash"
    assert after["spec"]["template"]["metadata"]["annotations"][annotation] != \
        before["spec"]["template"]["metadata"]["annotations"][annotation]
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert "workers = 2" in get(cp, "configmap", "pool-config", namespace)["data"]["pooler.ini"]


def test_scale_subresource_drives_the_deployment_and_is_not_fought(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace))
    wait_applied(cp, operator, "pool", namespace)
    scale = json.loads(cp.kubectl("get", "--raw", f"/apis/maitred.dev/v1alpha1/namespaces/{namespace}/"
                                  "postgrespoolers/pool/scale"))
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "app.kubernetes.io/name=maitred,maitred.dev/pooler=pool"

    cp.kubectl("scale", "pgp", "pool", "-n", namespace, "--replicas=3")
    wait_for(lambda: get(cp, "deployment", "pool", namespace)["spec"]["replicas"] == 3, what="3 replicas")
    wait_for(lambda: get(cp, "poddisruptionbudget", "pool", namespace), what="the PDB for 3 replicas")
    time.sleep(2)
    assert get(cp, "pgp", "pool", namespace)["spec"]["replicas"] == 3, "the operator rewrote spec.replicas"

    cp.kubectl("scale", "pgp", "pool", "-n", namespace, "--replicas=1")
    wait_for(lambda: get(cp, "poddisruptionbudget", "pool", namespace) is None, what="the PDB to go")
    assert get(cp, "deployment", "pool", namespace)["spec"]["replicas"] == 1


def test_delete_garbage_collects_everything_owned(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace, replicas=2))
    wait_applied(cp, operator, "pool", namespace)
    owned = OWNED + [("poddisruptionbudget", "{}")]
    assert all(get(cp, kind, name.format("pool"), namespace) for kind, name in owned)
    cp.kubectl("delete", "pgp", "pool", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(lambda: not any(get(cp, kind, name.format("pool"), namespace) for kind, name in owned),
             timeout=60, what="the garbage collector to delete every owned object")
    assert get(cp, "secret", "pool-users", namespace) is not None, "a Secret the user owns was deleted"


REFUSED_BY_THE_API_SERVER = {
    "unknown pool mode": ({"poolMode": "batch"}, 'Unsupported value: "batch"'),
    "pool size out of bounds": ({"pool": {"defaultPoolSize": 0}}, "should be greater than or equal to 1"),
    "owned parameter": ({"pooler": {"parameters": {"listen_port": 6432}}}, "listen_port is set by the operator"),
    "unknown parameter": ({"pooler": {"parameters": {"pool_sizes": 3}}}, "unknown pooler setting"),
    "min pool above default": ({"pool": {"defaultPoolSize": 5, "minPoolSize": 9}},
                               "pool.minPoolSize must not exceed pool.defaultPoolSize"),
    "client tls without certificate": ({"tls": {"client": {"sslmode": "require"}}},
                                       "tls.client.secretName is needed"),
    "no users": ({"auth": {"type": "md5"}}, "set auth.usersSecret, auth.authQuery or both"),
}


@pytest.mark.parametrize("spec,message", REFUSED_BY_THE_API_SERVER.values(), ids=REFUSED_BY_THE_API_SERVER.keys())
def test_invalid_resource_is_refused_by_the_api_server_with_a_message(control_plane, operator, namespace, spec,
                                                                      message):
    _, cr = basic(namespace)
    cr["spec"].update(spec)
    out = kubectl_result(control_plane, "apply", "-f", "-", input=json.dumps(cr))
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_long_name_is_refused_by_the_api_server(control_plane, operator, namespace):
    _, cr = basic(namespace, name="p" * 53)
    out = kubectl_result(control_plane, "apply", "-f", "-", input=json.dumps(cr))
    assert out.returncode != 0 and "at most 52 characters" in out.stderr, out.stderr


def test_invalid_value_is_degraded_with_what_to_fix_and_recovers(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace))
    wait_applied(cp, operator, "pool", namespace)
    configmap = get(cp, "configmap", "pool-config", namespace)["data"]
    patch(cp, "pool", namespace, {"pooler": {"parameters": {"max_prepared_statements": "lots"}}})

    def degraded():
        obj = get(cp, "pgp", "pool", namespace)
        c = condition(obj, "Degraded")
        return c if c.get("status") == "True" and c.get("observedGeneration") == 2 else None
    c = wait_for(degraded, what="Degraded")
    assert c["reason"] == "InvalidSpec"
    assert c["message"] == "fix the spec: spec.pooler.parameters: max_prepared_statements: 'lots' is not an integer"
    assert get(cp, "configmap", "pool-config", namespace)["data"] == configmap, "a bad spec reached the pooler"
    events = json.loads(cp.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" for e in events)
    assert operator.alive()

    patch(cp, "pool", namespace, {"pooler": {"parameters": {"max_prepared_statements": "100"}}})
    live = wait_applied(cp, operator, "pool", namespace, generation=3)
    assert condition(live, "Degraded")["status"] == "False"


def test_missing_secret_is_degraded_until_it_is_created(control_plane, operator, namespace):
    cp = control_plane
    secret, cr = basic(namespace)
    apply(cp, cr)
    c = wait_for(lambda: condition(get(cp, "pgp", "pool", namespace), "Degraded").get("reason") ==
                 "SecretNotFound" and condition(get(cp, "pgp", "pool", namespace), "Degraded"), what="Degraded")
    assert c["message"] == "Secret pool-users (spec.auth.usersSecret) not found"
    apply(cp, secret)  # no change to the PostgresPooler: the Secret watch reconciles it
    wait_applied(cp, operator, "pool", namespace)
    userlist = base64.b64decode(get(cp, "secret", "pool-auth", namespace)["data"]["userlist.txt"]).decode()
    assert userlist == '"app" "app-secret"\n'


def test_changed_users_secret_reaches_the_auth_file(control_plane, operator, namespace):
    cp = control_plane
    secret, cr = basic(namespace)
    apply(cp, secret, cr)
    wait_applied(cp, operator, "pool", namespace)
    apply(cp, secret_doc("pool-users", namespace, {"app": "app-secret", "reporting": "r-secret"}))
    wait_for(lambda: b'"reporting" "r-secret"' in base64.b64decode(
        get(cp, "secret", "pool-auth", namespace)["data"]["userlist.txt"]), what="the new user in the auth_file")


def test_deleted_owned_object_is_made_again(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace))
    wait_applied(cp, operator, "pool", namespace)
    uid = get(cp, "configmap", "pool-config", namespace)["metadata"]["uid"]
    cp.kubectl("delete", "configmap", "pool-config", "-n", namespace)
    wait_for(lambda: (get(cp, "configmap", "pool-config", namespace) or {}).get("metadata", {}).get("uid")
             not in (None, uid), what="the ConfigMap to be made again")


def test_sidecar_mode_renders_only_the_config_and_says_so(control_plane, operator, namespace):
    cp = control_plane
    apply(cp, *basic(namespace, mode="sidecar"))
    live = wait_applied(cp, operator, "pool", namespace)
    assert get(cp, "configmap", "pool-config", namespace) and get(cp, "secret", "pool-auth", namespace)
    assert get(cp, "deployment", "pool", namespace) is None and get(cp, "service", "pool", namespace) is None
    assert condition(live, "Ready")["reason"] == "SidecarConfigRendered"
    assert "no Deployment is run" in condition(live, "ConfigApplied")["message"]


def test_a_second_replica_stands_by_while_the_first_leads(control_plane, operator, namespace, tmp_path):
    """Peering: a replica with a lower priority pauses, so two replicas never reconcile the same resource."""
    cp = control_plane
    standby = OperatorProcess(cp, tmp_path, "--all-namespaces", "--peering", "maitred", "--priority", "1",
                              name="standby")
    try:
        def peers():
            status = json.loads(cp.kubectl("get", "clusterkopfpeering", "maitred", "-o", "json")).get("status")
            return len(status or {}) >= 2 and status
        try:
            status = wait_for(peers, timeout=30, what="both replicas in the peering object")
        except TimeoutError:
            raise AssertionError(f"standby:\n{standby.logs()}") from None
        assert sorted(p["priority"] for p in status.values())[0] == 1
        apply(cp, *basic(namespace))
        wait_applied(cp, operator, "pool", namespace)
        time.sleep(2)
        log = standby.log.read_text()
        assert "created Deployment" not in log and "Applied:" not in log, standby.logs()
        assert standby.alive()
    finally:
        standby.stop()


# -- the pooler of the Deployment, run here -----------------------------------------------------------------


@pytest.fixture
def postgres():
    from maitred.local.postgres import LocalPostgres

    require_binary("psql")
    with LocalPostgres() as pg:
        pg.create_role("app", "app-secret")
        pg.create_role("reporting", "r-secret")
        pg.create_database("app", owner="app")
        yield pg


def test_the_deployments_pooler_serves_clients_and_follows_live_changes(control_plane, operator, namespace,
                                                                        postgres, tmp_path):
    import psycopg

    cp = control_plane
    secret = secret_doc("pool-users", namespace, USERS)
    cr = pooler_doc("pool", namespace, {"database": {"host": "127.0.0.1", "port": postgres.port, "dbname": "app"},
                                        "auth": {"usersSecret": {"name": "pool-users"}},
                                        "pool": {"defaultPoolSize": 3}})
    apply(cp, secret, cr)
    wait_applied(cp, operator, "pool", namespace)
    kubelet = Kubelet(cp, namespace, get(cp, "deployment", "pool", namespace), tmp_path)
    kubelet.start()
    try:
        dsn = "host=127.0.0.1 port={} dbname=app user={} password={}"
        with psycopg.connect(dsn.format(kubelet.port("postgres"), "app", "app-secret"), autocommit=True) as conn:
            assert conn.execute("SELECT current_database(), current_user").fetchone() == ("app", "app")
        assert kubelet.http("/readyz").strip() == "ready"
        assert 'maitred_pool_size{database="app",user="app"} 3.0' in kubelet.http("/metrics")

        # A reloadable change: the ConfigMap changes, the pooler reloads it, the pod keeps running.
        template = get(cp, "deployment", "pool", namespace)["spec"]["template"]
        patch(cp, "pool", namespace, {"pool": {"defaultPoolSize": 7}})
        wait_applied(cp, operator, "pool", namespace, generation=2)
        assert get(cp, "deployment", "pool", namespace)["spec"]["template"] == template
        kubelet.sync()
        wait_for(lambda: 'maitred_pool_size{database="app",user="app"} 7.0' in kubelet.http("/metrics"),
                 timeout=15, what=f"the pooler to reload the pool size:\n{kubelet.logs()[-2000:]}")

        # A new user in the Secret: a new auth_file, reloaded with the config.
        apply(cp, secret_doc("pool-users", namespace, {**USERS, "reporting": "r-secret"}))
        wait_for(lambda: b"reporting" in base64.b64decode(
            get(cp, "secret", "pool-auth", namespace)["data"]["userlist.txt"]), what="the new auth_file")
        kubelet.sync()

        def reporting_logs_in():
            with psycopg.connect(dsn.format(kubelet.port("postgres"), "reporting", "r-secret")) as conn:
                return conn.execute("SELECT current_user").fetchone() == ("reporting",)
        wait_for(reporting_logs_in, timeout=15, what=f"the new user to log in:\n{kubelet.logs()[-2000:]}")
        assert kubelet.proc.poll() is None, "the pooler restarted"
    finally:
        kubelet.stop()
