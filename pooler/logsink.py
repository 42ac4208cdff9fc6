"""Where the pooler's log lines go, made cheap: PgBouncer logs a line per login and per logout by default
(log_connections, log_disconnections), so under a connection per transaction the log is on the connect path.

The costs of Python's logging are cut: the line is put together directly in its one shape, with the date text
formatted once per second and the pid asked of the OS once per process, not once per record; the lines about
connections skip the LogRecord and logging's walk altogether when they go to the pooler's own handlers only
(`info`); and lines are written together, at most HOLD after the first of them (all the lines of that time in
one write and one flush; to the logfile one os.write of their bytes), instead of a write and a flush per line:
under a connection per transaction a write then carries the lines of a dozen connections, where one per event-loop
iteration carried one or two. A line waits HOLD at most, until the loop's first timer turn after that; outside
a running loop (start, shutdown) it is written at once.

Compiled, the connection lines' path (`info`, Clock, Batch) is typed by logsink.pxd: it reads C fields and
makes C calls from the line's text to the logfile's write.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import time
import weakref

LINE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
_MSECS = tuple("%03d" % ms for ms in range(1000))     # the stamp's milliseconds, as logging's %03d writes them

_pid = os.getpid()      # for records made without it (use_cheap_records); a forked child takes its own


class Clock:
    """The date text of the current second, formatted once per second, and the ` [pid] INFO name: ` middle of an
    INFO line per logger name: what every line's stamp needs, kept where the connection lines reach it in C."""

    def __init__(self, converter) -> None:
        self.converter = converter      # the Formatter's (time.localtime, or time.gmtime if a user set that)
        self.second = -1
        self.date = ""
        self.middles: dict[str, str] = {}      # info_line's middles, by logger name (pid: _pid's)

    def stamp(self, created: float, msecs: float) -> str:
        if int(created) != self.second:
            self.turn(created)
        return f"{self.date},{'%03d' % msecs}"     # %03d, as logging's: a float msecs truncated

    def turn(self, created: float) -> None:
        second = int(created)
        self.date = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        self.second = second

    def info_line(self, created: float, msecs: int, name: str, message: str) -> str:
        """An INFO line of this process, as Formatter.format writes it, with the milliseconds' text and the
        middle looked up rather than formatted: two lines per connection."""
        if int(created) != self.second:
            self.turn(created)
        middle = self.middles.get(name)
        if middle is None:
            middle = self.middles[name] = f" [{_pid}] INFO {name}: "
        return f"{self.date},{_MSECS[msecs]}{middle}{message}"


class Formatter(logging.Formatter):
    """logging's default line, `2026-12-01 02:03:04,567 [pid] LEVEL name: message`, with the date text of the
    current second cached (Clock)."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT)
        self.clock = Clock(self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.clock.stamp(record.created, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        """LINE_FORMAT's line, put together without logging's generic %-style pass."""
        if record.process is None:
            record.process = _pid
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        return (f"{self.clock.stamp(record.created, record.msecs)} [{record.process}] {record.levelname} "
                f"{record.name}: {record.message}")


# How long a line may wait for the lines that follow it, in seconds: invisible to a person reading the log, and
# under load the lines of many connections in one write.
HOLD = 0.001


class Batch:
    """A BatchHandler's lines waiting for their write, at most HOLD after the first of them."""

    def __init__(self, handler: "BatchHandler") -> None:
        self.lines: list[str] = []
        self.scheduled_on: asyncio.AbstractEventLoop | None = None
        self.handler = handler
        self.fd = -1        # the handler's raw descriptor (_raw_fd), which `write` writes to; -1: its flush writes

    def add(self, line: str) -> None:
        """Hold `line` for at most HOLD, with those that come meanwhile (at once outside a running loop)."""
        self.lines.append(line)
        scheduled = self.scheduled_on
        if scheduled is not None and scheduled.is_running():
            return          # the write is on its way
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.handler.flush()
            return
        self.scheduled_on = loop
        loop.call_later(HOLD, self.write if self.fd >= 0 else self.handler.flush)

    def write(self) -> None:
        """HOLD is up, for the logfile: the lines' bytes in one write, under the handler's lock as its flush takes
        it (the handler's path costs a few thousand instructions more per write)."""
        lock = self.handler.lock
        lock.acquire()
        try:
            self.scheduled_on = None
            if self.lines and self.fd >= 0:
                lines, self.lines = self.lines, []     # a line `info` adds meanwhile waits for the next
                _write_all(self.fd, ("\n".join(lines) + "\n").encode())
        finally:
            lock.release()


_handlers: "weakref.WeakSet[BatchHandler]" = weakref.WeakSet()


