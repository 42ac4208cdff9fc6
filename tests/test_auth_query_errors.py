"""auth_query failures stay in the log: a client that has not logged in is told PgBouncer's `bouncer config error`
(08P01), never PostgreSQL's error text, the auth_user's name or the query's shape; and `auth_dbname = pgbouncer`,
which PgBouncer refuses at every login, is refused when the config loads."""
from __future__ import annotations

import psycopg
import pytest

from maitred.local.postgres import SUPERUSER, SUPERUSER_PASSWORD
from tests.support import PASSWORDS, require_binary
from tests.test_admin import USERS, console
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire

GOOD_QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"

# What goes wrong, the auth_query (None: the good one), auth_user's password, and what only the log may say.
BROKEN = {
    "sql-error": ("SELECT usename, passwd FROM maitred_no_such_table WHERE usename = $1", SUPERUSER_PASSWORD,
                  'relation "maitred_no_such_table" does not exist'),
    "one-column": ("SELECT usename FROM pg_shadow WHERE usename = $1", SUPERUSER_PASSWORD,
                   "auth_query returned 1 columns instead of two"),
    "auth-user-refused": (GOOD_QUERY, "not-the-password", f'password authentication failed for user "{SUPERUSER}"'),
}


def refusal(port: int) -> ServerError:
    """What `app`, who is in no auth_file, is told when it logs in."""
    with Wire(port) as wire:
        with pytest.raises(ServerError) as caught:
            wire.login(user="app", password=PASSWORDS["app"], limit=15)
        assert wire.closed_by_peer(5), "the pooler kept a refused client's connection open"
    return caught.value


@pytest.mark.parametrize("case", BROKEN)
def test_a_failing_lookup_tells_the_client_bouncer_config_error_and_the_log_why(pooler_factory, case):
    query, password, detail = BROKEN[case]
    pooler = pooler_factory(auth_user=SUPERUSER, auth_query=query, userlist={SUPERUSER: password})
    error = refusal(pooler.port)
    assert (error.fields.get("S"), error.sqlstate, error.message) == ("FATAL", "08P01", "bouncer config error")
    assert detail not in str(error.fields) and SUPERUSER not in str(error.fields)
    pooler.wait_log(detail)


def test_an_auth_dbname_missing_from_databases_is_a_config_error_too(pooler_factory):
    pooler = pooler_factory(auth_user=SUPERUSER, auth_query=GOOD_QUERY, auth_dbname="authdb",
                            userlist={SUPERUSER: SUPERUSER_PASSWORD})
    error = refusal(pooler.port)
    assert (error.sqlstate, error.message) == ("08P01", "bouncer config error")
    pooler.wait_log('authentication database "authdb" is not configured')


def test_a_working_lookup_still_logs_the_client_in(pooler_factory):
    """The contrast: the same pooler with a sound query and password lets `app` in."""
    pooler = pooler_factory(auth_user=SUPERUSER, auth_query=GOOD_QUERY, userlist={SUPERUSER: SUPERUSER_PASSWORD})
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "app"


def test_pgbouncer_says_bouncer_config_error_for_the_same_sql_error(pg):
    query, password, _ = BROKEN["sql-error"]
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                         "auth_user": SUPERUSER, "auth_query": query},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, {SUPERUSER: password})
    try:
        error = refusal(bouncer.port)
    finally:
        bouncer.stop()
    assert (error.fields.get("S"), error.sqlstate, error.message) == ("FATAL", "08P01", "bouncer config error")


@pytest.mark.parametrize("where", ["global", "database"])
def test_auth_dbname_pgbouncer_is_refused_when_the_config_loads(pooler_factory, pg, where):
    target = f"host=127.0.0.1 port={pg.port} dbname=app"
    settings = {"auth_dbname": "pgbouncer"} if where == "global" else {
        "databases": {"app": f"{target} auth_dbname=pgbouncer"}}
    with pytest.raises(RuntimeError) as caught:
        pooler_factory(auth_user=SUPERUSER, expect_alive=False, **settings)
    assert "exited with 1" in str(caught.value)
    assert 'cannot use the reserved "pgbouncer" database as an auth_dbname' in str(caught.value)


def test_set_auth_dbname_pgbouncer_is_refused_on_the_console(pooler_factory):
    pooler = pooler_factory(userlist=USERS, admin_users="admin")
    with console(pooler) as admin:
        with pytest.raises(psycopg.Error, match='cannot use the reserved "pgbouncer" database as an auth_dbname'):
            admin.execute("SET auth_dbname = 'pgbouncer'")
        assert admin.execute("SHOW CONFIG").fetchall()     # the console goes on
