"""Protocol-level prepared statements in transaction mode: many clients, few servers, real drivers."""
from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time

import asyncpg
import psycopg
import pytest

from tests.support import PASSWORDS, run_threads
from tests.wire import SYNC, Wire, bind, execute, message, parse


@pytest.fixture
def tx_pooler(pooler_factory):
    return pooler_factory(pool_mode="transaction", default_pool_size=2, max_client_conn=200)


def test_asyncpg_with_its_statement_cache_on_a_pool_of_two(tx_pooler):
    async def client(n: int) -> None:
        conn = await asyncpg.connect(tx_pooler.url(), statement_cache_size=100)
        try:
            for i in range(40):
                assert await conn.fetchval("SELECT $1::int * 2", i + n) == 2 * (i + n)
                row = await conn.fetchrow("SELECT $1::text AS who, $2::int AS n", f"c{n}", i)
                assert (row["who"], row["n"]) == (f"c{n}", i)
                async with conn.transaction():
                    assert await conn.fetchval("SELECT count(*) FROM pgbench_branches WHERE bid > $1", 0) >= 1
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(24)))

    asyncio.run(main())


def test_psycopg_prepare_true_on_a_pool_of_two(tx_pooler):
    def client(n: int) -> None:
        with psycopg.connect(tx_pooler.dsn(), autocommit=True) as conn:
            for i in range(30):
                cur = conn.execute("SELECT %s::int + 1, %s::text", (i, f"c{n}"), prepare=True)
                assert cur.fetchone() == (i + 1, f"c{n}")
                with conn.transaction():
                    cur = conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (n + 1,),
                                       prepare=True)
                    assert cur.fetchone() is not None

    assert run_threads(client, 20) == []


def test_psycopg_pipeline_with_prepared_statements(tx_pooler):
    def client(n: int) -> None:
        with psycopg.connect(tx_pooler.dsn(), autocommit=True, prepare_threshold=0) as conn:
            for _ in range(15):
                with conn.pipeline():
                    cursors = [conn.execute("SELECT %s::int + %s::int", (n, j)) for j in range(4)]
                assert [c.fetchone()[0] for c in cursors] == [n + j for j in range(4)]

    assert run_threads(client, 20) == []


def test_pgbench_prepared_in_transaction_mode(tx_pooler):
    result = tx_pooler.pgbench("-n", "-S", "-M", "prepared", "-c", "20", "-j", "2", "-T", "4")
    assert result.returncode == 0, result.stderr
    assert "number of failed transactions: 0 " in result.stdout
    assert int(re.search(r"actually processed: (\d+)", result.stdout).group(1)) > 0


def test_same_text_under_different_names_and_different_texts_under_one_name(tx_pooler):
    def client(n: int) -> None:
        with psycopg.connect(tx_pooler.dsn(), autocommit=True) as conn:
            pg = conn.pgconn
            for i in range(20):
                # Every client prepares the same text under its own name ...
                name = f"mine_{n}_{i}".encode()
                assert pg.prepare(name, b"SELECT $1::int + 100").status == psycopg.pq.ExecStatus.COMMAND_OK
                res = pg.exec_prepared(name, [str(i).encode()])
                assert res.get_value(0, 0) == str(i + 100).encode()
                # ... and one name for a different text each time, closed in between.
                assert pg.prepare(b"shared", f"SELECT {n * 1000 + i}::int".encode()).status == \
                    psycopg.pq.ExecStatus.COMMAND_OK
                assert pg.exec_prepared(b"shared", []).get_value(0, 0) == str(n * 1000 + i).encode()
                pg.send_close_prepared(b"shared")
                while (res := pg.get_result()) is not None:
                    assert res.status == psycopg.pq.ExecStatus.COMMAND_OK

    assert run_threads(client, 20) == []


def test_a_statement_the_client_never_prepared_gives_postgresql_error(tx_pooler):
    with psycopg.connect(tx_pooler.dsn(), autocommit=True) as conn:
        res = conn.pgconn.exec_prepared(b"never_prepared", [])
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert b'prepared statement "never_prepared" does not exist' in res.error_message
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        assert b"MAITRED" not in res.error_message


