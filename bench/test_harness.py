"""Keeps the benchmark harness working: its parsers and report on fixed inputs, and one `python3 -m bench
--quick` run end to end. No speed is asserted anywhere; the full benchmark is run by hand."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from bench import conntrack, instructions, pgbench, poolconf, report, scenarios, targets
from bench.pgclient import md5_password, startup_message
from tests.support import missing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PGBENCH_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
number of transactions actually processed: 69057
number of failed transactions: 0 (0.000%)
latency average = 0.115 ms
initial connection time = 21.412 ms
tps = 34851.749981 (without initial connection time)
"""


def test_pgbench_summary_gives_tps_latency_and_count():
    assert pgbench.parse_summary(PGBENCH_OUTPUT) == {
        "tps": 34851.749981, "latency_mean_ms": 0.115, "transactions": 69057, "failed": 0}
    assert pgbench.failure_reason(0, PGBENCH_OUTPUT, "") is None


def test_pgbench_run_with_aborted_clients_does_not_count():
    stderr = ('pgbench: error: client 3 script 0 aborted in command 1 query 0: ERROR:  prepared statement '
              '"P_0" does not exist\npgbench: error: Run was aborted; the above results are incomplete.\n')
    reason = pgbench.failure_reason(2, PGBENCH_OUTPUT, stderr)
    assert reason == '1 client(s) aborted, first: ERROR: prepared statement "P_0" does not exist'


def test_p99_comes_from_the_third_log_column_and_skips_failed_transactions(tmp_path):
    log = tmp_path / "tx.123"
    log.write_text("".join(f"0 {i} {us} 0 1795264552 278147\n" for i, us in enumerate(range(1, 101)))
                   + "0 101 failed 0 1795264552 278147\n")
    done = pgbench.completions([str(log)])
    assert done[0] == (1795264552.278147, 1)
    samples = [us for _, us in done]
    assert len(samples) == 100
    assert pgbench.percentile(samples, 99) == 99
    assert pgbench.percentile([5], 99) == 5


def test_both_pooler_configs_share_every_pooling_setting():
    shared = poolconf.shared_settings(pg_port=5432, listen_port=6432, database="bench", auth_type="md5",
                                      auth_file="/x/userlist.txt", pool_size=10, max_client_conn=10100)
    pgb = poolconf.for_pgbouncer(shared, logfile="/x/pgbouncer.log")
    mtd = poolconf.for_maitred(shared, logfile="/x/maitred.log")
    assert "maitred" not in pgb and mtd["maitred"] == {"http_port": "0"}
    assert pgb["databases"] == mtd["databases"] == {"bench": "host=127.0.0.1 port=5432 dbname=bench"}
    assert {k: pgb["pgbouncer"][k] for k in shared["pgbouncer"]} == \
        {k: mtd["pgbouncer"][k] for k in shared["pgbouncer"]} == shared["pgbouncer"]
    assert (pgb["pgbouncer"]["logfile"], mtd["pgbouncer"]["logfile"]) == ("/x/pgbouncer.log", "/x/maitred.log")
    assert "[maitred]\nhttp_port = 0\n" in poolconf.render_ini(mtd)
    assert poolconf.render_userlist({"bench": 'p"w'}) == '"bench" "p""w"\n'


def test_both_poolers_run_with_their_default_logging():
    shared = poolconf.shared_settings(pg_port=5432, listen_port=6432, database="bench", auth_type="md5",
                                      auth_file="/x/userlist.txt", pool_size=10, max_client_conn=10100)
    for config in (poolconf.for_pgbouncer(shared, logfile="/x/p.log"),
                   poolconf.for_maitred(shared, logfile="/x/m.log")):
        assert not [key for key in config["pgbouncer"] if key.startswith(("log_", "verbose", "syslog"))]


class _Recorder:
    """A target that records the auth_type of every pooler the scenarios start, and starts none."""

    name = "recorder"

    def __init__(self):
        self.auth_types: list[str] = []

    def unavailable(self):
        return None

    def inapplicable(self, load, auth_type):
        return None

    @contextlib.contextmanager
    def serve(self, settings):
        self.auth_types.append(settings.auth_type)
        yield targets.Endpoint(port=0)


