"""[peers] and peer_id, as PgBouncer: the cancel key names the process that gave it out, and a cancel that
arrives at another peer is forwarded there; so two poolers on one port (so_reuseport) restart one at a time."""
from __future__ import annotations


import psycopg
import pytest

from pooler import peers
from pooler.config import ConfigError, PeerEntry, load_config
from maitred.local.postgres import free_port
from tests.support import PASSWORDS, wait_for
from tests.test_admin import USERS
from tests.test_cancel import cancel_from_another_thread, wait_until_sleeping
from tests.wire import Wire, query, send_cancel


def test_the_cancel_key_carries_the_peer_id_where_pgbouncer_puts_it():
    key = peers.stamp(int.from_bytes(bytes(range(0x81, 0x89)), "big"), 0x1234)
    raw = key.to_bytes(8, "big")
    assert (raw[1], raw[2]) == (0x34, 0x12)         # PgBouncer: cancel_key[1] low byte, cancel_key[2] high byte
    assert raw[7] & peers.TTL_MASK == 3 and raw[0] & 0x80 == 0
    assert (raw[0] | 0x80, raw[3:7]) == (0x81, bytes(range(0x84, 0x88)))
    assert peers.owner(key) == 0x1234 and peers.ttl(key) == 3
    assert peers.stamp(12345, 0) == 12345


def test_a_peer_is_reached_on_its_unix_socket_directory_or_its_host_and_port():
    assert peers.address(PeerEntry(1, host="/run/p1", port=6433)) == "unix:/run/p1/.s.PGSQL.6433"
    assert peers.address(PeerEntry(2, host="10.0.0.2", port=6432)) == "10.0.0.2:6432"


def test_the_peers_section_is_read_as_pgbouncer_writes_it(tmp_path):
    path = tmp_path / "pooler.ini"
    path.write_text("[pgbouncer]\npeer_id = 1\n[peers]\n2 = host=/tmp/p2 port=7432 pool_size=3\n3 = host=10.1.1.1\n")
    config = load_config(path)
    assert config.get("peer_id") == 1
    assert config.peers == {2: PeerEntry(2, "/tmp/p2", 7432, 3), 3: PeerEntry(3, "10.1.1.1", 6432, None)}


