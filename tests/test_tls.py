"""TLS on both sides of the pooler, against a PostgreSQL of its own running with ssl=on and hostssl-only logins.

The certificates are made here: a CA, a certificate for 127.0.0.1/localhost (PostgreSQL's, and the pooler's
towards its clients), one for a name nobody connects to, a client certificate, and a stranger's CA and client
certificate that nothing trusts.
"""
from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import re
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from maitred.local.controlplane import KeyPair, issue, make_ca
from maitred.local.postgres import LocalPostgres
from pooler.tls import parse_protocols
from tests.support import (PASSWORDS, PoolerProcess, error_fields, raw_connect, read_messages, startup_packet,
                           wait_for)

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


# -- certificates -------------------------------------------------------------------------------------------

@dataclass
class Certs:
    folder: Path

    def __getattr__(self, name: str) -> str:
        """certs.server_key is <folder>/server.key, certs.stranger_ca_pem is <folder>/stranger-ca.pem."""
        stem, _, extension = name.rpartition("_")
        return str(self.folder / f"{stem.replace('_', '-')}.{extension}")


def _write(folder: Path, stem: str, pair: KeyPair, with_key: bool = True, owner: str | None = None) -> None:
    (folder / f"{stem}.pem").write_bytes(pair.cert)
    os.chmod(folder / f"{stem}.pem", 0o644)
    if with_key:
        path = folder / f"{stem}.key"
        path.write_bytes(pair.key)
        os.chmod(path, 0o600)
        if owner:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def certs():
    # PostgreSQL runs as `postgres` when the tests run as root: its files live where it can read them.
    folder = Path(tempfile.mkdtemp(prefix="maitred-tls-"))
    os.chmod(folder, 0o755)
    server_owner = "postgres" if os.geteuid() == 0 else None
    ca, stranger_ca = make_ca("maitred test CA"), make_ca("stranger CA")
    _write(folder, "ca", ca, with_key=False)
    _write(folder, "stranger-ca", stranger_ca, with_key=False)
    _write(folder, "server", issue(ca, "localhost", hosts=("localhost", "127.0.0.1"), server=True),
           owner=server_owner)
    _write(folder, "wrong", issue(ca, "wrong.example", hosts=("wrong.example",), server=True), owner=server_owner)
    _write(folder, "client", issue(ca, "app", client=True))
    _write(folder, "stranger", issue(stranger_ca, "app", client=True))
    yield Certs(folder)
    shutil.rmtree(folder, ignore_errors=True)


# -- PostgreSQL with TLS ------------------------------------------------------------------------------------

def _tls_postgres(certs: Certs, stem: str) -> LocalPostgres:
    cluster = LocalPostgres(hba=["local all all trust",
                                 "hostssl all all 127.0.0.1/32 scram-sha-256",
                                 "hostnossl all all 127.0.0.1/32 reject"],
                            settings={"ssl": "on", "ssl_cert_file": f"'{certs.folder / (stem + '.pem')}'",
                                      "ssl_key_file": f"'{certs.folder / (stem + '.key')}'"})
    cluster.start()
    cluster.create_role("app", PASSWORDS["app"])
    cluster.create_database("app", owner="app")
    return cluster


@pytest.fixture(scope="module")
def tls_pg(pg, certs):
    """PostgreSQL that presents the 127.0.0.1/localhost certificate and refuses plain-text logins."""
    cluster = _tls_postgres(certs, "server")
    try:
        PoolerProcess.pgbench_init(cluster)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def wrong_pg(pg, certs):
    """PostgreSQL that presents a certificate for wrong.example, a name the pooler never connects to."""
    cluster = _tls_postgres(certs, "wrong")
    try:
        yield cluster
    finally:
        cluster.destroy()


def tls_pooler(pooler_factory, certs: Certs, cluster: LocalPostgres, **settings) -> PoolerProcess:
    """A transaction-mode pooler that requires TLS from clients and verify-full towards `cluster`."""
    config = dict(pool_mode="transaction", default_pool_size=4,
                  client_tls_sslmode="require", client_tls_cert_file=certs.server_pem,
                  client_tls_key_file=certs.server_key,
                  server_tls_sslmode="verify-full", server_tls_ca_file=certs.ca_pem)
    config.update(settings)
    return pooler_factory(databases={"app": f"host=127.0.0.1 port={cluster.port} dbname=app"}, **config)


