"""A database's existence is not revealed before authentication (PgBouncer's mock authentication): asking for a
database the pooler does not have gets the same exchange and the same refusal as a wrong password, and only a
client that logs in is told `no such database`. Checked on maitred and, side by side, on PgBouncer."""
from __future__ import annotations


import pytest

from tests.support import PASSWORDS, require_binary
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire

AUTH_TYPES = ["plain", "md5", "scram-sha-256"]


def refusal(port: int, **login) -> tuple[list[int], str, str, str]:
    """Log in as `login` says and expect a refusal: (the authentication requests seen, severity, SQLSTATE,
    message)."""
    with Wire(port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(**login)
        assert wire.closed_by_peer(5), "the pooler kept a refused client's connection open"
    error = caught.value
    return wire.auth_requests, error.fields.get("S"), error.sqlstate, error.message


def assert_unknown_database_looks_like_a_wrong_password(port: int) -> None:
    password = PASSWORDS["app"]
    wrong = refusal(port, user="app", password="wrong", database="app")
    assert wrong[0], "no authentication exchange at all"
    assert refusal(port, user="app", password="wrong", database="nope") == wrong
    # A user the auth_file does not know gets the same on either database.
    stranger = refusal(port, user="stranger", password=password, database="app")
    assert refusal(port, user="stranger", password=password, database="nope") == stranger
    # The right password, and only it, learns that the database does not exist.
    requests, severity, _, message = refusal(port, user="app", password=password, database="nope")
    assert requests[:len(wrong[0])] == wrong[0] and severity == "FATAL"     # SCRAM's final message besides
    assert message.startswith("no such database") and "nope" in message


@pytest.mark.parametrize("auth_type", AUTH_TYPES)
def test_an_unknown_database_is_refused_as_a_wrong_password_until_the_login_succeeds(pooler_factory, auth_type):
    pooler = pooler_factory(auth_type=auth_type)
    assert_unknown_database_looks_like_a_wrong_password(pooler.port)
    # maitred's words for both.
    assert refusal(pooler.port, user="app", password="wrong", database="nope")[2:] == (
        "08P01", "SASL authentication failed" if auth_type == "scram-sha-256" else "password authentication failed")
    assert refusal(pooler.port, user="app", password=PASSWORDS["app"], database="nope")[2:] == (
        "08P01", "no such database: nope")


@pytest.mark.parametrize("auth_type", AUTH_TYPES)
def test_pgbouncer_hides_an_unknown_database_the_same_way(pg, auth_type):
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": auth_type},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, PASSWORDS)
    try:
        assert_unknown_database_looks_like_a_wrong_password(bouncer.port)
    finally:
        bouncer.stop()


def test_trust_tells_no_such_database_only_to_a_user_of_the_auth_file(pooler_factory):
    pooler = pooler_factory(auth_type="trust")
    assert refusal(pooler.port, user="stranger", database="nope")[2:] == ("08P01", '"trust" authentication failed')
    assert refusal(pooler.port, user="app", database="nope")[2:] == ("08P01", "no such database: nope")
