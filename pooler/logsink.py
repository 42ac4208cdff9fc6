"""Where the pooler's log lines go, made cheap: PgBouncer logs a line per login and per logout by default
(log_connections, log_disconnections), so under a connection per transaction the log is on the connect path.

The costs of Python's logging are cut: the line is put together directly in its one shape, with the date text
formatted once per second and the pid asked of the OS once per process, not once per record; the lines about
connections skip the LogRecord and logging's walk altogether when they go to the pooler's own handlers only
(`info`); and lines are written once per event-loop iteration (all the lines of one iteration in one write and
one flush; to the logfile one os.write of their bytes) instead of a write and a flush per line. A line is never
held past the iteration that made it; outside a running loop (start, shutdown) it is written at once.
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


class Formatter(logging.Formatter):
    """logging's default line, `2026-12-01 02:03:04,567 [pid] LEVEL name: message`, with the date text of the
    current second cached."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT)
        self._second = -1
        self._date = ""
        self._middles: dict[str, str] = {}     # info_line's ` [pid] INFO name: `, by logger name (pid: _pid's)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        if int(created) != self._second:
            self._turn(created)
        return f"{self._date},{'%03d' % msecs}"     # %03d, as logging's: a float msecs truncated

    def _turn(self, created: float) -> None:
        """The date text of `created`'s second, formatted once per second (stamp and info_line check the second)."""
        second = int(created)
        self._date = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        self._second = second

    def format(self, record: logging.LogRecord) -> str:
        """LINE_FORMAT's line, put together without logging's generic %-style pass."""
        if record.process is None:
            record.process = _pid
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        return (f"{self.stamp(record.created, record.msecs)} [{record.process}] {record.levelname} {record.name}: "
                f"{record.message}")

    def info_line(self, created: float, msecs: int, name: str, message: str) -> str:
        """An INFO line of this process (`info`), as `format` writes it, with `stamp` inlined and the milliseconds'
        text and the ` [pid] INFO name: ` middle looked up rather than formatted: two lines per connection."""
        if int(created) != self._second:
            self._turn(created)
        middle = self._middles.get(name)
        if middle is None:
            middle = self._middles[name] = f" [{_pid}] INFO {name}: "
        return f"{self._date},{_MSECS[msecs]}{middle}{message}"


_handlers: "weakref.WeakSet[IterationHandler]" = weakref.WeakSet()


class IterationHandler(logging.StreamHandler):
    """A stream handler that writes the lines of one event-loop iteration together, at its end."""

    def __init__(self, stream, owns_stream: bool = False) -> None:
        super().__init__(stream)
        self.owns_stream = owns_stream
        self.fd = _raw_fd(stream)      # -1: written through the stream's own layers
        self.pending: list[str] = []
        self.scheduled_on: asyncio.AbstractEventLoop | None = None
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Hold `line` for the end of this iteration (at once outside a running loop)."""
        self.pending.append(line)
        scheduled = self.scheduled_on
        if scheduled is not None and scheduled.is_running():
            return          # this iteration's flush is already on its way
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if scheduled is not loop:
            self.scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:     # the handler's RLock itself: acquire() and release() are two calls more per iteration
            self.scheduled_on = None
            if self.pending and self.stream is not None:
                pending, self.pending = self.pending, []     # a line `info` adds meanwhile waits for the next
                text = "\n".join(pending) + "\n"
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
        self.pending = []
        self.scheduled_on = None


def _raw_fd(stream) -> int:
    """The descriptor of an unbuffered binary file (the logfile), written with os.write: the text layer's
    encoding, copy and flush per iteration cost more than the write itself. -1 for any other stream."""
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
            handler.formatter._middles = {}      # they name the parent's pid


os.register_at_fork(after_in_child=_after_fork_in_child)


_direct: list[IterationHandler] = []     # the pooler's own handlers, when they are the only ones (route_lines)


def route_lines(handlers: list[logging.Handler]) -> None:
    """Let `info` write straight to `handlers` when they are the root logger's only ones, all IterationHandlers
    with the Formatter, and no filter is set: the pooler's own logging (main.setup_logging), which nothing
    changes afterwards."""
    direct = all(type(h) is IterationHandler and type(h.formatter) is Formatter and not h.filters for h in handlers)
    _direct[:] = handlers if direct and handlers else []


def info(logger: logging.Logger, text: str) -> None:
    """An INFO line, exactly as logger.info("%s", text) writes it (the caller checked the level), without a
    LogRecord and logging's walk when the lines go to the pooler's own handlers only: PgBouncer logs a line per
    login and per logout by default, and that walk is a sizeable share of a connection's setup."""
    if not _direct or logger.filters:
        logger.info("%s", text)
        return
    created = time.time()
    msecs = int((created - int(created)) * 1000)
    for handler in _direct:
        handler.add(handler.formatter.info_line(created, msecs, logger.name, text))


def file_handler(path: str) -> IterationHandler:
    """The logfile, appended to as PgBouncer does, in UTF-8; unbuffered, as the handler writes an iteration's
    lines in one write of their bytes (_raw_fd)."""
    return IterationHandler(open(path, "ab", buffering=0), owns_stream=True)


def use_cheap_records() -> None:
    """Skip what the line format never shows: the caller's file and line (a stack walk per record, logging's
    own documented optimisation) and the thread and multiprocessing names; and the pid, a system call per
    record, which the Formatter knows."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
