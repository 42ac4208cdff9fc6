"""Clients that break the protocol: each is told 08P01 and closed, and nobody else notices.

Every test keeps a well-behaved psycopg connection open across the abuse and uses it afterwards, and checks
that the pooler holds no more sockets than before and no more server connections than its pool allows.
"""
from __future__ import annotations

import contextlib
import hashlib
import struct
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import PASSWORDS, server_connections, startup_packet, wait_for
from tests.wire import SYNC, TERMINATE, ServerError, Wire, bind, execute, message, open_fds, parse, query

POOL_SIZE = 2
SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


@contextlib.contextmanager
def bystander(pooler, pg):
    """A normal client that lives through the test, and the check that nothing leaked around it."""
    conn = psycopg.connect(pooler.dsn(), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        baseline = open_fds(pooler.proc.pid) - server_connections(pg)
        yield conn
        assert conn.execute("SELECT 'still here'").fetchone()[0] == "still here"
        assert server_connections(pg) <= POOL_SIZE
        wait_for(lambda: open_fds(pooler.proc.pid) - server_connections(pg) <= baseline, timeout=10,
                 message="the pooler to close the sockets of the clients it refused")
    finally:
        conn.close()


@pytest.fixture
def abused(pooler_factory):
    return pooler_factory(pool_mode="transaction", default_pool_size=POOL_SIZE, max_client_conn=500,
                          client_login_timeout=5)


def assert_refused_as_protocol_violation(pooler, data: bytes, login: bool = False) -> ServerError:
    with Wire(pooler.port) as wire:
        if login:
            wire.login(user="app", password=PASSWORDS["app"])
        wire.send(data)
        error = wire.expect_error(limit=5)
        assert error.sqlstate == "08P01", error.fields
        assert wire.closed_by_peer(5), "the pooler kept a protocol-violating client's connection open"
    return error


# -- before login --------------------------------------------------------------------------------------------

def _startup_body(raw: bytes) -> bytes:
    return struct.pack("!II", len(raw) + 8, 196608) + raw


BAD_STARTUPS = {
    "http request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "absurd length": struct.pack("!II", 0xFFFFFFFF, 196608),
    "length over the startup limit": struct.pack("!II", 10001, 196608) + b"\0" * 9993,
    "length shorter than the header": struct.pack("!II", 4, 196608),
    "protocol 2.0": struct.pack("!II", 8, 0x00020000),
    "unknown request code": struct.pack("!II", 8, 0x04d21234),
    "no terminator": _startup_body(b"user\0app\0database\0app"),
    "odd key/value fields": _startup_body(b"user\0app\0database\0\0"),
    "invalid utf-8": _startup_body(b"user\0\xff\xfe\0\0"),
    "ssl request of the wrong length": struct.pack("!III", 12, 80877103, 0),
    "cancel request of the wrong length": struct.pack("!III", 12, 80877102, 1),
    "password message first": message(b"p", b"secret\0"),
    "garbage after an ssl request": SSL_REQUEST + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("name", list(BAD_STARTUPS))
def test_malformed_startup_gets_a_protocol_violation_and_is_closed(abused, pg, name):
    with bystander(abused, pg):
        with Wire(abused.port) as wire:
            data = BAD_STARTUPS[name]
            wire.send(data)
            if data.startswith(SSL_REQUEST):
                assert wire.read_byte() == b"N"
            error = wire.expect_error(limit=5)
            assert (error.fields["S"], error.sqlstate) == ("FATAL", "08P01"), error.fields
            assert wire.closed_by_peer(5)


@pytest.mark.parametrize("request_packet", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_encryption_request_is_answered_n_and_login_goes_on_in_clear(abused, pg, request_packet):
    with bystander(abused, pg), Wire(abused.port) as wire:
        wire.send(request_packet)
        assert wire.read_byte() == b"N"
        wire.login(user="app", password=PASSWORDS["app"])
        assert wire.rows("SELECT 6 * 7") == [("42",)]


def test_libpq_with_sslmode_prefer_falls_back_to_clear_text(abused, pg):
    with psycopg.connect(abused.dsn(sslmode="prefer", gssencmode="prefer"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        assert conn.pgconn.ssl_in_use is False


def test_libpq_with_sslmode_require_is_refused_cleanly(abused, pg):
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        psycopg.connect(abused.dsn(sslmode="require"))


@pytest.mark.parametrize("cut", [3, 7, 20])
def test_truncated_startup_then_hangup_leaks_nothing(abused, pg, cut):
    with bystander(abused, pg):
        for _ in range(20):
            with Wire(abused.port) as wire:
                wire.send(startup_packet("app", "app")[:cut])


def test_client_that_never_finishes_its_startup_is_closed_by_client_login_timeout(abused, pg):
    with bystander(abused, pg), Wire(abused.port) as wire:
        wire.send(startup_packet("app", "app")[:10])
        error = wire.expect_error(limit=10)
        assert error.message == "client_login_timeout"
        assert wire.closed_by_peer(5)


def test_password_exchange_abandoned_halfway_leaks_nothing(abused, pg):
    with bystander(abused, pg):
        for _ in range(10):
            with Wire(abused.port) as wire:
                wire.send(startup_packet("app", "app"))
                assert wire.read_message()[0] == b"R"
                wire.send(message(b"p", b"SCRAM-SHA-256\0")[:8])


def test_wrong_message_during_authentication_is_a_protocol_violation(abused, pg):
    with bystander(abused, pg), Wire(abused.port) as wire:
        wire.send(startup_packet("app", "app"))
        assert wire.read_message()[0] == b"R"
        wire.send(query("SELECT 1"))
        error = wire.expect_error()
        assert error.sqlstate == "08P01"
        assert wire.closed_by_peer(5)


# -- after login -----------------------------------------------------------------------------------------------

BAD_MESSAGES = {
    "unknown message type": message(b"\x01", b"abc"),
    "backend message type": message(b"Z", b"I"),
    "length below four": b"Q" + struct.pack("!I", 2),
    "absurd length": b"Q" + struct.pack("!I", 0xFFFFFFF0) + b"SELECT 1",
    "a second startup packet": startup_packet("app", "app"),
    "valid query then junk": query("SELECT 1") + b"\xff\xff\xff\xff\xff",
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_malformed_message_after_login_gets_a_protocol_violation_and_is_closed(abused, pg, name):
    with bystander(abused, pg):
        error = assert_refused_as_protocol_violation(abused, BAD_MESSAGES[name], login=True)
        assert error.fields["S"] == "FATAL"


def test_message_over_max_packet_size_is_refused(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=POOL_SIZE, max_packet_size=100000)
    with bystander(pooler, pg):
        assert_refused_as_protocol_violation(pooler, b"Q" + struct.pack("!I", 200000) + b"SELECT ", login=True)


def test_unterminated_query_string_is_refused_by_postgresql_and_the_pool_recovers(abused, pg):
    with bystander(abused, pg), Wire(abused.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.send(b"Q" + struct.pack("!I", 12) + b"SELECT 1")
        assert wire.expect_error().sqlstate == "08P01"


def test_terminate_makes_the_pooler_close_the_connection(abused, pg):
    with Wire(abused.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.send(TERMINATE)
        assert wire.closed_by_peer(5), "a client waiting for the close after Terminate would hang"


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_client_gone_in_the_middle_of_a_message_does_not_hand_on_a_broken_server(pooler_factory, pg, cut):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.query("SELECT 1")
        wire.send(query("SELECT 'half a query'")[:cut])
        time.sleep(0.3)
    for _ in range(3):
        with Wire(pooler.port) as wire:
            wire.login(user="app", password=PASSWORDS["app"])
            assert wire.rows("SELECT 'whole'", limit=5) == [("whole",)]


POOLINGS = {
    "session": {"pool_mode": "session"},
    "transaction": {"pool_mode": "transaction"},
    "transaction, untracked": {"pool_mode": "transaction", "max_prepared_statements": 0},
}


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("abandoned", ["insert", "failed parse"])
def test_client_gone_before_sync_does_not_pass_its_statement_to_the_next_client(pooler_factory, pg, pooling,
                                                                               abandoned):
    """Parse/Bind/Execute without Sync leave an open implicit transaction, or a server ignoring all until Sync."""
    pg.psql("DROP TABLE IF EXISTS unsynced_probe; CREATE TABLE unsynced_probe (note text)", dbname="app",
            user="app")
    pooler = pooler_factory(default_pool_size=1, **POOLINGS[pooling])
    sql = "INSERT INTO unsynced_probe VALUES ('leaked')" if abandoned == "insert" else "SELEKT nonsense"
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.send(parse(sql) + bind() + execute() + message(b"H"))
        time.sleep(0.3)
        wire.send(TERMINATE)
        assert wire.closed_by_peer(5)
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        assert wire.rows("SELECT count(*) FROM unsynced_probe", limit=5) == [("0",)]
    assert pg.psql("SELECT count(*) FROM unsynced_probe", dbname="app") == "0"


def test_pipeline_split_before_its_sync_stays_on_one_server(pooler_factory, pg):
    """A Sync's ReadyForQuery arriving while later messages of the same client wait for their Sync."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, max_prepared_statements=0)
    with Wire(pooler.port) as wire, psycopg.connect(pooler.dsn(), autocommit=True) as other:
        wire.login(user="app", password=PASSWORDS["app"])
        wire.send(parse("SELECT pg_backend_pid()") + bind() + execute() + SYNC
                  + parse("SELECT pg_backend_pid()") + bind())
        first = [body for kind, body in wire.read_until(b"Z") if kind == b"D"]
        time.sleep(0.3)
        other.execute("SELECT pg_sleep(0.1)")     # would take the server if it had gone back to the pool
        wire.send(execute() + SYNC)
        messages = wire.read_until(b"Z")
        assert [kind for kind, _ in messages] == [b"1", b"2", b"D", b"C", b"Z"]
        assert [body for kind, body in messages if kind == b"D"] == first


# -- fuzzing ---------------------------------------------------------------------------------------------------

FUZZ_SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=False,
                         suppress_health_check=[HealthCheck.too_slow])


def _drain(wire: Wire, limit: float = 0.15) -> None:
    """Read and drop what the pooler answers, for a moment or until it hangs up."""
    deadline = time.monotonic() + limit
    while not wire.eof and time.monotonic() < deadline:
        wire.buf = b""
        wire._fill(deadline)


def assert_pool_whole(pooler, pg) -> None:
    """Every server slot can still be had at once: none is stuck in a state the pool forgot."""
    wait_for(lambda: server_connections(pg) <= POOL_SIZE, timeout=10, message="servers back within the pool size")
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                             "AND state <> 'idle'") == "0", timeout=10, message="every server idle")
    conns = [psycopg.connect(pooler.dsn()) for _ in range(POOL_SIZE)]
    try:
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in conns}   # each holds its server
        assert len(pids) == POOL_SIZE
    finally:
        for conn in conns:
            conn.close()
    assert server_connections(pg) <= POOL_SIZE


startup_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda length, code, body: struct.pack("!II", length, code) + body,
              st.integers(0, 0xFFFFFFFF), st.sampled_from([196608, 80877103, 80877104, 80877102, 0x00020000, 0]),
              st.binary(max_size=64)),
    st.builds(lambda body, extra: _startup_body(b"user\0app\0" + body) + extra,
              st.binary(max_size=80), st.binary(max_size=16)),
    st.builds(lambda prefix, body: prefix + body, st.sampled_from([SSL_REQUEST, GSSENC_REQUEST]),
              st.binary(max_size=32)),
)


def test_fuzzed_startup_packets_leave_other_clients_and_the_pool_alone(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=POOL_SIZE, max_client_conn=500,
                            query_wait_timeout=5)
    peak: list[int] = []
    with bystander(pooler, pg):

        @FUZZ_SETTINGS
        @given(data=startup_bytes)
        def throw(data: bytes) -> None:
            with Wire(pooler.port, timeout=1) as wire:
                with contextlib.suppress(OSError):
                    wire.send(data)
                    _drain(wire)
            peak.append(server_connections(pg))

        throw()
    assert max(peak) <= POOL_SIZE, peak
    assert pooler.alive()
    assert_pool_whole(pooler, pg)


frontend_message = st.builds(
    lambda kind, body, delta: kind + struct.pack("!I", max(0, min(0xFFFFFFFF, len(body) + 4 + delta))) + body,
    # FunctionCall is left out: a random function OID could name a real function (pg_terminate_backend).
    st.sampled_from([bytes([b]) for b in b"BCdcDEHPpQSX"]) | st.binary(min_size=1, max_size=1).filter(
        lambda k: k != b"F"),
    st.binary(max_size=48),
    st.sampled_from([0, 0, 0, 0, 0, -1, 1, -5, 100, 1 << 20, -(1 << 30)]),
)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_fuzzed_messages_after_login_leave_other_clients_and_the_pool_alone(pooler_factory, pg, mode):
    pooler = pooler_factory(pool_mode=mode, default_pool_size=POOL_SIZE, max_client_conn=500,
                            auth_type="plain", query_wait_timeout=5)
    peak: list[int] = []
    with bystander(pooler, pg):

        @FUZZ_SETTINGS
        @given(messages=st.lists(frontend_message, min_size=1, max_size=5), terminate=st.booleans())
        def throw(messages: list[bytes], terminate: bool) -> None:
            with Wire(pooler.port, timeout=2) as wire:
                wire.login(user="app", password=PASSWORDS["app"])
                with contextlib.suppress(OSError):
                    wire.send(b"".join(messages))
                    _drain(wire)
                    if terminate and not wire.eof:
                        wire.send(TERMINATE)
            peak.append(server_connections(pg))

        throw()
    assert max(peak) <= POOL_SIZE, peak
    assert pooler.alive()
    assert_pool_whole(pooler, pg)


# -- a client that does not wait for ReadyForQuery -----------------------------------------------------------

def _rows(messages: list) -> list[bytes]:
    return [body for kind, body in messages if kind == b"D"]


@pytest.mark.parametrize("auth", ["trust", "md5"])
def test_a_query_sent_with_the_login_is_answered_after_it(pooler_factory, pg, auth):
    """Bytes in the same read as the startup packet or the password are ordinary traffic once the login ends,
    whether the login waits for the pool's first server (the first client) or not (the second): nothing the
    client sent is lost."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=POOL_SIZE, auth_type=auth)
    for n in (1, 2):
        with Wire(pooler.port) as wire:
            ask = query(f"SELECT 40 + {n}")
            if auth == "trust":
                wire.send(startup_packet("app", "app") + ask)
            else:
                wire.send(startup_packet("app", "app"))
                kind, body = wire.read_message()
                assert kind == b"R" and struct.unpack("!I", body[:4])[0] == 5, (kind, body)
                inner = hashlib.md5((PASSWORDS["app"] + "app").encode()).hexdigest()
                wire.send(message(b"p", b"md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest().encode()
                                  + b"\0") + ask)
            wire.read_until(b"Z")       # the login's ReadyForQuery
            answer = wire.read_until(b"Z")
            assert [row[-2:] for row in _rows(answer)] == [f"4{n}".encode()], answer
            assert wire.rows("SELECT 'next'") == [("next",)]
