"""The Helm chart (charts/maitred) and the Dockerfile, checked without a cluster and without a Docker engine.

The chart: `helm lint` and `helm template` with default and non-default values, the rendered objects and
fields, and the copies it keeps (CRDs, RBAC rules) against the repository's originals. e2e/test_chart.py
installs it into a real API server.

The Dockerfile: no image is built here. It is parsed and checked statically (pinned base, stages, user,
entrypoint, environment, labels, what it copies), and the build stage's files are copied as its COPY
instructions and .dockerignore say and built with setuptools, to show they are enough for the wheel. What
only a real build and a running container show (the wheels resolve, nothing writes to the root filesystem)
is left to the kind suite (e2e/kind/run.sh).
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import maitred
from maitred.cli import build_parser
from pooler_operator.inject import INJECT_ANNOTATION, refusal
from pooler_operator.objects import DEFAULT_IMAGE_REPOSITORY
from pooler_operator.render import render_documents
from pooler_operator.webhook_config import service_client_config, webhook_configuration
from tests.support import missing

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "maitred"
BUILD_SCRIPT = ROOT / "e2e" / "build-binaries.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# `helm template` checks the chart's kubeVersion against this: the version the e2e control plane runs.
KUBE_VERSION = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (ROOT / "e2e" / "k8s" / "go.mod").read_text(),
                         re.M).group(1)
BUILD_TIMEOUT = 3600


def _helm_cached() -> bool:
    out = subprocess.run([str(BUILD_SCRIPT), "--check", "--print-dir"], capture_output=True, text=True)
    return out.returncode == 0


# A cold cache means building helm (and the control plane) first: allow for it in the first test's setup.
pytestmark = [] if _helm_cached() else [pytest.mark.timeout(BUILD_TIMEOUT + 300)]


# -- helm ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> "Helm":
    """helm from e2e/build-binaries.sh (built once, then cached); missing: skip, or fail under CI=true."""
    try:
        out = subprocess.run([str(BUILD_SCRIPT), "--print-dir"], stdout=subprocess.PIPE, text=True,
                             timeout=BUILD_TIMEOUT)
        lines = out.stdout.strip().splitlines()
        binary = Path(lines[-1]) / "helm" if out.returncode == 0 and lines else None
    except subprocess.TimeoutExpired:
        binary = None
    if binary is None or not os.access(binary, os.X_OK):
        reason = f"no helm binary: `{BUILD_SCRIPT} --print-dir` could not provide one (it needs Go to build)"
        missing(reason)
    return Helm(binary, tmp_path_factory.mktemp("helm"))


@dataclass
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str, values: dict[str, Any] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        """helm ARGS (plus `--values -` with `values`), its config and cache kept out of $HOME."""
        env = {**os.environ, **{f"HELM_{kind}_HOME": str(self.home / kind.lower())
                                for kind in ("CONFIG", "CACHE", "DATA")}}
        env.pop("KUBECONFIG", None)
        argv = [str(self.binary), *args] + (["--values", "-"] if values is not None else [])
        out = subprocess.run(argv, input=yaml.safe_dump(values) if values is not None else None,
                             capture_output=True, text=True, env=env, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
        return out

    def template(self, values: dict[str, Any] | None = None, *, release: str = "maitred",
                 namespace: str = "maitred-system", crds: bool = False) -> list[dict[str, Any]]:
        out = self.run("template", release, str(CHART), "--namespace", namespace, "--kube-version",
                       KUBE_VERSION, *(["--include-crds"] if crds else []), values=values)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", doc["metadata"]["name"]), doc
        return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
        ) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
             and namespace in (None, d["metadata"].get("namespace"))]
    assert len(found) == 1, f"expected one {kind} {name or ''} {namespace or ''}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def operator_args(c: dict[str, Any]):
    """The container's command line as `maitred` itself parses it: a flag it does not know fails here."""
    assert c["command"] == ["maitred"]
    return build_parser().parse_args(c["args"])


def rbac_yaml_rules() -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "operator" / "rbac.yaml").read_text()))
    return one(docs, "ClusterRole")["rules"]


