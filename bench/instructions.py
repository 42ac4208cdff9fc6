"""`python3 -m bench instructions`: user-space instructions per S2 connection and per S1 transaction, counted by
callgrind, for PgBouncer, maitred and the uvloop floors.

On a shared, noisy machine the rates of one build move by 1.5x between rounds; an instruction count does not, so
it shows what a change to the connect path or the relay saves when timings cannot. It leaves out the kernel (the
system calls and the TCP stack), which the rates include, and it counts instructions, not cache misses.

Each target runs twice under callgrind, once for a short and once for a long run of the same load; the difference
divided by the difference in connections (or transactions) cancels start-up, the readiness probe and shutdown.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from . import pgbench, targets
from .targets import PoolSettings

VALGRIND = "valgrind"
START_TIMEOUT = 300.0      # a Python program starts some 50 times slower under callgrind
STOP_TIMEOUT = 300.0
PGBENCH_TIMEOUT = 900.0


@dataclasses.dataclass(frozen=True)
class Load:
    """A scenario's pgbench load with a count of transactions instead of a duration."""

    name: str
    unit: str            # what one count is: a connection (S2) or a transaction (S1)
    key: str             # the load's name in scenarios.py, which a target's inapplicable() knows
    clients: int
    threads: int
    connect_per_tx: bool
    short: int           # transactions per client in the short run
    long: int            # ... and in the long one


LOADS = {
    "S2": Load("S2", "connection", "churn", clients=1, threads=1, connect_per_tx=True, short=100, long=500),
    "S1": Load("S1", "transaction", "steady", clients=50, threads=2, connect_per_tx=False, short=40, long=200),
}
AUTH = "trust"      # S2's; under S1 a login is part of start-up, which cancels out


@dataclasses.dataclass
class Baseline(targets.Maitred):
    """maitred from another checkout, first on PYTHONPATH: a git worktree of an earlier commit, with its hot path
    built there (scripts/build-hotpath.sh), so that one run counts a change before and after."""

    name: str = "baseline"
    label: str = "maitred baseline"
    tree: str = ""

    def unavailable(self) -> str | None:
        if not glob.glob(os.path.join(self.tree, "pooler", "client.*.so")):
            return f"{self.tree}: no compiled hot path (run scripts/build-hotpath.sh there)"
        return None

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join([self.tree, os.path.join(self.tree, "operator"), env["PYTHONPATH"]])
        return env


def baseline(pg, tree: str) -> Baseline:
    commit = targets.version_line(["git", "-C", tree, "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True).stdout.strip()     # "+": edited since that commit
    return Baseline(pg, tree=os.path.abspath(tree), label=f"maitred at {commit}{'+' if changed else ''}")


def totals(callgrind_out: str) -> int:
    """The instructions a callgrind output file counts in all."""
    with open(callgrind_out) as f:
        match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    if match is None:
        raise ValueError(f"{callgrind_out}: no summary line")
    return int(match.group(1))


def per_unit(short: int, long: int, short_units: int, long_units: int) -> float:
    """Instructions per connection or transaction: what the long run took more, per unit it served more."""
    return (long - short) / (long_units - short_units)


def count(target, load: Load, per_client: int, out_dir: str) -> tuple[int, int]:
    """(the instructions `target`'s process runs from start to stop, the transactions pgbench made), serving
    `per_client` transactions of `load` per client."""
    out = os.path.join(out_dir, f"{target.name}-{load.name}-{per_client}.callgrind")
    counted = dataclasses.replace(target, prefix=(VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}"),
                                  start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)
    with counted.serve(PoolSettings(pool_size=10, max_client_conn=300, auth_type=AUTH)) as endpoint:
        result = pgbench.run(endpoint, clients=load.clients, threads=load.threads, transactions=per_client,
                             connect_per_tx=load.connect_per_tx, slack=PGBENCH_TIMEOUT)
    return totals(out), result.transactions


def measure(target, load: Load, out_dir: str) -> float:
    short, short_units = count(target, load, load.short, out_dir)
    long, long_units = count(target, load, load.long, out_dir)
    return per_unit(short, long, short_units, long_units)


def table(rows: dict[str, dict[str, float | str]], labels: dict[str, str]) -> str:
    """Markdown: a row per load, a column per target, and maitred's ratios to PgBouncer and to the floors."""
    names = list(labels)
    ratios = [(a, b) for a, b in (("maitred", "baseline"), ("maitred", "pgbouncer"), ("maitred", "floor"),
                                  ("maitred", "relay-floor"), ("relay-floor", "pgbouncer"),
                                  ("maitred", "relay-floor-c"), ("relay-floor-c", "pgbouncer"))
              if a in names and b in names]
    head = ["load", "instructions per", *(labels[n] for n in names), *(f"{labels[a]}/{labels[b]}" for a, b in ratios)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for load_name, values in rows.items():
        cells = [load_name, LOADS[load_name].unit]
        cells += [f"{values[n]:,.0f}" if isinstance(values[n], float) else values[n] for n in names]
        cells += [f"{values[a] / values[b]:.2f}" if all(isinstance(values[n], float) for n in (a, b)) else "–"
                  for a, b in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The targets a count can run: every one but PostgreSQL itself and the supervisor's several processes.
COUNTED = tuple(name for name in targets.TARGETS if name not in ("direct", "maitred-w2"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="pgbouncer,maitred,floor",
                   help=f"comma-separated, from {','.join(COUNTED)} (default pgbouncer,maitred,floor)")
    p.add_argument("--loads", default="S2,S1", help="comma-separated, from S2,S1 (default both)")
    p.add_argument("--baseline", metavar="TREE",
                   help="also count maitred from this checkout (e.g. `git worktree add TREE COMMIT`, then "
                        "scripts/build-hotpath.sh in it), for a change's before and after")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies both runs' transactions per client (default 1: S2 100 and 500 "
                        "connections, S1 40 and 200 transactions for each of 50 clients)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    loads = [n.strip() for n in args.loads.split(",") if n.strip()]
    bad = [n for n in names if n not in COUNTED] + \
          [n for n in loads if n not in LOADS]
    if bad or not names or not loads or args.scale <= 0:
        print(f"unknown or empty: {', '.join(bad) or 'targets, loads or scale'}", file=sys.stderr)
        return 2
    if shutil.which(VALGRIND) is None:
        print("valgrind not found (Debian package valgrind)", file=sys.stderr)
        return 2
    scaled = {n: dataclasses.replace(LOADS[n], short=max(1, round(LOADS[n].short * args.scale)),
                                     long=max(2, round(LOADS[n].long * args.scale))) for n in loads}
    rows: dict[str, dict[str, float | str]] = {}
    with targets.bench_postgres() as pg, tempfile.TemporaryDirectory(prefix="maitred-instructions-") as out_dir:
        os.chmod(out_dir, 0o777)        # PgBouncer runs as an unprivileged account and writes its count here
        chosen = targets.make_targets(names, pg) + ([baseline(pg, args.baseline)] if args.baseline else [])
        for target in chosen:
            reason = target.unavailable()
            if reason:
                print(f"{target.label}: {reason}", file=sys.stderr)
                return 2
        labels = {t.name: t.label for t in chosen}
        for name in loads:
            load = scaled[name]
            rows[name] = {}
            for target in chosen:
                reason = target.inapplicable(load.key, AUTH)
                rows[name][target.name] = "n/a" if reason else measure(target, load, out_dir)
                print(f"{name} {target.label}: {rows[name][target.name]}", file=sys.stderr, flush=True)
    print(table(rows, labels))
    return 0
