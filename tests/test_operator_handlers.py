"""The kopf wiring: which events the operator reacts to, no finalizer, and how it picks its namespaces."""
from __future__ import annotations

import kopf
import pytest

import pooler_operator.handlers  # noqa: F401  (registers the handlers)
from pooler_operator.main import watched_namespaces


def handlers():
    registry = kopf.get_default_registry()
    for kind in ("_changing", "_watching", "_indexing"):
        yield from getattr(registry, kind)._handlers


def test_no_handler_puts_a_finalizer_on_poolers():
    assert not any(getattr(h, "requires_finalizer", False) for h in handlers())


def test_poolers_reconcile_on_create_update_and_resume_and_secrets_and_owned_objects_are_watched():
    reconcilers = [h for h in handlers() if h.id == "reconcile"]
    assert {h.reason.value for h in reconcilers if h.reason} == {"create", "update"}
    assert any(h.initial for h in reconcilers), "no resume handler"
    watched = {(h.selector.group, h.selector.any_name) for h in handlers()}
    for resource in (("", "secrets"), ("", "configmaps"), ("", "services"), ("", "serviceaccounts"),
                     ("apps", "deployments"), ("policy", "poddisruptionbudgets")):
        assert resource in watched, resource


@pytest.mark.parametrize("flags,env,expected", [
    ((["a", "b"], False), "", ["a", "b"]),
    ((None, False), "x, y", ["x", "y"]),
    ((None, False), "", []),
    ((["a"], True), "x", []),
])
def test_watched_namespaces_from_flags_then_environment(monkeypatch, flags, env, expected):
    monkeypatch.setenv("MAITRED_WATCH_NAMESPACE", env)
    assert watched_namespaces(*flags) == expected
