"""The local control plane is a real Kubernetes: controllers, garbage collection, CRD schema validation
and admission webhooks all behave as in a cluster."""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from maitred.local.controlplane import ControlPlane, StartFailed, find_binaries, free_port, issue, make_ca, wait_for

pytestmark = pytest.mark.local_control_plane

APP_LABELS = {"app": "e2e-web"}


def _deployment(name: str, replicas: int = 2) -> client.V1Deployment:
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=APP_LABELS),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=APP_LABELS),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="registry.invalid/web:1")]),
            ),
        ),
    )


def _pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector="app=e2e-web").items


def test_kubectl_and_the_python_client_share_one_kubeconfig(control_plane, api_client):
    version = client.VersionApi(api_client).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    assert "default" in control_plane.kubectl("get", "namespaces", "-o", "name")


def test_a_deployment_gets_a_replicaset_and_pending_pods(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deployment = apps.create_namespaced_deployment(namespace, _deployment("web", replicas=2))

    replicasets = wait_for(
        lambda: apps.list_namespaced_replica_set(namespace).items, what="the Deployment's ReplicaSet"
    )
    assert replicasets[0].metadata.owner_references[0].uid == deployment.metadata.uid
    pods = wait_for(lambda: len(_pods(core, namespace)) == 2 and _pods(core, namespace), what="2 pods")
    for pod in pods:
        assert pod.metadata.owner_references[0].uid == replicasets[0].metadata.uid
        assert pod.status.phase == "Pending"  # no scheduler, no kubelet
        assert pod.spec.service_account_name == "default"


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=1))
    wait_for(lambda: _pods(core, namespace), what="the Deployment's pod")

    apps.delete_namespaced_deployment("web", namespace)  # background propagation: the GC's job

    wait_for(lambda: not apps.list_namespaced_replica_set(namespace).items, what="the ReplicaSet to go")
    wait_for(lambda: not _pods(core, namespace), what="the pods to go")


def test_deleting_an_owner_garbage_collects_the_objects_it_owns(api_client, namespace):
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="owned", owner_references=[ref]))
    )

    core.delete_namespaced_config_map("owner", namespace)

    def owned_gone() -> bool:
        try:
            core.read_namespaced_secret("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(owned_gone, what="the owned Secret to be garbage-collected")


@pytest.fixture
def widget_crd(api_client):
    """A namespaced CRD `widgets.e2e.maitred.dev` with a structural schema; removed afterwards."""
    ext = client.ApiextensionsV1Api(api_client)
    group = f"e2e{uuid.uuid4().hex[:6]}.maitred.dev"  # unique: a deleted CRD lingers a moment
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
                    "size": {"type": "string", "enum": ["small", "large"]},
                },
            }
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

    wait_for(established, what="the CRD to be established")
    try:
        yield group
    finally:
        ext.delete_custom_resource_definition(crd["metadata"]["name"])


def test_a_crd_schema_rejects_an_invalid_object_with_the_apiservers_message(api_client, namespace, widget_crd):
    custom = client.CustomObjectsApi(api_client)

    def widget(name: str, spec: dict) -> dict:
        return {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}

    # Discovery of a fresh CRD takes a moment: retry the valid create until the API serves it.
    wait_for(
        lambda: custom.create_namespaced_custom_object(
            widget_crd, "v1", namespace, "widgets", widget("ok", {"replicas": 3, "size": "small", "colour": "x"})
        ),
        what="the CRD's endpoint to serve",
    )
    stored = custom.get_namespaced_custom_object(widget_crd, "v1", namespace, "widgets", "ok")
    assert "colour" not in stored["spec"]  # unknown fields are pruned by the structural schema

    with pytest.raises(ApiException) as rejected:
        custom.create_namespaced_custom_object(
            widget_crd, "v1", namespace, "widgets", widget("bad", {"replicas": 0, "size": "huge"})
        )
    assert rejected.value.status == 422
    message = json.loads(rejected.value.body)["message"]
    assert "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1" in message
    assert 'spec.size: Unsupported value: "huge": supported values: "small", "large"' in message


class _Webhook(BaseHTTPRequestHandler):
    """Denies ConfigMaps labelled e2e.maitred.dev/verdict=deny, allows the rest; records each call."""

    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        type(self).calls.append(request)
        labels = (request["object"].get("metadata") or {}).get("labels") or {}
        allowed = labels.get("e2e.maitred.dev/verdict") != "deny"
        response = {"uid": request["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": f"configmap {request['name']} is not welcome here"}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook_server(tmp_path: Path):
    """An HTTPS admission webhook on 127.0.0.1 with its own CA; yields (url, ca_bundle_pem)."""
    ca = make_ca("e2e-webhook-ca")
    cert, key = issue(ca, "e2e-webhook", hosts=("127.0.0.1",), server=True).write(tmp_path, "webhook")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    _Webhook.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Webhook)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/validate", ca.cert
    finally:
        server.shutdown()
        server.server_close()


def test_the_apiserver_calls_an_admission_webhook_served_by_the_test(api_client, namespace, webhook_server):
    url, ca_bundle = webhook_server
    admission, core = client.AdmissionregistrationV1Api(api_client), client.CoreV1Api(api_client)
    name = f"{namespace}.e2e.maitred.dev"
    admission.create_validating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "configmaps.e2e.maitred.dev",
            "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    })
    try:
        def config_map(cm_name: str, verdict: str) -> client.V1ConfigMap:
            labels = {"e2e.maitred.dev/verdict": verdict}
            return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=cm_name, labels=labels))

        def denied() -> str | None:
            try:
                core.create_namespaced_config_map(namespace, config_map("probe", "deny"), dry_run="All")
            except ApiException as exc:
                return json.loads(exc.body)["message"]
            return None

        # The API server picks the configuration up asynchronously.
        message = wait_for(denied, what="the webhook configuration to take effect")
        assert message == (
            'admission webhook "configmaps.e2e.maitred.dev" denied the request: '
            "configmap probe is not welcome here"
        )
        core.create_namespaced_config_map(namespace, config_map("welcome", "allow"))
        assert {c["name"] for c in _Webhook.calls} >= {"probe", "welcome"}
        assert all(c["namespace"] == namespace for c in _Webhook.calls)
    finally:
        admission.delete_validating_webhook_configuration(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_stopping_leaves_no_process_and_no_file(control_plane):
    cp = ControlPlane.start(find_binaries())
    pids = [p.popen.pid for p in cp.processes]
    assert len(pids) == 3 and all(_alive(pid) for pid in pids)

    cp.stop()

    assert not any(_alive(pid) for pid in pids)
    assert not cp.workdir.exists()


def test_a_failed_start_cleans_up_what_it_started(control_plane):
    started: list[tuple[int, Path]] = []

    class Recording(ControlPlane):
        def _spawn(self, name, argv):
            proc = super()._spawn(name, argv)
            started.append((proc.popen.pid, self.workdir))
            return proc

    binaries = {**find_binaries(), "kube-apiserver": Path("/bin/false")}
    with pytest.raises(StartFailed, match="kube-apiserver exited with code 1"):
        Recording.start(binaries)

    assert len(started) == 2  # etcd, then the kube-apiserver that exits at once
    assert not any(_alive(pid) for pid, _ in started)
    assert not started[0][1].exists()
