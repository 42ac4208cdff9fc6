"""Status decisions: conditions from the reconcile's outcome and the Deployment's counts."""
from __future__ import annotations

from pooler_operator.status import (APPLIED, INVALID_SPEC, PAUSED, Outcome, compute_status, degradation,
                                    readiness, set_condition)

SPEC = {"mode": "deployment", "replicas": 2, "autotune": {"enabled": False}}
GOOD = Outcome(APPLIED, "config abc in force", config_hash="abc", restart_hash="def", pool_size=20, budget=40,
               selector="a=b")


def deployment(ready=0, updated=0, conditions=()):
    return {"status": {"readyReplicas": ready, "updatedReplicas": updated, "conditions": list(conditions)}}


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_last_transition_time_moves_only_when_the_status_does():
    conditions = set_condition([], "Ready", "False", "A", "", 1, "t1")
    conditions = set_condition(conditions, "Ready", "False", "B", "other", 2, "t2")
    assert conditions[0]["lastTransitionTime"] == "t1" and conditions[0]["reason"] == "B"
    conditions = set_condition(conditions, "Ready", "True", "C", "", 2, "t3")
    assert conditions[0]["lastTransitionTime"] == "t3"


def test_ready_needs_every_desired_replica_ready():
    assert readiness("deployment", 2, deployment(ready=1, updated=2), None)[:2] == ("False", "ReplicasNotReady")
    assert readiness("deployment", 2, deployment(ready=2, updated=2), None)[:2] == ("True", "AllReplicasReady")
    assert readiness("deployment", 2, deployment(ready=2, updated=1), None)[:2] == ("True", "RollingOut")
    assert readiness("deployment", 0, deployment(), None)[:2] == ("False", "ScaledToZero")
    assert readiness("deployment", 2, None, None)[:2] == ("False", "DeploymentMissing")


def test_degraded_follows_a_failed_config_or_a_stuck_deployment_but_not_a_pause():
    refused = {"type": "ConfigApplied", "status": "False", "reason": INVALID_SPEC, "message": "fix x"}
    assert degradation(None, refused) == ("True", INVALID_SPEC, "fix x")
    paused = {"type": "ConfigApplied", "status": "False", "reason": PAUSED, "message": ""}
    assert degradation(None, paused)[0] == "False"
    stuck = deployment(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": "ReplicaSet has timed out progressing"}])
    assert degradation(stuck, None)[:2] == ("True", "RolloutStuck")


def test_reconcile_outcome_and_deployment_make_one_status():
    status = compute_status({}, generation=3, spec=SPEC, outcome=GOOD, deployment=deployment(2, 2),
                            deployment_known=True, now="t")
    assert [c["type"] for c in status["conditions"]] == ["Ready", "ConfigApplied", "Degraded"]
    assert cond(status, "Ready")["status"] == "True"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["poolSize"] == 20 and status["poolSizeSource"] == "spec" and status["replicasReady"] == "2/2"
    assert status["autotune"]["state"] == "Disabled"


def test_deployment_writer_keeps_what_the_reconcile_wrote():
    first = compute_status({}, generation=3, spec=SPEC, outcome=GOOD, deployment=deployment(0, 0),
                           deployment_known=True, now="t1")
    second = compute_status(first, generation=None, spec=SPEC, deployment=deployment(2, 2),
                            deployment_known=True, now="t2")
    assert cond(second, "ConfigApplied") == cond(first, "ConfigApplied")
    assert cond(second, "Ready")["status"] == "True" and cond(second, "Ready")["observedGeneration"] == 3
    assert second["configHash"] == "abc"


def test_autotune_enabled_is_validated_and_reported_as_waiting():
    spec = {**SPEC, "autotune": {"enabled": True, "minPoolSize": 5, "maxPoolSize": 50, "intervalSeconds": 30,
                                 "budgetHeadroom": 5, "prometheus": {"url": "http://prom:9090"}}}
    status = compute_status({}, generation=1, spec=spec, outcome=GOOD, deployment=None, deployment_known=True,
                            now="t")
    autotuned = cond(status, "Autotuned")
    assert (autotuned["status"], autotuned["reason"]) == ("Unknown", "Waiting")
    assert "pool size 5..50 every 30s" in autotuned["message"] and "http://prom:9090" in autotuned["message"]
    off = compute_status(status, generation=2, spec=SPEC, outcome=GOOD, deployment=None, deployment_known=True,
                         now="t")
    assert "Autotuned" not in [c["type"] for c in off["conditions"]]


def test_autotune_misconfiguration_is_reported_in_its_own_condition():
    spec = {**SPEC, "autotune": {"enabled": True}}
    outcome = Outcome(APPLIED, "ok", pool_size=20, autotune_problems=("Secret prom not found",))
    status = compute_status({}, generation=1, spec=spec, outcome=outcome, deployment=None, deployment_known=True,
                            now="t")
    assert (cond(status, "Autotuned")["status"], cond(status, "Autotuned")["reason"]) == \
        ("False", "Misconfigured")
    assert status["autotune"] == {"enabled": True, "state": "Misconfigured", "message": "Secret prom not found"}
    assert cond(status, "ConfigApplied")["status"] == "True"


def test_sidecar_is_ready_once_its_config_is_rendered():
    status = compute_status({}, generation=1, spec={"mode": "sidecar"}, outcome=GOOD, now="t")
    assert cond(status, "Ready")["reason"] == "SidecarConfigRendered"
    assert "replicas" not in status
