"""`python3 -m bench`: direct connections, PgBouncer and maitred under the same loads, side by side.
(`python3 -m bench autotune` is the autotuner against fixed pool sizes, see bench/autotune/; `python3 -m bench
autotune-scale` times its pure policy and budget; `python3 -m bench instructions` counts instructions per
connection and per transaction with callgrind, see bench/instructions.py.)

Starts its own PostgreSQL (scale-1 pgbench database), then for each scenario and round starts each pooler
fresh from equivalent configs and measures it. All load goes to 127.0.0.1 and every run is bounded in time
and connection count. Prints a Markdown table and writes it with a JSON file to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from datetime import datetime, timezone
from typing import Callable

from . import autotune_scale, processes, report, scenarios, targets, tls

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return [c for c in choices if c in items]  # canonical order
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny scale: 1 round of 1 s, a few clients, 200 idle clients (keeps the harness honest)")
    p.add_argument("--rounds", type=int, help="rounds of direct/PgBouncer/maitred (default 3)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 15)")
    p.add_argument("--idle-clients", type=int, help="idle clients held open in S4 (default 10000)")
    p.add_argument("--scenarios", type=_csv(list(scenarios.SCENARIOS)), default=list(scenarios.SCENARIOS),
                   help=f"comma-separated, from {','.join(scenarios.SCENARIOS)} (default all)")
    p.add_argument("--targets", type=_csv(list(targets.TARGETS)), default=list(targets.DEFAULT_TARGETS),
                   help="comma-separated, from direct,pgbouncer,maitred,maitred-w2 (maitred with workers = 2), "
                        "maitred-py (maitred's pure-Python hot path, for the compiled one's gain), "
                        "floor (canned answers on uvloop: the least a uvloop pooler pays per connection; S2 only), "
                        "relay-floor (canned logins and a bare relay to pooled servers on uvloop: the least a uvloop "
                        "transaction pooler pays; S1, S2, S4, S5), relay-floor-c (the same compiled by Cython) "
                        "(default direct,pgbouncer,maitred)")
    p.add_argument("--auth", choices=("scram-sha-256", "md5", "trust"), default="scram-sha-256",
                   help="auth_type of both poolers in every scenario but S2 (trust) and S2-scram "
                        "(PostgreSQL itself always uses scram-sha-256)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for bench-<date>.md and .json (default bench/results)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["autotune"]:
        from .autotune.main import main as autotune

        return autotune(argv[1:])
    if argv[:1] == ["autotune-scale"]:
        return autotune_scale.main(argv[1:])
    if argv[:1] == ["instructions"]:
        from .instructions import main as instructions

        return instructions(argv[1:])
    args = build_parser().parse_args(argv)
    scale = scenarios.QUICK if args.quick else scenarios.FULL
    overrides = {"rounds": args.rounds, "duration": args.duration, "idle_clients": args.idle_clients}
    scale = dataclasses.replace(scale, **{k: v for k, v in overrides.items() if v is not None})
    if scale.rounds < 1 or scale.duration < 1 or scale.idle_clients < 1:
        print("--rounds, --duration and --idle-clients must be at least 1", file=sys.stderr)
        return 2

    # this process holds the idle clients; the poolers it starts inherit the limit and hold their end
    wanted = scale.max_client_conn + 1024
    limit = processes.raise_open_files_limit(wanted)
    if "S4" in args.scenarios and limit < wanted:
        print(f"warning: open-files limit {limit} < {wanted}; S4 will fail", file=sys.stderr)

    # on SIGTERM unwind like Ctrl-C does, so the poolers and PostgreSQL are stopped and their folders removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = datetime.now(timezone.utc)
    with contextlib.ExitStack() as stack:
        cert = stack.enter_context(tls.certificate(targets.unprivileged())) \
            if {"S6", "S7"} & set(args.scenarios) else None
        ssl = {"ssl": "on", "ssl_cert_file": f"'{cert.cert}'", "ssl_key_file": f"'{cert.key}'"} if cert else {}
        pg = stack.enter_context(targets.bench_postgres(ssl))
        chosen = targets.make_targets(args.targets, pg)
        versions = {"PostgreSQL": _short(targets.Direct(pg).version()),
                    "pgbench": _short(targets.version_line(["pgbench", "--version"]))}
        versions.update({t.label: t.version() for t in chosen if t.name not in ("direct", "maitred-w2", "maitred-py")})
        results = scenarios.run(chosen, args.scenarios, scale, args.auth, tls=cert)
    summary = report.summarize(results, scale=scale, auth_type=args.auth, versions=versions,
                               cores=os.cpu_count(), started=started)
    md_path, json_path = report.write(summary, args.out, started)
    print(report.markdown(summary))
    print(f"written: {md_path} {json_path}", file=sys.stderr)
    return 0


def _short(version_line: str) -> str:
    """`postgres (PostgreSQL) 15.18 (Debian …)` → `15.18`."""
    words = version_line.replace("(PostgreSQL)", "").split()
    return words[1] if len(words) > 1 else version_line


if __name__ == "__main__":
    sys.exit(main())
