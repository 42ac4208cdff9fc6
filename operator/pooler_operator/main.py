"""`maitred operator`: run the kopf operator, namespaced or cluster-wide, alone or with peers."""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .webhook_server import WebhookOptions

WATCH_NAMESPACE_ENV = "MAITRED_WATCH_NAMESPACE"
PEERING_ENV = "MAITRED_PEERING"
LOG_FORMAT_ENV = "MAITRED_LOG_FORMAT"
"""plain, full (the default: time, level, logger, [namespace/name]) or json."""


def watched_namespaces(namespaces: list[str] | None, all_namespaces: bool) -> list[str]:
    """The namespaces to watch: flags first, else MAITRED_WATCH_NAMESPACE (comma-separated); [] = all."""
    if all_namespaces:
        return []
    if namespaces:
        return namespaces
    return [ns.strip() for ns in os.environ.get(WATCH_NAMESPACE_ENV, "").split(",") if ns.strip()]


def default_priority() -> int:
    """A newer operator replica outranks an older one, so a rolling upgrade hands over cleanly."""
    return int(time.time() * 1000) % 2_000_000_000


def run(*, namespaces: list[str] | None = None, all_namespaces: bool = False, standalone: bool = False,
        peering: str | None = None, priority: int | None = None, liveness: str | None = None,
        metrics_port: int | None = None, verbose: bool = False, webhook: "WebhookOptions | None" = None) -> int:
    import kopf

    from . import handlers  # registers the handlers
    from .metrics import serve
    if webhook is not None:
        from . import injection_handlers  # registers the webhook's startup and the pod handler
        injection_handlers.configure(webhook)

    log_format = os.environ.get(LOG_FORMAT_ENV, "full").upper()
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format], log_prefix=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the liveness probe, every few seconds
    if metrics_port:
        serve(handlers.metrics, metrics_port)
    watched = watched_namespaces(namespaces, all_namespaces)
    peering = peering or os.environ.get(PEERING_ENV) or None
    kopf.run(
        clusterwide=not watched,
        namespaces=watched,
        standalone=standalone,
        peering_name=None if standalone else peering,
        priority=priority if priority is not None else default_priority(),
        liveness_endpoint=liveness,
    )
    return 0
