"""PgBouncer settings maitred refuses rather than accept and ignore: the pooler will not start on them, and
SET or RELOAD will not apply them, each with one line saying why."""
from __future__ import annotations

import psycopg
import pytest

from pooler.config import load_config
from tests.test_admin import USERS, console
from tests.test_pooler_cli import run_pooler, write_config

REFUSED = {
    "client_tls13_ciphers = TLS_AES_128_GCM_SHA256": "Python's ssl module cannot restrict TLS 1.3 cipher suites",
    "server_tls13_ciphers = TLS_AES_256_GCM_SHA384": "Python's ssl module cannot restrict TLS 1.3 cipher suites",
}


@pytest.mark.parametrize("line", list(REFUSED))
def test_a_refused_setting_stops_the_pooler_at_start_saying_why(tmp_path, pg, line):
    path, number = write_config(tmp_path, pg, line + "\n")
    result = run_pooler(path)
    assert result.returncode != 0
    assert f"{path}:{number}:" in result.stderr and "is refused: " + REFUSED[line] in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_of_a_refused_setting_is_accepted(tmp_path):
    path = tmp_path / "pooler.ini"
    path.write_text("[pgbouncer]\nclient_tls13_ciphers =\nserver_tls13_ciphers =\n")
    assert load_config(path).get("client_tls13_ciphers") == ""


def test_set_refuses_a_refused_setting_and_keeps_the_running_value(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", userlist=USERS, admin_users="admin")
    with console(pooler) as con:
        with pytest.raises(psycopg.Error, match="is refused: Python's ssl module cannot restrict TLS 1.3"):
            con.execute("SET client_tls13_ciphers = 'TLS_AES_128_GCM_SHA256'")
        config = {row[0]: row[1] for row in con.execute("SHOW CONFIG").fetchall()}
        assert config["client_tls13_ciphers"] == ""


def test_reload_refuses_a_file_with_a_refused_setting(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", userlist=USERS, admin_users="admin")
    pooler.settings["server_tls13_ciphers"] = "TLS_AES_256_GCM_SHA384"
    pooler.write_config()
    with console(pooler) as con:
        with pytest.raises(psycopg.Error, match="server_tls13_ciphers: 'TLS_AES_256_GCM_SHA384' is refused"):
            con.execute("RELOAD")
        config = {row[0]: row[1] for row in con.execute("SHOW CONFIG").fetchall()}
        assert config["server_tls13_ciphers"] == ""
