"""The operator's side of the autotuner: tiers from a resource and its pods, status from TierReports, the
autotuned size in the rendered config, and the one tick loop that takes every registered tier together."""
from __future__ import annotations

import asyncio
import base64
import configparser
from typing import Any

import pytest

from pooler_operator.api import parse_pooler
from pooler_operator.autotune.loop import TierReport
from pooler_operator.autotune.model import Allocation, Decision, TierSignals
from pooler_operator.autotune_runner import AutotuneRunner, expected_processes, pod_selector, tier_target
from pooler_operator.inject import sidecar_container
from pooler_operator.objects import CONSOLE_USER, render
from pooler_operator.reconcile import status_patch
from pooler_operator.status import APPLIED, Outcome, compute_status, tier_status

SECRETS = {"users": {"app": "app-secret"}, "monitor": {"username": "mon", "password": "p@ss word"},
           "prom": {"token": "tok\n"}}


def pooler(autotune: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **spec: Any):
    body = {"apiVersion": "maitred.dev/v1alpha1", "kind": "PostgresPooler",
            "metadata": {"name": "shop", "namespace": "team", "uid": "u1"},
            "spec": {"database": {"host": "db.team", "port": 5433, "dbname": "shop"},
                     "auth": {"usersSecret": {"name": "users"}}, "replicas": 3,
                     "autotune": {"enabled": True, "postgresSecret": {"name": "monitor"}, "minPoolSize": 4,
                                  "maxPoolSize": 40, **(autotune or {})}, **spec},
            "status": status or {}}
    return parse_pooler(body)