NON_DEFAULT = {
    "image": {"repository": "maitred", "tag": "e2e", "pullPolicy": "Never"},
    "imagePullSecrets": [{"name": "regcred"}],
    "poolerImage": "registry.example/maitred-pooler:7",
    "replicas": 3,
    "peering": {"name": "shop-operators"},
    "watchNamespaces": ["shop", "billing"],
    "logFormat": "json",
    "verbose": True,
    "livenessPort": 9090,
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "extraArgs": ["--priority=5"],
    "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
            "matchLabels": {"app.kubernetes.io/component": "operator"}}}}]}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "system-cluster-critical",
    "podLabels": {"team": "data"},
    "podAnnotations": {"example.com/scrape": "false"},
    "serviceAccount": {"create": True, "name": "pooler-operator", "annotations": {"example.com/role": "ops"}},
}


# -- lint and defaults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, NON_DEFAULT, {"replicas": 2}, {"rbac": {"create": False},
                                    "serviceAccount": {"create": False, "name": "mine"}},
                                    {"webhook": {"certificates": "cert-manager"}, "prometheusRule": {"enabled": True},
                                     "podMonitor": {"enabled": True}}],
                         ids=["default", "non-default", "peering", "bring-your-own-account",
                              "cert-manager-and-monitoring"])
def test_chart_lints_strictly(helm, values):
    helm.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), values=values)


def test_default_values_render_the_operator_its_account_cluster_wide_rbac_and_the_dashboard(helm):
    docs = helm.template()
    assert kinds(docs) == [("ClusterRole", "maitred-operator", None),
                           ("ClusterRoleBinding", "maitred-operator", None),
                           ("ConfigMap", "maitred-dashboard", "maitred-system"),
                           ("Deployment", "maitred-operator", "maitred-system"),
                           ("MutatingWebhookConfiguration", "maitred-sidecar-injector", None),
                           ("Service", "maitred-webhook", "maitred-system"),
                           ("ServiceAccount", "maitred-operator", "maitred-system")]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "maitred-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "maitred-operator",
                                    "namespace": "maitred-system"}]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "maitred-operator"
    assert pod.get("automountServiceAccountToken", True), "the operator needs its token"


def test_default_deployment_runs_the_app_version_image_standalone_on_every_namespace(helm):
    docs = helm.template()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two standalone operators would both act"
    c = container(docs)
    assert c["image"] == f"{DEFAULT_IMAGE_REPOSITORY}:{VERSION}"
    assert c["imagePullPolicy"] == "IfNotPresent"
    args = operator_args(c)
    assert args.all_namespaces and not args.namespace
    assert args.standalone and args.peering is None
    assert not args.verbose
    assert env_of(c) == {"MAITRED_POOLER_IMAGE": c["image"], "MAITRED_LOG_FORMAT": "full"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/component"] == "operator", "must not select the pooler pods"


def test_probes_call_the_liveness_endpoint_the_operator_is_started_with(helm):
    for values in (None, NON_DEFAULT):
        c = container(helm.template(values))
        url = urlsplit(operator_args(c).liveness)
        (port,) = [p for p in c["ports"] if p["containerPort"] == url.port]
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": url.path, "port": port["name"]}, probe
        assert url.hostname == "0.0.0.0", "the kubelet probes the pod IP"


def test_operator_pod_is_locked_down_as_the_image_user(helm):
    docs = helm.template()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    user, group = dockerfile_user()
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": group,
                                      "fsGroup": group, "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"] == {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False, "privileged": False,
                                    "capabilities": {"drop": ["ALL"]}}
    # The one writable path, as in the pooler pods: an in-memory /tmp.
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]


# -- non-default values ---------------------------------------------------------------------------------------


