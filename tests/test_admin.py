"""The admin console against a real pooler process: PgBouncer's SHOW columns, its access rules, its control
commands and what they do to real traffic."""
from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from pooler import admin, stats
from pooler.settings import MAITRED_SETTINGS, SETTINGS
from tests import wire
from tests.support import PASSWORDS, server_connections, wait_for
from tests.wire import Wire

USERS = {**PASSWORDS, "admin": "admin-secret", "watcher": "watcher-secret", "nobody": "nobody-secret"}

POOLS_1_25 = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
              "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
              "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"]
STATS_1_25 = ["database", "total_server_assignment_count", "total_xact_count", "total_query_count",
              "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
              "total_client_parse_count", "total_server_parse_count", "total_bind_count",
              "total_client_login_count", "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
              "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
              "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"]
TEXT, INT4, NUMERIC = 25, 23, 1700


def start(pooler_factory, **settings):
    settings.setdefault("pool_mode", "transaction")
    return pooler_factory(userlist=USERS, admin_users="admin", stats_users="watcher", **settings)


def console(pooler, user: str = "admin") -> psycopg.Connection:
    return psycopg.connect(pooler.dsn(user=user, dbname="pgbouncer", password=USERS[user]), autocommit=True,
                           prepare_threshold=None)   # psycopg would prepare a repeated query: extended protocol


