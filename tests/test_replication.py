"""Replication connections through the pooler, in any pool_mode as PgBouncer 1.23+: each one gets a server
connection of its own, opened with its replication parameter, kept for it as in session mode, and closed with
it."""
from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from maitred.local.postgres import LocalPostgres
from tests.support import PASSWORDS, PoolerSet, require_binary, wait_for
from tests.wire import ServerError, Wire


@pytest.fixture(scope="module")
def repl_pg():
    """A PostgreSQL of its own whose pg_hba.conf lets `app` (a REPLICATION role) open walsenders."""
    cluster = LocalPostgres(hba=[
        "local all all trust",
        "host replication app 127.0.0.1/32 scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256",
    ], settings={"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10"})
    cluster.start()
    try:
        cluster.create_role("app", PASSWORDS["app"])
        cluster.psql("ALTER ROLE app REPLICATION")
        cluster.create_database("app", owner="app")
        cluster.psql("CREATE TABLE repl_probe (id int PRIMARY KEY, note text)", dbname="app", user="app")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def repl_pooler(repl_pg, tmp_path):
    """Start maitred poolers in front of `repl_pg`; stopped, and checked alive, at the end."""
    poolers = PoolerSet(repl_pg, tmp_path)
    yield poolers.start
    poolers.close()


def psql_env() -> dict[str, str]:
    return dict(os.environ, PGPASSWORD=PASSWORDS["app"], PGCONNECT_TIMEOUT="10")


def conninfo(pooler, replication: str) -> str:
    return f"host=127.0.0.1 port={pooler.port} user=app dbname=app replication={replication}"


def walsenders(pg) -> list[str]:
    return pg.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND usename = 'app' "
                   "ORDER BY pid").split()


