"""One measured run: a fresh maitred pooler at a fixed pool size (or under `maitred autotune`), the sampler,
and pgbench through every phase of the workload in turn. The run's record is plain data (JSON-ready)."""
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
from .workload import Phase, Plan


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
    """`maitred autotune` for one pooler, as a child process; every line it prints is kept with its time."""

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


def autotune_argv(plan: Plan, pooler_port: int, pg: LocalPostgres, prometheus_url: str, cpu_query: str
                  ) -> list[str]:
    """`maitred autotune` for the one pooler of a run, with the plan's interval, bounds and headroom."""
    return [sys.executable, "-m", "maitred.cli", "autotune", "--pooler", console_dsn(pooler_port),
            "--postgres", pg.dsn(), "--prometheus", prometheus_url, "--cpu-query", cpu_query,
            "--interval", f"{plan.interval:g}", "--min-pool-size", str(plan.min_pool_size),
            "--max-pool-size", str(plan.max_pool_size), "--headroom", str(plan.headroom)]


def _phase(phase: Phase, ep: targets.Endpoint, plan: Plan, folder: str) -> tuple[dict, list[tuple[float, int]]]:
    """Run one phase; its record, and its transactions as (end time, latency µs)."""
    record = {"name": phase.name, "clients": phase.clients, "start": time.time()}
    script = phase.script(folder)
    if script is None:
        time.sleep(phase.seconds)
        record.update(end=time.time(), status="ok", transactions=0, tps=None, p99_ms=None)
        return record, []
    try:
        res = pgbench.run(ep, clients=phase.clients, threads=plan.threads, duration=phase.seconds,
                          log_latencies=True, script=script)
    except pgbench.PgbenchFailed as exc:
        record.update(end=time.time(), status="failed", reason=str(exc), transactions=None, tps=None, p99_ms=None)
        return record, []
    record.update(end=time.time(), status="ok", transactions=res.transactions, tps=res.tps,
                  p99_ms=res.latency_p99_ms)
    return record, res.completions


def per_second(done: list[tuple[float, int]], t0: float, seconds: int) -> list[int]:
    """Transactions completed in each whole second after `t0`."""
    counts = [0] * seconds
    for end, _ in done:
        i = int(end - t0)
        if 0 <= i < seconds:
            counts[i] += 1
    return counts


def measure(pg: LocalPostgres, plan: Plan, folder: str, *, size: int | None = None,
            autotune: Callable[[int], list[str]] | None = None) -> dict:
    """One run through every phase: at the fixed pool `size`, or from plan.min_pool_size under the autotuner
    that `autotune(pooler_port)` gives the command line of. Its record: phases, totals, p99, budget
    violations, the sampled series, the autotuner's lines."""
    label = "autotuned" if autotune else f"static {size}"
    settings = targets.PoolSettings(pool_size=plan.min_pool_size if autotune else size,
                                    max_client_conn=plan.max_clients + 100, auth_type="scram-sha-256")
    record: dict = {"label": label, "size": size, "status": "ok", "phases": [], "decisions": []}
    done: list[tuple[float, int]] = []
    pooler = ConsolePooler(pg)
    try:
        with pooler.serve(settings) as ep, \
                sampler.Sampler(console=(ep.host, ep.port, ep.user, ep.password), postgres=(targets.HOST, pg.port),
                                postmaster=pgcpu.postmaster_pid(pg.datadir),
                                database=targets.DATABASE, pooler_user=targets.USER,
                                every=plan.sample_every) as series, \
                _autotuner(autotune and autotune(ep.port), pooler.env()) as tuner:
            record["t0"] = time.time()
            for phase in plan.phases:
                phase_record, phase_done = _phase(phase, ep, plan, folder)
                record["phases"].append(phase_record)
                done += phase_done
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
    record.update(
        total_xacts=None if failed else sum(p["transactions"] for p in record["phases"]),
        p99_ms=pgbench.percentile([us for _, us in done], 99) / 1000 if done else None,
        limit=limit,
        violations=sampler.violations(series.samples, limit) if limit is not None else None,
        max_client_backends=max(backends, default=None),
        samples=sampler.as_dicts(series.samples),
        sampler_errors=series.errors[:20],
        per_second=per_second(done, record["t0"], int(record["end"] - record["t0"]) + 1),
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
