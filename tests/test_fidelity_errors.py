"""What a client is told when the pooler refuses or drops it: PgBouncer's words, severity and SQLSTATE.

Each row runs against Debian's PgBouncer and maitred on the same config; both answers must equal the row's,
which is PgBouncer's. Rows PgBouncer 1.18 cannot run (newer behaviour) pin the 1.25 source's text alone.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import psycopg
import pytest

from tests.support import PASSWORDS, require_binary
from tests.test_admin_pgbouncer import PgBouncer

USERS = {"app": PASSWORDS["app"], "md5_role": PASSWORDS["md5_role"], "plain_role": PASSWORDS["plain_role"]}


@dataclass
class Case:
    """A config, a login and what the client does once in; `expected` is (severity, SQLSTATE, message)."""

    settings: dict
    expected: tuple[str, str, str]
    user: str = "app"
    password: str | None = None
    database: str = "app"
    server_settings: dict = field(default_factory=dict)
    script: tuple[str | float, ...] = ()      # SQL to run, or seconds to sleep, in turn
    side_by_side: bool = True                 # False: PgBouncer 1.18 predates the behaviour
    userlist: dict = field(default_factory=lambda: dict(USERS))


CASES = {
    "wrong SCRAM password": Case({"auth_type": "scram-sha-256"}, ("FATAL", "08P01", "SASL authentication failed"),
                                 password="wrong"),
    "unknown user, SCRAM": Case({"auth_type": "scram-sha-256"}, ("FATAL", "08P01", "SASL authentication failed"),
                                user="stranger", password="x"),
    "wrong md5 password": Case({"auth_type": "md5"},
                               ("FATAL", "08P01", "password authentication failed"),
                               user="md5_role", password="wrong",
                               userlist={"md5_role": "md5" + "0" * 32}),
    "wrong cleartext password": Case({"auth_type": "plain"},
                                     ("FATAL", "08P01", "password authentication failed"),
                                     user="plain_role", password="wrong"),
    "unknown user, trust": Case({"auth_type": "trust"}, ("FATAL", "08P01", '"trust" authentication failed'),
                                user="stranger", password="x"),
    "auth_query finds no such user": Case({"auth_user": "postgres"}, ("FATAL", "08P01", "no such user"),
                                          user="stranger", password="x",
                                          userlist={**USERS, "postgres": "postgres"}),
    "unknown database": Case({"auth_type": "scram-sha-256"}, ("FATAL", "08P01", "no such database: nowhere"),
                             database="nowhere"),
    "unsupported startup parameter": Case({"auth_type": "scram-sha-256"},
                                          ("FATAL", "08P01", "unsupported startup parameter: search_path"),
                                          server_settings={"search_path": "public"}),
    "query_timeout": Case({"query_timeout": 1}, ("FATAL", "08P01", "query timeout"),
                          script=("SELECT pg_sleep(3)",)),
    "idle_transaction_timeout": Case({"idle_transaction_timeout": 1},
                                     ("FATAL", "08P01", "idle transaction timeout"),
                                     script=("BEGIN", 2.5, "SELECT 1")),
    "client_idle_timeout": Case({"client_idle_timeout": 1}, ("FATAL", "08P01", "client_idle_timeout"),
                                script=("SELECT 1", 2.5, "SELECT 1")),
    "query_timeout while waiting": Case({"query_timeout": 1, "default_pool_size": 1, "max_db_connections": 1},
                                        ("FATAL", "08P01", "query_timeout"), script=("hold", "SELECT 1")),
    "query_wait_timeout": Case({"query_wait_timeout": 1, "default_pool_size": 1, "max_db_connections": 1},
                               ("FATAL", "08P01", "query_wait_timeout"), script=("hold", "SELECT 1")),
    "disable_pqexec": Case({"disable_pqexec": 1}, ("FATAL", "08P01", "PQexec disallowed"), script=("SELECT 1",)),
}


async def _login_outcome(port: int, case: Case):
    """(severity, SQLSTATE, message) of the error the login got (asyncpg reports them whole), or None."""
    password = case.password if case.password is not None else case.userlist.get(case.user, "")
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=case.user, password=password,
                                     database=case.database, server_settings=case.server_settings or None,
                                     timeout=10)
    except asyncpg.PostgresError as exc:
        return exc.severity, exc.sqlstate, exc.args[0]
    conn.terminate()
    return None


def _session_outcome(port: int, case: Case):
    """The same for an error that comes once logged in (libpq reads an unsolicited FATAL whole)."""
    dsn = f"host=127.0.0.1 port={port} user={case.user} dbname={case.database} password={USERS[case.user]}"
    held = None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for step in case.script:
                if step == "hold":        # another client holds the only server, inside a transaction
                    held = psycopg.connect(dsn)
                    held.execute("SELECT 1")
                elif isinstance(step, float):
                    time.sleep(step)
                else:
                    conn.execute(step)
    except psycopg.Error as exc:
        return exc.diag.severity, exc.sqlstate, exc.diag.message_primary
    finally:
        if held is not None:
            held.close()
    return None


def _outcome(port: int, case: Case):
    return _session_outcome(port, case) if case.script else asyncio.run(_login_outcome(port, case))


def _settings(case: Case) -> dict:
    return {"pool_mode": "transaction", "auth_type": "scram-sha-256", **case.settings}


@pytest.mark.parametrize("name", list(CASES))
def test_the_client_hears_pgbouncers_error(pooler_factory, pg, name):
    case = CASES[name]
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}
    maitred = pooler_factory(userlist=case.userlist, databases=databases, **_settings(case))
    answers = {"maitred": _outcome(maitred.port, case)}
    if case.side_by_side:
        bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "",
                                                          **_settings(case)}, databases, case.userlist)
        try:
            answers["pgbouncer"] = _outcome(bouncer.port, case)
        finally:
            bouncer.stop()
    assert answers == {who: case.expected for who in answers}
