"""Structured logs: one JSON object per line, on stderr and in a size-bounded file.

Operators grep and ship these lines (jq, Loki, journald), so every line is a
self-contained JSON object with a fixed head (`ts`, `level`, `logger`, `event`)
followed by the event's own fields. Values JSON cannot hold are rendered the way
a human reads them: ids in their text form when they look like public keys or
hashes (hex), everything else through `str`. A message never spans lines, not even
a traceback, because one event per line is what makes the log machine-readable.

Usage: `log = get_logger("driver")` then `log.info("commit", height=5, txs=12)`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

ROOT = "commune"
MAX_FILE_BYTES = 20 * 1024 * 1024
"""Size at which the log file rotates; `BACKUPS` older files are kept."""
BACKUPS = 5
MAX_FIELD_CHARS = 2000
"""A field longer than this is cut: a log line must stay a line, not a dump."""

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

_LIBRARIES = ("libp2p", "multiaddr", "hypercorn", "httpx", "httpcore", "trio_websocket")

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


def render(value: Any) -> Any:
    """A JSON-compatible form of a field value."""
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            return value[:MAX_FIELD_CHARS] + "…"
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()[:MAX_FIELD_CHARS]
    if isinstance(value, Mapping):
        return {str(k): render(v) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple | set | frozenset):
        return [render(v) for v in list(value)[:100]]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"[:MAX_FIELD_CHARS]
    return str(value)[:MAX_FIELD_CHARS]


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: head fields first, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for k, v in fields.items():
                if k not in out:
                    out[k] = render(v)
        for k, v in record.__dict__.items():  # fields passed through the stdlib `extra=`
            if k not in _RESERVED and k != "fields" and k not in out:
                out[k] = render(v)
        if record.exc_info and record.exc_info[1] is not None:
            out["exc"] = self.formatException(record.exc_info)[-MAX_FIELD_CHARS:]
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class Logger:
    """A thin front for a stdlib logger that takes the event's fields as keywords."""

    __slots__ = ("_log",)

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    @property
    def name(self) -> str:
        return self._log.name

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, "%s", event, extra={"fields": fields}, exc_info=exc,
                          stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the current exception's traceback folded into the line."""
        self._emit(logging.ERROR, event, fields, exc=True)

    def is_debug(self) -> bool:
        return self._log.isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> Logger:
    return Logger(logging.getLogger(f"{ROOT}.{name}"))


def setup(level: str = "info", log_dir: Path | None = None, stream: TextIO | None = None,
          file_name: str = "daemon.log") -> None:
    """Route the project's logs (and libraries' warnings) to JSON lines.

    Called once by the daemon. Idempotent: handlers installed by an earlier call are
    replaced, so tests that start several daemons in one process do not duplicate lines.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = []
    sh = logging.StreamHandler(stream if stream is not None else sys.stderr)
    sh.setFormatter(formatter)
    handlers.append(sh)
    if log_dir is not None:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            log_dir / file_name, maxBytes=MAX_FILE_BYTES, backupCount=BACKUPS, encoding="utf-8")
        fh.setFormatter(formatter)
        handlers.append(fh)
    floor = max(LEVELS[level], logging.WARNING)

    def quiet_libraries(record: logging.LogRecord) -> bool:
        # Libraries set levels on their own child loggers (py-libp2p logs at info
        # every few seconds); below warning their records are not ours to print.
        return record.levelno >= floor or not record.name.startswith(_LIBRARIES)

    teardown()
    root = logging.getLogger()
    for h in handlers:
        h.addFilter(quiet_libraries)
        h._commune = True  # type: ignore[attr-defined]
        root.addHandler(h)
    # Our own loggers at the chosen level; chatty libraries only from warnings up
    # (libp2p at info logs every stream it opens).
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT).setLevel(LEVELS[level])
    for noisy in ("libp2p", "multiaddr", "hypercorn.error", "hypercorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(max(LEVELS[level], logging.WARNING))
    # py-libp2p detaches its loggers at import (propagate off, no handler), which sends
    # its warnings to Python's last-resort handler as plain text; route them to ours.
    # Call `setup` after importing libp2p. A failed dial is routine (a peer is down) and
    # node.net reports it itself, so the transport's error line for it is silenced.
    logging.getLogger("libp2p").propagate = True
    logging.getLogger("libp2p.transport.tcp").setLevel(logging.CRITICAL)


def teardown() -> None:
    """Remove the handlers `setup` installed (tests; a daemon's orderly exit)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_commune", False):
            root.removeHandler(h)
            h.close()
