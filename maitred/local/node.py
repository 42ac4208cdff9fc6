"""A real Kubernetes node on this machine: kubelet and containerd, registered with the local control plane.

containerd, runc and the CNI plugins are Debian's; kubelet is built with the control plane (build-binaries.sh).
Everything the node keeps lives in its own work directory: containerd's config, root, state and socket, the
network namespaces of its pods, the kubelet's root, and the CNI network's addresses. Pods sit on a bridge of
their own with a /24 no route on this machine uses, so their addresses are this run's own test hosts; the
bridge's address (`gateway`) is how pods reach this machine, e.g. a PostgreSQL listening there. In-cluster clients
reach the API server at the `kubernetes` Service's ClusterIP, which the node sends to 127.0.0.1 (a DNAT rule on its
bridge, as kube-proxy would); the API server reaches webhook Services at their pods' addresses (controlplane.py).

What these machines need, found by trying: cgroupfs rather than systemd for cgroups (cgroup v1, no systemd),
no negative oom_score_adj (`restrict_oom_score_adj`), no swap check, no local-storage accounting (the root
disk's stats are not readable), and no registry: the sandbox image and every image are imported.

    cp = ControlPlane.start(binaries, scheduler=True)
    node = Node.start(cp, binaries["kubelet"], pause_image(), [maitred_image()])
    ...
    node.stop(); cp.stop()      # node.leftovers() is then empty: no process, mount, netns, bridge or rule
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from maitred.local.controlplane import ControlPlane, StartFailed, _Process, free_port, spawn, wait_for
from maitred.local.image import Image

CNI_BIN = Path("/usr/lib/cni")
CONTAINER_LOGS = Path("/var/log/containers")  # the kubelet's links to its containers' logs: not configurable
NODE_PREFIX = "maitred-node-"
COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables")


def missing_parts() -> list[str]:
    """What this machine lacks to run a node: root, Debian's packages (scripts/install-deps.sh installs them)."""
    found = [] if os.geteuid() == 0 else ["root (kubelet and containerd run as root)"]
    found += [c for c in COMMANDS if not shutil.which(c)]
    if not (CNI_BIN / "bridge").exists():
        found.append(f"{CNI_BIN}/bridge (containernetworking-plugins)")
    return found


def free_subnet(routes: str) -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that overlaps none of the routes in `ip -4 route` output."""
    taken = []
    for line in routes.splitlines():
        word = line.split()[0] if line.strip() else ""
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue  # "default" and the like
    candidates = list(ipaddress.ip_network("10.200.0.0/13").subnets(new_prefix=24))
    random.shuffle(candidates)
    return next(net for net in candidates if not any(net.overlaps(t) for t in taken))


def containerd_config(work: Path, pause: str, cni_conf: Path) -> str:
    """containerd's config: all its files under `work`, runc with cgroupfs, pods' netns under its state."""
    return f"""version = 2
root = "{work}/root"
state = "{work}/state"
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
"""


def cni_config(name: str, bridge: str, subnet: ipaddress.IPv4Network, ipam_dir: Path) -> dict:
    """A bridge network with host-local addresses from `subnet`; the bridge holds the gateway address."""
    gateway = str(next(subnet.hosts()))
    return {"cniVersion": "0.4.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                  "ranges": [[{"subnet": str(subnet), "gateway": gateway}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
    ]}


def kubelet_config(work: Path, socket: Path, ca: Path, address: str, port: int, healthz_port: int) -> dict:
    """The kubelet's settings for this machine. Its API (logs, exec) listens only on the bridge's address,
    and trusts whoever reaches it there: the local API server."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
        "failSwapOn": False, "localStorageCapacityIsolation": False,
        "evictionHard": {}, "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "address": address, "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "staticPodPath": str(work / "manifests"), "podLogsDir": str(work / "logs"),
        "volumePluginDir": str(work / "volume-plugins"),
        "registerNode": True, "serializeImagePulls": False,
        "syncFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        "resolvConf": "/etc/resolv.conf",
    }