def test_non_default_values_reach_the_deployment(helm):
    docs = helm.template(NON_DEFAULT, release="ops", namespace="ops-system")
    deployment = one(docs, "Deployment", "ops-maitred-operator", "ops-system")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "data"
    assert template["metadata"]["annotations"] == NON_DEFAULT["podAnnotations"]
    pod = template["spec"]
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints",
                "priorityClassName"):
        assert pod[key] == NON_DEFAULT[key], key
    assert pod["serviceAccountName"] == "pooler-operator"
    c = container(docs)
    assert c["image"] == "maitred:e2e" and c["imagePullPolicy"] == "Never"
    assert c["resources"] == NON_DEFAULT["resources"]
    assert env_of(c) == {"MAITRED_POOLER_IMAGE": "registry.example/maitred-pooler:7",
                         "MAITRED_LOG_FORMAT": "json", "HTTPS_PROXY": "http://proxy:3128"}
    args = operator_args(c)
    assert args.namespace == ["shop", "billing"] and not args.all_namespaces
    assert args.peering == "shop-operators" and not args.standalone
    assert args.verbose and args.priority == 5
    assert urlsplit(args.liveness).port == 9090
    account = one(docs, "ServiceAccount", "pooler-operator", "ops-system")
    assert account["metadata"]["annotations"] == {"example.com/role": "ops"}


def test_pooler_image_defaults_to_the_operator_image(helm):
    c = container(helm.template({"image": {"repository": "maitred", "tag": "e2e", "pullPolicy": "Never"}}))
    assert env_of(c)["MAITRED_POOLER_IMAGE"] == "maitred:e2e" == c["image"]


def test_several_replicas_peer_through_one_cluster_kopf_peering(helm):
    docs = helm.template({"replicas": 2})
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "maitred"
    args = operator_args(container(docs))
    assert args.peering == "maitred" and not args.standalone and args.all_namespaces
    assert not [d for d in docs if d["kind"] == "KopfPeering"]


def test_one_replica_makes_no_peering_object(helm):
    assert not [d for d in helm.template() if "KopfPeering" in d["kind"]]


def test_watched_namespaces_get_a_role_binding_and_a_peering_each(helm):
    docs = helm.template(NON_DEFAULT, release="ops", namespace="ops-system")
    subject = [{"kind": "ServiceAccount", "name": "pooler-operator", "namespace": "ops-system"}]
    role = one(docs, "ClusterRole", "ops-maitred-operator")
    assert role["rules"] == rbac_yaml_rules()
    for namespace in ("shop", "billing"):
        binding = one(docs, "RoleBinding", "ops-maitred-operator", namespace)
        assert binding["roleRef"]["kind"] == "ClusterRole"
        assert binding["roleRef"]["name"] == "ops-maitred-operator"
        assert binding["subjects"] == subject
        assert one(docs, "KopfPeering", "shop-operators", namespace)["apiVersion"] == "kopf.dev/v1"
    assert not [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    # Cluster-wide it may only read namespaces and CRDs: the same rules of rbac.yaml, narrowed to those.
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == "ops-maitred-operator-cluster"
    assert cluster_binding["subjects"] == subject
    narrowed = [{**r, "resources": [x for x in r["resources"] if x in ("namespaces", "customresourcedefinitions",
                                                                       "mutatingwebhookconfigurations")]}
                for r in rbac_yaml_rules()]
    assert one(docs, "ClusterRole", "ops-maitred-operator-cluster")["rules"] == [r for r in narrowed
                                                                                 if r["resources"]]


def test_rbac_and_account_can_be_left_to_the_installer(helm):
    docs = helm.template({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"},
                          "dashboard": {"enabled": False}})
    assert [k for k in kinds(docs) if k[0] not in WEBHOOK_KINDS] == [("Deployment", "maitred-operator",
                                                                      "maitred-system")]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_existing_account_must_be_named(helm):
    out = helm.run("template", "maitred", str(CHART), "--kube-version", KUBE_VERSION,
                   values={"serviceAccount": {"create": False}}, check=False)
    assert out.returncode != 0 and "serviceAccount.name is required" in out.stderr


@pytest.mark.parametrize("values, complaint", [
    ({"replicas": 0}, "replicas"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"image": {"repository": "maitred", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"replica": 2}, "replica"),
    ({"webhook": {"certificates": "vault"}}, "certificates"),
], ids=["no-replicas", "log-format", "pull-policy", "namespace-name", "misspelt-key", "webhook-certificates"])
def test_schema_refuses_bad_values(helm, values, complaint):
    out = helm.run("template", "maitred", str(CHART), "--kube-version", KUBE_VERSION, values=values, check=False)
    assert out.returncode != 0 and complaint in out.stderr, out.stderr


# -- the sidecar injection webhook ---------------------------------------------------------------------------


WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "Service", "Role", "RoleBinding", "Issuer", "Certificate")


