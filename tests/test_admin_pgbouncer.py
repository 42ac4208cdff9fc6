"""maitred's console next to Debian's real PgBouncer, on the same config and the same workload: every column
(and SHOW CONFIG key, SHOW LISTS list, SHOW TOTALS name) PgBouncer answers with, maitred answers with too."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg
import pytest

from maitred.local.postgres import free_port
from tests.support import require_binary
from tests.test_admin import USERS, console

# SHOW commands whose columns are compared, and for some, the column whose values name things to compare too.
COMMANDS = {"POOLS": None, "STATS": None, "STATS_TOTALS": None, "STATS_AVERAGES": None, "TOTALS": "name",
            "CLIENTS": None, "SERVERS": None, "SOCKETS": None, "DATABASES": None, "USERS": None,
            "CONFIG": "key", "LISTS": "list", "VERSION": None, "STATE": "key", "MEM": None, "FDS": None,
            "DNS_HOSTS": None, "DNS_ZONES": None}


class PgBouncer:
    """Debian's pgbouncer on a config of our own; it refuses to run as root, so as root it runs as postgres."""

    def __init__(self, binary: str, settings: dict, databases: dict, userlist: dict):
        self.dir = tempfile.mkdtemp(prefix="maitred-pgbouncer-")
        self.port = free_port()
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.writelines(f'"{user}" "{secret}"\n' for user, secret in userlist.items())
        settings = {**settings, "listen_port": self.port, "auth_file": os.path.join(self.dir, "userlist.txt"),
                    "logfile": os.path.join(self.dir, "pgbouncer.log")}
        lines = ["[databases]"] + [f"{k} = {v}" for k, v in databases.items()]
        lines += ["[pgbouncer]"] + [f"{k} = {v}" for k, v in settings.items()]
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(self.ini, "w") as f:
            f.write("\n".join(lines) + "\n")
        command = [binary, self.ini]
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.dir, *(os.path.join(self.dir, n) for n in os.listdir(self.dir))):
                os.chown(path, account.pw_uid, account.pw_gid)
            command = [binary, "-u", "postgres", self.ini]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "pgbouncer.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, user: str, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} password='{USERS[user]}'"


def workload(port: int, dsn) -> list[psycopg.Connection]:
    """A short pgbench in transaction mode, then a few clients that stay connected, one inside a transaction."""
    result = subprocess.run(["pgbench", "-n", "-S", "-M", "simple", "-c", "4", "-j", "2", "-T", "2",
                             "-h", "127.0.0.1", "-p", str(port), "-U", "app", "app"],
                            env=dict(os.environ, PGPASSWORD=USERS["app"]), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    clients = [psycopg.connect(dsn("app", "app"), autocommit=True, application_name=f"side-{n}")
               for n in range(3)]
    for client in clients:
        client.execute("SELECT 1")
    clients[0].autocommit = False
    clients[0].execute("SELECT 2")
    return clients


def answers(conn: psycopg.Connection, command: str) -> dict | None:
    """Column names and types, and the named rows, of a SHOW; None where this version has no such SHOW."""
    try:
        cur = conn.execute(f"SHOW {command}")
    except psycopg.errors.ProtocolViolation:
        return None
    key = COMMANDS[command]
    names = [d.name for d in cur.description]
    rows = cur.fetchall()
    return {"columns": {d.name: d.type_code for d in cur.description},
            "keys": {r[names.index(key)] for r in rows} if key else set()}


def test_maitred_answers_every_column_pgbouncer_does_on_the_same_config_and_workload(pooler_factory, pg):
    binary = require_binary("pgbouncer")
    settings = {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                "pool_mode": "transaction", "default_pool_size": 2, "admin_users": "admin",
                "stats_users": "watcher", "log_connections": 0, "log_disconnections": 0}
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}
    maitred = pooler_factory(userlist=USERS, databases=databases, **{k: v for k, v in settings.items()
                                                                     if k not in ("listen_addr", "unix_socket_dir")})
    bouncer = PgBouncer(binary, settings, databases, USERS)
    opened: list[psycopg.Connection] = []
    try:
        opened += workload(bouncer.port, bouncer.dsn)
        opened += workload(maitred.port, lambda user, db: maitred.dsn(user=user, dbname=db,
                                                                       password=USERS[user]))
        theirs = psycopg.connect(bouncer.dsn("admin", "pgbouncer"), autocommit=True, prepare_threshold=None)
        ours = console(maitred)
        opened += [theirs, ours]
        version = theirs.execute("SHOW VERSION").fetchone()[0]
        compared = []
        for command in COMMANDS:
            expected = answers(theirs, command)
            if expected is None:            # newer than this PgBouncer (SHOW STATE came in 1.19)
                continue
            got = answers(ours, command)
            assert got is not None, command
            missing = set(expected["columns"]) - set(got["columns"])
            assert not missing, f"SHOW {command}: {version} has columns maitred lacks: {sorted(missing)}"
            types = {name: (oid, got["columns"][name]) for name, oid in expected["columns"].items()
                     if got["columns"][name] != oid}
            assert not types, f"SHOW {command}: (PgBouncer, maitred) type OIDs differ: {types}"
            missing = expected["keys"] - got["keys"]
            assert not missing, f"SHOW {command}: {version} has rows maitred lacks: {sorted(missing)}"
            compared.append(command)
        assert len(compared) >= len(COMMANDS) - 1, compared
        # The same pools and databases are there, the console's included.
        for command, key in (("POOLS", ("database", "user")), ("STATS", ("database",)),
                             ("DATABASES", ("name",))):
            rows = []
            for conn in (theirs, ours):
                cur = conn.execute(f"SHOW {command}")
                names = [d.name for d in cur.description]
                rows.append({tuple(r[names.index(k)] for k in key) for r in cur.fetchall()})
            assert rows[0] == rows[1], command
        stats = []
        for conn in (theirs, ours):
            cur = conn.execute("SHOW STATS")
            names = [d.name for d in cur.description]
            stats.append({r[0]: dict(zip(names, r)) for r in cur.fetchall()}["app"])
        for name in ("total_xact_count", "total_query_count", "total_received", "total_sent", "total_xact_time"):
            assert stats[0][name] > 0 and stats[1][name] > 0, name
    except BaseException:
        print(bouncer.log())
        raise
    finally:
        for conn in opened:
            conn.close()
        bouncer.stop()


@pytest.mark.parametrize("command", ["PAUSE", "RELOAD", "SHOW FDS"])
def test_a_stats_user_is_refused_control_with_pgbouncers_words(pooler_factory, pg, command):
    binary = require_binary("pgbouncer")
    settings = {"listen_addr": "127.0.0.1", "unix_socket_dir": "", "auth_type": "scram-sha-256",
                "admin_users": "admin", "stats_users": "watcher"}
    databases = {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}
    maitred = pooler_factory(userlist=USERS, databases=databases, admin_users="admin", stats_users="watcher")
    bouncer = PgBouncer(binary, settings, databases, USERS)
    try:
        errors = []
        for dsn in (bouncer.dsn("watcher", "pgbouncer"),
                    maitred.dsn(user="watcher", dbname="pgbouncer", password=USERS["watcher"])):
            with psycopg.connect(dsn, autocommit=True) as conn:
                with pytest.raises(psycopg.Error) as excinfo:
                    conn.execute(command)
                errors.append((excinfo.value.sqlstate, excinfo.value.diag.severity,
                               excinfo.value.diag.message_primary))
        assert errors[0] == errors[1] == ("08P01", "ERROR", "admin access needed")
    finally:
        bouncer.stop()
