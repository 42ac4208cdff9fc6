"""What a client keeps only while it logs in, in an object of its own that a logged-in client drops; and the
settings every login reads, taken from the config once (LoginRules).

An idle client is mostly its slots, 8 bytes each: the fields below are read and written as `client.startup`,
`client.auth`, ... like any other, but live in the client's `Login`, and read as their resting value once the
client has none. So a logged-in client pays one slot (`login`, None) for all of them. The one such field set
after login, wait_notified, gives the few clients that ever wait that long a Login again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .auth import ClientAuth
    from .config import Config


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


class LoginRules:
    """The settings a login reads, taken from the config when it comes into force (start, RELOAD, SET): an
    attribute each, where a Config.get per setting per login cost a method call each, some 600 instructions, on
    the path a connection per transaction runs every time."""

    __slots__ = ("auth_type", "has_auth_file", "remote_access", "console_users", "add_host", "max_client_conn",
                 "ignored", "max_db_client_connections", "max_user_client_connections", "notice", "scram_iterations",
                 "socket_buffer", "reset_always")

    def __init__(self, config: "Config") -> None:
        get = config.get
        self.auth_type = get("auth_type")
        self.has_auth_file = bool(get("auth_file"))
        self.remote_access = get("remote_access")
        self.console_users = get("admin_users") + get("stats_users")
        self.add_host = get("application_name_add_host")
        self.max_client_conn = get("max_client_conn")
        ignored = get("ignore_startup_parameters")
        self.ignored = frozenset(name.lower() for name in ignored) if ignored else ()
        self.max_db_client_connections = get("max_db_client_connections")
        self.max_user_client_connections = get("max_user_client_connections")
        text = get("login_notify_message")      # a NOTICE before the first ReadyForQuery, when set
        self.notice = protocol.notice_response(text) if text else b""
        self.scram_iterations = get("scram_iterations")      # what a plain-text secret is hashed with for SCRAM
        self.socket_buffer = get("tcp_socket_buffer")        # 0: no system call per client (sockopts)
        self.reset_always = get("server_reset_query_always")   # read at every logout
