"""Where the pooler's log lines go, made cheap: PgBouncer logs a line per login and per logout by default
(log_connections, log_disconnections), so under a connection per transaction the log is on the connect path.

Two costs of Python's logging are removed: the date text is formatted once per second, not once per line
and handler, and lines are written once per event-loop iteration (all the lines of one iteration in one
write and one flush) instead of a write and a flush per line. A line is never held past the iteration that
made it; outside a running loop (start, shutdown, another thread) it is written at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref

LINE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


class Formatter(logging.Formatter):
    """logging's default line, `2026-12-01 02:03:04,567 [pid] LEVEL name: message`, with the date text of the
    current second cached."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return "%s,%03d" % (self._date, record.msecs)


_handlers: "weakref.WeakSet[IterationHandler]" = weakref.WeakSet()


class IterationHandler(logging.StreamHandler):
    """A stream handler that writes the lines of one event-loop iteration together, at its end."""

    def __init__(self, stream, owns_stream: bool = False) -> None:
        super().__init__(stream)
        self.owns_stream = owns_stream
        self.pending: list[str] = []
        self.scheduled_on: asyncio.AbstractEventLoop | None = None
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self.scheduled_on is not loop:
            self.scheduled_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self.scheduled_on = None
            if self.pending and self.stream is not None:
                self.stream.write("\n".join(self.pending) + "\n")
                self.pending.clear()
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        if self.owns_stream and self.stream is not None:
            self.stream.close()
            self.stream = None
        super().close()

    def drop_pending(self) -> None:
        """A forked child must not write its parent's lines again."""
        self.pending = []
        self.scheduled_on = None


def _after_fork_in_child() -> None:
    for handler in list(_handlers):
        handler.drop_pending()


os.register_at_fork(after_in_child=_after_fork_in_child)


def file_handler(path: str) -> IterationHandler:
    """The logfile, appended to as PgBouncer does (line-buffered by the handler, not by the file object)."""
    return IterationHandler(open(path, "a", encoding="utf-8"), owns_stream=True)


def use_cheap_records() -> None:
    """Skip what the line format never shows: the caller's file and line (a stack walk per record, logging's
    own documented optimisation) and the thread and multiprocessing names."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