def show(conn: psycopg.Connection, what: str) -> list[dict]:
    cur = conn.execute(f"SHOW {what}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def row(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


# -- the pure parts ------------------------------------------------------------------------------------------

def test_averages_are_per_second_and_times_per_transaction_query_and_assignment():
    older = stats.ZERO
    fields = dict.fromkeys(stats.FIELDS, 0)
    fields.update(assignments=20, xact_count=10, query_count=40, bytes_received=4000, xact_time=50_000,
                  query_time=80_000, wait_time=2_000, client_logins=3)
    current = tuple(fields[name] for name in stats.FIELDS)
    avg = dict(zip(stats.FIELDS, stats.averages(current, older, 2.0)))
    assert avg["xact_count"] == 5 and avg["query_count"] == 20 and avg["bytes_received"] == 2000
    assert avg["assignments"] == 10 and avg["client_logins"] == 1           # 3 in 2 s, rounded down as in C
    assert avg["xact_time"] == 5_000 and avg["query_time"] == 2_000 and avg["wait_time"] == 100
    assert stats.averages(current, current, 2.0) == stats.ZERO
    assert stats.averages(current, older, 0.0) == stats.ZERO


def test_show_config_prints_values_as_pgbouncer_does():
    text = admin.config_text
    assert text(SETTINGS["log_connections"], True) == "1" and text(SETTINGS["so_reuseport"], False) == "0"
    assert text(SETTINGS["query_wait_timeout"], 120.0) == "120"
    assert text(SETTINGS["server_check_delay"], 0.5) == "0.5"
    assert text(SETTINGS["admin_users"], ("a", "b")) == "a,b"
    assert text(SETTINGS["unix_socket_mode"], 0o777) == "0777"
    assert text(SETTINGS["default_pool_size"], 20) == "20"


# -- SHOW ----------------------------------------------------------------------------------------------------

def test_show_pools_and_stats_have_pgbouncer_1_25_columns_in_order_with_its_types(pooler_factory):
    pooler = start(pooler_factory)
    with psycopg.connect(pooler.dsn(), autocommit=True) as app, console(pooler) as con:
        app.execute("SELECT 1")
        cur = con.execute("SHOW POOLS")
        assert [d.name for d in cur.description] == POOLS_1_25
        assert [d.type_code for d in cur.description] == [TEXT, TEXT] + [INT4] * 13 + [TEXT, TEXT]
        cur = con.execute("SHOW STATS")
        assert [d.name for d in cur.description] == STATS_1_25
        assert [d.type_code for d in cur.description] == [TEXT] + [NUMERIC] * 24
        assert cur.statusmessage == "SHOW"


def test_every_show_command_answers_and_the_console_is_a_pool_of_its_own(pooler_factory):
    pooler = start(pooler_factory)
    with psycopg.connect(pooler.dsn(), autocommit=True) as app, console(pooler) as con:
        app.execute("SELECT 1")
        for what in ("POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "TOTALS", "CLIENTS", "SERVERS",
                     "SOCKETS", "ACTIVE_SOCKETS", "DATABASES", "USERS", "CONFIG", "LISTS", "VERSION", "STATE",
                     "MEM", "FDS", "PEERS", "PEER_POOLS", "DNS_HOSTS", "DNS_ZONES", "client_encoding"):
            cur = con.execute(f"show {what.lower()};")
            assert cur.statusmessage == "SHOW" and cur.description, what
        assert row(show(con, "POOLS"), database="pgbouncer")["pool_mode"] == "statement"
        assert row(show(con, "DATABASES"), name="pgbouncer")["force_user"] == "pgbouncer"
        assert row(show(con, "CLIENTS"), database="pgbouncer")["user"] == "admin"
        assert {r["name"] for r in show(con, "USERS")} >= {"app", "admin", "watcher", "pgbouncer"}
        assert show(con, "STATE") == [{"key": "active", "value": "yes"}, {"key": "paused", "value": "no"},
                                      {"key": "suspended", "value": "no"}]
        assert re.fullmatch(r"maitred \S+ \(PgBouncer 1\.25\.0 compatible\)", show(con, "VERSION")[0]["version"])
        lists = {r["list"]: r["items"] for r in show(con, "LISTS")}
        assert lists["databases"] == 2 and lists["pools"] == 2 and lists["used_clients"] == 2
        assert lists["used_servers"] == 1
        notices = []
        con.add_notice_handler(lambda n: notices.append((n.message_primary, n.message_detail)))
        assert con.execute("SHOW HELP").statusmessage == "SHOW"
        primary, detail = notices[0]
        assert primary == "Console usage" and "SHOW HELP|CONFIG|DATABASES" in detail and "PAUSE [<db>]" in detail


def test_stats_count_a_pgbench_workload_and_grow_with_more(pooler_factory):
    pooler = start(pooler_factory, default_pool_size=2)
    result = pooler.pgbench("-n", "-S", "-c", "4", "-j", "2", "-T", "2")
    assert result.returncode == 0, result.stderr
    with console(pooler) as con:
        first = row(show(con, "STATS"), database="app")
        assert first["total_xact_count"] > 100 and first["total_query_count"] >= first["total_xact_count"]
        assert first["total_received"] > 0 and first["total_sent"] > first["total_received"]
        assert first["total_xact_time"] > 0 and first["total_query_time"] > 0
        assert first["total_server_assignment_count"] >= first["total_xact_count"]
        assert first["total_client_login_count"] >= 4          # pgbench also logs in once to look around
        assert first["total_wait_time"] > 0            # 4 clients on 2 servers queue
        # Before the first stats_period the averages cover the whole uptime, as in PgBouncer.
        assert first["avg_xact_count"] > 0 and first["avg_xact_time"] > 0 and first["avg_recv"] > 0
        totals = row(show(con, "STATS_TOTALS"), database="app")
        assert totals["xact_count"] == first["total_xact_count"]
        assert totals["client_login_count"] == first["total_client_login_count"]
        assert row(show(con, "STATS_AVERAGES"), database="app")["xact_count"] > 0
        assert row(show(con, "STATS"), database="pgbouncer")["total_client_login_count"] == 1
        assert pooler.pgbench("-n", "-S", "-c", "2", "-T", "1").returncode == 0
        second = row(show(con, "STATS"), database="app")
        assert second["total_xact_count"] > first["total_xact_count"]
        assert second["total_client_login_count"] >= first["total_client_login_count"] + 2
        totals = {r["name"]: r["value"] for r in show(con, "TOTALS")}
        assert totals["total_xact_count"] > second["total_xact_count"]     # plus the console's commands
        assert totals["avg_xact_count"] > 0


def test_averages_fall_to_zero_a_stats_period_after_the_work_stops(pooler_factory):
    pooler = start(pooler_factory, stats_period=1)
    assert pooler.pgbench("-n", "-S", "-c", "2", "-T", "1").returncode == 0
    with console(pooler) as con:
        assert row(show(con, "STATS"), database="app")["avg_xact_count"] > 0
        quiet = wait_for(lambda: row(show(con, "STATS"), database="app")["avg_xact_count"] == 0, timeout=5)
        assert quiet
        app = row(show(con, "STATS"), database="app")
        assert app["total_xact_count"] > 0 and app["avg_xact_time"] == 0 and app["avg_recv"] == 0


def test_a_client_waiting_on_a_pool_of_one_shows_in_pools_and_clients(pooler_factory):
    pooler = start(pooler_factory, default_pool_size=1)
    holder = psycopg.connect(pooler.dsn(application_name="holder"))
    waiter = psycopg.connect(pooler.dsn(application_name="waiter"), autocommit=True)
    con = console(pooler)
    try:
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]        # holds the only server
        done = []
        thread = threading.Thread(target=lambda: done.append(waiter.execute("SELECT 7").fetchone()[0]))
        thread.start()
        pool = wait_for(lambda: [p for p in show(con, "POOLS") if p["database"] == "app" and p["cl_waiting"]])[0]
        assert pool["cl_waiting"] == 1 and pool["sv_active"] == 1 and pool["cl_active"] == 1
        assert pool["user"] == "app" and pool["pool_mode"] == "transaction" and pool["load_balance_hosts"] is None
        time.sleep(0.3)
        pool = row(show(con, "POOLS"), database="app")
        assert pool["maxwait"] * 1_000_000 + pool["maxwait_us"] >= 300_000
        clients = show(con, "CLIENTS")
        waiting = row(clients, application_name="waiter")
        assert waiting["state"] == "waiting" and waiting["wait"] * 1_000_000 + waiting["wait_us"] >= 300_000
        active = row(clients, application_name="holder")
        assert active["state"] == "active" and active["link"] != ""
        server = row(show(con, "SERVERS"), database="app")
        assert server["state"] == "active" and server["remote_pid"] == pid and server["link"] == active["ptr"]
        assert server["application_name"] == "holder" and server["user"] == "app"
        assert row(show(con, "SOCKETS"), application_name="waiter")["state"] == "cl_waiting"
        holder.commit()
        thread.join(5)
        assert done == [7]
        pool = row(show(con, "POOLS"), database="app")
        assert pool["cl_waiting"] == 0 and pool["sv_idle"] == 1 and pool["maxwait"] == 0
        assert row(show(con, "STATS"), database="app")["total_wait_time"] >= 300_000
        assert row(show(con, "CLIENTS"), application_name="waiter")["state"] == "idle"
    finally:
        for conn in (holder, waiter, con):
            conn.close()


