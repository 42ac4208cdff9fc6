"""The operational settings PgBouncer documents and maitred had only accepted, against a real PostgreSQL through
the pooler: scram_iterations, autodb_idle_timeout, dns_max_ttl and dns_nxdomain_ttl, syslog."""
from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pooler.config import ConfigError, load_config
from tests.private_mounts import MountedPooler, require_private_mounts
from tests.support import PASSWORDS, wait_for
from tests.test_admin import USERS, console, show
from tests.test_tls import certs, tls_pg  # noqa: F401 (fixtures)
from tests.wire import Wire


def scram_iterations_shown(pooler, user: str = "app") -> int:
    """The i= of the server-first-message a SCRAM login is sent; the login completes."""
    with Wire(pooler.port) as wire:
        messages = wire.login(user, PASSWORDS[user])
    first = next(body[4:].decode() for kind, body in messages if kind == b"R" and body[:4] == b"\0\0\0\x0b")
    return int(dict(part.split("=", 1) for part in first.split(","))["i"])


def test_a_plain_text_password_is_hashed_with_scram_iterations_for_a_scram_login(pooler_factory):
    pooler = pooler_factory(userlist=USERS, admin_users="admin", scram_iterations=5000)
    assert scram_iterations_shown(pooler) == 5000
    with psycopg.connect(pooler.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with console(pooler) as con:
        con.execute("SET scram_iterations = 6000")
    assert scram_iterations_shown(pooler) == 6000


@pytest.mark.parametrize("count", ["4095", "10000001"])
def test_scram_iterations_that_scramp_refuses_are_refused_at_load(tmp_path, count):
    path = tmp_path / "pooler.ini"
    path.write_text(f"[pgbouncer]\nscram_iterations = {count}\n")
    with pytest.raises(ConfigError, match=f"scram_iterations: '{count}' is out of range: 4096 to 10000000"):
        load_config(path)


def test_a_database_made_from_the_fallback_entry_is_freed_once_unused_and_made_again_at_the_next_login(
        pooler_factory, pg):
    pooler = pooler_factory(databases={"*": f"host=127.0.0.1 port={pg.port}"}, userlist=USERS, admin_users="admin",
                            autodb_idle_timeout=1, server_idle_timeout=1)

    def listed() -> bool:
        with console(pooler) as con:
            return "app" in [row["name"] for row in show(con, "DATABASES")]

    for _ in range(2):
        with psycopg.connect(pooler.dsn()) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app",)
            time.sleep(1.5)        # in use all along: a client holds it
            assert listed()
        assert listed()            # its idle server keeps it until server_idle_timeout closes it
        wait_for(lambda: not listed(), timeout=10, message="app gone from SHOW DATABASES")
    pooler.wait_log("registered new auto-database: db=app", "freed unused auto-database: db=app", count=2)


def syslog_lines(log: socket.socket, wait: float = 0.5) -> list[str]:
    """The datagrams the syslog socket has, and any that arrive within `wait` seconds."""
    lines = []
    log.settimeout(wait)
    try:
        while True:
            lines.append(log.recv(65536).decode())
    except TimeoutError:
        return lines


def test_syslog_gets_the_log_lines_connection_lines_included_under_the_ident_and_facility_reload_applies(
        pooler_factory, tmp_path):
    require_private_mounts()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log:
        log.bind(str(tmp_path / "log"))
        pooler = pooler_factory(process=MountedPooler, mounts={"/dev/log": tmp_path / "log"}, userlist=USERS,
                                admin_users="admin", log_connections=1, log_disconnections=1)

        def session_then_reload(**settings) -> list[str]:
            """A client's login and logout, then a RELOAD that changes `settings`: the syslog lines of both."""
            psycopg.connect(pooler.dsn()).close()
            pooler.wait_log("closing because: client close request", count=session_then_reload.count)
            session_then_reload.count += 1
            pooler.settings.update(settings)
            pooler.write_config()
            with console(pooler) as con:
                con.execute("RELOAD")
            return syslog_lines(log)
        session_then_reload.count = 1

        head = f"<158>maitred-test[{pooler.proc.pid}]: "      # local3 (19) * 8 + info (6)
        lines = session_then_reload(syslog=1, syslog_ident="maitred-test", syslog_facility="local3")
        assert lines == [head + "syslog changed from False to True",      # the RELOAD's lines only
                         head + "syslog_ident changed from 'pgbouncer' to 'maitred-test'",
                         head + "syslog_facility changed from 'daemon' to 'local3'"]
        lines = session_then_reload(syslog_ident="other", syslog_facility="user")
        connection_lines = [line for line in lines if line.startswith(head + "C-0x") and "app/app@127.0.0.1:" in line]
        assert [line.split(" ", 3)[3] for line in connection_lines] == [
            "login attempt: db=app user=app tls=no", "closing because: client close request (age=0s)"], lines
        lines = session_then_reload(syslog=0)
        assert any(line.startswith(f"<14>other[{pooler.proc.pid}]: C-0x") and "login attempt" in line
                   for line in lines), lines       # user (1) * 8 + info (6)
        assert session_then_reload() == []


# -- DNS: the pooler resolves through its own /etc/hosts (and nsswitch.conf: files only, no real DNS) ---------

NAME = "pg.maitred.test"


class Relay(socketserver.ThreadingTCPServer):
    """Whatever connects to `address` is passed on to `target`; `connections` counts them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.connections = 0
        super().__init__(address, _Pipe)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1
        with socket.create_connection(self.server.target) as upstream:
            threading.Thread(target=_copy, args=(upstream, self.request), daemon=True).start()
            _copy(self.request, upstream)


def _copy(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def resolving_pooler(pooler_factory, tmp_path: Path, hosts: str, databases: dict[str, str], **settings):
    """A pooler whose /etc/hosts is the file returned, `hosts` in it; its nsswitch.conf asks nothing else."""
    require_private_mounts()
    (tmp_path / "hosts").write_text(hosts)
    (tmp_path / "nsswitch.conf").write_text("hosts: files\n")
    pooler = pooler_factory(process=MountedPooler, userlist=USERS, admin_users="admin", databases=databases,
                            mounts={"/etc/hosts": tmp_path / "hosts", "/etc/nsswitch.conf": tmp_path / "nsswitch.conf"},
                            **settings)
    return pooler, tmp_path / "hosts"


def app_at(host: str, port: int) -> str:
    return f"host={host} port={port} dbname=app"


@contextlib.contextmanager
def sessions(pooler):
    """A function that opens one more session-mode client and runs a query: each holds a server connection of its
    own, so each call opens a new one. The clients close at the end."""
    clients = []

    def one_more_server() -> None:
        clients.append(psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5))
        assert clients[-1].execute("SELECT 1").fetchone() == (1,)
    try:
        yield one_more_server
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("ttl", [3, 0])
def test_a_server_connection_within_dns_max_ttl_reuses_the_answer_and_one_after_it_looks_the_name_up(
        pooler_factory, pg, tmp_path, ttl):
    pooler, hosts = resolving_pooler(pooler_factory, tmp_path, f"127.0.0.1 {NAME}\n", {"app": app_at(NAME, pg.port)},
                                     pool_mode="session", dns_max_ttl=ttl)
    with Relay(("127.0.0.2", pg.port), ("127.0.0.1", pg.port)) as relay, sessions(pooler) as one_more_server:
        one_more_server()
        looked_up = time.monotonic()
        hosts.write_text(f"127.0.0.2 {NAME}\n")       # a fail-over done in DNS
        one_more_server()
        with console(pooler) as con:
            answers = show(con, "DNS_HOSTS")
        if ttl:
            assert relay.connections == 0 and time.monotonic() - looked_up < ttl      # the answer kept
            assert [(a["hostname"], a["addrs"]) for a in answers] == [(NAME, "127.0.0.1")]
            time.sleep(ttl - (time.monotonic() - looked_up) + 0.1)
            one_more_server()
        assert relay.connections == 1
        with console(pooler) as con:
            assert [(a["hostname"], a["addrs"]) for a in show(con, "DNS_HOSTS")] == [(NAME, "127.0.0.2")]
            servers = sorted(show(con, "SERVERS"), key=lambda s: s["id"])
        # The servers at the address the answer lost close as their clients release them.
        assert [s["close_needed"] for s in servers] == [1] * (len(servers) - 1) + [0]


def test_the_addresses_of_a_name_are_taken_in_turn_by_new_server_connections(pooler_factory, pg, tmp_path):
    pooler, _ = resolving_pooler(pooler_factory, tmp_path, f"127.0.0.1 {NAME}\n127.0.0.2 {NAME}\n",
                                 {"app": app_at(NAME, pg.port)}, pool_mode="session")
    with Relay(("127.0.0.2", pg.port), ("127.0.0.1", pg.port)) as relay, sessions(pooler) as one_more_server:
        for count in range(1, 5):
            one_more_server()
            assert relay.connections == count // 2


def test_an_address_of_a_name_that_refuses_is_passed_over_for_the_next(pooler_factory, pg, tmp_path):
    pooler, _ = resolving_pooler(pooler_factory, tmp_path, f"127.0.0.3 {NAME}\n127.0.0.1 {NAME}\n",
                                 {"app": app_at(NAME, pg.port)}, pool_mode="session")
    with sessions(pooler) as one_more_server:
        for _ in range(2):     # one of the two tries 127.0.0.3 first
            one_more_server()
    assert "cannot connect to server" not in pooler.log_text()


def test_a_failed_lookup_is_kept_for_dns_nxdomain_ttl_then_the_name_is_looked_up_again(pooler_factory, pg,
                                                                                      tmp_path):
    pooler, hosts = resolving_pooler(pooler_factory, tmp_path, "", {"app": app_at(NAME, pg.port)},
                                     dns_nxdomain_ttl=3, server_login_retry=0.2)
    waiting = []
    thread = threading.Thread(target=lambda: waiting.append(psycopg.connect(pooler.dsn(), connect_timeout=20)))
    thread.start()
    try:
        pooler.wait_log(f"DNS lookup failed: {NAME}")
        failed = time.monotonic()
        hosts.write_text(f"127.0.0.1 {NAME}\n")
        # The login waits, the pool trying again every server_login_retry against the failure it keeps.
        pooler.wait_log(f"cannot connect to server {NAME}:", count=4)
        assert time.monotonic() - failed < 3 and not waiting
        thread.join(10)
        assert waiting and waiting[0].execute("SELECT 1").fetchone() == (1,)
        assert time.monotonic() - failed >= 2.5
        assert pooler.log_text().count(f"DNS lookup failed: {NAME}") == 1
    finally:
        thread.join(20)
        for conn in waiting:
            conn.close()


def test_verify_full_checks_the_servers_certificate_against_the_host_name_not_the_address_it_resolved_to(
        pooler_factory, certs, tls_pg, tmp_path):
    # The certificate names localhost and 127.0.0.1: NAME, at 127.0.0.1 too, is not in it.
    pooler, _ = resolving_pooler(pooler_factory, tmp_path, f"127.0.0.1 localhost {NAME}\n",
                                 {"app": app_at("localhost", tls_pg.port), "named": app_at(NAME, tls_pg.port)},
                                 server_tls_sslmode="verify-full", server_tls_ca_file=certs.ca_pem)
    with psycopg.connect(pooler.dsn()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="server TLS handshake failed: .*Hostname mismatch"):
        psycopg.connect(pooler.dsn(dbname="named"))