def test_the_webhook_configuration_is_the_one_the_operator_makes_calling_the_service(helm):
    docs = helm.template()
    chart = one(docs, "MutatingWebhookConfiguration")
    made = webhook_configuration(service_client_config("maitred-system", "maitred-webhook", 443))
    assert chart["metadata"]["name"] == made["metadata"]["name"]
    assert chart["webhooks"] == made["webhooks"]
    assert "annotations" not in chart["metadata"], "operator certificates: the operator sets the caBundle"
    service = one(docs, "Service", "maitred-webhook")
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    c = container(docs)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    args = operator_args(c)
    assert (args.webhook_port, args.webhook_service, args.webhook_cert_dir) == (9443, "maitred-webhook", None)


def test_the_webhook_never_sends_the_operators_own_pods(helm):
    docs = helm.template()
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    (expression,) = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["objectSelector"]["matchExpressions"]
    assert expression["operator"] == "NotIn" and labels[expression["key"]] in expression["values"]
    assert refusal({"metadata": {"labels": labels, "annotations": {INJECT_ANNOTATION: "web"}}}, "shop") == \
        "the operator's own pods are never injected"


def test_cert_manager_makes_the_certificate_the_operator_mounts_and_injects_the_ca(helm):
    docs = helm.template({"webhook": {"certificates": "cert-manager"}})
    certificate = one(docs, "Certificate", "maitred-webhook")
    assert certificate["spec"]["issuerRef"] == {"kind": "Issuer", "name": "maitred-webhook"}
    # The serving certificate is signed by a CA of the chart's own, so that its renewal leaves the caBundle as
    # it is (a self-signed serving certificate would be its own caBundle, changed at every renewal).
    ca_secret = one(docs, "Issuer", "maitred-webhook")["spec"]["ca"]["secretName"]
    (ca,) = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == ca_secret]
    assert ca["spec"]["isCA"] is True
    assert one(docs, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    assert parse_duration(ca["spec"]["duration"]) > parse_duration(certificate["spec"]["duration"])
    assert "maitred-webhook.maitred-system.svc" in certificate["spec"]["dnsNames"]
    annotations = one(docs, "MutatingWebhookConfiguration")["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": "maitred-system/maitred-webhook"}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == "webhook-tls"]
    assert operator_args(container(docs)).webhook_cert_dir == mount["mountPath"]


def parse_duration(text: str) -> int:
    """Hours of a cert-manager duration written in hours ("8760h")."""
    assert text.endswith("h"), text
    return int(text[:-1])


def test_a_namespaced_operator_may_keep_its_webhook_secret_and_the_webhook_can_be_left_out(helm):
    docs = helm.template({"watchNamespaces": ["shop"]})
    role = one(docs, "Role", "maitred-webhook", "maitred-system")
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["maitred-webhook-tls"],
            "verbs": ["get", "update"]} in role["rules"]
    assert one(docs, "RoleBinding", "maitred-webhook", "maitred-system")["roleRef"]["name"] == "maitred-webhook"
    off = helm.template({"webhook": {"enabled": False}})
    assert not [d for d in off if d["kind"] in WEBHOOK_KINDS]
    assert operator_args(container(off)).webhook_port is None


def test_notes_say_how_to_opt_a_namespace_in():
    """NOTES.txt renders only at install (e2e/test_chart.py installs the chart): its text is checked here."""
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    webhook = notes[notes.index("{{- if .Values.webhook.enabled }}"):]
    assert "kubectl label namespace shop maitred.dev/injection=enabled" in webhook[:webhook.index("{{- end }}")]
    assert f"{INJECT_ANNOTATION}: <PostgresPooler name>" in webhook


# -- the copies the chart keeps -----------------------------------------------------------------------------