def psql(dsn: str, *commands: str) -> subprocess.CompletedProcess:
    args = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", f"{dsn} connect_timeout=10"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


SERVER_SIDE_TLS = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


# -- clients ------------------------------------------------------------------------------------------------

def test_psql_with_sslmode_require_gets_tls_to_the_pooler_and_from_the_pooler_to_postgres(
        pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg)
    done = psql(pooler.dsn(sslmode="require"), "\\conninfo", SERVER_SIDE_TLS)
    assert done.returncode == 0, done.stderr
    assert "SSL connection (protocol: TLSv1.3" in done.stdout
    assert done.stdout.strip().endswith("t")


def test_psql_with_verify_full_accepts_the_pooler_certificate_and_refuses_an_unknown_ca(
        pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg)
    done = psql(pooler.dsn(sslmode="verify-full", sslrootcert=certs.ca_pem), SERVER_SIDE_TLS)
    assert (done.returncode, done.stdout.strip()) == (0, "t"), done.stderr
    refused = psql(pooler.dsn(sslmode="verify-full", sslrootcert=certs.stranger_ca_pem), "SELECT 1")
    assert refused.returncode != 0
    assert "certificate verify failed" in refused.stderr


def test_asyncpg_with_require_and_with_verify_full(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg)
    verify_full = ssl.create_default_context(cafile=certs.ca_pem)

    async def scenario() -> list:
        seen = []
        for mode in ("require", verify_full):
            conn = await asyncpg.connect(host="127.0.0.1", port=pooler.port, user="app", password=PASSWORDS["app"],
                                         database="app", ssl=mode, timeout=10)
            try:
                seen.append(await conn.fetchval(SERVER_SIDE_TLS))
                seen.append(await conn.fetchval("SELECT sum(abalance) IS NOT NULL FROM pgbench_accounts"))
            finally:
                await conn.close()
        return seen

    assert asyncio.run(scenario()) == [True, True, True, True]


def test_a_plain_text_client_is_refused_with_pgbouncers_error_when_tls_is_required(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg)
    with raw_connect(pooler.port) as sock:
        sock.sendall(startup_packet())
        messages = read_messages(sock)
    assert [kind for kind, _ in messages] == [b"E"]
    fields = error_fields(messages[0][1])
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "SSL required")
    refused = psql(pooler.dsn(sslmode="disable"), "SELECT 1")
    assert refused.returncode != 0 and "SSL required" in refused.stderr


def test_bytes_sent_in_plain_text_after_ssl_request_are_refused(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg)
    with raw_connect(pooler.port) as sock:
        sock.sendall(SSL_REQUEST + startup_packet())       # a client must wait for S before its handshake
        messages = read_messages(sock)
    assert [kind for kind, _ in messages] == [b"E"]
    assert error_fields(messages[0][1])["M"] == "received unencrypted data after SSL request"


def test_client_tls_allow_serves_tls_and_plain_text_clients(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, client_tls_sslmode="allow", log_connections=1)
    for sslmode in ("require", "disable"):
        done = psql(pooler.dsn(sslmode=sslmode), "\\conninfo")
        assert done.returncode == 0, done.stderr
        assert ("SSL connection" in done.stdout) == (sslmode == "require"), done.stdout
    # PgBouncer's login line names each one's TLS: the protocol and cipher, or no.
    text = pooler.wait_log("tls=no", "login attempt: db=app user=app tls=TLSv1.3/")
    assert re.search(r"login attempt: db=app user=app tls=TLSv1\.3/TLS_[A-Z0-9_]+\n", text), text


def test_verify_ca_on_the_client_side_requires_a_client_certificate_from_client_tls_ca_file(
        pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, client_tls_sslmode="verify-ca",
                        client_tls_ca_file=certs.ca_pem)
    ok = psql(pooler.dsn(sslmode="require", sslcert=certs.client_pem, sslkey=certs.client_key), SERVER_SIDE_TLS)
    assert (ok.returncode, ok.stdout.strip()) == (0, "t"), ok.stderr
    for extra in ({}, {"sslcert": certs.stranger_pem, "sslkey": certs.stranger_key}):
        refused = psql(pooler.dsn(sslmode="require", **extra), "SELECT 1")
        assert refused.returncode != 0, f"{extra} was let in"
    pooler.wait_log("TLS handshake failed")


# -- servers ------------------------------------------------------------------------------------------------

