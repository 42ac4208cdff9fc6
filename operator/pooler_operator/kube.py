"""The edge: every call the operator makes to the API server goes through `Kube`.

A small JSON client over the kubernetes package's authenticated ApiClient: objects stay plain dicts (as the
renderer makes them), server-side apply does the merging, and a 409 on a status write means "read again".
Tests swap in an in-memory fake with the same methods.
"""
from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from . import API_VERSION, FIELD_MANAGER, KIND, PLURAL

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Event"): "events",
    ("v1", "Namespace"): "namespaces",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): "mutatingwebhookconfigurations",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    (API_VERSION, KIND): PLURAL,
}


class ApiError(Exception):
    """A non-2xx answer; `message` is the API server's own words (what a person needs to fix it)."""

    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status, self.message, self.reason = status, message, reason

    @property
    def is_invalid(self) -> bool:
        """The object itself was refused (422 Invalid, 400 BadRequest): retrying the same object cannot help."""
        return self.status in (400, 422)


def resource_path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{quote(namespace)}")
    parts.append(PLURALS[(api_version, kind)])
    if name:
        parts.append(quote(name))
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def load_config() -> None:
    """In-cluster credentials when in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class Kube:
    """JSON in, JSON out, over the kubernetes package's ApiClient (credentials, TLS, proxies)."""

    def __init__(self, api_client: Any = None, timeout: float = 30.0):
        import kubernetes

        self.api = api_client or kubernetes.client.ApiClient()
        self.timeout = timeout
        self._discovered: dict[str, set[str]] = {}

    def request(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                content_type: str = "application/json") -> dict[str, Any] | None:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = self.api.call_api(method, url, header_params=headers, body=body,
                                     _request_timeout=self.timeout)
        data = response.read()
        try:
            payload = json.loads(data) if data else None
        except ValueError:  # e.g. a plain "404 page not found" for an API group that is not served
            payload = None
        if response.status >= 400:
            if isinstance(payload, dict):
                raise ApiError(response.status, payload.get("message", ""), payload.get("reason", ""))
            raise ApiError(response.status, data[:500].decode("utf-8", "replace").strip())
        return payload

    # -- objects --------------------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.request("GET", resource_path(api_version, kind, namespace), query=[("labelSelector", selector)])
        return (out or {}).get("items", [])

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the operator owns exactly the fields it renders, and only those."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        return self.request("PATCH", path, body=manifest, content_type="application/apply-patch+yaml",
                            query=[("fieldManager", FIELD_MANAGER), ("force", "true")]) or {}

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create, or ApiError 409 when it exists (someone else made it first: read theirs)."""
        meta = manifest["metadata"]
        return self.request("POST", resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace")),
                            body=manifest) or {}

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Replace, only if the object is still at the manifest's resourceVersion (else ApiError 409)."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        return self.request("PUT", path, body=manifest) or {}

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str, body: dict[str, Any],
              content_type: str = "application/strategic-merge-patch+json") -> dict[str, Any]:
        return self.request("PATCH", resource_path(api_version, kind, namespace, name), body=body,
                            content_type=content_type) or {}

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            self.request("DELETE", resource_path(api_version, kind, namespace, name),
                         body={"propagationPolicy": "Background"})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def read_secret(self, namespace: str, name: str) -> tuple[dict[str, str], str] | None:
        """A Secret's data decoded as UTF-8 text, and its resourceVersion; None when it does not exist."""
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.get("data") or {}).items()}
        return data, secret["metadata"].get("resourceVersion", "")

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves this kind (e.g. PodMonitor, when the Prometheus Operator is installed)."""
        if api_version not in self._discovered:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                found = self.request("GET", base) or {}
            except ApiError as exc:
                if exc.status != 404:
                    raise
                found = {}
            self._discovered[api_version] = {r.get("kind") for r in found.get("resources", [])}
        return kind in self._discovered[api_version]

    def namespace_terminating(self, namespace: str) -> bool:
        ns = self.get("v1", "Namespace", None, namespace)
        return ns is None or (ns.get("status") or {}).get("phase") == "Terminating"

    # -- the PostgresPooler -----------------------------------------------------------------------------

    def get_pooler(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(API_VERSION, KIND, namespace, name)

    def patch_pooler_status(self, namespace: str, name: str, status: dict[str, Any],
                            resource_version: str) -> dict[str, Any]:
        """Replace status, only if the object is still at `resource_version` (else ApiError 409)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return self.request("PATCH", resource_path(API_VERSION, KIND, namespace, name, "status"), body=body,
                            content_type="application/merge-patch+json") or {}
