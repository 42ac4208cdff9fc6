"""The quick start: the whole product on this machine, in the foreground until Ctrl-C or SIGTERM.

A local Kubernetes control plane (maitred/local/controlplane.py: etcd, kube-apiserver, kube-controller-manager; their
binaries built once), a PostgreSQL kept in STATE/pg between runs, `maitred operator`, and
examples/postgrespooler.yaml applied with its database pointed at that PostgreSQL. The control plane has no
kubelet, so the quick start plays its part for the Deployment the operator makes: it runs the pooler here from
the ConfigMap and Secret the operator rendered, reports the pod ready, projects changed files so the pooler
reloads them, and restarts the pooler when the pod template changes. Then a short burst of load (pgbench)
shows the autotuner at work: each of its decisions is printed as it happens. Stopping stops all of it.
`--check` stops after the burst instead: the quick start's own test. `--node` runs the Deployment on a real
node instead (maitred/local/node.py: kubelet and containerd, the image built here with buildah): two pods.

Run from the checkout (scripts/quickstart.sh does): it reads crds/, operator/, examples/ and builds the binaries
with e2e/build-binaries.sh.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from maitred.local import image
from maitred.local.controlplane import (CONTROL_PLANE_BINARIES, NODE_BINARIES, ControlPlane, cached_binaries_dir,
                                        find_binaries, wait_for)
from maitred.local.kubelet import Kubelet
from maitred.local.node import Node, missing_parts
from maitred.local.operator import OperatorProcess, install
from maitred.local.postgres import LocalPostgres

EXAMPLE = "examples/postgrespooler.yaml"
POSTGRES_PORT, POOLER_PORT = 15432, 6432
SYNC_INTERVAL = 5  # seconds between projections of the ConfigMap and Secret, as a kubelet's sync loop
AUTOTUNE_INTERVAL = 5  # seconds between the autotuner's ticks here, so that a short burst shows its decisions
BURST_CLIENTS, BURST_SECONDS = 60, 20


def say(message: str) -> None:
    print(message, flush=True)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- the example ----------------------------------------------------------------------------------------------


def load_example(postgres_port: int, host: str = "127.0.0.1", replicas: int = 1
                 ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str]]:
    """The example's documents, its PostgresPooler pointed at the local PostgreSQL with one replica (one local
    pooler process stands for one pod; on the node, real pods), and the users of its users Secret."""
    docs = [d for d in yaml.safe_load_all(Path(EXAMPLE).read_text()) if d]
    pooler = next(d for d in docs if d["kind"] == "PostgresPooler")
    pooler["spec"]["database"].update(host=host, port=postgres_port)
    pooler["spec"]["replicas"] = replicas
    pooler["spec"].setdefault("autotune", {})["intervalSeconds"] = AUTOTUNE_INTERVAL
    secret_name = pooler["spec"]["auth"]["usersSecret"]["name"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == secret_name)
    users = dict(secret.get("stringData") or {})
    users.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    return docs, pooler, users


# -- the steps ------------------------------------------------------------------------------------------------


def start_postgres(state: Path, port: int, users: dict[str, str], dbname: str, node: Node | None = None
                   ) -> LocalPostgres:
    """The cluster in STATE/pg, made the first time, with the example's users and database on every start (a
    changed password in the example is picked up). With a node, it listens on the pods' bridge too."""
    pg = LocalPostgres(base_dir=str(state / "pg"), port=port, keep=True)
    if node:
        pg.settings["listen_addresses"] = f"'127.0.0.1,{node.gateway}'"
        pg.hba.append(f"host all all {node.subnet} scram-sha-256")
    pg.stop()  # a run that was killed may have left it running
    if not _port_free(port):
        raise RuntimeError(f"port {port} is in use: pick another with --postgres-port")
    pg.start()
    for user, password in users.items():
        quoted = password.replace("'", "''")
        pg.psql(f"SET password_encryption = 'scram-sha-256'; "
                f"DO $$BEGIN CREATE ROLE \"{user}\"; EXCEPTION WHEN duplicate_object THEN NULL; END$$; "
                f"ALTER ROLE \"{user}\" LOGIN PASSWORD '{quoted}'")
    if not pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"):
        pg.create_database(f'"{dbname}"', owner=f'"{next(iter(users))}"')
    return pg


