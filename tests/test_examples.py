"""examples/: the kustomization renders with kubectl's kustomize (from e2e/build-binaries.sh, as helm) into the
CRDs, the operator and a PostgresPooler the operator accepts; install.yaml is the chart's default render; the
Argo CD Application points at the kustomization; sidecar.yaml's app pods are what the webhook injects."""
from __future__ import annotations

import base64
import difflib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

from pooler_operator.admission import review
from pooler_operator.inject import DSN_ENV, INJECT_ANNOTATION, NAMESPACE_LABEL, SIDECAR_NAME
from pooler_operator.render import render_documents
from tests.support import missing
# helm is a fixture; pytestmark gives a cold cache the time to build it (and kubectl), as in test_chart.py.
from tests.test_chart import BUILD_SCRIPT, BUILD_TIMEOUT, KUBE_VERSION, ROOT, helm, pytestmark  # noqa: F401

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """kubectl from e2e/build-binaries.sh; missing: skip, or fail under CI=true."""
    out = subprocess.run([str(BUILD_SCRIPT), "--print-dir"], stdout=subprocess.PIPE, text=True,
                         timeout=BUILD_TIMEOUT)
    lines = out.stdout.strip().splitlines()
    binary = Path(lines[-1]) / "kubectl" if out.returncode == 0 and lines else None
    if binary is None or not os.access(binary, os.X_OK):
        missing(f"no kubectl: `{BUILD_SCRIPT} --print-dir` could not provide one (it needs Go to build)")
    return binary


def kustomized(kubectl: Path) -> list[dict]:
    out = subprocess.run([str(kubectl), "kustomize", str(EXAMPLES)], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "KUBECONFIG"})
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomization_renders_the_crds_the_operator_and_the_example_tier(kubectl):
    docs = kustomized(kubectl)
    found = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("CustomResourceDefinition", "postgrespoolers.maitred.dev"), ("Namespace", "maitred-system"),
            ("Namespace", "shop"), ("Deployment", "maitred-operator"), ("ServiceAccount", "maitred-operator"),
            ("ClusterRole", "maitred-operator"), ("PostgresPooler", "shop-pooler")} <= found
    # The example is one the operator accepts and renders.
    tier = [d for d in docs if d["metadata"].get("namespace") == "shop"]
    manifests, _ = render_documents(tier, image="maitred:test", warn=io.StringIO())
    assert {"Deployment", "Service", "ConfigMap"} <= {m["kind"] for m in manifests}
    (shop,) = [d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == "shop"]
    assert shop["metadata"]["labels"][NAMESPACE_LABEL] == "enabled", "sidecar.yaml's pods could not be injected"


def test_every_listed_resource_is_a_file_here():
    listed = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())["resources"]
    assert listed and all((EXAMPLES / name).is_file() for name in listed)


def test_install_yaml_is_the_charts_default_render(helm):
    ours = [d for d in yaml.safe_load_all((EXAMPLES / "install.yaml").read_text()) if d]
    command = (f"helm template maitred charts/maitred --namespace maitred-system --include-crds "
               f"--kube-version {KUBE_VERSION.lstrip('v')} (below the header of examples/install.yaml)")
    assert ours == helm.template(crds=True), f"examples/install.yaml is stale: {command}"


def test_argocd_application_syncs_the_kustomization_server_side():
    app = yaml.safe_load((EXAMPLES / "argocd-application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (ROOT / source["path"] / "kustomization.yaml").is_file()
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"], "the CRD is too large otherwise"


def test_readme_render_diff_is_what_render_prints(tmp_path):
    """The README's pull-request example: the diff of two `maitred render` outputs, as it shows it."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("```diff\n", 1)[1].split("```", 1)[0].splitlines()
    before = (EXAMPLES / "postgrespooler.yaml").read_text()
    after = before.replace("defaultPoolSize: 20", "defaultPoolSize: 30").replace("queryWaitTimeout: 60",
                                                                                 "queryWaitTimeout: 30")
    assert after != before

    def render(text: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "maitred.cli", "render", "-"], input=text,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    diff = list(difflib.unified_diff(render(before), render(after), lineterm=""))[2:]
    assert diff == shown


def test_the_sidecar_examples_app_pods_are_injected_and_connect_through_the_dsn_they_get():
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "sidecar.yaml").read_text()) if d]
    manifests, problems = render_documents(docs, image="maitred:test", warn=io.StringIO())
    assert problems == [] and "Deployment" not in {m["kind"] for m in manifests}, "sidecar mode runs no Deployment"
    (pooler,) = [d for d in docs if d["kind"] == "PostgresPooler"]
    (app,) = [d for d in docs if d["kind"] == "Deployment"]
    template = app["spec"]["template"]
    assert template["metadata"]["annotations"][INJECT_ANNOTATION] == pooler["metadata"]["name"]
    request = {"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
               "namespace": "shop", "object": template}
    answer = review({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request},
                    lambda namespace, name: pooler if (namespace, name) == ("shop", "shop-sidecar") else None,
                    "maitred:test")
    response = answer.body["response"]
    assert "warnings" not in response, response["warnings"]
    pod = jsonpatch.apply_patch(template, json.loads(base64.b64decode(response["patch"])))
    assert pod["spec"]["initContainers"][0]["name"] == SIDECAR_NAME
    (container,) = pod["spec"]["containers"]
    assert {"name": DSN_ENV, "value": "postgresql://127.0.0.1:5432/shop"} in container["env"]
    assert f"${DSN_ENV}" in " ".join(container["command"])
