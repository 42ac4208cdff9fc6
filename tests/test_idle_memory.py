"""What an idle logged-in client costs the pooler (the benchmark's S4), and a login that leaves nothing behind
for the garbage collector, since whatever a login leaves in a cycle may stay until a full collection."""
from __future__ import annotations

import asyncio
import gc
import struct
import time

import scramp

from bench import idle_clients, processes
from bench.targets import Endpoint
from pooler.auth import ClientAuth
from tests.support import PASSWORDS
from tests.wire import Wire

WARM_CLIENTS = 100      # the pool, its server and what a pool keeps for its clients are there before the count
IDLE_CLIENTS = 2000
# About 1.5 KiB today at this count (1.49 at 10,000, where fixed costs weigh less), of which uvloop's own objects
# for one connection are about 1.1; PgBouncer 1.18 needs 0.8. The bound catches a buffer or dict kept per client.
MAX_KIB_PER_CLIENT = 1.7


def _scram_login(auth: ClientAuth, password: str) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "app", password)
    first = client.get_client_first().encode()
    reply, done = auth.feed(b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)
    client.set_server_first(reply[9:].decode())
    reply, done = auth.feed(client.get_client_final().encode())
    assert done
    client.set_server_final(reply[9:].decode())


def test_a_scram_login_leaves_no_reference_cycle():
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        for secret in ("plain secret", None):    # a known user, and the made-up secret of an unknown one
            auth = ClientAuth("scram-sha-256", "app", secret)
            auth.start()
            if secret:
                _scram_login(auth, secret)
            del auth
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()


def test_an_idle_logged_in_client_costs_the_pooler_at_most_1_7_kib(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", default_pool_size=2, auth_type="md5",
                            max_client_conn=IDLE_CLIENTS + 100)
    endpoint = Endpoint(port=pooler.port, pid=pooler.proc.pid, user="app", password=PASSWORDS["app"],
                        database="app")

    async def measure() -> float:
        deadline = time.monotonic() + 120
        warm = await idle_clients.open_clients(endpoint, WARM_CLIENTS, 50, deadline)
        await asyncio.sleep(0.5)
        before = processes.rss_bytes([pooler.proc.pid])
        idle = await idle_clients.open_clients(endpoint, IDLE_CLIENTS, 50, deadline)
        await asyncio.sleep(0.5)
        after = processes.rss_bytes([pooler.proc.pid])
        for conn in warm + idle:
            conn.close()
        return (after - before) / IDLE_CLIENTS

    assert asyncio.run(measure()) / 1024 <= MAX_KIB_PER_CLIENT


def test_cancel_keys_fit_in_60_bits_where_the_int_a_client_keeps_is_32_bytes(pooler_factory):
    pooler = pooler_factory(pool_mode="transaction", auth_type="md5")
    pids = []
    for _ in range(20):
        with Wire(pooler.port) as wire:
            wire.login(password=PASSWORDS["app"])
            pids.append(wire.backend_key[0])
    assert max(pids) < 1 << 28      # the top 4 of the 64 bits are the pid's