def apply_example(cp, docs: list[dict[str, Any]]) -> None:
    """kubectl apply of the example's documents, their namespaces made first."""
    for ns in sorted({d["metadata"]["namespace"] for d in docs}):
        cp.kubectl("create", "namespace", ns)
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def monitoring_role(pg: LocalPostgres, docs: list[dict[str, Any]], pooler: dict[str, Any]) -> None:
    """The role of the example's autotune.postgresSecret, made a member of pg_monitor: the autotuner reads
    max_connections and pg_stat_activity with it."""
    ref = ((pooler["spec"].get("autotune") or {}).get("postgresSecret") or {}).get("name")
    secret = next((d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref), None)
    if secret is None:
        return
    user, password = secret["stringData"]["username"], secret["stringData"]["password"].replace("'", "''")
    pg.psql(f"SET password_encryption = 'scram-sha-256'; "
            f"DO $$BEGIN CREATE ROLE \"{user}\"; EXCEPTION WHEN duplicate_object THEN NULL; END$$; "
            f"ALTER ROLE \"{user}\" LOGIN PASSWORD '{password}'; GRANT pg_monitor TO \"{user}\"")


class Decisions:
    """The autotuner's decisions on one PostgresPooler as its status shows them, each printed once."""

    def __init__(self, cp, namespace: str, name: str):
        self.cp, self.namespace, self.name = cp, namespace, name
        self.last = (self._read().get("lastDecision") or {}).get("time")  # only what happens from now on
        self.grew = self.shrank = False

    def _read(self) -> dict[str, Any]:
        obj = json.loads(self.cp.kubectl("get", "pgp", self.name, "-n", self.namespace, "-o", "json"))
        return (obj.get("status") or {}).get("autotune") or {}

    def print_new(self) -> None:
        autotune = self._read()
        decision = autotune.get("lastDecision")
        if not decision or decision["time"] == self.last:
            return
        self.last = decision["time"]
        before, after = decision.get("from"), decision.get("to")
        if before is not None and after is not None:
            self.grew, self.shrank = self.grew or after > before, self.shrank or (self.grew and after < before)
        seen = decision.get("signals") or {}
        signals = " ".join(f"{key}={seen[key]}" for key in ("clWaiting", "svActive", "svIdle", "cpu") if key in seen)
        say(f"    {decision['time']}  pool {before} -> {after}  {decision['reason']}  "
            f"[{signals} budget={autotune.get('budget')}]")


