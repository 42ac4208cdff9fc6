"""auth_user and auth_query: users missing from the auth_file are looked up in PostgreSQL, as PgBouncer does.

The lookups go through PgBouncer's recommended SECURITY DEFINER function, run by a role that is no
superuser; the function also writes each call to a table, so the tests count the queries the pooler made.
"""
from __future__ import annotations

import signal
import socket
import threading
import time

import psycopg
import pytest

from maitred.local.postgres import SUPERUSER, SUPERUSER_PASSWORD, free_port
from tests.support import PASSWORDS, startup_packet, wait_for
from tests.wire import ServerError, Wire

LOOKUP_USER, LOOKUP_PASSWORD = "aq_lookup", "lookup-secret"
FUNCTION_QUERY = "SELECT usename, passwd FROM pgbouncer.get_auth($1)"

SETUP = f"""
CREATE SCHEMA pgbouncer;
CREATE TABLE pgbouncer.lookups (usename text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION pgbouncer.get_auth(p_usename text, OUT usename text, OUT passwd text) RETURNS record AS $$
BEGIN
    INSERT INTO pgbouncer.lookups (usename) VALUES (p_usename);
    SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
    FROM pg_authid WHERE rolname = p_usename AND rolcanlogin INTO usename, passwd;
    RETURN;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO {LOOKUP_USER};
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {LOOKUP_USER};
"""


@pytest.fixture(scope="module")
def lookup_function(pg):
    """The auth_user role and pgbouncer.get_auth() in database app, created once for this module."""
    pg.create_role(LOOKUP_USER, LOOKUP_PASSWORD)
    pg.psql(SETUP, dbname="app")
    return FUNCTION_QUERY