@pytest.mark.parametrize("replication", ["database", "true"])
def test_psql_identify_system_through_the_pooler_answers_from_postgresql(repl_pooler, repl_pg, replication):
    psql = require_binary("psql")
    pooler = repl_pooler(pool_mode="session", default_pool_size=1)
    result = subprocess.run([psql, "-X", "-A", "-t", "-d", conninfo(pooler, replication), "-c", "IDENTIFY_SYSTEM"],
                            env=psql_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    systemid, timeline, xlogpos, dbname = result.stdout.strip().split("|")
    assert systemid == repl_pg.psql("SELECT system_identifier FROM pg_control_system()")
    assert int(timeline) >= 1 and "/" in xlogpos
    assert dbname == ("app" if replication == "database" else "")


def test_each_replication_connection_gets_a_server_of_its_own_that_closes_with_it(repl_pooler, repl_pg):
    pooler = repl_pooler(pool_mode="session", default_pool_size=1)
    seen = []
    with psycopg.connect(pooler.dsn(), autocommit=True) as ordinary:    # holds the pool's only server
        for _ in range(2):
            with Wire(pooler.port) as wire:
                wire.login(user="app", password=PASSWORDS["app"], replication="database",
                           options="-c statement_timeout=1234")
                assert wire.rows("IDENTIFY_SYSTEM")[0][3] == "app"
                assert wire.rows("SHOW statement_timeout") == [("1234ms",)]   # its parameters went as they came
                assert ordinary.execute("SELECT 1").fetchone()[0] == 1
                senders = walsenders(repl_pg)
                assert len(senders) == 1
                seen += senders
                wire.send(b"X\x00\x00\x00\x04")
            wait_for(lambda: walsenders(repl_pg) == [], message="the walsender to end with its client")
        assert ordinary.execute("SELECT 1").fetchone()[0] == 1
    assert len(set(seen)) == 2, "a replication server connection was reused"


def test_pg_basebackup_through_the_pooler_makes_a_usable_backup(repl_pooler, repl_pg, tmp_path):
    """pg_basebackup always asks for the database `replication`: the pooler routes it by that entry."""
    basebackup = require_binary("pg_basebackup")
    pooler = repl_pooler(pool_mode="session", default_pool_size=1, databases={
        "app": f"host=127.0.0.1 port={repl_pg.port} dbname=app",
        "replication": f"host=127.0.0.1 port={repl_pg.port} dbname=postgres"})
    target = tmp_path / "backup"
    result = subprocess.run([basebackup, "-h", "127.0.0.1", "-p", str(pooler.port), "-U", "app", "-D", str(target),
                             "-X", "stream", "-c", "fast", "--no-sync", "--manifest-checksums=SHA256"],
                            env=psql_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    verify = subprocess.run([os.path.join(repl_pg.bindir, "pg_verifybackup"), str(target)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    wait_for(lambda: walsenders(repl_pg) == [], message="the backup's walsenders to end")


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_pg_recvlogical_streams_committed_changes_through_the_pooler(repl_pooler, repl_pg, mode):
    recvlogical = require_binary("pg_recvlogical")
    pooler = repl_pooler(pool_mode=mode, default_pool_size=1)
    slot = f"maitred_{mode}"
    base = [recvlogical, "-d", f"host=127.0.0.1 port={pooler.port} user=app dbname=app", "--slot", slot]
    created = subprocess.run(base + ["--create-slot", "-P", "test_decoding"], env=psql_env(), capture_output=True,
                             text=True, timeout=30)
    assert created.returncode == 0, created.stderr
    try:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM repl_probe")
            conn.execute("INSERT INTO repl_probe SELECT i, 'row ' || i FROM generate_series(1, 500) i")
            end = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        streamed = subprocess.run(base + ["--start", "--endpos", str(end), "--no-loop", "-f", "-"], env=psql_env(),
                                  capture_output=True, text=True, timeout=60)
        assert streamed.returncode == 0, streamed.stderr
        inserts = [line for line in streamed.stdout.splitlines() if "table public.repl_probe: INSERT" in line]
        assert len(inserts) == 500
        assert "id[integer]:500 note[text]:'row 500'" in inserts[-1]
        # The slot's confirmed position moved: the client's feedback went through to PostgreSQL.
        assert repl_pg.psql("SELECT confirmed_flush_lsn >= '%s' FROM pg_replication_slots "
                            "WHERE slot_name = '%s'" % (end, slot)) == "t"
    finally:
        wait_for(lambda: walsenders(repl_pg) == [], message="the walsender to end")
        repl_pg.psql(f"SELECT pg_drop_replication_slot('{slot}')")


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_replication_works_in_any_pool_mode_on_a_server_kept_for_the_connection(repl_pooler, repl_pg, mode):
    pooler = repl_pooler(pool_mode=mode, default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as ordinary, Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"], replication="database")
        assert wire.rows("IDENTIFY_SYSTEM")[0][3] == "app"
        wire.query("BEGIN")                  # a transaction block, which statement mode refuses other clients
        walsender = wire.rows("SELECT pg_backend_pid()")
        wire.query("COMMIT")
        assert wire.rows("SELECT pg_backend_pid()") == walsender      # not released at the transaction's end
        assert walsenders(repl_pg) == [walsender[0][0]]
        ordinary_pid = ordinary.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert str(ordinary_pid) != walsender[0][0]                     # the pool never hands it to anyone
    wait_for(lambda: walsenders(repl_pg) == [], message="the walsender to end with its client")


def test_an_invalid_replication_value_is_refused_like_postgresql_does(repl_pooler):
    pooler = repl_pooler(pool_mode="session", default_pool_size=1)
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError, match='invalid value for parameter "replication": "maybe"'):
            wire.login(user="app", password=PASSWORDS["app"], replication="maybe")
    with Wire(pooler.port) as wire:      # replication=off is an ordinary connection
        wire.login(user="app", password=PASSWORDS["app"], replication="off")
        assert wire.rows("SELECT 1") == [("1",)]


@pytest.mark.parametrize("replication, sqlstate, message", [
    ("true", "28000", "no pg_hba.conf entry for replication connection"),     # no `replication` hba line
    ("database", "42501", "replication role"),                              # app is not a REPLICATION role
])
def test_postgresqls_refusal_of_a_replication_login_reaches_only_that_client(pooler_factory, pg, replication,
                                                                              sqlstate, message):
    pooler = pooler_factory(pool_mode="session", default_pool_size=1)
    with Wire(pooler.port) as wire:
        with pytest.raises(ServerError) as refused:
            wire.login(user="app", password=PASSWORDS["app"], replication=replication)
    assert refused.value.sqlstate == sqlstate
    assert message in refused.value.message
    # The pool is not marked as failing (server_login_retry): ordinary clients connect at once.
    with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
