"""The kopf wiring of sidecar injection, imported only when the operator serves the webhook (`--webhook-port`).

- At startup the webhook server starts (certificates, caBundle); at cleanup it stops.
- A pod that asks for a pooler and was stored without it (the webhook did not answer: failurePolicy Ignore)
  gets a Warning Event, once, when it appears or when the operator starts. An event handler, not a
  create/resume handler: those keep their progress in the pod's annotations, and the operator does not write
  to application pods.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from .api import InvalidSpec, parse_pooler
from .handlers import kube
from .inject import INJECT_ANNOTATION, missed_injection, refusal, requested
from .objects import default_image
from .webhook_server import WebhookOptions, WebhookServer

log = logging.getLogger(__name__)

_options: WebhookOptions | None = None
_server: WebhookServer | None = None
_reported: set[str] = set()   # pod uids already warned about (a watch that lists again must not repeat it)


def configure(options: WebhookOptions) -> None:
    global _options
    _options = options


@kopf.on.startup()
async def start_webhook(**_: Any) -> None:
    global _server
    if _options is None:
        return
    _server = WebhookServer(_options, kube=kube, image=default_image)
    await _server.start()


@kopf.on.cleanup()
async def stop_webhook(**_: Any) -> None:
    if _server is not None:
        await _server.stop()


@kopf.on.event("v1", "pods", annotations={INJECT_ANNOTATION: kopf.PRESENT})
def report_missed_injection(type: str | None, body: kopf.Body, namespace: str, **_: Any) -> None:
    """On the listing at startup (type None) and on a new pod (ADDED) only: a pod never gains its sidecar later."""
    uid = body["metadata"].get("uid", "")
    if type not in (None, "ADDED") or uid in _reported:
        return
    pod = copy.deepcopy(dict(body))
    if refusal(pod, namespace) is not None:  # never to be injected: nothing to read
        return
    ns = kube().get("v1", "Namespace", None, namespace) or {}
    found = kube().get_pooler(namespace, (requested(pod) or "").strip())
    try:
        pooler = parse_pooler(found) if found is not None else None
    except InvalidSpec:
        pooler = None
    why = missed_injection(pod, namespace, (ns.get("metadata") or {}).get("labels") or {}, pooler)
    if why:
        _reported.add(uid)
        kopf.warn(body, reason="SidecarNotInjected", message=why)
        log.warning(f"{namespace}/{body['metadata'].get('name')}: {why}")