def test_cluster_role_rules_are_those_of_operator_rbac_yaml(helm):
    assert (CHART / "files" / "rbac.yaml").read_bytes() == (ROOT / "operator" / "rbac.yaml").read_bytes(), (
        "charts/maitred/files/rbac.yaml is stale: cp operator/rbac.yaml charts/maitred/files/rbac.yaml")
    assert one(helm.template(), "ClusterRole")["rules"] == rbac_yaml_rules()


def test_chart_crds_are_the_repository_crds(helm):
    ours = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ours
    for name in ours:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/maitred/crds/{name} is stale: cp crds/*.yaml charts/maitred/crds/")
    expected = [d for name in ours for d in yaml.safe_load_all((ROOT / "crds" / name).read_text()) if d]
    rendered = [d for d in helm.template(crds=True) if d["kind"] == "CustomResourceDefinition"]
    assert sorted(rendered, key=lambda d: d["metadata"]["name"]) == sorted(
        expected, key=lambda d: d["metadata"]["name"])


def test_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION == maitred.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == DEFAULT_IMAGE_REPOSITORY
    assert values["image"]["tag"] == "", "an empty tag follows appVersion"


def test_every_value_is_documented():
    """Each chart option has a comment right above it in values.yaml, and a mention in the chart's README.
    The contents of Kubernetes objects passed through as they are (resources, securityContext, …) are not
    options of the chart, so only the value itself needs one."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    passthrough = {"resources", "podSecurityContext", "securityContext", "nodeSelector", "affinity",
                   "podLabels", "podAnnotations"}
    undocumented = []

    def walk(node: yaml.MappingNode, path: str) -> bool:
        """Record the undocumented keys under node; True when there are none."""
        complete = True
        for key, value in node.value:
            name = f"{path}{key.value}"
            commented = key.start_mark.line > 0 and lines[key.start_mark.line - 1].lstrip().startswith("#")
            if isinstance(value, yaml.MappingNode) and value.value and key.value not in passthrough:
                members = walk(value, f"{name}.")
                commented = commented or members    # a group is documented by its members
            if not commented:
                undocumented.append(name)
                complete = False
        return complete

    walk(yaml.compose(text), "")
    assert undocumented == []
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load(text)
    assert [key for key in values if f"`{key}" not in readme] == []


# -- the Dockerfile ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def tokens(self) -> list[str]:
        """Flags and arguments: the JSON (exec) form as it is, the shell form split like a shell."""
        if self.value.startswith("["):
            return json.loads(self.value)
        return shlex.split(self.value)

    def flags(self) -> dict[str, str]:
        return dict(t[2:].partition("=")[::2] for t in self.tokens() if t.startswith("--"))

    def arguments(self) -> list[str]:
        return [t for t in self.tokens() if not t.startswith("--")]

    def pairs(self) -> dict[str, str]:
        """ENV and LABEL: KEY=VALUE pairs (or the legacy `KEY VALUE`)."""
        tokens = self.tokens()
        if tokens and "=" not in tokens[0]:
            return {tokens[0]: " ".join(tokens[1:])}
        return dict(t.partition("=")[::2] for t in tokens)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        return {k: v for i in self.all("ENV") for k, v in i.pairs().items()}


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages. Handles comments, parser directives, line continuations and
    ${VAR} in FROM; no heredocs (the test fails on one rather than misread it)."""
    instructions, buffer, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not buffer and not stripped):
            continue
        buffer, start = buffer + " " + stripped, start or number
        if buffer.endswith("\\"):
            buffer = buffer[:-1]
            continue
        keyword, _, value = buffer.strip().partition(" ")
        assert "<<" not in value, f"line {start}: heredocs are not understood by this check"
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        buffer, start = "", 0
    assert not buffer, "the Dockerfile ends inside a line continuation"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            image, *rest = instruction.arguments()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)
            stages.append(Stage(image, rest[1] if len(rest) == 2 and rest[0].upper() == "AS" else None))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG may precede FROM"
            name, _, default = instruction.value.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return args, stages


DOCKERFILE_ARGS, STAGES = parse_dockerfile((ROOT / "Dockerfile").read_text())
BUILD, RUNTIME = STAGES[0], STAGES[-1]


def dockerfile_user() -> tuple[int, int]:
    user = RUNTIME.all("USER")[-1].value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: numeric uid:gid, so runAsNonRoot can verify it"
    return int(uid), int(gid)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it: the last matching pattern wins, `!` re-includes, and a pattern
    that matches a directory matches everything in it."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, line = line.startswith("!"), line.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?"
                        else part if part.startswith("[") else re.escape(part)
                        for part in re.split(r"(\*\*|\*|\?|\[[^\]]*\])", line))
        patterns.append((negate, re.compile(regex.replace(".*/", "(.*/)?"))))
    return patterns