def pod(name: str, ip: str | None, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team"},
            "spec": {"containers": [{"name": "pooler", "ports": [{"name": "postgres", "containerPort": 5432}]}]},
            "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


# -- tier targets -------------------------------------------------------------------------------------------


def test_tier_reaches_running_pods_on_their_ips_and_counts_the_rest_at_their_cap():
    p = pooler(pooler={"workers": 2})
    pods = [pod("a", "10.0.0.1"), pod("b", None, "Pending"), pod("c", "10.0.0.3"), pod("d", "10.0.0.4", "Failed")]
    target = tier_target(p, pods, SECRETS, "console-pw")
    assert [(c.host, c.port, c.user, c.password) for c in target.consoles] == [
        ("10.0.0.1", 5432, CONSOLE_USER, "console-pw"), ("10.0.0.3", 5432, CONSOLE_USER, "console-pw")]
    assert target.consoles[0].label == "team/a/10.0.0.1:5432"
    assert target.tier == "team/shop"
    assert target.expected_processes == 3 * 2          # replicas beat the 3 live pods seen: 3 x workers
    assert expected_processes(p, pods + [pod("e", "10.0.0.5"), pod("f", None, "Pending")]) == 5 * 2


def test_a_pod_whose_port_is_mapped_elsewhere_is_reached_where_its_annotation_says():
    mapped = pod("a", "10.0.0.1")
    mapped["metadata"]["annotations"] = {"maitred.dev/console-address": "127.0.0.1:40123"}
    target = tier_target(pooler(), [mapped], SECRETS, "pw")
    assert [(c.host, c.port) for c in target.consoles] == [("127.0.0.1", 40123)]


def test_a_sidecar_tier_is_every_injected_pod_reached_on_the_sidecars_port():
    p = pooler(mode="sidecar", pooler={"workers": 2})
    assert pod_selector(p) == "maitred.dev/pooler=shop"
    app = pod("web-1", "10.0.0.7")
    app["spec"]["containers"][0]["ports"][0]["containerPort"] = 9999   # the app's own port named postgres
    app["spec"]["initContainers"] = [sidecar_container(p, "maitred:1")]
    target = tier_target(p, [app, pod("web-2", None, "Pending")], SECRETS, "pw")
    assert [(c.host, c.port) for c in target.consoles] == [("10.0.0.7", 5432)]
    assert target.expected_processes == 2 * 2          # the injected pods, not spec.replicas (3)
    assert pod_selector(pooler()) == "app.kubernetes.io/name=maitred,maitred.dev/pooler=shop"


def test_tier_carries_the_spec_bounds_credentials_and_dry_run():
    p = pooler({"budgetHeadroom": 7, "dryRun": True,
                "prometheus": {"url": "http://prom:9090", "credentialsSecret": {"name": "prom"}}})
    target = tier_target(p, [], SECRETS, "pw")
    assert target.postgres.dsn == "postgresql://mon:p%40ss%20word@db.team:5433/postgres"
    assert target.prometheus.url == "http://prom:9090"
    assert target.prometheus.headers == {"Authorization": "Bearer tok"}
    assert (target.params.min_pool_size, target.params.max_pool_size) == (4, 40)
    assert target.headroom == 7 and target.dry_run is True
    basic = {**SECRETS, "prom": {"username": "u", "password": "p"}}
    headers = tier_target(p, [], basic, "pw").prometheus.headers
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


def test_tier_without_monitoring_credentials_is_not_tuned():
    with pytest.raises(KeyError):
        tier_target(pooler({"postgresSecret": None}), [], SECRETS, "pw")
    with pytest.raises(KeyError):
        tier_target(pooler(), [], {"users": {}}, "pw")


# -- status from reports ------------------------------------------------------------------------------------


def signals(**changes: Any) -> TierSignals:
    base = dict(processes=3, reachable=3, pool_size=10, pools=1, cl_waiting=0, cl_active=4, sv_active=4,
                sv_idle=0, maxwait_s=0.0, xact_per_s=100.0, avg_xact_time_ms=1.23456, avg_wait_time_ms=None,
                cpu=0.5)
    return TierSignals(**{**base, **changes})


def report(from_size=10, to_size=20, applied=True, sig: TierSignals | None = None, errors=(), reason="grow: x"):
    sig = sig if sig is not None else signals(cl_waiting=12)
    direction = "grow" if to_size > from_size else "shrink" if to_size < from_size else "hold"
    return TierReport("team/shop", 1_700_000_000.0, sig, Decision(to_size, reason, direction),
                      Allocation("team/shop", to_size, to_size, to_size * 3, False), 60, "7301", from_size,
                      to_size, applied, tuple(errors))


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_resize_is_tuning_in_status_and_one_pool_resized_event():
    status, events = tier_status({"observedGeneration": 4, "poolSize": 10, "poolSizeSource": "spec"}, report(),
                                 dry_run=False, now="t")
    auto = status["autotune"]
    assert (auto["state"], auto["poolSize"], auto["perProcessCap"], auto["budget"], auto["share"],
            auto["server"]) == ("Tuning", 20, 20, 60, 60, "7301")
    assert auto["lastDecision"]["from"] == 10 and auto["lastDecision"]["to"] == 20
    assert auto["lastDecision"]["reason"] == "grow: x" and auto["lastDecision"]["time"] == "2023-11-14T22:13:20Z"
    assert auto["lastDecision"]["signals"]["clWaiting"] == 12
    assert auto["lastDecision"]["signals"]["avgXactTimeMs"] == 1.235
    assert "avgWaitTimeMs" not in auto["lastDecision"]["signals"]
    assert (status["poolSize"], status["poolSizeSource"]) == (20, "autotune")
    autotuned = cond(status, "Autotuned")
    assert (autotuned["status"], autotuned["reason"], autotuned["observedGeneration"]) == ("True", "Tuning", 4)
    assert events == [("Normal", "PoolResized", "resized the pool 10 -> 20: grow: x")]


def test_a_missing_signal_holds_with_why_and_warns_once():
    held = report(10, 10, applied=False, sig=signals(cpu=None, missing=("cpu",)), reason="hold: cpu missing")
    status, events = tier_status({}, held, dry_run=False, now="t")
    assert status["autotune"]["state"] == "Holding" and status["autotune"]["missingSignals"] == ["cpu"]
    autotuned = cond(status, "Autotuned")
    assert (autotuned["status"], autotuned["reason"]) == ("False", "Holding")
    assert "cpu" in autotuned["message"]
    assert events == [("Warning", "SignalMissing", "holding the pool size: cpu")]
    again, events = tier_status(status, held, dry_run=False, now="t")
    assert events == []
    recovered, events = tier_status(again, report(10, 10, reason="hold: steady"), dry_run=False, now="t")
    assert recovered["autotune"]["state"] == "Tuning" and "missingSignals" not in recovered["autotune"]
    assert status_patch(again, recovered)["autotune"]["missingSignals"] is None


def test_no_signals_at_all_is_holding():
    blind = TierReport("team/shop", 1.0, None, Decision(0, "hold: postgres unreachable", "hold"), None, None,
                       None, None, None, False, ("postgres: connection refused",))
    status, events = tier_status({}, blind, dry_run=False, now="t")
    assert status["autotune"]["state"] == "Holding"
    assert "postgres: connection refused" in status["autotune"]["missingSignals"]
    assert [e[1] for e in events] == ["SignalMissing"]


def test_dry_run_reports_the_wish_but_the_pool_size_stays_the_specs():
    status, events = tier_status({"poolSize": 10, "poolSizeSource": "spec"}, report(applied=False),
                                 dry_run=True, now="t")
    assert (status["poolSize"], status["poolSizeSource"]) == (10, "spec")
    assert status["autotune"]["poolSize"] == 20 and status["autotune"]["message"].startswith("dry run")
    assert events == [("Normal", "PoolResized", "would resize the pool 10 -> 20: grow: x")]


def test_a_failed_resize_keeps_the_old_size_and_warns():
    status, events = tier_status({}, report(applied=False, errors=("SET failed: refused",)), dry_run=False,
                                 now="t")
    assert status["autotune"]["poolSize"] == 10
    assert events == [("Warning", "PoolResizeFailed", "the pool stays 10 (wanted 20): SET failed: refused")]


def test_a_reconcile_keeps_what_the_loop_reported():
    after_tick, _ = tier_status({}, report(), dry_run=False, now="t")
    spec = {"autotune": {"enabled": True}}
    outcome = Outcome(APPLIED, "ok", pool_size=20, pool_size_source="autotune")
    status = compute_status(after_tick, generation=2, spec=spec, outcome=outcome, now="t2")
    assert status["autotune"] == after_tick["autotune"]
    assert cond(status, "Autotuned")["reason"] == "Tuning" and status["poolSizeSource"] == "autotune"
    broken = compute_status(status, generation=3, spec=spec, now="t3",
                            outcome=Outcome(APPLIED, "ok", pool_size=20, autotune_problems=("no secret",)))
    assert broken["autotune"]["state"] == "Misconfigured" and broken["autotune"]["poolSize"] == 20
    assert (cond(broken, "Autotuned")["status"], cond(broken, "Autotuned")["reason"]) == ("False", "Misconfigured")


# -- the rendered config ------------------------------------------------------------------------------------


def ini_of(rendered) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(rendered.ini)
    return parser


TUNED = {"autotune": {"state": "Tuning", "poolSize": 17, "perProcessCap": 17, "share": 51}}


def test_the_config_carries_the_autotuned_size_so_a_reconcile_never_reverts_it():
    r = render(pooler(status=TUNED, pool={"defaultPoolSize": 30}), SECRETS, image="img", console_password="pw")
    pgb = ini_of(r)["pgbouncer"]
    assert (pgb["default_pool_size"], pgb["max_db_connections"]) == ("17", "17")
    assert r.pool_size == 17 and r.pool_size_source == "autotune" and r.budget == 17 * 3
    spec_owned = render(pooler({"dryRun": True}, status=TUNED, pool={"defaultPoolSize": 30}), SECRETS,
                        image="img", console_password="pw")
    assert ini_of(spec_owned)["pgbouncer"]["default_pool_size"] == "30" and spec_owned.pool_size_source == "spec"


def test_more_replicas_get_a_smaller_cap_so_the_tier_stays_within_its_share():
    r = render(pooler(status=TUNED, replicas=5), SECRETS, image="img", console_password="pw")
    pgb = ini_of(r)["pgbouncer"]
    assert int(pgb["max_db_connections"]) * 5 <= 51 and int(pgb["default_pool_size"]) <= int(pgb["max_db_connections"])


def test_the_console_user_is_an_admin_with_a_password_in_the_operators_own_secret():
    r = render(pooler(pooler={"parameters": {"admin_users": "ops"}}), SECRETS, image="img",
               console_password="s3cret")
    assert ini_of(r)["pgbouncer"]["admin_users"] == f"ops,{CONSOLE_USER}"
    auth = base64.b64decode(r.by_kind("Secret")["data"]["userlist.txt"]).decode()
    assert f'"{CONSOLE_USER}" "s3cret"' in auth
    console = next(m for m in r.manifests if m["metadata"]["name"] == "shop-autotune")
    assert base64.b64decode(console["data"]["password"]).decode() == "s3cret"
    assert "s3cret" not in r.ini
    off = render(pooler({"enabled": False}), SECRETS, image="img", console_password="s3cret")
    assert "admin_users" not in ini_of(off)["pgbouncer"]
    assert all(m["metadata"]["name"] != "shop-autotune" for m in off.manifests)


# -- the tick loop ------------------------------------------------------------------------------------------


class RecordingAutotuner:
    """Stands in for the loop to see what the runner hands it; the loop itself has its own tests."""

    def __init__(self):
        self.ticks: list[list[str]] = []

    async def tick(self, tiers):
        self.ticks.append(sorted((t.tier, t.due) for t in tiers))
        await asyncio.sleep(0.05)
        return []


def body(name: str, interval: int) -> dict[str, Any]:
    p = pooler({"intervalSeconds": interval})
    return {"metadata": {"name": name, "namespace": "team"}, "spec": p.spec.model_dump(by_alias=True)}


def test_every_registered_tier_goes_into_one_tick_deciding_at_its_own_interval_and_a_stopped_one_into_none():
    async def scenario():
        now = [0.0]
        autotuner = RecordingAutotuner()
        runner = AutotuneRunner(read=lambda p: ([], SECRETS, "pw"), publish=lambda p, r: None,
                                autotuner=autotuner, clock=lambda: now[0])
        runner.register(body("a", 5))
        runner.register(body("b", 60))
        await runner.tick_once()
        assert autotuner.ticks == [[("team/a", True), ("team/b", True)]]
        assert runner.tiers["team/a"].next_due == 5 and runner.tiers["team/b"].next_due == 60
        now[0] = 5.0
        tick = asyncio.create_task(runner.tick_once())
        await asyncio.sleep(0.01)
        await runner.unregister("team/a")      # returns only once the tick in flight is over
        assert tick.done()
        assert autotuner.ticks[-1] == [("team/a", True), ("team/b", False)]   # b is in the budget, not due
        assert runner.tiers["team/b"].next_due == 60
        now[0] = 10.0
        await runner.tick_once()                 # nobody due: no tick at all
        assert len(autotuner.ticks) == 2
        now[0] = 60.0
        await runner.tick_once()
        assert autotuner.ticks[-1] == [("team/b", True)]
        await runner.unregister("team/b")
        await asyncio.sleep(1.1)
        assert runner._task.done()               # no tier left: the loop has ended
    asyncio.run(scenario())
