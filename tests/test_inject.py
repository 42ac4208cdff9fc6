"""Sidecar injection's patch, applied with a real JSON patch implementation to pod specs shaped like those of
common charts: several containers, init containers already there, a pod with its own security context."""
from __future__ import annotations

import copy

import jsonpatch
import pytest

from pooler_operator.api import parse_pooler
from pooler_operator.inject import (DSN_ENV, INJECT_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_NAME, pooler_refusal,
                                    refusal, requested, sidecar_patch)
from pooler_operator.objects import POOLER_LABEL, render

IMAGE = "registry.example/maitred:1.0"


def pooler(mode: str = "sidecar", **spec):
    body = {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"mode": mode, "database": {"host": "db.shop", "dbname": "web"},
                     "auth": {"type": "md5", "usersSecret": {"name": "web-users"}}, **spec}}
    return parse_pooler(body)


# A web app with a migration init container (as many Rails/Django charts ship it).
WEB = {"metadata": {"name": "web-7d9f", "namespace": "shop", "labels": {"app": "web"},
                    "annotations": {INJECT_ANNOTATION: "web", "prometheus.io/scrape": "true"}},
       "spec": {"initContainers": [{"name": "migrate", "image": "web:1", "command": ["rake", "db:migrate"]}],
                "containers": [{"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}],
                                "env": [{"name": "RAILS_ENV", "value": "production"}],
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
                               {"name": "nginx", "image": "nginx:1.27", "ports": [{"name": "web", "containerPort": 80}]}],
                "volumes": [{"name": "tmp", "emptyDir": {}}]}}
# A worker that runs as root with its own pod security context and nothing else (a bare Deployment's pod).
WORKER = {"metadata": {"name": "worker-1", "annotations": {INJECT_ANNOTATION: "web"}},
          "spec": {"securityContext": {"runAsUser": 0, "fsGroup": 2000},
                   "containers": [{"name": "worker", "image": "worker:1"}]}}


def injected(pod: dict) -> dict:
    return jsonpatch.apply_patch(pod, sidecar_patch(pod, pooler(), IMAGE))


def test_the_sidecar_starts_first_and_keeps_running_as_a_native_sidecar():
    pod = injected(WEB)
    first = pod["spec"]["initContainers"][0]
    assert first["name"] == SIDECAR_NAME and first["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [SIDECAR_NAME, "migrate"]
    assert first["image"] == IMAGE and first["args"] == ["pooler", "/etc/maitred/pooler.ini"]
    assert {p["name"] for p in first["ports"]} == {"maitred-pg", "maitred-http"}
    assert first["readinessProbe"]["httpGet"]["port"] == "maitred-http"


def test_the_app_keeps_everything_it_had_and_gains_the_dsn():
    before = copy.deepcopy(WEB)
    pod = injected(WEB)
    assert WEB == before                                       # the patch is applied to a copy
    web, nginx = pod["spec"]["containers"]
    assert web["env"] == [{"name": "RAILS_ENV", "value": "production"},
                          {"name": DSN_ENV, "value": "postgresql://127.0.0.1:5432/web"}]
    assert nginx["env"] == [{"name": DSN_ENV, "value": "postgresql://127.0.0.1:5432/web"}]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp", "maitred-config", "maitred-tmp"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "web"
    assert pod["metadata"]["labels"] == {"app": "web", POOLER_LABEL: "web"}
    names = [p["name"] for c in pod["spec"]["containers"] + pod["spec"]["initContainers"] for p in c.get("ports", [])]
    assert len(names) == len(set(names))                       # port names stay unique in the pod


def test_a_pod_with_its_own_security_context_keeps_it_and_the_sidecar_still_runs_locked_down():
    pod = injected(WORKER)
    assert pod["spec"]["securityContext"] == {"runAsUser": 0, "fsGroup": 2000}
    sidecar = pod["spec"]["initContainers"][0]
    ctx = sidecar["securityContext"]
    assert ctx["runAsUser"] == 65532 and ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"]
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["allowPrivilegeEscalation"] is False
    assert pod["metadata"]["labels"] == {POOLER_LABEL: "web"}
    config = next(v for v in pod["spec"]["volumes"] if v["name"] == "maitred-config")
    assert config["projected"]["defaultMode"] == 0o444     # readable by 65532 without the Deployment's fsGroup


def test_the_sidecar_is_the_deployments_container_with_only_names_and_restart_policy_apart():
    """One template: probes, resources, security and mounts of a Deployment pod are what the sidecar gets."""
    p = pooler(resources={"requests": {"cpu": "50m", "memory": "64Mi"}})
    deployment_pooler = parse_pooler({**p.model_dump(by_alias=True, exclude_none=True),
                                      "spec": {**p.spec.model_dump(by_alias=True, exclude_none=True),
                                               "mode": "deployment"}})
    deployment = render(deployment_pooler, {"web-users": {"userlist.txt": '"a" "b"'}}, image=IMAGE)
    container = deployment.by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    sidecar = jsonpatch.apply_patch(WORKER, sidecar_patch(WORKER, p, IMAGE))["spec"]["initContainers"][0]
    assert sidecar["resources"] == container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}}
    assert (sidecar["command"], sidecar["args"]) == (container["command"], container["args"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert {k: v for k, v in sidecar[probe].items() if k != "httpGet"} == \
            {k: v for k, v in container[probe].items() if k != "httpGet"}
        assert sidecar[probe]["httpGet"]["path"] == container[probe]["httpGet"]["path"]
    assert {k: v for k, v in sidecar["securityContext"].items() if k in container["securityContext"]} == \
        container["securityContext"]


@pytest.mark.parametrize("pod, namespace, why", [
    ({"metadata": {}}, "shop", "no maitred.dev/inject annotation"),
    (WEB, "kube-system", "system namespace"),
    ({"metadata": {"labels": {"app.kubernetes.io/name": "maitred", "app.kubernetes.io/component": "operator"},
                   "annotations": {INJECT_ANNOTATION: "web"}}}, "shop", "the operator's own pods"),
    ({"metadata": {"annotations": {INJECT_ANNOTATION: "web", INJECTED_ANNOTATION: "web"}}}, "shop", "already injected"),
    ({"metadata": {"annotations": {INJECT_ANNOTATION: "Web_DB!"}}}, "shop", "'Web_DB!' is not a PostgresPooler name"),
    ({"metadata": {"annotations": {INJECT_ANNOTATION: ""}}}, "shop", "is not a PostgresPooler name"),
])
def test_pods_that_are_never_injected_say_why(pod, namespace, why):
    assert why in refusal(pod, namespace)


@pytest.mark.parametrize("name", ["web", " web ", "orders.v2", "a" * 63])
def test_any_name_a_postgrespooler_may_have_and_its_label_may_carry_is_asked_for(name):
    assert refusal({"metadata": {"annotations": {INJECT_ANNOTATION: name}}}, "shop") is None


@pytest.mark.parametrize("name", ["a" * 64, "web.", ".web", "web..v2", "web_db", "Web"])
def test_a_name_no_postgrespooler_could_have_is_refused_with_what_a_name_is(name):
    why = refusal({"metadata": {"annotations": {INJECT_ANNOTATION: name}}}, "shop")
    assert why.endswith("is not a PostgresPooler name (lowercase letters, digits, '-' and '.', at most 63 characters)")


def test_a_huge_annotation_is_cut_short_in_the_refusal():
    why = refusal({"metadata": {"annotations": {INJECT_ANNOTATION: "x" * 100_000}}}, "shop")
    assert "(100000 characters)" in why and len(why) < 300


def test_an_injected_pod_is_never_injected_twice():
    pod = injected(WEB)
    assert refusal(pod, "shop") == "already injected"
    assert refusal(WEB, "shop") is None and requested(WEB) == "web"


def test_an_unknown_pooler_or_one_in_deployment_mode_is_refused_with_its_reason():
    assert "no PostgresPooler 'db' in namespace shop" in pooler_refusal(None, "db", "shop")
    assert "runs in mode deployment" in pooler_refusal(pooler("deployment"), "web", "shop")
    assert pooler_refusal(pooler(), "web", "shop") is None
