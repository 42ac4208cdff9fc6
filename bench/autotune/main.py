"""`python3 -m bench autotune`: every fixed pool size of the sweep, then the autotuner, over the same phases.

Starts its own PostgreSQL (small max_connections: the budget), a Prometheus scraping a node-exporter every
tick, and for every run a fresh maitred pooler per tier; pgbench drives each phase through them while a
sampler records pool sizes, cl_waiting, CPU and pg_stat_activity. Prints a Markdown table and writes it with a
JSON file and a PNG plot to --out.

Workloads (--tiers):
  2 (default)  two poolers, "app" and "reports", share one PostgreSQL's max_connections:
               io-wait 25 s: app 48 clients SELECT pg_sleep(0.01), reports idle;
               cpu + io-wait 25 s: app 48 clients of an md5 aggregate (CPU), reports 48 clients pg_sleep(0.01);
               idle 15 s. A size fixed alike for both starves the tier that waits or,
               summed over the two, breaks the budget.
  1            one pooler: io-wait 25 s, cpu 25 s (48 clients each), idle 15 s.
--quick keeps either shape with 6 clients and 3 s phases.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from datetime import datetime, timezone

from maitred.local.prometheus import CPU_QUERY, LocalPrometheus

from .. import targets
from . import dbhost, pgcpu, plot, runs, summary, workload

DEFAULT_OUT = os.path.join(targets.REPO, "bench", "results")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated pool sizes, e.g. 2,8,32") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("pool sizes must be at least 1")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few seconds per phase, two sizes, a few clients (checks the harness, not the numbers)")
    p.add_argument("--tiers", type=int, choices=(1, 2), default=2,
                   help="poolers in front of the one PostgreSQL: 2, app and reports whose demand moves "
                        "(default), or 1 (see above)")
    p.add_argument("--rounds", type=int, help="rounds of the whole sweep; even rounds run in reverse order "
                                               "(default 1)")
    p.add_argument("--sizes", type=_sizes, help="fixed pool sizes of the sweep (default 2,4,8,16,32)")
    p.add_argument("--seconds", type=int, help="seconds of every phase (default 25 with load, 15 idle)")
    p.add_argument("--interval", type=float, help="seconds between autotuner ticks and scrapes (default 1)")
    p.add_argument("--cpu-signal", choices=("postgres", "node"),
                   help="the autotuner's CPU: PostgreSQL's processes (default; clients and pooler share this "
                        "host) or node-exporter's whole-node non-idle share")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for autotune-<date>.md/.json/.png "
                                                      "(default bench/results)")
    return p


def plan_from(args: argparse.Namespace) -> workload.Plan:
    plan = (workload.QUICK if args.quick else workload.FULL)[args.tiers]
    if args.seconds is not None:
        plan = dataclasses.replace(plan, phases=tuple(dataclasses.replace(p, seconds=args.seconds)
                                                      for p in plan.phases))
    overrides = {"rounds": args.rounds, "sizes": args.sizes, "interval": args.interval,
                 "cpu_signal": args.cpu_signal}
    return dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def missing_tools() -> list[str]:
    wanted = {"pgbench": "pgbench (postgresql-client)", "prometheus": "prometheus",
              "prometheus-node-exporter": "prometheus-node-exporter"}
    return [what for exe, what in wanted.items() if shutil.which(exe) is None]


def cpu_query(plan: workload.Plan, database_cores: int) -> str:
    """PromQL for the autotuner's CPU: PostgreSQL's share of the cores it runs on, or the whole node's."""
    return pgcpu.cpu_query(database_cores) if plan.cpu_signal == "postgres" else CPU_QUERY


def schedule(plan: workload.Plan) -> list[int | None]:
    """The runs in order: each round is the sweep then the autotuner (None), reversed every other round, so
    that the machine's drift hits both ends alike."""
    one = [*plan.sizes, None]
    return [size for r in range(plan.rounds) for size in (one if r % 2 == 0 else one[::-1])]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from(args)
    if plan.rounds < 1 or plan.interval <= 0 or any(p.seconds < 1 for p in plan.phases):
        print("--rounds and --seconds must be at least 1, --interval above 0", file=sys.stderr)
        return 2
    if missing_tools():
        print(f"missing: {', '.join(missing_tools())} (scripts/install-deps.sh installs them)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = datetime.now(timezone.utc)
    records = []
    with targets.bench_postgres(workload.server_settings(plan)) as pg, \
            dbhost.DatabaseHost(pgcpu.postmaster_pid(pg.datadir)) as database_host, \
            tempfile.TemporaryDirectory(prefix="maitred-bench-autotune-") as folder, \
            pgcpu.TextfileExporter(pgcpu.postmaster_pid(pg.datadir), folder, plan.interval / 2), \
            LocalPrometheus(scrape_interval=plan.interval, textfile_dir=folder) as prometheus:
        query = cpu_query(plan, database_host.cores)
        prometheus.wait_for(query)
        versions = {"PostgreSQL": targets.Direct(pg).version().split()[2],
                    "maitred": targets.Maitred(pg).version()}
        tune = lambda ports: runs.autotune_argv(plan, ports, pg, prometheus.url, query)  # noqa: E731
        for i, size in enumerate(schedule(plan), 1):
            record = runs.measure(pg, plan, folder, size=size, autotune=None if size else tune)
            records.append(record)
            print(f"run {i}/{len(schedule(plan))} {record['label']}: {_brief(record)}", file=sys.stderr,
                  flush=True)
    result = summary.summarize(records, plan=plan, versions=versions, cores=os.cpu_count(), started=started,
                               database_cpu=database_host.description)
    stem = summary.write(result, args.out, started)
    drawn = plot.draw(result, stem + ".png")
    print(summary.markdown(result))
    print(f"written: {stem}.md {stem}.json" + (f" {stem}.png" if drawn else " (no plot: no autotuned run)"),
          file=sys.stderr)
    return 0


def _brief(record: dict) -> str:
    if record["status"] != "ok":
        return f"failed ({record['reason'].splitlines()[0][:200]})"
    phases = ", ".join(f"{p['name']} " + "+".join(f"{t['tps']:.0f}" for t in p["tiers"].values()) + " tps"
                       for p in record["phases"] if p["tps"] is not None)
    return (f"{record['total_xacts']} xacts ({phases}), p99 {record['p99_ms']:.1f} ms, "
            f"{record['violations']} violations, {len(record['decisions'])} autotuner lines")
