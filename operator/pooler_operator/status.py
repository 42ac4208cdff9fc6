"""Status decisions, as pure functions: conditions from what a reconcile did and what the Deployment reports.

Two writers feed one status: the reconcile (ConfigApplied and the numbers of the config in force) and the
Deployment watch (replica counts). Both call `compute_status` with whatever they know; Ready and Degraded are
always derived from the ConfigApplied condition and the Deployment together, so neither writer can leave
them stale.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

READY, CONFIG_APPLIED, DEGRADED, AUTOTUNED = "Ready", "ConfigApplied", "Degraded", "Autotuned"

# ConfigApplied reasons when the config was not applied: all but Paused mean the spec or its Secrets need fixing.
APPLIED = "Applied"
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
REJECTED = "RejectedByAPIServer"
APPLY_FAILED = "ApplyFailed"
PAUSED = "Paused"

# Autotuned reasons (and status.autotune.state): True while the loop acts, False while it holds or cannot run.
TUNING, HOLDING, MISCONFIGURED, WAITING = "Tuning", "Holding", "Misconfigured", "Waiting"


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did: `reason` is a ConfigApplied reason, `message` says what happened or what to fix."""

    reason: str
    message: str
    config_hash: str | None = None
    restart_hash: str | None = None
    pool_size: int | None = None
    budget: int | None = None
    selector: str | None = None
    pool_size_source: str = "spec"
    autotune_problems: tuple[str, ...] = ()

    @property
    def applied(self) -> bool:
        return self.reason == APPLIED


def now_iso(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
                  generation: int | None, now: str) -> list[dict[str, Any]]:
    """The list with `type_` replaced; lastTransitionTime moves only when the status does."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now
    new = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        new["observedGeneration"] = generation
    out = [c for c in conditions if c.get("type") != type_]
    out.append(new)
    order = {READY: 0, CONFIG_APPLIED: 1, DEGRADED: 2, AUTOTUNED: 3}
    return sorted(out, key=lambda c: order.get(c.get("type", ""), 9))


def _condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def _deployment_condition(deployment: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == type_),
                None)


def readiness(mode: str, desired: int, deployment: dict[str, Any] | None,
              config_applied: dict[str, Any] | None) -> tuple[str, str, str]:
    """(status, reason, message) of Ready: is the tier serving clients?"""
    if mode == "sidecar":
        if config_applied and config_applied.get("status") == "True":
            return ("True", "SidecarConfigRendered",
                    "mode sidecar: the ConfigMap and Secret are ready for pods that opt in with the annotation "
                    "maitred.dev/inject; the operator runs no Deployment")
        return "False", "SidecarConfigMissing", "mode sidecar: the config is not rendered yet"
    if deployment is None:
        return "False", "DeploymentMissing", "the Deployment does not exist yet"
    status = deployment.get("status") or {}
    ready, updated = status.get("readyReplicas") or 0, status.get("updatedReplicas") or 0
    if desired == 0:
        return "False", "ScaledToZero", "spec.replicas is 0: no pooler pod runs"
    if ready < desired:
        return "False", "ReplicasNotReady", f"{ready}/{desired} pooler pods are ready"
    if updated < desired:
        return "True", "RollingOut", f"{ready}/{desired} pooler pods are ready; {updated}/{desired} run the " \
                                     "current pod template"
    return "True", "AllReplicasReady", f"{ready}/{desired} pooler pods are ready"


def degradation(deployment: dict[str, Any] | None,
                config_applied: dict[str, Any] | None) -> tuple[str, str, str]:
    """(status, reason, message) of Degraded: does something need a person?"""
    if config_applied and config_applied.get("status") == "False" and config_applied.get("reason") != PAUSED:
        return "True", config_applied.get("reason", APPLY_FAILED), config_applied.get("message", "")
    if deployment is not None:
        failure = _deployment_condition(deployment, "ReplicaFailure")
        if failure and failure.get("status") == "True":
            return "True", "ReplicaFailure", f"the Deployment cannot create pods: {failure.get('message', '')}"
        progressing = _deployment_condition(deployment, "Progressing")
        if progressing and progressing.get("status") == "False":
            return "True", "RolloutStuck", f"the rollout is stuck: {progressing.get('message', '')}"
    return "False", "AsExpected", ""


TICKED_STATES = (TUNING, HOLDING)


def autotune_report(autotune: dict[str, Any], pool_size: int | None, problems: tuple[str, ...] = (),
                    current: dict[str, Any] | None = None) -> dict[str, Any]:
    """status.autotune as a reconcile sees it: the loop's own report is kept once it has ticked."""
    if not autotune.get("enabled"):
        return {"enabled": False, "state": "Disabled", "message": "the pool size is spec.pool.defaultPoolSize"}
    if problems:  # the loop's last allocation stays in force (and in the config) until it runs again
        return {**(current or {}), "enabled": True, "state": MISCONFIGURED, "message": "; ".join(problems)}
    if current and current.get("state") in TICKED_STATES:
        return current
    prometheus = autotune.get("prometheus") or {}
    cpu = f"CPU from {prometheus['url']}" if prometheus.get("url") else "no CPU signal"
    return {**(current or {}), "enabled": True, "state": WAITING,
            "message": f"pool size {autotune.get('minPoolSize')}..{autotune.get('maxPoolSize')} every "
                       f"{autotune.get('intervalSeconds')}s, headroom {autotune.get('budgetHeadroom')}, {cpu}; "
                       f"until the autotuner's first tick the pool size stays {pool_size}"}


