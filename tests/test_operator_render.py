"""Rendering: golden manifests, configs the pooler itself loads, and which changes restart the pods.

Regenerate the golden files after an intended change: MAITRED_UPDATE_GOLDEN=1 pytest tests/test_operator_render.py
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from pooler.config import load_config
from pooler.userlist import load_userlist
from pooler_operator.api import parse_pooler
from pooler_operator.inject import sidecar_patch
from pooler_operator.objects import (RESTART_HASH_ANNOTATION, MissingSecret, render, selector_labels, to_yaml)
from pooler_operator.render import render_documents, run

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.name.removesuffix(".in.yaml") for p in GOLDEN.glob("*.in.yaml"))
USERS = {"app-users": {"app": "app-secret"}}


def load(case: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((GOLDEN / f"{case}.in.yaml").read_text()) if d]


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case):
    manifests, problems = render_documents(load(case), image="ghcr.io/maitred/maitred:golden", warn=io.StringIO())
    assert problems == []
    got = to_yaml(manifests)
    expected_file = GOLDEN / f"{case}.out.yaml"
    if os.environ.get("MAITRED_UPDATE_GOLDEN"):
        expected_file.write_text(got)
    assert got == expected_file.read_text(), f"rendering changed: diff against {expected_file}"


def pooler_of(case: str, **spec_changes: Any):
    doc = next(d for d in load(case) if d["kind"] == "PostgresPooler")
    doc = copy.deepcopy(doc)
    doc["metadata"].setdefault("namespace", "default")
    doc["spec"].update(spec_changes)
    return parse_pooler(doc)


def secrets_of(case: str) -> dict[str, dict[str, str]]:
    import base64
    out = {}
    for d in load(case):
        if d["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
            data.update(d.get("stringData") or {})
            out[d["metadata"]["name"]] = data
    return out


def rendered(case: str, **spec_changes: Any):
    return render(pooler_of(case, **spec_changes), secrets_of(case), image="img")


def manifest(r, kind: str) -> dict[str, Any]:
    found = r.by_kind(kind)
    assert found is not None, f"no {kind}"
    return found


@pytest.mark.parametrize("case", CASES)
def test_rendered_config_and_auth_file_load_in_the_pooler(case, tmp_path):
    r = rendered(case)
    ini = tmp_path / "pooler.ini"
    ini.write_text(r.ini)
    config = load_config(ini)
    assert config.warnings == []
    assert config.get("pool_mode") == pooler_of(case).spec.pool_mode
    assert config.get("config_watch") is True and config.get("http_addr") == "0.0.0.0"
    userlist = tmp_path / "userlist.txt"
    secret = manifest(r, "Secret")
    import base64
    userlist.write_text(base64.b64decode(secret["data"]["userlist.txt"]).decode())
    assert load_userlist(userlist)


def test_userlist_quotes_passwords_and_adds_the_auth_user(tmp_path):
    import base64
    r = rendered("full")
    path = tmp_path / "userlist.txt"
    path.write_text(base64.b64decode(manifest(r, "Secret")["data"]["userlist.txt"]).decode())
    users = load_userlist(path)
    assert users["bob"] == 'pass "with" quotes'
    assert users["pgbouncer_auth"] == "auth-secret"
    assert users["alice"].startswith("SCRAM-SHA-256$4096:")


def test_deployment_is_locked_down_and_probed():
    pod = manifest(rendered("minimal"), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                             "allowPrivilegeEscalation": False, "privileged": False,
                                             "capabilities": {"drop": ["ALL"]}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"postgres": 5432, "http": 9127}
    assert pod["automountServiceAccountToken"] is False


def test_config_auth_file_and_certificates_share_one_atomic_volume():
    pod = manifest(rendered("full"), "Deployment")["spec"]["template"]["spec"]
    sources = next(v for v in pod["volumes"] if v["name"] == "config")["projected"]["sources"]
    names = [next(iter(s.values()))["name"] for s in sources]
    assert names == ["shop-config", "shop-auth", "shop-pooler-tls", "shop-db-ca"]


def test_reloadable_change_touches_the_configmap_but_not_the_pod_template():
    before, after = rendered("minimal"), rendered("minimal", pool={"defaultPoolSize": 50, "queryTimeout": 30})
    assert before.ini != after.ini
    assert "default_pool_size = 50" in after.ini
    assert manifest(before, "Deployment") == manifest(after, "Deployment")
    assert before.restart_hash == after.restart_hash


@pytest.mark.parametrize("change", [
    {"pooler": {"workers": 4}},
    {"pooler": {"parameters": {"pkt_buf": 8192}}},
    {"pooler": {"parameters": {"so_reuseport": "1"}}},
], ids=["workers", "pkt_buf", "so_reuseport"])
def test_change_that_needs_a_restart_changes_the_pod_template(change):
    before, after = rendered("minimal"), rendered("minimal", **change)
    old = manifest(before, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    new = manifest(after, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert old[RESTART_HASH_ANNOTATION] != new[RESTART_HASH_ANNOTATION]


def test_users_secret_change_changes_the_config_so_the_pooler_reloads_the_auth_file():
    pooler = pooler_of("minimal")
    one = render(pooler, {"app-users": {"app": "one"}}, image="img", versions={"app-users": "41"})
    two = render(pooler, {"app-users": {"app": "two"}}, image="img", versions={"app-users": "42"})
    assert one.config_hash != two.config_hash
    assert one.restart_hash == two.restart_hash
    assert manifest(one, "Deployment") == manifest(two, "Deployment")


def test_config_follows_secret_versions_not_their_contents():
    """A ConfigMap is readable by more people than a Secret: nothing in it may depend on a password."""
    pooler = pooler_of("minimal")
    one = render(pooler, {"app-users": {"app": "one"}}, image="img", versions={"app-users": "7"})
    two = render(pooler, {"app-users": {"app": "two"}}, image="img", versions={"app-users": "7"})
    assert one.ini == two.ini
    assert manifest(one, "Secret") != manifest(two, "Secret")


def test_pdb_only_with_more_than_one_replica():
    assert rendered("minimal").by_kind("PodDisruptionBudget") is None
    pdb = manifest(rendered("minimal", replicas=2), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == selector_labels("app-pooler")
    assert rendered("minimal", replicas=2, podDisruptionBudget={"enabled": False}).by_kind(
        "PodDisruptionBudget") is None


def test_sidecar_mode_renders_only_config_and_auth_file():
    r = rendered("sidecar")
    assert [m["kind"] for m in r.manifests] == ["Secret", "ConfigMap"]
    assert r.budget is None


# An app pod as it reaches the webhook: no labels of maitred's, one container.
POD = {"metadata": {"name": "app-1", "labels": {"app": "shop"}}, "spec": {"containers": [{"name": "app", "image": "app"}]}}


def test_a_monitored_sidecar_tier_gets_a_pod_monitor_of_the_pods_the_webhook_injects():
    """Its alerts and dashboard read the sidecars' /metrics: the monitor selects the label and port the patch adds."""
    r = rendered("sidecar", monitoring={"enabled": True})
    monitor = manifest(r, "PodMonitor")
    pooler = pooler_of("sidecar")
    pod = jsonpatch.apply_patch(POD, sidecar_patch(POD, pooler, "img"))
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (sidecar,) = pod["spec"]["initContainers"]
    assert endpoint["port"] in [p["name"] for p in sidecar["ports"]] and endpoint["path"] == "/metrics"
    assert sidecar["readinessProbe"]["httpGet"]["port"] == endpoint["port"]     # the port /metrics is served on


