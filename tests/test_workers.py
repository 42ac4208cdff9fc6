"""`[maitred] workers = N`: N pooler processes on one port under one supervisor, one pooler to a person."""
from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.request

import psycopg
import pytest

from maitred.local.postgres import free_port
from pooler.config import load_config
from pooler.workers import with_running_settings
from tests.support import run_threads, server_connections, wait_for
from tests.test_admin import USERS, console, show
from tests.test_cancel import cancel_from_another_thread

WORKERS = 2


def start_workers(pooler_factory, count: int = WORKERS, maitred: dict | None = None, **settings):
    """A pooler with `count` workers, returned once every one of them listens."""
    settings = {"pool_mode": "transaction", "userlist": USERS, "admin_users": "admin", **settings}
    pooler = pooler_factory(maitred={"workers": count, **(maitred or {})}, **settings)
    wait_for(lambda: pooler.log_text().count(f"listening on 127.0.0.1:{pooler.port}") >= count,
             message=f"{count} workers to listen")
    return pooler


def worker_pids(pooler) -> list[int]:
    with open(f"/proc/{pooler.proc.pid}/task/{pooler.proc.pid}/children") as f:
        return [int(pid) for pid in f.read().split()]


def test_one_worker_is_the_pooler_itself_with_no_other_process(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", maitred={"workers": 1})
    with psycopg.connect(pooler.dsn(), autocommit=True) as client:
        assert client.execute("SELECT 1").fetchone() == (1,)
    assert worker_pids(pooler) == []


def test_the_workers_are_processes_of_their_own_under_one_supervisor(pooler_factory):
    pooler = start_workers(pooler_factory)
    pids = worker_pids(pooler)
    assert len(pids) == WORKERS and pooler.proc.pid not in pids


def test_each_worker_has_its_own_pool_of_default_pool_size(pooler_factory, pg):
    """16 clients each hold a transaction: every worker opens its 2 servers and no more, so PostgreSQL sees
    2 x 2, and the console shows the whole pooler's servers and waiting clients."""
    pooler = start_workers(pooler_factory, default_pool_size=2)
    release = threading.Event()

    def hold(_n: int) -> None:
        with psycopg.connect(pooler.dsn()) as client:
            client.execute("SELECT 1")        # a transaction begins and keeps its server
            release.wait(30)

    threads = threading.Thread(target=run_threads, args=(hold, 16))
    threads.start()
    try:
        wait_for(lambda: server_connections(pg) == 2 * WORKERS, message="every worker's servers")
        with console(pooler) as con:
            wait_for(lambda: _pool(con)["cl_waiting"] == 16 - 2 * WORKERS, message="the rest to wait")
            assert _pool(con)["sv_active"] == 2 * WORKERS
        assert server_connections(pg) == 2 * WORKERS
    finally:
        release.set()
        threads.join()


def _pool(con) -> dict:
    return next(row for row in show(con, "POOLS") if row["database"] == "app")


def test_a_cancel_reaches_the_query_whichever_worker_takes_it(pooler_factory, pg):
    """Each cancel is a new connection that the kernel gives to either worker; all of them land."""
    pooler = start_workers(pooler_factory)
    for _ in range(8):
        with psycopg.connect(pooler.dsn(), autocommit=True) as client:
            thread = cancel_from_another_thread(client, pg)
            with pytest.raises(psycopg.errors.QueryCanceled):    # whichever worker the cancel reached
                client.execute("SELECT pg_sleep(60)")
            thread.join(20)


def test_set_applies_to_every_worker(pooler_factory):
    pooler = start_workers(pooler_factory, default_pool_size=5)
    with console(pooler) as con:
        assert con.execute("SET default_pool_size = 7").statusmessage == "SET default_pool_size=7"
    for _ in range(8):          # new console sessions, on either worker
        with console(pooler) as con:
            config = {row["key"]: row["value"] for row in show(con, "CONFIG")}
            assert config["default_pool_size"] == "7"
            assert all(row["pool_size"] == 7 for row in show(con, "DATABASES") if row["name"] == "app")


def test_show_clients_lists_every_workers_clients_and_no_console_of_a_worker(pooler_factory):
    pooler = start_workers(pooler_factory)
    clients = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(12)]
    try:
        with console(pooler) as con:
            rows = show(con, "CLIENTS")
            assert sum(1 for row in rows if row["database"] == "app") == 12
            assert sum(1 for row in rows if row["database"] == "pgbouncer") == 1
            assert [row["cl_active"] for row in show(con, "POOLS") if row["database"] == "pgbouncer"] == [1]
    finally:
        for client in clients:
            client.close()


