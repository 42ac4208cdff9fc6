"""Server host names, looked up as PgBouncer's DNS cache does: an answer is kept dns_max_ttl seconds and a failed
lookup dns_nxdomain_ttl (0 keeps nothing: every new server connection looks the name up), the addresses of an
answer are taken in turn (beyond PgBouncer, one that refuses is passed over for the next), and when a fresh
answer lacks an address, the servers connected to it close as they are released (a fail-over done in DNS).

Lookups go through loop.getaddrinfo, the system's resolver (/etc/hosts included), one at a time per name: the
connections that need the name meanwhile wait for the same answer. An IP address is never looked up. Only
server connections use the cache; the name stays what TLS checks the server's certificate against.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Pooler

log = logging.getLogger("maitred.dns")


@dataclass
class Answer:
    """What a lookup of one name gave, until `expires`: its addresses, or why there are none."""

    addresses: tuple[str, ...]
    error: str
    expires: float
    turn: int = 0       # the next connection tries addresses[turn % len(addresses)] first


class Resolver:
    """The answers kept for one pooler process, by host name."""

    def __init__(self, app: "Pooler") -> None:
        self.app = app
        self.answers: dict[str, Answer] = {}
        self.lookups: dict[str, asyncio.Task] = {}     # in flight, by name

    async def connect(self, protocol_factory, host: str, port: int):
        """loop.create_connection to `host`: its addresses in turn, each connection starting one further, and the
        next address tried when one fails, as create_connection would; OSError when the name does not resolve."""
        error = None
        for address in await self.addresses(host):
            try:
                return await self.app.loop.create_connection(protocol_factory, address, port)
            except OSError as exc:
                error = exc
        raise error

    async def addresses(self, host: str) -> tuple[str, ...]:
        """The addresses of `host`, from its kept answer or a new lookup, in the order the next connection tries
        them."""
        if _is_address(host):
            return (host,)
        answer = self.answers.get(host)
        if answer is None or self.app.now() >= answer.expires:
            lookup = self.lookups.get(host)
            if lookup is None:
                lookup = self.lookups[host] = self.app.loop.create_task(self._look_up(host))
            answer = await asyncio.shield(lookup)     # a connection that times out leaves the lookup to the others
        if answer.error:
            raise socket.gaierror(socket.EAI_NONAME, answer.error)
        first = answer.turn % len(answer.addresses)
        answer.turn += 1
        return answer.addresses[first:] + answer.addresses[:first]

    async def _look_up(self, host: str) -> Answer:
        config = self.app.config
        try:
            found = await self.app.loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("DNS lookup failed: %s: %s", host, exc.strerror or exc)
            answer = Answer((), exc.strerror or str(exc), self.app.now() + config.get("dns_nxdomain_ttl"))
        else:
            addresses = tuple(dict.fromkeys(info[4][0] for info in found))
            answer = Answer(addresses, "", self.app.now() + config.get("dns_max_ttl"))
            old = self.answers.get(host)
            if old is not None and set(old.addresses) - set(addresses):
                self._retire(host, set(old.addresses) - set(addresses))
        finally:
            self.lookups.pop(host, None)
        self.answers[host] = answer
        return answer

    def _retire(self, host: str, gone: set[str]) -> None:
        """Servers connected to `host` at an address its answer no longer has: idle ones close now, busy ones
        when released (close_needed), as after RECONNECT."""
        log.info("DNS answer for %s no longer has %s: its servers there reconnect", host, ", ".join(sorted(gone)))
        for pool in self.app.pools.values():
            for server in list(pool.servers):
                transport = server.transport
                if server.target is None or server.target.host != host or transport is None \
                        or (transport.get_extra_info("peername") or ("",))[0] not in gone:
                    continue
                server.close_needed = True
                if server in pool.idle:
                    server.close("database configuration changed")

    def rows(self) -> list[tuple[str, int, str]]:
        """SHOW DNS_HOSTS: each name, the seconds its answer is still kept, its addresses."""
        now = self.app.now()
        return [(name, max(0, int(answer.expires - now)), ",".join(answer.addresses))
                for name, answer in sorted(self.answers.items())]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
