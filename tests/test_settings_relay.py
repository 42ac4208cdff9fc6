"""PgBouncer settings about what the pooler relays and where: server_round_robin, disable_pqexec,
application_name_add_host and track_extra_parameters, each against the real PostgreSQL, and where PgBouncer's
words or format matter, next to Debian's PgBouncer 1.18 on the same exchange."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from socket import gethostname

import pytest

from tests.support import PASSWORDS, require_binary
from tests.test_admin import USERS, console
from tests.test_admin_pgbouncer import PgBouncer
from tests.test_limits import login
from tests.wire import SYNC, ServerError, Wire, bind, data_row, execute, parse, query


@contextlib.contextmanager
def pgbouncer(pg, **settings):
    """Debian's PgBouncer in front of `pg`, in transaction mode, with `settings`."""
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                         "pool_mode": "transaction", **settings},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, USERS)
    try:
        yield bouncer
    finally:
        bouncer.stop()


def extended_rows(wire: Wire, sql: str) -> list[tuple]:
    """The rows of an unnamed statement run by the extended protocol."""
    wire.send(parse(sql) + bind() + execute() + SYNC)
    return [data_row(body) for kind, body in wire.read_until(b"Z") if kind == b"D"]


# -- server_round_robin -----------------------------------------------------------------------------------

def _backends_in_turn(pooler, turns: int) -> list[str]:
    """The backend of each of `turns` transactions one client runs in a row, once the pool has 3 servers."""
    holders = [login(pooler) for _ in range(3)]
    try:
        for holder in holders:       # three transactions at once: three servers
            holder.query("BEGIN")
        for holder in holders:
            holder.query("COMMIT")
    finally:
        for holder in holders:
            holder.close()
    with login(pooler) as wire:
        return [wire.rows("SELECT pg_backend_pid()")[0][0] for _ in range(turns)]


def test_server_round_robin_takes_the_server_idle_longest_and_set_and_reload_switch_it(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3, userlist=USERS, admin_users="admin")
    lifo = _backends_in_turn(pooler, 6)
    assert len(set(lifo)) == 1, lifo             # the server released last serves again
    with console(pooler) as con:
        con.execute("SET server_round_robin = 1")
        turns = _backends_in_turn(pooler, 6)
        assert len(set(turns)) == 3 and turns[:3] == turns[3:], turns      # each in turn
        pooler.settings["server_round_robin"] = 0
        pooler.write_config()
        con.execute("RELOAD")
        lifo = _backends_in_turn(pooler, 6)
        assert len(set(lifo)) == 1, lifo


# -- disable_pqexec ---------------------------------------------------------------------------------------

def _pqexec_refusals(port: int) -> list[tuple]:
    """What a client is told for a simple query: sent first, and after extended-protocol statements (which
    transaction pooling tracks), each with whether the connection was closed after it."""
    out = []
    for before in ([], ["SELECT 1", "SELECT 2"]):
        with Wire(port, timeout=10) as wire:
            wire.login(user="app", password=USERS["app"])
            assert all(extended_rows(wire, sql) == [(sql[-1],)] for sql in before)   # the extended protocol works
            wire.send(query("SELECT 3"))
            error = wire.expect_error()
            out.append((error.fields.get("S"), error.sqlstate, error.message, wire.closed_by_peer(5)))
    return out


def test_disable_pqexec_closes_a_client_that_sends_a_simple_query_as_pgbouncer_does(pooler_factory, pg):
    with pgbouncer(pg, disable_pqexec=1) as bouncer:
        expected = _pqexec_refusals(bouncer.port)
    assert expected == [("FATAL", "08P01", "PQexec disallowed", True)] * 2
    pooler = pooler_factory(pool_mode="transaction", userlist=USERS, disable_pqexec=1)
    assert _pqexec_refusals(pooler.port) == expected
    pooler.wait_log("client used 'Q' packet type", count=2)
    with login(pooler, user="md5_role") as wire:         # the servers of the refused clients serve on
        assert extended_rows(wire, "SELECT current_user") == [("md5_role",)]


# -- application_name_add_host ----------------------------------------------------------------------------

def _application_names(port: int, **startup: str) -> tuple[str, str, str]:
    """(what the client is told at login, what its server has, what PgBouncer's format makes of its address)."""
    with Wire(port, timeout=10) as wire:
        wire.login(user="app", password=USERS["app"], **startup)
        told = wire.params["application_name"]
        host, client_port = wire.sock.getsockname()[:2]
        return told, wire.rows("SELECT current_setting('application_name')")[0][0], f"{host}:{client_port}"