def test_a_sidecar_tier_has_no_service_for_a_service_monitor_and_says_so():
    r = rendered("sidecar", monitoring={"enabled": True, "kind": "ServiceMonitor"})
    assert r.by_kind("ServiceMonitor") is None and r.by_kind("PodMonitor") is None
    assert any("kind PodMonitor scrapes the injected pods" in w for w in r.warnings)


def test_a_sidecar_serves_only_the_console_beyond_loopback_and_a_deployment_pod_everything(tmp_path):
    """The autotuner reaches a sidecar's console on the pod IP; the app's pools stay the pod's own."""
    configs = {}
    for case in ("sidecar", "minimal"):
        (tmp_path / f"{case}.ini").write_text(rendered(case).ini)
        configs[case] = load_config(tmp_path / f"{case}.ini")
    assert configs["sidecar"].get("listen_addr") == "*" and configs["sidecar"].get("remote_access") == "console"
    assert configs["minimal"].get("listen_addr") == "*" and configs["minimal"].get("remote_access") == "all"


def test_user_topology_spread_replaces_the_default_instead_of_adding_to_it():
    default = manifest(rendered("minimal"), "Deployment")["spec"]["template"]["spec"]
    assert default["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    full = manifest(rendered("full"), "Deployment")["spec"]["template"]["spec"]
    assert [c["topologyKey"] for c in full["topologySpreadConstraints"]] == ["topology.kubernetes.io/zone"]


def test_owner_references_only_when_the_resource_has_a_uid():
    assert all("ownerReferences" not in m["metadata"] for m in rendered("minimal").manifests)
    for m in rendered("full").manifests:
        (ref,) = m["metadata"]["ownerReferences"]
        assert ref["kind"] == "PostgresPooler" and ref["controller"] is True and ref["name"] == "shop"


def test_budget_is_pool_times_workers_times_replicas():
    assert rendered("minimal").budget == 20
    assert rendered("minimal", replicas=3, pool={"defaultPoolSize": 10, "reservePoolSize": 2}).budget == 36
    assert rendered("full").budget == 25 * 2 * 3  # capped by maxDbConnections


def test_monitor_is_skipped_with_a_warning_when_its_crd_is_missing():
    r = render(pooler_of("full"), secrets_of("full"), image="img", monitoring_available=False)
    assert r.by_kind("ServiceMonitor") is None
    assert any("ServiceMonitor CRD" in w for w in r.warnings)


def test_missing_secrets_are_named():
    with pytest.raises(MissingSecret) as err:
        render(pooler_of("full"), {}, image="img")
    text = str(err.value)
    for name in ("shop-users", "shop-auth-user", "shop-pooler-tls", "shop-db-ca"):
        assert name in text


def test_autotune_credentials_are_checked_but_never_block_the_pooler():
    secrets = {k: v for k, v in secrets_of("full").items() if k != "prometheus-creds"}
    r = render(pooler_of("full"), secrets, image="img")
    assert r.autotune_problems == ["Secret prometheus-creds (spec.autotune.prometheus.credentialsSecret) not found"]
    assert r.by_kind("Deployment") is not None
    r = render(pooler_of("full"), {**secrets, "prometheus-creds": {"user": "x"}}, image="img")
    assert "neither `token` nor `username` and `password`" in r.autotune_problems[0]
    assert render(pooler_of("full"), secrets_of("full"), image="img").autotune_problems == []


def test_image_comes_from_spec_then_argument_then_environment(monkeypatch):
    image = lambda r: manifest(r, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa
    assert image(rendered("full")) == "registry.example/maitred:test"
    assert image(rendered("minimal")) == "img"
    monkeypatch.setenv("MAITRED_POOLER_IMAGE", "mirror.local/maitred:1")
    assert image(render(pooler_of("minimal"), USERS)) == "mirror.local/maitred:1"
    monkeypatch.delenv("MAITRED_POOLER_IMAGE")
    assert image(render(pooler_of("minimal"), USERS)).startswith("ghcr.io/maitred/maitred:")


# -- the command --------------------------------------------------------------------------------------------


def test_render_command_prints_manifests_and_warns_about_unreadable_secrets(tmp_path):
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(next(d for d in load("minimal") if d["kind"] == "PostgresPooler")))
    out, err = io.StringIO(), io.StringIO()
    assert run([str(cr)], namespace="team", out=out, err=err) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(out.getvalue())]
    assert kinds == ["ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment"]
    assert "Secret app-users (spec.auth.usersSecret) not found" in err.getvalue()
    assert all(d["metadata"]["namespace"] == "team" for d in yaml.safe_load_all(out.getvalue()))


def test_render_command_refuses_an_invalid_resource_with_what_to_fix(tmp_path):
    doc = next(d for d in load("minimal") if d["kind"] == "PostgresPooler")
    doc["spec"]["poolMode"] = "batch"
    cr = tmp_path / "cr.yaml"
    cr.write_text(yaml.safe_dump(doc))
    out, err = io.StringIO(), io.StringIO()
    assert run([str(cr)], out=out, err=err) == 1
    assert out.getvalue() == ""
    assert "default/app-pooler: spec.poolMode: Input should be 'session', 'transaction' or 'statement'" \
        in err.getvalue()


def test_render_command_prints_the_crd():
    out = io.StringIO()
    assert run([], crd=True, out=out) == 0
    assert (Path(__file__).resolve().parent.parent / "crds" / "postgrespooler.yaml").read_text() == out.getvalue()
