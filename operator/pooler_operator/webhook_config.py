"""The MutatingWebhookConfiguration of sidecar injection, as a dict, and the patch that sets its caBundle.

Pods are sent only at CREATE, only from namespaces that opt in (and never from the system namespaces), and
never the operator's or its Deployment pods (app.kubernetes.io/name=maitred). failurePolicy Ignore: a pod is
never held back by the webhook; one created without its sidecar is reported by the operator instead.
The chart renders the same object (charts/maitred/templates/webhook.yaml); a test keeps the two alike.
"""
from __future__ import annotations

import base64
from typing import Any

from .inject import NAMESPACE_LABEL, OPERATOR_LABELS, SYSTEM_NAMESPACES

CONFIGURATION_NAME = "maitred-sidecar-injector"
WEBHOOK_NAME = "inject.maitred.dev"
PATH = "/mutate"
TIMEOUT_SECONDS = 5
OPERATOR_NAME_LABEL = "app.kubernetes.io/name"


def url_client_config(url: str) -> dict[str, Any]:
    """The API server calls this URL (the operator runs outside the cluster, as on the local platform)."""
    return {"url": url}


def service_client_config(namespace: str, name: str, port: int) -> dict[str, Any]:
    return {"service": {"namespace": namespace, "name": name, "port": port, "path": PATH}}


def webhook_configuration(client_config: dict[str, Any], ca_bundle: str | None = None) -> dict[str, Any]:
    """The whole object; `ca_bundle` is PEM text (the API wants it base64-encoded)."""
    if ca_bundle:
        client_config = {**client_config, "caBundle": encode_ca(ca_bundle)}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME,
                     "labels": {"app.kubernetes.io/part-of": "maitred",
                                "app.kubernetes.io/managed-by": "maitred-operator"}},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": TIMEOUT_SECONDS,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
            "clientConfig": client_config,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [
                {"key": NAMESPACE_LABEL, "operator": "In", "values": ["enabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": sorted(SYSTEM_NAMESPACES)},
            ]},
            "objectSelector": {"matchExpressions": [
                {"key": OPERATOR_NAME_LABEL, "operator": "NotIn", "values": [OPERATOR_LABELS[OPERATOR_NAME_LABEL]]},
            ]},
        }],
    }


def ca_bundle_patch(ca_bundle: str) -> dict[str, Any]:
    """A strategic merge patch that sets only the caBundle of our webhook (webhooks merge by name), leaving
    the rest of an object the chart owns as it is."""
    return {"webhooks": [{"name": WEBHOOK_NAME, "clientConfig": {"caBundle": encode_ca(ca_bundle)}}]}


def current_ca(configuration: dict[str, Any] | None) -> str | None:
    """The PEM text of our webhook's caBundle in a live object (None: no object, no webhook or no bundle)."""
    for webhook in (configuration or {}).get("webhooks") or []:
        if webhook.get("name") == WEBHOOK_NAME:
            bundle = (webhook.get("clientConfig") or {}).get("caBundle")
            return base64.b64decode(bundle).decode() if bundle else None
    return None


def encode_ca(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()