def compute_status(current: dict[str, Any] | None, *, generation: int | None, spec: dict[str, Any],
                   outcome: Outcome | None = None, deployment: dict[str, Any] | None = None,
                   deployment_known: bool = False, now: str | None = None) -> dict[str, Any]:
    """The whole new status from the current one plus what this writer knows.

    `outcome` is given by the reconcile; `deployment` (None when absent) by whoever read it, with
    deployment_known=True. What a writer does not know is kept from `current`.
    """
    now = now or now_iso()
    status = dict(current or {})
    conditions = list(status.get("conditions") or [])
    mode = spec.get("mode", "deployment")
    desired = int(spec.get("replicas", 1))

    if outcome is not None:
        status["observedGeneration"] = generation
        conditions = set_condition(conditions, CONFIG_APPLIED, "True" if outcome.applied else "False",
                                   outcome.reason, outcome.message, generation, now)
        if outcome.applied:
            status.update({"configHash": outcome.config_hash, "restartHash": outcome.restart_hash,
                           "poolSize": outcome.pool_size, "poolSizeSource": outcome.pool_size_source,
                           "selector": outcome.selector})
            status["budget"] = outcome.budget
            autotune = spec.get("autotune") or {}
            status["autotune"] = autotune_report(autotune, outcome.pool_size, outcome.autotune_problems,
                                                 status.get("autotune"))
            if autotune.get("enabled") and outcome.autotune_problems:
                conditions = set_condition(conditions, AUTOTUNED, "False", MISCONFIGURED,
                                           status["autotune"]["message"], generation, now)
            elif autotune.get("enabled") and status["autotune"]["state"] in TICKED_STATES:
                pass  # the loop's condition stands until its next tick
            elif autotune.get("enabled"):
                conditions = set_condition(conditions, AUTOTUNED, "Unknown", WAITING,
                                           status["autotune"]["message"], generation, now)
            else:
                conditions = [c for c in conditions if c.get("type") != AUTOTUNED]

    if deployment_known and mode == "deployment":
        dstatus = (deployment or {}).get("status") or {}
        status["replicas"] = dstatus.get("replicas") or 0
        status["readyReplicas"] = dstatus.get("readyReplicas") or 0
        status["replicasReady"] = f"{status['readyReplicas']}/{desired}"
    elif mode == "sidecar":
        for key in ("replicas", "readyReplicas", "replicasReady", "budget"):
            status.pop(key, None)

    applied = _condition(conditions, CONFIG_APPLIED)
    condition_generation = status.get("observedGeneration", generation)
    if deployment_known or mode == "sidecar":
        conditions = set_condition(conditions, READY, *readiness(mode, desired, deployment, applied),
                                   condition_generation, now)
    elif _condition(conditions, READY) is None:
        conditions = set_condition(conditions, READY, "Unknown", "Reconciling", "", condition_generation, now)
    old_degraded = _condition(conditions, DEGRADED)
    if deployment_known or mode == "sidecar" or outcome is not None:
        deployment_for_degraded = deployment if deployment_known else None
        conditions = set_condition(conditions, DEGRADED, *degradation(deployment_for_degraded, applied),
                                   condition_generation, now)
    elif old_degraded is None:
        conditions = set_condition(conditions, DEGRADED, "False", "AsExpected", "", condition_generation, now)
    status["conditions"] = conditions
    return {k: v for k, v in status.items() if v is not None}