def test_s2_churns_once_with_trust_and_once_with_scram_whatever_the_auth_option(monkeypatch):
    done = scenarios.ok(tps=1.0)
    monkeypatch.setitem(scenarios.LOADS, "churn", lambda ep, scale: dict.fromkeys(["S2", "S2-scram"], done))
    monkeypatch.setitem(scenarios.LOADS, "steady", lambda ep, scale: dict.fromkeys(["S1", "S5"], done))
    target = _Recorder()
    results = scenarios.run([target], ["S1", "S2", "S2-scram"], scenarios.QUICK, "md5", say=lambda line: None)
    assert target.auth_types == ["md5", "trust", "scram-sha-256"]
    assert {sid: len(by_target["recorder"]) for sid, by_target in results.items()} == \
        {"S1": 1, "S2": 1, "S2-scram": 1}


def test_raw_client_speaks_the_v3_startup_and_md5_formats():
    msg = startup_message("bench", "db", application_name="a")
    assert msg == b"\x00\x00\x00\x33\x00\x03\x00\x00user\0bench\0database\0db\0application_name\0a\0\0"
    # PostgreSQL's documented form: "md5" + hex(md5(hex(md5(password + user)) + salt))
    inner = hashlib.md5(b"pu").hexdigest().encode()
    assert md5_password("u", "p", b"salt") == b"md5" + hashlib.md5(inner + b"salt").hexdigest().encode()


def test_report_takes_medians_and_ratios_and_marks_failures():
    ok = scenarios.ok
    results = {"S2": {"direct": [ok(tps=100.0), ok(tps=300.0), ok(tps=200.0)],
                      "pgbouncer": [ok(tps=400.0), ok(tps=400.0), scenarios.failed("boom")],
                      "maitred": [ok(tps=100.0), ok(tps=50.0), ok(tps=60.0)]}}
    summary = report.summarize(results, scale=scenarios.FULL, auth_type="md5", versions={"PgBouncer": "1.18.0"},
                               cores=2, started=datetime(2025, 1, 2, tzinfo=timezone.utc))
    tps = summary["scenarios"]["S2"]["metrics"]["tps"]
    assert tps["targets"]["direct"] == {"status": "ok", "values": [100.0, 300.0, 200.0], "median": 200.0}
    assert tps["targets"]["pgbouncer"]["status"] == "failed"
    assert tps["ratios"] == {"maitred/pgbouncer": None, "maitred/direct": 0.3}
    table = report.markdown(summary)
    assert "| S2 churn, trust | tps [tx/s] ↑ | 200 | failed | 60.0 | – | 0.30 |" in table
    assert "- S2 PgBouncer: failed: boom" in table


# -- one quick run of the real thing ----------------------------------------------------------------------