def _answers(wire: Wire, data: bytes) -> list:
    """What `data` (ending in Sync) is answered with, message kind by kind: an error as its SQLSTATE and text, a
    row description or data row as its number of columns."""
    wire.send(data)
    out = []
    for kind, body in wire.read_until(b"Z", raise_errors=False):
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
            out.append(("E", fields[b"C"].decode(), fields[b"M"].decode()))
        elif kind in b"TD":
            out.append((kind.decode(), struct.unpack("!H", body[:2])[0]))
        else:
            out.append((kind.decode(),))
    return out


def _describe_statement(name: str) -> bytes:
    return message(b"D", b"S" + name.encode() + b"\0")


def _new_table(pg, name: str) -> None:
    pg.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (a int); INSERT INTO {name} VALUES (1);"
            f"GRANT ALL ON {name} TO app", dbname="app")


def _run(name: str) -> bytes:
    return bind(statement=name) + execute() + SYNC


def _two_clients(port: int):
    first, second = Wire(port), Wire(port)
    first.login("app", PASSWORDS["app"])
    second.login("app", PASSWORDS["app"])
    return first, second


@contextlib.contextmanager
def _prepared_before_a_change(pg, port: int, table: str):
    """Two clients that prepared `SELECT * FROM table` (as f1 and s1) and ran it, then a table change that adds a
    column: yields them and what their runs were answered with."""
    _new_table(pg, table)
    text = f"SELECT * FROM {table}"
    first, second = _two_clients(port)
    with first, second:
        seen = [_answers(first, parse(text, "f1") + _run("f1")), _answers(second, parse(text, "s1") + _run("s1"))]
        pg.psql(f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 2", dbname="app")
        yield first, second, seen


def stale_statement_steps(pg, port: int) -> list:
    """Two clients prepare one text (through a pooler with one server, that is one server statement), then a table
    change alters its columns; what each step is answered with (see test_a_table_change_refuses_…)."""
    text = "SELECT * FROM reshaped"
    with _prepared_before_a_change(pg, port, "reshaped") as (first, second, seen):
        return seen + [_answers(first, _run("f1")),                        # refused
                       _answers(first, parse(text, "f2") + _run("f2")),    # prepared again: 2 columns
                       _answers(second, _run("s1")),                       # refused too, not 2 columns
                       _answers(second, _describe_statement("s1") + SYNC),  # its description as well
                       _answers(second, _run("s1") + _run("s1")),          # until it prepares
                       _answers(second, parse(text, "s2") + _run("s2")),
                       _answers(first, _run("f2"))]


STALE_PLAN = ("E", "0A000", "cached plan must not change result type")


def test_a_table_change_refuses_every_client_statement_prepared_before_it_as_postgresql_does(pooler_factory, pg):
    """PostgreSQL refuses each session's statement whose columns a table change altered, until that session
    prepares it again: its driver described the old columns. Through the pooler, where the two clients' texts
    are one statement on the server, the second client must be refused the same way, not handed rows of the new
    shape by the statement the first client's retry prepared again; and a Describe of it answers as
    PostgreSQL's does (its parameters, then the error)."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    direct = stale_statement_steps(pg, pg.port)
    assert direct[2] == [STALE_PLAN, ("Z",)] and direct[4] == [STALE_PLAN, ("Z",)], direct
    assert stale_statement_steps(pg, pooler.port) == direct


def test_a_stale_plan_a_describe_finds_retires_the_statement_too(pooler_factory, pg):
    """The first use after the table change is a Describe, which needs no rewriting (the relay's fast path)."""
    def steps(port: int) -> list:
        with _prepared_before_a_change(pg, port, "described") as (first, second, seen):
            return seen + [_answers(first, _describe_statement("f1") + SYNC), _answers(second, _run("s1")),
                           _answers(first, _run("f1"))]

    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    direct = steps(pg.port)
    assert direct[2][-2:] == [STALE_PLAN, ("Z",)] and direct[3] == [STALE_PLAN, ("Z",)], direct
    assert steps(pooler.port) == direct


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-batch", "pipelined-batches"])
def test_a_statement_whose_columns_did_not_change_is_not_refused(pooler_factory, pg, pipelined):
    """Two statements used together, of which only one's table changes: only that one is refused, whether both
    are in the batch that fails or the other in a batch before it, still unanswered (pg_sleep) when the failing
    one goes out."""
    def steps(port: int) -> list:
        _new_table(pg, "kept")
        _new_table(pg, "changed")
        kept, changed = "SELECT a FROM kept, pg_sleep(0.3)", "SELECT * FROM changed"
        first, second = _two_clients(port)
        with first, second:
            seen = [_answers(first, parse(kept, "k") + parse(changed, "c") + bind(statement="k") + execute()
                             + _run("c")),
                    _answers(second, parse(kept, "k2") + _run("k2"))]
            pg.psql("ALTER TABLE changed ADD COLUMN b int DEFAULT 2", dbname="app")
            if pipelined:
                first.send(_run("k"))
                time.sleep(0.1)     # sent on to PostgreSQL, not answered yet
                seen += [_answers(first, _run("c")), [m[0] for m in first.read_until(b"Z", raise_errors=False)]]
            else:
                seen.append(_answers(first, bind(statement="k") + execute() + bind(statement="c") + execute() + SYNC))
            return seen + [_answers(second, _run("k2")), _answers(first, _run("k"))]

    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    direct = steps(pg.port)
    assert direct[-2:] == [[("2",), ("D", 1), ("C",), ("Z",)]] * 2, direct
    assert steps(pooler.port) == direct


def test_a_session_statement_cannot_take_the_name_a_retired_statement_is_sent_under(pooler_factory, pg):
    """A retired statement's Bind goes to the server under a name no server has (prepare.RETIRED_NAME); should a
    client's SQL-level PREPARE make one of that name, the server must still refuse it, not answer with that
    statement's rows."""
    from pooler.prepare import RETIRED_NAME

    _new_table(pg, "named_like")
    text = "SELECT * FROM named_like"
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    first, second = _two_clients(pooler.port)
    with first, second:
        _answers(first, parse(text, "f1") + _run("f1"))
        _answers(second, parse(text, "s1") + _run("s1"))
        second.query(f'PREPARE "{RETIRED_NAME.decode()}" AS SELECT 42')
        pg.psql("ALTER TABLE named_like ADD COLUMN b int DEFAULT 2", dbname="app")
        assert _answers(first, _run("f1")) == [STALE_PLAN, ("Z",)]
        assert _answers(second, _run("s1")) == [STALE_PLAN, ("Z",)]
        assert _answers(first, _run("f1")) == [STALE_PLAN, ("Z",)]
        assert second.rows("SELECT 1") == [("1",)]


def test_in_a_failed_transaction_a_retired_statement_gets_the_error_postgresql_gives_there(pooler_factory, pg):
    """PostgreSQL refuses anything but the transaction's end in a failed transaction, before it checks a plan."""
    def steps(port: int) -> list:
        with _prepared_before_a_change(pg, port, "failed_first") as (first, second, seen):
            seen.append(_answers(first, _run("f1")))
            seen.append(_answers(second, message(b"Q", b"BEGIN\0")))
            seen.append(_answers(second, message(b"Q", b"SELECT 1/0\0")))
            seen += [_answers(second, _run("s1")), _answers(second, _describe_statement("s1") + SYNC)]
            seen.append(_answers(second, message(b"Q", b"ROLLBACK\0")))
            return seen + [_answers(second, _run("s1"))]

    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    direct = steps(pg.port)
    assert direct[5][0][1] == "25P02" and direct[-1] == [STALE_PLAN, ("Z",)], direct
    assert steps(pooler.port) == direct


def test_after_a_table_change_every_server_prepares_the_statement_again_before_using_it(pooler_factory, pg):
    """A statement prepared on both servers of a pool before a table change: one server's stale-plan error retires
    it, and a client that then prepares the text (which PostgreSQL would never refuse) gets its new columns on
    the other server too, which prepares it again first instead of answering from its stale plan."""
    pg.psql("DROP TABLE IF EXISTS reshaped2; CREATE TABLE reshaped2 (a int); INSERT INTO reshaped2 VALUES (1);"
            "GRANT ALL ON reshaped2 TO app", dbname="app")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2)
    text = "SELECT * FROM reshaped2"

    def run(wire: Wire, name: str, prepare: bool = True) -> list:
        return _answers(wire, (parse(text, name) if prepare else b"") + bind(statement=name) + execute() + SYNC)

    with Wire(pooler.port) as first, Wire(pooler.port) as second:
        for wire in (first, second):
            wire.login("app", PASSWORDS["app"])
        pids = set()
        for wire, name in ((first, "f1"), (second, "s1")):      # each holds a server: both prepare it
            wire.query("BEGIN")
            assert run(wire, name) == [("1",), ("2",), ("D", 1), ("C",), ("Z",)]
            pids.add(wire.rows("SELECT pg_backend_pid()")[0][0])
        assert len(pids) == 2
        for wire in (first, second):
            wire.query("COMMIT")
        pg.psql("ALTER TABLE reshaped2 ADD COLUMN b int DEFAULT 2", dbname="app")
        assert run(first, "f1", prepare=False)[0] == STALE_PLAN
        pids = set()
        for wire, name in ((first, "f2"), (second, "s2")):      # on both servers again
            wire.query("BEGIN")
            assert run(wire, name) == [("1",), ("2",), ("D", 2), ("C",), ("Z",)]
            pids.add(wire.rows("SELECT pg_backend_pid()")[0][0])
        assert len(pids) == 2
        for wire in (first, second):
            wire.query("COMMIT")


def test_changed_result_type_gives_postgresql_error_until_the_client_prepares_again(tx_pooler, pg):
    pg.psql("DROP TABLE IF EXISTS shape; CREATE TABLE shape (a int); INSERT INTO shape VALUES (1);"
            "GRANT ALL ON shape TO app", dbname="app")
    with psycopg.connect(tx_pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT * FROM shape", prepare=True).fetchall() == [(1,)]
        pg.psql("ALTER TABLE shape ADD COLUMN b int DEFAULT 2", dbname="app")
        # psycopg keeps its statement after the error, and PostgreSQL refuses it every time, as here:
        for _ in range(3):
            with pytest.raises(psycopg.errors.FeatureNotSupported,
                               match="cached plan must not change result type"):
                conn.execute("SELECT * FROM shape", prepare=True)
        conn.execute("DEALLOCATE ALL")      # psycopg forgets its statements, and prepares this one again
        for _ in range(3):
            assert conn.execute("SELECT * FROM shape", prepare=True).fetchall() == [(1, 2)]
    async def keeps_its_name() -> None:
        conn = await asyncpg.connect(tx_pooler.url())
        try:
            stmt = await conn.prepare("SELECT * FROM shape")
            assert await stmt.fetch() == [(1, 2)]
            pg.psql("ALTER TABLE shape ADD COLUMN c int DEFAULT 3", dbname="app")
            with pytest.raises(asyncpg.exceptions.FeatureNotSupportedError):
                await conn.execute("SELECT 1")     # same server or not, the next prepared use is what fails
                await stmt.fetch()
            stmt = await conn.prepare("SELECT * FROM shape")
            assert [tuple(r) for r in await stmt.fetch()] == [(1, 2, 3)]
        finally:
            await conn.close()
    asyncio.run(keeps_its_name())


def test_deallocate_all_and_discard_all_forget_the_clients_statements(tx_pooler):
    with psycopg.connect(tx_pooler.dsn(), autocommit=True) as conn:
        pg = conn.pgconn
        assert pg.prepare(b"s1", b"SELECT 1").status == psycopg.pq.ExecStatus.COMMAND_OK
        conn.execute("DEALLOCATE ALL")
        res = pg.exec_prepared(b"s1", [])
        assert res.status == psycopg.pq.ExecStatus.FATAL_ERROR
        assert pg.prepare(b"s1", b"SELECT 2").status == psycopg.pq.ExecStatus.COMMAND_OK
        assert pg.exec_prepared(b"s1", []).get_value(0, 0) == b"2"
    with psycopg.connect(tx_pooler.dsn(), autocommit=True) as other:
        # The server's statements went with DEALLOCATE ALL; a new client preparing the same text works.
        assert other.pgconn.prepare(b"x", b"SELECT 1").status == psycopg.pq.ExecStatus.COMMAND_OK
        assert other.pgconn.exec_prepared(b"x", []).get_value(0, 0) == b"1"


def test_lru_eviction_keeps_working_with_a_small_cache(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1, max_prepared_statements=3)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        for round_ in range(3):
            for i in range(8):
                assert conn.execute(f"SELECT {i}::int + %s", (round_,), prepare=True).fetchone()[0] == i + round_
    assert int(pooler.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")) <= 1
    assert PASSWORDS["app"]


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def test_extended_messages_split_into_single_bytes_are_rewritten_correctly(tx_pooler):
    """Rewriting needs whole messages: a client whose bytes arrive one at a time still gets its rows."""
    with Wire(tx_pooler.port) as wire:
        wire.login("app", PASSWORDS["app"])
        wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for round_ in range(3):
            payload = (_message(b"P", b"split_stmt\x00SELECT $1::int + 1\x00\x00\x00")
                       + _message(b"B", b"\x00split_stmt\x00\x00\x00\x00\x01\x00\x00\x00\x01"
                                  + str(round_).encode() + b"\x00\x00")
                       + _message(b"E", b"\x00\x00\x00\x00\x00") + _message(b"C", b"Ssplit_stmt\x00")
                       + _message(b"S", b""))
            for i in range(len(payload)):
                wire.send(payload[i:i + 1])
                if i % 7 == 0:
                    time.sleep(0.001)
            replies = wire.read_until(b"Z")
            assert [k for k, _ in replies] == [b"1", b"2", b"D", b"C", b"3", b"Z"], replies
            assert dict(replies)[b"D"].endswith(str(round_ + 1).encode())


def _error_before_the_sync(port: int, failing: str, other: Wire | None = None) -> list:
    """A batch whose Sync comes only after PostgreSQL has reported its error (a client's batch over several
    reads): what each part is answered with, then what the same text under another name is; `other`, a client
    that must get the server after each answer."""
    answers = []
    with Wire(port) as wire:
        wire.login("app", PASSWORDS["app"])
        wire.send(parse("SELEC 1", "broken") + bind(statement="broken") if failing == "parse" else
                  parse("SELECT 1 / 0", "div") + bind(statement="div"))
        answers.append([kind for kind, _ in wire.read_until(b"E", raise_errors=False)])
        answers.append(_answers(wire, parse("SELECT 2", "late") + bind(statement="late") + execute() + SYNC))
        if other is not None:
            assert other.rows("SELECT 'the server is free'") == [("the server is free",)]
        answers.append(_answers(wire, parse("SELECT 2", "again") + bind(statement="again") + execute() + SYNC))
    return answers


@pytest.mark.parametrize("failing", ["parse", "bind"])
def test_what_a_client_sends_after_an_error_until_its_sync_is_ignored_as_postgresql_ignores_it(pooler_factory, pg,
                                                                                               failing):
    """PostgreSQL reports an error in an extended-protocol batch at once and ignores the rest up to the Sync. When
    the rest arrives after the error, the pooler must not wait for answers to it, nor count as prepared what it
    prepared for it: the client gets ReadyForQuery alone, as from PostgreSQL, the one server is free for another
    client, and the same text prepared again runs."""
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with Wire(pooler.port) as other:
        other.login("app", PASSWORDS["app"])
        assert _error_before_the_sync(pooler.port, failing, other) == _error_before_the_sync(pg.port, failing)