def test_pause_and_resume_apply_to_every_worker(pooler_factory):
    pooler = start_workers(pooler_factory)
    with console(pooler) as con:
        con.execute("PAUSE")
    for _ in range(6):
        with console(pooler) as con:
            assert {row["key"]: row["value"] for row in show(con, "STATE")}["paused"] == "yes"
    with console(pooler) as con:
        con.execute("RESUME")
    for _ in range(6):
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as client:
            assert client.execute("SELECT 1").fetchone() == (1,)


def test_metrics_are_the_whole_poolers_totals(pooler_factory):
    http_port = free_port()
    pooler = start_workers(pooler_factory, maitred={"http_port": http_port, "http_addr": "127.0.0.1"})
    for _ in range(20):
        with psycopg.connect(pooler.dsn(), autocommit=True) as client:
            client.execute("SELECT 1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    logins = [line for line in text.splitlines() if line.startswith('maitred_client_logins_total{database="app"')]
    assert len(logins) == 1 and float(logins[0].rsplit(" ", 1)[1]) == 20.0, logins
    assert "maitred_up 1.0" in text


def test_sigterm_drains_every_worker(pooler_factory):
    pooler = start_workers(pooler_factory, expect_alive=False)
    clients = [psycopg.connect(pooler.dsn()) for _ in range(8)]
    for client in clients:
        client.execute("SELECT 1")          # each in a transaction, on whichever worker took it
    pids = worker_pids(pooler)
    pooler.signal(signal.SIGTERM)
    wait_for(lambda: _refused(pooler), message="the port to stop taking connections")
    for client in clients:                  # their work goes on until they leave
        assert client.execute("SELECT 2").fetchone() == (2,)
        client.commit()
        client.close()
    assert pooler.proc.wait(15) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def _refused(pooler) -> bool:
    try:
        psycopg.connect(pooler.dsn(), connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def kill_a_worker(pooler, replaced_before: int = 0) -> None:
    """SIGKILL one worker; return once a new one has taken its place and listens (`replaced_before`: how many
    workers this pooler replaced already)."""
    victim = worker_pids(pooler)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(pooler)) == WORKERS and victim not in worker_pids(pooler),
             message="a new worker")
    wait_for(lambda: pooler.log_text().count(f"listening on 127.0.0.1:{pooler.port}") > WORKERS + replaced_before,
             message="the new worker to listen")


def test_a_killed_worker_is_replaced(pooler_factory):
    pooler = start_workers(pooler_factory)
    kill_a_worker(pooler)
    for _ in range(8):
        with psycopg.connect(pooler.dsn(), autocommit=True) as client:
            assert client.execute("SELECT 1").fetchone() == (1,)
    with console(pooler) as con:        # every worker answers: no "worker k did not answer" notice
        notices = []
        con.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        assert show(con, "POOLS") and not notices
    pooler.wait_log("killed by signal 9")


@pytest.mark.parametrize("command", ["SHUTDOWN", "SHUTDOWN WAIT_FOR_CLIENTS"])
def test_console_shutdown_stops_every_worker(pooler_factory, command):
    pooler = start_workers(pooler_factory, expect_alive=False)
    with console(pooler) as con:
        try:
            con.execute(command)
        except psycopg.OperationalError:
            pass                       # SHUTDOWN (immediate) answers with the end of the connection
    assert pooler.proc.wait(15) == 0


def test_the_unix_socket_is_shared_and_outlives_a_worker(pooler_factory, tmp_path):
    """Bound once by the supervisor, so it keeps taking clients while a worker is replaced; the pooler's own OS
    user reaches the console there without a password, as with one process."""
    pooler = start_workers(pooler_factory, unix_socket_dir=str(tmp_path))
    dsn = f"host={tmp_path} port={pooler.port} user=app dbname=app password={USERS['app']}"
    os.kill(worker_pids(pooler)[0], signal.SIGKILL)
    for _ in range(8):
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as client:
            assert client.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(f"host={tmp_path} port={pooler.port} user=pgbouncer dbname=pgbouncer", autocommit=True,
                         prepare_threshold=None) as con:
        assert show(con, "POOLS")


def test_resume_reaches_every_worker_after_suspend(pooler_factory):
    """SUSPEND leaves new connections unread on every worker; the RESUME that follows must still get through."""
    pooler = start_workers(pooler_factory, log_connections=1)
    with console(pooler) as con:
        con.execute("SUSPEND")
        con.execute("RESUME")
    for _ in range(8):
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as client:
            assert client.execute("SELECT 1").fetchone() == (1,)
    # Each worker logs RESUME after the login of the console connection that brought it: once every worker's
    # RESUME line is in the file, so would be a line about that login.
    log = pooler.wait_log("RESUME command issued", count=WORKERS)
    assert "pgbouncer access from unix socket" not in log, log[-3000:]    # the workers' own chatter