def dockerignored(path: str) -> bool:
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negate, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def workdirs(stage: Stage) -> list[tuple[Instruction, str]]:
    """Each instruction of a stage with the WORKDIR it runs in."""
    out, workdir = [], "/"
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = os.path.join(workdir, instruction.value)
        out.append((instruction, workdir))
    return out


def context_copies() -> list[tuple[list[str], str, str]]:
    """The build stage's COPY instructions from the build context: (sources, destination, WORKDIR)."""
    copies = []
    for instruction, workdir in workdirs(BUILD):
        if instruction.keyword in ("COPY", "ADD") and "from" not in instruction.flags():
            *sources, dest = instruction.arguments()
            copies.append((sources, dest, workdir))
    return copies


def wheel_build() -> tuple[Instruction, str]:
    """The build stage's `pip wheel` RUN and its WORKDIR."""
    (found,) = [(i, w) for i, w in workdirs(BUILD) if i.keyword == "RUN" and "pip wheel" in i.value]
    return found


def test_base_images_are_pinned_to_a_python_3_11_slim_patch_release():
    assert len(STAGES) >= 2, "multi-stage: a build stage and a runtime stage"
    names = {s.name for s in STAGES if s.name}
    for stage in STAGES:
        if stage.base in names:
            continue
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    assert BUILD.base == RUNTIME.base, "the wheels are built for the runtime's own Python"


def test_build_stage_builds_the_wheels_from_pyproject():
    copied = [s for sources, _, _ in context_copies() for s in sources]
    assert "pyproject.toml" in copied
    readme = PYPROJECT["project"].get("readme")
    assert readme is None or readme in copied, "setuptools reads the readme pyproject.toml names"
    build, workdir = wheel_build()
    assert build.tokens()[-1] == ".", "the wheel of the project in WORKDIR, from its pyproject.toml"
    assert "--wheel-dir" in build.value
    assert ("pyproject.toml", workdir) in [(s, w) for sources, dest, w in context_copies() for s in sources
                                           if dest in ("./", ".")], "pyproject.toml copied into that WORKDIR"


def test_runtime_stage_installs_only_the_built_wheels():
    assert not [i for i in RUNTIME.all("COPY") + RUNTIME.all("ADD") if "from" not in i.flags()], (
        "the runtime stage takes nothing from the build context")
    (install,) = [i for i in RUNTIME.all("RUN") if "pip install" in i.value]
    tokens = install.tokens()
    for flag in ("--no-index", "--only-binary=:all:"):
        assert flag in tokens, f"{flag}: no download and no build in the runtime stage"
    mount = install.flags()["mount"]
    assert f"from={BUILD.name}" in mount and "target=/wheels" in mount and "--find-links=/wheels" in tokens
    assert "uninstall" in install.value and "setuptools" in install.value, "no build tools left behind"
    for run in RUNTIME.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|gcc|build-essential)\b", run.value), run.value


