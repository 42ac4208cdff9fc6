"""Run pgbench against an endpoint and read what it says: throughput and mean latency from its summary,
the 99th-percentile latency from its per-transaction logs, and why it failed when it did."""
from __future__ import annotations

import glob
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from .targets import Endpoint, client_env

_SUMMARY = {
    "tps": re.compile(r"^tps = ([0-9.]+)", re.M),
    "latency_mean_ms": re.compile(r"^latency average = ([0-9.]+) ms", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
}
_ABORTED = re.compile(r"client \d+ .*aborted[^:]*: (.*)$")


class PgbenchFailed(RuntimeError):
    """pgbench ran but the run does not count: a client aborted, a transaction failed, or it hung."""


@dataclass
class PgbenchResult:
    tps: float
    latency_mean_ms: float
    latency_p99_ms: float | None
    transactions: int
    completions: list[tuple[float, int]] = field(default_factory=list)  # (end time, latency µs), with --log


def parse_summary(stdout: str) -> dict[str, float]:
    """The numbers of pgbench's closing summary that are present in `stdout`."""
    return {key: float(m.group(1)) for key, rx in _SUMMARY.items() if (m := rx.search(stdout))}


def completions(paths: list[str]) -> list[tuple[float, int]]:
    """(end time as Unix seconds, latency µs) of every successful transaction in pgbench --log files."""
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                cols = line.split()
                if len(cols) > 5 and cols[2].isdigit():
                    out.append((int(cols[4]) + int(cols[5]) / 1e6, int(cols[2])))
    return out


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)])


def failure_reason(returncode: int, stdout: str, stderr: str) -> str | None:
    """Why a finished pgbench run does not count, or None when it does."""
    summary = parse_summary(stdout)
    errors = [line.strip() for line in stderr.splitlines() if "error" in line.lower()]
    aborted = [m.group(1) for line in errors if (m := _ABORTED.search(line))]
    if aborted:
        return f"{len(aborted)} client(s) aborted, first: {' '.join(aborted[0].split())}"
    if returncode != 0:
        return (errors[0] if errors else f"pgbench exited with {returncode}: {stderr.strip()[-300:]}")
    if summary.get("failed"):
        return f"{int(summary['failed'])} failed transactions" + (f": {errors[0]}" if errors else "")
    if "tps" not in summary or not summary.get("transactions"):
        return "pgbench printed no throughput"
    return None


def run(endpoint: Endpoint, *, clients: int, threads: int, duration: int = 0, transactions: int | None = None,
        connect_per_tx: bool = False, prepared: bool = False, log_latencies: bool = False,
        script: str | None = None, slack: float = 60.0, sslmode: str = "disable") -> PgbenchResult:
    """pgbench for `duration` seconds, or for `transactions` per client when given, select-only or the custom
    `script` file; killed after `duration + slack` seconds at the latest."""
    if transactions is None and duration < 1:
        raise ValueError("pgbench.run needs a duration or a count of transactions")
    length = ["-t", str(transactions)] if transactions is not None else ["-T", str(duration)]
    argv = ["pgbench", "-n", *(["-f", script] if script else ["-S"]), "-c", str(clients),
            "-j", str(min(threads, clients)), *length,
            "-h", endpoint.host, "-p", str(endpoint.port), "-U", endpoint.user]
    if connect_per_tx:
        argv.append("-C")
    if prepared:
        argv += ["-M", "prepared"]
    with tempfile.TemporaryDirectory(prefix="maitred-pgbench-") as log_dir:
        prefix = os.path.join(log_dir, "tx")
        if log_latencies:
            argv += ["--log", f"--log-prefix={prefix}"]
        argv.append(endpoint.database)
        try:
            proc = subprocess.run(argv, env=dict(client_env(), PGSSLMODE=sslmode), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE,
                                  text=True, timeout=duration + slack)
        except subprocess.TimeoutExpired as exc:
            raise PgbenchFailed(f"pgbench still running {duration + slack:.0f} s after start; killed") from exc
        reason = failure_reason(proc.returncode, proc.stdout, proc.stderr)
        if reason:
            raise PgbenchFailed(reason)
        summary = parse_summary(proc.stdout)
        p99, done = None, []
        if log_latencies:
            done = completions(glob.glob(prefix + ".*"))
            if not done:
                raise PgbenchFailed("pgbench wrote no per-transaction log")
            p99 = percentile([us for _, us in done], 99) / 1000
    return PgbenchResult(tps=summary["tps"], latency_mean_ms=summary["latency_mean_ms"], latency_p99_ms=p99,
                         transactions=int(summary["transactions"]), completions=done)
