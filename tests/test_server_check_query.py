"""server_check_query's default is PgBouncer 1.25's `<empty>`: a stale server is checked with an empty Query."""
from __future__ import annotations

import re
import time

import psycopg

from tests.support import wait_for

ROLE, PASSWORD = "check_role", "check-secret"


def test_a_stale_server_is_checked_with_an_empty_query(pooler_factory, pg):
    pg.create_role(ROLE, PASSWORD)
    pg.psql(f"GRANT ALL ON DATABASE app TO {ROLE}; ALTER ROLE {ROLE} SET log_min_duration_statement = 0")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, server_check_delay=0.2,
                            userlist={ROLE: PASSWORD})
    dsn = pooler.dsn(user=ROLE, password=PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 'first'")
        time.sleep(0.6)                     # the server is now older than server_check_delay
        conn.execute("SELECT 'second'")
    # PostgreSQL logs every statement of the role with its duration; the check is the one with no text.
    log = wait_for(lambda: (lambda text: text if "SELECT 'second'" in text else "")(pg.log_tail(400)),
                   message="the second query in PostgreSQL's log")
    statements = re.findall(r"duration: [0-9.]+ ms  statement: (.*)", log)
    tail = statements[statements.index("SELECT 'first'"):]
    assert tail[:3] == ["SELECT 'first'", "", "SELECT 'second'"], tail