def test_runtime_user_is_numeric_non_root_and_the_one_pods_run_as():
    uid, gid = dockerfile_user()
    assert uid != 0 and gid != 0
    assert RUNTIME.instructions.index(RUNTIME.all("USER")[-1]) > max(
        RUNTIME.instructions.index(i) for i in RUNTIME.all("RUN")), "USER after the last RUN"
    (useradd,) = [i for i in RUNTIME.all("RUN") if "useradd" in i.value]
    assert f"--uid {uid}" in useradd.value and f"--gid {gid}" in useradd.value
    # The pooler pods the operator renders run as this user...
    docs = [d for d in yaml.safe_load_all((ROOT / "tests" / "golden" / "minimal.in.yaml").read_text()) if d]
    manifests, _ = render_documents(docs, image="maitred:test", warn=io.StringIO())
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    # ...and so does the chart's operator pod.
    chart_pod = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (chart_pod["runAsUser"], chart_pod["runAsGroup"]) == (uid, gid)


def test_entrypoint_is_the_maitred_command():
    (entrypoint,) = RUNTIME.all("ENTRYPOINT")
    assert entrypoint.value.startswith("["), "exec form, so signals reach maitred itself"
    assert json.loads(entrypoint.value) == ["maitred"]
    assert "maitred" in PYPROJECT["project"]["scripts"]


def test_environment_suits_a_read_only_root_filesystem():
    """What can be seen without running it: no bytecode written at run time, no pip cache, HOME and the
    working directory on /tmp (the pods' one writable mount), no VOLUME. A running pod is the kind suite's."""
    for stage in STAGES:
        env = stage.env()
        assert env.get("PYTHONDONTWRITEBYTECODE") == "1", stage.name
        assert env.get("PIP_NO_CACHE_DIR") in ("1", "true", "on"), stage.name
    assert RUNTIME.all("WORKDIR")[-1].value == "/tmp"
    (useradd,) = [i for i in RUNTIME.all("RUN") if "useradd" in i.value]
    assert "--home-dir /tmp" in useradd.value and "--no-create-home" in useradd.value
    assert not RUNTIME.all("VOLUME")


def test_image_carries_oci_labels_with_the_package_version():
    labels = {k: v for i in RUNTIME.all("LABEL") for k, v in i.pairs().items()}
    (version_arg,) = [i for i in RUNTIME.all("ARG") if i.value.startswith("VERSION=")]
    assert version_arg.value == f"VERSION={VERSION}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.title"] == "maitred"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert labels["org.opencontainers.image.description"] == PYPROJECT["project"]["description"]


def test_every_copied_path_exists_and_is_in_the_build_context():
    for sources, _, _ in context_copies():
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    for outside in (".git", "tests", "e2e", "bench", "charts", "maitred.egg-info", "operator/rbac.yaml",
                    "pooler/__pycache__/x.pyc"):
        assert dockerignored(outside), f"{outside} should stay out of the build context"


def test_build_stage_files_are_enough_to_build_every_module(tmp_path):
    """The build stage's files, copied as its COPY instructions and .dockerignore say, built with setuptools
    (build_py + egg_info: what the wheel holds, without needing the `wheel` package here)."""
    context = tmp_path / "context"
    for sources, dest, workdir in context_copies():
        target = context / os.path.join(workdir, dest).lstrip("/")
        for source in sources:
            src = ROOT / source
            files = [src] if src.is_file() else [p for p in sorted(src.rglob("*")) if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if dockerignored(rel):
                    continue
                out = target / f.name if src.is_file() else target / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
    project = context / wheel_build()[1].lstrip("/")
    lib, egg = tmp_path / "lib", tmp_path / "egg"
    egg.mkdir()
    out = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "egg_info",
                          "--egg-base", str(egg), "build_py", "--build-lib", str(lib)],
                         cwd=project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    package_dirs = {**{p: p for p in PYPROJECT["tool"]["setuptools"]["packages"]},
                    **PYPROJECT["tool"]["setuptools"].get("package-dir", {})}
    expected = set()
    for package, directory in package_dirs.items():
        for f in (ROOT / directory).rglob("*"):
            if f.suffix in (".py", ".j2") and "__pycache__" not in f.parts:
                expected.add(f"{package}/{f.relative_to(ROOT / directory).as_posix()}")
    assert expected - built == set(), "modules or templates the image would lack"
    (info,) = egg.glob("*.egg-info")
    assert "maitred = maitred.cli:main" in (info / "entry_points.txt").read_text()
    assert f"\nVersion: {VERSION}\n" in (info / "PKG-INFO").read_text()