class BatchHandler(logging.StreamHandler):
    """A stream handler that writes its lines together, at most HOLD after the first (Batch)."""

    def __init__(self, stream, owns_stream: bool = False) -> None:
        super().__init__(stream)
        self.owns_stream = owns_stream
        self.batch = Batch(self)
        self.fd = _raw_fd(stream)      # -1: written through the stream's own layers
        _handlers.add(self)

    @property
    def fd(self) -> int:
        return self.batch.fd

    @fd.setter
    def fd(self, fd: int) -> None:
        self.batch.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.batch.add(line)

    def flush(self) -> None:
        with self.lock:     # the handler's RLock itself: acquire() and release() are two calls more per write
            batch = self.batch
            batch.scheduled_on = None
            if batch.lines and self.stream is not None:
                lines, batch.lines = batch.lines, []     # a line `info` adds meanwhile waits for the next
                text = "\n".join(lines) + "\n"
                if self.fd < 0:
                    self.stream.write(text)
                else:
                    _write_all(self.fd, text.encode())
                    return
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()

    def setStream(self, stream):
        old = super().setStream(stream)
        self.fd = _raw_fd(self.stream)
        return old

    def close(self) -> None:
        self.flush()
        if self.owns_stream and self.stream is not None:
            self.stream.close()
            self.stream = None
            self.fd = -1
        super().close()

    def drop_pending(self) -> None:
        """A forked child must not write its parent's lines again."""
        self.batch.lines = []
        self.batch.scheduled_on = None


def _raw_fd(stream) -> int:
    """The descriptor of an unbuffered binary file (the logfile), written with os.write: the text layer's
    encoding, copy and flush per write cost more than the write itself. -1 for any other stream."""
    return stream.fileno() if type(stream) is io.FileIO else -1


def _write_all(fd: int, data: bytes) -> None:
    """The bytes in one write (more only if the OS takes part of them), as the text layer's flush does."""
    written = os.write(fd, data)
    while written < len(data):
        data = data[written:]
        written = os.write(fd, data)


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    for handler in list(_handlers):
        handler.drop_pending()
        if isinstance(handler.formatter, Formatter):
            handler.formatter.clock.middles = {}      # they name the parent's pid


os.register_at_fork(after_in_child=_after_fork_in_child)


# The pooler's own handlers' clocks and batches, when they are the only handlers (route_lines).
_routes: list[tuple[Clock, Batch]] = []


def route_lines(handlers: list[logging.Handler]) -> None:
    """Let `info` write straight to `handlers` when they are the root logger's only ones, all BatchHandlers
    with the Formatter, and no filter is set: the pooler's own logging (main.setup_logging), which nothing
    changes afterwards."""
    direct = all(type(h) is BatchHandler and type(h.formatter) is Formatter and not h.filters for h in handlers)
    _routes[:] = [(h.formatter.clock, h.batch) for h in handlers] if direct and handlers else []


def info_enabled(logger: logging.Logger) -> bool:
    """logger.isEnabledFor(INFO), from the answer logging keeps per logger once it has one (setLevel and
    logging.disable clear it): each connection line asks, and the method is a Python-level call."""
    if logger.disabled:
        return False
    answer = logger._cache.get(logging.INFO)
    return logger.isEnabledFor(logging.INFO) if answer is None else answer


def info(logger: logging.Logger, text: str) -> None:
    """An INFO line, exactly as logger.info("%s", text) writes it (the caller checked the level), without a
    LogRecord and logging's walk when the lines go to the pooler's own handlers only: PgBouncer logs a line per
    login and per logout by default, and that walk is a sizeable share of a connection's setup."""
    if not _routes or logger.filters:
        logger.info("%s", text)
        return
    created = time.time()
    msecs = int((created - int(created)) * 1000)
    name = logger.name
    for clock, batch in _routes:
        batch.add(clock.info_line(created, msecs, name, text))


def file_handler(path: str) -> BatchHandler:
    """The logfile, appended to as PgBouncer does, in UTF-8; unbuffered, as the handler writes its batch's
    lines in one write of their bytes (_raw_fd)."""
    return BatchHandler(open(path, "ab", buffering=0), owns_stream=True)


def reopen_logfile(path: str) -> None:
    """RELOAD and SIGHUP reopen the logfile, as PgBouncer's do: once logrotate has moved it away, the lines go to a
    new file of that name (to the new name when `logfile` changed, nowhere when it was emptied)."""
    root = logging.getLogger()
    files = [h for h in root.handlers if type(h) is BatchHandler and h.owns_stream]
    for handler in files:
        if path:
            old = handler.setStream(open(path, "ab", buffering=0))      # setStream flushes what is pending
            if old is not None:
                old.close()
        else:
            root.removeHandler(handler)
            handler.close()
    if path and not files:
        handler = file_handler(path)
        handler.setFormatter(Formatter())
        for silent in [h for h in root.handlers if type(h) is logging.NullHandler]:     # -q had nowhere to log
            root.removeHandler(silent)
        root.addHandler(handler)
    route_lines(root.handlers)


def level_for(verbose: int) -> int:
    """The root logger's level for a verbosity (-v switches plus the `verbose` setting): debug from 1 on."""
    return logging.DEBUG if verbose > 0 else logging.INFO


def use_cheap_records() -> None:
    """Skip what the line format never shows: the caller's file and line (a stack walk per record, logging's
    own documented optimisation) and the thread and multiprocessing names; and the pid, a system call per
    record, which the Formatter knows."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
