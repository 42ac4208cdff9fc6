"""The rest of the protocol through the pooler: bulk COPY in both directions with flat pooler memory,
LISTEN/NOTIFY, rows of several megabytes, the `options` startup parameter, and a driver-by-mode matrix."""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time

import psycopg
import pytest

from tests.support import PASSWORDS, require_binary, run_threads
from tests.wire import Wire, rss_kib

COPY_ROWS = 100_000
COPY_WIDTH = 1000            # bytes per line, so 100 MB in all
RSS_GROWTH_LIMIT_MB = 40


def copy_line(i: int) -> bytes:
    """Line i of the bulk data: its number and 1000 bytes that differ from every other line's."""
    digest = hashlib.md5(str(i).encode()).hexdigest().encode()
    return b"%d\t%s\n" % (i, (digest * 32)[:COPY_WIDTH])


def copy_blocks(block_rows: int = 1000):
    for start in range(0, COPY_ROWS, block_rows):
        yield b"".join(copy_line(i) for i in range(start, start + block_rows))


def expected_checksum() -> str:
    """md5 of every line in order, computed without holding the 100 MB."""
    digest = hashlib.md5()
    for block in copy_blocks():
        digest.update(block)
    return digest.hexdigest()


class RssSampler:
    """Samples the pooler process's VmRSS every 50 ms while a transfer runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.before = rss_kib(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 1024


def warm_up(pooler) -> None:
    """One round trip first, so the pooler's one-off allocations are not counted as the transfer's."""
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SELECT repeat('x', 100000)").fetchone()


@pytest.fixture(scope="module")
def copy_checksum() -> str:
    return expected_checksum()


def make_copy_table(pg, name: str) -> None:
    pg.psql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int, line text)", dbname="app", user="app")


def table_checksum(pg, name: str) -> tuple[int, str]:
    """Row count and md5 of the table's lines in COPY's text format, in id order, computed by PostgreSQL."""
    out = pg.psql(f"SELECT count(*), md5(string_agg(id || E'\\t' || line || E'\\n', '' ORDER BY id)) FROM {name}",
                  dbname="app")
    count, checksum = out.split("|")
    return int(count), checksum


# -- COPY ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_psycopg_copy_from_stdin_of_100_mb_arrives_intact_with_flat_pooler_memory(pooler_factory, pg, mode,
                                                                                   copy_checksum):
    make_copy_table(pg, "copy_in")
    pooler = pooler_factory(pool_mode=mode, default_pool_size=2)
    warm_up(pooler)
    with RssSampler(pooler.proc.pid) as rss, psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY copy_in (id, line) FROM STDIN") as copy:
            for block in copy_blocks():
                copy.write(block)
        assert conn.execute("SELECT count(*) FROM copy_in").fetchone()[0] == COPY_ROWS
    assert rss.growth_mb < RSS_GROWTH_LIMIT_MB, f"pooler RSS grew {rss.growth_mb:.0f} MB for a 100 MB COPY"
    assert table_checksum(pg, "copy_in") == (COPY_ROWS, copy_checksum)


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_psycopg_copy_to_stdout_of_100_mb_arrives_intact_with_flat_pooler_memory(pooler_factory, pg, mode,
                                                                                 copy_checksum):
    make_copy_table(pg, "copy_out")
    pg.psql("INSERT INTO copy_out SELECT i, left(repeat(md5(i::text), 32), 1000) "
            f"FROM generate_series(0, {COPY_ROWS - 1}) i", dbname="app")
    pooler = pooler_factory(pool_mode=mode, default_pool_size=2)
    warm_up(pooler)
    digest, size = hashlib.md5(), 0
    with RssSampler(pooler.proc.pid) as rss, psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with conn.cursor().copy("COPY (SELECT id, line FROM copy_out ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                digest.update(block)
                size += len(block)
        assert conn.execute("SELECT 'still usable'").fetchone()[0] == "still usable"
    assert size >= COPY_ROWS * COPY_WIDTH
    assert digest.hexdigest() == copy_checksum
    assert rss.growth_mb < RSS_GROWTH_LIMIT_MB, f"pooler RSS grew {rss.growth_mb:.0f} MB for a 100 MB COPY"


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psql_backslash_copy_of_100_mb_both_ways_arrives_intact_with_flat_pooler_memory(pooler_factory, pg, mode,
                                                                                       tmp_path, copy_checksum):
    psql = require_binary("psql")
    make_copy_table(pg, "copy_psql")
    source, target = tmp_path / "in.tsv", tmp_path / "out.tsv"
    with open(source, "wb") as f:
        for block in copy_blocks():
            f.write(block)
    pooler = pooler_factory(pool_mode=mode, default_pool_size=2)
    warm_up(pooler)
    env = dict(os.environ, PGPASSWORD=PASSWORDS["app"])
    base = [psql, "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(pooler.port), "-U", "app", "-d", "app"]
    with RssSampler(pooler.proc.pid) as rss:
        loaded = subprocess.run(base + ["-c", f"\\copy copy_psql (id, line) FROM '{source}'"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == f"COPY {COPY_ROWS}"
        dumped = subprocess.run(base + ["-c", f"\\copy (SELECT id, line FROM copy_psql ORDER BY id) TO '{target}'"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert dumped.returncode == 0, dumped.stderr
    assert rss.growth_mb < RSS_GROWTH_LIMIT_MB, f"pooler RSS grew {rss.growth_mb:.0f} MB for 2 x 100 MB of COPY"
    assert table_checksum(pg, "copy_psql") == (COPY_ROWS, copy_checksum)
    digest = hashlib.md5()
    with open(target, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == copy_checksum


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_a_failed_copy_from_stdin_leaves_the_client_and_its_server_usable(pooler_factory, pg, mode):
    make_copy_table(pg, "copy_fail")
    pooler = pooler_factory(pool_mode=mode, default_pool_size=1)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor().copy("COPY copy_fail (id, line) FROM STDIN") as copy:
                copy.write(b"1\tfine\nnot a number\tbad\n")
        with pytest.raises(RuntimeError):
            with conn.cursor().copy("COPY copy_fail (id, line) FROM STDIN") as copy:
                copy.write(b"2\tfine\n")
                raise RuntimeError("the client gives up")     # psycopg sends CopyFail, then re-raises
        assert conn.execute("SELECT count(*) FROM copy_fail").fetchone()[0] == 0
    with psycopg.connect(pooler.dsn(), autocommit=True) as other:
        assert other.execute("SELECT 1").fetchone()[0] == 1


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------------------

def test_listen_in_session_mode_receives_notify_from_another_connection(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="session", default_pool_size=2)
    with psycopg.connect(pooler.dsn(), autocommit=True) as listener, \
            psycopg.connect(pooler.dsn(), autocommit=True) as sender, \
            psycopg.connect(pg.dsn(dbname="app"), autocommit=True) as direct:
        listener.execute("LISTEN maitred_events")
        sender.execute("NOTIFY maitred_events, 'through the pooler'")
        direct.execute("SELECT pg_notify('maitred_events', 'straight to postgres')")
        # The listener sends nothing meanwhile: the notifications reach it while it is idle.
        received = []
        for notify in listener.notifies(timeout=10, stop_after=2):
            received.append((notify.channel, notify.payload))
        assert received == [("maitred_events", "through the pooler"), ("maitred_events", "straight to postgres")]
        listener.execute("UNLISTEN maitred_events")
        sender.execute("NOTIFY maitred_events, 'after unlisten'")
        assert list(listener.notifies(timeout=0.5)) == []


def test_notify_sent_inside_a_transaction_arrives_at_commit_only(pooler_factory, pg):
    pooler = pooler_factory(pool_mode="session", default_pool_size=2)
    with psycopg.connect(pooler.dsn(), autocommit=True) as listener, psycopg.connect(pooler.dsn()) as sender:
        listener.execute("LISTEN maitred_tx")
        sender.execute("NOTIFY maitred_tx, 'one'")
        assert list(listener.notifies(timeout=0.5)) == []
        sender.commit()
        assert [n.payload for n in listener.notifies(timeout=10, stop_after=1)] == ["one"]


# -- large rows ------------------------------------------------------------------------------------------

BIG = 5 * 1024 * 1024


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_a_5_mb_text_value_comes_back_whole_by_simple_and_extended_protocol(pooler_factory, mode):
    pooler = pooler_factory(pool_mode=mode, default_pool_size=1)
    with Wire(pooler.port, timeout=30) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        assert wire.rows(f"SELECT repeat('x', {BIG}), 'after'") == [("x" * BIG, "after")]
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        value = conn.execute("SELECT repeat(%s::text, %s), 'after'", ("ab", BIG // 2)).fetchone()
        assert value == ("ab" * (BIG // 2), "after")
        assert conn.execute("SELECT length(repeat('y', %s))", (BIG,), prepare=True).fetchone()[0] == BIG


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_a_5_mb_bytea_parameter_goes_in_and_comes_back_whole(pooler_factory, pg, mode):
    pg.psql("DROP TABLE IF EXISTS big_blob; CREATE TABLE big_blob (id int, data bytea)", dbname="app", user="app")
    pooler = pooler_factory(pool_mode=mode, default_pool_size=1)
    blob = os.urandom(BIG)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO big_blob VALUES (1, %b)", (blob,))          # binary parameter
        conn.execute("INSERT INTO big_blob VALUES (2, %s)", (blob,))          # text (hex) parameter: 10 MB
        for row_id in (1, 2):
            assert conn.execute("SELECT data FROM big_blob WHERE id = %s", (row_id,), binary=True
                                ).fetchone()[0] == blob
            assert conn.execute("SELECT data FROM big_blob WHERE id = %s", (row_id,)).fetchone()[0] == blob
    assert pg.psql("SELECT string_agg(md5(data), ',' ORDER BY id) FROM big_blob", dbname="app") == \
        ",".join([hashlib.md5(blob).hexdigest()] * 2)


def test_asyncpg_moves_a_5_mb_bytea_both_ways_in_transaction_mode(pooler_factory, pg):
    import asyncio

    import asyncpg

    pg.psql("DROP TABLE IF EXISTS big_blob_a; CREATE TABLE big_blob_a (data bytea)", dbname="app", user="app")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    blob = os.urandom(BIG)

    async def run() -> bytes:
        conn = await asyncpg.connect(pooler.url())
        try:
            await conn.execute("INSERT INTO big_blob_a VALUES ($1)", blob)
            return await conn.fetchval("SELECT data FROM big_blob_a")
        finally:
            await conn.close()

    assert asyncio.run(run()) == blob


# -- the options startup parameter -----------------------------------------------------------------------

def settings_of(conn) -> tuple[str, str]:
    return conn.execute("SELECT current_setting('search_path'), current_setting('statement_timeout')").fetchone()


DEFAULTS = ('"$user", public', "0")


def test_options_are_read_as_postgresql_reads_them():
    from pooler.protocol import parse_options

    assert parse_options("") == parse_options("   ") == []
    assert parse_options("-c search_path=foo -c statement_timeout=5000") == [
        ("search_path", "foo"), ("statement_timeout", "5000")]
    assert parse_options(r"  -csearch_path=a,\ b   --statement-timeout=5s -c x.y=\\z") == [
        ("search_path", "a, b"), ("statement_timeout", "5s"), ("x.y", "\\z")]
    for malformed in ("-B 100", "-c", "-c search_path", "-c =1", "search_path=foo", "--"):
        with pytest.raises(ValueError, match="only '-c config=val' is allowed"):
            parse_options(malformed)


def test_a_startup_packet_seen_before_is_read_from_memory_into_a_fresh_dict():
    from pooler import protocol

    body = b"user\0app\0database\0app\0application_name\0x\0\0"
    first = protocol.startup_params(body)
    assert first == {"user": "app", "database": "app", "application_name": "x"}
    first.pop("user")                       # the login pops from it: the next one must not see that
    assert protocol.startup_params(body) == {"user": "app", "database": "app", "application_name": "x"}
    assert body in protocol._startup_params
    big = b"user\0app\0application_name\0" + b"y" * 2000 + b"\0\0"
    assert protocol.startup_params(big)["application_name"] == "y" * 2000
    assert big not in protocol._startup_params         # a long one is parsed each time, not kept
    for n in range(protocol._STARTUP_KEPT + 10):        # distinct packets past the bound: kept within it
        protocol.startup_params(b"user\0u%d\0\0" % n)
    assert len(protocol._startup_params) <= protocol._STARTUP_KEPT
    with pytest.raises(protocol.ProtocolError):
        protocol.startup_params(b"user\0app\0database\0")       # an odd count is refused, every time


def test_options_reach_the_server_session_in_session_mode_and_leave_with_the_client(pooler_factory):
    pooler = pooler_factory(pool_mode="session", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), options="-c search_path=foo -c statement_timeout=5000",
                         autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert settings_of(conn) == ("foo", "5s")
        conn.execute("BEGIN")
        assert settings_of(conn) == ("foo", "5s")
        conn.execute("COMMIT")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:      # the same server, after DISCARD ALL
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert settings_of(conn) == DEFAULTS
    with psycopg.connect(pooler.dsn(), options="-c search_path=foo -c statement_timeout=5000",
                         autocommit=True) as conn:
        assert settings_of(conn) == ("foo", "5s")


def test_options_follow_their_client_on_a_shared_server_in_transaction_mode(pooler_factory, pg):
    pg.psql("DROP SCHEMA IF EXISTS opt_a CASCADE; CREATE SCHEMA opt_a; CREATE TABLE opt_a.marker (v text);"
            "INSERT INTO opt_a.marker VALUES ('found through search_path')", dbname="app", user="app")
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), options="-c search_path=opt_a,public -c statement_timeout=500",
                         autocommit=True) as a, \
            psycopg.connect(pooler.dsn(), autocommit=True) as b, \
            psycopg.connect(pooler.dsn(), options="-c statement_timeout=7s", autocommit=True) as c:
        pids = set()
        for _ in range(3):
            assert settings_of(a) == ("opt_a,public", "500ms")     # as PostgreSQL shows it
            assert a.execute("SELECT v FROM marker").fetchone()[0] == "found through search_path"
            with pytest.raises(psycopg.errors.QueryCanceled):
                a.execute("SELECT pg_sleep(3)")
            assert settings_of(b) == DEFAULTS
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("SELECT v FROM marker")
            assert settings_of(c) == ('"$user", public', "7s")
            with c.transaction():
                assert settings_of(c) == ('"$user", public', "7s")
            pids |= {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in (a, b, c)}
        assert len(pids) == 1, "one server served all three clients, each with its own settings"


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_options_hold_for_every_transaction_on_whichever_server_it_lands(pooler_factory, mode):
    pooler = pooler_factory(pool_mode=mode, default_pool_size=3)
    def worker(n: int) -> None:
        options = f"-c statement_timeout={1000 + n} -c work_mem={64 + n}kB" if n % 2 else ""
        with psycopg.connect(pooler.dsn(), options=options, autocommit=True) as conn:
            for _ in range(40):
                timeout, work_mem = conn.execute(
                    "SELECT current_setting('statement_timeout'), current_setting('work_mem')").fetchone()
                expected = (f"{1000 + n}ms", f"{64 + n}kB") if n % 2 else ("0", "4MB")
                assert (timeout, work_mem) == expected, (n, timeout, work_mem)

    assert run_threads(worker, 12) == []


def test_tracked_parameters_in_options_are_reported_and_direct_parameters_win(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with psycopg.connect(pooler.dsn(), options="-c application_name=from_options -c DateStyle=German",
                         autocommit=True) as a, \
            psycopg.connect(pooler.dsn(), options="-c application_name=from_options",
                            application_name="direct", autocommit=True) as b:
        assert a.info.parameter_status("application_name") == "from_options"
        assert a.info.parameter_status("DateStyle").startswith("German")
        assert b.info.parameter_status("application_name") == "direct"
        for _ in range(3):
            assert a.execute("SELECT current_setting('application_name'), current_setting('DateStyle')"
                             ).fetchone() == ("from_options", "German, DMY")
            assert b.execute("SELECT current_setting('application_name'), current_setting('DateStyle')"
                             ).fetchone() == ("direct", "ISO, MDY")


def test_ignore_startup_parameters_works_on_options_as_in_pgbouncer(pooler_factory):
    everything = pooler_factory(pool_mode="transaction", default_pool_size=1,
                                ignore_startup_parameters="extra_float_digits,options")
    with psycopg.connect(everything.dsn(), options="-c statement_timeout=5000 -c application_name=kept",
                         autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('statement_timeout'), current_setting('application_name')"
                            ).fetchone() == ("0", "kept")
    one = pooler_factory(pool_mode="transaction", default_pool_size=1, ignore_startup_parameters="statement_timeout")
    with psycopg.connect(one.dsn(), options="-c statement_timeout=5000 -c search_path=foo",
                         autocommit=True) as conn:
        assert settings_of(conn) == ("foo", "0")


def test_options_other_than_dash_c_are_refused_with_pgbouncers_error(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    with pytest.raises(psycopg.OperationalError, match="only '-c config=val' is allowed"):
        psycopg.connect(pooler.dsn(), options="-B 100")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_an_unknown_setting_in_options_fails_that_client_with_postgresqls_error_only(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=1)
    conn = psycopg.connect(pooler.dsn(), options="-c no_such_setting=1", autocommit=True)
    try:
        with pytest.raises(psycopg.Error, match='unrecognized configuration parameter "no_such_setting"'):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(pooler.dsn(), autocommit=True) as other:
        assert settings_of(other) == DEFAULTS


# -- drivers x pool modes (the README's compatibility table) ---------------------------------------------

MODES = ("session", "transaction", "statement")


@pytest.fixture(scope="module")
def mode_poolers(pg, tmp_path_factory):
    """One pooler per pool mode, pool of 2, shared by the matrix below."""
    from tests.support import PoolerProcess

    poolers = {mode: PoolerProcess(pg, tmp_path_factory.mktemp(f"matrix-{mode}"), pool_mode=mode,
                                   default_pool_size=2, max_client_conn=50).start() for mode in MODES}
    yield poolers
    dead = [mode for mode, proc in poolers.items() if not proc.alive()]
    for proc in poolers.values():
        proc.stop()
    assert not dead, f"pooler died: {dead}"


def run_psql(pooler, mode: str) -> None:
    psql = require_binary("psql")
    script = "SELECT 1 AS one; SELECT count(*) FROM pgbench_branches;\n"
    if mode != "statement":
        script += "BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; INSERT INTO t VALUES (1); " \
                  "SELECT count(*) FROM t; COMMIT;\n"
    result = subprocess.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                             str(pooler.port), "-U", "app", "-d", "app"], input=script, capture_output=True, text=True,
                            env=dict(os.environ, PGPASSWORD=PASSWORDS["app"]), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == (["1", "1"] if mode == "statement" else ["1", "1", "1"])


def run_pgbench(pooler, mode: str, protocol: str) -> None:
    """In session mode a client keeps its server, so no more clients than servers: pgbench -M prepared
    prepares synchronously, and a thread whose second client waits for a server would wait forever."""
    require_binary("pgbench")
    clients = 2 if mode == "session" else 6
    result = pooler.pgbench("-n", "-S", "-M", protocol, "-c", str(clients), "-j", "2", "-t", "50", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"number of transactions actually processed: {clients * 50}/{clients * 50}" in result.stdout, result.stdout
    assert "number of failed transactions: 0 " in result.stdout


def run_asyncpg(pooler, mode: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pooler.url(), statement_cache_size=100)
        try:
            for i in range(10):      # named prepared statements from asyncpg's cache
                assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
            rows = await conn.fetch("SELECT bid FROM pgbench_branches WHERE bid = $1", 1)
            assert [r["bid"] for r in rows] == [1]
            if mode != "statement":
                async with conn.transaction():
                    await conn.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
                    await conn.executemany("INSERT INTO t VALUES ($1)", [(i,) for i in range(5)])
                    assert await conn.fetchval("SELECT sum(x) FROM t") == 10
        finally:
            await conn.close()

    asyncio.run(run())


def run_psycopg(pooler, mode: str, style: str) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        if style == "pipeline":
            with conn.pipeline():
                cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(10)]
            assert [c.fetchone()[0] for c in cursors] == [i * 2 for i in range(10)]
        else:
            for i in range(10):
                assert conn.execute("SELECT %s::int * 2", (i,), prepare=(style == "prepare")).fetchone()[0] == i * 2
        if mode != "statement":
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE t (x int) ON COMMIT DROP")
                conn.cursor().executemany("INSERT INTO t VALUES (%s)", [(i,) for i in range(5)])
                assert conn.execute("SELECT sum(x) FROM t").fetchone()[0] == 10


DRIVERS = {
    "psql": run_psql,
    "pgbench-simple": lambda pooler, mode: run_pgbench(pooler, mode, "simple"),
    "pgbench-extended": lambda pooler, mode: run_pgbench(pooler, mode, "extended"),
    "pgbench-prepared": lambda pooler, mode: run_pgbench(pooler, mode, "prepared"),
    "asyncpg": run_asyncpg,
    "psycopg": lambda pooler, mode: run_psycopg(pooler, mode, "plain"),
    "psycopg-prepare": lambda pooler, mode: run_psycopg(pooler, mode, "prepare"),
    "psycopg-pipeline": lambda pooler, mode: run_psycopg(pooler, mode, "pipeline"),
}


@pytest.mark.parametrize("driver", list(DRIVERS))
@pytest.mark.parametrize("mode", MODES)
def test_driver_works_in_pool_mode(mode_poolers, mode, driver):
    """In statement mode only autocommit statements are sent: a transaction block is refused there by design."""
    DRIVERS[driver](mode_poolers[mode], mode)
