"""The chart's alerts and Grafana dashboard against the metrics maitred really serves.

The PrometheusRule is rendered with helm, its groups checked by `promtool check rules` and driven by the
promtool unit tests in tests/promtool/; every metric an alert or a dashboard panel queries is looked up in a
real pooler's /metrics (a pooler started in front of PostgreSQL and scraped) or the operator's.
"""
from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from maitred.local.postgres import free_port
from pooler_operator.metrics import OperatorMetrics, serve
from tests.support import require_binary
# helm is a fixture; pytestmark gives a cold cache the time to build it, as in test_chart.py.
from tests.test_chart import CHART, KUBE_VERSION, ROOT, helm, one, pytestmark  # noqa: F401

PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "alerts.test.yaml"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
DASHBOARD = CHART / "files" / "dashboard.json"

# Words of PromQL that are not metric names.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside label matchers, ranges, grouping
    clauses, strings and numbers, that are neither functions nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b\d[\w.]*", " ", expr)      # numbers and durations (offset 5m)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        following = expr[match.end():].lstrip()
        if match.group() not in PROMQL_WORDS and not following.startswith("("):
            names.add(match.group())
    return names


def sample_names(text: str) -> set[str]:
    """Every series name in a /metrics page (histograms as their _bucket, _count and _sum)."""
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def rendered_rules(helm, values: dict | None = None) -> dict:
    docs = helm.template({"prometheusRule": {"enabled": True}, **(values or {})})
    return {"groups": one(docs, "PrometheusRule")["spec"]["groups"]}


def alerts(helm) -> list[dict]:
    return [rule for group in rendered_rules(helm)["groups"] for rule in group["rules"]]


@pytest.fixture
def served_metrics(pooler_factory) -> set[str]:
    """Series names a real pooler (with a pool in use) and the operator (with a tier it has seen and a
    decision it has counted) serve."""
    port = free_port()
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3,
                            maitred={"http_addr": "127.0.0.1", "http_port": port})
    with psycopg.connect(pooler.dsn()) as conn:
        conn.execute("SELECT 1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            names = sample_names(resp.read().decode())
    operator = OperatorMetrics()
    operator.observe({"metadata": {"namespace": "shop", "name": "orders", "generation": 1},
                      "spec": {}, "status": {"observedGeneration": 1,
                                             "conditions": [{"type": "Ready", "status": "True"}],
                                             "autotune": {"state": "Holding", "poolSize": 8, "budget": 80,
                                                          "share": 72, "server": "7301",
                                                          "missingSignals": ["cpu"]}}})
    operator.decided("shop", "orders", "hold", "signal")
    operator_port = free_port()
    serve(operator, operator_port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{operator_port}/metrics", timeout=5) as resp:
        return names | sample_names(resp.read().decode())


# -- alerts ---------------------------------------------------------------------------------------------------


def test_rendered_rules_pass_promtool_check(helm, tmp_path):
    promtool = require_binary("promtool")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rendered_rules(helm)))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_alerts_fire_and_stay_quiet_as_their_promtool_unit_tests_say(helm, tmp_path):
    promtool = require_binary("promtool")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(helm)))
    tests = tmp_path / PROMTOOL_TESTS.name
    tests.write_text(PROMTOOL_TESTS.read_text())
    out = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", PROMTOOL_TESTS.read_text()))
    assert len(tested) >= 2


def test_every_alert_is_labelled_annotated_and_has_its_runbook_section(helm):
    headings = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
                for line in ALERTS_DOC.read_text().splitlines() if line.startswith("## ")}
    found = alerts(helm)
    assert {a["alert"] for a in found} >= {"MaitredClientsWaiting", "MaitredServerLoginFailures",
                                           "MaitredPoolerNotReady", "MaitredAutotunerHolding",
                                           "MaitredConnectionBudgetNearlyUsed"}
    for alert in found:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page.endswith("/docs/alerts.md") and anchor == alert["alert"].lower()
        assert anchor in headings, f"docs/alerts.md has no section {alert['alert']}"


def test_runbook_links_follow_the_value(helm):
    rules = rendered_rules(helm, {"prometheusRule": {"enabled": True,
                                                     "runbookBaseUrl": "https://wiki.example/maitred"}})
    urls = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"]]
    assert urls and all(u.startswith("https://wiki.example/maitred#") for u in urls)


def test_alerts_query_only_metrics_maitred_serves(helm, served_metrics):
    queried = set().union(*(metric_names(a["expr"]) for a in alerts(helm)))
    assert queried and queried - served_metrics == set()


@pytest.mark.parametrize("values, api, made", [
    (None, False, False), (None, True, True), ({"enabled": True}, False, True), ({"enabled": False}, True, False),
], ids=["no-crd", "crd", "forced", "disabled"])
def test_prometheus_operator_objects_follow_the_cluster_unless_told(helm, values, api, made):
    chart_values = {"prometheusRule": values, "podMonitor": values} if values else {}
    args = ["--api-versions", "monitoring.coreos.com/v1"] if api else []
    out = helm.run("template", "maitred", str(CHART), "--kube-version", KUBE_VERSION, *args,
                   values=chart_values)
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert ("PrometheusRule" in kinds, "PodMonitor" in kinds) == (made, made)


def test_operator_pod_monitor_scrapes_the_metrics_port_the_operator_serves(helm):
    docs = helm.template({"podMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    deployment = one(docs, "Deployment")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = [p for p in operator["ports"] if p["name"] == endpoint["port"]]
    assert f"--metrics-port={port['containerPort']}" in operator["args"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert endpoint["honorLabels"] is True, "the metrics' namespace is the PostgresPooler's, not the operator's"


# -- the dashboard ----------------------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


def test_dashboard_queries_only_metrics_maitred_serves(served_metrics):
    queried = set().union(*(metric_names(re.sub(r"label_values\((.*), *\w+\)$", r"\1", e))
                            for e in dashboard_exprs()))
    assert queried - served_metrics == set()
    for wanted in ("maitred_pool_clients", "maitred_pool_servers", "maitred_pool_maxwait_seconds",
                   "maitred_autotune_budget_connections", "maitred_autotune_pool_size",
                   "maitred_autotune_decisions_total"):
        assert wanted in queried, f"no panel shows {wanted}"


def test_dashboard_ships_as_a_configmap_grafana_sidecar_loads(helm):
    configmap = one(helm.template(), "ConfigMap", "maitred-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["maitred.json"]) == json.loads(DASHBOARD.read_text())
    assert not [d for d in helm.template({"dashboard": {"enabled": False}}) if d["kind"] == "ConfigMap"]


def test_metric_names_are_read_from_promql():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y(z)"}[5m]))) / '
                        'on (ns) group_left b_total offset 5m') == {"a_bucket", "b_total"}
