"""auth_type = hba: logins allowed or refused per line of auth_hba_file, by address, database, user and TLS, each
line with its own method; checked on maitred and, side by side, on Debian's PgBouncer with the same files."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import tempfile
from pathlib import Path

import psycopg
import pytest

from pooler.hba import HbaError, parse_hba, parse_ident
from tests.support import PASSWORDS, require_binary, wait_for
from tests.test_admin_pgbouncer import PgBouncer
from tests.wire import ServerError, Wire

HBA = """\
# type    database   user       address                method
host      app        rejected   127.0.0.1/32           reject
host      app        app        127.0.0.1/32           scram-sha-256
host      app        md5_role   127.0.0.0  255.0.0.0   md5
host      trusted    all        127.0.0.1/32           trust
host      elsewhere  all        10.0.0.0/8             trust     # clients come from 127.0.0.1
hostssl   sslonly    all        127.0.0.1/32           trust
hostnossl plainonly  all        127.0.0.1/32           trust
host      sameuser   "all",@users  127.0.0.1/32        password  # "all" quoted: the user named all
host      pgbouncer  app        127.0.0.1/32           trust     # the console too
"""
USERS_FILE = "plain_role\n"
USERLIST = {**PASSWORDS, "rejected": "rejected-secret", "someone": "someone-secret"}


def databases(pg) -> dict[str, str]:
    """app as itself; the trust lines' databases log in to PostgreSQL as trust_role, which it trusts."""
    target = f"host=127.0.0.1 port={pg.port} dbname=app"
    entries = {"app": target, "plain_role": target}
    entries.update({name: f"{target} user=trust_role" for name in ("trusted", "elsewhere", "sslonly", "plainonly")})
    return entries


def shared_folder(files: dict[str, str]) -> Path:
    """Files PgBouncer can read too: it runs as postgres when the tests run as root."""
    folder = Path(tempfile.mkdtemp(prefix="maitred-hba-"))
    os.chmod(folder, 0o755)
    for name, text in files.items():
        (folder / name).write_text(text)
        os.chmod(folder / name, 0o644)
    return folder


def attempt(port: int, user: str, database: str, password: str = "", unix_path: str | None = None) -> tuple:
    """("ok", the authentication request codes seen) or (SQLSTATE, message) of a refused login."""
    with Wire(port, unix_path=unix_path) as wire:
        try:
            wire.login(user=user, password=password, database=database)
        except ServerError as exc:
            assert exc.fields.get("S") == "FATAL"
            return exc.sqlstate, exc.message
        return "ok", tuple(wire.auth_requests)


REJECTED = ("08P01", "login rejected")
SCRAM, MD5, CLEARTEXT, OK = 10, 5, 3, 0

# (user, database, password) → what happens, over plain TCP from 127.0.0.1
CASES = {
    "scram line": (("app", "app", PASSWORDS["app"]), lambda r: r[0] == "ok" and SCRAM in r[1]),
    "trust line asks for no password": (("someone", "trusted", ""), lambda r: r == ("ok", (OK,))),
    "same user, trust on another database": (("app", "trusted", ""), lambda r: r == ("ok", (OK,))),
    "md5 line with a separate mask": (("md5_role", "app", PASSWORDS["md5_role"]), lambda r: r == ("ok", (MD5, OK))),
    "sameuser and @file, password line": (("plain_role", "plain_role", PASSWORDS["plain_role"]),
                                          lambda r: r == ("ok", (CLEARTEXT, OK))),
    "reject line": (("rejected", "app", USERLIST["rejected"]), lambda r: r == REJECTED),
    "no line for the user": (("someone", "app", USERLIST["someone"]), lambda r: r == REJECTED),
    "no line for the database": (("app", "plain_role", PASSWORDS["app"]), lambda r: r == REJECTED),
    "no line for the address": (("someone", "elsewhere", ""), lambda r: r == REJECTED),
    "hostssl line, plain-text client": (("someone", "sslonly", ""), lambda r: r == REJECTED),
    "hostnossl line, plain-text client": (("someone", "plainonly", ""), lambda r: r == ("ok", (OK,))),
    "console, trust line": (("app", "pgbouncer", ""), lambda r: r == ("ok", (OK,))),
    "console, no line": (("someone", "pgbouncer", USERLIST["someone"]), lambda r: r == REJECTED),
}


