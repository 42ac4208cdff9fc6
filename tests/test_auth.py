"""Authentication both ways: clients against the auth_file, and the pooler against PostgreSQL.

Client side, libpq's require_auth pins the method the pooler must ask for, so a pooler that fell back to a
weaker exchange fails the test. Server side, pg_hba.conf of the `pg` fixture fixes the method per role.
"""
from __future__ import annotations

import base64
import hashlib

import psycopg
import pytest
from scramp import ScramMechanism

from tests.support import PASSWORDS
from tests.wire import ServerError, Wire

APP_PASSWORD = PASSWORDS["app"]
REQUIRE_AUTH = {"trust": "none", "plain": "password", "md5": "md5", "scram-sha-256": "scram-sha-256"}


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def scram_secret(password: str) -> str:
    salt, stored, server, iterations = ScramMechanism("SCRAM-SHA-256").make_auth_info(password,
                                                                                       iteration_count=4096)
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def secret_of(kind: str, user: str = "app", password: str = APP_PASSWORD) -> str:
    return {"plain": password, "md5": md5_secret(user, password), "scram": scram_secret(password)}[kind]


def client_side_pooler(pooler_factory, pg, auth_type: str, userlist: dict[str, str]):
    """A pooler whose server connections all log in as trust_role, so only the client side is under test."""
    return pooler_factory(auth_type=auth_type, userlist={**userlist, "trust_role": ""},
                          databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app user=trust_role"})


def login_error(pooler, **login) -> ServerError:
    """Log in over a raw socket, expecting a refusal; the pooler must also close the connection."""
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(**login)
        assert caught.value.fields.get("S") == "FATAL"
        assert wire.closed_by_peer(5), "the pooler kept a refused client's connection open"
    return caught.value


# -- client side -----------------------------------------------------------------------------------------

ACCEPTED = [
    ("plain", "plain"), ("plain", "md5"), ("plain", "scram"),
    ("md5", "plain"), ("md5", "md5"),
    ("scram-sha-256", "plain"), ("scram-sha-256", "scram"),
]


@pytest.mark.parametrize("auth_type,secret_kind", ACCEPTED)
def test_client_logs_in_with_the_auth_type_asked_for_against_each_kind_of_secret(pooler_factory, pg, auth_type,
                                                                                 secret_kind):
    pooler = client_side_pooler(pooler_factory, pg, auth_type, {"app": secret_of(secret_kind)})
    with psycopg.connect(pooler.dsn(require_auth=REQUIRE_AUTH[auth_type]), autocommit=True) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone()[0] == 42


def test_md5_auth_type_uses_scram_when_the_secret_is_scram(pooler_factory, pg):
    pooler = client_side_pooler(pooler_factory, pg, "md5", {"app": scram_secret(APP_PASSWORD)})
    with psycopg.connect(pooler.dsn(require_auth="scram-sha-256"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_scram_secret_taken_from_pg_authid_authenticates_the_client(pooler_factory, pg):
    secret = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert secret.startswith("SCRAM-SHA-256$")
    pooler = client_side_pooler(pooler_factory, pg, "scram-sha-256", {"app": secret})
    with psycopg.connect(pooler.dsn(require_auth="scram-sha-256"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    error = login_error(pooler, user="app", password="not-the-password")
    assert (error.sqlstate, error.message) == ("08P01", "SASL authentication failed")


def test_trust_lets_in_a_user_of_the_auth_file_without_a_password(pooler_factory, pg):
    pooler = client_side_pooler(pooler_factory, pg, "trust", {"app": APP_PASSWORD})
    with psycopg.connect(pooler.dsn(password="", require_auth="none"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_trust_refuses_a_user_missing_from_the_auth_file(pooler_factory, pg):
    pooler = client_side_pooler(pooler_factory, pg, "trust", {"app": APP_PASSWORD})
    error = login_error(pooler, user="stranger")
    assert (error.sqlstate, error.message) == ("08P01", '"trust" authentication failed')     # PgBouncer's words


def test_scram_auth_type_refuses_a_user_whose_secret_is_md5(pooler_factory, pg):
    pooler = client_side_pooler(pooler_factory, pg, "scram-sha-256", {"app": md5_secret("app", APP_PASSWORD)})
    error = login_error(pooler, user="app", password=APP_PASSWORD)
    assert (error.sqlstate, error.message) == ("08P01", "SASL authentication failed")


def pgbouncers_refusal(auth_type: str, secret_kind: str = "plain") -> str:
    """What PgBouncer tells a client with the wrong credentials: SCRAM's words, or the password's."""
    scram = auth_type == "scram-sha-256" or (auth_type == "md5" and secret_kind == "scram")
    return "SASL authentication failed" if scram else "password authentication failed"


@pytest.mark.parametrize("auth_type,secret_kind", ACCEPTED + [("md5", "scram")])
def test_wrong_password_is_refused_with_pgbouncers_words(pooler_factory, pg, auth_type, secret_kind):
    pooler = client_side_pooler(pooler_factory, pg, auth_type, {"app": secret_of(secret_kind)})
    error = login_error(pooler, user="app", password="wrong-" + APP_PASSWORD)
    assert (error.sqlstate, error.message) == ("08P01", pgbouncers_refusal(auth_type, secret_kind))
    with pytest.raises(psycopg.OperationalError, match=pgbouncers_refusal(auth_type, secret_kind)):
        psycopg.connect(pooler.dsn(password="wrong"))
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:   # the right password still works
        assert conn.execute("SELECT 1").fetchone()[0] == 1


@pytest.mark.parametrize("auth_type", ["plain", "md5", "scram-sha-256"])
def test_unknown_user_is_refused_like_a_wrong_password(pooler_factory, pg, auth_type):
    pooler = client_side_pooler(pooler_factory, pg, auth_type, {"app": APP_PASSWORD})
    error = login_error(pooler, user="nobody", password=APP_PASSWORD)
    assert (error.sqlstate, error.message) == ("08P01", pgbouncers_refusal(auth_type))


def test_unknown_database_is_refused_with_no_such_database(pooler_factory, pg):
    pooler = pooler_factory(auth_type="scram-sha-256")
    error = login_error(pooler, user="app", password=APP_PASSWORD, database="nope")
    assert (error.sqlstate, error.message) == ("08P01", "no such database: nope")
    with pytest.raises(psycopg.OperationalError, match="no such database: nope"):
        psycopg.connect(pooler.dsn(dbname="nope"))


def test_empty_password_is_refused(pooler_factory, pg):
    pooler = client_side_pooler(pooler_factory, pg, "plain", {"app": ""})
    error = login_error(pooler, user="app", password="")
    assert (error.sqlstate, error.message) == ("08P01", "password authentication failed")


# -- server side -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("role,secret", [
    ("app", "plain"),          # hba scram-sha-256
    ("md5_role", "plain"),     # hba md5
    ("md5_role", "md5"),       # hba md5, with only the md5 hash known to the pooler
    ("plain_role", "plain"),   # hba password (cleartext)
    ("trust_role", "plain"),   # hba trust
])
def test_pooler_logs_in_to_postgresql_with_the_method_pg_hba_asks_for(pooler_factory, pg, role, secret):
    password = PASSWORDS[role] or "client-side-only"
    auth_type = "md5" if secret == "md5" else "scram-sha-256"
    pooler = pooler_factory(auth_type=auth_type, userlist={role: secret_of(secret, role, password)})
    with psycopg.connect(pooler.dsn(user=role, password=password), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role


def test_scram_secret_from_pg_authid_logs_in_to_a_scram_server(pooler_factory, pg):
    """PgBouncer's SCRAM pass-through: the keys learnt from the client's proof log the pooler in."""
    secret = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    pooler = pooler_factory(auth_type="scram-sha-256", userlist={"app": secret})
    for _ in range(2):
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "app"


def test_server_login_failure_reaches_the_client_as_an_error(pooler_factory, pg):
    pooler = pooler_factory(
        auth_type="scram-sha-256", server_login_retry=1,
        databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app user=app password=wrong-password"})
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(user="app", password=APP_PASSWORD, limit=10)
        assert 'password authentication failed for user "app"' in caught.value.message
        assert wire.closed_by_peer(5)


def test_scram_secret_with_another_salt_than_the_servers_fails_the_login_with_an_error(pooler_factory, pg):
    """The keys of a verifier PostgreSQL does not hold cannot log in; the client is told so, not left waiting."""
    pooler = pooler_factory(auth_type="scram-sha-256", server_login_retry=1,
                            userlist={"app": scram_secret(APP_PASSWORD)})
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(user="app", password=APP_PASSWORD, limit=10)
        assert 'password authentication failed for user "app"' in caught.value.message
        assert wire.closed_by_peer(5)
