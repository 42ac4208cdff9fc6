"""PostgreSQL's replies cut at every place on their way to the pooler.

The pooler reads the server's byte stream as it relays it (message headers, ReadyForQuery, ParameterStatus,
ErrorResponse, and every answer while prepared statements are tracked), so a message cut between two reads takes
its own paths. PostgreSQL's replies normally arrive as the kernel batches them; here a relay between the pooler
and PostgreSQL sends them on in pieces of one byte, or of seeded random sizes of 1..7 bytes, each piece once the
pooler has read the one before (tests/cutting_relay.py), so every cut is a cut the pooler sees. A failure names
its cut in the test id (`random-<seed>`); FRAGMENT_SEEDS=1,2,3 runs other seeds.
"""
from __future__ import annotations

import asyncio
import socket
import threading

import asyncpg
import psycopg
import pytest

from tests.cutting_relay import CUTS, CuttingRelay
from tests.support import PASSWORDS, wait_for
from tests.test_prepared import stale_statement_steps
from tests.wire import SYNC, Wire, bind, exchange, execute, parse, query

USERS = {**PASSWORDS, "admin": "admin-secret"}


@pytest.fixture(params=CUTS)
def relay(request, pg):
    cutting = CuttingRelay(pg.port, request.param, cuts="answers")
    yield cutting
    cutting.close()


@pytest.fixture
def through_relay(relay, pooler_factory):
    """Start a pooler whose server connections go through the relay; the relay outlives the pooler."""
    def start(**settings):
        settings.setdefault("default_pool_size", 1)
        return pooler_factory(databases={"app": f"host=127.0.0.1 port={relay.port} dbname=app"},
                              userlist=USERS, admin_users="admin", **settings)
    yield start
    relay.check()


def _pools(pooler) -> list[dict]:
    with psycopg.connect(pooler.dsn(user="admin", dbname="pgbouncer", password=USERS["admin"]),
                         autocommit=True, prepare_threshold=None) as console:
        cur = console.execute("SHOW POOLS")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall() if row[0] == "app"]


# -- simple queries ----------------------------------------------------------------------------------------

SIMPLE = [
    "SELECT g, repeat('x', g), g % 3 = 0 FROM generate_series(1, 40) g",
    "SELECT 1/0",
    "SELECT 'after the error', 42",
    "SELECT 1; SELECT 2/0; SELECT 3",
    "",
    "SELECT NULL::text, ''::text, E'\\\\x00'::bytea",
    "BEGIN; SELECT 5; COMMIT",
]


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_simple_query_answers_cut_in_pieces_are_the_messages_postgresql_sends(through_relay, pg, pool_mode):
    """Rows, an error and the queries after it: the client gets byte for byte what PostgreSQL itself sends, and
    in transaction mode another client gets the one server after each answer."""
    pooler = through_relay(pool_mode=pool_mode)
    direct = exchange(pg.port, SIMPLE)
    with Wire(pooler.port) as other:
        other.login("app", PASSWORDS["app"])
        pooled = exchange(pooler.port, SIMPLE, other if pool_mode == "transaction" else None, between_limit=5)
    for sql, want, got in zip(SIMPLE, direct, pooled):
        assert got == want, sql
    assert [k for k, _ in pooled[1]] == [b"E", b"Z"] and [k for k, _ in pooled[0]].count(b"D") == 40


# -- ParameterStatus ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_a_parameter_change_cut_in_pieces_is_tracked_for_the_next_client_of_the_server(through_relay, extended):
    """SET application_name comes back as a ParameterStatus in pieces (on the relay's fast path, or on the
    tracked path when the SET is an extended-protocol statement); the pooler must still see it, or the other
    client of the one server would inherit the first one's name (and the first lose it)."""
    pooler = through_relay(pool_mode="transaction")
    setting = "SET application_name = 'frag_changed'"
    with Wire(pooler.port) as first, Wire(pooler.port) as second:
        first.login("app", PASSWORDS["app"], application_name="frag_first")
        second.login("app", PASSWORDS["app"], application_name="frag_second")
        if extended:
            first.send(parse(setting) + bind() + execute() + SYNC)
            answer = first.read_until(b"Z")
        else:
            answer = first.query(setting)
        assert (b"S", b"application_name\0frag_changed\0") in answer
        for _ in range(3):
            assert second.rows("SHOW application_name") == [("frag_second",)]
            assert first.rows("SHOW application_name") == [("frag_changed",)]
        assert first.rows("SELECT pg_backend_pid()") == second.rows("SELECT pg_backend_pid()")


