"""The `maitred` command: one entry point, one subcommand per role."""
from __future__ import annotations

import argparse
import sys


def _pooler(args: argparse.Namespace) -> int:
    from pooler.main import run

    return run(args.config, quiet=args.quiet, verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maitred", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pooler", help="run the pooler with a PgBouncer-format config file")
    p.add_argument("config", help="path to the config file (pgbouncer.ini format)")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    p.set_defaults(func=_pooler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
