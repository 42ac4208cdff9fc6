"""Live pool resizing and config reloads, under load, with no client dropped and no transaction failed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import psycopg

from maitred.local.postgres import free_port
from tests.support import PASSWORDS, server_connections, wait_for
from tests.test_admin import USERS, console
from tests.test_metrics import http_get, metric


def start_pgbench(pooler, seconds: int, clients: int = 30) -> subprocess.Popen:
    return subprocess.Popen(
        ["pgbench", "-n", "-S", "-c", str(clients), "-j", "2", "-T", str(seconds), "-h", "127.0.0.1",
         "-p", str(pooler.port), "-U", "app", "app"],
        env={"PGPASSWORD": PASSWORDS["app"], "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_clean_run(bench: subprocess.Popen) -> None:
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 0, err
    assert "number of failed transactions: 0 " in out, out
    assert int(re.search(r"actually processed: (\d+)", out).group(1)) > 0


def resize_via_file(pooler, size: int) -> None:
    pooler.settings["default_pool_size"] = size
    pooler.write_config()


def follows(pg, size: int, timeout: float) -> None:
    wait_for(lambda: server_connections(pg) == size, timeout=timeout, message=f"{size} server connections")


def test_pool_grows_and_shrinks_through_the_config_file_under_pgbench(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, max_client_conn=200,
                            maitred={"config_watch": 1})
    bench = start_pgbench(pooler, seconds=14)
    time.sleep(2)
    assert server_connections(pg) <= 2
    resize_via_file(pooler, 20)
    follows(pg, 20, timeout=2.5)     # the watch polls every 0.5 s; the pool then fills within a second
    time.sleep(2)
    resize_via_file(pooler, 2)
    follows(pg, 2, timeout=2.5)
    time.sleep(2)
    assert server_connections(pg) <= 2
    assert_clean_run(bench)


def test_pool_goes_2_20_2_through_the_console_then_the_file_during_30s_of_pgbench(pooler_factory, pg):
    """The issue's scenario: one pgbench run, resized live four times, with no failed transaction."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, max_client_conn=200,
                            userlist=USERS, admin_users="admin", maitred={"config_watch": 1})
    bench = start_pgbench(pooler, seconds=30)
    time.sleep(3)
    assert server_connections(pg) <= 2
    with console(pooler) as admin:
        admin.execute("SET default_pool_size = 20")
        follows(pg, 20, timeout=1.5)
        time.sleep(4)
        admin.execute("SET default_pool_size = 2")
        follows(pg, 2, timeout=1.5)
    time.sleep(4)
    pooler.settings["default_pool_size"] = 2        # what the console set, so the file change below is 2 -> 20
    resize_via_file(pooler, 20)
    follows(pg, 20, timeout=2.5)                    # the watch polls every 0.5 s
    time.sleep(4)
    resize_via_file(pooler, 2)
    follows(pg, 2, timeout=2.5)
    assert_clean_run(bench)


def test_configmap_symlink_swap_is_applied(pooler_factory, tmp_path):
    """A ConfigMap volume: pooler.ini -> ..data/pooler.ini, and ..data -> a timestamped folder, swapped."""
    port = free_port()
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3,
                            maitred={"http_port": port, "config_watch": 1})
    volume = tmp_path / "volume"
    first, second = volume / "..2026_01", volume / "..2026_02"
    for folder, size in ((first, 3), (second, 7)):
        folder.mkdir(parents=True)
        pooler.settings["default_pool_size"] = size
        (folder / "pooler.ini").write_text(pooler.render())
    os.symlink(first.name, volume / "..data")
    os.symlink("..data/pooler.ini", volume / "pooler.ini")
    # Restart the pooler on the symlinked path.
    pooler.stop()
    pooler.config_path = volume / "pooler.ini"
    pooler.launch()
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    assert metric(http_get(port, "/metrics")[1], "maitred_pool_size", database="app") == 3
    os.symlink(second.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")       # the atomic swap kubelet does
    wait_for(lambda: metric(http_get(port, "/metrics")[1], "maitred_pool_size", database="app") == 7,
             timeout=2, message="pool size 7 from the swapped ConfigMap")


def test_by_default_an_edit_waits_for_sighup_as_in_pgbouncer(pooler_factory):
    port = free_port()
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3, maitred={"http_port": port})
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    resize_via_file(pooler, 9)
    time.sleep(1.2)         # more than two periods of the watch, had it been on
    assert metric(http_get(port, "/metrics")[1], "maitred_pool_size", database="app") == 3   # no watch
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: metric(http_get(port, "/metrics")[1], "maitred_pool_size", database="app") == 9,
             timeout=2, message="pool size 9 after SIGHUP")


def test_a_setting_that_needs_a_restart_is_logged_and_kept(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3)
    old_port = pooler.port
    pooler.settings["listen_port"] = free_port()
    pooler.write_config()
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: "listen_port cannot change without a restart" in pooler.log_text(), timeout=3,
             message="the log line about listen_port")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:   # still on the old port
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert pooler.port == old_port


def test_an_invalid_edit_is_logged_and_the_running_config_kept(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=3)
    pooler.settings["default_pool_size"] = "lots"
    pooler.write_config()
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: "config not applied" in pooler.log_text(), timeout=3, message="the config error log")
    assert "default_pool_size" in pooler.log_text()
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