def start_burst(state: Path, port: int, user: str, password: str, dbname: str,
                stack: contextlib.ExitStack) -> subprocess.Popen:
    """pgbench through the pooler: clients whose transactions each hold a server for 50 ms, more of them than
    the pool has servers, so they wait and the autotuner grows the pool; after it, the pool shrinks again."""
    script = state / "burst.sql"
    script.write_text("SELECT pg_sleep(0.05);\n")
    burst = subprocess.Popen(["pgbench", "-n", "-c", str(BURST_CLIENTS), "-j", "2", "-T", str(BURST_SECONDS),
                              "-f", str(script), "-h", "127.0.0.1", "-p", str(port), "-U", user, dbname],
                             env={**os.environ, "PGPASSWORD": password}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    stack.callback(lambda: burst.poll() is None and burst.kill())
    return burst


def kubernetes_binaries(names: tuple[str, ...] = CONTROL_PLANE_BINARIES) -> dict[str, Path]:
    """The control plane's binaries, built with Go the first time, with a line a minute while that lasts."""
    if cached_binaries_dir():
        return find_binaries(names=names)
    say("==> building the Kubernetes binaries with Go: once, about 15 minutes on 2 cores, then cached")
    started, done = time.monotonic(), threading.Event()

    def heartbeat():
        while not done.wait(60):
            say(f"    still building ({(time.monotonic() - started) / 60:.0f} min so far)")
    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        return find_binaries(build=True, names=names)
    finally:
        done.set()


def wait_condition(cp, namespace: str, name: str, type_: str, operator: OperatorProcess,
                   timeout: float = 60) -> None:
    """Wait for a condition of the PostgresPooler; fail with all of them and the operator's log."""
    def conditions() -> list[dict[str, Any]]:
        obj = json.loads(cp.kubectl("get", "pgp", name, "-n", namespace, "-o", "json"))
        return (obj.get("status") or {}).get("conditions") or []
    try:
        wait_for(lambda: any(c["type"] == type_ and c["status"] == "True" for c in conditions()),
                 timeout=timeout, what=f"{type_} on {namespace}/{name}")
    except TimeoutError:
        raise RuntimeError(f"{namespace}/{name} is not {type_}: {conditions()}\n"
                           f"operator log:\n{operator.logs(40)}") from None


def run_pod(cp, namespace: str, name: str, pod_dir: Path, port: int,
            stack: contextlib.ExitStack) -> tuple[Kubelet, str]:
    """The Deployment's pooler, started here and reported as its newest pod; stopped with everything else."""
    deployment = json.loads(cp.kubectl("get", "deployment", name, "-n", namespace, "-o", "json"))
    kubelet = Kubelet(cp, namespace, deployment, pod_dir, host_ports={"postgres": port})
    stack.callback(kubelet.stop)
    kubelet.start()
    return kubelet, kubelet.report_ready()


def connect_command(port: int, user: str, password: str, dbname: str, host: str = "127.0.0.1") -> str:
    return f"PGPASSWORD={shlex.quote(password)} psql -h {host} -p {port} -U {user} {dbname}"


def check_query(port: int, user: str, password: str, dbname: str, host: str = "127.0.0.1") -> str:
    """What `connect_command` gets back for one query: the pooler serves, end to end."""
    sql = "SELECT current_user || '@' || current_database() || ', PostgreSQL ' || current_setting('server_version')"
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", host, "-p", str(port), "-U", user, dbname, "-c", sql],
                         env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"a query through the pooler failed: {out.stderr.strip()}")
    return out.stdout.strip()


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


