"""The reconcile against an in-memory API server: what is applied, what is pruned, which Events, which status."""
from __future__ import annotations

import base64
import copy
import itertools
from typing import Any

import pytest

from pooler_operator.kube import ApiError
from pooler_operator.reconcile import (APPLIED_HASH_ANNOTATION, RetryLater, config_changes, parse_ini,
                                       reconcile, refresh_status, status_patch)

NS = "team"


class FakeKube:
    """The methods of pooler_operator.kube.Kube over a dict, with server-side apply as a whole replace."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.calls: list[tuple[str, str, str]] = []
        self.kinds: dict[str, set[str]] = {"monitoring.coreos.com/v1": set()}
        self.fail_apply: dict[str, ApiError] = {}
        self.status_conflicts = 0

    def _key(self, api_version, kind, namespace, name):
        return (api_version, kind, namespace, name)

    def _store(self, obj):
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self.versions))
        self.objects[self._key(obj["apiVersion"], obj["kind"], meta.get("namespace", NS), meta["name"])] = obj
        return obj

    # -- what the reconcile calls -----------------------------------------------------------------------------

    def get(self, api_version, kind, namespace, name):
        obj = self.objects.get(self._key(api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def apply(self, manifest):
        kind = manifest["kind"]
        self.calls.append(("apply", kind, manifest["metadata"]["name"]))
        if kind in self.fail_apply:
            raise self.fail_apply[kind]
        key = self._key(manifest["apiVersion"], kind, manifest["metadata"]["namespace"],
                        manifest["metadata"]["name"])
        old = self.objects.get(key, {})
        obj = copy.deepcopy(manifest)
        if "status" in old:
            obj["status"] = old["status"]
        return copy.deepcopy(self._store(obj))

    def delete(self, api_version, kind, namespace, name):
        self.calls.append(("delete", kind, name))
        return self.objects.pop(self._key(api_version, kind, namespace, name), None) is not None

    def read_secret(self, namespace, name):
        obj = self.get("v1", "Secret", namespace, name)
        if obj is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return {**data, **(obj.get("stringData") or {})}, obj["metadata"]["resourceVersion"]

    def has_kind(self, api_version, kind):
        return kind in self.kinds.get(api_version, set())

    def get_pooler(self, namespace, name):
        return self.get("maitred.dev/v1alpha1", "PostgresPooler", namespace, name)

    def patch_pooler_status(self, namespace, name, patch, resource_version):
        obj = self.objects[self._key("maitred.dev/v1alpha1", "PostgresPooler", namespace, name)]
        if self.status_conflicts:
            self.status_conflicts -= 1
            self._store(obj)  # someone else wrote in between
            raise ApiError(409, "the object has been modified", "Conflict")
        assert obj["metadata"]["resourceVersion"] == resource_version
        status = dict(obj.get("status") or {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        obj["status"] = status
        self._store(obj)
        return copy.deepcopy(obj)

    # -- test helpers -------------------------------------------------------------------------------------

    def add_secret(self, name, data):
        self._store({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                     "stringData": data})

    def add_pooler(self, spec, name="p"):
        return self._store({"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
                            "metadata": {"name": name, "namespace": NS, "uid": "uid-1", "generation": 1},
                            "spec": spec})

    def update_spec(self, name="p", **changes):
        obj = self.objects[self._key("maitred.dev/v1alpha1", "PostgresPooler", NS, name)]
        obj["spec"] = {**obj["spec"], **changes}
        obj["metadata"]["generation"] += 1
        self._store(obj)
        return copy.deepcopy(obj)

    def pooler(self, name="p"):
        return self.get_pooler(NS, name)

    def kinds_present(self):
        return sorted(k[1] for k in self.objects if k[1] not in ("PostgresPooler",) and k[3] != "users")

    def applied(self):
        calls = [c for c in self.calls if c[0] == "apply"]
        self.calls.clear()
        return [c[1] for c in calls]


SPEC = {"database": {"host": "db"}, "auth": {"usersSecret": {"name": "users"}}}


@pytest.fixture
def kube():
    k = FakeKube()
    k.add_secret("users", {"app": "secret"})
    return k


class Events(list):
    def __call__(self, type_, reason, message):
        self.append((type_, reason, message))


def run(kube, name="p"):
    events = Events()
    result = reconcile(kube, kube.pooler(name), events, image="img")
    return result, events


def condition(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_create_applies_every_owned_object_and_reports_status(kube):
    kube.add_pooler(SPEC)
    result, events = run(kube)
    assert kube.applied() == ["ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment"]
    assert [e[1] for e in events] == ["Created"] * 5
    status = kube.pooler()["status"]
    assert condition(status, "ConfigApplied")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "ReplicasNotReady", 1)
    assert status["observedGeneration"] == 1
    assert status["poolSize"] == 20 and status["budget"] == 20 and status["replicasReady"] == "0/1"
    assert status["selector"] == "app.kubernetes.io/name=maitred,maitred.dev/pooler=p"
    assert all(APPLIED_HASH_ANNOTATION in o["metadata"]["annotations"] for k, o in kube.objects.items()
               if k[1] in ("ConfigMap", "Deployment"))


def test_second_reconcile_changes_nothing_and_posts_no_event(kube):
    kube.add_pooler(SPEC)
    run(kube)
    kube.applied()
    before = copy.deepcopy(kube.pooler()["status"])
    result, events = run(kube)
    assert kube.applied() == [] and events == [] and result.changed == []
    assert kube.pooler()["status"] == before


def test_autotune_gets_a_console_secret_made_once_and_pruned_when_turned_off(kube):
    kube.add_secret("monitor", {"username": "mon", "password": "pw"})
    kube.add_pooler({**SPEC, "autotune": {"enabled": True, "postgresSecret": {"name": "monitor"}}})
    run(kube)
    console = kube.get("v1", "Secret", NS, "p-autotune")
    password = base64.b64decode(console["data"]["password"]).decode()
    auth = base64.b64decode(kube.get("v1", "Secret", NS, "p-auth")["data"]["userlist.txt"]).decode()
    assert len(password) >= 24 and f'"maitred_autotune" "{password}"' in auth
    kube.applied()
    result, events = run(kube)
    assert kube.applied() == [] and events == []            # the password is not made again
    kube.update_spec(autotune={"enabled": False})
    result, events = run(kube)
    assert kube.get("v1", "Secret", NS, "p-autotune") is None
    assert ("Normal", "Deleted", "deleted Secret p-autotune: no longer wanted") in events


def test_scaling_up_an_autotuned_tier_shrinks_the_running_pods_first(kube):
    kube.add_secret("monitor", {"username": "mon", "password": "pw"})
    kube.add_pooler({**SPEC, "replicas": 2, "autotune": {"enabled": True, "postgresSecret": {"name": "monitor"}}})
    run(kube)
    obj = kube.objects[("maitred.dev/v1alpha1", "PostgresPooler", NS, "p")]
    obj["status"]["autotune"] = {"state": "Tuning", "poolSize": 12, "perProcessCap": 12, "share": 24}
    kube.update_spec(replicas=4)
    seen = []

    def shrink(pooler, tuned):
        deployment = kube.get("apps/v1", "Deployment", NS, "p")
        config = kube.get("v1", "ConfigMap", NS, "p-config")["data"]["pooler.ini"]
        seen.append((tuned, deployment["spec"]["replicas"], "max_db_connections = 6" in config))
        return ["team/p-x/10.0.0.9:5432: no answer"]
    events = Events()
    reconcile(kube, kube.pooler(), events, image="img", before_scale_up=shrink)
    assert [(t.pool_size, t.per_process_cap, replicas, config_first) for t, replicas, config_first in seen] == \
        [(6, 6, 2, True)]
    assert kube.get("apps/v1", "Deployment", NS, "p")["spec"]["replicas"] == 4
    assert ("Warning", "PoolResizeFailed", "before scaling up: team/p-x/10.0.0.9:5432: no answer") in events


def test_autotune_without_monitoring_credentials_is_misconfigured_but_the_pooler_runs(kube):
    kube.add_pooler({**SPEC, "autotune": {"enabled": True}})
    run(kube)
    status = kube.pooler()["status"]
    assert status["autotune"]["state"] == "Misconfigured" and "postgresSecret" in status["autotune"]["message"]
    assert condition(status, "ConfigApplied")["status"] == "True"


def test_reloadable_change_updates_only_the_configmap(kube):
    kube.add_pooler(SPEC)
    run(kube)
    kube.applied()
    kube.update_spec(pool={"defaultPoolSize": 40})
    _, events = run(kube)
    assert kube.applied() == ["ConfigMap"]
    assert events == [("Normal", "Updated",
                       "updated ConfigMap p-config: the pooler reloads default_pool_size live")]
    assert kube.pooler()["status"]["poolSize"] == 40


def test_restart_change_updates_the_pod_template_and_says_why(kube):
    kube.add_pooler(SPEC)
    run(kube)
    kube.applied()
    kube.update_spec(pooler={"workers": 2})
    _, events = run(kube)
    assert kube.applied() == ["ConfigMap", "Deployment"]
    messages = [e[2] for e in events]
    assert "updated ConfigMap p-config: maitred.workers need a restart, so the pods roll" in messages
    assert "updated Deployment p: settings that need a restart changed: rolling the pods" in messages


def test_scaling_changes_replicas_without_touching_the_pod_template(kube):
    kube.add_pooler(SPEC)
    run(kube)
    template = kube.get("apps/v1", "Deployment", NS, "p")["spec"]["template"]
    kube.applied()
    kube.update_spec(replicas=3)
    _, events = run(kube)
    assert kube.applied() == ["Deployment", "PodDisruptionBudget"]
    deployment = kube.get("apps/v1", "Deployment", NS, "p")
    assert deployment["spec"]["replicas"] == 3 and deployment["spec"]["template"] == template
    assert ("Normal", "Updated", "updated Deployment p: replicas 1 -> 3") in events


def test_scaling_down_to_one_prunes_the_pdb(kube):
    kube.add_pooler({**SPEC, "replicas": 3})
    run(kube)
    kube.update_spec(replicas=1)
    _, events = run(kube)
    assert kube.get("policy/v1", "PodDisruptionBudget", NS, "p") is None
    assert ("Normal", "Deleted", "deleted PodDisruptionBudget p: no longer wanted") in events


def test_objects_not_owned_by_this_resource_are_never_pruned(kube):
    kube._store({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                 "metadata": {"name": "p", "namespace": NS, "ownerReferences": [
                     {"kind": "PostgresPooler", "uid": "someone-else"}]}})
    kube.add_pooler(SPEC)
    run(kube)
    assert kube.get("policy/v1", "PodDisruptionBudget", NS, "p") is not None


def test_switching_to_sidecar_keeps_only_config_and_auth_file(kube):
    kube.add_pooler(SPEC)
    run(kube)
    kube.update_spec(mode="sidecar")
    run(kube)
    assert kube.kinds_present() == ["ConfigMap", "Secret"]
    status = kube.pooler()["status"]
    assert condition(status, "Ready")["reason"] == "SidecarConfigRendered"
    assert "replicas" not in status and "budget" not in status
    assert "no Deployment is run" in condition(status, "ConfigApplied")["message"]


def test_invalid_spec_is_degraded_with_what_to_fix_and_the_last_good_config_stays(kube):
    kube.add_pooler(SPEC)
    run(kube)
    configmap = kube.get("v1", "ConfigMap", NS, "p-config")
    kube.applied()
    kube.update_spec(pooler={"parameters": {"max_prepared_statements": "lots"}})
    result, events = run(kube)
    assert kube.applied() == []
    assert kube.get("v1", "ConfigMap", NS, "p-config") == configmap
    status = kube.pooler()["status"]
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert degraded["message"] == "fix the spec: spec.pooler.parameters: max_prepared_statements: 'lots' is not " \
                                  "an integer"
    assert condition(status, "ConfigApplied")["status"] == "False"
    assert condition(status, "ConfigApplied")["observedGeneration"] == 2
    assert status["poolSize"] == 20  # the config in force did not change
    assert events == [("Warning", "InvalidSpec", degraded["message"])]


def test_missing_secret_is_degraded_until_it_appears(kube):
    kube.add_pooler({**SPEC, "auth": {"usersSecret": {"name": "later"}}})
    result, events = run(kube)
    assert kube.applied() == []
    assert condition(kube.pooler()["status"], "Degraded")["reason"] == "SecretNotFound"
    assert events == [("Warning", "SecretNotFound", "Secret later (spec.auth.usersSecret) not found")]
    kube.add_secret("later", {"app": "x"})
    run(kube)
    assert condition(kube.pooler()["status"], "Degraded")["status"] == "False"
    assert "Deployment" in kube.applied()


def test_object_refused_by_the_api_server_is_degraded_not_retried(kube):
    kube.add_pooler(SPEC)
    kube.fail_apply["Deployment"] = ApiError(422, 'Deployment.apps "p" is invalid: spec.template.spec.'
                                                  'tolerations[0].operator: Unsupported value: "Sometimes"',
                                             "Invalid")
    result, _ = run(kube)
    degraded = condition(kube.pooler()["status"], "Degraded")
    assert degraded["reason"] == "RejectedByAPIServer" and "tolerations[0].operator" in degraded["message"]


def test_transient_api_failure_is_reported_and_retried(kube):
    kube.add_pooler(SPEC)
    kube.fail_apply["ConfigMap"] = ApiError(503, "etcdserver: request timed out", "ServiceUnavailable")
    events = Events()
    with pytest.raises(RetryLater):
        reconcile(kube, kube.pooler(), events, image="img")
    assert condition(kube.pooler()["status"], "ConfigApplied")["reason"] == "ApplyFailed"
    assert events[-1][:2] == ("Warning", "ApplyFailed")


def test_status_write_conflict_is_retried_against_the_fresh_object(kube):
    kube.add_pooler(SPEC)
    kube.status_conflicts = 2
    run(kube)
    assert condition(kube.pooler()["status"], "ConfigApplied")["status"] == "True"


def test_paused_resource_is_left_alone(kube):
    kube.add_pooler({**SPEC, "paused": True})
    _, events = run(kube)
    assert kube.applied() == []
    status = kube.pooler()["status"]
    assert condition(status, "ConfigApplied")["reason"] == "Paused"
    assert condition(status, "Degraded")["status"] == "False"
    assert events == [("Normal", "Paused", "spec.paused is true: the owned objects are left as they are")]
    _, events = run(kube)
    assert events == []


def test_deployment_progress_reaches_the_status(kube):
    kube.add_pooler({**SPEC, "replicas": 2})
    run(kube)
    key = ("apps/v1", "Deployment", NS, "p")
    kube.objects[key]["status"] = {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    refresh_status(kube, NS, "p")
    status = kube.pooler()["status"]
    assert condition(status, "Ready")["status"] == "True" and status["replicasReady"] == "2/2"
    kube.objects[key]["status"]["conditions"] = [{"type": "ReplicaFailure", "status": "True",
                                                 "message": "pods \"p-1\" is forbidden: exceeded quota"}]
    refresh_status(kube, NS, "p")
    degraded = condition(kube.pooler()["status"], "Degraded")
    assert degraded["reason"] == "ReplicaFailure" and "exceeded quota" in degraded["message"]


def test_monitor_made_only_when_its_crd_is_served(kube):
    kube.add_pooler({**SPEC, "monitoring": {"enabled": True}})
    _, events = run(kube)
    assert "PodMonitor" not in kube.applied()
    assert any(e[1] == "MonitoringUnavailable" for e in events)
    kube.kinds["monitoring.coreos.com/v1"] = {"PodMonitor", "ServiceMonitor"}
    run(kube)
    assert kube.applied() == ["PodMonitor"]
    kube.update_spec(monitoring={"enabled": False})
    run(kube)
    assert kube.get("monitoring.coreos.com/v1", "PodMonitor", NS, "p") is None


# -- pure helpers -------------------------------------------------------------------------------------------


def test_config_changes_split_reloadable_from_restart_settings():
    old = parse_ini("[databases]\n* = host=a\n[pgbouncer]\ndefault_pool_size = 20\nlisten_port = 5432\n"
                    "[maitred]\nworkers = 1\n")
    new = parse_ini("[databases]\n* = host=b\n[pgbouncer]\ndefault_pool_size = 30\nlisten_port = 5432\n"
                    "pkt_buf = 8192\n[maitred]\nworkers = 2\n")
    reloaded, restart = config_changes(old, new)
    assert reloaded == ["databases.*", "default_pool_size"]
    assert restart == ["maitred.workers", "pkt_buf"]


def test_status_patch_removes_keys_that_went_away():
    assert status_patch({"a": 1, "b": 2}, {"a": 3}) == {"b": None, "a": 3}
    assert status_patch({"x": {"a": 1, "b": 2}}, {"x": {"a": 1}}) == {"x": {"b": None, "a": 1}}