def lookups(pg, user: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM pgbouncer.lookups WHERE usename = '{user}'", dbname="app"))


def query_pooler(pooler_factory, pg, query: str, auth_type: str = "scram-sha-256", **settings):
    """A pooler whose auth_file holds only the auth_user: every other user's secret comes from PostgreSQL."""
    settings.setdefault("userlist", {LOOKUP_USER: LOOKUP_PASSWORD})
    return pooler_factory(auth_type=auth_type, auth_user=LOOKUP_USER, auth_query=query, **settings)


def current_user(pooler, **dsn) -> str:
    with psycopg.connect(pooler.dsn(**dsn), autocommit=True) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def login_error(pooler, limit: float = 10, **login) -> ServerError:
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(limit=limit, **login)
        assert caught.value.fields.get("S") == "FATAL"
        assert wire.closed_by_peer(5), "the pooler kept a refused client's connection open"
    return caught.value


# -- finding secrets -------------------------------------------------------------------------------------

def test_user_missing_from_the_auth_file_logs_in_through_scram_pass_through(pooler_factory, pg, lookup_function):
    """No password of app's is in any file: the verifier comes from pg_authid, the keys from the client's proof."""
    pooler = query_pooler(pooler_factory, pg, lookup_function)
    assert "app" not in (pooler.workdir / "userlist.txt").read_text()
    for _ in range(2):
        assert current_user(pooler, require_auth="scram-sha-256") == "app"


def test_default_auth_query_run_by_a_superuser_finds_md5_and_scram_secrets(pooler_factory, pg):
    pooler = pooler_factory(auth_type="md5", auth_user=SUPERUSER, userlist={SUPERUSER: SUPERUSER_PASSWORD})
    assert current_user(pooler, user="md5_role", require_auth="md5") == "md5_role"     # md5 both ways
    assert current_user(pooler, user="app", require_auth="scram-sha-256") == "app"    # md5 moved to SCRAM


def test_trust_lets_in_a_role_auth_query_finds_and_refuses_one_it_does_not(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function, auth_type="trust")
    assert current_user(pooler, user="md5_role", password="", require_auth="none") == "md5_role"
    error = login_error(pooler, user="aq_nobody")
    assert (error.sqlstate, error.message) == ("08P01", "no such user")     # PgBouncer's words


def test_per_database_auth_user_overrides_the_global_one(pooler_factory, pg, lookup_function):
    target = f"host=127.0.0.1 port={pg.port} dbname=app"
    pooler = pooler_factory(auth_user="aq_nobody", auth_query=lookup_function,
                            userlist={LOOKUP_USER: LOOKUP_PASSWORD},
                            databases={"app": f"{target} auth_user={LOOKUP_USER}", "other": target})
    assert current_user(pooler) == "app"
    error = login_error(pooler, user="app", password=PASSWORDS["app"], database="other")
    assert (error.sqlstate, error.message) == ("08P01", "bouncer config error")     # aq_nobody cannot log in
    pooler.wait_log('auth_query for user "app"', "aq_nobody")


# -- the console -----------------------------------------------------------------------------------------

def test_console_logins_are_looked_up_in_auth_dbname_then_admin_and_stats_users_decide(
        pooler_factory, pg, lookup_function):
    """PgBouncer 1.25: the console's logins use the global auth_user and auth_query, run in auth_dbname."""
    pooler = query_pooler(pooler_factory, pg, lookup_function, auth_type="md5", auth_dbname="app",
                          admin_users="app", stats_users="md5_role")     # md5: md5_role's secret is an md5 hash
    with psycopg.connect(pooler.dsn(dbname="pgbouncer"), autocommit=True) as admin:
        admin.execute("PAUSE app")          # an admin command: app is in admin_users
        admin.execute("RESUME app")
    with psycopg.connect(pooler.dsn(user="md5_role", dbname="pgbouncer"), autocommit=True) as stats:
        assert stats.execute("SHOW POOLS").fetchall() is not None
    wrong = login_error(pooler, user="app", password="wrong", database="pgbouncer")
    assert wrong.message == "SASL authentication failed"     # app's secret is SCRAM: md5 moves to SCRAM
    refused = login_error(pooler, user="plain_role", password=PASSWORDS["plain_role"], database="pgbouncer")
    assert (refused.sqlstate, refused.message) == ("08P01", "not allowed")        # found, but in neither list
    assert lookups(pg, "md5_role") >= 1


def test_console_logins_without_auth_dbname_get_bouncer_config_error(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function, admin_users="app")
    before = lookups(pg, "app")
    refused = login_error(pooler, user="app", password=PASSWORDS["app"], database="pgbouncer")
    assert (refused.sqlstate, refused.message) == ("08P01", "bouncer config error")
    pooler.wait_log('cannot use the reserved "pgbouncer" database as an auth_dbname')
    assert lookups(pg, "app") == before
    assert current_user(pooler) == "app"            # the other databases' logins are looked up as before


# -- refusals --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth_type,user", [("scram-sha-256", "app"), ("md5", "md5_role")])
def test_wrong_password_is_refused_with_pgbouncers_words(pooler_factory, pg, lookup_function, auth_type, user):
    pooler = query_pooler(pooler_factory, pg, lookup_function, auth_type=auth_type)
    error = login_error(pooler, user=user, password="wrong-password")
    words = "SASL authentication failed" if auth_type == "scram-sha-256" else "password authentication failed"
    assert (error.sqlstate, error.message) == ("08P01", words)
    assert current_user(pooler, user=user) == user


def test_unknown_role_is_refused_with_no_such_user_as_pgbouncer_does(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function)
    error = login_error(pooler, user="aq_nobody", password="anything")
    assert (error.sqlstate, error.message) == ("08P01", "no such user")


def test_role_past_its_valid_until_is_refused(pooler_factory, pg, lookup_function):
    pg.create_role("aq_expired", "expired-secret")
    pg.psql("ALTER ROLE aq_expired VALID UNTIL '2000-01-01'")
    pooler = query_pooler(pooler_factory, pg, lookup_function)
    error = login_error(pooler, user="aq_expired", password="expired-secret")
    assert (error.sqlstate, error.message) == ("08P01", "SASL authentication failed")


# -- caching ---------------------------------------------------------------------------------------------

def test_a_burst_of_20_logins_makes_at_most_2_lookups(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function, pool_mode="transaction", default_pool_size=5)
    before = lookups(pg, "app")
    results: list[str] = []
    start = threading.Barrier(20)

    def login() -> None:
        start.wait()
        results.append(current_user(pooler))

    threads = [threading.Thread(target=login) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["app"] * 20
    assert current_user(pooler) == "app"        # later logins within the cache time ask nothing either
    assert lookups(pg, "app") - before <= 2


def test_users_of_the_auth_file_are_never_looked_up(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function,
                          userlist={LOOKUP_USER: LOOKUP_PASSWORD, "md5_role": PASSWORDS["md5_role"]})
    before = lookups(pg, "md5_role")
    assert current_user(pooler, user="md5_role") == "md5_role"
    assert lookups(pg, "md5_role") == before


def test_reload_forgets_cached_secrets(pooler_factory, pg, lookup_function):
    pg.create_role("aq_changing", "first-secret")
    pooler = query_pooler(pooler_factory, pg, lookup_function)
    assert current_user(pooler, user="aq_changing", password="first-secret") == "aq_changing"
    pg.psql("ALTER ROLE aq_changing PASSWORD 'second-secret'")
    error = login_error(pooler, user="aq_changing", password="second-secret")     # the cached verifier
    assert error.message == "SASL authentication failed"
    pooler.signal(signal.SIGHUP)

    def second_works() -> bool:
        try:
            return current_user(pooler, user="aq_changing", password="second-secret") == "aq_changing"
        except psycopg.OperationalError:
            return False

    wait_for(second_works, timeout=10, interval=0.2, message="the new password after RELOAD")
    assert login_error(pooler, user="aq_changing", password="first-secret").message == "SASL authentication failed"


# -- failures and the event loop -------------------------------------------------------------------------

def test_postgresql_unreachable_for_the_lookup_gives_08006_at_once(pooler_factory, pg, lookup_function):
    pooler = query_pooler(pooler_factory, pg, lookup_function, auth_dbname="authdb",
                          userlist={LOOKUP_USER: LOOKUP_PASSWORD, "md5_role": PASSWORDS["md5_role"]},
                          databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                                     "authdb": f"host=127.0.0.1 port={free_port()} dbname=app"})
    started = time.monotonic()
    error = login_error(pooler, user="app", password=PASSWORDS["app"])
    assert time.monotonic() - started < 5
    assert error.sqlstate == "08006"
    assert error.message.startswith("auth_query failed: cannot connect to server 127.0.0.1:")
    assert current_user(pooler, user="md5_role") == "md5_role"      # users of the auth_file still log in


def test_a_lookup_that_gets_no_answer_fails_after_server_connect_timeout(pooler_factory, pg, lookup_function):
    with socket.socket() as silent:      # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        pooler = query_pooler(pooler_factory, pg, lookup_function, auth_dbname="authdb", server_connect_timeout=1,
                              databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                                         "authdb": f"host=127.0.0.1 port={port} dbname=app"})
        started = time.monotonic()
        error = login_error(pooler, user="app", password=PASSWORDS["app"])
        assert time.monotonic() - started < 4
    assert error.sqlstate == "08006"
    assert "server_connect_timeout" in error.message


