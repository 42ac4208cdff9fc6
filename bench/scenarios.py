"""The scenarios, and the order they run in: every round runs each target in turn (direct, PgBouncer,
maitred, direct, PgBouncer, maitred, …) so that the machine's drift hits all of them alike."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from . import conntrack, idle_clients, pgbench, processes
from .targets import Endpoint, PoolSettings, TargetError
from .tls import TlsFiles


@dataclass(frozen=True)
class Scale:
    rounds: int = 3
    duration: int = 15
    threads: int = 2
    pool_size: int = 10
    steady_clients: int = 50
    churn_clients: int = 20
    prepared_clients: int = 50
    idle_clients: int = 10_000

    @property
    def max_client_conn(self) -> int:
        return max(self.idle_clients, self.steady_clients, self.churn_clients, self.prepared_clients) + 100


FULL = Scale()
QUICK = Scale(rounds=1, duration=1, pool_size=2, steady_clients=4, churn_clients=2, prepared_clients=4,
              idle_clients=200)


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    better: str  # "higher" or "lower"


@dataclass(frozen=True)
class Scenario:
    id: str
    name: str
    load: str  # scenarios with the same load and auth share one measured run (S5 is read off S1's run)
    metrics: tuple[Metric, ...]
    title: Callable[[Scale], str]
    auth: str | None = None  # the poolers' auth_type for this scenario; None: the run's --auth

    def auth_type(self, default: str) -> str:
        return self.auth or default


TPS = Metric("tps", "tx/s", "higher")
SCENARIOS = {s.id: s for s in (
    Scenario("S1", "steady", "steady",
             (TPS, Metric("latency_mean_ms", "ms", "lower"), Metric("latency_p99_ms", "ms", "lower")),
             lambda s: f"pgbench -S -c {s.steady_clients} -j {s.threads}, pool of {s.pool_size}"),
    # A login costs the connect path and, with SCRAM, a PBKDF2-keyed exchange on both sides: trust shows the
    # former alone, SCRAM what a user of SCRAM gets.
    Scenario("S2", "churn, trust", "churn", (TPS,),
             lambda s: f"pgbench -S -C -c {s.churn_clients} -j {s.threads}, a connection per transaction, "
                       "auth_type trust", auth="trust"),
    Scenario("S2-scram", "churn", "churn", (TPS,),
             lambda s: f"pgbench -S -C -c {s.churn_clients} -j {s.threads}, a connection per transaction, "
                       "auth_type scram-sha-256", auth="scram-sha-256"),
    Scenario("S3", "prepared", "prepared", (TPS,),
             lambda s: f"pgbench -S -M prepared -c {s.prepared_clients} -j {s.threads}, "
                       f"pool of {s.pool_size}"),
    Scenario("S4", "idle", "idle", (Metric("rss_kib_per_client", "KiB", "lower"),),
             lambda s: f"{s.idle_clients:,} idle logged-in clients, pooler RSS per client"),
    Scenario("S5", "cost", "steady", (Metric("cpu_ms_per_1000_tx", "ms CPU", "lower"),),
             lambda s: "pooler CPU time (user + system) per 1,000 transactions of S1"),
    Scenario("S6", "tls", "tls", (TPS,),
             lambda s: f"pgbench -S -c {s.steady_clients} -j {s.threads} with TLS on both sides of the pooler "
                       "(sslmode=require, server_tls_sslmode=require), where one PgBouncer process is CPU-bound"),
    Scenario("S7", "tls cost", "tls", (Metric("cpu_ms_per_1000_tx", "ms CPU", "lower"),),
             lambda s: "pooler CPU time (user + system, every process) per 1,000 transactions of S6"),
)}


def ok(**values: float) -> dict:
    return {"status": "ok", "values": values}


def failed(reason: str) -> dict:
    return {"status": "failed", "reason": reason}


def not_applicable(reason: str) -> dict:
    return {"status": "n/a", "reason": reason}


# -- one measured run per load, returning an outcome per scenario ---------------------------------------


def _measured(ep: Endpoint, **pgbench_args) -> tuple[pgbench.PgbenchResult, dict]:
    """A pgbench run, and the CPU the pooler's processes spent per 1,000 of its transactions."""
    tree = processes.process_tree(ep.pid) if ep.pid else []
    cpu_before = processes.cpu_seconds(tree)
    res = pgbench.run(ep, **pgbench_args)
    if ep.pid:
        # workers started since are counted from zero: they did not exist at `cpu_before`
        cpu = processes.cpu_seconds(processes.process_tree(ep.pid)) - cpu_before
        cost = ok(cpu_ms_per_1000_tx=cpu * 1000 / res.transactions * 1000)
    else:
        cost = not_applicable("no pooler process")
    return res, cost


