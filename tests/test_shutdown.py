"""PgBouncer 1.23's shutdowns: SIGTERM / SHUTDOWN WAIT_FOR_CLIENTS keeps existing clients working until they
leave, SIGINT / SHUTDOWN WAIT_FOR_SERVERS lets no new transaction start, and a second signal is immediate.
Only the console may still log in, over the Unix socket."""
from __future__ import annotations

import signal
import time

import psycopg
import pytest

from tests.test_admin import USERS, console
from tests.support import wait_for


def start(pooler_factory, tmp_path, **settings):
    sockets = tmp_path / "sock"
    sockets.mkdir()
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, userlist=USERS, admin_users="admin",
                            unix_socket_dir=str(sockets), expect_alive=False, **settings)
    pooler.sockets = str(sockets)
    return pooler


def over_unix(pooler, user: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(host=pooler.sockets, port=pooler.port, user=user, dbname=dbname,
                           password=USERS[user], autocommit=True, prepare_threshold=None, connect_timeout=5)


def refused(connect) -> str:
    with pytest.raises(psycopg.OperationalError) as excinfo:
        connect().close()
    return str(excinfo.value)


def test_sigterm_keeps_existing_clients_working_until_they_leave(pooler_factory, tmp_path):
    pooler = start(pooler_factory, tmp_path, maitred={"shutdown_timeout": 60})
    idle = psycopg.connect(pooler.dsn(), autocommit=True)
    busy = psycopg.connect(pooler.dsn())
    busy.execute("SELECT 1")                     # a transaction left open across the signal
    pooler.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert idle.execute("SELECT 2").fetchone() == (2,)
    assert busy.execute("SELECT 3").fetchone() == (3,)
    busy.commit()
    assert busy.execute("SELECT 4").fetchone() == (4,)      # a new transaction too
    busy.commit()
    refused(lambda: psycopg.connect(pooler.dsn(), connect_timeout=3))                # TCP: closed
    assert "pooler is shutting down" in refused(lambda: over_unix(pooler, "app", "app"))
    with over_unix(pooler, "admin", "pgbouncer") as con:                             # the console: yes
        assert con.execute("SHOW VERSION").fetchone()
    assert pooler.alive()
    idle.close()
    assert pooler.alive()
    busy.close()
    pooler.proc.wait(timeout=10)
    assert pooler.proc.returncode == 0
    assert "client connections dropped, exiting" in pooler.log_text()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_a_shutdown_is_immediate(pooler_factory, tmp_path, second):
    pooler = start(pooler_factory, tmp_path, maitred={"shutdown_timeout": 60})
    client = psycopg.connect(pooler.dsn(), autocommit=True)
    try:
        pooler.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert client.execute("SELECT 1").fetchone() == (1,)
        pooler.signal(second)
        pooler.proc.wait(timeout=10)
        assert pooler.proc.returncode == 0
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()


def test_shutdown_wait_for_servers_lets_no_new_transaction_start(pooler_factory, tmp_path):
    pooler = start(pooler_factory, tmp_path, maitred={"shutdown_timeout": 60})
    idle = psycopg.connect(pooler.dsn(), autocommit=True)
    busy = psycopg.connect(pooler.dsn())
    try:
        idle.execute("SELECT 1")
        busy.execute("SELECT 1")                 # in a transaction: its server stays until it ends
        with console(pooler) as con:
            assert con.execute("SHUTDOWN WAIT_FOR_SERVERS").statusmessage == "SHUTDOWN"
        with pytest.raises(psycopg.OperationalError, match="server shutting down"):
            idle.execute("SELECT 2")
        assert busy.execute("SELECT 3").fetchone() == (3,)
        assert pooler.alive()
        busy.commit()
        pooler.proc.wait(timeout=10)
        assert pooler.proc.returncode == 0
        assert "server connections dropped, exiting" in pooler.log_text()
    finally:
        idle.close()
        busy.close()


def test_console_shutdown_wait_for_clients_keeps_the_console_working(pooler_factory, tmp_path):
    pooler = start(pooler_factory, tmp_path, maitred={"shutdown_timeout": 60})
    con = console(pooler)
    assert con.execute("SHUTDOWN WAIT_FOR_CLIENTS").statusmessage == "SHUTDOWN"
    time.sleep(0.3)
    assert con.execute("SHOW STATE").fetchall()
    assert pooler.alive()
    con.close()
    pooler.proc.wait(timeout=10)
    assert pooler.proc.returncode == 0


def test_shutdown_timeout_lets_the_clients_left_go_between_transactions(pooler_factory, tmp_path):
    pooler = start(pooler_factory, tmp_path, maitred={"shutdown_timeout": 1})
    idle = psycopg.connect(pooler.dsn(), autocommit=True)
    busy = psycopg.connect(pooler.dsn())
    try:
        idle.execute("SELECT 1")
        busy.execute("SELECT 1")
        pooler.signal(signal.SIGTERM)
        wait_for(lambda: "shutdown_timeout (1.0s) passed" in pooler.log_text(), timeout=10,
                 message="shutdown_timeout to pass")
        with pytest.raises(psycopg.OperationalError) as excinfo:
            idle.execute("SELECT 2")
        assert excinfo.value.sqlstate in (None, "57P01")
        assert busy.execute("SELECT 3").fetchone() == (3,)      # its transaction may still end
        busy.commit()
        pooler.proc.wait(timeout=10)
        assert pooler.proc.returncode == 0
    finally:
        idle.close()
        busy.close()
