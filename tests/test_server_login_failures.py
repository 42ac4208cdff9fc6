"""When PostgreSQL refuses the pooler's login, or cannot be reached: its own error reaches the clients, and a
restart is ridden out by the clients queued meanwhile (PgBouncer's server_login_retry and query_wait_timeout)."""
from __future__ import annotations

import socket
import threading

import psycopg
import pytest

from maitred.local.postgres import SUPERUSER, SUPERUSER_PASSWORD, LocalPostgres
from tests.support import PASSWORDS, PoolerSet, require_binary, wait_for
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire

REFUSALS = {
    # role in the [databases] entry, its password there, what PostgreSQL answers
    "nologin": ("nologin_role", "nologin-secret", "28000", 'role "nologin_role" is not permitted to log in'),
    "wrong password": ("app", "not-the-password", "28P01", 'password authentication failed for user "app"'),
}


def _refusal_entry(pg, case: str) -> str:
    role, password, _, _ = REFUSALS[case]
    return f"host=127.0.0.1 port={pg.port} dbname=app user={role} password={password}"


def _login_error(port: int, database: str, limit: float = 10) -> ServerError:
    """The ErrorResponse a client logging in to `database` as app gets, with its fields as sent."""
    with Wire(port, timeout=limit) as wire, pytest.raises(ServerError) as excinfo:
        wire.login(user="app", password=PASSWORDS["app"], database=database, limit=limit)
    return excinfo.value


@pytest.fixture
def nologin_role(pg):
    pg.create_role("nologin_role", "nologin-secret")
    pg.psql("ALTER ROLE nologin_role NOLOGIN")


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_postgresql_login_refusal_reaches_the_client_with_its_sqlstate_and_message(pooler_factory, pg, case,
                                                                                   nologin_role):
    _, _, sqlstate, message = REFUSALS[case]
    pooler = pooler_factory(databases={"refused": _refusal_entry(pg, case)}, server_login_retry=30)
    first = _login_error(pooler.port, "refused")
    assert (first.sqlstate, first.message) == (sqlstate, message)
    # A client arriving while the login keeps failing gets PgBouncer 1.25's fast fail, with that error in it.
    second = _login_error(pooler.port, "refused")
    assert second.sqlstate == sqlstate
    assert second.message == f"server login has been failing, cached error: {message} " \
                                          "(server_login_retry)"


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_pgbouncer_passes_the_same_refusal_on(pg, case, nologin_role):
    """Side by side: Debian's PgBouncer gives the first client PostgreSQL's message too. Its 1.18 sends it
    with 08P01; 1.25 (disconnect_client_sqlstate) sends PostgreSQL's SQLSTATE, as maitred does."""
    _, _, _, message = REFUSALS[case]
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "auth_type": "plain"},
                        {"refused": _refusal_entry(pg, case)}, {"app": PASSWORDS["app"]})
    try:
        error = _login_error(bouncer.port, "refused")
        assert error.message == message
    finally:
        bouncer.stop()


def test_queued_clients_ride_out_a_postgresql_restart(tmp_path):
    own = LocalPostgres()     # this test stops its PostgreSQL: not the session's
    own.start()
    poolers = PoolerSet(own, tmp_path)
    try:
        pooler = poolers.start(
            databases={"app": f"host=127.0.0.1 port={own.port} dbname=postgres user={SUPERUSER} "
                              f"password={SUPERUSER_PASSWORD}"},
            pool_mode="transaction", default_pool_size=2, server_login_retry=0.5, query_wait_timeout=60)
        clients = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(4)]
        for conn in clients:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        own.stop()
        results: dict[int, object] = {}

        def run(n: int) -> None:
            try:
                results[n] = clients[n].execute("SELECT 40 + 2").fetchone()[0]
            except Exception as exc:      # the assertion below shows which
                results[n] = exc

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(clients))]
        for thread in threads:
            thread.start()
        # Each retry is refused; the clients stay queued instead of failing.
        wait_for(lambda: pooler.log_text().count("Connection refused") >= 2, timeout=20,
                 message="the pooler to retry against the stopped PostgreSQL")
        assert not results, results
        own.start()
        for thread in threads:
            thread.join(60)
        assert results == {n: 42 for n in range(len(clients))}
        for conn in clients:
            conn.close()
    finally:
        poolers.close()
        own.destroy()


def test_server_connect_timeout_covers_a_server_that_never_answers_the_login(pooler_factory):
    silent = socket.create_server(("127.0.0.1", 0))     # accepts TCP (the backlog) and never says a word
    try:
        pooler = pooler_factory(databases={"silent": f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=x"},
                                server_connect_timeout=1, server_login_retry=30, client_login_timeout=20)
        first = Wire(pooler.port, timeout=25)      # the first client waits for the server's login

        def wait_for_login() -> None:
            try:
                first.login(user="app", password=PASSWORDS["app"], database="silent", limit=25)
            except (ServerError, TimeoutError, OSError):
                pass           # told client_login_timeout, or closed with the test

        threading.Thread(target=wait_for_login, daemon=True).start()
        wait_for(lambda: "connect timeout" in pooler.log_text(), timeout=15,
                 message="the login to the silent server to time out")
        second = _login_error(pooler.port, "silent")
        assert second.message.startswith("server login has been failing, cached error: connect timeout")
        first.close()
    finally:
        silent.close()