@pytest.fixture(scope="module")
def hba_files():
    folder = shared_folder({"hba.conf": HBA, "users": USERS_FILE})
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["maitred", "pgbouncer"])
def target(request, pg, pooler_factory, hba_files):
    """The port of a pooler with auth_type = hba on HBA: maitred, or PgBouncer with the same files."""
    settings = {"auth_type": "hba", "auth_hba_file": str(hba_files / "hba.conf"), "admin_users": "app",
                "stats_users": "someone"}
    if request.param == "maitred":
        yield pooler_factory(databases=databases(pg), userlist=USERLIST, **settings).port
        return
    bouncer = PgBouncer(require_binary("pgbouncer"), {"listen_addr": "127.0.0.1", "unix_socket_dir": "", **settings},
                        databases(pg), USERLIST)
    try:
        yield bouncer.port
    finally:
        bouncer.stop()


def test_each_login_follows_the_first_matching_line_as_on_pgbouncer(target):
    outcomes = {name: attempt(target, *login) for name, (login, _) in CASES.items()}
    wrong = {name: outcome for name, outcome in outcomes.items() if not CASES[name][1](outcome)}
    assert not wrong, wrong


# -- peer ------------------------------------------------------------------------------------------------------

def test_peer_lines_log_in_the_unix_socket_clients_os_user_or_whom_its_map_allows(pooler_factory, pg, tmp_path):
    me = pwd.getpwuid(os.getuid()).pw_name
    (tmp_path / "hba.conf").write_text("local all app peer map=mine\nlocal all all peer\n")
    (tmp_path / "ident.conf").write_text(f"mine {me} app\n")
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    pooler = pooler_factory(auth_type="hba", auth_hba_file=str(tmp_path / "hba.conf"),
                            auth_ident_file=str(tmp_path / "ident.conf"), unix_socket_dir=str(sockets))
    socket_path = str(sockets / f".s.PGSQL.{pooler.port}")
    assert attempt(pooler.port, "app", "app", unix_path=socket_path) == ("ok", (OK,))      # mine: me → app
    assert attempt(pooler.port, "md5_role", "app", unix_path=socket_path) == ("08P01", "unix socket login rejected")
    assert attempt(pooler.port, "app", "app", PASSWORDS["app"]) == REJECTED                # no host line at all


# -- the files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, reason", [
    ("hots all all 127.0.0.1/32 trust", "unknown record type 'hots'"),
    ("host all +admins 127.0.0.1/32 trust", "group names (+admins) are not supported"),
    ("host samerole all 127.0.0.1/32 trust", "samerole is not supported"),
    ("host all all db.example.com trust", "invalid address 'db.example.com'"),
    ("host all all 127.0.0.1/33 trust", "invalid mask"),
    ("host all all 10.0.0.1/8 trust", "address does not match its mask"),
    ("host all all 127.0.0.1/32 ldap", "unsupported authentication method 'ldap'"),
    ("host all all 127.0.0.1/32 md5 map=x", "map= applies to cert and peer only"),
    ("local all all peer map=nowhere", "ident map 'nowhere' is not in auth_ident_file"),
    ("host all all 127.0.0.1/32 trust clientcert=verify-ca", "unsupported option 'clientcert'"),
    ('host "all all 127.0.0.1/32 trust', "unterminated quoted name"),
    ("host all @missing 127.0.0.1/32 trust", "cannot read @missing"),
])
def test_a_line_that_cannot_be_used_stops_the_pooler_naming_file_and_line(pooler_factory, tmp_path, line, reason):
    hba = tmp_path / "hba.conf"
    hba.write_text(f"# rules\nlocal all all trust\n{line}\n")
    with pytest.raises(RuntimeError, match="cannot start") as failed:
        pooler_factory(expect_alive=False, auth_type="hba", auth_hba_file=str(hba))
    assert f"{hba}:3: {reason}" in str(failed.value)