def test_show_databases_users_and_config_describe_the_configuration(pooler_factory, pg):
    pooler = start(pooler_factory, default_pool_size=3, max_db_connections=7,
                   databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app pool_mode=session",
                              "other": f"host=127.0.0.1 port={pg.port} dbname=app pool_size=2 user=app"},
                   users={"app": "pool_size=4 max_user_connections=9"})
    with psycopg.connect(pooler.dsn(), autocommit=True) as app, console(pooler, "watcher") as con:
        app.execute("SELECT 1")
        databases = show(con, "DATABASES")
        assert [d["name"] for d in databases] == ["app", "other", "pgbouncer"]
        db = row(databases, name="app")
        assert (db["host"], db["port"], db["database"], db["force_user"]) == ("127.0.0.1", pg.port, "app", None)
        assert db["pool_size"] == 3 and db["pool_mode"] == "session" and db["max_connections"] == 7
        assert db["current_connections"] == 1 and db["current_client_connections"] == 1 and db["paused"] == 0
        assert db["server_lifetime"] == 3600 and db["reserve_pool_size"] == db["reserve_pool"] == 0
        other = row(databases, name="other")
        assert other["pool_size"] == 2 and other["force_user"] == "app" and other["pool_mode"] is None
        user = row(show(con, "USERS"), name="app")
        assert user["pool_size"] == "4" and user["reserve_pool_size"] == "" and user["pool_mode"] is None
        assert user["max_user_connections"] == 9 and user["current_connections"] == 1
        assert user["current_client_connections"] == 1
        config = {r["key"]: r for r in show(con, "CONFIG")}
        assert set(config) == set(SETTINGS) | set(MAITRED_SETTINGS)
        assert config["default_pool_size"] == {"key": "default_pool_size", "value": "3", "default": "20",
                                               "changeable": "yes"}
        assert config["listen_port"]["changeable"] == "no"
        assert config["stats_users"]["value"] == "watcher"
        assert config["log_connections"]["value"] == "0" and config["log_connections"]["default"] == "1"
        assert config["query_wait_timeout"]["value"] == "120"


# -- who may do what --------------------------------------------------------------------------------------------

