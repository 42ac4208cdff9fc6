"""A TCP relay that hands the pooler its bytes in pieces, each once the pooler has read the one before.

The pooler parses both byte streams it relays, and a message cut between two reads takes its own paths; the
kernel seldom cuts them on its own. The relay sends what goes to the pooler in pieces of one byte, or of seeded
random sizes of 1..7 bytes, and waits after each until the pooler's socket has received it and the pooler has
read it (asked of the kernel through sock_diag), so every cut is a cut the pooler sees between two reads. It
stands on either side: before PostgreSQL, the pooler connecting to it, to cut the server's answers
(`cuts="answers"`); or before the pooler, the clients connecting to it, to cut what they send (`cuts="requests"`).
A failure names its cut in the test id (`random-<seed>`); FRAGMENT_SEEDS=1,2,3 runs other seeds.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

SEEDS = [int(s) for s in os.environ.get("FRAGMENT_SEEDS", "7,2026").split(",")]
CUTS = ["bytes"] + [f"random-{seed}" for seed in SEEDS]

_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_INET_DIAG_INFO = 2
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8


class PoolerGone(ConnectionError):
    """The pooler closed its end: nothing more it could read."""


def _received(diag: socket.socket, local: tuple, remote: tuple) -> tuple[int, int]:
    """For the TCP socket local -> remote: the bytes it has received in all, and those its process has not
    read yet (sock_diag: tcp_info's tcpi_bytes_received, inet_diag_msg's idiag_rqueue). PoolerGone once its
    process has closed it."""
    sockid = (struct.pack("!HH", local[1], remote[1]) + socket.inet_aton(local[0]) + bytes(12)
              + socket.inet_aton(remote[0]) + bytes(12) + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF))
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0,
                          0xFFFFFFFF) + sockid
    diag.send(struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 0, 0) + request)
    reply = diag.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        raise PoolerGone("the pooler's socket is gone")
    if reply[16 + 1] not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
        raise PoolerGone("the pooler closed its socket")
    unread = struct.unpack_from("=I", reply, 16 + 4 + 48 + 4)[0]
    pos = 16 + 72
    while pos + 4 <= len(reply):
        length, kind = struct.unpack_from("=HH", reply, pos)
        if kind == _INET_DIAG_INFO:
            return struct.unpack_from("=Q", reply, pos + 4 + 128)[0], unread
        pos += (length + 3) & ~3
    raise ConnectionError("sock_diag gave no tcp_info")


class CuttingRelay:
    """127.0.0.1:port -> 127.0.0.1:target_port. `cuts="answers"`: the pooler connects, and what the target
    (PostgreSQL) answers goes back to it in pieces; `cuts="requests"`: the target is the pooler, and what the
    connecting client sends goes on in pieces. The other direction passes as it is. Pieces are of `cut` sizes
    ("bytes": 1; "random-<seed>": 1..7, from a generator seeded by the seed and the connection's number), each
    sent alone once the pooler has read everything before it."""

    def __init__(self, target_port: int, cut: str, cuts: str = "answers"):
        assert cuts in ("answers", "requests"), cuts
        self.target_port = target_port
        self.cut = cut
        self.cuts = cuts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.connections = 0      # connections relayed
        self.pieces = 0           # pieces sent to the pooler
        self.largest = 0          # the largest of them
        self.closing = False
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _sizes(self, number: int):
        if self.cut == "bytes":
            while True:
                yield 1
        rng = random.Random(f"{self.cut}/{number}")
        while True:
            yield rng.randint(1, 7)

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                accepted, _ = self.listener.accept()
            except OSError:
                return
            try:
                onward = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError as exc:
                self.errors.append(f"cannot reach port {self.target_port}: {exc!r}")
                accepted.close()
                continue
            for sock in (accepted, onward):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sockets.append(sock)
            if self.cuts == "answers":      # the pooler is the one that connected
                self._spawn(self._pass, accepted, onward)
                self._spawn(self._cut, onward, accepted, self._sizes(number))
            else:                           # the pooler is the one connected to
                self._spawn(self._pass, onward, accepted)
                self._spawn(self._cut, accepted, onward, self._sizes(number))
            number += 1
            self.connections = number

    def _pass(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)      # a reset, too, ends the stream for the other side
        except OSError:
            pass

    def _cut(self, source: socket.socket, pooler: socket.socket, sizes) -> None:
        """What `source` sends, to the pooler's end of `pooler`, in pieces."""
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
        pooler_end = (pooler.getpeername(), pooler.getsockname())
        try:
            sent = 0
            while data := source.recv(65536):
                pos = 0
                while pos < len(data):
                    piece = data[pos:pos + next(sizes)]
                    pooler.sendall(piece)
                    pos += len(piece)
                    sent += len(piece)
                    self.pieces += 1
                    self.largest = max(self.largest, len(piece))
                    self._wait_read(diag, pooler_end, sent)
            pooler.shutdown(socket.SHUT_WR)
        except PoolerGone as exc:
            # A client's connection the pooler closed (after Terminate, a refusal) has the rest unread; a server
            # connection is the pooler's to close only once PostgreSQL's answer is through.
            if self.cuts == "answers" and not self.closing:
                self.errors.append(repr(exc))
        except (OSError, ValueError) as exc:      # ValueError: a socket closed by close()
            if not self.closing and not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                self.errors.append(repr(exc))
        except AssertionError as exc:
            self.errors.append(str(exc))
        finally:
            diag.close()

    @staticmethod
    def _wait_read(diag: socket.socket, pooler_end: tuple, sent: int) -> None:
        """Until the pooler's socket has received all `sent` bytes and the pooler has read them."""
        deadline = time.monotonic() + 10
        while True:
            received, unread = _received(diag, *pooler_end)
            if received >= sent and unread == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the pooler did not read a piece within 10 s ({received} of {sent} bytes "
                                     f"received, {unread} unread)")
            time.sleep(0)

    def check(self) -> None:
        """The relay did cut, and met no trouble of its own."""
        assert not self.errors, f"relay ({self.cut}): {self.errors}"
        assert self.pieces > 0 and self.largest <= (1 if self.cut == "bytes" else 7), (self.pieces, self.largest)

    def close(self) -> None:
        self.closing = True
        self.listener.shutdown(socket.SHUT_RDWR)     # wakes the accept
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self.threads:
            thread.join(5)
