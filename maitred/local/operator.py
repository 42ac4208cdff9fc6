"""`maitred operator` as a process against a cluster, installed the way operator/README.md says.

It runs with a kubeconfig for its ServiceAccount, so the RBAC of operator/rbac.yaml is what it gets, not
admin: a missing permission shows up here as it would in a cluster.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from maitred.local.controlplane import CHECKOUT as ROOT, SETPRIV, free_port, wait_for

NAMESPACE = "maitred-system"
SERVICE_ACCOUNT = "maitred-operator"


def install(cp, peering: str | None = None) -> None:
    """The CRD, the operator's namespace and RBAC; with `peering`, kopf's peering CRD and that peering object."""
    crds = ["-f", str(ROOT / "crds" / "postgrespooler.yaml")]
    names = ["crd/postgrespoolers.maitred.dev"]
    if peering:
        crds += ["-f", str(ROOT / "crds" / "kopf-peering.yaml")]
        names += ["crd/clusterkopfpeerings.kopf.dev"]
    cp.kubectl("apply", "--server-side", *crds)
    # kubectl wait refuses a CRD whose status has no conditions yet, rather than waiting: ask again.
    wait_for(lambda: cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names), timeout=60,
             what=f"{', '.join(names)} established")
    if peering:
        cp.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}))
    if NAMESPACE not in cp.kubectl("get", "namespaces", "-o", "name"):
        cp.kubectl("create", "namespace", NAMESPACE)
    cp.kubectl("apply", "-f", str(ROOT / "operator" / "rbac.yaml"))


def service_account_kubeconfig(cp, path: Path) -> Path:
    """A copy of the cluster's kubeconfig whose user is the operator's ServiceAccount, by a 2-hour token."""
    token = cp.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=2h").strip()
    config = yaml.safe_load(Path(cp.kubeconfig).read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    context["context"]["user"] = SERVICE_ACCOUNT
    config["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
    config["contexts"] = [context]
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """`maitred operator ARGS` as the ServiceAccount, logging to WORKDIR/NAME.log, with a liveness endpoint.

    It gets a parent-death signal, so it never outlives the process that started it.
    """

    def __init__(self, cp, workdir: Path, *args: str, env: dict[str, str] | None = None, name: str = "operator"):
        kubeconfig = service_account_kubeconfig(cp, workdir / f"{name}.kubeconfig")
        self.log = workdir / f"{name}.log"
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        argv = [sys.executable, "-m", "maitred.cli", "operator", *args, "--liveness", self.liveness]
        if SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, env={**cp.env(), **(env or {}), "KUBECONFIG": str(kubeconfig)},
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_live(self, timeout: float = 60) -> "OperatorProcess":
        """Wait until kopf's liveness endpoint answers; fail with the log when it exits or never does."""
        try:
            wait_for(lambda: _ok(self.liveness) or not self.alive(), timeout=timeout,
                     what="the operator's liveness endpoint")
        except TimeoutError:
            raise RuntimeError(f"the operator did not come up:\n{self.logs()}") from None
        if not self.alive():
            raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.logs()}")
        return self

    def logs(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM (kopf stops its handlers and watches), SIGKILL after `grace` seconds."""
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False