def _steady(ep: Endpoint, scale: Scale) -> dict[str, dict]:
    res, cost = _measured(ep, clients=scale.steady_clients, threads=scale.threads, duration=scale.duration,
                          log_latencies=True)
    return {"S1": ok(tps=res.tps, latency_mean_ms=res.latency_mean_ms, latency_p99_ms=res.latency_p99_ms),
            "S5": cost}


def _tls(ep: Endpoint, scale: Scale) -> dict[str, dict]:
    res, cost = _measured(ep, clients=scale.steady_clients, threads=scale.threads, duration=scale.duration,
                          sslmode="require")
    return {"S6": ok(tps=res.tps), "S7": cost}


def _of_load(load: str) -> list[str]:
    return [s.id for s in SCENARIOS.values() if s.load == load]


def _churn(ep: Endpoint, scale: Scale) -> dict[str, dict]:
    res = pgbench.run(ep, clients=scale.churn_clients, threads=scale.threads, duration=scale.duration,
                      connect_per_tx=True)
    return dict.fromkeys(_of_load("churn"), ok(tps=res.tps))     # run_load keeps those of this run's auth


def _prepared(ep: Endpoint, scale: Scale) -> dict[str, dict]:
    res = pgbench.run(ep, clients=scale.prepared_clients, threads=scale.threads, duration=scale.duration,
                      prepared=True)
    return {"S3": ok(tps=res.tps)}


def _idle(ep: Endpoint, scale: Scale) -> dict[str, dict]:
    per_client = idle_clients.rss_per_client(ep, scale.idle_clients, timeout=60 + scale.idle_clients / 20)
    return {"S4": ok(rss_kib_per_client=per_client / 1024)}


LOADS = {"steady": _steady, "churn": _churn, "prepared": _prepared, "idle": _idle, "tls": _tls}


def run_load(load: str, target, scale: Scale, auth_type: str, ids: list[str],
             tls: TlsFiles | None = None) -> dict[str, dict]:
    """One measured run of `load` on `target` with poolers of `auth_type`, started fresh; an outcome for each
    scenario of `ids` (those of that load and auth)."""
    reason = target.inapplicable(load, auth_type)
    if reason:
        return {sid: not_applicable(reason) for sid in ids}
    reason = target.unavailable()
    if reason:
        return {sid: failed(reason) for sid in ids}
    settings = PoolSettings(pool_size=scale.pool_size, max_client_conn=scale.max_client_conn, auth_type=auth_type,
                            tls=tls if load == "tls" else None)
    try:
        with target.serve(settings) as ep:
            dropped = conntrack.drops()
            outcomes = LOADS[load](ep, scale)
            dropped = conntrack.drops() - dropped
        if dropped:
            return {sid: failed(f"the kernel dropped {dropped} packet(s) for a full connection-tracking table "
                                f"(bench/conntrack.py): clients waited seconds to connect") for sid in ids}
        return {sid: outcomes[sid] for sid in ids}
    except (TargetError, pgbench.PgbenchFailed, idle_clients.IdleClientsFailed) as exc:
        return {sid: failed(str(exc)) for sid in ids}


def run(targets: list, scenario_ids: list[str], scale: Scale, auth_type: str,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        tls: TlsFiles | None = None) -> dict[str, dict[str, list[dict]]]:
    """results[scenario][target] = one outcome per round; `auth_type` is that of scenarios with none of their own;
    `tls`: the certificate S6 needs."""
    results: dict[str, dict[str, list[dict]]] = {sid: {t.name: [] for t in targets} for sid in scenario_ids}
    runs = list(dict.fromkeys((SCENARIOS[sid].load, SCENARIOS[sid].auth_type(auth_type)) for sid in scenario_ids))
    with conntrack.roomy_table(say):
        _run(targets, runs, scenario_ids, scale, auth_type, say, tls, results)
    return results


def _run(targets: list, runs: list[tuple[str, str]], scenario_ids: list[str], scale: Scale, auth_type: str,
         say: Callable[[str], None], tls: TlsFiles | None, results: dict[str, dict[str, list[dict]]]) -> None:
    for load, auth in runs:
        wanted = [sid for sid in scenario_ids if (SCENARIOS[sid].load, SCENARIOS[sid].auth_type(auth_type))
                  == (load, auth)]
        for round_no in range(1, scale.rounds + 1):
            for target in targets:
                outcomes = run_load(load, target, scale, auth, wanted, tls)
                for sid in wanted:
                    results[sid][target.name].append(outcomes[sid])
                    say(f"{sid} round {round_no}/{scale.rounds} {target.name}: {_brief(outcomes[sid])}")


def _brief(outcome: dict) -> str:
    if outcome["status"] == "ok":
        return ", ".join(f"{k}={v:.3g}" for k, v in outcome["values"].items())
    return f"{outcome['status']} ({outcome['reason'].splitlines()[0][:200]})"