@pytest.mark.parametrize("startup, name", [({"application_name": "billing"}, "billing"), ({}, "app")])
def test_application_name_add_host_appends_the_client_address_as_pgbouncer_does(pooler_factory, pg, startup, name):
    with pgbouncer(pg, application_name_add_host=1) as bouncer:
        told, server, address = _application_names(bouncer.port, **startup)
    assert told == server == f"{name} - {address}"
    pooler = pooler_factory(pool_mode="transaction", userlist=USERS, application_name_add_host=1)
    told, server, address = _application_names(pooler.port, **startup)
    assert told == server == f"{name} - {address}"


def test_application_name_add_host_names_a_unix_socket_client_by_its_pid_as_pgbouncer_does(pooler_factory, pg):
    socket_dir = tempfile.mkdtemp(prefix="maitred-sockets-")
    os.chmod(socket_dir, 0o777)          # PgBouncer runs as postgres when the tests run as root
    try:
        with pgbouncer(pg, application_name_add_host=1, unix_socket_dir=socket_dir) as bouncer:
            with Wire(unix_path=f"{socket_dir}/.s.PGSQL.{bouncer.port}", timeout=10) as wire:
                wire.login(user="app", password=USERS["app"])
                assert wire.params["application_name"] == f"app - unix({os.getpid()}@{gethostname()}):{bouncer.port}"
        pooler = pooler_factory(pool_mode="transaction", userlist=USERS, application_name_add_host=1,
                                unix_socket_dir=socket_dir)
        with Wire(unix_path=f"{socket_dir}/.s.PGSQL.{pooler.port}", timeout=10) as wire:
            wire.login(user="app", password=USERS["app"])
            expected = f"app - unix({os.getpid()}@{gethostname()}):{pooler.port}"
            assert wire.params["application_name"] == expected
            assert wire.rows("SELECT current_setting('application_name')") == [(expected,)]
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_application_name_add_host_gives_each_client_its_own_on_a_shared_server(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, application_name_add_host=1)
    with login(pooler) as first, login(pooler) as second:
        for wire in (first, second, first):
            host, port = wire.sock.getsockname()[:2]
            assert wire.rows("SELECT current_setting('application_name')") == [(f"app - {host}:{port}",)]
        assert first.rows("SELECT pg_backend_pid()") == second.rows("SELECT pg_backend_pid()")


# -- track_extra_parameters -------------------------------------------------------------------------------

def _settings_seen(pooler, name: str, value: str) -> list[str]:
    """Two clients on one server, the first having SET `name` to `value`: what each sees, in turn."""
    with login(pooler) as first, login(pooler) as second:
        first.query(f"SET {name} = '{value}'")
        return [wire.rows(f"SHOW {name}")[0][0] for wire in (first, second, first, second)]


def test_intervalstyle_a_client_sets_stays_its_own_on_a_shared_server_by_default(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    assert _settings_seen(pooler, "IntervalStyle", "iso_8601") == ["iso_8601", "postgres"] * 2


def test_a_client_asks_for_a_tracked_extra_parameter_at_login(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with Wire(pooler.port, timeout=10) as asking, login(pooler) as other:
        asking.login(user="app", password=PASSWORDS["app"], IntervalStyle="sql_standard")
        assert asking.params["IntervalStyle"] == "sql_standard"
        for wire, expected in ((asking, "sql_standard"), (other, "postgres"), (asking, "sql_standard")):
            assert wire.rows("SHOW IntervalStyle") == [(expected,)]


def test_track_extra_parameters_names_other_reported_parameters_in_any_case(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1,
                            track_extra_parameters="intervalstyle, DEFAULT_TRANSACTION_READ_ONLY")
    assert _settings_seen(pooler, "default_transaction_read_only", "on") == ["on", "off"] * 2
    assert _settings_seen(pooler, "IntervalStyle", "iso_8601") == ["iso_8601", "postgres"] * 2


def test_a_tracked_search_path_is_set_as_the_list_it_is(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, track_extra_parameters="search_path")
    with Wire(pooler.port, timeout=10) as wire:
        wire.login(user="app", password=PASSWORDS["app"], search_path='"$user", pg_catalog, public')
        assert wire.rows("SHOW search_path") == [('"$user", pg_catalog, public',)]
        assert wire.rows("SELECT current_schemas(false)") == [("{pg_catalog,public}",)]


def test_an_empty_track_extra_parameters_tracks_only_the_built_in_ones(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, track_extra_parameters="")
    with Wire(pooler.port, timeout=10) as wire, pytest.raises(ServerError) as refused:
        wire.login(user="app", password=PASSWORDS["app"], IntervalStyle="sql_standard")
    assert (refused.value.sqlstate, refused.value.message) == ("08P01", "unsupported startup parameter: IntervalStyle")
    assert _settings_seen(pooler, "DateStyle", "German") == ["German, DMY", "ISO, MDY"] * 2
