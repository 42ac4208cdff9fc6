"""What a client keeps only while it logs in, in an object of its own that a logged-in client drops.

An idle client is mostly its slots, 8 bytes each: the fields below are read and written as `client.startup`,
`client.auth`, ... like any other, but live in the client's `Login`, and read as their resting value once the
client has none. So a logged-in client pays one slot (`login`, None) for all of them. The one such field set
after login, wait_notified, gives the few clients that ever wait that long a Login again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .auth import ClientAuth


class Login:
    __slots__ = ("startup", "auth", "queried_secret", "handshaking", "tls", "own_user", "unix", "wait_notified",
                 "dbname")

    def __init__(self, unix: bool = False) -> None:
        self.startup = b""                      # bytes read from the client and not yet handled
        self.auth: ClientAuth | None = None
        self.queried_secret: str | None = None  # what auth_query gave for this user (auth_query.py)
        self.handshaking = False                # the TLS layer owns the socket until its handshake ends
        self.tls = False                        # its handshake succeeded: the login line names its protocol
        self.own_user = False                   # the console's `pgbouncer` of the pooler's OS user (access.py)
        self.unix = unix                        # connected over the Unix socket
        self.wait_notified = False              # told once that it is queued (query_wait_notify)
        self.dbname = ""                        # the database asked for, until the client has a pool


RESTING = Login()     # what each field reads as without a Login; never written to


class LoginField:
    """A client attribute kept in its Login; writing one to a client without a Login gives it one."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name        # named here, not by __set_name__, which an extension type's body never calls

    def __get__(self, client, owner: type | None = None):
        if client is None:
            return self
        login = client.login
        return getattr(RESTING if login is None else login, self.name)

    def __set__(self, client, value) -> None:
        login = client.login
        if login is None:
            login = client.login = Login()
        setattr(login, self.name, value)


class Database(LoginField):
    """A client's database: kept in its Login until it has a pool, whose name it is from then on."""

    __slots__ = ()

    def __get__(self, client, owner: type | None = None):
        if client is not None and client.pool is not None:
            return client.pool.name
        return super().__get__(client, owner)
