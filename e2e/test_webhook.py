"""Sidecar injection with the real API server calling the operator's webhook: `maitred operator --webhook-url`
runs as a process on this host (as its ServiceAccount, with operator/rbac.yaml), makes its certificates and the
MutatingWebhookConfiguration, and kube-apiserver calls it over HTTPS for every pod created in an opted-in
namespace. What is stored is read back with kubectl. There is no kubelet: the pods stay Pending, which is all
admission needs.
"""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.test_operator import apply, basic, get, kubectl_result
from maitred.local.controlplane import free_port, wait_for
from maitred.local.operator import NAMESPACE, OperatorProcess, install
from pooler_operator.inject import INJECT_ANNOTATION, INJECTED_ANNOTATION, MISSED, NAMESPACE_LABEL, SIDECAR_NAME
from pooler_operator.webhook_config import CONFIGURATION_NAME, current_ca

pytestmark = [pytest.mark.local_control_plane, pytest.mark.slow]

IMAGE = "registry.invalid/maitred:e2e"


class Webhook:
    """The operator serving the webhook on one port for the whole module; it can be stopped and started again."""

    def __init__(self, cp, workdir: Path, image: str = IMAGE):
        self.cp, self.workdir, self.port, self.image = cp, workdir, free_port(), image
        self.url = f"https://127.0.0.1:{self.port}/mutate"
        self.op: OperatorProcess | None = None
        self.runs = 0

    def start(self) -> "Webhook":
        self.runs += 1
        self.op = OperatorProcess(self.cp, self.workdir, "--all-namespaces", "--standalone",
                                  "--webhook-port", str(self.port), "--webhook-host", "127.0.0.1",
                                  "--webhook-url", self.url, env={"MAITRED_POOLER_IMAGE": self.image},
                                  name=f"operator-{self.runs}")
        self.op.wait_live()
        try:
            wait_for(self._serving, timeout=60, what="the webhook served and configured")
        except TimeoutError:
            raise AssertionError(f"the webhook did not come up:\n{self.op.logs()}") from None
        return self

    def _serving(self) -> bool:
        config = json.loads(self.cp.kubectl("get", "mutatingwebhookconfiguration", CONFIGURATION_NAME, "-o", "json",
                                            check=False) or "{}")
        hooks = config.get("webhooks") or [{}]
        if hooks[0].get("clientConfig", {}).get("url") != self.url or not current_ca(config):
            return False
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.op is not None:
            self.op.stop()
            print(f"operator log (tail):\n{self.op.logs(200)}")

    def logs(self) -> str:
        return self.op.logs() if self.op else ""


@pytest.fixture(scope="module")
def webhook(control_plane, tmp_path_factory):
    install(control_plane)
    hook = Webhook(control_plane, tmp_path_factory.mktemp("webhook"))
    try:
        yield hook.start()
    finally:
        hook.stop()
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", CONFIGURATION_NAME, "--ignore-not-found")


def opt_in(cp, namespace: str) -> None:
    cp.kubectl("label", "namespace", namespace, f"{NAMESPACE_LABEL}=enabled")


def pod_doc(name: str, namespace: str, pooler: str | None = "pool") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if pooler is not None:
        meta["annotations"] = {INJECT_ANNOTATION: pooler}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}


def create(cp, doc: dict[str, Any]) -> subprocess.CompletedProcess:
    out = kubectl_result(cp, "create", "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode == 0, out.stderr
    return out


def events(cp, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(cp.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in items if e.get("reason") == reason]


def test_an_annotated_pod_in_an_opted_in_namespace_is_stored_with_the_sidecar(control_plane, webhook, namespace):
    cp = control_plane
    opt_in(cp, namespace)
    apply(cp, *basic(namespace, mode="sidecar"))
    create(cp, pod_doc("app", namespace))
    pod = get(cp, "pod", "app", namespace)
    init = pod["spec"]["initContainers"]
    assert init[0]["name"] == SIDECAR_NAME and init[0]["restartPolicy"] == "Always", webhook.logs()
    assert init[0]["image"] == IMAGE
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "pool"
    assert {"name": "MAITRED_DATABASE_URL", "value": "postgresql://127.0.0.1:5432/app"} in \
        pod["spec"]["containers"][0]["env"]


def test_an_unannotated_pod_is_stored_untouched(control_plane, webhook, namespace):
    cp = control_plane
    opt_in(cp, namespace)
    apply(cp, *basic(namespace, mode="sidecar"))
    create(cp, pod_doc("plain", namespace, pooler=None))
    pod = get(cp, "pod", "plain", namespace)
    assert "initContainers" not in pod["spec"] and "env" not in pod["spec"]["containers"][0]
    assert INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})


def test_a_pod_in_a_namespace_that_did_not_opt_in_is_stored_untouched(control_plane, webhook, namespace):
    cp = control_plane
    apply(cp, *basic(namespace, mode="sidecar"))
    out = create(cp, pod_doc("app", namespace))
    assert "initContainers" not in get(cp, "pod", "app", namespace)["spec"]
    assert "maitred" not in out.stderr, "the webhook was not even called: no warning"


def test_a_refused_pod_is_created_with_a_warning_and_an_event_on_the_pooler(control_plane, webhook, namespace):
    cp = control_plane
    opt_in(cp, namespace)
    apply(cp, *basic(namespace, mode="deployment"))
    out = create(cp, pod_doc("app", namespace))
    assert "maitred: maitred.dev/inject: PostgresPooler 'pool' runs in mode deployment" in out.stderr
    assert "initContainers" not in get(cp, "pod", "app", namespace)["spec"]
    found = wait_for(lambda: events(cp, namespace, "SidecarNotInjected"), timeout=30, what="the Warning Event")
    assert found[0]["involvedObject"]["kind"] == "PostgresPooler" and found[0]["type"] == "Warning"
    assert found[0]["message"].startswith("pod app not injected:")


def test_with_the_webhook_down_a_pod_is_created_untouched_and_reported_when_it_is_back(control_plane, webhook,
                                                                                          namespace):
    cp = control_plane
    opt_in(cp, namespace)
    apply(cp, *basic(namespace, mode="sidecar"))
    webhook.stop()
    try:
        create(cp, pod_doc("missed", namespace))
        assert "initContainers" not in get(cp, "pod", "missed", namespace)["spec"]
    finally:
        webhook.start()
    found = wait_for(lambda: events(cp, namespace, "SidecarNotInjected"), timeout=60,
                     what=f"the Warning Event on the pod:\n{webhook.logs()}")
    (event,) = found
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == "missed"
    assert event["type"] == "Warning" and event["message"] == MISSED
    create(cp, pod_doc("after", namespace))     # and the webhook injects again
    assert get(cp, "pod", "after", namespace)["spec"]["initContainers"][0]["name"] == SIDECAR_NAME
    assert json.loads(cp.kubectl("get", "secret", "maitred-webhook-tls", "-n", NAMESPACE, "-o", "json"))["data"]