@dataclass
class Node:
    """A running kubelet + containerd registered as `name`; its pods' network is `subnet` behind `bridge`."""

    cp: ControlPlane
    name: str
    workdir: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    kubelet: Path | None = None
    pause: Image | None = None
    processes: list[_Process] = field(default_factory=list)
    containers: set[str] = field(default_factory=set)

    @property
    def gateway(self) -> str:
        return str(next(self.subnet.hosts()))

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @classmethod
    def start(cls, cp: ControlPlane, kubelet: Path, pause: Image, images: list[Image] = (),
              timeout: float = 120) -> "Node":
        """Bridge, containerd, the images, kubelet; returns once the node is Ready. A failed start stops all."""
        _remove_orphaned_nodes()
        suffix = uuid.uuid4().hex[:6]
        workdir = Path(tempfile.mkdtemp(prefix=NODE_PREFIX))
        workdir.chmod(0o755)
        (workdir / "owner.pid").write_text(str(os.getpid()))
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        node = cls(cp, f"maitred-node-{suffix}", workdir, f"mtd{suffix}", free_subnet(routes), kubelet, pause)
        try:
            node._boot(images, timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def ctr(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], capture_output=True,
                             text=True, timeout=300)
        if check and out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def import_image(self, image: Image) -> None:
        self.ctr("images", "import", str(image.archive))

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        proc = spawn(self.workdir, name, argv)
        self.processes.append(proc)
        return proc

    def _boot(self, images: list[Image], timeout: float) -> None:
        work, pause = self.workdir, self.pause
        subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._serve_kubernetes_service()

        cni_conf = work / "cni" / "net.d"
        cni_conf.mkdir(parents=True)
        (cni_conf / "10-maitred.conflist").write_text(json.dumps(
            cni_config(self.name, self.bridge, self.subnet, work / "cni" / "ipam"), indent=2))
        containerd_dir = work / "containerd"
        containerd_dir.mkdir()
        (containerd_dir / "config.toml").write_text(containerd_config(containerd_dir, pause.ref, cni_conf))
        containerd = self._spawn("containerd", ["containerd", "--config", str(containerd_dir / "config.toml")])

        def up() -> bool:
            if containerd.popen.poll() is not None:
                raise StartFailed(f"containerd exited:\n{containerd.tail()}")
            return subprocess.run(["ctr", "--address", str(self.socket), "version"], capture_output=True).returncode == 0
        wait_for(up, timeout=timeout, what="containerd's socket")
        for image in (pause, *images):
            self.import_image(image)

        kubelet_dir = work / "kubelet"
        (work / "manifests").mkdir()
        kubelet_dir.mkdir()
        ca = work / "ca.crt"
        ca.write_bytes(self.cp.ca.cert)
        config = work / "kubelet.yaml"
        healthz = free_port()
        config.write_text(yaml.safe_dump(kubelet_config(work, self.socket, ca, self.gateway, free_port(), healthz)))
        proc = self._spawn("kubelet", [
            str(self.kubelet), f"--config={config}",
            f"--kubeconfig={self.cp.component_kubeconfig(f'system:node:{self.name}', work)}",
            f"--root-dir={kubelet_dir}", f"--cert-dir={kubelet_dir / 'pki'}",
            f"--hostname-override={self.name}", f"--node-ip={self.gateway}",
        ])

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise StartFailed(f"kubelet exited:\n{proc.tail()}")
            out = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
            conditions = json.loads(out)["status"].get("conditions", []) if out else []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        try:
            wait_for(ready, timeout=timeout, what=f"node {self.name} to be Ready")
        except TimeoutError:
            raise StartFailed(f"node {self.name} not Ready after {timeout:.0f}s:\n{proc.tail(40)}") from None

    def _serve_kubernetes_service(self) -> None:
        """What kube-proxy would do for the one Service pods need before any other: `kubernetes` (its ClusterIP is
        what in-cluster clients such as the chart's operator dial) leads to the API server on 127.0.0.1, for packets
        from this node's bridge only."""
        service = json.loads(self.cp.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json"))
        port = urlsplit(self.cp.server).port
        Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1")
        subprocess.run(["iptables", "-t", "nat", "-A", "PREROUTING",
                        *api_server_dnat(self.bridge, service["spec"]["clusterIP"], 443, port)], check=True)

    # -- stopping -----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every pod's containers, kubelet, containerd and its shims; unmount, remove the bridge and the
        work directory. Safe to call twice, and after a failed start."""
        if self.socket.exists():  # remembered, so that leftovers() can look for their processes
            self.containers |= set(self.ctr("containers", "ls", "-q", check=False).split())
        kubelet = next((p for p in self.processes if p.name == "kubelet"), None)
        if kubelet and kubelet.popen.poll() is None:
            self._drain()
            kubelet.stop()
        if self.socket.exists():
            for task in self.ctr("tasks", "ls", "-q", check=False).split():
                self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
            deadline = time.monotonic() + 20
            while self.ctr("tasks", "ls", "-q", check=False).split() and time.monotonic() < deadline:
                for task in self.ctr("tasks", "ls", "-q", check=False).split():
                    self.ctr("tasks", "delete", "--force", task, check=False)
                time.sleep(0.2)
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        for pid in self._shims():
            _kill(pid)
        for target in reversed(self._mounts()):
            subprocess.run(["umount", "-l", target], capture_output=True)
        _delete_nat_rules(self.bridge)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for link in self._log_links():
            link.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _drain(self, timeout: float = 30) -> None:
        """Cordon the node, delete its pods and give the kubelet a moment to stop them the CRI way (their network torn
        down by the CNI plugins); what it has not done by then, stop() does by force."""
        selector = f"spec.nodeName={self.name}"
        self.cp.kubectl("cordon", self.name, check=False)  # the ReplicaSets' new pods stay Pending
        self.cp.kubectl("delete", "pods", "--all-namespaces", "--field-selector", selector, "--grace-period=1",
                        "--wait=false", check=False)
        try:
            wait_for(lambda: not self.ctr("tasks", "ls", "-q", check=False).split(), timeout=timeout,
                     what="the node's containers to stop")
        except TimeoutError:
            pass

    def leftovers(self) -> list[str]:
        """What the node left behind: processes, mounts, network namespaces, its bridge. Empty after stop()."""
        found = [f"process {pid}" for pid in self._shims() + self._container_processes()]
        found += [f"mount {m}" for m in self._mounts()]
        netns = self.workdir / "containerd" / "state" / "io.containerd.grpc.v1.cri" / "netns"
        found += [f"netns {p}" for p in (netns.iterdir() if netns.is_dir() else ())]
        found += [f"log link {link}" for link in self._log_links()]
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode == 0:
            found.append(f"bridge {self.bridge}")
        found += [f"iptables rule {rule}" for rule in _nat_rules(self.bridge)]
        if self.workdir.exists():
            found.append(f"directory {self.workdir}")
        return found

    def _shims(self) -> list[int]:
        """containerd's shims and the node's own processes: their command line names the work directory."""
        marker = str(self.workdir).encode()
        return [pid for pid, cmdline in _processes() if marker in cmdline]

    def _container_processes(self) -> list[int]:
        """Processes in a cgroup named after one of the node's containers."""
        found = []
        for pid, _ in _processes():
            try:
                cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if any(c in cgroups for c in self.containers):
                found.append(pid)
        return found

    def _log_links(self) -> list[Path]:
        if not CONTAINER_LOGS.is_dir():
            return []
        return [link for link in CONTAINER_LOGS.iterdir() if any(c in link.name for c in self.containers)]

    def _mounts(self) -> list[str]:
        prefix = str(self.workdir) + "/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                mounts.append(target)
        return mounts


def api_server_dnat(bridge: str, cluster_ip: str, service_port: int, api_server_port: int) -> list[str]:
    """The iptables rule (nat table, PREROUTING) that sends the bridge's packets for the `kubernetes` Service to
    the API server on 127.0.0.1 (the bridge needs route_localnet for that)."""
    return ["-i", bridge, "-d", f"{cluster_ip}/32", "-p", "tcp", "-m", "tcp", "--dport", str(service_port),
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{api_server_port}"]


def _nat_rules(bridge: str) -> list[str]:
    """The node's rules in the nat table's PREROUTING chain, as `iptables -S` prints them."""
    if not bridge or not shutil.which("iptables"):
        return []
    out = subprocess.run(["iptables", "-t", "nat", "-S", "PREROUTING"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if f" -i {bridge} " in f"{line} "]


def _delete_nat_rules(bridge: str) -> None:
    for rule in _nat_rules(bridge):
        subprocess.run(["iptables", "-t", "nat", "-D", *rule.split()[1:]], capture_output=True)


def _processes() -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                found.append((int(entry.name), (entry / "cmdline").read_bytes()))
            except OSError:
                pass
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _remove_orphaned_nodes() -> None:
    """Stop what a killed test run's node left: its shims and mounts, its bridge, its work directory."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{NODE_PREFIX}*"):
        try:
            os.kill(int((workdir / "owner.pid").read_text()), 0)
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        orphan = Node(None, workdir.name, workdir, "", ipaddress.ip_network("10.200.0.0/24"))
        for pid in orphan._shims():
            _kill(pid)
        for target in reversed(orphan._mounts()):
            subprocess.run(["umount", "-l", target], capture_output=True)
        bridge = json.loads((workdir / "cni" / "net.d" / "10-maitred.conflist").read_text())["plugins"][0]["bridge"] \
            if (workdir / "cni" / "net.d" / "10-maitred.conflist").exists() else None
        if bridge:
            _delete_nat_rules(bridge)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
