"""The pooler's log sink: lines are written together, at most logsink.HOLD after the first of them;
outside a loop at once; the line keeps logging's default shape; a forked child does not repeat its parent's."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import re

from pooler import logsink


def sink() -> tuple[logging.Logger, io.StringIO, logsink.BatchHandler]:
    out = io.StringIO()
    handler = logsink.BatchHandler(out)
    handler.setFormatter(logsink.Formatter())
    logger = logging.getLogger(f"maitred.test.sink{id(out)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out, handler


def test_lines_are_written_together_within_hold_of_the_first():
    logger, out, _ = sink()

    async def main() -> list[str]:
        seen = []
        logger.info("first")
        await asyncio.sleep(0)
        logger.info("second")
        seen.append(out.getvalue())          # an iteration later: both still wait
        await asyncio.sleep(logsink.HOLD * 3)
        seen.append(out.getvalue())          # HOLD later: both lines, in order, in one write
        logger.info("third")
        await asyncio.sleep(logsink.HOLD * 3)
        seen.append(out.getvalue())
        return seen

    during, after_one, after_two = asyncio.run(main())
    assert during == ""
    assert [line.split(": ", 1)[1] for line in after_one.splitlines()] == ["first", "second"]
    assert after_two.splitlines()[-1].endswith(": third")


def test_outside_a_loop_a_line_is_written_at_once_in_loggings_default_shape():
    logger, out, _ = sink()
    logger.warning("hello %s", "world")
    line = out.getvalue()
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} \[{os.getpid()}\] WARNING "
                        rf"{re.escape(logger.name)}: hello world\n", line), line
    plain = logging.Formatter(logsink.LINE_FORMAT)
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "x", (), None)
    assert logsink.Formatter().format(record) == plain.format(record)


def _file_logger(path, name: str) -> tuple[logging.Handler, logging.Logger]:
    """A logger of its own that writes to `path` through the pooler's file handler and formatter."""
    handler = logsink.file_handler(str(path))
    handler.setFormatter(logsink.Formatter())
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return handler, logger


def test_a_forked_child_does_not_write_its_parents_pending_lines(tmp_path):
    path = tmp_path / "log"
    handler, logger = _file_logger(path, "maitred.test.fork")

    async def main() -> None:
        logger.info("parent's line")
        pid = os.fork()                            # the line is still pending
        if pid == 0:
            logger.info("child's line")
            handler.flush()
            os._exit(0)
        os.waitpid(pid, 0)

    asyncio.run(main())
    handler.close()
    lines = [line.split(": ", 1)[1] for line in path.read_text().splitlines()]
    assert sorted(lines) == ["child's line", "parent's line"]


def _direct_and_logged(logger: logging.Logger, handler: logsink.BatchHandler, text: str, written) -> None:
    """`text` once straight to `handler` (`info`) and once through logging, in one loop iteration; `written()`
    is what the handler has written so far."""
    async def main() -> None:
        logsink.route_lines([handler])
        try:
            logsink.info(logger, text)
            logger.info("%s", text)
            assert not written()            # both wait for the batch's write
            await asyncio.sleep(logsink.HOLD * 3)
        finally:
            logsink.route_lines([])

    asyncio.run(main())


def test_a_connection_line_written_past_logging_reads_as_logging_writes_it():
    logger, out, handler = sink()
    text = "C-0x7f00: db/app@127.0.0.1:5000 closing because: client close request (age=0s)"
    _direct_and_logged(logger, handler, text, out.getvalue)
    direct, logged = out.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.fullmatch(stamp + re.escape(f"[{os.getpid()}] INFO {logger.name}: {text}"), direct), direct
    assert direct.split(" ", 2)[2] == logged.split(" ", 2)[2]


def test_a_logger_with_a_filter_still_filters_connection_lines():
    logger, out, handler = sink()
    logger.addFilter(lambda record: "secret" not in record.getMessage())
    logsink.route_lines([handler])
    try:
        logsink.info(logger, "a secret line")
        logsink.info(logger, "a plain line")
    finally:
        logsink.route_lines([])
    assert [line.split(": ", 1)[1] for line in out.getvalue().splitlines()] == ["a plain line"]


def test_a_forked_child_writes_its_own_pid(tmp_path):
    path = tmp_path / "log"
    handler, logger = _file_logger(path, "maitred.test.forkpid")
    logsink.route_lines([handler])
    try:
        logsink.info(logger, "parent's line")      # the parent's pid is in the formatter's kept line middles
        pid = os.fork()
        if pid == 0:
            logsink.info(logger, "child's line")
            os._exit(0)
        os.waitpid(pid, 0)
    finally:
        logsink.route_lines([])
    handler.close()
    text = path.read_text()
    assert f"[{os.getpid()}] INFO maitred.test.forkpid: parent's line" in text
    assert f"[{pid}] INFO maitred.test.forkpid: child's line" in text


def test_the_logfile_holds_the_utf8_bytes_of_its_lines_as_a_text_file_would(tmp_path):
    path = tmp_path / "log"
    handler, logger = _file_logger(path, "maitred.test.bytes")
    text = "C-0x7f00: dbé/üser@127.0.0.1:5000 login attempt: db=dbé user=üser tls=no"
    _direct_and_logged(logger, handler, text, path.read_bytes)
    logger.warning("after the loop: ✓")         # outside a loop, at once
    written = path.read_bytes()
    handler.close()
    lines = written.decode("utf-8").splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [text, text, "after the loop: ✓"]
    assert written.endswith("after the loop: ✓\n".encode("utf-8"))


def test_info_enabled_answers_as_is_enabled_for_after_each_change_of_level():
    logger = logging.getLogger("maitred.test.enabled")
    try:
        for change in (lambda: logger.setLevel(logging.WARNING), lambda: logger.setLevel(logging.DEBUG),
                       lambda: logging.disable(logging.INFO), lambda: logging.disable(logging.NOTSET),
                       lambda: setattr(logger, "disabled", True), lambda: setattr(logger, "disabled", False)):
            change()
            logger.isEnabledFor(logging.INFO)       # fills logging's cache, which info_enabled reads
            assert logsink.info_enabled(logger) == (not logger.disabled and logger.isEnabledFor(logging.INFO))
        logger.setLevel(logging.ERROR)
        assert not logsink.info_enabled(logger)     # before logging's cache has an answer
    finally:
        logger.setLevel(logging.NOTSET)
        logging.disable(logging.NOTSET)
