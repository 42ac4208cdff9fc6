"""auth_type = hba: logins allowed or refused per line of auth_hba_file, by address, database, user and TLS, each
line with its own method; checked on maitred and, side by side, on Debian's PgBouncer with the same files."""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import PASSWORDS, require_binary
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
        codes: list[int] = []
        read = wire.read_message

        def recording(limit: float = 5):
            msg = read(limit)
            if msg is not None and msg[0] == b"R":
                codes.append(struct.unpack("!I", msg[1][:4])[0])
            return msg

        wire.read_message = recording
        try:
            wire.login(user=user, password=password, database=database)
        except ServerError as exc:
            assert exc.fields.get("S") == "FATAL"
            return exc.sqlstate, exc.message
        return "ok", tuple(codes)


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
}


@pytest.fixture(scope="module")
def hba_files():
    folder = shared_folder({"hba.conf": HBA, "users": USERS_FILE})
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(params=["maitred", "pgbouncer"])
def target(request, pg, pooler_factory, hba_files):
    """The port of a pooler with auth_type = hba on HBA: maitred, or PgBouncer with the same files."""
    settings = {"auth_type": "hba", "auth_hba_file": str(hba_files / "hba.conf")}
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