def test_a_server_certificate_for_another_name_is_refused_with_verify_full_and_the_client_is_told(
        pooler_factory, certs, wrong_pg):
    pooler = tls_pooler(pooler_factory, certs, wrong_pg)
    started = time.monotonic()
    refused = psql(pooler.dsn(sslmode="require"), "SELECT 1")
    assert time.monotonic() - started < 10
    assert refused.returncode != 0
    assert "server TLS handshake failed" in refused.stderr
    assert "certificate verify failed" in refused.stderr and "127.0.0.1" in refused.stderr


def test_verify_ca_trusts_the_same_certificate_without_checking_its_name(pooler_factory, certs, wrong_pg):
    pooler = tls_pooler(pooler_factory, certs, wrong_pg, server_tls_sslmode="verify-ca")
    done = psql(pooler.dsn(sslmode="require"), SERVER_SIDE_TLS)
    assert (done.returncode, done.stdout.strip()) == (0, "t"), done.stderr


def test_verify_full_refuses_a_server_signed_by_a_ca_it_does_not_trust(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, server_tls_ca_file=certs.stranger_ca_pem)
    refused = psql(pooler.dsn(sslmode="require"), "SELECT 1")
    assert refused.returncode != 0 and "certificate verify failed" in refused.stderr


def test_server_tls_require_fails_cleanly_against_a_server_without_tls(pooler_factory, pg):
    pooler = pooler_factory(server_tls_sslmode="require")
    refused = psql(pooler.dsn(), "SELECT 1")
    assert refused.returncode != 0 and "server refused SSL" in refused.stderr


def test_server_tls_prefer_falls_back_to_plain_text_against_a_server_without_tls(pooler_factory, pg):
    pooler = pooler_factory()      # server_tls_sslmode defaults to prefer, as in PgBouncer
    done = psql(pooler.dsn(), SERVER_SIDE_TLS)
    assert (done.returncode, done.stdout.strip()) == (0, "f"), done.stderr


def test_pgbench_in_transaction_mode_over_tls_on_both_sides_has_no_failures(
        pooler_factory, certs, tls_pg, monkeypatch):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, default_pool_size=4)
    monkeypatch.setenv("PGSSLMODE", "require")
    for mode in ("simple", "extended"):
        run = pooler.pgbench("-c", "16", "-j", "4", "-T", "3", "-M", mode)
        assert run.returncode == 0, run.stderr + run.stdout
        assert "number of failed transactions: 0 " in run.stdout, run.stdout
        processed = int(run.stdout.split("number of transactions actually processed: ")[1].split()[0])
        assert processed > 100


# -- settings -----------------------------------------------------------------------------------------------

def test_reload_rebuilds_the_tls_contexts(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, client_tls_sslmode="disable")
    assert psql(pooler.dsn(sslmode="disable"), "SELECT 1").returncode == 0
    pooler.settings["client_tls_sslmode"] = "require"
    pooler.write_config()
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: "SSL required" in psql(pooler.dsn(sslmode="disable"), "SELECT 1").stderr, timeout=10,
             message="plain text refused after RELOAD")
    assert psql(pooler.dsn(sslmode="require"), "SELECT 1").returncode == 0


TLS_KEPT = "NOTICE:  TLS settings could not be applied, still using old configuration"


def test_set_of_an_unusable_tls_file_is_stored_with_a_notice_and_the_old_context_serves(
        pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, admin_users="app")
    console = pooler.dsn(dbname="pgbouncer", sslmode="require")
    result = psql(console, "SET client_tls_key_file = '/nonexistent'")
    assert result.returncode == 0, result.stderr            # as PgBouncer: accepted, with a notice
    assert TLS_KEPT in result.stderr and result.stdout.strip() == "SET client_tls_key_file=/nonexistent"
    assert "client_tls_key_file|/nonexistent|" in psql(console, "SHOW CONFIG").stdout
    assert psql(pooler.dsn(sslmode="require"), "SELECT 1").returncode == 0
    pooler.wait_log("No such file")