def test_reload_reads_the_hba_file_again_and_keeps_the_rules_when_it_cannot_be_used(pooler_factory, tmp_path):
    hba = tmp_path / "hba.conf"
    hba.write_text("host all app 127.0.0.1/32 scram-sha-256\n")
    pooler = pooler_factory(auth_type="hba", auth_hba_file=str(hba))
    assert attempt(pooler.port, "app", "app", PASSWORDS["app"])[0] == "ok"
    hba.write_text("host all app 127.0.0.1/32 reject\n")
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: attempt(pooler.port, "app", "app", PASSWORDS["app"]) == REJECTED, message="reject applied")
    hba.write_text("host all app 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 nonsense\n")
    pooler.signal(signal.SIGHUP)
    wait_for(lambda: f"{hba}:2: unsupported authentication method 'nonsense'" in pooler.log_text(),
             message="the reload refused")
    assert attempt(pooler.port, "app", "app", PASSWORDS["app"]) == REJECTED        # the running rules stay


def test_parser_reads_pgbouncers_subset():
    access = parse_hba('''
        local   all                 all                          peer
        host    "all",sameuser      app, "md5_role"  ::1/128     md5        # a comment
        host    replication         all              all         trust
        hostssl app                 "all"            0.0.0.0/0   cert  map=m
    ''', "hba.conf", {"m": (("app", None),)})
    local, listed, replication, quoted = access.rules
    assert (local.kind, local.method, local.databases.every, local.users.every) == ("local", "peer", True, True)
    assert listed.databases.names == {"all"} and listed.databases.sameuser and not listed.databases.every
    assert listed.users.names == {"app", "md5_role"} and str(listed.network) == "::1/128"
    assert replication.databases.replication and replication.network is None
    assert quoted.users.names == {"all"} and not quoted.users.every and quoted.map == "m"
    rule = access.rule_for
    assert rule(unix=False, address="::1", tls=False, dbname="all", user="app") is listed
    assert rule(unix=False, address="::1", tls=False, dbname="app", user="app") is listed       # sameuser
    assert rule(unix=False, address="::1", tls=False, dbname="other", user="app") is None     # not replication
    assert rule(unix=False, address="10.1.2.3", tls=False, dbname="x", user="y", physical_replication=True) \
        is replication
    assert rule(unix=False, address="::ffff:10.1.2.3", tls=True, dbname="app", user="all") is quoted
    assert rule(unix=True, address=None, tls=False, dbname="x", user="y") is local
    assert access.mapped("m", ("app",), "anyone") and not access.mapped("m", ("other",), "app")


def test_ident_maps_read_pgbouncers_subset():
    maps = parse_ident("# map system user\nm  alice  app\nm  bob  all\nn  \"carol\"  \"all\"\n", "ident.conf")
    assert maps == {"m": (("alice", "app"), ("bob", None)), "n": (("carol", "all"),)}
    for line, reason in (("m alice", "expected: map-name system-username database-username"),
                         ("m /^(.*)$ app", "regular expressions are not supported"),
                         ("m alice +admins", "group names and regular expressions are not supported"),
                         ("include other.conf x", "include directives are not supported")):
        with pytest.raises(HbaError, match=re.escape(f"ident.conf:1: {reason}")):
            parse_ident(line, "ident.conf")


def test_set_auth_type_hba_on_the_console_needs_a_usable_file_and_then_applies_it(pooler_factory, tmp_path):
    hba = tmp_path / "hba.conf"
    hba.write_text("host pgbouncer app 127.0.0.1/32 scram-sha-256\nhost app app 127.0.0.1/32 reject\n")
    pooler = pooler_factory(admin_users="app")
    with psycopg.connect(pooler.dsn(dbname="pgbouncer"), autocommit=True) as console:
        with pytest.raises(psycopg.Error, match="auth_type = hba needs auth_hba_file"):
            console.execute("SET auth_type = 'hba'")
        assert attempt(pooler.port, "app", "app", PASSWORDS["app"])[0] == "ok"     # nothing changed
        console.execute(f"SET auth_hba_file = '{hba}'")
        console.execute("SET auth_type = 'hba'")
    assert attempt(pooler.port, "app", "app", PASSWORDS["app"]) == REJECTED
    assert attempt(pooler.port, "app", "pgbouncer", PASSWORDS["app"])[0] == "ok"
