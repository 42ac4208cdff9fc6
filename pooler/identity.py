"""Which method authenticates a login (auth_type, or the auth_hba_file line it matches), and the two methods that
need no password: cert (a client certificate verified against client_tls_ca_file) and peer (the OS user at the
other end of the Unix socket). PgBouncer's words go to the client; the precise reason goes to the log.
"""
from __future__ import annotations

import pwd
from typing import TYPE_CHECKING

from .access import peer_uid
from .hba import Access, Rule

if TYPE_CHECKING:
    from .client import Client

LOGIN_REJECTED = "login rejected"                           # a reject line, or no line at all
FAILED = {"cert": "certificate authentication failed", "peer": "unix socket login rejected"}


def choose(client: "Client") -> tuple[str | None, Rule | None]:
    """(method, the hba line that chose it); method None when the login is rejected."""
    app = client.app
    method = app.rules.auth_type
    if method != "hba":
        return method, None
    transport = client.transport
    peer = transport.get_extra_info("peername")
    rule = app.hba.rule_for(unix=client.unix, address=str(peer[0]) if isinstance(peer, tuple) else None,
                            tls=transport.get_extra_info("ssl_object") is not None, dbname=client.dbname,
                            user=client.user, physical_replication=client.replication == "true")
    if rule is None or rule.method == "reject":
        return None, rule
    return ("plain" if rule.method == "password" else rule.method), rule


def refusal(method: str, rule: Rule | None, client: "Client", known: bool) -> str | None:
    """Why a cert or peer login fails (for the log), or None when the client is who it says; `known`: the user
    has a secret (PgBouncer lets no unknown user in, whatever the method)."""
    extra = client.transport.get_extra_info
    if method == "cert":
        return cert_refusal(client.app.hba, rule, extra("ssl_object"), client.user, known)
    return peer_refusal(client.app.hba, rule, client.unix, extra("socket"), client.user, known)


def certificate_names(ssl_object) -> tuple[str, ...]:
    """The CommonName of the client's certificate, which the TLS layer verified against client_tls_ca_file."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return tuple(value for rdn in (cert or {}).get("subject", ()) for key, value in rdn if key == "commonName")


def os_user(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def cert_refusal(access: Access | None, rule: Rule | None, ssl_object, user: str, known: bool) -> str | None:
    """Why the certificate does not log in `user` (for the log); None when it does. Without a map the
    certificate's CommonName must be the user name; with one, a line of the map must allow it."""
    if ssl_object is None:
        return "TLS connection required"
    names = certificate_names(ssl_object)
    if not names:
        return "TLS client certificate required"
    if not known:
        return f"no such user: {user}"
    if rule is not None and rule.map:
        return None if access.mapped(rule.map, names, user) else f"ident map: {rule.map} does not have a match"
    return None if user in names else f"TLS certificate name mismatch: {', '.join(names)} is not {user}"


def peer_refusal(access: Access | None, rule: Rule | None, unix: bool, sock, user: str, known: bool) -> str | None:
    """Why the OS user at the other end of the Unix socket may not log in as `user`; None when it may."""
    if not unix:
        return "peer authentication works over the Unix socket only"
    name = os_user(peer_uid(sock))
    if name is None:
        return "the OS user of the peer is unknown"
    if not known:
        return f"no such user: {user}"
    if rule is not None and rule.map:
        return None if access.mapped(rule.map, (name,), user) else f"ident map {rule.map} cannot be matched"
    return None if name == user else f"OS user {name} is not {user}"
