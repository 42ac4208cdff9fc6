"""The kernel's connection tracking, which can spoil a benchmark of connection churn.

Once anything loads nf_conntrack (the kubelet's KUBE-FIREWALL rules do, on a machine that ran the real-node
tests), every loopback connection is tracked, and each closed one stays in the table for two minutes
(`nf_conntrack_tcp_timeout_time_wait`). S2 opens thousands of connections a second, so the table (262,144
entries by default on this machine) fills within a run; from then on the kernel drops new connections' SYNs
("nf_conntrack: table full, dropping packet"), and a client waits 1 s, then 3 s, then 7 s to retry. A round
that hits it collapses to tens of connections a second, whichever target is running then: most often the
one after PgBouncer, since the table fills as the targets take their turns.

So a run makes the table large enough for itself (`roomy_table`, as root; put back afterwards), and each
measured run counts the packets the kernel dropped for a full table (`drops`); a run with drops is a failed
run, with the reason, not a figure.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

PROC = "/proc/sys/net/netfilter"
STAT = "/proc/net/stat/nf_conntrack"
# Room for two minutes of 16,000 connections a second (each stays two minutes after its close), about 600 MiB
# of kernel memory at most, and only while the run keeps the table that full.
ROOMY = 1 << 21


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tracking() -> bool:
    """Whether the kernel tracks connections (nf_conntrack loaded) in this network namespace."""
    return _read_int(os.path.join(PROC, "nf_conntrack_max")) is not None


def drops() -> int:
    """Packets the kernel dropped so far because the table was full (all CPUs), 0 without tracking."""
    try:
        with open(STAT) as f:
            head, *rows = f.read().split("\n")
    except OSError:
        return 0
    column = head.split().index("drop")
    return sum(int(row.split()[column], 16) for row in rows if row.strip())


@contextlib.contextmanager
def roomy_table(say: Callable[[str], None]) -> Iterator[None]:
    """A table of at least ROOMY entries for the run, where the kernel tracks connections and we may set it;
    else a line on what may happen. The old size comes back afterwards."""
    path = os.path.join(PROC, "nf_conntrack_max")
    old = _read_int(path)
    if old is None or old >= ROOMY:
        yield
        return
    try:
        with open(path, "w") as f:
            f.write(str(ROOMY))
    except OSError as exc:
        say(f"connection tracking is on with a table of {old:,} entries, which S2 fills (SYNs dropped, clients "
            f"waiting seconds to retry), and it cannot be enlarged ({exc.strerror}): runs that hit a full table "
            f"are reported as failed")
        yield
        return
    say(f"connection tracking is on: its table raised from {old:,} to {ROOMY:,} entries for this run, so that "
        f"connection churn does not fill it")
    try:
        yield
    finally:
        try:
            with open(path, "w") as f:
                f.write(str(old))
        except OSError as exc:
            say(f"the connection-tracking table could not be put back to {old:,} entries ({exc.strerror})")