def test_stats_users_may_show_but_not_control(pooler_factory):
    pooler = start(pooler_factory)
    with console(pooler, "watcher") as con:
        assert show(con, "POOLS") and show(con, "CONFIG")
        for command in ("PAUSE", "RESUME", "RELOAD", "RECONNECT", "KILL app", "SHUTDOWN", "WAIT_CLOSE",
                        "SET default_pool_size = 3", "SHOW FDS"):
            with pytest.raises(psycopg.errors.ProtocolViolation, match="^admin access needed$"):
                con.execute(command)
        assert con.execute("SET client_encoding = 'UTF8'").statusmessage == "SET"
        assert show(con, "STATE")[1] == {"key": "paused", "value": "no"}
    assert pooler.alive()


def test_users_in_neither_list_are_refused_after_authenticating(pooler_factory):
    pooler = start(pooler_factory)
    for user in ("nobody", "app"):
        with pytest.raises(psycopg.OperationalError, match="not allowed"):
            console(pooler, user)
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(pooler.dsn(user="admin", dbname="pgbouncer", password="wrong"))
    with console(pooler) as con:
        assert row(show(con, "POOLS"), database="pgbouncer")["cl_active"] == 1


def test_admin_users_reach_the_console_without_a_databases_entry_even_behind_a_fallback(pooler_factory, pg):
    pooler = start(pooler_factory, databases={"*": f"host=127.0.0.1 port={pg.port}"})
    with console(pooler) as con:
        assert [p["database"] for p in show(con, "POOLS")] == ["pgbouncer"]


def test_a_bad_command_is_an_error_and_the_session_goes_on(pooler_factory):
    pooler = start(pooler_factory)
    with console(pooler) as con:
        errors = {
            "FOO": "invalid command 'FOO', use SHOW HELP;",
            "SHOW nonsense": "invalid command 'SHOW nonsense', use SHOW HELP;",
            "SELECT 1": "invalid command 'SELECT 1', use SHOW HELP;",
            "SHOW POOLS; SHOW STATS": "invalid command 'SHOW POOLS; SHOW STATS', use SHOW HELP;",
            "RELOAD now": "invalid command 'RELOAD now', use SHOW HELP;",
            "SHUTDOWN NOW": "invalid command 'SHUTDOWN NOW', use SHOW HELP;",
            "PAUSE nosuch": "no such database: nosuch",
            "KILL nosuch": "no such database: nosuch",
            "RESUME": "pooler is not paused/suspended",
            "RESUME app": "database app is not paused",
            "PAUSE pgbouncer": "cannot pause admin db: pgbouncer",
            "KILL_CLIENT abc": "invalid client pointer supplied",
            "KILL_CLIENT 999999": "client not found",
            "SET nope = 1": "SET failed: unknown parameter: nope",
            "SET default_pool_size = 'lots'": "SET failed: 'lots' is not an integer",
            "SET listen_port = 1": "SET failed: listen_port cannot be changed without a restart",
        }
        for command, message in errors.items():
            with pytest.raises(psycopg.errors.ProtocolViolation) as excinfo:
                con.execute(command)
            assert excinfo.value.diag.message_primary == message
            assert excinfo.value.diag.severity == "ERROR"
            assert show(con, "VERSION")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="^a database is required$"):
            con.execute("DISABLE")
        assert con.execute("").statusmessage is None
        assert con.execute('SHOW "pools"').statusmessage == "SHOW"


def test_the_extended_query_protocol_is_refused_and_the_connection_closed(pooler_factory):
    pooler = start(pooler_factory)
    with Wire(pooler.port) as raw:
        raw.login("admin", USERS["admin"], database="pgbouncer")
        assert raw.rows("SHOW STATE")[0] == ("active", "yes")
        raw.send(wire.parse("SHOW POOLS") + wire.bind() + wire.execute() + wire.SYNC)
        error = raw.expect_error()
        assert (error.sqlstate, error.message) == ("08P01", "extended query protocol not supported by admin console")
        assert raw.closed_by_peer()
    with console(pooler) as again:
        assert show(again, "VERSION")


# -- control commands ------------------------------------------------------------------------------------------

