"""Host lists in `host=` with load_balance_hosts, as PgBouncer 1.25 documents them, against two real PostgreSQL
instances: round-robin spreads new server connections over the list, disable stays on one host, a host that
refuses is skipped, and an entry may carry its own port."""
from __future__ import annotations

import threading

import psycopg
import pytest

from maitred.local.postgres import SUPERUSER, SUPERUSER_PASSWORD, LocalPostgres, free_port
from pooler.config import ConfigError, load_config
from pooler.hosts import Target, choose, parse_hosts
from tests.support import require_binary
from tests.test_admin_pgbouncer import PgBouncer

USERLIST = {SUPERUSER: SUPERUSER_PASSWORD}


# -- the decisions -----------------------------------------------------------------------------------------

def test_a_host_list_is_parsed_with_per_host_ports_and_the_default_port_for_the_rest():
    assert parse_hosts("10.0.0.1,db2:5433,[::1]:6432,/run/postgresql", 5432) == (
        Target("10.0.0.1", 5432), Target("db2", 5433), Target("::1", 6432), Target("/run/postgresql", 5432))
    assert parse_hosts("::1", 5432) == (Target("::1", 5432),)
    assert parse_hosts(None, 5432) == (Target(None, 5432),)


@pytest.mark.parametrize("host", ["a,,b", "a,b:0", "a,b:70000"])
def test_a_malformed_host_list_is_refused_at_load_naming_the_database(tmp_path, host):
    path = tmp_path / "pooler.ini"
    path.write_text(f"[databases]\napp = host={host}\n")
    with pytest.raises(ConfigError, match="invalid host for database 'app'"):
        load_config(path)


def test_round_robin_takes_the_next_host_and_disable_stays_on_one():
    picks = {"round-robin": [], "disable": []}
    for mode, out in picks.items():
        cursor = -1
        for _ in range(4):
            cursor = choose(3, cursor, mode, [False] * 3)
            out.append(cursor)
    assert picks == {"round-robin": [0, 1, 2, 0], "disable": [0, 0, 0, 0]}


def test_a_failing_host_is_skipped_until_every_host_has_failed():
    assert choose(3, 0, "round-robin", [False, True, False]) == 2
    assert choose(3, 0, "disable", [True, False, False]) == 1
    assert choose(3, 1, "disable", [True, True, True]) == 2      # all down: the list is walked as it is


# -- against two PostgreSQL instances ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_pg():
    cluster = LocalPostgres()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def twin_pg(pg):
    """A second PostgreSQL on the session one's port, at 127.0.0.2: a host list PgBouncer 1.18 can use too."""
    cluster = LocalPostgres(port=pg.port, hba=["local all all trust", "host all all 127.0.0.0/8 scram-sha-256"],
                            settings={"listen_addresses": "'127.0.0.2'"})
    cluster.start()
    yield cluster
    cluster.destroy()


def serving(port: int, clients: int, what: str = "current_setting('port')::int") -> list:
    """What `what` says on the server behind each of `clients` sessions held open at once (one server each)."""
    dsn = f"host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres password={SUPERUSER_PASSWORD}"
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(clients)]
    try:
        return [c.execute(f"SELECT {what}").fetchone()[0] for c in conns]
    finally:
        for conn in conns:
            conn.close()


def ports_serving(pooler, clients: int) -> list[int]:
    return serving(pooler.port, clients)


def start(pooler_factory, host: str, **settings):
    return pooler_factory(pool_mode="session", userlist=USERLIST, server_login_retry=5,
                          databases={"postgres": f"host={host} dbname=postgres"}, **settings)


def test_round_robin_spreads_new_servers_over_the_hosts(pooler_factory, pg, second_pg):
    pooler = start(pooler_factory, f"127.0.0.1:{pg.port},127.0.0.1:{second_pg.port}")
    assert sorted(ports_serving(pooler, 4)) == sorted([pg.port, pg.port, second_pg.port, second_pg.port])


def test_round_robin_walks_the_list_as_pgbouncer_does(pooler_factory, pg, twin_pg):
    settings = {"pool_mode": "session", "auth_type": "scram-sha-256"}
    databases = {"postgres": f"host=127.0.0.1,127.0.0.2 port={pg.port} dbname=postgres"}
    maitred = pooler_factory(userlist=USERLIST, databases=databases, **settings)
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "", **settings},
                        databases, USERLIST)
    try:
        theirs = serving(bouncer.port, 4, "host(inet_server_addr())")
    finally:
        bouncer.stop()
    assert theirs == ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"]
    assert serving(maitred.port, 4, "host(inet_server_addr())") == theirs


def test_disable_keeps_new_servers_on_one_host(pooler_factory, pg, second_pg):
    pooler = start(pooler_factory, f"127.0.0.1:{pg.port},127.0.0.1:{second_pg.port} load_balance_hosts=disable")
    assert ports_serving(pooler, 4) == [pg.port] * 4


@pytest.mark.parametrize("mode", ["round-robin", "disable"])
def test_a_host_that_refuses_is_skipped_and_no_client_sees_it(pooler_factory, pg, mode):
    dead = free_port()
    pooler = start(pooler_factory, f"127.0.0.1:{dead},127.0.0.1:{pg.port} load_balance_hosts={mode}")
    errors: list[str] = []

    def one_client() -> None:
        try:
            assert ports_serving(pooler, 1) == [pg.port]
        except Exception as exc:  # collected for the assertion below
            errors.append(repr(exc))

    threads = [threading.Thread(target=one_client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ports_serving(pooler, 3) == [pg.port] * 3
    pooler.wait_log(f"cannot connect to server 127.0.0.1:{dead}")


def test_show_databases_and_pools_name_the_list_and_its_mode(pooler_factory, pg, second_pg):
    host = f"127.0.0.1:{pg.port},127.0.0.1:{second_pg.port}"
    pooler = start(pooler_factory, host + " load_balance_hosts=disable", admin_users=SUPERUSER)
    ports_serving(pooler, 1)
    with psycopg.connect(pooler.dsn(user=SUPERUSER, dbname="pgbouncer", password=SUPERUSER_PASSWORD),
                         autocommit=True, prepare_threshold=None) as con:
        cur = con.execute("SHOW DATABASES")
        names = [d.name for d in cur.description]
        row = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}["postgres"]
        assert (row["host"], row["load_balance_hosts"]) == (host, "disable")
        cur = con.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        pool = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}["postgres"]
        assert pool["load_balance_hosts"] == "disable"
