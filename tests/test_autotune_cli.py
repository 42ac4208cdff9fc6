"""`maitred autotune` as a person runs it: a subprocess tuning Debian's real PgBouncer under a pgbench burst,
printing its decisions, exiting 0 on SIGTERM or SIGINT and 2 on arguments it cannot use."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from maitred.cli import main
from maitred.local_postgres import free_port
from tests.support import PASSWORDS
from tests.test_admin import USERS
from tests.test_autotune_console import config_of, pgbouncer  # noqa: F401  (a fixture)


class Autotune:
    """`python3 -m maitred.cli autotune ...`, its stdout read line by line in a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "maitred.cli", "autotune", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))

    def expect(self, predicate, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.proc.stderr.read()}"
                continue
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line within {timeout}s:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig`; the exit code, once every line it printed is in `lines`."""
        self.proc.send_signal(sig)
        code = self.proc.wait(15)
        self.reader.join(5)
        while not self.queue.empty():
            self.lines.append(self.queue.get())
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def console_dsn(port: int, user: str = "admin") -> str:
    return f"postgresql://{user}:{USERS[user]}@127.0.0.1:{port}/pgbouncer"


def test_it_grows_pgbouncers_pool_under_a_pgbench_burst_and_exits_0_on_sigterm(pgbouncer, pg):
    tuner = Autotune("--pooler", console_dsn(pgbouncer.port), "--postgres", pg.dsn(), "--interval", "0.5",
                     "--min-pool-size", "3", "--max-pool-size", "20", "--headroom", "5")
    bench = subprocess.Popen(["pgbench", "-n", "-c", "20", "-j", "2", "-T", "6", "-h", "127.0.0.1",
                              "-p", str(pgbouncer.port), "-U", "app", "app"],
                             env=dict(os.environ, PGPASSWORD=PASSWORDS["app"]), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert tuner.expect(lambda line: line.startswith("autotuning 1 pooler every 0.5s"))
        grow = tuner.expect(lambda line: " grow: " in line and "clients waiting" in line)
        label = f"127.0.0.1:{pgbouncer.port}"
        assert f" {label} 3 -> " in grow and "cl_waiting=" in grow and "budget=" in grow
        assert config_of(pgbouncer.port)[0] > 3
        out, err = bench.communicate(timeout=60)
        assert bench.returncode == 0, err
        assert tuner.stop(signal.SIGTERM) == 0
        assert tuner.lines[-1] == "stopped"
    finally:
        tuner.close()
        bench.kill()
        bench.wait()


def test_a_dry_run_says_what_it_would_do_changes_nothing_and_exits_0_on_sigint(pgbouncer, pg):
    tuner = Autotune("--pooler", console_dsn(pgbouncer.port), "--postgres", pg.dsn(), "--interval", "0.5",
                     "--min-pool-size", "5", "--dry-run")
    try:
        tuner.expect(lambda line: line.startswith("autotuning 1 pooler every 0.5s (dry run)"))
        line = tuner.expect(lambda line: " 3 -> 5 " in line)
        assert "grow: back to min_pool_size 5" in line and "[dry run]" in line
        assert tuner.stop(signal.SIGINT) == 0
        assert config_of(pgbouncer.port) == (3, 0)
    finally:
        tuner.close()


def test_a_refused_console_and_a_prometheus_that_is_down_are_reported_missing_and_it_holds(pgbouncer, pg):
    tuner = Autotune("--pooler", f"postgresql://admin:wrong@127.0.0.1:{pgbouncer.port}/pgbouncer",
                     "--postgres", pg.dsn(), "--interval", "0.5", "--prometheus", f"http://127.0.0.1:{free_port()}")
    try:
        missing = [tuner.expect(lambda line: " missing: " in line) for _ in range(2)]
        assert any(f"127.0.0.1:{pgbouncer.port}: SASL authentication failed" in m for m in missing), missing
        assert any(m.endswith("unreachable (ConnectionError)") and "cpu: Prometheus at" in m for m in missing)
        hold = tuner.expect(lambda line: " hold: " in line)
        assert " - -> - " in hold and "no signals" in hold
        assert tuner.stop() == 0
        assert config_of(pgbouncer.port) == (3, 0)
    finally:
        tuner.close()


@pytest.mark.parametrize("args, message", [
    (["--pooler", "mysql://a:b@h:1/pgbouncer"], "a pooler DSN is postgresql://USER:PASSWORD@HOST:PORT/pgbouncer"),
    (["--pooler", "postgresql://a:b@h:1/app"], "the database must be pgbouncer"),
    (["--pooler", "postgresql://a:b@h:port/pgbouncer"], "the port is not a number"),
    (["--pooler", "postgresql://h:1/pgbouncer"], "a pooler DSN names a user and a host"),
    (["--interval", "0"], "0 must be more than 0 seconds"),
    (["--interval", "-1"], "-1 must be more than 0 seconds"),
    (["--interval", "soon"], "'soon' is not a number of seconds"),
    (["--min-pool-size", "0"], "0 is below 1"),
    (["--headroom", "x"], "'x' is not a whole number"),
    (["--prometheus", "localhost:9090"], "expected http(s)://HOST:PORT"),
    (["--min-pool-size", "20", "--max-pool-size", "10"], "--min-pool-size 20 is above --max-pool-size 10"),
    (["--pooler", "postgresql://a:b@h:1/pgbouncer"], "a pooler is given twice"),
])
def test_unusable_arguments_exit_2_with_a_message(capsys, args, message):
    argv = ["autotune", "--pooler", "postgresql://a:b@h:1/pgbouncer", "--postgres", "postgresql://u:p@h/db", *args]
    with pytest.raises(SystemExit) as exit_:
        sys.exit(main(argv))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_without_postgres_it_exits_2_before_doing_anything():
    proc = subprocess.run([sys.executable, "-m", "maitred.cli", "autotune", "--pooler",
                           "postgresql://a:b@127.0.0.1:1/pgbouncer"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "the following arguments are required: --postgres" in proc.stderr and proc.stdout == ""
