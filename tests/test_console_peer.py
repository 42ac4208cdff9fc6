"""PgBouncer's console rule: the user `pgbouncer` logs in to the `pgbouncer` console over the Unix socket
without a password, with admin rights, when the client runs as the pooler's own OS user — and only then."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import psycopg
import pytest

from tests.support import PASSWORDS, require_binary
from tests.test_admin_pgbouncer import PgBouncer

WRONG_PASSWORD = "not-the-pooler's"


@pytest.fixture
def socket_dir():
    path = tempfile.mkdtemp(prefix="mtpeer")     # short: a Unix socket path has a 107-byte limit
    os.chmod(path, 0o755)                         # another OS user must reach the socket inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pooler(pooler_factory, socket_dir):
    """A pooler of this test's OS user, with no admin_users at all: only the peer rule can let anyone in."""
    return pooler_factory(pool_mode="transaction", unix_socket_dir=socket_dir, log_connections=1)


def psql(pooler, host: str, *, run_as: str | None = None, password: str | None = None,
         command: str = "SHOW POOLS") -> subprocess.CompletedProcess:
    binary = require_binary("psql")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
    if password is not None:
        env["PGPASSWORD"] = password
    prefix = []
    if run_as:
        account = pwd.getpwnam(run_as)
        prefix = [require_binary("setpriv"), f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                  "--clear-groups"]
    return subprocess.run(prefix + [binary, "-X", "-w", "-A", "-t", "-h", host, "-p", str(pooler.port),
                                    "-U", "pgbouncer", "-d", "pgbouncer", "-c", command],
                          env=env, capture_output=True, text=True, timeout=30)


def test_pgbouncer_user_of_the_pooler_os_user_gets_the_console_over_the_unix_socket(pooler, socket_dir):
    result = psql(pooler, socket_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pgbouncer|pgbouncer|"), result.stdout      # the console's own row
    with psycopg.connect(host=socket_dir, port=pooler.port, user="pgbouncer", dbname="pgbouncer",
                         autocommit=True, prepare_threshold=None) as conn:
        names = [d.name for d in conn.execute("SHOW POOLS").description]
        assert names[:3] == ["database", "user", "cl_active"]
        conn.execute("SET default_pool_size = 7")        # admin rights: SET is for admin_users only
        config = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
        assert config["default_pool_size"] == "7"
    pooler.wait_log("pgbouncer access from unix socket")


def test_pgbouncer_user_of_another_os_user_is_refused(pooler, socket_dir):
    if os.geteuid() != 0:
        pytest.skip("running the client as another OS user needs root (setpriv)")
    result = psql(pooler, socket_dir, run_as="nobody", password=WRONG_PASSWORD)
    assert result.returncode != 0
    assert "SASL authentication failed" in result.stderr, result.stderr
    # The same client as the pooler's OS user is let in: the refusal is the OS user's.
    assert psql(pooler, socket_dir).returncode == 0


def test_pgbouncer_user_over_tcp_is_refused(pooler):
    result = psql(pooler, "127.0.0.1", password=WRONG_PASSWORD)
    assert result.returncode != 0
    assert "SASL authentication failed" in result.stderr, result.stderr


def test_another_user_of_the_pooler_os_user_is_not_let_in_without_a_password(pooler, socket_dir):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=socket_dir, port=pooler.port, user="app", dbname="pgbouncer", password="wrong",
                        connect_timeout=5)


def test_pgbouncer_user_to_a_pooled_database_is_not_let_in_by_the_rule(pooler, socket_dir):
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(host=socket_dir, port=pooler.port, user="pgbouncer", dbname="app", password="wrong",
                        connect_timeout=5)


def peer_rule_outcomes(target, socket_dir: str, own_user: str | None) -> list[bool]:
    """Whether the console lets `pgbouncer` in: as the target's OS user over the socket, as nobody, over TCP."""
    return [psql(target, host, run_as=user, password=WRONG_PASSWORD).returncode == 0
            for host, user in ((socket_dir, own_user), (socket_dir, "nobody"), ("127.0.0.1", own_user))]


def test_pgbouncer_applies_the_same_rule(pooler, pg, socket_dir):
    """Debian's PgBouncer 1.18 has the rule too: as root it runs as postgres, so postgres is its own OS user.
    (Where maitred asks the refused ones for a password, 1.18 says `not allowed`.)"""
    if os.geteuid() != 0:
        pytest.skip("running PgBouncer and its clients as other OS users needs root")
    account = pwd.getpwnam("postgres")
    os.chown(socket_dir, account.pw_uid, account.pw_gid)
    bouncer = PgBouncer(require_binary("pgbouncer"),
                        {"listen_addr": "127.0.0.1", "unix_socket_dir": socket_dir, "auth_type": "scram-sha-256"},
                        {"app": f"host=127.0.0.1 port={pg.port} dbname=app"}, {"app": PASSWORDS["app"]})
    try:
        expected = peer_rule_outcomes(bouncer, socket_dir, "postgres")
    finally:
        bouncer.stop()
    assert expected == [True, False, False]
    assert peer_rule_outcomes(pooler, socket_dir, None) == expected
