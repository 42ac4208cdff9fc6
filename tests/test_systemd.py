"""Debian's pgbouncer.service is `Type=notify`: systemd waits for READY=1 from the main process, so maitred
sends it, from the process systemd started, once it listens."""
from __future__ import annotations

import os
import socket
import struct

import psycopg
import pytest

SCM_CREDENTIALS = 2


def ready_from(sock: socket.socket) -> tuple[bytes, int]:
    """The next notification and the pid that sent it (SO_PASSCRED, as systemd checks NotifyAccess=main)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pids = [struct.unpack("iII", cmsg[2][:12])[0] for cmsg in ancillary
            if cmsg[0] == socket.SOL_SOCKET and cmsg[1] == SCM_CREDENTIALS]
    return data, pids[0]


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path, monkeypatch):
    """A NOTIFY_SOCKET as systemd sets it: a socket file, or an abstract name written with a leading `@`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(20)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        address = f"@maitred-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + address[1:])
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield sock
    sock.close()


def test_the_pooler_tells_systemd_it_is_ready_once_it_listens(pooler_factory, notify_socket):
    pooler = pooler_factory(pool_mode="transaction")
    assert ready_from(notify_socket) == (b"READY=1", pooler.proc.pid)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_with_workers_the_supervisor_tells_systemd(pooler_factory, notify_socket):
    pooler = pooler_factory(pool_mode="transaction", maitred={"workers": 2})
    assert ready_from(notify_socket) == (b"READY=1", pooler.proc.pid)