def _require(condition: bool, what: str) -> None:
    """A missing tool skips on a developer machine and fails in CI, where it must be installed."""
    if not condition:
        missing(f"{what} is needed by the benchmark harness (scripts/install-deps.sh installs it)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    _require(shutil.which("pgbench") is not None, "pgbench")
    _require(bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")), "the PostgreSQL server")
    _require(os.access(targets.PGBOUNCER, os.X_OK), "PgBouncer")
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _outcome(summary: dict, sid: str, target: str) -> dict:
    return {key: m["targets"][target] for key, m in summary["scenarios"][sid]["metrics"].items()}


def _assert_numbers(summary: dict, target: str) -> None:
    """Every scenario has a number for `target`, except where it cannot apply: idle clients and pooler costs
    on direct connections; and PgBouncer's S3 may be reported failed by pgbench's prepared-statement error,
    which is a measured result (PgBouncer 1.18 has no prepared statements in transaction mode). maitred
    must run S3."""
    for sid in scenarios.SCENARIOS:
        for key, c in _outcome(summary, sid, target).items():
            where = f"{sid} {key} {target}: {c}"
            if target == "direct" and sid in ("S4", "S5", "S7"):
                assert c["status"] == "n/a", where
            elif sid == "S3" and target == "pgbouncer" and c["status"] == "failed":
                assert "prepared statement" in c["reason"], where
            else:
                assert c["status"] == "ok", where
                assert len(c["values"]) == 1 and isinstance(c["median"], float) and c["median"] > 0, where


def test_quick_run_prints_the_table_and_writes_markdown_and_json(quick_run):
    out, proc = quick_run
    md = glob.glob(str(out / "bench-*.md"))
    js = glob.glob(str(out / "bench-*.json"))
    assert len(md) == 1 and len(js) == 1
    with open(md[0]) as f:
        assert f.read().strip() == proc.stdout.strip()
    with open(js[0]) as f:
        summary = json.load(f)
    assert summary["machine"]["cores"] == os.cpu_count()
    assert {"PostgreSQL", "pgbench", "PgBouncer", "maitred"} <= set(summary["versions"])
    assert summary["targets"] == ["direct", "pgbouncer", "maitred"]
    assert list(summary["scenarios"]) == ["S1", "S2", "S2-scram", "S3", "S4", "S5", "S6", "S7"]


def test_quick_run_measures_every_scenario_on_direct_and_pgbouncer(quick_run):
    out, _ = quick_run
    with open(glob.glob(str(out / "bench-*.json"))[0]) as f:
        summary = json.load(f)
    _assert_numbers(summary, "direct")
    _assert_numbers(summary, "pgbouncer")


def test_quick_run_measures_every_scenario_on_maitred_with_ratios(quick_run):
    out, _ = quick_run
    with open(glob.glob(str(out / "bench-*.json"))[0]) as f:
        summary = json.load(f)
    _assert_numbers(summary, "maitred")
    s1 = summary["scenarios"]["S1"]["metrics"]["tps"]["ratios"]
    assert s1["maitred/pgbouncer"] > 0 and s1["maitred/direct"] > 0


def _hot_modules_loaded(pid: int) -> set[str]:
    """The pooler's compiled modules mapped into a running process."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.rsplit("/", 1)[-1].split(".")[0] for line in f if "/pooler/" in line and ".so" in line}


def test_the_pure_python_target_runs_the_hot_path_from_its_py_files_and_maitred_the_compiled_one():
    from pooler.compiled import COMPILED_MODULES, is_compiled

    if not is_compiled():
        missing("the compiled hot path (scripts/build-hotpath.sh)")
    settings = targets.PoolSettings(pool_size=2, max_client_conn=20, auth_type="trust")
    with targets.bench_postgres() as pg:
        with targets.MaitredPurePython(pg).serve(settings) as ep:
            assert _hot_modules_loaded(ep.pid) == set()
        with targets.Maitred(pg).serve(settings) as ep:
            assert _hot_modules_loaded(ep.pid) == set(COMPILED_MODULES)


def test_the_uvloop_floor_answers_pgbench_connection_churn_and_is_not_applicable_elsewhere():
    """The floor (bench/floor.py) serves S2 as a pooler would be measured, and only S2."""
    _require(shutil.which("pgbench") is not None, "pgbench")
    with targets.bench_postgres() as pg:
        floor = targets.UvloopFloor(pg)
        results = scenarios.run([floor], ["S1", "S2", "S2-scram"], scenarios.QUICK, "trust", say=lambda line: None)
    (s2,) = results["S2"]["floor"]
    assert s2["status"] == "ok" and s2["values"]["tps"] > 0, s2
    for sid in ("S1", "S2-scram"):
        (outcome,) = results[sid]["floor"]
        assert outcome["status"] == "n/a" and "the floor is for S2" in outcome["reason"], (sid, outcome)


def _fake_conntrack(tmp_path, monkeypatch, size: int, drops: tuple[int, int]) -> str:
    """The two kernel files conntrack.py reads, as files: tests cannot fill the real table on purpose."""
    (tmp_path / "nf_conntrack_max").write_text(f"{size}\n")
    (tmp_path / "stat").write_text("entries  clashres found new invalid ignore delete chainlength insert "
                                   "insert_failed drop early_drop icmp_error\n"
                                   + "".join(f"0002a665  00000000 00000000 00000000 00000008 00000000 00000000 "
                                             f"00000000 00000000 00000000 {d:08x} 00000000 00000000\n" for d in drops))
    monkeypatch.setattr(conntrack, "PROC", str(tmp_path))
    monkeypatch.setattr(conntrack, "STAT", str(tmp_path / "stat"))
    return str(tmp_path / "nf_conntrack_max")


def test_a_small_connection_tracking_table_is_enlarged_for_the_run_and_put_back(tmp_path, monkeypatch):
    path = _fake_conntrack(tmp_path, monkeypatch, 262_144, (0x2C, 0x4D))
    assert conntrack.tracking() and conntrack.drops() == 0x2C + 0x4D
    said = []
    with conntrack.roomy_table(said.append):
        assert open(path).read() == str(conntrack.ROOMY)
    assert open(path).read() == "262144"
    assert said == [f"connection tracking is on: its table raised from 262,144 to {conntrack.ROOMY:,} entries for "
                    "this run, so that connection churn does not fill it"]
    _fake_conntrack(tmp_path, monkeypatch, conntrack.ROOMY * 2, (0, 0))
    with conntrack.roomy_table(said.append):
        pass
    assert len(said) == 1 and open(path).read() == f"{conntrack.ROOMY * 2}\n"      # left alone


def test_a_run_during_which_the_kernel_dropped_packets_for_a_full_table_is_a_failed_run(tmp_path, monkeypatch):
    """scenarios.run_load reads the drop counters around the measured load: drops make it a failure."""
    _fake_conntrack(tmp_path, monkeypatch, conntrack.ROOMY, (0, 0))

    def load(ep, scale):
        (tmp_path / "stat").write_text((tmp_path / "stat").read_text().replace("00000000 00000000 00000000\n",
                                                                             "00000011 00000000 00000000\n", 1))
        return {"S2": scenarios.ok(tps=1000.0)}

    monkeypatch.setitem(scenarios.LOADS, "churn", load)
    (outcome,) = scenarios.run_load("churn", _Recorder(), scenarios.QUICK, "trust", ["S2"]).values()
    assert outcome["status"] == "failed" and "dropped 17 packet(s) for a full connection-tracking table" in \
        outcome["reason"], outcome


def test_the_real_connection_tracking_table_is_roomy_inside_a_run_and_as_it_was_after():
    said: list[str] = []
    if not conntrack.tracking():        # this kernel tracks no connections here: nothing to enlarge or say
        with conntrack.roomy_table(said.append):
            pass
        assert said == [] and conntrack.drops() == 0
        return
    path = os.path.join(conntrack.PROC, "nf_conntrack_max")
    before = int(open(path).read())
    with conntrack.roomy_table(said.append):
        assert int(open(path).read()) >= conntrack.ROOMY or os.geteuid() != 0
    assert int(open(path).read()) == before
    assert len(said) == (before < conntrack.ROOMY)


def _psql(port: int, sql: str) -> str:
    out = subprocess.run(["psql", "-X", "-tA", "-h", targets.HOST, "-p", str(port), "-U", targets.USER, "-d",
                          targets.DATABASE, "-c", sql], env=targets.client_env(), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("kind", [targets.UvloopRelayFloor, targets.CompiledRelayFloor])
def test_the_uvloop_relay_floor_relays_to_its_own_postgresql_connections_and_serves_s1_and_s2(kind, tmp_path,
                                                                                               monkeypatch):
    """The relay floor (bench/relay_floor.py), as Python and compiled, answers from PostgreSQL through the servers
    it keeps, and serves S1, S2 and S5 as a pooler would be measured; not S2 with SCRAM, nor prepared statements."""
    _require(shutil.which("pgbench") is not None and shutil.which("psql") is not None, "pgbench and psql")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))      # the compiled one is built here, not reused
    with targets.bench_postgres() as pg:
        floor = kind(pg)
        reason = floor.unavailable()
        if reason:
            missing(reason)
        with floor.serve(targets.PoolSettings(pool_size=2, max_client_conn=20, auth_type="trust")) as ep:
            assert _psql(ep.port, "SELECT inet_server_port()") == str(pg.port)
            count = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            assert _psql(pg.port, count) == "3"         # its two servers, and this psql
            compiled = glob.glob(str(tmp_path / "maitred" / "relay-floor-*" / "bench" / "relay_floor.*.so"))
            assert len(compiled) == (kind is targets.CompiledRelayFloor)
            with open(f"/proc/{ep.pid}/maps") as maps:
                assert any(path in maps.read() for path in compiled) == bool(compiled)
        results = scenarios.run([floor], ["S1", "S2", "S5", "S2-scram", "S3"], scenarios.QUICK, "scram-sha-256",
                                say=lambda line: None)
    for sid, key in (("S1", "tps"), ("S2", "tps"), ("S5", "cpu_ms_per_1000_tx")):
        (outcome,) = results[sid][floor.name]
        assert outcome["status"] == "ok" and outcome["values"][key] > 0, (sid, outcome)
    for sid in ("S2-scram", "S3"):
        (outcome,) = results[sid][floor.name]
        assert outcome["status"] == "n/a" and "the relay floor" in outcome["reason"], (sid, outcome)


# -- instructions per connection and per transaction (bench/instructions.py) ---------------------------------

CALLGRIND_HEAD = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 7\ncmd: python3\npart: 1\n"


def test_instruction_counts_come_from_callgrinds_summary_and_per_unit_is_the_runs_difference(tmp_path):
    out = tmp_path / "floor.callgrind"
    out.write_text(CALLGRIND_HEAD + "events: Ir\nsummary: 1234567\n\nfl=(1) x.c\nfn=(1) main\n0 1234567\n")
    assert instructions.totals(str(out)) == 1234567
    out.write_text(CALLGRIND_HEAD + "events: Ir\n")
    with pytest.raises(ValueError):
        instructions.totals(str(out))
    # 100 connections in 3,000,000 instructions and 500 in 11,000,000: 20,000 per connection, start-up cancelled
    assert instructions.per_unit(3_000_000, 11_000_000, 100, 500) == 20_000


def test_instruction_table_has_a_row_per_load_and_maitreds_ratios():
    rows = {"S2": {"pgbouncer": 35_000.0, "maitred": 140_000.0, "floor": 40_000.0, "baseline": 175_000.0},
            "S1": {"pgbouncer": 4_600.0, "maitred": 11_500.0, "floor": "n/a", "baseline": 11_500.0}}
    text = instructions.table(rows, {"pgbouncer": "PgBouncer", "maitred": "maitred", "floor": "uvloop floor",
                                     "baseline": "maitred at abc1234"})
    lines = text.splitlines()
    assert lines[0] == ("| load | instructions per | PgBouncer | maitred | uvloop floor | maitred at abc1234 "
                        "| maitred/maitred at abc1234 | maitred/PgBouncer | maitred/uvloop floor |")
    assert lines[2] == "| S2 | connection | 35,000 | 140,000 | 40,000 | 175,000 | 0.80 | 4.00 | 3.50 |"
    assert lines[3] == "| S1 | transaction | 4,600 | 11,500 | n/a | 11,500 | 1.00 | 2.50 | – |"


def test_instructions_run_counts_the_floors_connections_under_callgrind():
    """One small real run: the floor under callgrind, S2 counted, S1 not applicable to it."""
    _require(shutil.which("valgrind") is not None, "valgrind (Debian package valgrind)")
    _require(shutil.which("pgbench") is not None, "pgbench")
    proc = subprocess.run([sys.executable, "-m", "bench", "instructions", "--targets", "floor", "--loads", "S2,S1",
                           "--scale", "0.2"], cwd=REPO, env=targets.checkout_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in proc.stdout.splitlines() if line.startswith("| S"))}
    per_connection = float(rows["S2"][2].replace(",", ""))
    # uvloop's accept, transport, one read and one write per message, and close: tens of thousands, not zero
    # and not millions (a count that did not cancel start-up would be far larger)
    assert 5_000 < per_connection < 500_000, proc.stdout
    assert rows["S1"][2] == "n/a", proc.stdout