def test_a_worker_that_cannot_start_stops_the_pooler(pooler_factory):
    """A port held by a process without SO_REUSEPORT: every worker would fail alike, so none is retried."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        pooler = pooler_factory(port=holder.getsockname()[1], expect_alive=False, maitred={"workers": WORKERS})
        assert pooler.proc.wait(15) == 1
        assert "cannot start" in pooler.log_text() and "could not start: stopping the pooler" in pooler.log_text()
    finally:
        holder.close()


def test_show_peers_lists_the_other_workers(pooler_factory):
    pooler = start_workers(pooler_factory, count=3)
    with console(pooler) as con:
        rows = show(con, "PEERS")
        assert len(rows) == 2 and len({row["peer_id"] for row in rows}) == 2
        assert {row["items"] for row in show(con, "LISTS") if row["list"] == "peers"} == {2}


def test_sighup_reopens_the_supervisors_logfile_too(pooler_factory, tmp_path):
    """logrotate moves the logfile and sends SIGHUP: the workers reopen theirs, and the supervisor's own lines (a
    worker that died) go to the new file as well, not on into the moved one."""
    logfile = tmp_path / "pooler.log"
    pooler = start_workers(pooler_factory, logfile=str(logfile))
    wait_for(lambda: logfile.exists() and "process up: maitred pooler supervisor" in logfile.read_text(),
             message="the supervisor's line in the logfile")
    rotated = tmp_path / "pooler.log.1"
    logfile.rename(rotated)
    os.kill(pooler.proc.pid, signal.SIGHUP)
    wait_for(lambda: logfile.exists(), message="a new logfile")
    victim = worker_pids(pooler)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "killed by signal 9" in logfile.read_text(), message="the supervisor's line in the new file")
    assert "killed by signal 9" not in rotated.read_text()


def _pool_sizes_seen(pooler, tries: int = 24) -> set[str]:
    """default_pool_size as the workers answer it, over new console sessions (the kernel spreads them)."""
    seen = set()
    for _ in range(tries):
        with console(pooler) as con:
            seen.add({row["key"]: row["value"] for row in show(con, "CONFIG")}["default_pool_size"])
    return seen


def test_a_new_worker_runs_the_settings_the_others_run(pooler_factory):
    """A worker started in place of a dead one runs what the others run: a SET (the autotuner's pool sizes) is not
    lost with the dead worker, nor a file changed without RELOAD served by one worker only, nor a port changed
    without a restart; after a RELOAD all run the file. A file that no longer loads leaves it the settings the
    others run."""
    pooler = start_workers(pooler_factory, default_pool_size=5)
    pooler.settings["default_pool_size"] = "9"
    pooler.settings["listen_port"] = free_port()      # needs a restart: the new worker listens where the others do
    pooler.write_config()                   # no RELOAD: the running workers keep 5
    kill_a_worker(pooler)
    assert _pool_sizes_seen(pooler) == {"5"}
    with console(pooler) as con:
        con.execute("SET default_pool_size = 7")
    kill_a_worker(pooler, replaced_before=1)
    assert _pool_sizes_seen(pooler) == {"7"}
    assert "the new worker runs the other workers' default_pool_size, not the file's" in pooler.log_text()
    with console(pooler) as con:
        con.execute("RELOAD")
    assert _pool_sizes_seen(pooler) == {"9"}
    pooler.config_path.write_text("[pgbouncer]\ndefault_pool_size = many\n")
    kill_a_worker(pooler, replaced_before=2)
    assert "the new worker starts with the one read before" in pooler.log_text()
    assert _pool_sizes_seen(pooler) == {"9"}


def test_a_new_worker_takes_only_reloadable_settings_of_their_kind_from_the_run_directory(tmp_path):
    """The supervisor may run as root and the workers as `user`: what it reads from them is checked, and a name
    that is no reloadable setting, or a value not of its kind, is left out."""
    path = tmp_path / "pooler.ini"
    path.write_text("[databases]\napp = host=127.0.0.1\n[pgbouncer]\ndefault_pool_size = 5\n")
    config = load_config(str(path))
    running = {"default_pool_size": 7, "listen_port": 1, "min_pool_size": "3", "query_timeout": 2,
               "ignore_startup_parameters": ["extra_float_digits"], "log_connections": 0, "no_such": 1}
    assert with_running_settings(config, running) == ["default_pool_size", "query_timeout",
                                                      "ignore_startup_parameters"]
    assert config.get("default_pool_size") == 7 and config.get("listen_port") == 6432
    assert config.get("ignore_startup_parameters") == ("extra_float_digits",)
    assert config.get("min_pool_size") == 0 and config.get("log_connections") is True