def test_pause_holds_queries_until_resume(pooler_factory, pg):
    pooler = start(pooler_factory, default_pool_size=2)
    client = psycopg.connect(pooler.dsn(), autocommit=True)
    con = console(pooler)
    try:
        client.execute("SELECT 1")
        assert con.execute("PAUSE").statusmessage == "PAUSE"
        assert server_connections(pg) == 0
        assert show(con, "STATE")[:2] == [{"key": "active", "value": "no"}, {"key": "paused", "value": "yes"}]
        with pytest.raises(psycopg.errors.ProtocolViolation, match="already suspended/paused"):
            con.execute("PAUSE")
        done = []
        thread = threading.Thread(target=lambda: done.append(client.execute("SELECT 42").fetchone()[0]))
        thread.start()
        wait_for(lambda: row(show(con, "POOLS"), database="app")["cl_waiting"] == 1)
        time.sleep(0.3)
        assert done == [] and server_connections(pg) == 0
        assert con.execute("RESUME").statusmessage == "RESUME"
        thread.join(5)
        assert done == [42]
        assert show(con, "STATE")[0] == {"key": "active", "value": "yes"}
    finally:
        client.close()
        con.close()


def test_pause_of_one_database_waits_for_its_transaction_and_leaves_the_others(pooler_factory, pg):
    pooler = start(pooler_factory, databases={"app": f"host=127.0.0.1 port={pg.port} dbname=app",
                                              "other": f"host=127.0.0.1 port={pg.port} dbname=app"})
    busy = psycopg.connect(pooler.dsn())
    other = psycopg.connect(pooler.dsn(dbname="other"), autocommit=True)
    con = console(pooler)
    try:
        busy.execute("SELECT 1")                       # in a transaction: its server stays until it ends
        paused = []
        thread = threading.Thread(target=lambda: paused.append(console_command(pooler, "PAUSE app")))
        thread.start()
        time.sleep(0.5)
        assert paused == []
        assert other.execute("SELECT 2").fetchone()[0] == 2
        busy.commit()
        thread.join(5)
        assert paused == ["PAUSE"]
        assert row(show(con, "DATABASES"), name="app")["paused"] == 1
        assert row(show(con, "DATABASES"), name="other")["paused"] == 0
        assert con.execute("RESUME app").statusmessage == "RESUME"
        assert busy.execute("SELECT 3").fetchone()[0] == 3
    finally:
        for conn in (busy, other, con):
            conn.close()


def console_command(pooler, command: str) -> str:
    with console(pooler) as con:
        return con.execute(command).statusmessage


