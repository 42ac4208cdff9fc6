"""What clients send, cut at every place on its way to the pooler.

The pooler parses the client's byte stream: the startup packet, SSLRequest and CancelRequest, password and SCRAM
messages, then the header of every message (ReadyForQuery owed, Terminate, junk), long message bodies skipped
over, and whole messages while prepared statements are tracked. Drivers write whole messages, which the kernel
seldom cuts; here they connect to a relay in front of the pooler (tests/cutting_relay.py) that sends what they
write in pieces of one byte, or of seeded random sizes of 1..7 bytes, each once the pooler has read the one
before, so every cut is a cut the pooler sees. A failure names its cut in the test id (`random-<seed>`).
"""
from __future__ import annotations

import asyncio
import struct
import threading
import time

import asyncpg
import psycopg
import pytest

from tests.cutting_relay import CUTS, CuttingRelay
from tests.support import PASSWORDS
from tests.test_auth import REQUIRE_AUTH
from tests.test_cancel import wait_until_sleeping
from tests.test_server_fragments import two_statements
from tests.wire import SYNC, TERMINATE, ServerError, Wire, bind, exchange, execute, message, parse, query

USERS = {**PASSWORDS, "admin": "admin-secret"}
SSL_REQUEST = struct.pack("!II", 8, 80877103)


class Front:
    """A pooler, and the cutting relay clients reach it through."""

    def __init__(self, pooler, relay: CuttingRelay):
        self.pooler = pooler
        self.relay = relay
        self.port = relay.port

    def connect(self, **kwargs) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.pooler.dsn(), port=self.port, **kwargs)

    def url(self) -> str:
        return self.pooler.url().replace(f":{self.pooler.port}/", f":{self.port}/")


@pytest.fixture(params=CUTS)
def cut(request) -> str:
    return request.param


@pytest.fixture
def front(cut, pooler_factory):
    """Start a pooler (a pool of one unless told) with a relay in front that cuts what clients send."""
    relays: list[CuttingRelay] = []

    def start(**settings) -> Front:
        settings.setdefault("default_pool_size", 1)
        settings.setdefault("userlist", USERS)
        pooler = pooler_factory(admin_users="admin", **settings)
        relays.append(CuttingRelay(pooler.port, cut, cuts="requests"))
        return Front(pooler, relays[-1])
    yield start
    try:
        for relay in relays:
            relay.check()
    finally:
        for relay in relays:
            relay.close()


def _backend_pid(port: int) -> str:
    with Wire(port) as wire:
        wire.login("app", PASSWORDS["app"])
        return wire.rows("SELECT pg_backend_pid()")[0][0]


# -- login -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth_type", ["trust", "md5", "scram-sha-256"])
def test_a_login_cut_in_pieces_gets_what_a_whole_one_gets(front, auth_type):
    """An SSLRequest refused with N, the startup packet and every password or SCRAM message in pieces: the
    client is asked and told the same as a client whose bytes arrive whole, and a wrong password is refused in
    the same words."""
    front = front(auth_type=auth_type, pool_mode="transaction")
    logins = []
    for port in (front.pooler.port, front.port):
        with Wire(port) as wire:
            wire.send(SSL_REQUEST)
            assert wire.read_byte() == b"N"
            answer = wire.login("app", PASSWORDS["app"], application_name="frag_login")
            logins.append((wire.auth_requests, [(k, b"" if k in b"RK" else body) for k, body in answer],
                           wire.rows("SELECT current_user, current_setting('application_name')")))
    assert logins[1] == logins[0]
    assert logins[1][2] == [("app", "frag_login")]
    with front.connect(sslmode="prefer", require_auth=REQUIRE_AUTH[auth_type]) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    if auth_type != "trust":
        refusals = []
        for port in (front.pooler.port, front.port):
            with Wire(port) as wire, pytest.raises(ServerError) as caught:
                wire.login("app", "wrong-password")
            refusals.append(caught.value.fields)
        assert refusals[1] == refusals[0] and refusals[0]["S"] == "FATAL"


# -- simple queries ----------------------------------------------------------------------------------------

LONG = "SELECT length('" + "x" * 66_000 + "'), 'long'"
SIMPLE = [
    "SELECT g, repeat('y', g) FROM generate_series(1, 20) g",
    "SELECT 1/0",
    "SELECT 'after the error', 42",
    "SELECT 1; SELECT 2/0; SELECT 3",
    "",
    LONG,
    "BEGIN; SELECT 5; COMMIT",
]


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_simple_queries_cut_in_pieces_are_answered_as_postgresql_answers_them(front, pg, pool_mode):
    """Rows, errors, several statements in one, an empty query and a query of 66 KB (its body over many reads,
    skipped over): answered byte for byte as PostgreSQL answers them, and in transaction mode the server is free
    for another client after each."""
    front = front(pool_mode=pool_mode)
    statements = SIMPLE if pool_mode == "transaction" else [s for s in SIMPLE if s is not LONG]
    direct = exchange(pg.port, statements, limit=20)
    with Wire(front.pooler.port) as other:
        other.login("app", PASSWORDS["app"])
        cut = exchange(front.port, statements, other if pool_mode == "transaction" else None, limit=20)
    for sql, want, got in zip(statements, direct, cut):
        assert got == want, sql[:40]


