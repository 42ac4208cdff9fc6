"""A real, local Kubernetes control plane for the quick start and the e2e tests, the way envtest runs one.

etcd, kube-apiserver and kube-controller-manager run as plain processes on 127.0.0.1: real schema
validation, watches, admission webhooks and garbage collection, with no Docker. There is no kubelet, so
Pods stay Pending, unless a node (node.py) registers; with `scheduler=True` kube-scheduler places Pods on it.

    with ControlPlane.start(find_binaries()) as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
        subprocess.run(["kubectl", "get", "ns"], env=cp.env())

Stopping kills every process group it started and removes its temporary directory; a failed start
cleans up the same way. The processes also get a parent-death signal, so even a SIGKILLed test run
leaves no server behind, and the next start removes the directory such a run left: start the control
plane from a thread that outlives it, such as the main thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The checkout this runs from: the binaries are built from its e2e/k8s Go module.
CHECKOUT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = CHECKOUT / "e2e" / "build-binaries.sh"
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
NODE_BINARIES = ("kube-scheduler", "kubelet")

# The controllers the tests rely on: ownership and deletion (garbage collector, namespace), nodes, workloads
# (deployment, replicaset, disruption for PodDisruptionBudget status), and the per-namespace
# `default` ServiceAccount plus `kube-root-ca.crt` ConfigMap that the ServiceAccount admission plugin
# and real clusters provide.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "disruption-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "endpointslice-controller",
    "endpoints-controller",  # kube-apiserver finds a webhook Service's pods by its Endpoints (aggregator routing)
    "node-lifecycle-controller",  # a registered node's not-ready taint goes once it is Ready
    "pod-garbage-collector-controller",
)

# util-linux's setpriv (Debian: essential) sets a parent-death signal before exec'ing the binary.
SETPRIV = shutil.which("setpriv")

WORKDIR_PREFIX = "maitred-e2e-"

T = TypeVar("T")


class BinariesMissing(RuntimeError):
    """A control-plane binary is neither in $KUBEBUILDER_ASSETS nor in the build cache."""


class StartFailed(RuntimeError):
    """A control-plane process exited or never became healthy."""


# ---------------------------------------------------------------------------------------------------
# binaries


def cached_binaries_dir() -> Path | None:
    """The cache directory when build-binaries.sh has already built everything, else None."""
    out = subprocess.run([str(BUILD_SCRIPT), "--check", "--print-dir"], capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def build_binaries(timeout: float = 3600) -> Path:
    """Build (or reuse) the binaries with e2e/build-binaries.sh; progress streams to stderr."""
    try:
        out = subprocess.run(
            [str(BUILD_SCRIPT), "--print-dir"], stdout=subprocess.PIPE, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BinariesMissing(f"{BUILD_SCRIPT} did not finish within {timeout:.0f}s") from exc
    if out.returncode != 0:
        raise BinariesMissing(f"{BUILD_SCRIPT} failed with exit code {out.returncode}")
    return Path(out.stdout.strip().splitlines()[-1])


def find_binaries(build: bool = False, names: tuple[str, ...] = CONTROL_PLANE_BINARIES) -> dict[str, Path]:
    """Locate each binary: $KUBEBUILDER_ASSETS first, then the build cache, then $PATH (etcd only).

    With build=True a missing binary triggers e2e/build-binaries.sh (long on a cold cache);
    otherwise BinariesMissing is raised.
    """

    def locate(cache: Path | None) -> tuple[dict[str, Path], list[str]]:
        found, missing = {}, []
        dirs = [Path(d) for d in [os.environ.get("KUBEBUILDER_ASSETS"), cache] if d]
        for name in names:
            candidates = [d / name for d in dirs]
            if name == "etcd" and shutil.which("etcd"):
                candidates.append(Path(shutil.which("etcd")))
            path = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
            if path:
                found[name] = path
            else:
                missing.append(name)
        return found, missing

    found, missing = locate(cached_binaries_dir())
    if missing and build:
        found, missing = locate(build_binaries())
    if missing:
        raise BinariesMissing(
            f"missing {', '.join(missing)}: set $KUBEBUILDER_ASSETS or run {BUILD_SCRIPT}"
        )
    return found


# ---------------------------------------------------------------------------------------------------
# certificates


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.cert)
        key.write_bytes(self.key)
        key.chmod(0o600)
        return crt, key


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str) -> KeyPair:
    """A self-signed CA, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    organizations: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
) -> KeyPair:
    """A leaf certificate signed by ca: DNS/IP SANs from hosts, O= from organizations (k8s groups)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


# ---------------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    probe: Callable[[], T], *, timeout: float = 30, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call probe until it returns something truthy and return that; fail after timeout seconds.

    Exceptions raised by probe count as "not yet"; the last one is chained to the failure.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - any error means "not ready yet"
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from last_exc
        time.sleep(interval)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the whole process group, SIGKILL it after grace seconds."""
        pgid = self.popen.pid  # started with start_new_session, so pid == pgid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Reap the leader and make sure nothing else in its group survived.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def spawn(workdir: Path, name: str, argv: list[str]) -> _Process:
    """Start argv in its own process group, logging to WORKDIR/NAME.log, dying with the thread that started it
    (even when that is SIGKILLed and cannot clean up)."""
    log = workdir / f"{name}.log"
    if SETPRIV:
        argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=workdir)
    return _Process(name, popen, log)


