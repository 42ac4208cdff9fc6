"""Every client of the pooler, as one collection over the two registries that hold them.

A client is in `logins` from its connection until it gets its cancel key, then in the pooler's cancel keys
(key → client) until it goes: a logged-in client costs one registry entry, not two.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .client import Client


class Clients:
    __slots__ = ("logins", "keyed")

    def __init__(self, keyed: dict[int, "Client"]) -> None:
        self.logins: dict[Client, None] = {}      # connected, no cancel key yet: logging in
        self.keyed = keyed                        # logged in (and consoles), by cancel key

    def __iter__(self) -> Iterator["Client"]:
        yield from self.logins
        yield from self.keyed.values()

    def __len__(self) -> int:
        return len(self.logins) + len(self.keyed)
