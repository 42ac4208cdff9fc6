"""The kopf handlers: which events lead to a reconcile or a status refresh. No decisions live here.

- A PostgresPooler is reconciled on create, update and resume (operator start).
- A Secret it references changing reconciles it (an index maps Secrets to the poolers that name them).
- An owned object deleted by someone is put back by reconciling its owner.
- Its Deployment changing refreshes the status (replica counts, Ready, Degraded).
- While it has autotune enabled, a daemon keeps it in the autotuner's one tick loop (autotune_runner.py).
- Every PostgresPooler event updates the operator's /metrics (metrics.py), and so does every tick's decision.
  kopf stops every daemon while peering freezes this replica, so only the leader tunes.
No finalizer of the operator's own: owner references make the garbage collector delete what it made. kopf
puts its finalizer on autotuned resources only, so that their daemon stops before they go.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import socket
import threading
from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION
from .api import InvalidSpec, PostgresPooler, parse_pooler
from .autotune.console import ConsoleError, set_settings
from .autotune.loop import ConsoleTarget, TierReport
from .autotune_runner import AutotuneRunner, Pod, Secrets, pod_consoles, pod_selector
from .kube import Kube, load_config
from .metrics import OperatorMetrics
from .objects import MANAGED_BY, Names, TunedSize, default_image, referenced_secrets
from .reconcile import RetryLater, owner_of, read_secrets, reconcile, refresh_status, write_tier_report

log = logging.getLogger(__name__)

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}

_kube: Kube | None = None
metrics = OperatorMetrics()
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def kube() -> Kube:
    global _kube
    if _kube is None:
        load_config()
        _kube = Kube()
    return _kube


def _lock(namespace: str, name: str) -> threading.Lock:
    """One reconcile at a time per PostgresPooler, whichever event started it."""
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def _poster(body: dict[str, Any]):
    def post(type_: str, reason: str, message: str) -> None:
        (kopf.info if type_ == "Normal" else kopf.warn)(body, reason=reason, message=message[:1000])
    return post


def _run(body: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter) -> None:
    meta = body["metadata"]
    with _lock(meta.get("namespace", "default"), meta["name"]):
        try:
            result = reconcile(kube(), body, _poster(body), image=default_image(),
                               before_scale_up=_shrink_running)
        except RetryLater as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
        except Exception as exc:
            kopf.exception(body, reason="ReconcileError", message="will retry:", exc=exc)
            raise
    for change in result.changed:
        logger.info(change)
    logger.info(f"{result.outcome.reason}: {result.outcome.message}")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Production settings: state in our own annotations, bounded watches and requests, our name on Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.level = logging.INFO
    # A watch ends server-side before the client gives up on it, and reconnects after a short pause.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 15
    settings.execution.max_workers = 8
    kube()


@kopf.index(GROUP, VERSION, PLURAL)
def secret_refs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, Secret name) → the PostgresPooler that references it."""
    try:
        pooler = parse_pooler(copy.deepcopy(dict(body)))
    except InvalidSpec:
        return {}
    return {(namespace, secret): name for secret in referenced_secrets(pooler)}


