"""Sidecar injection: what the admission webhook adds to a pod that asks for a pooler, as a JSON patch.

A pod opts in with the annotation `maitred.dev/inject: <PostgresPooler name>` (in a namespace labelled
`maitred.dev/injection: enabled`). It gets the pooler as a native sidecar: an init container with
`restartPolicy: Always`, first among the init containers, so it starts before them and the app and stops
after them. Its config is the PostgresPooler's ConfigMap and Secrets in a projected volume (reloaded live, as
in the Deployment's pods); the app reaches it on 127.0.0.1 and finds the address in MAITRED_DATABASE_URL.

Everything here is pure: `refusal` says why a pod is not injected (or None), `sidecar_patch` builds the patch.
The webhook server and the certificate are the edges.
"""
from __future__ import annotations

import re
from typing import Any

from .api import PostgresPooler
from .objects import LISTEN_PORT, POOLER_LABEL, SIDECAR_PORT_NAMES, pooler_container, projected_sources

INJECT_ANNOTATION = "maitred.dev/inject"
INJECTED_ANNOTATION = "maitred.dev/injected"     # the pooler injected: a pod is never injected twice
NAMESPACE_LABEL = "maitred.dev/injection"        # a namespace opts in with the value "enabled"
SIDECAR_NAME = "maitred-pooler"
DSN_ENV = "MAITRED_DATABASE_URL"
# The app's own ports and volumes keep their names: the sidecar's are prefixed.
PORT_NAMES = SIDECAR_PORT_NAMES
VOLUME_NAMES = {"config": "maitred-config", "tmp": "maitred-tmp"}
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
# What the chart puts on the operator's pods (and the webhook's objectSelector keeps out).
OPERATOR_LABELS = {"app.kubernetes.io/name": "maitred", "app.kubernetes.io/component": "operator"}
# A PostgresPooler's name (a DNS subdomain) that also fits the label value maitred.dev/pooler=<name>: at most 63.
_POOLER_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Pod = dict[str, Any]


def requested(pod: Pod) -> str | None:
    """The PostgresPooler the pod asks for, as written (None: the pod does not ask)."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(INJECT_ANNOTATION)
    return None if value is None else str(value)


def refusal(pod: Pod, namespace: str) -> str | None:
    """Why this pod must be left as it is, in one line; None when it may be injected (once its pooler is
    known). Never an exception: the webhook answers every pod."""
    meta = pod.get("metadata") or {}
    name = requested(pod)
    if name is None:
        return f"no {INJECT_ANNOTATION} annotation"
    if namespace in SYSTEM_NAMESPACES:
        return f"namespace {namespace} is a system namespace: never injected"
    labels = meta.get("labels") or {}
    if all(labels.get(k) == v for k, v in OPERATOR_LABELS.items()):
        return "the operator's own pods are never injected"
    if INJECTED_ANNOTATION in (meta.get("annotations") or {}) or \
            any(c.get("name") == SIDECAR_NAME for c in _all_containers(pod)):
        return "already injected"
    if not _POOLER_NAME.match(name.strip()):
        return (f"{INJECT_ANNOTATION}: {_shown(name)} is not a PostgresPooler name (lowercase letters, digits, "
                "'-' and '.', at most 63 characters)")
    return None


def _shown(value: str, most: int = 80) -> str:
    """A value quoted for a message, cut short: a warning the API server passes on stays readable."""
    return repr(value) if len(value) <= most else f"{value[:most]!r}… ({len(value)} characters)"


def pooler_refusal(pooler: PostgresPooler | None, name: str, namespace: str) -> str | None:
    """Why the requested PostgresPooler cannot serve as a sidecar; None when it can."""
    if pooler is None:
        return f"{INJECT_ANNOTATION}: no PostgresPooler {name!r} in namespace {namespace}"
    if pooler.spec.mode != "sidecar":
        return (f"{INJECT_ANNOTATION}: PostgresPooler {name!r} runs in mode {pooler.spec.mode}; only a pooler "
                "with mode: sidecar is injected into pods")
    return None


# The operator sees only that the pod lacks its sidecar: either the webhook did not answer, or the pod was
# refused (and told why) before its PostgresPooler existed in mode sidecar.
MISSED = ("created without the maitred sidecar: the webhook did not answer, or the PostgresPooler was not yet in "
          "mode sidecar when the pod was created; delete the pod to have it injected")


def missed_injection(pod: Pod, namespace: str, namespace_labels: dict[str, str],
                     pooler: PostgresPooler | None) -> str | None:
    """Why a stored pod should carry the sidecar and does not (None: it is as it should be). Only a pod the
    webhook would have injected counts: one it refused was told why when it was created."""
    if namespace_labels.get(NAMESPACE_LABEL) != "enabled" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    if refusal(pod, namespace) is not None or pooler_refusal(pooler, requested(pod) or "", namespace) is not None:
        return None
    return MISSED


def sidecar_container(pooler: PostgresPooler, image: str) -> dict[str, Any]:
    return pooler_container(pooler, image, name=SIDECAR_NAME, sidecar=True, port_names=PORT_NAMES,
                            volume_names=VOLUME_NAMES)


def sidecar_volumes(pooler: PostgresPooler) -> list[dict[str, Any]]:
    """The config volume (0444: without the Deployment's fsGroup the files stay root's, and the sidecar runs as
    65532) and the scratch volume."""
    return [{"name": VOLUME_NAMES["config"], "projected": {"defaultMode": 0o444, "sources": projected_sources(pooler)}},
            {"name": VOLUME_NAMES["tmp"], "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]


def database_url(pooler: PostgresPooler) -> str:
    """What the app connects to: the sidecar on loopback, and spec.database.dbname when the pooler serves one
    database (the app adds its own user and password, as it would to PostgreSQL)."""
    return f"postgresql://127.0.0.1:{LISTEN_PORT}/{pooler.spec.database.dbname or ''}"


def sidecar_patch(pod: Pod, pooler: PostgresPooler, image: str) -> list[dict[str, Any]]:
    """RFC 6902 operations that add the sidecar, its volumes, the DSN for every app container, the pooler's
    label (the autotuner finds sidecar pods by it) and the injected mark. Nothing the pod has is replaced."""
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    container = sidecar_container(pooler, image)
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    volumes = sidecar_volumes(pooler)
    if spec.get("volumes"):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    env = {"name": DSN_ENV, "value": database_url(pooler)}
    for i, c in enumerate(spec.get("containers") or []):
        own = c.get("env")
        if own is None:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": [env]})
        elif all(e.get("name") != DSN_ENV for e in own):
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env/-", "value": env})
    meta = pod.get("metadata") or {}
    ops += _add_key(meta, "labels", POOLER_LABEL, pooler.name)
    ops += _add_key(meta, "annotations", INJECTED_ANNOTATION, pooler.name)
    return ops


def _add_key(meta: dict[str, Any], field: str, key: str, value: str) -> list[dict[str, Any]]:
    if meta.get(field) is None:
        return [{"op": "add", "path": f"/metadata/{field}", "value": {key: value}}]
    return [{"op": "add", "path": f"/metadata/{field}/{_pointer(key)}", "value": value}]


def _pointer(key: str) -> str:
    """A JSON pointer token (RFC 6901): '~' and '/' escaped."""
    return key.replace("~", "~0").replace("/", "~1")


def _all_containers(pod: Pod) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
