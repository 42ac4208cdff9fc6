"""One measured run: a fresh maitred pooler per tier, all at one fixed pool size (or under one `maitred
autotune`), the sampler, and pgbench through every phase of the workload in turn, the tiers' loads at the
same time. The run's record is plain data (JSON-ready)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from maitred.local.postgres import LocalPostgres

from .. import pgbench, targets
from . import pgcpu, sampler
from .workload import Load, Phase, Plan


@dataclass
class ConsolePooler(targets.Maitred):
    """maitred whose admin console lets the benchmark's user in: the sampler reads it, the autotuner sets it."""

    def config(self, settings, run_dir):
        out = super().config(settings, run_dir)
        out["pgbouncer"]["admin_users"] = targets.USER
        return out


def console_dsn(port: int) -> str:
    return f"postgresql://{targets.USER}:{targets.PASSWORD}@{targets.HOST}:{port}/pgbouncer"


class Autotuner:
    """`maitred autotune` for the poolers of a run, as a child process; every line it prints is kept with its
    time."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "Autotuner":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                                     preexec_fn=targets.die_with_parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)


def autotune_argv(plan: Plan, pooler_ports: list[int], pg: LocalPostgres, prometheus_url: str, cpu_query: str
                  ) -> list[str]:
    """One `maitred autotune` for every tier of a run (a --pooler each), with the plan's interval, bounds and
    headroom."""
    poolers = [arg for port in pooler_ports for arg in ("--pooler", console_dsn(port))]
    return [sys.executable, "-m", "maitred.cli", "autotune", *poolers,
            "--postgres", pg.dsn(), "--prometheus", prometheus_url, "--cpu-query", cpu_query,
            "--interval", f"{plan.interval:g}", "--min-pool-size", str(plan.min_pool_size),
            "--max-pool-size", str(plan.max_pool_size), "--headroom", str(plan.headroom)]


def _load(load: Load, ep: targets.Endpoint, plan: Plan, seconds: int, folder: str
          ) -> tuple[dict, list[tuple[float, int]]]:
    """One tier's pgbench through one phase; its record, and its transactions as (end time, latency µs)."""
    record = {"clients": load.clients, "sql": load.sql}
    try:
        res = pgbench.run(ep, clients=load.clients, threads=plan.threads, duration=seconds,
                          log_latencies=True, script=load.script(folder))
    except pgbench.PgbenchFailed as exc:
        return dict(record, status="failed", reason=str(exc), transactions=None, tps=None, p99_ms=None), []
    return dict(record, status="ok", transactions=res.transactions, tps=res.tps, p99_ms=res.latency_p99_ms
                ), res.completions