@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
def reconcile_pooler(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    _run(copy.deepcopy(dict(body)), logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def deleted(body: kopf.Body, **_: Any) -> None:
    """Only seen when something else holds the object (e.g. foreground deletion); the operator needs no
    finalizer of its own."""
    kopf.info(body, reason="Deleting", message="the owned objects go with it (owner references)")


def _reconcile_by_name(namespace: str, name: str, logger: Any) -> None:
    """Reconcile after something else changed; nothing to do when the pooler or its namespace is going away
    (the namespace controller deletes owned objects first, and they must not be made again)."""
    body = kube().get_pooler(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp") or kube().namespace_terminating(namespace):
        return
    _run(body, logger)


def _is_referenced(namespace: str, name: str, secret_refs: kopf.Index, **_: Any) -> bool:
    return (namespace, name) in secret_refs


@kopf.on.event("v1", "secrets", when=_is_referenced)
def referenced_secret_changed(namespace: str, name: str, type: str | None, secret_refs: kopf.Index,
                              logger: Any, **_: Any) -> None:
    """A users, auth_user or TLS Secret changed: re-render the auth_file and the config (the pooler reloads)."""
    if type is None:  # the initial listing: the resume handler reconciles everything already
        return
    for pooler in set(secret_refs.get((namespace, name), [])):
        logger.info(f"Secret {name} changed ({type}): reconciling PostgresPooler {pooler}")
        _reconcile_by_name(namespace, pooler, logger)


def _deleted_event(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def _owned_deleted(body: kopf.Body, namespace: str, logger: Any, **_: Any) -> None:
    owner = owner_of(dict(body))
    if owner:
        _reconcile_by_name(namespace, owner, logger)


for _group_version, _plural in (("v1", "configmaps"), ("v1", "secrets"), ("v1", "services"),
                                ("v1", "serviceaccounts"), ("policy/v1", "poddisruptionbudgets")):
    kopf.on.event(*_group_version.split("/"), _plural, labels=MANAGED, when=_deleted_event,
                  id=f"owned-{_plural}")(_owned_deleted)


@kopf.on.event(GROUP, VERSION, PLURAL, id="metrics")
def pooler_seen(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    """Its status as /metrics shows it, whoever wrote it."""
    if type == "DELETED":
        metrics.forget(namespace, name)
    else:
        metrics.observe(copy.deepcopy(dict(body)))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(type: str | None, body: kopf.Body, namespace: str, logger: Any, **_: Any) -> None:
    """The Deployment's counts moved: refresh the pooler's status; if it was deleted, make it again."""
    owner = owner_of(dict(body))
    if not owner:
        return
    if type == "DELETED":
        _reconcile_by_name(namespace, owner, logger)
        return
    with _lock(namespace, owner):
        try:
            refresh_status(kube(), namespace, owner)
        except RetryLater as exc:
            logger.warning(f"status of {owner} not refreshed: {exc}")


# -- the autotuner ------------------------------------------------------------------------------------------


def _read_tier(pooler: PostgresPooler) -> tuple[list[Pod], Secrets, str | None]:
    """The tier's pods (by selector), its referenced Secrets and the console password, for one tick."""
    pods = kube().list("v1", "Pod", pooler.namespace, pod_selector(pooler))
    secrets, _ = read_secrets(kube(), pooler)
    found = kube().read_secret(pooler.namespace, Names(pooler.name).console)
    return pods, secrets, (found[0].get("password") if found else None)


def _publish(pooler: PostgresPooler, report: TierReport) -> None:
    """The report into status and Events; after a change of size the ConfigMap follows (a reconcile renders
    the size from status), so a new pod starts at it and no reconcile reverts it."""
    metrics.decided(pooler.namespace, pooler.name, report.decision.direction, report.decision.rule)
    body, events = write_tier_report(kube(), pooler.namespace, pooler.name, report,
                                     dry_run=pooler.spec.autotune.dry_run)
    if body is None:
        return
    post = _poster(body)
    for type_, reason, message in events:
        post(type_, reason, message)
    log.info(report.line())
    if not pooler.spec.autotune.dry_run and report.applied and report.changed:
        _reconcile_by_name(pooler.namespace, pooler.name, log)


def _shrink_running(pooler: PostgresPooler, tuned: TunedSize) -> list[str]:
    """SET the running pods to the per-process cap the added replicas leave them (cap first, then size, so a
    process is within both limits after either SET); a pod that does not answer stays counted at its cap."""
    pods, _, password = _read_tier(pooler)
    settings = {"max_db_connections": tuned.per_process_cap or tuned.pool_size, "default_pool_size": tuned.pool_size}

    async def one(console: ConsoleTarget) -> str | None:
        try:
            await set_settings(console.host, console.port, console.user, console.password, settings)
        except ConsoleError as exc:
            return f"{console.label}: {exc}"
        return None

    async def every() -> list[str | None]:
        return await asyncio.gather(*(one(c) for c in pod_consoles(pods, password or "")))
    return [problem for problem in asyncio.run(every()) if problem]


_runner: AutotuneRunner | None = None


def runner() -> AutotuneRunner:
    global _runner
    if _runner is None:
        _runner = AutotuneRunner(read=_read_tier, publish=_publish)
    return _runner


def _autotuned(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec.get("autotune") or {}).get("enabled"))


@kopf.daemon(GROUP, VERSION, PLURAL, id="autotune", when=_autotuned, cancellation_backoff=20,
             cancellation_timeout=10)
async def autotune(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Keep this tier in the tick loop while the daemon lives; kopf keeps `body` current."""
    tier = runner().register(copy.deepcopy(dict(body)))
    try:
        while not stopped:
            await stopped.wait(1.0)
            runner().update(tier, copy.deepcopy(dict(body)))
    finally:
        await runner().unregister(tier)