SLOW_QUERY = "SELECT usename, passwd FROM pgbouncer.get_auth($1), pg_sleep(2)"


def slow_pooler(pooler_factory, pg, lookup_function):
    """Database `slow` looks users up with a query that takes 2 s; `app` with the quick one."""
    target = f"host=127.0.0.1 port={pg.port} dbname=app"
    return query_pooler(pooler_factory, pg, lookup_function,
                        userlist={LOOKUP_USER: LOOKUP_PASSWORD, "md5_role": PASSWORDS["md5_role"]},
                        databases={"app": target, "slow": f"{target} auth_query='{SLOW_QUERY}'"})


def slow_lookup_running(pg) -> bool:
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'maitred auth_query' "
                   "AND state = 'active' AND query LIKE '%pg_sleep%'") == "1"


def test_other_logins_go_on_while_a_lookup_runs(pooler_factory, pg, lookup_function):
    pooler = slow_pooler(pooler_factory, pg, lookup_function)
    slow: list[object] = []

    def slow_login() -> None:
        started = time.monotonic()
        slow.append(current_user(pooler, dbname="slow"))
        slow.append(time.monotonic() - started)

    thread = threading.Thread(target=slow_login)
    thread.start()
    wait_for(lambda: slow_lookup_running(pg), message="the slow lookup")
    started = time.monotonic()
    assert current_user(pooler, user="md5_role") == "md5_role"
    assert time.monotonic() - started < 1.0, "a login waited for another client's lookup"
    assert slow_lookup_running(pg)
    thread.join(10)
    assert slow[0] == "app" and slow[1] >= 1.5


def test_a_client_that_leaves_during_its_lookup_is_let_go(pooler_factory, pg, lookup_function):
    pooler = slow_pooler(pooler_factory, pg, lookup_function)
    with Wire(pooler.port) as wire:
        wire.send(startup_packet("app", "slow"))
        wait_for(lambda: slow_lookup_running(pg), message="the slow lookup")
    wait_for(lambda: not slow_lookup_running(pg), message="the end of the lookup")   # after the client left
    started = time.monotonic()
    assert current_user(pooler, dbname="slow") == "app"
    assert time.monotonic() - started < 1.5, "the answer to the lookup of the client that left was not kept"