# -- prepared statements in transaction mode ---------------------------------------------------------------

async def two_statements(conn: asyncpg.Connection, n: int, i: int, spread: int) -> None:
    """Client `n`'s round `i` through asyncpg's statement cache: two statements whose results say which client
    and round they belong to (up to `spread` rows); the client-side fragment tests run them too."""
    assert await conn.fetchval("SELECT $1::int * 3", i + n) == 3 * (i + n)
    rows = await conn.fetch("SELECT g, $1::text FROM generate_series(1, $2::int) g", f"c{n}", i % spread + 1)
    assert [tuple(r) for r in rows] == [(g, f"c{n}") for g in range(1, i % spread + 2)]


def test_prepared_statements_of_three_clients_on_one_server_with_its_answers_cut(through_relay, pg):
    """asyncpg's statement cache over a pool of one with room for two statements: the server prepares,
    closes and prepares again all the time, so swallowed ParseComplete and CloseComplete arrive cut; then a
    table change makes plans stale, and each client's retry must get the new shape."""
    pg.psql("DROP TABLE IF EXISTS frag_shape; CREATE TABLE frag_shape (a int); INSERT INTO frag_shape VALUES (1);"
            "GRANT ALL ON frag_shape TO app", dbname="app")
    pooler = through_relay(pool_mode="transaction", max_prepared_statements=2)

    async def client(conn: asyncpg.Connection, n: int, shape: tuple) -> None:
        for i in range(8):
            await two_statements(conn, n, i, spread=4)
            async with conn.transaction():
                assert await conn.fetchval("SELECT $1::text || 'x'", f"t{n}.{i}") == f"t{n}.{i}x"
                assert [tuple(r) for r in await conn.fetch("SELECT * FROM frag_shape")] == [shape]

    async def main() -> None:
        conns = [await asyncpg.connect(pooler.url(), statement_cache_size=100) for _ in range(3)]
        try:
            await asyncio.gather(*(client(c, n, (1,)) for n, c in enumerate(conns)))
            pg.psql("ALTER TABLE frag_shape ADD COLUMN b int DEFAULT 2", dbname="app")
            # Each gets the stale plan's error, as from PostgreSQL, although the first one's retry has prepared
            # the shared statement again; outside a transaction, asyncpg prepares again and retries.
            for conn in conns:
                assert [tuple(r) for r in await conn.fetch("SELECT * FROM frag_shape")] == [(1, 2)]
            await asyncio.gather(*(client(c, n, (1, 2)) for n, c in enumerate(conns)))
        finally:
            for conn in conns:
                conn.terminate()        # no graceful close to wait on after a failure

    asyncio.run(asyncio.wait_for(main(), 15))


def test_statements_a_table_change_made_stale_are_refused_to_each_client_with_the_answers_cut(through_relay, pg):
    """test_prepared's stale statement steps, PostgreSQL's answers cut: the error that stands for the stale plan,
    and the columns swallowed from a stale statement's description, are withheld until whole."""
    direct = stale_statement_steps(pg, pg.port)
    assert stale_statement_steps(pg, through_relay(pool_mode="transaction", default_pool_size=1).port) == direct