# -- the run --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    if args.node:
        return run_on_node(args, stack)
    started = time.monotonic()
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if not _port_free(args.port):
        raise RuntimeError(f"port {args.port} is in use (another quick start?): pick another with --port")
    docs, pooler, users = load_example(args.postgres_port)
    namespace, name = pooler["metadata"]["namespace"], pooler["metadata"]["name"]
    dbname = pooler["spec"]["database"]["dbname"]
    user, password = next(iter(users.items()))

    binaries = kubernetes_binaries()  # first: on a fresh machine, nothing else waits for the build
    say(f"==> PostgreSQL in {args.state_dir}/pg on 127.0.0.1:{args.postgres_port} "
        f"(users {', '.join(users)}, database {dbname})")
    pg = start_postgres(state, args.postgres_port, users, dbname)
    stack.callback(pg.stop)
    monitoring_role(pg, docs, pooler)

    say(f"==> Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager "
        f"({binaries['kube-apiserver'].parent})")
    cp = ControlPlane.start(binaries)
    stack.callback(cp.stop)
    say(f"    API server at {cp.server}")

    say("==> kubectl apply -f crds/postgrespooler.yaml -f operator/rbac.yaml")
    install(cp)
    say("==> maitred operator --all-namespaces --standalone, as ServiceAccount maitred-system/maitred-operator "
        f"(log: {args.state_dir}/operator.log)")
    operator = OperatorProcess(cp, state, "--all-namespaces", "--standalone")
    stack.callback(operator.stop)
    operator.wait_live()

    say(f"==> kubectl apply -f {EXAMPLE} (database.host 127.0.0.1, port {args.postgres_port}, replicas 1)")
    apply_example(cp, docs)
    wait_condition(cp, namespace, name, "ConfigApplied", operator)

    say(f"==> the Deployment's pooler, run here from ConfigMap {name}-config and Secret {name}-auth, "
        f"on 127.0.0.1:{args.port} (log: {args.state_dir}/pod/pooler.log)")
    pod_dir = state / "pod"
    shutil.rmtree(pod_dir, ignore_errors=True)
    pod_dir.mkdir()
    kubelet, pod = run_pod(cp, namespace, name, pod_dir, args.port, stack)
    wait_condition(cp, namespace, name, "Ready", operator)
    try:
        answer = check_query(args.port, user, password, dbname)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\npooler log:\n{kubelet.logs()[-3000:]}") from None

    env = f"export KUBECONFIG={cp.kubeconfig} PATH={cp.tools_dir}:$PATH"
    patch = '{"spec":{"pool":{"defaultPoolSize":30}}}'
    say(f"""
maitred is running ({time.monotonic() - started:.0f} s): PostgreSQL, a Kubernetes control plane, the operator,
and the pooler of PostgresPooler {namespace}/{name} (as pod {pod}).

Connect through the pooler (it answered {answer}):
    {connect_command(args.port, user, password, dbname)}

kubectl, in another shell:
    {env}
    kubectl get pgp -A
{indent(cp.kubectl("get", "pgp", "-A"))}
    kubectl get pgp -A -o wide
{indent(cp.kubectl("get", "pgp", "-A", "-o", "wide"))}

A change the pooler reloads without a restart:
    kubectl patch pgp -n {namespace} {name} --type merge -p '{patch}'
Metrics: curl -s http://127.0.0.1:{kubelet.port("http")}/metrics
""")
    say(f"==> a burst of load: pgbench, {BURST_CLIENTS} clients for {BURST_SECONDS} s through the pooler; the "
        f"autotuner's decisions (every {AUTOTUNE_INTERVAL} s) as they happen:")
    decisions = Decisions(cp, namespace, name)
    burst = start_burst(state, args.port, user, password, dbname, stack)
    if args.check:  # until the pool has grown and given back (or a bound)
        deadline = time.monotonic() + BURST_SECONDS + 60
        while not decisions.shrank and time.monotonic() < deadline:
            time.sleep(1)
            decisions.print_new()
        return
    say("Press Ctrl-C to stop everything.")
    problem = None
    while True:
        time.sleep(SYNC_INTERVAL)
        if not operator.alive():
            raise RuntimeError(f"the operator exited:\n{operator.logs(40)}")
        if kubelet.proc.poll() is not None:
            raise RuntimeError(f"the pooler exited:\n{kubelet.logs()[-3000:]}")
        try:
            decisions.print_new()
            deployment = json.loads(cp.kubectl("get", "deployment", name, "-n", namespace, "-o", "json"))
            if deployment["spec"]["template"] != kubelet.template:
                say("==> the pod template changed (a setting read at startup, or the pod itself): the pooler "
                    "restarts, as a rollout would")
                kubelet.stop()
                kubelet, pod = run_pod(cp, namespace, name, pod_dir, args.port, stack)
                say(f"    running again as pod {pod}")
            elif kubelet.sync():
                say(f"==> ConfigMap {name}-config or Secret {name}-auth changed: projected again, "
                    "the pooler reloads")
            problem = None
        except RuntimeError as exc:  # e.g. the PostgresPooler was deleted: say so once, keep serving
            if str(exc) != problem:
                say(f"==> the pooler keeps its last config: {exc}")
            problem = str(exc)


def node_images() -> tuple[image.Image, image.Image]:
    """The pause and maitred images, built with buildah the first time (a few minutes), then cached."""
    if missing := missing_parts() + [c for c in ("buildah", "debootstrap") if not shutil.which(c)]:
        raise RuntimeError(f"the node needs {', '.join(missing)}: run scripts/install-deps.sh")
    say(f"==> images: a Debian bookworm base (debootstrap), the pause image and the Dockerfile built with "
        f"buildah (once, a few minutes; then cached in {image.IMAGES})")
    base = image.base_image()
    return image.pause_image(base), image.maitred_image(base)


