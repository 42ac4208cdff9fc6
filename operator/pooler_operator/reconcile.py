"""One reconcile of one PostgresPooler: read its Secrets, render, apply what changed, prune, write status.

Idempotent: every owned object carries the hash of the manifest last applied to it, so an unchanged object is
not written again, and a reconcile that changes nothing posts no Event. The decisions (what to render, what
changed, which condition) are pure functions elsewhere; this module sequences the I/O and turns failures
into an Outcome instead of an exception, so a bad spec never crash-loops the operator.
"""
from __future__ import annotations

import configparser
import logging
from secrets import token_urlsafe
from dataclasses import dataclass, field
from typing import Any, Callable

from . import API_VERSION, KIND
from .api import InvalidSpec, PostgresPooler, parse_pooler
from .kube import ApiError, Kube
from .objects import (CONFIG_FILE, POOLER_LABEL, RESTART_HASH_ANNOTATION, MissingSecret, Names, PoolerConfig,
                      Rendered, TunedSize, digest, referenced_secrets, render)
from .status import (APPLIED, APPLY_FAILED, INVALID_SPEC, PAUSED, REJECTED, SECRET_NOT_FOUND, Event, Outcome,
                     compute_status, tier_status)

log = logging.getLogger(__name__)

APPLIED_HASH_ANNOTATION = "maitred.dev/applied-hash"
Post = Callable[[str, str, str], None]
"""post(type, reason, message): type is Normal or Warning."""
ShrinkRunning = Callable[[PostgresPooler, TunedSize], list[str]]
"""SET the running pods to a tuned size before more pods start; returns what failed."""

# Every kind the operator may own, in the order owned objects are pruned (dependents first).
OWNED_KINDS = [("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
               ("policy/v1", "PodDisruptionBudget"), ("apps/v1", "Deployment"), ("v1", "Service"),
               ("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Secret")]


class RetryLater(Exception):
    """A transient failure (the API server, a conflict): the caller retries after `delay` seconds."""

    def __init__(self, message: str, delay: float = 15):
        super().__init__(message)
        self.delay = delay


# -- pure helpers -------------------------------------------------------------------------------------------


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest, annotated with the hash of itself (without that annotation)."""
    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH_ANNOTATION}
    bare = {**manifest, "metadata": {**meta, "annotations": annotations}}
    meta["annotations"] = {**annotations, APPLIED_HASH_ANNOTATION: digest(bare)}
    return {**manifest, "metadata": meta}


def applied_hash(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)


def parse_ini(text: str) -> PoolerConfig:
    """The sections of an ini file the renderer wrote (to tell which settings a change touches)."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), delimiters=("=",),
                                       strict=False)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text)
    except configparser.Error:
        return PoolerConfig()
    section = (lambda name: dict(parser[name]) if parser.has_section(name) else {})
    return PoolerConfig(databases=section("databases"), pgbouncer=section("pgbouncer"),
                        maitred=section("maitred"))


def config_changes(old: PoolerConfig, new: PoolerConfig) -> tuple[list[str], list[str]]:
    """(settings the pooler reloads live, settings that need a restart) that differ between two configs."""
    old_flat, new_flat = old.flat(), new.flat()
    changed = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
    restart = set(old.restart_settings()) | set(new.restart_settings())
    return [k for k in changed if k not in restart], [k for k in changed if k in restart]


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning status `old` into `new` (removed keys become null, at any depth)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        patch[key] = status_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
    return patch


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid and ref.get("kind") == KIND
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


# -- the reconcile ------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What a reconcile did, for the caller's logs and for tests."""

    outcome: Outcome
    status: dict[str, Any] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)


def _describe(kind: str, name: str, existing: dict[str, Any] | None, rendered: Rendered) -> str:
    if existing is None:
        return f"created {kind} {name}"
    if kind == "ConfigMap":
        old = parse_ini((existing.get("data") or {}).get(CONFIG_FILE, ""))
        reloaded, restart = config_changes(old, rendered.config)
        if not reloaded and not restart:
            return f"updated ConfigMap {name}: the pooler reloads it (auth_file or certificates changed)"
        parts = []
        if reloaded:
            parts.append(f"the pooler reloads {', '.join(reloaded)} live")
        if restart:
            parts.append(f"{', '.join(restart)} need a restart, so the pods roll")
        return f"updated ConfigMap {name}: " + "; ".join(parts)
    if kind == "Deployment":
        old_template = existing.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
        new_deployment = rendered.by_kind("Deployment") or {}
        new_template = new_deployment["spec"]["template"]
        old_replicas = existing.get("spec", {}).get("replicas")
        new_replicas = new_deployment["spec"]["replicas"]
        notes = []
        if old_replicas != new_replicas:
            notes.append(f"replicas {old_replicas} -> {new_replicas}")
        if old_template.get(RESTART_HASH_ANNOTATION) != new_template["metadata"]["annotations"].get(
                RESTART_HASH_ANNOTATION):
            notes.append("settings that need a restart changed: rolling the pods")
        return f"updated Deployment {name}" + (f": {'; '.join(notes)}" if notes else "")
    return f"updated {kind} {name}"