def test_errors_cut_in_pieces_while_statements_are_tracked(through_relay, pg):
    """Errors at Parse, at Execute after a Parse, and a stale plan, each arriving in pieces; after each, the
    next statement on the same client and on another one is answered right."""
    pg.psql("DROP TABLE IF EXISTS frag_stale; CREATE TABLE frag_stale (a int); INSERT INTO frag_stale VALUES (1);"
            "GRANT ALL ON frag_stale TO app", dbname="app")
    pooler = through_relay(pool_mode="transaction")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn, \
            psycopg.connect(pooler.dsn(), autocommit=True) as other:
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC %s::int", (1,), prepare=True)
        assert other.execute("SELECT %s::int + 1", (1,), prepare=True).fetchone() == (2,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / %s::int", (0,), prepare=True)
        assert conn.execute("SELECT 1 / %s::int", (1,), prepare=True).fetchone() == (1,)
        assert conn.execute("SELECT * FROM frag_stale", prepare=True).fetchall() == [(1,)]
        pg.psql("ALTER TABLE frag_stale ADD COLUMN b int DEFAULT 2", dbname="app")
        for _ in range(2):      # psycopg keeps its statement, which PostgreSQL refuses until prepared again
            with pytest.raises(psycopg.errors.FeatureNotSupported,
                               match="cached plan must not change result type"):
                conn.execute("SELECT * FROM frag_stale", prepare=True)
        conn.execute("DEALLOCATE ALL")
        for client in (conn, other, conn):
            assert client.execute("SELECT * FROM frag_stale", prepare=True).fetchall() == [(1, 2)]
            assert client.execute("SELECT %s::int + 1", (5,), prepare=True).fetchone() == (6,)


def test_a_stale_plan_error_cut_in_pieces_on_the_tracked_path_has_the_statement_prepared_again(through_relay, pg):
    """A Parse the pooler answers itself (the server has the text) with its Bind in one batch: the stale plan's
    ErrorResponse comes on the tracked path, in pieces, and must still mark the statement for preparing again,
    or every retry would fail the same way."""
    pg.psql("DROP TABLE IF EXISTS frag_stale2; CREATE TABLE frag_stale2 (a int); INSERT INTO frag_stale2 "
            "VALUES (1); GRANT ALL ON frag_stale2 TO app", dbname="app")
    pooler = through_relay(pool_mode="transaction")
    text = "SELECT * FROM frag_stale2"
    with Wire(pooler.port) as wire:
        wire.login("app", PASSWORDS["app"])
        for name, step in (("s1", "prepare"), ("s2", "alter"), ("s3", "retry")):
            if step == "alter":
                pg.psql("ALTER TABLE frag_stale2 ADD COLUMN b int DEFAULT 2", dbname="app")
            wire.send(parse(text, name) + bind(statement=name) + execute() + SYNC)
            if step == "alter":
                assert "cached plan must not change result type" in wire.expect_error().message
                assert wire.read_until(b"Z") == [(b"Z", b"I")]
            else:
                answer = wire.read_until(b"Z")
                assert [k for k, _ in answer] == [b"1", b"2", b"D", b"C", b"Z"], answer
                assert answer[2][1].endswith(b"1" if step == "prepare" else b"2")


# -- transactions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extended", [False, True], ids=["unnamed", "prepared"])   # psycopg's parameters: extended
def test_the_server_goes_to_a_waiting_client_only_at_the_true_end_of_a_transaction(through_relay, pg, extended):
    """Every ReadyForQuery(T) of the transaction arrives in pieces, as does the final ReadyForQuery(I): the
    waiting client must get the server after COMMIT, not inside the transaction."""
    pg.psql("DROP TABLE IF EXISTS frag_tx; CREATE TABLE frag_tx (n int); GRANT ALL ON frag_tx TO app",
            dbname="app")
    pooler = through_relay(pool_mode="transaction")
    answers: list[tuple] = []
    with psycopg.connect(pooler.dsn(), prepare_threshold=0 if extended else None) as holder, \
            psycopg.connect(pooler.dsn(), autocommit=True) as waiter:
        holder.execute("INSERT INTO frag_tx VALUES (1)")       # psycopg's BEGIN first: a transaction is open
        thread = threading.Thread(target=lambda: answers.append(waiter.execute(
            "SELECT txid_current_if_assigned() IS NULL, (SELECT count(*) FROM frag_tx)").fetchone()))
        thread.start()
        try:
            wait_for(lambda: any(p["cl_waiting"] for p in _pools(pooler)), message="the second client waiting")
            for n in range(2, 5):
                holder.execute("INSERT INTO frag_tx VALUES (%s)", (n,))
                assert holder.execute("SELECT count(*) FROM frag_tx").fetchone() == (n,)
            assert answers == []
            holder.commit()
        finally:
            thread.join(10)
    assert answers == [(True, 4)]


# -- COPY --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_copy_to_stdout_of_thousands_of_rows_cut_in_pieces(through_relay, pool_mode):
    """CopyData messages cut everywhere; every row arrives, in order, and the client can go on."""
    pooler = through_relay(pool_mode=pool_mode)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY (SELECT g, g % 7 FROM generate_series(1, 3000) g) TO STDOUT") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        assert data == b"".join(b"%d\t%d\n" % (g, g % 7) for g in range(1, 3001))
        assert conn.execute("SELECT 'after copy'").fetchone() == ("after copy",)


# -- a second batch sent while the first one's answer is still arriving -------------------------------------

@pytest.mark.parametrize("second", ["same-text", "new-text"])
def test_a_batch_pipelined_while_the_previous_answer_arrives_in_pieces(through_relay, second):
    """A Bind/Execute/Sync batch goes on the relay's fast path; before its answer is through, the client sends a
    batch with a Parse, which the pooler tracks (answered by the pooler for a text the server has, or prepared
    there). The first batch's answer still owed must come first, whole, and count: the server is free again
    for another client afterwards."""
    pooler = through_relay(pool_mode="transaction")
    rows = "SELECT g FROM generate_series(1, 30) g"
    text = rows if second == "same-text" else rows + " -- other text"
    with Wire(pooler.port) as wire, Wire(pooler.port) as other:
        wire.login("app", PASSWORDS["app"])
        other.login("app", PASSWORDS["app"])
        wire.send(parse(rows, "s1") + bind(statement="s1") + execute() + SYNC)
        assert [k for k, _ in wire.read_until(b"Z")] == [b"1", b"2"] + [b"D"] * 30 + [b"C", b"Z"]
        wire.send(bind(statement="s1") + execute() + SYNC)
        assert wire.sock.recv(1, socket.MSG_PEEK) == b"2"       # the first batch's answer has started to arrive
        wire.send(parse(text, "s2") + bind(statement="s2") + execute() + SYNC)
        first = wire.read_until(b"Z")
        assert [k for k, _ in first] == [b"2"] + [b"D"] * 30 + [b"C", b"Z"]
        second_batch = wire.read_until(b"Z")
        assert [k for k, _ in second_batch] == [b"1", b"2"] + [b"D"] * 30 + [b"C", b"Z"]
        assert first[1:-2] == second_batch[2:-2] and first[-1] == (b"Z", b"I")
        assert other.rows("SELECT 'the server is free'", limit=5) == [("the server is free",)]
        assert wire.rows("SELECT 'and comes back'", limit=5) == [("and comes back",)]


def test_a_waiting_clients_simple_query_ahead_of_its_extended_batch_is_counted_when_the_server_comes(through_relay):
    """A client waiting for the server sends a simple query and an extended batch in one write: when the server
    comes, attach() sends the query on the fast path and the batch is tracked behind it. The query's
    ReadyForQuery must count too, or the server stays with that client for good."""
    pooler = through_relay(pool_mode="transaction")
    with Wire(pooler.port) as holder, Wire(pooler.port) as waiter, Wire(pooler.port) as third:
        for wire in (holder, waiter, third):
            wire.login("app", PASSWORDS["app"])
        holder.query("BEGIN")
        waiter.send(query("SELECT 1") + parse("SELECT 2", "s") + bind(statement="s") + execute() + SYNC)
        wait_for(lambda: any(p["cl_waiting"] for p in _pools(pooler)), message="the second client waiting")
        holder.query("COMMIT")
        assert [k for k, _ in waiter.read_until(b"Z", 10)] == [b"T", b"D", b"C", b"Z"]
        assert [k for k, _ in waiter.read_until(b"Z", 10)] == [b"1", b"2", b"D", b"C", b"Z"]
        assert third.rows("SELECT 'the server is free'", limit=5) == [("the server is free",)]
