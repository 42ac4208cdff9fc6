"""auth_file is read as PgBouncer reads userlist.txt, and secrets are classified as PostgreSQL does."""

import base64
import hashlib

import pytest
import scramp

from pooler.config import ConfigError
from pooler.userlist import load_userlist, secret_kind


def scram_secret(password: str, iterations: int = 4096) -> str:
    salt, stored_key, server_key, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations)
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def write(tmp_path, text: str):
    path = tmp_path / "userlist.txt"
    path.write_text(text)
    return path


def test_all_three_secret_kinds_load(tmp_path):
    md5 = "md5" + hashlib.md5(b"1234admin").hexdigest()
    scram = scram_secret("pw")
    users = load_userlist(write(tmp_path, f'"alice" "plain secret"\n"admin" "{md5}"\n"carol" "{scram}"\n'))
    assert users == {"alice": "plain secret", "admin": md5, "carol": scram}
    assert [secret_kind(s) for s in users.values()] == ["plain", "md5", "scram"]


def test_doubled_quotes_comments_blank_lines_and_trailing_fields(tmp_path):
    users = load_userlist(write(tmp_path, '; comment\n\n   "bo""b"   "pa""ss" ignored "fields"\n  ; indented\n'))
    assert users == {'bo"b': 'pa"ss'}


def test_a_later_line_for_the_same_user_wins(tmp_path):
    assert load_userlist(write(tmp_path, '"u" "old"\n"u" "new"\n')) == {"u": "new"}


def test_crlf_line_endings(tmp_path):
    assert load_userlist(write(tmp_path, '"u" "p"\r\n"v" "q"\r\n')) == {"u": "p", "v": "q"}


@pytest.mark.parametrize("line", [
    "alice secret",              # fields must be quoted
    '"alice"',                   # no password
    '"alice" "unterminated',
    '"ali"ce" "x"',              # a lone quote inside a field
    "# hash comments are not comments here, as in PgBouncer",
])
def test_a_malformed_line_is_an_error_naming_its_line(tmp_path, line):
    path = write(tmp_path, f'"ok" "fine"\n; comment\n{line}\n')
    with pytest.raises(ConfigError) as info:
        load_userlist(path)
    assert (info.value.file, info.value.line) == (str(path), 3)
    assert str(info.value).startswith(f"{path}:3: malformed line")


def test_a_missing_auth_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="could not read auth_file"):
        load_userlist(tmp_path / "absent.txt")


@pytest.mark.parametrize("secret, kind", [
    ("md545f2603610af569b6155c45067268c6b", "md5"),
    ("md545F2603610AF569B6155C45067268C6B", "plain"),  # PostgreSQL's md5 hashes are lower-case hex
    ("md545f2603610af569b6155c45067268c6", "plain"),   # too short
    ("md5", "plain"),
    ("", "plain"),
    ("SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA", "plain"),   # keys must be 32 bytes
    ("SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=", "plain"),
    ("SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=", "scram"),
    ("SCRAM-SHA-256$4096:!!$" + "A" * 43 + "=:" + "A" * 43 + "=", "plain"),
])
def test_secret_kind(secret, kind):
    assert secret_kind(secret) == kind
