"""`maitred pooler` takes PgBouncer's command-line switches, so a pgbouncer systemd unit or init script runs it
unchanged: -d, -R, -u, -q, -v, -V, -h."""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.support import PASSWORDS, PoolerProcess, wait_for


def maitred(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maitred.cli", "pooler", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def config(pg, tmp_path):
    """A pooler's config written to disk (not started), with a logfile and a pidfile."""
    proc = PoolerProcess(pg, tmp_path, pool_mode="transaction", logfile=str(tmp_path / "maitred.log"),
                         pidfile=str(tmp_path / "maitred.pid"))
    proc.write_config()
    return proc


def serves(proc: PoolerProcess) -> bool:
    with psycopg.connect(proc.dsn(), autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT 6 * 7").fetchone()[0] == 42


def wait_serving(proc: PoolerProcess, timeout: float = 15) -> None:
    def up() -> bool:
        try:
            return serves(proc)
        except psycopg.OperationalError:
            return False
    wait_for(up, timeout=timeout, message="the pooler serving")


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"pooler {pid} did not stop on SIGTERM")


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


@pytest.mark.parametrize("switch", ["-V", "--version"])
def test_version_prints_maitred_and_the_pgbouncer_it_follows(switch):
    result = maitred(switch)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("maitred pooler ") and "PgBouncer 1.25" in result.stdout


@pytest.mark.parametrize("switch", ["-h", "--help"])
def test_help_lists_pgbouncers_switches(switch):
    result = maitred(switch)
    assert result.returncode == 0, result.stderr
    for name in ("--daemon", "--reboot", "--user", "--quiet", "--verbose", "--version"):
        assert name in result.stdout, name


def test_reboot_is_refused_pointing_to_so_reuseport_rolling_restarts(config):
    result = maitred("-R", str(config.config_path))
    assert result.returncode != 0
    assert "so_reuseport" in result.stderr and "rolling restart" in result.stderr, result.stderr
    assert not os.path.exists(config.settings["pidfile"])


@pytest.mark.parametrize("missing", ["pidfile", "logfile"])
def test_daemon_without_pidfile_or_logfile_is_refused_naming_it(config, missing):
    del config.settings[missing]
    config.write_config()
    result = maitred("-d", str(config.config_path))
    assert result.returncode != 0
    assert f"-d needs {missing}" in result.stderr, result.stderr
    with pytest.raises(psycopg.OperationalError):
        serves(config)


def test_daemon_detaches_writes_its_pidfile_and_serves_until_sigterm(config):
    pidfile, logfile = config.settings["pidfile"], config.settings["logfile"]
    result = maitred("-d", str(config.config_path), timeout=15)    # returns: the daemon is detached
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""                    # nothing on the terminal any more
    wait_for(lambda: os.path.exists(pidfile), timeout=10, message="the pidfile")
    pid = int(open(pidfile).read())
    try:
        wait_serving(config)
        assert os.getsid(pid) != os.getsid(0)   # a session of its own: no terminal to hang up on it
        config.wait_log("process up", path=logfile)
    finally:
        stop(pid)
    assert not os.path.exists(pidfile)


def test_a_pidfile_naming_a_running_process_is_refused(config):
    with open(config.settings["pidfile"], "w") as f:
        f.write(f"{os.getpid()}\n")
    result = maitred(str(config.config_path))
    assert result.returncode != 0
    assert "another pooler is running" in result.stderr, result.stderr


def test_a_stale_pidfile_is_replaced(config):
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(config.settings["pidfile"], "w") as f:
        f.write(f"{dead.pid}\n")
    config.launch()
    try:
        wait_serving(config)
        assert int(open(config.settings["pidfile"]).read()) == config.proc.pid
    finally:
        config.stop()


def test_user_switch_drops_to_that_user_after_binding(config):
    if os.geteuid() != 0:
        pytest.skip("switching user needs root")
    account = pwd.getpwnam("postgres")
    proc = subprocess.Popen([sys.executable, "-m", "maitred.cli", "pooler", "-u", "postgres",
                             str(config.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(config)
        assert uid_of(proc.pid) == account.pw_uid
        config.wait_log("switched to user postgres", path=config.settings["logfile"])
    finally:
        proc.terminate()
        proc.wait(15)


def test_user_switch_to_an_unknown_user_fails_to_start(config):
    result = maitred("-u", "no-such-user-here", str(config.config_path))
    assert result.returncode != 0
    assert "no such user" in result.stderr, result.stderr


def test_quiet_writes_nothing_to_stderr_but_everything_to_the_logfile(config):
    proc = subprocess.Popen([sys.executable, "-m", "maitred.cli", "pooler", "-q", str(config.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(config)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert err == "" and out == ""
    assert "process up" in open(config.settings["logfile"]).read()


@pytest.mark.parametrize("switches", [["-v"], ["-v", "-v"]])
def test_verbose_logs_debug_messages(config, switches):
    config.settings["admin_users"] = "app"
    config.write_config()
    proc = subprocess.Popen([sys.executable, "-m", "maitred.cli", "pooler", *switches, str(config.config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(config)
        with psycopg.connect(config.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SHOW VERSION")
        wait_for(lambda: "got admin query: SHOW VERSION" in open(config.settings["logfile"]).read(), timeout=5,
                 message="the debug line")
    finally:
        proc.terminate()
        proc.wait(15)


def test_without_verbose_debug_messages_are_not_logged(config):
    config.settings["admin_users"] = "app"
    config.write_config()
    config.launch()
    try:
        wait_serving(config)
        with psycopg.connect(config.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SHOW VERSION")
    finally:
        config.stop()
    assert "got admin query" not in open(config.settings["logfile"]).read()


def test_the_verbose_setting_logs_debug_messages_and_set_turns_them_off(config):
    """`verbose` in the file is the -v switch's setting, as in PgBouncer; SET (and RELOAD) change it live."""
    config.settings.update(admin_users="app", verbose=1)
    config.write_config()
    config.launch()
    logfile = config.settings["logfile"]
    try:
        wait_serving(config)
        with psycopg.connect(config.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SHOW VERSION")
            wait_for(lambda: "got admin query: SHOW VERSION" in open(logfile).read(), timeout=5,
                     message="the debug line")
            conn.execute("SET verbose = 0")
            conn.execute("SHOW LISTS")
            conn.execute("SET verbose = 2")
            conn.execute("SHOW STATE")
            wait_for(lambda: "got admin query: SHOW STATE" in open(logfile).read(), timeout=5,
                     message="the debug line after SET verbose = 2")
    finally:
        config.stop()
    assert "got admin query: SHOW LISTS" not in open(logfile).read()


def test_reload_reopens_the_logfile_after_a_rotation_and_set_moves_it(config, tmp_path):
    """logrotate moves the logfile away and sends SIGHUP (or runs RELOAD): the lines go to a new file of the
    name, as PgBouncer's; SET logfile moves them to another file."""
    config.settings.update(admin_users="app", log_connections=1)
    config.write_config()
    config.launch()
    logfile = Path(config.settings["logfile"])
    rotated, moved = tmp_path / "maitred.log.1", tmp_path / "elsewhere.log"
    try:
        wait_serving(config)
        logfile.rename(rotated)
        config.proc.send_signal(signal.SIGHUP)
        wait_for(logfile.exists, timeout=5, message="the logfile opened again")
        before = rotated.read_text().count("login attempt")       # wait_serving's
        with psycopg.connect(config.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        wait_for(lambda: "login attempt" in logfile.read_text(), timeout=5, message="a login line in the new file")
        with psycopg.connect(config.dsn(dbname="pgbouncer"), autocommit=True, prepare_threshold=None) as conn:
            conn.execute(f"SET logfile = '{moved}'")
        with psycopg.connect(config.dsn(), autocommit=True, application_name="after-set") as conn:
            conn.execute("SELECT 1")
        wait_for(lambda: moved.exists() and "login attempt" in moved.read_text(), timeout=5,
                 message="a login line in the file SET named")
    finally:
        config.stop()
    assert rotated.read_text().count("login attempt") == before
    assert logfile.read_text().count("login attempt") == 2      # the console's own login, and the first client's
