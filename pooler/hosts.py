"""Host lists: `host=a,b:5433,/run/postgresql` and load_balance_hosts choose where a new server connection goes.

As PgBouncer 1.25 documents: `round-robin` (the default) takes the next host of the list for every new
connection; `disable` stays on one host until a connection to it fails, then moves to the next. Beyond
PgBouncer, a host whose connection failed within server_login_retry is skipped while another host of the list
has not failed, so one host down does not fail every other login; when all have failed, the list is walked
as it is. An entry may carry its own port (`name:port`, `[v6addr]:port`); `port=` is the default for the rest.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Pooler

_WITH_PORT = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<v6port>\d+)|(?P<name>[^:/\[\]]+):(?P<port>\d+)")


@dataclass(frozen=True)
class Target:
    """One entry of a host list; a host that is None or starts with / is a Unix socket directory."""

    host: str | None
    port: int

    @property
    def unix(self) -> bool:
        return not self.host or self.host.startswith("/")


def parse_hosts(host: str | None, port: int) -> tuple[Target, ...]:
    """The entries of `host=`, each with its own port or `port`; ValueError names a malformed one."""
    if not host or "," not in host and not _WITH_PORT.fullmatch(host):
        return (Target(host, port),)
    targets = []
    for entry in host.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"empty entry in host list {host!r}")
        found = _WITH_PORT.fullmatch(entry)
        if found is None:
            targets.append(Target(entry, port))
            continue
        number = int(found["v6port"] or found["port"])
        if not 0 < number < 65536:
            raise ValueError(f"invalid port in host list entry {entry!r}")
        targets.append(Target(found["v6"] or found["name"], number))
    return tuple(targets)


def choose(count: int, cursor: int, mode: str, failing: list[bool]) -> int:
    """The index of the host the next connection goes to. `cursor`: the last one chosen (-1: none yet);
    `failing[i]`: host i failed lately and is skipped while another has not."""
    start = cursor if mode == "disable" and cursor >= 0 else cursor + 1
    for step in range(count):
        index = (start + step) % count
        if not failing[index]:
            return index
    return (cursor + 1) % count


@dataclass
class HostChoice:
    """Where one database's list stands: the host chosen last and when each host last failed."""

    targets: tuple[Target, ...]
    cursor: int = -1
    failed_at: dict[Target, float] = field(default_factory=dict)

    def _failing(self, now: float, retry: float) -> list[bool]:
        return [now - self.failed_at[t] < retry if t in self.failed_at else False for t in self.targets]

    def pick(self, mode: str, now: float, retry: float) -> Target:
        self.cursor = choose(len(self.targets), self.cursor, mode, self._failing(now, retry))
        return self.targets[self.cursor]

    def failed(self, target: Target, now: float) -> None:
        self.failed_at[target] = now

    def succeeded(self, target: Target) -> None:
        self.failed_at.pop(target, None)

    def another_left(self, now: float, retry: float) -> bool:
        """A host of the list that has not failed lately: the next connection may go there at once."""
        return len(self.targets) > 1 and not all(self._failing(now, retry))


def choice_for(app: "Pooler", db) -> HostChoice:
    """The choice state of `db`'s host list, kept while its host= and port= stay the same."""
    key = (db.host, db.port)
    found = app.host_choices.get(key)
    if found is None:
        found = app.host_choices[key] = HostChoice(parse_hosts(db.host, db.port))
    return found