def _phase(phase: Phase, eps: dict[str, targets.Endpoint], plan: Plan, folder: str
           ) -> tuple[dict, dict[str, list[tuple[float, int]]]]:
    """Run one phase, every tier's load at the same time (a pgbench each, in threads); its record with per-tier
    and total figures, and each tier's transactions as (end time, latency µs)."""
    record = {"name": phase.name, "start": time.time()}
    if not phase.loads:
        time.sleep(phase.seconds)
        record.update(end=time.time(), status="ok", transactions=0, tps=None, p99_ms=None, tiers={})
        return record, {}
    results: dict[str, tuple[dict, list]] = {}
    threads = [threading.Thread(target=lambda x=x: results.__setitem__(
        x.tier, _load(x, eps[x.tier], plan, phase.seconds, folder)), name=f"pgbench-{x.tier}")
        for x in phase.loads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tiers = {x.tier: results[x.tier][0] for x in phase.loads}
    done = [c for _, completions in results.values() for c in completions]
    failed = next((f"{tier}: {r['reason']}" for tier, r in tiers.items() if r["status"] != "ok"), None)
    record.update(end=time.time(), tiers=tiers)
    if failed:
        record.update(status="failed", reason=failed, transactions=None, tps=None, p99_ms=None)
    else:
        record.update(status="ok", transactions=sum(r["transactions"] for r in tiers.values()),
                      tps=sum(r["tps"] for r in tiers.values()),
                      p99_ms=pgbench.percentile([us for _, us in done], 99) / 1000 if done else None)
    return record, {tier: r[1] for tier, r in results.items()}


def per_second(done: list[tuple[float, int]], t0: float, seconds: int) -> list[int]:
    """Transactions completed in each whole second after `t0`."""
    counts = [0] * seconds
    for end, _ in done:
        i = int(end - t0)
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


def measure(pg: LocalPostgres, plan: Plan, folder: str, *, size: int | None = None,
            autotune: Callable[[list[int]], list[str]] | None = None) -> dict:
    """One run through every phase, with a fresh pooler per tier (same PostgreSQL, same settings): every tier
    at the fixed pool `size`, or from plan.min_pool_size under the one autotuner that `autotune(pooler ports)`
    gives the command line of. Its record: phases (per tier and in total), totals and p99 over every tier,
    budget violations, the sampled series, the autotuner's lines."""
    label = "autotuned" if autotune else f"static {size}"
    settings = targets.PoolSettings(pool_size=plan.min_pool_size if autotune else size,
                                    max_client_conn=plan.max_clients + 100, auth_type="scram-sha-256")
    record: dict = {"label": label, "size": size, "tiers": list(plan.tiers), "status": "ok", "phases": [],
                    "decisions": []}
    done: dict[str, list[tuple[float, int]]] = {tier: [] for tier in plan.tiers}
    try:
        with contextlib.ExitStack() as stack:
            poolers = {tier: ConsolePooler(pg) for tier in plan.tiers}
            eps = {tier: stack.enter_context(pooler.serve(settings)) for tier, pooler in poolers.items()}
            record["consoles"] = {tier: f"{ep.host}:{ep.port}" for tier, ep in eps.items()}
            series = stack.enter_context(sampler.Sampler(
                consoles={tier: (ep.host, ep.port, ep.user, ep.password) for tier, ep in eps.items()},
                postgres=(targets.HOST, pg.port), postmaster=pgcpu.postmaster_pid(pg.datadir),
                database=targets.DATABASE, pooler_user=targets.USER, every=plan.sample_every))
            tuner = stack.enter_context(_autotuner(autotune and autotune([ep.port for ep in eps.values()]),
                                                   poolers[plan.tiers[0]].env()))
            record["t0"] = time.time()
            for phase in plan.phases:
                phase_record, phase_done = _phase(phase, eps, plan, folder)
                record["phases"].append(phase_record)
                for tier, completions in phase_done.items():
                    done[tier] += completions
                if tuner is not None and tuner.exited() is not None:
                    record.update(status="failed", reason=f"maitred autotune exited with {tuner.exited()}: "
                                  + " / ".join(line for _, line in tuner.lines[-5:]))
                    break
            record["end"] = time.time()
    except targets.TargetError as exc:
        return dict(record, status="failed", reason=str(exc))
    if tuner is not None:
        record["decisions"] = tuner.lines
    limit = sampler.connection_limit(series.settings, plan.headroom) if series.settings else None
    failed = [p for p in record["phases"] if p["status"] != "ok"]
    if failed and record["status"] == "ok":
        record.update(status="failed", reason=f"{failed[0]['name']}: {failed[0]['reason']}")
    backends = [s.client_backends for s in series.samples if s.client_backends is not None]
    every = [c for completions in done.values() for c in completions]
    seconds = int(record["end"] - record["t0"]) + 1
    record.update(
        total_xacts=None if failed else sum(p["transactions"] for p in record["phases"]),
        p99_ms=pgbench.percentile([us for _, us in every], 99) / 1000 if every else None,
        limit=limit,
        violations=sampler.violations(series.samples, limit) if limit is not None else None,
        max_client_backends=max(backends, default=None),
        samples=sampler.as_dicts(series.samples),
        sampler_errors=series.errors[:20],
        per_second=per_second(every, record["t0"], seconds),
        tier_per_second={tier: per_second(completions, record["t0"], seconds) for tier, completions in done.items()},
    )
    return record


@contextlib.contextmanager
def _autotuner(argv: list[str] | None, env: dict[str, str]) -> Iterator[Autotuner | None]:
    """`maitred autotune` while an autotuned run lasts (this checkout first on its PYTHONPATH)."""
    if argv is None:
        yield None
        return
    with Autotuner(argv, env) as tuner:
        yield tuner