def test_reconnect_gives_the_next_transaction_a_new_backend(pooler_factory):
    pooler = start(pooler_factory, default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as client, console(pooler) as con:
        before = client.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert row(show(con, "SERVERS"), database="app")["remote_pid"] == before
        assert con.execute("RECONNECT app").statusmessage == "RECONNECT"
        assert con.execute("WAIT_CLOSE app").statusmessage == "WAIT_CLOSE"
        after = client.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert after != before
        assert row(show(con, "SERVERS"), database="app")["remote_pid"] == after
        assert con.execute("RECONNECT").statusmessage == "RECONNECT"
        assert client.execute("SELECT pg_backend_pid()").fetchone()[0] not in (before, after)


def test_kill_drops_a_databases_clients_and_new_ones_wait_for_resume(pooler_factory, pg):
    pooler = start(pooler_factory)
    victim = psycopg.connect(pooler.dsn(), autocommit=True)
    con = console(pooler)
    try:
        victim.execute("SELECT 1")
        assert con.execute("KILL app").statusmessage == "KILL"
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert [c["database"] for c in show(con, "CLIENTS")] == ["pgbouncer"]
        assert server_connections(pg) == 0
        assert row(show(con, "DATABASES"), name="app")["paused"] == 1
        assert con.execute("RESUME app").statusmessage == "RESUME"
        with psycopg.connect(pooler.dsn(), autocommit=True) as again:
            assert again.execute("SELECT 5").fetchone()[0] == 5
    finally:
        victim.close()
        con.close()


def test_kill_client_closes_the_client_with_that_id(pooler_factory):
    pooler = start(pooler_factory)
    victim = psycopg.connect(pooler.dsn(application_name="victim"), autocommit=True)
    bystander = psycopg.connect(pooler.dsn(application_name="bystander"), autocommit=True)
    with console(pooler) as con:
        target = row(show(con, "CLIENTS"), application_name="victim")["id"]
        assert con.execute(f"KILL_CLIENT {target}").statusmessage == "KILL_CLIENT"
        with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone()[0] == 1
    victim.close()
    bystander.close()


def _server_count_after_bench(pooler, pg, clients: int, tmp_path) -> int:
    script = tmp_path / "sleep.sql"
    script.write_text("SELECT pg_sleep(0.02);\n")
    result = pooler.pgbench("-n", "-f", str(script), "-c", str(clients), "-j", "2", "-T", "1")
    assert result.returncode == 0, result.stderr
    return server_connections(pg)


def test_set_default_pool_size_resizes_the_pools_live(pooler_factory, pg, tmp_path):
    pooler = start(pooler_factory, default_pool_size=5)
    with console(pooler) as con:
        assert _server_count_after_bench(pooler, pg, 8, tmp_path) == 5
        assert con.execute("SET default_pool_size = 2").statusmessage == "SET default_pool_size=2"
        wait_for(lambda: server_connections(pg) == 2)
        assert row(show(con, "CONFIG"), key="default_pool_size")["value"] == "2"
        assert row(show(con, "DATABASES"), name="app")["pool_size"] == 2
        assert row(show(con, "POOLS"), database="app")["sv_idle"] == 2
        assert _server_count_after_bench(pooler, pg, 8, tmp_path) == 2
        assert con.execute("SET default_pool_size TO '4'").statusmessage == "SET default_pool_size=4"
        assert _server_count_after_bench(pooler, pg, 8, tmp_path) == 4
        assert row(show(con, "POOLS"), database="app")["sv_idle"] == 4


def test_reload_applies_the_edited_file_and_a_broken_one_is_refused(pooler_factory):
    pooler = start(pooler_factory, default_pool_size=5)
    with console(pooler) as con:
        pooler.settings["default_pool_size"] = 7
        pooler.write_config()
        notices = []
        con.add_notice_handler(lambda n: notices.append((n.message_primary, n.message_detail)))
        assert con.execute("RELOAD").statusmessage == "RELOAD"
        assert row(show(con, "CONFIG"), key="default_pool_size")["value"] == "7"
        assert any("default_pool_size changed" in primary for primary, _ in notices)
        pooler.settings["default_pool_size"] = "many"
        pooler.write_config()
        with pytest.raises(psycopg.errors.ConfigFileError,
                           match="RELOAD failed, see logs for additional details") as excinfo:
            con.execute("RELOAD")
        assert "default_pool_size" in excinfo.value.diag.message_detail
        assert row(show(con, "CONFIG"), key="default_pool_size")["value"] == "7"


def test_a_setting_with_no_effect_in_maitred_says_so_at_reload_and_on_set(pooler_factory):
    """resolv_conf, pkt_buf and the other settings kept for PgBouncer's config files change nothing: a value other
    than the default is a warning in the log at load and RELOAD, and SET answers with a notice."""
    pooler = start(pooler_factory)
    with console(pooler) as con:
        notices = []
        con.add_notice_handler(lambda n: notices.append(n.message_primary))
        assert con.execute("SET dns_zone_check_period = 60").statusmessage == "SET dns_zone_check_period=60"
        assert notices == ["dns_zone_check_period has no effect in maitred (DNS zone serial polling: maitred looks "
                           "host names up through the system's resolver, again once dns_max_ttl has passed)"]
        pooler.settings["sbuf_loopcnt"] = 10
        pooler.write_config()
        con.execute("RELOAD")
    pooler.wait_log(f"{pooler.config_path}:")
    assert "sbuf_loopcnt has no effect in maitred (A libevent fairness knob" in pooler.log_text()


def test_shutdown_ends_the_process(pooler_factory):
    pooler = start(pooler_factory, expect_alive=False)
    client = psycopg.connect(pooler.dsn(), autocommit=True)
    con = console(pooler)
    with pytest.raises(psycopg.OperationalError):
        con.execute("SHUTDOWN")
    assert pooler.proc.wait(10) == 0
    with pytest.raises(psycopg.OperationalError):
        client.execute("SELECT 1")
    client.close()
    con.close()


def test_shutdown_wait_for_clients_answers_and_exits_when_the_clients_have_gone(pooler_factory):
    pooler = start(pooler_factory, expect_alive=False)
    client = psycopg.connect(pooler.dsn())
    client.execute("SELECT 1")                       # a transaction in progress keeps the process up
    with console(pooler) as con:
        assert con.execute("SHUTDOWN WAIT_FOR_CLIENTS").statusmessage == "SHUTDOWN"
    time.sleep(0.3)
    assert pooler.alive()
    client.commit()
    assert client.execute("SELECT 2").fetchone() == (2,)       # it keeps working until it leaves
    client.close()
    assert pooler.proc.wait(10) == 0