@pytest.mark.parametrize("text, error", [
    ("[peers]\n0 = host=/tmp/p\n", "invalid peer id '0'"),
    ("[peers]\n16384 = host=/tmp/p\n", "invalid peer id '16384'"),
    ("[peers]\n2 = port=6432\n", "peer 2 has no host"),
    ("[pgbouncer]\npeer_id = 16384\n", "peer ids in use would go up to 16384, above 16383"),
    ("[pgbouncer]\npeer_id = 16383\n[maitred]\nworkers = 2\n", "peer ids in use would go up to 16384"),
])
def test_a_wrong_peer_setting_stops_the_load_saying_why(tmp_path, text, error):
    path = tmp_path / "pooler.ini"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_a_cancel_sent_to_another_peer_reaches_the_query(pooler_factory, pg, tmp_path):
    one_port, two_port = free_port(), free_port()
    one = pooler_factory(pool_mode="transaction", peer_id=1, port=one_port, unix_socket_dir=folder(tmp_path, 1),
                         peers={2: f"host={folder(tmp_path, 2)} port={two_port}"})
    two = pooler_factory(pool_mode="transaction", peer_id=2, port=two_port, unix_socket_dir=folder(tmp_path, 2),
                         peers={1: f"host={folder(tmp_path, 1)} port={one_port}"})
    with Wire(one.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        pid, key = wire.backend_key
        assert peers.owner(pid << 32 | key) == 1
        wire.send(query("SELECT pg_sleep(60)"))
        wait_until_sleeping(pg)
        send_cancel(two.port, pid, key)             # the wrong pooler: it forwards to peer 1
        assert wire.expect_error(limit=10).sqlstate == "57014"


def test_a_cancel_for_an_unknown_peer_is_dropped(pooler_factory, pg, tmp_path):
    pooler = pooler_factory(pool_mode="transaction", peer_id=1, unix_socket_dir=folder(tmp_path, 1))
    with Wire(pooler.port) as wire:
        wire.login(user="app", password=PASSWORDS["app"])
        pid, key = wire.backend_key
        wire.send(query("SELECT pg_sleep(1), 'done'"))
        wait_until_sleeping(pg)
        other = peers.stamp(pid << 32 | key, 7)
        send_cancel(pooler.port, other >> 32, other & 0xffffffff)
        messages = wire.read_until(b"Z", limit=10)
        assert b"E" not in [kind for kind, _ in messages]
    wait_for(lambda: "cancel request for peer 7 dropped: no such peer" in pooler.log_text(), timeout=5,
             message="the log to say why")


def test_rolling_restart_on_one_port_keeps_cancels_working_for_the_old_process(pooler_factory, pg, tmp_path):
    """PgBouncer's so_reuseport rolling restart: the new process starts on the same port, the old one gets
    SHUTDOWN WAIT_FOR_CLIENTS and finishes its clients' work, and their cancels, arriving at the new one, are
    forwarded to it over its Unix socket."""
    port = free_port()
    common = dict(pool_mode="transaction", so_reuseport=1, userlist=USERS, admin_users="admin", port=port)
    old = pooler_factory(peer_id=1, unix_socket_dir=folder(tmp_path, 1), expect_alive=False,
                         peers={2: f"host={folder(tmp_path, 2)} port={port}"}, **common)
    with psycopg.connect(old.dsn(), autocommit=True) as client:
        new = pooler_factory(peer_id=2, unix_socket_dir=folder(tmp_path, 2),
                             peers={1: f"host={folder(tmp_path, 1)} port={port}"}, **common)
        wait_for(lambda: "process up" in new.log_text(), message="the new process to listen")   # the old one answered
        with psycopg.connect(f"host={folder(tmp_path, 1)} port={port} user=admin dbname=pgbouncer "
                             f"password={USERS['admin']}", autocommit=True) as con:
            con.execute("SHUTDOWN WAIT_FOR_CLIENTS")
        # Only the new process accepts on the port now; the old one still serves its client.
        assert client.execute("SELECT 1").fetchone() == (1,)
        # The cancel is a new TCP connection to the port: only the new process takes it.
        thread = cancel_from_another_thread(client, pg)
        with pytest.raises(psycopg.errors.QueryCanceled):
            client.execute("SELECT pg_sleep(60)")
        thread.join(30)
        assert client.execute("SELECT 2").fetchone() == (2,)
    wait_for(lambda: not old.alive(), timeout=10, message="the old process to exit once its client left")
    with psycopg.connect(new.dsn(), autocommit=True) as client:
        assert client.execute("SELECT 1").fetchone() == (1,)


def folder(tmp_path, peer_id: int) -> str:
    """Each peer's Unix socket in a folder of its own, as PgBouncer's rolling restarts need."""
    path = tmp_path / f"peer{peer_id}"
    path.mkdir(exist_ok=True)
    return str(path)


def test_rolling_restart_of_poolers_with_workers_keeps_cancels_working(pooler_factory, pg, tmp_path):
    """Two workers each: the old pooler's workers have peer ids 1 and 2, the new one's 3 and 4, and each lists
    the other's ids at the other's Unix socket. A cancel for the old pooler's client reaches a new worker, goes
    to the old pooler's socket, lands on either old worker and, if need be, on to its sibling."""
    port = free_port()
    common = dict(pool_mode="transaction", so_reuseport=1, userlist=USERS, admin_users="admin", port=port,
                  maitred={"workers": 2})
    old = pooler_factory(peer_id=1, unix_socket_dir=folder(tmp_path, 1), expect_alive=False,
                         peers={n: f"host={folder(tmp_path, 3)} port={port}" for n in (3, 4)}, **common)
    wait_for(lambda: old.log_text().count(f"listening on 127.0.0.1:{port}") == 2, message="the old workers")
    clients = [psycopg.connect(old.dsn(), autocommit=True) for _ in range(4)]    # on either old worker
    new = pooler_factory(peer_id=3, unix_socket_dir=folder(tmp_path, 3),
                         peers={n: f"host={folder(tmp_path, 1)} port={port}" for n in (1, 2)}, **common)
    wait_for(lambda: new.log_text().count(f"listening on 127.0.0.1:{port}") == 2, message="the new workers")
    with psycopg.connect(f"host={folder(tmp_path, 1)} port={port} user=pgbouncer dbname=pgbouncer",
                         autocommit=True, prepare_threshold=None) as con:
        con.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    for client in clients:
        thread = cancel_from_another_thread(client, pg)   # only the new pooler's workers accept on the port now
        with pytest.raises(psycopg.errors.QueryCanceled):
            client.execute("SELECT pg_sleep(60)")
        thread.join(30)
        client.close()
    wait_for(lambda: not old.alive(), timeout=10, message="the old pooler to exit once its clients left")