def test_an_invalid_message_type_cut_in_pieces_is_refused(front):
    """A message of a type no client sends, in pieces (its first byte on its way to the server before the pooler
    can tell): the pooler refuses it as it refuses it whole, and drops that server rather than hand it on."""
    front = front(pool_mode="session")
    pid = _backend_pid(front.pooler.port)
    refusals = []
    for port in (front.pooler.port, front.port):
        with Wire(port) as wire:
            wire.login("app", PASSWORDS["app"])
            assert wire.rows("SELECT 1") == [("1",)]
            wire.send(message(b"Y", b"junk\0"))
            refusals.append(wire.expect_error().fields)
            assert wire.closed_by_peer(5)
        assert _backend_pid(front.pooler.port) != pid
        pid = _backend_pid(front.pooler.port)
    assert refusals[1] == refusals[0] and refusals[0]["M"] == "invalid frontend message type 89"


# -- COPY FROM STDIN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_copy_from_stdin_of_many_rows_cut_in_pieces(front, pg, pool_mode):
    """A CopyData message per row, each header cut: every row arrives, the answer is PostgreSQL's, and the
    client goes on."""
    pg.psql("DROP TABLE IF EXISTS frag_copy_in; CREATE TABLE frag_copy_in (n int, label text);"
            "GRANT ALL ON frag_copy_in TO app", dbname="app")
    front = front(pool_mode=pool_mode)
    rows = [b"%d\trow %d\n" % (n, n * 7) for n in range(1, 801)]
    with Wire(front.port) as wire:
        wire.login("app", PASSWORDS["app"])
        wire.send(query("COPY frag_copy_in FROM STDIN"))
        assert wire.read_until(b"G")[-1][0] == b"G"
        wire.send(b"".join(message(b"d", row) for row in rows) + message(b"c"))
        assert wire.read_until(b"Z", 20) == [(b"C", b"COPY 800\0"), (b"Z", b"I")]
        assert wire.rows("SELECT count(*), sum(n) FROM frag_copy_in") == [("800", "320400")]
    assert pg.psql("SELECT string_agg(label, ',' ORDER BY n) FROM frag_copy_in", dbname="app") == \
        ",".join(f"row {n * 7}" for n in range(1, 801))


# -- the extended protocol, with statements tracked in transaction mode ------------------------------------

def test_psycopg_prepared_statements_of_two_clients_cut_in_pieces(front):
    """psycopg's named statements in transaction mode: the pooler rewrites whole messages only (Tracker.held
    keeps a message begun), shares the one server's statements between the clients, and an error at Execute
    leaves both going on."""
    front = front(pool_mode="transaction", max_prepared_statements=2)
    with front.connect() as first, front.connect() as second:
        for i in range(4):
            for n, conn in enumerate((first, second)):
                assert conn.execute("SELECT %s::int * 3, %s::text", (i, f"c{n}"), prepare=True).fetchone() == \
                    (3 * i, f"c{n}")
                rows = conn.execute("SELECT g FROM generate_series(1, %s::int) g", (i + 1,), prepare=True)
                assert rows.fetchall() == [(g,) for g in range(1, i + 2)]
            with pytest.raises(psycopg.errors.DivisionByZero):
                first.execute("SELECT 1 / %s::int", (0,), prepare=True)
            assert second.execute("SELECT 1 / %s::int", (1,), prepare=True).fetchone() == (1,)
        with first.transaction():
            first.execute("SELECT %s::int", (1,), prepare=True)
            assert first.execute("SELECT txid_current_if_assigned() IS NULL, %s::text", ("in",),
                                 prepare=True).fetchone() == (True, "in")


