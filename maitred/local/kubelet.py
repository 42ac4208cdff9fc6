"""What a kubelet would do for a Deployment's pooler container, on this machine.

The local control plane has no kubelet, so the e2e tests and the quick start run the pooler of a Deployment
the operator made as a local process, from the ConfigMap and Secret it rendered, and can report that
process as the Deployment's pod so that the Deployment and the PostgresPooler say how it is doing.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from maitred.local.controlplane import SETPRIV, free_port, wait_for
from pooler_operator.objects import CONSOLE_ADDRESS_ANNOTATION


class Kubelet:
    """The Deployment's pooler container, run here.

    Projected volumes are written as the kubelet writes them (a timestamped folder behind a `..data` symlink
    swapped atomically), mount paths live under `root`, and the pod's network namespace is emulated by
    moving the container's ports to ports on 127.0.0.1: the ones named in `host_ports`, free ones otherwise.
    """

    def __init__(self, cp, namespace: str, deployment: dict[str, Any], root: Path,
                 host_ports: dict[str, int] | None = None):
        self.cp, self.namespace, self.root = cp, namespace, root
        self.selector = deployment["spec"]["selector"]["matchLabels"]
        self.template = deployment["spec"]["template"]
        self.pod = self.template["spec"]
        self.container = self.pod["containers"][0]
        self.mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.ports = {p["containerPort"]: (host_ports or {}).get(p["name"]) or free_port()
                      for p in self.container["ports"]}
        self.projected: dict[str, dict[str, bytes]] = {}
        self.proc: subprocess.Popen | None = None

    def host_path(self, path: str) -> str:
        for mount in sorted(self.mounts.values(), key=len, reverse=True):
            if path == mount or path.startswith(mount + "/"):
                return str(self.root / mount.lstrip("/")) + path[len(mount):]
        return path

    def port(self, name: str) -> int:
        return next(self.ports[p["containerPort"]] for p in self.container["ports"] if p["name"] == name)

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.cp.kubectl("get", kind, name, "-n", self.namespace, "-o", "json"))

    def _rewrite(self, text: str) -> str:
        """The container's view → this machine's: mount paths, ports and listen addresses."""
        def line(match: re.Match) -> str:
            key, value = match["key"], match["value"]
            if key in ("listen_port", "http_port") and int(value) in self.ports:
                value = str(self.ports[int(value)])
            elif key in ("listen_addr", "http_addr"):
                value = "127.0.0.1"
            elif value.startswith("/"):
                value = self.host_path(value)
            return f"{key} = {value}"
        return re.sub(r"^(?P<key>[a-z_]+) = (?P<value>.*)$", line, text, flags=re.M)

    def _files(self, volume: dict[str, Any]) -> dict[str, bytes]:
        files = {}
        for source in volume["projected"]["sources"]:
            kind = "configmap" if "configMap" in source else "secret"
            ref = source.get("configMap") or source["secret"]
            obj = self._get(kind, ref["name"])
            for item in ref["items"]:
                raw = obj["data"][item["key"]]
                data = raw.encode() if kind == "configmap" else base64.b64decode(raw)
                if item["path"].endswith(".ini"):
                    data = self._rewrite(data.decode()).encode()
                files[item["path"]] = data
        return files

    def sync(self) -> bool:
        """Project every volume again, atomically, as the kubelet does on its sync loop; a volume whose
        files are unchanged is left alone, so the pooler only sees real changes. True when one changed."""
        changed = False
        for volume in self.pod["volumes"]:
            target = self.root / self.mounts[volume["name"]].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            if "projected" not in volume:
                continue
            files = self._files(volume)
            if files == self.projected.get(volume["name"]):
                continue
            data_dir = target / f"..{time.time_ns()}"
            for path, data in files.items():
                (data_dir / path).parent.mkdir(parents=True, exist_ok=True)
                (data_dir / path).write_bytes(data)
            old = (target / "..data").resolve() if (target / "..data").is_symlink() else None
            tmp_link = target / "..data_tmp"
            tmp_link.symlink_to(data_dir.name)
            os.replace(tmp_link, target / "..data")
            for top in {p.split("/")[0] for p in files}:
                link = target / top
                if not link.is_symlink():
                    link.symlink_to(f"..data/{top}")
            if old:
                shutil.rmtree(old, ignore_errors=True)
            self.projected[volume["name"]] = files
            changed = True
        return changed

    def start(self) -> None:
        """Start the container's command as a process that dies with its parent, and wait until it listens."""
        self.sync()
        argv = [self.host_path(a) for a in self.container["command"] + self.container["args"]]
        assert argv[0] == "maitred"
        argv = [sys.executable, "-m", "maitred.cli", *argv[1:]]
        if SETPRIV:
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self.log = open(self.root / "pooler.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: self._listening(), timeout=20, what="the pooler to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the pooler exited:\n{self.logs()}")
        try:
            socket.create_connection(("127.0.0.1", self.port("postgres")), timeout=1).close()
            return True
        except OSError:
            return False

    def report_ready(self, timeout: float = 30) -> str:
        """Report the running pooler as the Deployment's newest Pending pod, Running and Ready as its /readyz
        says, the way a kubelet updates the status of a pod it runs; return the pod's name. The pod is left
        unbound to a node, so the ReplicaSet controller can still delete it at once."""
        selector = ",".join(f"{k}={v}" for k, v in self.selector.items())

        def pending():
            items = json.loads(self.cp.kubectl("get", "pods", "-n", self.namespace, "-l", selector,
                                               "-o", "json"))["items"]
            return sorted((p["metadata"]["creationTimestamp"], p["metadata"]["name"]) for p in items
                          if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Pending")
        name = wait_for(pending, timeout=timeout, what="a Pending pod of the Deployment")[-1][1]
        ready = "True" if self.http("/readyz").strip() == "ready" else "False"
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": [{"type": t, "status": s, "lastTransitionTime": now} for t, s in
                           (("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", ready),
                            ("Ready", ready))],
            "containerStatuses": [{"name": self.container["name"], "image": self.container["image"], "imageID": "",
                                   "ready": ready == "True", "started": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": now}}}],
        }
        self.cp.kubectl("patch", "pod", name, "-n", self.namespace, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": status}))
        # The pod's port is moved here: say where its console really is (the operator's autotuner reads it).
        self.cp.kubectl("annotate", "--overwrite", "pod", name, "-n", self.namespace,
                        f"{CONSOLE_ADDRESS_ANNOTATION}=127.0.0.1:{self.port('postgres')}")
        return name

    def http(self, path: str) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.port('http')}{path}", timeout=5).read().decode()

    def logs(self) -> str:
        return (self.root / "pooler.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a container: the pooler drains; SIGKILL if it outlasts the wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
