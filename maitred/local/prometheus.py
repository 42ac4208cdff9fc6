"""A throwaway Prometheus scraping a node-exporter every second, on free loopback ports in a folder of its own:
the autotuner's CPU signal for the quick start, the tests and the benchmarks, from Debian's packages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from maitred.local.postgres import free_port

CPU_QUERY = '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5s]))'


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        raise RuntimeError(f"{name} not found: install Debian's {name} package (scripts/install-deps.sh)")
    return path


class LocalPrometheus:
    """prometheus + prometheus-node-exporter; `start()` returns once the node's CPU can be queried."""

    def __init__(self, base_dir: str | None = None, scrape_interval: float = 1.0, textfile_dir: str | None = None):
        """`textfile_dir`: node-exporter also serves the .prom files there (metrics the caller writes itself)."""
        self.textfile_dir = textfile_dir
        self.owned = base_dir is None          # a folder we made is removed at stop()
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="maitred-prometheus-")
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.exporter_port = free_port()
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "LocalPrometheus":
        os.makedirs(self.base_dir, exist_ok=True)
        config = os.path.join(self.base_dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"global:\n  scrape_interval: {self.scrape_interval:g}s\n  evaluation_interval: "
                    f"{self.scrape_interval:g}s\nscrape_configs:\n  - job_name: node\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.exporter_port}']\n")
        textfile = (["--collector.textfile", f"--collector.textfile.directory={self.textfile_dir}"]
                    if self.textfile_dir else [])
        self._spawn("node-exporter", [_binary("prometheus-node-exporter"), "--collector.disable-defaults",
                                      "--collector.cpu", "--collector.loadavg", *textfile,
                                      f"--web.listen-address=127.0.0.1:{self.exporter_port}"])
        self._spawn("prometheus", [_binary("prometheus"), f"--config.file={config}",
                                   f"--storage.tsdb.path={os.path.join(self.base_dir, 'data')}",
                                   f"--web.listen-address=127.0.0.1:{self.port}"])
        try:
            self.wait_for(CPU_QUERY, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(os.path.join(self.base_dir, f"{name}.log"), "wb")
        self.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir))
        log.close()

    def query(self, promql: str) -> list[dict]:
        """The instant query's result vector (empty when it has none yet)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict]:
        """Wait until `promql` returns a series: Prometheus is up and has scraped enough to answer it."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                result = self.query(promql)
                if result:
                    return result
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus had no answer to {promql} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        out = []
        for name in ("prometheus", "node-exporter"):
            try:
                with open(os.path.join(self.base_dir, f"{name}.log"), errors="replace") as f:
                    out.append(f"--- {name}\n" + f.read()[-1500:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        """Stop both (Prometheus first, so it does not log a failed scrape) and remove a folder we made."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if self.owned:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalPrometheus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
