"""The `maitred` command: one entry point, one subcommand per role."""
from __future__ import annotations

import argparse
import sys

from pooler_operator.autotune.cli import add_arguments as add_autotune_arguments


REBOOT_REFUSED = ("-R (online restart) is not supported, and PgBouncer deprecates it: restart without dropping "
                  "clients with a rolling restart instead: start the new pooler on the same port with "
                  "so_reuseport = 1, then stop the old one with SIGTERM (it finishes its clients' work first); "
                  "give each its own peer_id and unix_socket_dir, and [peers], so that cancels reach either")


def _pooler(args: argparse.Namespace) -> int:
    from pooler.main import Switches, run

    if args.reboot:
        print(f"maitred pooler: {REBOOT_REFUSED}", file=sys.stderr)
        return 1
    return run(args.config, Switches(daemon=args.daemon, user=args.user or "", quiet=args.quiet,
                                     verbose=args.verbose))


def _version() -> str:
    from maitred import __version__
    from pooler import compiled
    from pooler.admin import VERSION

    return f"maitred pooler {__version__} (PgBouncer {VERSION} compatible), {compiled.describe()}"


def _operator(args: argparse.Namespace) -> int:
    from pooler_operator.main import run

    return run(namespaces=args.namespace, all_namespaces=args.all_namespaces, standalone=args.standalone,
               peering=args.peering, priority=args.priority, liveness=args.liveness, metrics_port=args.metrics_port,
               verbose=args.verbose, webhook=_webhook_options(args))


def _webhook_options(args: argparse.Namespace):
    """The sidecar injection webhook's options; None when it is not served (no --webhook-port)."""
    if args.webhook_port is None:
        if args.webhook_url or args.webhook_service or args.webhook_cert_dir:
            raise SystemExit("maitred operator: the --webhook-* options need --webhook-port")
        return None
    from pooler_operator.webhook_server import WebhookOptions, operator_namespace

    return WebhookOptions(port=args.webhook_port, host=args.webhook_host, url=args.webhook_url,
                          service=args.webhook_service, cert_dir=args.webhook_cert_dir,
                          namespace=operator_namespace())


def _autotune(args: argparse.Namespace) -> int:
    from pooler_operator.autotune.cli import run

    return run(args)


def _render(args: argparse.Namespace) -> int:
    from pooler_operator.render import run

    return run(args.files, crd=args.crd, namespace=args.namespace, image=args.image)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maitred", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pooler", help="run the pooler with a PgBouncer-format config file",
                       description="PgBouncer's command-line switches, so its systemd units and init scripts "
                                   "run unchanged.")
    p.add_argument("config", help="path to the config file (pgbouncer.ini format)")
    p.add_argument("-d", "--daemon", action="store_true",
                   help="run in the background; needs pidfile and logfile in the config")
    p.add_argument("-R", "--reboot", action="store_true",
                   help="online restart: refused, use so_reuseport rolling restarts instead")
    p.add_argument("-u", "--user", metavar="USERNAME",
                   help="switch to this Unix user once the sockets are bound (overrides `user` in the config)")
    p.add_argument("-q", "--quiet", action="store_true", help="log nothing to stderr (the logfile still gets all)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more verbose logging; may be repeated")
    p.add_argument("-V", "--version", action="version", version=_version(), help="show the version and exit")
    p.set_defaults(func=_pooler)

    o = sub.add_parser("operator", help="run the Kubernetes operator for PostgresPooler resources")
    o.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeat for more; "
                   "default: $MAITRED_WATCH_NAMESPACE, else all namespaces)")
    o.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    o.add_argument("--standalone", action="store_true", help="run without peering (one replica only)")
    o.add_argument("--peering", help="kopf peering object for several replicas (default: $MAITRED_PEERING)")
    o.add_argument("--priority", type=int, help="peering priority (default: newer replicas win)")
    o.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    o.add_argument("--metrics-port", type=int, help="serve the operator's Prometheus /metrics on this port "
                   "(PostgresPooler conditions, the autotuner's state and decisions); default: none")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    w = o.add_argument_group("sidecar injection webhook (served only with --webhook-port)")
    w.add_argument("--webhook-port", type=int, help="serve the webhook over HTTPS on this port, path /mutate")
    w.add_argument("--webhook-host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    w.add_argument("--webhook-url", help="the URL the API server calls, e.g. https://127.0.0.1:9443/mutate: the "
                   "operator then applies the MutatingWebhookConfiguration itself (else the chart makes it)")
    w.add_argument("--webhook-service", help="the webhook's Service in the operator's namespace: its DNS names "
                   "go into the operator-managed certificate")
    w.add_argument("--webhook-cert-dir", help="read tls.crt, tls.key (and ca.crt) here, as cert-manager "
                   "writes them, instead of managing a CA in the Secret maitred-webhook-tls")
    o.set_defaults(func=_operator)

    a = sub.add_parser("autotune", help="tune default_pool_size of PgBouncer-compatible poolers outside Kubernetes")
    add_autotune_arguments(a)
    a.set_defaults(func=_autotune)

    r = sub.add_parser("render", help="print every manifest the operator would apply for a PostgresPooler")
    r.add_argument("files", nargs="*", help="YAML files with PostgresPoolers (and their Secrets); - is stdin")
    r.add_argument("--crd", action="store_true", help="print the PostgresPooler CRD instead")
    r.add_argument("-n", "--namespace", help="namespace for resources that name none")
    r.add_argument("--image", help="the pooler image when the resource names none")
    r.set_defaults(func=_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
