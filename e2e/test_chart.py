"""The Helm chart against a real API server.

On the local control plane, `helm install` must get every object of charts/maitred accepted: the CRDs are
established, the Deployment's pods are admitted under the `restricted` Pod Security Standard (they then
stay Pending: there is no scheduler and no kubelet), the RBAC grants the operator's ServiceAccount what it
needs where it needs it, and `helm uninstall` removes everything it installed except the CRDs, which Helm
leaves by design. In the kind suite, where e2e/kind/run.sh installed the chart with the freshly built image,
the operator really runs: as the image's user, on a read-only root filesystem.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from maitred.local.controlplane import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "maitred"
CRDS = ("postgrespoolers.maitred.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def run(cmd: list[str], env: dict[str, str], *, input: str | None = None, check: bool = True
        ) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=180)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return out


@pytest.fixture
def helm_env(control_plane, tmp_path) -> dict[str, str]:
    """The cluster's environment, with helm's config, cache and data kept in the test's directory."""
    env = control_plane.env()
    for kind in ("CONFIG", "CACHE", "DATA"):
        env[f"HELM_{kind}_HOME"] = str(tmp_path / "helm" / kind.lower())
    return env


def can_i(cp, service_account: str, *args: str) -> bool:
    out = subprocess.run(["kubectl", "auth", "can-i", *args, f"--as={service_account}"], env=cp.env(),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def live(cp, manifest: str) -> list[dict[str, Any]]:
    """The objects of a manifest as the API server has them (none when they are all gone)."""
    out = cp.kubectl("get", "--ignore-not-found", "-o", "json", "-f", "-", input=manifest)
    if not out.strip():
        return []
    got = json.loads(out)
    return got["items"] if got.get("kind") == "List" else [got]


@pytest.mark.local_control_plane
@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
def test_install_is_accepted_by_the_api_server_and_uninstall_removes_it(control_plane, namespace, helm,
                                                                         helm_env, scope):
    cp = control_plane
    # A pod that breaks the restricted Pod Security Standard is refused by the API server in this namespace.
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
               "pod-security.kubernetes.io/enforce-version=latest")
    release = f"t{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {"replicas": 2}
    if scope == "namespaced":
        values["watchNamespaces"] = [namespace]
    install = run([str(helm), "install", release, str(CHART), "--namespace", namespace, "--values", "-"],
                  helm_env, input=yaml.safe_dump(values))
    try:
        check_release(cp, helm, helm_env, namespace, release, scope, install.stdout)
    finally:
        # Also after a failure: the cluster-scoped objects would outlive the namespace.
        run([str(helm), "uninstall", release, "--namespace", namespace, "--ignore-not-found"], helm_env,
            check=False)


def check_release(cp, helm: Path, helm_env: dict[str, str], namespace: str, release: str, scope: str,
                  notes: str) -> None:
    """What the installed release must be: accepted, admitted, bound, and gone after `helm uninstall`."""
    fullname, operator = f"{release}-maitred", f"{release}-maitred-operator"
    assert f"deployment/{operator}" in notes, "NOTES.txt says how to check the operator"
    assert f"peering through the {'KopfPeering' if scope == 'namespaced' else 'ClusterKopfPeering'} {fullname}" \
        in notes

    for crd in CRDS:
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")

    manifest = run([str(helm), "get", "manifest", release, "--namespace", namespace], helm_env).stdout
    expected = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                      for d in yaml.safe_load_all(manifest) if d)
    peering = ("KopfPeering", fullname, namespace) if scope == "namespaced" else ("ClusterKopfPeering", fullname, None)
    assert peering in expected
    assert ("Deployment", operator, namespace) in expected and ("ServiceAccount", operator, namespace) in expected
    got = sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in live(cp, manifest))
    assert got == expected, "every object of the release is in the cluster"

    # The ReplicaSet's pods were admitted (restricted PSS, the ServiceAccount exists) and wait for a node.
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

    def pods():
        items = json.loads(cp.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json"))["items"]
        return items if len(items) == 2 else None

    try:
        admitted = wait_for(pods, timeout=60, what="the operator's two pods")
    except TimeoutError:
        sets = json.loads(cp.kubectl("get", "replicasets", "-n", namespace, "-l", selector, "-o", "json"))
        raise AssertionError("the operator's pods were not admitted: " + json.dumps(
            [rs["status"].get("conditions") for rs in sets["items"]])) from None
    for pod in admitted:
        assert pod["status"]["phase"] == "Pending"
        assert pod["spec"]["serviceAccountName"] == operator
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532

    account = f"system:serviceaccount:{namespace}:{operator}"
    assert can_i(cp, account, "list", "postgrespoolers.maitred.dev", "-n", namespace)
    assert can_i(cp, account, "create", "deployments.apps", "-n", namespace)
    assert can_i(cp, account, "patch", "postgrespoolers.maitred.dev", "--subresource=status", "-n", namespace)
    assert can_i(cp, account, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(cp, account, "list", "namespaces")
    assert not can_i(cp, account, "delete", "nodes")
    elsewhere = can_i(cp, account, "create", "deployments.apps", "-n", "kube-system")
    assert elsewhere is (scope == "cluster-wide"), "a namespaced operator acts in its namespaces only"
    assert can_i(cp, account, "patch", f"kopfpeerings.kopf.dev/{fullname}", "-n", namespace)
    assert can_i(cp, account, "patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/"
                 "maitred-sidecar-injector")
    assert ("MutatingWebhookConfiguration", "maitred-sidecar-injector", None) in expected

    run([str(helm), "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "2m"], helm_env)
    wait_for(lambda: not live(cp, manifest), timeout=60, what="the release's objects to be deleted")
    assert run([str(helm), "list", "--namespace", namespace, "-q"], helm_env).stdout.strip() == ""
    for crd in CRDS:
        cp.kubectl("get", f"crd/{crd}")    # Helm never deletes what it installed from crds/


@pytest.mark.kind
def test_installed_operator_runs_as_the_image_user_on_a_read_only_root(control_plane):
    """e2e/kind/run.sh installed the chart as release `maitred` with the image it built."""
    cp = control_plane
    namespace = os.environ.get("MAITRED_E2E_NAMESPACE", "maitred-system")
    cp.kubectl("rollout", "status", "deployment/maitred-operator", "-n", namespace, "--timeout=180s")
    deployment = json.loads(cp.kubectl("get", "deployment/maitred-operator", "-n", namespace, "-o", "json"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    image = os.environ.get("MAITRED_E2E_IMAGE")
    if image:
        assert container["image"] == image
        assert {"name": "MAITRED_POOLER_IMAGE", "value": image} in container["env"]

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "exec", "-n", namespace, "deployment/maitred-operator", "--",
                               "python", "-c", code], env=cp.env(), capture_output=True, text=True, timeout=60)

    assert python("import os; print(os.getuid(), os.getgid())").stdout.split() == ["65532", "65532"]
    refused = python("open('/maitred-write-test', 'w')")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert python("open('/tmp/maitred-write-test', 'w').write('ok')").returncode == 0