def run_on_node(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """The quick start on a real node: the operator's Deployment runs as two pods of the image built here."""
    started = time.monotonic()
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    binaries = kubernetes_binaries(CONTROL_PLANE_BINARIES + NODE_BINARIES)
    pause, pooler_image = node_images()
    say(f"==> Kubernetes control plane with kube-scheduler ({binaries['kube-apiserver'].parent})")
    cp = ControlPlane.start(binaries, scheduler=True)
    stack.callback(cp.stop)
    say("==> a node: containerd and kubelet, pods on a bridge of their own; images imported")
    node = Node.start(cp, binaries["kubelet"], pause, [pooler_image])
    stack.callback(node.stop)
    say(f"    node {node.name}, pods on {node.subnet} (bridge {node.bridge}), work dir {node.workdir}")
    docs, pooler, users = load_example(args.postgres_port, host=node.gateway, replicas=2)
    namespace, name = pooler["metadata"]["namespace"], pooler["metadata"]["name"]
    dbname = pooler["spec"]["database"]["dbname"]
    user, password = next(iter(users.items()))
    say(f"==> PostgreSQL in {args.state_dir}/pg on 127.0.0.1 and {node.gateway}, port {args.postgres_port}")
    pg = start_postgres(state, args.postgres_port, users, dbname, node)
    stack.callback(pg.stop)
    monitoring_role(pg, docs, pooler)
    install(cp)
    say(f"==> maitred operator, pooler image {pooler_image.ref} (log: {args.state_dir}/operator.log)")
    operator = OperatorProcess(cp, state, "--all-namespaces", "--standalone",
                               env={"MAITRED_POOLER_IMAGE": pooler_image.ref})
    stack.callback(operator.stop)
    operator.wait_live()
    say(f"==> kubectl apply -f {EXAMPLE} (database.host {node.gateway}, replicas 2)")
    apply_example(cp, docs)
    wait_condition(cp, namespace, name, "Ready", operator, timeout=180)
    pods = json.loads(cp.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    pod = next(p for p in pods if p["status"].get("podIP"))
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "postgres")
    answer = check_query(port, user, password, dbname, host=pod["status"]["podIP"])
    say(f"""
maitred is running on a node ({time.monotonic() - started:.0f} s): PostgresPooler {namespace}/{name} as pods
{indent(cp.kubectl("get", "pods", "-n", namespace, "-o", "wide"))}

Connect through pod {pod["metadata"]["name"]} (it answered {answer}):
    {connect_command(port, user, password, dbname, host=pod["status"]["podIP"])}

kubectl, in another shell:
    export KUBECONFIG={cp.kubeconfig} PATH={cp.tools_dir}:$PATH
    kubectl get pgp -A
{indent(cp.kubectl("get", "pgp", "-A"))}
""")
    if args.check:
        return
    say("Press Ctrl-C to stop everything.")
    while operator.alive() and all(p.popen.poll() is None for p in node.processes):
        time.sleep(SYNC_INTERVAL)
    raise RuntimeError(f"the operator or the node stopped:\n{operator.logs(40)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m maitred.quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="start everything, query through the pooler, print the summary, then stop")
    parser.add_argument("--state-dir", default=os.environ.get("MAITRED_QUICKSTART_DIR", ".maitred/quickstart"),
                        help="where PostgreSQL and the logs live (default: $MAITRED_QUICKSTART_DIR, "
                             "else .maitred/quickstart)")
    parser.add_argument("--postgres-port", type=int, default=POSTGRES_PORT, help="PostgreSQL's port")
    parser.add_argument("--port", type=int, default=POOLER_PORT, help="the pooler's port")
    parser.add_argument("--node", action="store_true",
                        help="run the pods on a real node (kubelet, containerd) with the image built here (root)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGINT too: a shell that starts a command in the background hands SIGINT down ignored, and Python then
    # leaves it ignored, so Ctrl-C (or a supervisor's SIGINT) would not stop the quick start.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    code = 0
    stack = contextlib.ExitStack()
    try:
        run(args, stack)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - said once, plainly, then everything stops
        say(f"maitred quickstart: {exc}")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave processes behind
        say("==> stopping the pooler, the operator, the control plane and PostgreSQL")
        stack.close()
        say("==> stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
