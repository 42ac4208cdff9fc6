"""PostgreSQL's own CPU use, as a Prometheus counter: the database server's share of the machine.

The benchmark runs clients, pooler, PostgreSQL (and, on a shared machine, other people's work) on one host, so
node-exporter's non-idle share is not the database host's CPU that the autotuner is meant to read: it is
saturated by the clients alone. `--cpu-signal postgres` gives the autotuner what a dedicated database host
would show instead: the CPU seconds of the postmaster and every backend, through node-exporter's textfile
collector, read with `rate(...)` like node_cpu_seconds_total.
"""
from __future__ import annotations

import os


from .. import processes
from .background import Background

METRIC = "maitred_bench_postgres_cpu_seconds_total"


def cpu_query(cores: int, window: str = "5s") -> str:
    """PromQL for PostgreSQL's CPU use as a share of the machine, 0..1."""
    return f"sum(rate({METRIC}[{window}])) / {cores}"


def postmaster_pid(datadir: str) -> int:
    with open(os.path.join(datadir, "postmaster.pid")) as f:
        return int(f.readline())


def cpu_seconds(postmaster: int) -> float:
    """User + system CPU seconds of the postmaster, its live backends and every backend it has reaped
    (cutime + cstime). Not atomic: a backend reaped between the two reads is missed once."""
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / processes.CLOCK_TICKS  # cutime, cstime
    return processes.cpu_seconds(processes.process_tree(postmaster)) + reaped


class CpuCounter:
    """PostgreSQL's CPU seconds as a counter that never goes down: a reading that missed a backend reaped
    mid-read holds the previous value, instead of looking like a counter reset to Prometheus' rate()."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.value = 0.0

    def read(self) -> float:
        self.value = max(self.value, cpu_seconds(self.postmaster))
        return self.value


class TextfileExporter(Background):
    """Writes METRIC for node-exporter's textfile collector every `every` seconds until stopped."""

    def __init__(self, postmaster: int, folder: str, every: float) -> None:
        super().__init__("postgres-cpu")
        self.counter, self.every = CpuCounter(postmaster), every
        self.path = os.path.join(folder, "postgres_cpu.prom")

    def loop(self) -> None:
        while True:
            try:
                text = f"# TYPE {METRIC} counter\n{METRIC} {self.counter.read():.3f}\n"
            except OSError:
                text = ""  # PostgreSQL gone: no sample rather than a wrong one
            with open(self.path + ".tmp", "w") as f:
                f.write(text)
            os.replace(self.path + ".tmp", self.path)  # the collector never reads half a file
            if self.stopping.wait(self.every):
                return