@dataclass
class Cluster:
    """A Kubernetes API server reachable through a kubeconfig: what the e2e tests talk to.

    Attributes:
        server: the API server URL.
        kubeconfig: a kubeconfig file with an admin user, for kubectl, helm, the kubernetes Python
            client and kopf.
    """

    server: str
    kubeconfig: Path
    tools_dir: str = field(default="", kw_only=True)    # put first on subprocesses' PATH (kubectl)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | str) -> "Cluster":
        """An already running cluster (e.g. kind), taken from the current context of kubeconfig."""
        kubeconfig = Path(kubeconfig)
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        server = next(c["cluster"]["server"] for c in config["clusters"] if c["name"] == context["cluster"])
        return cls(server=server, kubeconfig=kubeconfig)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses (kubectl, helm, `maitred operator`, kopf) that points at
        this cluster through KUBECONFIG."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if self.tools_dir:
            env["PATH"] = self.tools_dir + os.pathsep + env.get("PATH", os.defpath)
        return env

    def api_client(self):
        """A new kubernetes.client.ApiClient authenticated as the admin user; close it when done."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        """Run kubectl against this cluster and return its stdout."""
        out = subprocess.run(
            ["kubectl", *args], env=self.env(), input=input, capture_output=True, text=True
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def stop(self) -> None:
        """Nothing to stop for a cluster this process did not start."""


@dataclass
class ControlPlane(Cluster):
    """A running etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    Attributes (besides Cluster's):
        ca: the CA that signed the API server's serving certificate and the client certificates.
        workdir: the temporary directory holding certificates, kubeconfigs, etcd data and logs.
    """

    ca: KeyPair | None = None
    workdir: Path = field(kw_only=True)
    processes: list[_Process] = field(default_factory=list)

    @classmethod
    def start(cls, binaries: dict[str, Path] | None = None, *, scheduler: bool = False,
              timeout: float = 90) -> "ControlPlane":
        """Start the three processes (four with `scheduler`) and wait until the API server is ready and
        the others are healthy. On any failure everything started so far is stopped and removed."""
        binaries = binaries or find_binaries()
        _remove_orphaned_workdirs()
        # kubectl of the same version as the API server, first on PATH for every subprocess we start.
        tools = str(binaries["kube-apiserver"].parent)
        workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (workdir / "owner.pid").write_text(str(os.getpid()))
        port = free_port()
        cp = cls(server=f"https://127.0.0.1:{port}", kubeconfig=workdir / "kubeconfig", workdir=workdir,
                 tools_dir=tools)
        try:
            cp._boot(binaries, port, timeout)
            if scheduler:
                cp._start_scheduler(binaries["kube-scheduler"], timeout)
        except BaseException:
            cp.stop()
            raise
        return cp

    def stop(self) -> None:
        """Stop every process (controller manager, API server, etcd) and remove the work directory."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = spawn(self.workdir, name, argv)
        self.processes.append(proc)
        return proc

    def _healthy(self, proc: _Process, url: str, context: ssl.SSLContext | None, timeout: float) -> None:
        def probe() -> bool:
            if proc.popen.poll() is not None:
                raise StartFailed(
                    f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}"
                )
            try:
                with urllib.request.urlopen(url, context=context, timeout=5) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False

        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                raise StartFailed(f"{proc.name} not healthy at {url} after {timeout:.0f}s:\n{proc.tail()}")
            time.sleep(0.2)

    def _boot(self, binaries: dict[str, Path], port: int, timeout: float) -> None:
        pki = self.workdir / "pki"
        pki.mkdir()
        ca = make_ca("maitred-e2e-ca")
        self.ca = ca
        ca_crt, _ = ca.write(pki, "ca")
        serving_crt, serving_key = issue(
            ca, "kube-apiserver", server=True,
            hosts=("127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default",
                   "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
        ).write(pki, "apiserver")
        admin = issue(ca, "maitred-e2e-admin", organizations=("system:masters",), client=True)
        admin_crt, admin_key = admin.write(pki, "admin")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(_pem_key(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        write_kubeconfig(self.kubeconfig, self.server, ca.cert, admin)
        kcm_kubeconfig = self.component_kubeconfig("system:kube-controller-manager")

        # etcd
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd_args = [
            str(binaries["etcd"]), "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer_port}",
        ]
        etcd_help = subprocess.run([str(binaries["etcd"]), "--help"], capture_output=True, text=True)
        if "--unsafe-no-fsync" in etcd_help.stdout + etcd_help.stderr:
            etcd_args.append("--unsafe-no-fsync")  # a throwaway test store: skip fsync, start faster
        etcd = self._spawn("etcd", etcd_args)
        self._healthy(etcd, f"{etcd_url}/health", None, timeout)

        # kube-apiserver
        apiserver = self._spawn("kube-apiserver", [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={pki}", f"--tls-cert-file={serving_crt}", f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={ca_crt}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--endpoint-reconciler-type=none",
            # No kube-proxy here, so no Service IP leads anywhere: a webhook's Service is reached at its pods.
            "--enable-aggregator-routing=true",
            "--kubelet-preferred-address-types=InternalIP",  # a node's name resolves nowhere
            "--profiling=false",
        ])
        context = ssl.create_default_context(cadata=ca.cert.decode())
        context.load_cert_chain(admin_crt, admin_key)
        self._healthy(apiserver, f"{self.server}/readyz", context, timeout)

        # kube-controller-manager
        kcm_port = free_port()
        controller_manager = self._spawn("kube-controller-manager", [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}",
            f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={pki / 'kcm'}",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--root-ca-file={ca_crt}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--kube-api-qps=100", "--kube-api-burst=200",
            "--profiling=false",
        ])
        self._healthy(
            controller_manager, f"https://127.0.0.1:{kcm_port}/healthz",
            ssl._create_unverified_context(), timeout,  # self-signed serving cert, local only
        )


    def component_kubeconfig(self, user: str, directory: Path | None = None) -> Path:
        """A kubeconfig for a component of the cluster (`system:kube-scheduler`, `system:node:NAME`), by a
        client certificate in group system:masters: this cluster's components are trusted alike."""
        groups = ("system:masters", "system:nodes") if user.startswith("system:node:") else ("system:masters",)
        path = (directory or self.workdir) / f"{user.split(':')[-1]}.kubeconfig"
        write_kubeconfig(path, self.server, self.ca.cert, issue(self.ca, user, organizations=groups, client=True),
                         user=user.split(":")[-1])
        return path

    def _start_scheduler(self, binary: Path, timeout: float) -> None:
        kubeconfig = self.component_kubeconfig("system:kube-scheduler")
        port = free_port()
        scheduler = self._spawn("kube-scheduler", [
            str(binary), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            "--leader-elect=false", "--profiling=false",
        ])
        self._healthy(scheduler, f"https://127.0.0.1:{port}/healthz", ssl._create_unverified_context(), timeout)


def _remove_orphaned_workdirs() -> None:
    """Remove the work directories of test runs that were killed before they could stop."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            os.kill(int((workdir / "owner.pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(workdir, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours to judge: unreadable, or owned by a live process of another user


def write_kubeconfig(
    path: Path, server: str, ca_cert: bytes, user_cert: KeyPair, *, user: str = "admin"
) -> None:
    """A one-cluster, one-user kubeconfig with the certificates embedded, named maitred-e2e."""
    import base64

    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "maitred-e2e",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca_cert)}}],
        "users": [{"name": user,
                   "user": {"client-certificate-data": b64(user_cert.cert),
                            "client-key-data": b64(user_cert.key)}}],
        "contexts": [{"name": "maitred-e2e",
                      "context": {"cluster": "maitred-e2e", "user": user, "namespace": "default"}}],
        "current-context": "maitred-e2e",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