def test_a_psycopg_pipeline_cut_in_pieces(front, pg):
    """Batches of Parse/Bind/Describe/Execute/Sync written in one go, in pieces: every result in order, an error
    in one pipeline, and the next pipeline answered right."""
    pg.psql("DROP TABLE IF EXISTS frag_pipe; CREATE TABLE frag_pipe (n int); GRANT ALL ON frag_pipe TO app",
            dbname="app")
    front = front(pool_mode="transaction")
    with front.connect() as conn:
        with conn.pipeline():
            curs = [conn.execute("INSERT INTO frag_pipe VALUES (%s) RETURNING n * 2", (n,)) for n in range(15)]
            total = conn.execute("SELECT sum(n) FROM frag_pipe")
        assert [c.fetchone() for c in curs] == [(2 * n,) for n in range(15)] and total.fetchone() == (105,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            with conn.pipeline():
                conn.execute("SELECT %s::int", (1,))
                conn.execute("SELECT * FROM frag_no_such_table")
        with conn.pipeline():
            again = [conn.execute("SELECT %s::int + 1", (n,), prepare=True) for n in range(5)]
        assert [c.fetchone() for c in again] == [(n + 1,) for n in range(5)]


def test_asyncpg_statement_cache_of_three_clients_cut_in_pieces(front):
    """asyncpg's statement cache over a pool of one with room for two statements: the pooler prepares, closes
    and answers Parse itself all the time, from client messages that arrive in pieces."""
    front = front(pool_mode="transaction", max_prepared_statements=2)

    async def client(conn: asyncpg.Connection, n: int) -> None:
        for i in range(5):
            await two_statements(conn, n, i, spread=3)
            async with conn.transaction():
                assert await conn.fetchval("SELECT $1::text || 'x'", f"t{n}.{i}") == f"t{n}.{i}x"

    async def main() -> None:
        conns = [await asyncpg.connect(front.url(), statement_cache_size=100) for _ in range(3)]
        try:
            await asyncio.gather(*(client(c, n) for n, c in enumerate(conns)))
        finally:
            for conn in conns:
                conn.terminate()

    asyncio.run(asyncio.wait_for(main(), 30))


# -- Terminate ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["session", "transaction", "transaction-tracked"])
def test_a_terminate_cut_in_pieces_gives_the_server_back_clean(front, mode):
    """Clients that leave with a Terminate cut in pieces: the pooler closes them, and their server goes back to
    the pool and to the next client, as after a whole Terminate (none of it may reach the server: PostgreSQL
    would wait for the rest, and the server could serve no one)."""
    front = front(pool_mode=mode.split("-")[0])
    pid = _backend_pid(front.pooler.port)
    for n in range(4):      # each connection cuts at other places (random cuts)
        with Wire(front.port) as wire:
            wire.login("app", PASSWORDS["app"])
            if mode == "transaction-tracked":
                wire.send(parse("SELECT 1", "s") + bind(statement="s") + execute() + SYNC)
                assert [k for k, _ in wire.read_until(b"Z")] == [b"1", b"2", b"D", b"C", b"Z"]
            assert wire.rows("SELECT pg_backend_pid()") == [(pid,)]
            wire.send(TERMINATE)
            assert wire.closed_by_peer(5), "the pooler kept the client after its Terminate"
        assert _backend_pid(front.pooler.port) == pid, f"the server was not given back after client {n}"


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
def test_a_terminate_cut_in_pieces_is_honoured_while_the_pool_is_busy(front, tracked):
    """A client with no server says goodbye in pieces while another client holds the pool's only server: it is
    let go at once, not queued for a server to say it to."""
    front = front(pool_mode="transaction")
    with Wire(front.pooler.port) as holder, Wire(front.port) as leaving:
        holder.login("app", PASSWORDS["app"])
        leaving.login("app", PASSWORDS["app"])
        if tracked:
            leaving.send(parse("SELECT 1", "s") + bind(statement="s") + execute() + SYNC)
            assert [k for k, _ in leaving.read_until(b"Z")] == [b"1", b"2", b"D", b"C", b"Z"]
        holder.query("BEGIN")
        leaving.send(TERMINATE)
        assert leaving.closed_by_peer(5), "the pooler kept the client after its Terminate"
        holder.query("COMMIT")


# -- CancelRequest -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_a_cancel_request_cut_in_pieces_cancels_the_query(front, pg, pool_mode):
    """libpq's cancel, on a connection of its own through the relay (an SSLRequest refused, then the CancelRequest),
    in pieces: the sleep is cancelled, and the client goes on. cancel_safe: psycopg's cancel() keeps the GIL
    while libpq waits, and the relay's threads need it."""
    front = front(pool_mode=pool_mode)
    with front.connect() as conn:
        thread = threading.Thread(target=lambda: (wait_until_sleeping(pg), conn.cancel_safe()))
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled, match="user request"):
                conn.execute("SELECT pg_sleep(15)")
        finally:
            thread.join()
        assert time.monotonic() - started < 10, "the sleep ran on: the cancel did not reach it"
        assert conn.execute("SELECT 'after the cancel'").fetchone() == ("after the cancel",)
    assert front.relay.connections == 2, "the cancel request did not come through the relay"
