"""Fixtures that start the real things: one PostgreSQL cluster per session, and maitred poolers per test."""
from __future__ import annotations

import pytest

from maitred.local.postgres import LocalPostgres
from tests.support import PASSWORDS, PoolerProcess, PoolerSet, require_binary


@pytest.fixture(scope="session")
def pg():
    """PostgreSQL with one role per way the pooler may have to log in, and a pgbench-initialised `app` db."""
    require_binary("pgbench")
    cluster = LocalPostgres(hba=[
        "local all all trust",
        "host all trust_role 127.0.0.1/32 trust",
        "host all md5_role 127.0.0.1/32 md5",
        "host all plain_role 127.0.0.1/32 password",
        "host all all 127.0.0.1/32 scram-sha-256",
    ], settings={"max_connections": "300"})
    cluster.start()
    try:
        cluster.create_role("app", PASSWORDS["app"])
        cluster.create_role("md5_role", PASSWORDS["md5_role"], encryption="md5")
        cluster.create_role("plain_role", PASSWORDS["plain_role"])
        cluster.create_role("trust_role", None)
        cluster.create_database("app", owner="app")
        for role in ("md5_role", "plain_role", "trust_role"):
            cluster.psql(f"GRANT ALL ON DATABASE app TO {role}")
        cluster.psql("GRANT ALL ON SCHEMA public TO PUBLIC", dbname="app")
        PoolerProcess.pgbench_init(cluster)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pooler_factory(pg, tmp_path):
    """Start maitred poolers in front of `pg`; every one is stopped, and checked alive, at the end."""
    poolers = PoolerSet(pg, tmp_path)
    yield poolers.start
    poolers.close()


@pytest.fixture
def pooler(pooler_factory):
    """A transaction-mode pooler with a pool of 5 and SCRAM auth: the common case."""
    return pooler_factory(pool_mode="transaction", default_pool_size=5)