def test_set_of_the_client_key_then_the_certificate_switches_to_the_new_pair(pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, admin_users="app")
    console = pooler.dsn(dbname="pgbouncer", sslmode="require")
    by_name = pooler.dsn(sslmode="verify-full", sslrootcert=certs.ca_pem)     # the 127.0.0.1 certificate only
    by_ca = pooler.dsn(sslmode="verify-ca", sslrootcert=certs.ca_pem)
    assert psql(by_name, "SELECT 1").returncode == 0
    half = psql(console, f"SET client_tls_key_file = '{certs.wrong_key}'")    # does not match server.pem
    assert half.returncode == 0 and TLS_KEPT in half.stderr, half.stderr
    assert psql(by_name, "SELECT 1").returncode == 0                          # the old pair still serves
    whole = psql(console, f"SET client_tls_cert_file = '{certs.wrong_pem}'")
    assert whole.returncode == 0 and "NOTICE" not in whole.stderr, whole.stderr
    refused = psql(by_name, "SELECT 1")                                       # wrong.example now
    assert refused.returncode != 0 and "does not match host name" in refused.stderr, refused.stderr
    assert psql(by_ca, "SELECT 1").returncode == 0


def test_set_of_the_server_certificate_then_its_key_applies_the_pair_to_new_servers(
        pooler_factory, certs, tls_pg):
    pooler = tls_pooler(pooler_factory, certs, tls_pg, admin_users="app")
    console = pooler.dsn(dbname="pgbouncer", sslmode="require")
    half = psql(console, f"SET server_tls_cert_file = '{certs.client_pem}'")
    assert half.returncode == 0 and TLS_KEPT in half.stderr, half.stderr
    # The SET's warning goes out in one write with the lines of what it applied ("server TLS settings changed"
    # among them, had it applied the pair): once the warning is in the file, so would that line be.
    log = pooler.wait_log(TLS_KEPT.removeprefix("NOTICE:  "))
    assert "server TLS settings changed" not in log, log[-3000:]
    whole = psql(console, f"SET server_tls_key_file = '{certs.client_key}'")
    assert whole.returncode == 0 and "NOTICE" not in whole.stderr, whole.stderr
    wait_for(lambda: "server TLS settings changed" in pooler.log_text(), timeout=5, message="the pair applied")
    assert psql(pooler.dsn(sslmode="require"), SERVER_SIDE_TLS).stdout.strip() == "t"


@pytest.mark.parametrize("settings, message", [
    ({"client_tls_sslmode": "require"}, "needs client_tls_key_file and client_tls_cert_file"),
    ({"client_tls_sslmode": "verify-ca", "client_tls_cert_file": "{server_pem}", "client_tls_key_file": "{server_key}"},
     "needs client_tls_ca_file"),
    ({"server_tls_sslmode": "verify-full", "server_tls_ca_file": "/nonexistent/ca.pem"},
     "cannot use server_tls_ca_file = /nonexistent/ca.pem: No such file or directory"),
    ({"server_tls_protocols": "tlsv1.4"}, "invalid server_tls_protocols: unknown TLS protocol 'tlsv1.4'"),
    ({"server_tls_ciphers": "NO-SUCH-CIPHER"}, "invalid server_tls_ciphers"),
], ids=["no-certificate", "verify-without-ca", "missing-ca-file", "bad-protocol", "bad-ciphers"])
def test_unusable_tls_settings_stop_the_pooler_at_start_with_the_reason(pooler_factory, certs, settings, message):
    settings = {k: v.format(server_pem=certs.server_pem, server_key=certs.server_key) for k, v in settings.items()}
    with pytest.raises(RuntimeError, match="cannot start") as failed:
        pooler_factory(expect_alive=False, **settings)
    assert message in str(failed.value)


def test_tls_protocols_read_like_pgbouncers():
    v = ssl.TLSVersion
    assert parse_protocols("secure") == parse_protocols("") == {v.TLSv1_2, v.TLSv1_3}
    assert parse_protocols("all") == parse_protocols("legacy") == {v.TLSv1, v.TLSv1_1, v.TLSv1_2, v.TLSv1_3}
    assert parse_protocols("tlsv1.3") == {v.TLSv1_3}
    assert parse_protocols("tlsv1.1, tlsv1.3") == {v.TLSv1_1, v.TLSv1_3}
    assert parse_protocols("all:!tlsv1.0:!tlsv1.1") == {v.TLSv1_2, v.TLSv1_3}
    assert parse_protocols("!tlsv1.3") == {v.TLSv1, v.TLSv1_1, v.TLSv1_2}
    for bad in ("tlsv1.4", "ssl3", "!all"):
        with pytest.raises(ValueError):
            parse_protocols(bad)
