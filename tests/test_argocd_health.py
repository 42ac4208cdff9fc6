"""The chart's Argo CD health check (charts/maitred/files/health.lua), run by a real Lua 5.1 (the language of
Argo CD's gopher-lua) against statuses made by the operator's own status functions."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pooler_operator.status import Outcome, compute_status, set_condition
from tests.support import require_binary

ROOT = Path(__file__).resolve().parent.parent
HEALTH = ROOT / "charts" / "maitred" / "files" / "health.lua"
NOW = "2026-01-01T00:00:00Z"
SPEC = {"mode": "deployment", "replicas": 2}


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua table constructor, as Argo CD hands the resource to the script."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    return json.dumps(value)


def health(resource: dict[str, Any]) -> tuple[str, str]:
    """(status, message) the script returns for `resource`."""
    lua = require_binary("lua5.1")
    script = (f"obj = {lua_literal(resource)}\n"
              f"local hs = dofile({json.dumps(str(HEALTH))})\n"
              "io.write(hs.status, '\\n', hs.message or '')\n")
    out = subprocess.run([lua, "-"], input=script, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status, _, message = out.stdout.partition("\n")
    return status, message


def pooler(status: dict[str, Any] | None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    resource = {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
                "metadata": {"name": "orders", "namespace": "shop", "generation": generation},
                "spec": {**SPEC, **spec}}
    if status is not None:
        resource["status"] = status
    return resource


def applied() -> Outcome:
    return Outcome("Applied", "config applied", config_hash="a", restart_hash="b", pool_size=20, budget=40)


def deployment(ready: int, updated: int, conditions: tuple = ()) -> dict[str, Any]:
    return {"status": {"replicas": 2, "readyReplicas": ready, "updatedReplicas": updated,
                       "conditions": list(conditions)}}


def status_of(outcome: Outcome, dep: dict[str, Any] | None, spec: dict[str, Any] | None = None,
              generation: int = 1) -> dict[str, Any]:
    return compute_status(None, generation=generation, spec=spec or SPEC, outcome=outcome, deployment=dep,
                          deployment_known=True, now=NOW)


def test_every_replica_ready_is_healthy():
    status, message = health(pooler(status_of(applied(), deployment(2, 2))))
    assert status == "Healthy" and "2/2 pooler pods are ready" in message


def test_a_status_of_an_older_generation_is_progressing():
    ready = status_of(applied(), deployment(2, 2), generation=3)
    status, message = health(pooler(ready, generation=4))
    assert status == "Progressing" and "generation 4" in message


@pytest.mark.parametrize("status", [None, {}, {"conditions": []}], ids=["no-status", "empty", "no-conditions"])
def test_an_empty_status_is_progressing(status):
    assert health(pooler(status))[0] == "Progressing"


def test_pods_coming_up_or_rolling_are_progressing():
    assert health(pooler(status_of(applied(), deployment(1, 2))))[0] == "Progressing"
    status, message = health(pooler(status_of(applied(), deployment(2, 1))))
    assert status == "Progressing" and "RollingOut" in message


def test_an_invalid_spec_is_degraded_with_what_to_fix():
    broken = status_of(Outcome("SecretNotFound", "Secret shop/users not found"), None)
    status, message = health(pooler(broken))
    assert status == "Degraded" and message == "SecretNotFound: Secret shop/users not found"


def test_a_stuck_rollout_is_degraded():
    stuck = deployment(1, 1, ({"type": "Progressing", "status": "False", "message": "deadline exceeded"},))
    status, message = health(pooler(status_of(applied(), stuck)))
    assert status == "Degraded" and "RolloutStuck" in message


def test_a_misconfigured_autotuner_is_degraded_and_a_holding_one_healthy():
    spec = {**SPEC, "autotune": {"enabled": True}}
    misconfigured = Outcome("Applied", "ok", config_hash="a", restart_hash="b", pool_size=20,
                            autotune_problems=("postgresSecret is required",))
    status, message = health(pooler(status_of(misconfigured, deployment(2, 2), spec), autotune={"enabled": True}))
    assert status == "Degraded" and "postgresSecret is required" in message
    holding = status_of(applied(), deployment(2, 2), spec)
    holding["conditions"] = set_condition(holding["conditions"], "Autotuned", "False", "Holding",
                                          "holding: cpu missing", 1, NOW)
    status, message = health(pooler(holding))
    assert status == "Healthy" and "holding: cpu missing" in message


def test_a_paused_pooler_is_suspended():
    paused = status_of(Outcome("Paused", "spec.paused is true"), deployment(2, 2), {**SPEC, "paused": True})
    status, message = health(pooler(paused, paused=True))
    assert status == "Suspended" and "paused" in message


def test_readme_says_where_argocd_takes_the_check():
    readme = (ROOT / "README.md").read_text()
    assert "resource.customizations.health.maitred.dev_PostgresPooler" in readme
    assert "--rawfile lua charts/maitred/files/health.lua" in readme