def scales_up(existing: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    return existing is not None and manifest["kind"] == "Deployment" and \
        (existing.get("spec") or {}).get("replicas", 0) < manifest["spec"]["replicas"]


def apply_all(kube: Kube, pooler: PostgresPooler, rendered: Rendered, post: Post,
              before_scale_up: ShrinkRunning | None = None) -> list[str]:
    """Apply what differs from what was last applied; prune what is no longer wanted. Returns what changed.

    The ConfigMap goes before the Deployment; with an autotuned size, the running pods are also brought to
    the (smaller) per-process cap before the Deployment adds pods, so the tier never exceeds its share."""
    changed = []
    for manifest in rendered.manifests:
        manifest = with_applied_hash(manifest)
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        existing = kube.get(manifest["apiVersion"], kind, pooler.namespace, name)
        if existing is not None and applied_hash(existing) == applied_hash(manifest):
            continue
        if rendered.tuned and before_scale_up and scales_up(existing, manifest):
            for problem in before_scale_up(pooler, rendered.tuned):
                post("Warning", "PoolResizeFailed", f"before scaling up: {problem}")
        kube.apply(manifest)
        message = _describe(kind, name, existing, rendered)
        changed.append(message)
        post("Normal", "Created" if existing is None else "Updated", message)

    wanted = {(m["kind"], m["metadata"]["name"]) for m in rendered.manifests}
    names = Names(pooler.name)
    candidates = {"PodMonitor": [names.monitor], "ServiceMonitor": [names.monitor],
                  "PodDisruptionBudget": [names.pdb], "Deployment": [names.deployment], "Service": [names.service],
                  "ServiceAccount": [names.service_account], "ConfigMap": [names.config],
                  "Secret": [names.auth, names.console]}
    for api_version, kind in OWNED_KINDS:
        for name in candidates[kind]:
            if (kind, name) in wanted:
                continue
            if api_version.startswith("monitoring.coreos.com") and not kube.has_kind(api_version, kind):
                continue
            existing = kube.get(api_version, kind, pooler.namespace, name)
            if existing is not None and owned_by(existing, pooler.metadata.get("uid")):
                kube.delete(api_version, kind, pooler.namespace, name)
                message = f"deleted {kind} {name}: no longer wanted"
                changed.append(message)
                post("Normal", "Deleted", message)
    return changed


def read_secrets(kube: Kube, pooler: PostgresPooler) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(data, resourceVersion) of every referenced Secret that exists, by name."""
    data, versions = {}, {}
    for name in referenced_secrets(pooler):
        found = kube.read_secret(pooler.namespace, name)
        if found is not None:
            data[name], versions[name] = found
    return data, versions


def console_password(kube: Kube, pooler: PostgresPooler) -> str | None:
    """The autotuner's console password: kept in the operator's own Secret, made once, never in the resource."""
    if not pooler.spec.autotune.enabled:
        return None
    found = kube.read_secret(pooler.namespace, Names(pooler.name).console)
    if found and found[0].get("password"):
        return found[0]["password"]
    return token_urlsafe(24)


def reconcile(kube: Kube, body: dict[str, Any], post: Post, *, image: str | None = None,
              before_scale_up: ShrinkRunning | None = None) -> Result:
    """Bring the owned objects of `body` in line with its spec, and write its status.

    Problems the user must fix end as a Degraded status and a Warning Event; transient ones raise RetryLater.
    """
    meta = body.get("metadata", {})
    namespace, name, generation = meta.get("namespace", "default"), meta["name"], meta.get("generation")
    changed: list[str] = []
    pooler: PostgresPooler | None = None
    try:
        pooler = parse_pooler(body)
        if pooler.spec.paused:
            outcome = Outcome(PAUSED, "spec.paused is true: the owned objects are left as they are")
        else:
            secrets, versions = read_secrets(kube, pooler)
            monitoring = pooler.spec.monitoring
            available = (not monitoring.enabled
                         or kube.has_kind("monitoring.coreos.com/v1", monitoring.kind))
            rendered = render(pooler, secrets, image=image, versions=versions, monitoring_available=available,
                              console_password=console_password(kube, pooler))
            for warning in rendered.warnings:
                post("Warning", "MonitoringUnavailable", warning)
            for problem in rendered.autotune_problems:
                post("Warning", "AutotuneMisconfigured", problem)
            changed = apply_all(kube, pooler, rendered, post, before_scale_up)
            message = f"config {rendered.config_hash} in force"
            if pooler.spec.mode == "sidecar":
                message += "; mode sidecar: only the ConfigMap and Secret are rendered, no Deployment is run"
            outcome = Outcome(APPLIED, message, config_hash=rendered.config_hash,
                              restart_hash=rendered.restart_hash, pool_size=rendered.pool_size,
                              pool_size_source=rendered.pool_size_source,
                              budget=rendered.budget, selector=rendered.selector,
                              autotune_problems=tuple(rendered.autotune_problems))
    except InvalidSpec as exc:
        outcome = Outcome(INVALID_SPEC, "fix the spec: " + "; ".join(exc.problems))
    except MissingSecret as exc:
        outcome = Outcome(SECRET_NOT_FOUND, "; ".join(exc.missing))
    except ApiError as exc:
        if not exc.is_invalid:
            _write_status(kube, namespace, name, generation, body.get("spec") or {},
                          Outcome(APPLY_FAILED, f"the API server answered {exc}"))
            post("Warning", APPLY_FAILED, str(exc))
            raise RetryLater(str(exc)) from exc
        outcome = Outcome(REJECTED, f"the API server refused an owned object: {exc.message}")

    if outcome.reason not in (APPLIED, PAUSED):
        post("Warning", outcome.reason, outcome.message)
    previous = _condition_reason(body, "ConfigApplied")
    if outcome.reason == PAUSED and previous != PAUSED:
        post("Normal", PAUSED, outcome.message)
    status = _write_status(kube, namespace, name, generation, body.get("spec") or {}, outcome,
                           mode=pooler.spec.mode if pooler else None)
    return Result(outcome=outcome, status=status, changed=changed)


def _condition_reason(body: dict[str, Any], type_: str) -> str | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c.get("reason")
    return None


def _read_deployment(kube: Kube, namespace: str, name: str, mode: str | None) -> dict[str, Any] | None:
    if mode != "deployment":
        return None
    return kube.get("apps/v1", "Deployment", namespace, Names(name).deployment)


def _write_status(kube: Kube, namespace: str, name: str, generation: int | None, spec: dict[str, Any],
                  outcome: Outcome | None, mode: str | None = None, attempts: int = 5) -> dict[str, Any]:
    """Compute and write the status against the freshest object; a conflicting writer means try again."""
    for _ in range(attempts):
        current = kube.get_pooler(namespace, name)
        if current is None:
            return {}
        spec = current.get("spec") or spec
        effective_mode = mode or spec.get("mode", "deployment")
        deployment = _read_deployment(kube, namespace, name, effective_mode)
        old = current.get("status") or {}
        new = compute_status(old, generation=generation if outcome else current["metadata"].get("generation"),
                             spec=spec, outcome=outcome, deployment=deployment,
                             deployment_known=effective_mode == "deployment")
        if old == new:
            return old
        try:
            kube.patch_pooler_status(namespace, name, status_patch(old, new),
                                     current["metadata"]["resourceVersion"])
            return new
        except ApiError as exc:
            if exc.status != 409:
                raise RetryLater(f"could not write the status: {exc}") from exc
    raise RetryLater("the status kept changing under us")


def write_tier_report(kube: Kube, namespace: str, name: str, report: Any, *, dry_run: bool,
                      attempts: int = 5) -> tuple[dict[str, Any] | None, list[Event]]:
    """One autotuner tick into the status (against the freshest object); the body and the Events to post.
    (None, []) when the resource is gone."""
    for _ in range(attempts):
        current = kube.get_pooler(namespace, name)
        if current is None:
            return None, []
        old = current.get("status") or {}
        new, events = tier_status(old, report, dry_run=dry_run)
        try:
            kube.patch_pooler_status(namespace, name, status_patch(old, new),
                                     current["metadata"]["resourceVersion"])
            return {**current, "status": new}, events
        except ApiError as exc:
            if exc.status != 409:
                raise RetryLater(f"could not write the status: {exc}") from exc
    raise RetryLater("the status kept changing under us")


def refresh_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """Recompute the status from the Deployment only (after the Deployment changed)."""
    return _write_status(kube, namespace, name, None, {}, None)


def owner_of(obj: dict[str, Any]) -> str | None:
    """The PostgresPooler an owned object belongs to, by its controller reference, else its label."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(API_VERSION.split("/")[0]):
            return ref.get("name")
    return (obj.get("metadata", {}).get("labels") or {}).get(POOLER_LABEL)