# -- the autotuner's reports --------------------------------------------------------------------------------

Event = tuple[str, str, str]
"""(type, reason, message) of an Event to post."""


def signals_seen(signals: Any) -> dict[str, Any]:
    """A TierSignals as status.autotune.lastDecision.signals: camelCase, rounded, unknowns left out."""
    if signals is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(signals).items():
        if value is None:
            continue
        if isinstance(value, float):
            value = round(value, 3)
        elif isinstance(value, (tuple, list)):
            value = list(value)
        out[to_camel(key)] = value
    return out


def missing_of(report: Any) -> list[str]:
    """What the tick could not read: the signals the policy had to do without, then every error."""
    missing = list(report.signals.missing) if report.signals is not None else ["every signal"]
    return list(dict.fromkeys([*missing, *report.errors]))


def tier_status(current: dict[str, Any], report: Any, *, dry_run: bool, now: str | None = None
                ) -> tuple[dict[str, Any], list[Event]]:
    """The status after one tick's TierReport, and the Events it deserves: one per change of size, one when a
    signal goes missing. Holding (Autotuned False) while a signal is missing, Tuning (True) otherwise."""
    now = now or now_iso()
    status = dict(current)
    old = dict(status.get("autotune") or {})
    old_missing = set(old.get("missingSignals") or [])
    missing = missing_of(report) if (report.signals is None or report.signals.missing) else []
    errors = list(report.errors)
    state = HOLDING if missing else TUNING
    resized = report.from_size is not None and report.to_size is not None and report.to_size != report.from_size
    in_force = report.to_size if (report.applied or dry_run or not resized) else report.from_size
    allocation = report.allocation
    autotune = {
        "enabled": True, "state": state,
        "poolSize": in_force if in_force is not None else old.get("poolSize"),
        "perProcessCap": allocation.per_process_cap if allocation else old.get("perProcessCap"),
        "budget": report.budget, "share": allocation.connections if allocation else None,
        "server": report.server,
        "lastDecision": {"time": now_iso(dt.datetime.fromtimestamp(report.at, dt.timezone.utc)),
                         "from": report.from_size, "to": report.to_size, "reason": report.decision.reason,
                         "signals": signals_seen(report.signals)},
        "message": ("dry run, nothing changed: " if dry_run else "") + report.line()
                   + (f"; problems: {'; '.join(errors)}" if errors else ""),
    }
    if missing:
        autotune["missingSignals"] = missing
    status["autotune"] = {k: v for k, v in autotune.items() if v is not None}
    if not dry_run and status["autotune"].get("poolSize") is not None:
        status["poolSize"], status["poolSizeSource"] = status["autotune"]["poolSize"], "autotune"
    generation = status.get("observedGeneration")
    conditions = list(status.get("conditions") or [])
    if state == TUNING:
        conditions = set_condition(conditions, AUTOTUNED, "True", TUNING, report.line(), generation, now)
    else:
        conditions = set_condition(conditions, AUTOTUNED, "False", HOLDING,
                                   f"holding: {', '.join(missing)} missing", generation, now)
    status["conditions"] = conditions

    events: list[Event] = []
    if resized and (report.applied or dry_run):
        verb = "would resize" if dry_run else "resized"
        events.append(("Normal", "PoolResized",
                       f"{verb} the pool {report.from_size} -> {report.to_size}: {report.decision.reason}"))
    elif resized:
        events.append(("Warning", "PoolResizeFailed", f"the pool stays {report.from_size} (wanted "
                                                      f"{report.to_size}): {'; '.join(errors)}"))
    newly_missing = [m for m in missing if m not in old_missing]
    if newly_missing:
        events.append(("Warning", "SignalMissing", f"holding the pool size: {', '.join(newly_missing)}"))
    return status, events
