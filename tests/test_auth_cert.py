"""Logins decided by TLS: auth_type = cert (the client certificate's CommonName is the user), cert lines of
auth_hba_file with an ident map, and hostssl/hostnossl lines for TLS and plain-text clients. The certificates are
made here; each case runs on maitred and, where PgBouncer 1.18 has the behaviour, on PgBouncer side by side."""
from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import ssl

import asyncpg
import pytest

from maitred.local.controlplane import issue, make_ca
from tests.support import PASSWORDS, require_binary, wait_for
from tests.test_admin_pgbouncer import PgBouncer
from tests.test_auth_hba import HBA, USERLIST, USERS_FILE, databases, shared_folder

CERT_FAILED = ("08P01", "certificate authentication failed")
REJECTED = ("08P01", "login rejected")

CERT_HBA = """\
hostssl   app   app        127.0.0.1/32   cert
hostssl   app   md5_role   127.0.0.1/32   cert   map=certs
"""
IDENT = "certs   app   md5_role\n"


@pytest.fixture(scope="module")
def files():
    """CA, the pooler's certificate, a client certificate for CN=app, and one from a CA nobody trusts; with the
    HBA and ident files. Keys PgBouncer reads belong to postgres when the tests run as root."""
    ca, stranger_ca = make_ca("hba test CA"), make_ca("stranger CA")
    folder = shared_folder({"hba.conf": HBA, "users": USERS_FILE, "cert-hba.conf": CERT_HBA, "ident.conf": IDENT,
                            "ca.pem": ca.cert.decode()})
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    for stem, pair in (("server", issue(ca, "localhost", hosts=("localhost", "127.0.0.1"), server=True)),
                       ("client", issue(ca, "app", client=True)),
                       ("stranger", issue(stranger_ca, "app", client=True))):
        (folder / f"{stem}.pem").write_bytes(pair.cert)
        key = folder / f"{stem}.key"
        key.write_bytes(pair.key)
        os.chmod(key, 0o600)
        if owner is not None and stem == "server":
            os.chown(key, owner.pw_uid, owner.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def tls_settings(files, mode: str) -> dict[str, str]:
    return {"client_tls_sslmode": mode, "client_tls_cert_file": str(files / "server.pem"),
            "client_tls_key_file": str(files / "server.key"), "client_tls_ca_file": str(files / "ca.pem")}


def client_context(files, cert: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files / "ca.pem"))
    if cert:
        context.load_cert_chain(str(files / f"{cert}.pem"), str(files / f"{cert}.key"))
    return context


def login(port: int, user: str, database: str = "app", password: str | None = None, tls=None) -> tuple:
    """("ok", current_user) or (SQLSTATE, message); ("refused", reason) when the TLS handshake fails."""
    async def attempt():
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database=database,
                                         password=password, ssl=tls if tls is not None else False, timeout=10)
        except asyncpg.ConnectionDoesNotExistError:      # closed during the TLS handshake
            return "refused", "TLS handshake"
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, str(exc.args[0] if exc.args else exc)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            return "refused", type(exc).__name__
        try:
            return "ok", await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    return asyncio.run(attempt())


def start(kind: str, pg, pooler_factory, settings: dict):
    """(port, stop) of maitred or PgBouncer on `settings`."""
    if kind == "maitred":
        return pooler_factory(databases=databases(pg), userlist=USERLIST, **settings).port, lambda: None
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "", **settings},
                        databases(pg), USERLIST)
    return bouncer.port, bouncer.stop


@pytest.fixture(params=["maitred", "pgbouncer"])
def kind(request):
    return request.param


def test_hostssl_lines_match_tls_clients_and_hostnossl_lines_plain_text_ones(kind, pg, pooler_factory, files):
    port, stop = start(kind, pg, pooler_factory, {"auth_type": "hba", "auth_hba_file": str(files / "hba.conf"),
                                                 **tls_settings(files, "allow")})
    try:
        tls = client_context(files, cert=None)
        assert login(port, "someone", "sslonly", tls=tls) == ("ok", "trust_role")
        assert login(port, "someone", "sslonly") == REJECTED
        assert login(port, "someone", "plainonly", tls=tls) == REJECTED
        assert login(port, "someone", "plainonly") == ("ok", "trust_role")
    finally:
        stop()


def test_auth_type_cert_logs_in_the_user_named_by_the_certificate(kind, pg, pooler_factory, files):
    port, stop = start(kind, pg, pooler_factory, {"auth_type": "cert", **tls_settings(files, "verify-full")})
    try:
        assert login(port, "app", tls=client_context(files)) == ("ok", "app")      # no password asked
        assert login(port, "md5_role", tls=client_context(files)) == CERT_FAILED     # CN=app is not md5_role
        assert login(port, "app", tls=client_context(files, "stranger"))[0] == "refused"
        assert login(port, "app", tls=client_context(files, cert=None))[0] == "refused"
        assert login(port, "app", password=PASSWORDS["app"]) == ("08P01", "SSL required")
    finally:
        stop()


def test_hba_cert_lines_use_the_ident_map_for_other_users(pooler_factory, pg, files):
    pooler = pooler_factory(databases=databases(pg), userlist=USERLIST, auth_type="hba",
                            auth_hba_file=str(files / "cert-hba.conf"), auth_ident_file=str(files / "ident.conf"),
                            log_connections=1, **tls_settings(files, "verify-ca"))
    assert login(pooler.port, "app", tls=client_context(files)) == ("ok", "app")
    assert login(pooler.port, "md5_role", tls=client_context(files)) == ("ok", "md5_role")   # certs: app → md5_role
    assert login(pooler.port, "plain_role", tls=client_context(files)) == REJECTED            # no line
    # The refusal's line, written after those of the logins before it: the log is complete up to here.
    log = pooler.wait_log("pooler error: login rejected")
    assert "ident map" not in log, log[-3000:]


def test_a_map_without_a_line_for_the_certificate_refuses_the_login(pooler_factory, pg, files, tmp_path):
    ident = tmp_path / "ident.conf"
    ident.write_text("certs   someone-else   md5_role\n")
    pooler = pooler_factory(databases=databases(pg), userlist=USERLIST, auth_type="hba",
                            auth_hba_file=str(files / "cert-hba.conf"), auth_ident_file=str(ident),
                            log_connections=1, **tls_settings(files, "verify-ca"))
    assert login(pooler.port, "md5_role", tls=client_context(files)) == CERT_FAILED
    # The refusal reaches the client before the event loop's iteration ends and writes its log lines.
    wait_for(lambda: "ident map: certs does not have a match" in pooler.log_text(), message="the ident map line")


@pytest.mark.parametrize("settings", [
    {"auth_type": "cert", "client_tls_sslmode": "require"},
    {"auth_type": "hba", "auth_hba_file": "{files}/cert-hba.conf", "auth_ident_file": "{files}/ident.conf",
     "client_tls_sslmode": "allow"},
], ids=["auth_type-cert", "hba-cert-line"])
def test_cert_authentication_without_verified_certificates_stops_the_pooler_at_start(pooler_factory, files,
                                                                                      settings):
    settings = {**tls_settings(files, "require"), **{k: v.format(files=files) for k, v in settings.items()}}
    with pytest.raises(RuntimeError, match="cannot start") as failed:
        pooler_factory(expect_alive=False, **settings)
    assert "cert authentication needs client_tls_sslmode verify-ca or verify-full" in str(failed.value)
