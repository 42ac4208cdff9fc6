"""A database host and a client host on one machine: PostgreSQL on cores of its own, everything else on the rest.

In production the database runs on a host of its own: what pgbench and the poolers burn does not slow its
queries, and its queries do not slow them. Here they share the machine, so a tier that serves more clients
would also take CPU from the other tier's queries inside PostgreSQL, and the comparison would measure this
host instead of the pool sizes. With two cores or more, the benchmark splits them with cpusets (cgroup v1
`cpuset`, or v2's cpuset controller): the postmaster and every backend on the last core(s), the benchmark
itself and every process it starts (pgbench, the poolers, the autotuner, Prometheus) on the others. Static and
autotuned runs get the same split. Without root, a cpuset controller or a second core the benchmark goes on
unsplit and says so in its results; `cores` is then the whole machine's.
"""
from __future__ import annotations

import os

from .. import processes

V1 = "/sys/fs/cgroup/cpuset"
V2 = "/sys/fs/cgroup"
GROUPS = ("maitred-bench-postgres", "maitred-bench-clients")


def split(cores: int) -> tuple[str, str] | None:
    """(database cores, client cores) as cpuset lists: the last half (rounded down, at least one) to
    PostgreSQL; None with one core."""
    if cores < 2:
        return None
    db = max(1, cores // 2)
    first_db = cores - db
    clients = "0" if first_db == 1 else f"0-{first_db - 1}"
    database = str(first_db) if db == 1 else f"{first_db}-{cores - 1}"
    return database, clients


class DatabaseHost:
    """While the context lasts, PostgreSQL's processes on cores of their own and this process (with what it
    starts from now on) on the others. `cores` is how many PostgreSQL has (its CPU share is of these);
    `description` says what was done, or why not, for the results."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.cores = os.cpu_count() or 1
        self.description = "shared with the clients and poolers (no cpuset)"
        self.paths: list[str] = []
        self.root: str | None = None

    def __enter__(self) -> "DatabaseHost":
        plan = split(os.cpu_count() or 1)
        if plan is None:
            self.description = "shared with the clients and poolers (one core)"
            return self
        try:
            self._split(*plan)
        except OSError as exc:
            self.__exit__()
            self.description = f"shared with the clients and poolers (cpuset: {exc.strerror or exc})"
        return self

    def _split(self, database: str, clients: str) -> None:
        if os.path.exists(os.path.join(V1, "cpuset.cpus")):
            root, cpus, mems = V1, "cpuset.cpus", "cpuset.mems"
        elif "cpuset" in _read(os.path.join(V2, "cgroup.controllers")).split():
            root, cpus, mems = V2, "cpuset.cpus", "cpuset.mems"
            with open(os.path.join(V2, "cgroup.subtree_control"), "w") as f:
                f.write("+cpuset")
        else:
            raise OSError(0, "no cpuset controller")
        self.root = root
        memory = _read(os.path.join(root, "cpuset.effective_mems" if root == V2 else mems)).strip() or "0"
        for name, cores in zip(GROUPS, (database, clients)):
            path = os.path.join(root, name)
            os.makedirs(path, exist_ok=True)
            self.paths.append(path)
            _write(os.path.join(path, cpus), cores)
            _write(os.path.join(path, mems), memory)
        for pid in processes.process_tree(os.getpid()):      # the benchmark and its helpers: the client host
            _move(pid, os.path.join(self.paths[1], "cgroup.procs"))
        for pid in processes.process_tree(self.postmaster):  # new backends are forked into it
            _move(pid, os.path.join(self.paths[0], "cgroup.procs"))
        self.cores = len(_cpu_list(database))
        self.description = (f"cores {database} of its own (cpuset; clients, poolers and Prometheus on {clients}), "
                            "as on a host of its own")

    def __exit__(self, *exc) -> None:
        for path in self.paths:
            try:
                for pid in [int(line) for line in _read(os.path.join(path, "cgroup.procs")).split()]:
                    _move(pid, os.path.join(self.root, "cgroup.procs"))   # back to the machine's group
                os.rmdir(path)
            except OSError:
                pass                  # an empty group left behind is harmless; the next run reuses it
        self.paths = []


def _cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _move(pid: int, procs: str) -> None:
    try:
        _write(procs, str(pid))
    except ProcessLookupError:
        pass                          # a process that just exited
