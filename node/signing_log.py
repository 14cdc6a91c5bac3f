"""The file behind the consensus write-ahead log: append, fsync, then send.

A validator must never sign two different votes (or proposals) for the same
height/round/step, even across a crash (DESIGN 5). So everything it signs is
appended here and fsynced *before* the signed message leaves the process; on
restart the engine replays the records and refuses to sign anything that
conflicts with them.

The record format (magic header, length prefix, checksum) is pure and lives in
`protocol/wal.py`; what a record means is the consensus engine's business (records
are opaque bytes here). This module owns the file: opening, the fsyncs, truncating
a torn tail after a crash, and compaction.

Recovery keeps the longest valid prefix. A record cut short by a crash mid-append
was never fully fsynced, so its message was never sent, and dropping it is safe.
A complete record that fails its checksum is disk corruption, not a crash artefact;
`Recovery.reason` says so and the daemon logs it as an error, because a lost record
of something that *was* sent is exactly the case the log exists to prevent.

Compaction rewrites the file with only the records still needed (those of heights
not yet committed) through a temporary file and an atomic rename, so a crash during
compaction leaves either the old file or the new one, both valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol import wal

MAX_LOG_BYTES = 256 * 1024 * 1024
"""A log larger than this is refused at open (compaction keeps it small in practice)."""


class SigningLogError(Exception):
    """The log cannot be opened or written; the node must not sign until it can."""


@dataclass(frozen=True)
class Recovery:
    """What `SigningLog.open` found on disk."""

    records: tuple[bytes, ...]
    valid_bytes: int
    dropped_bytes: int
    """Bytes after the valid prefix, cut off (a torn append, or corruption)."""
    reason: str | None
    """Why the tail was dropped, from `protocol.wal.scan`."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SigningLog:
    """An append-only, fsynced file of WAL records. Open with `SigningLog.open`."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._size = size
        self.appends = 0

    @classmethod
    def open(cls, path: Path) -> tuple[SigningLog, Recovery]:
        """Open (creating if absent) and recover the valid prefix, cutting any bad tail.

        A file that is not a WAL at all (wrong magic) is refused untouched: it is not
        ours to truncate, and signing without our history could double-sign.
        """
        tmp = path.with_name(path.name + ".compact")
        tmp.unlink(missing_ok=True)  # a compaction that crashed before its rename
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise SigningLogError(f"cannot open the signing log {path}: {exc}") from None
        try:
            size = os.fstat(fd).st_size
            if size > MAX_LOG_BYTES:
                raise SigningLogError(f"signing log {path} is {size} bytes; refusing to load")
            data = _read_all(fd, size)
            try:
                found = wal.scan(data)
            except wal.WalError as exc:
                raise SigningLogError(f"{path} is not a signing log ({exc}); move it away "
                                      "only if you are sure this key never signed elsewhere"
                                      ) from None
            valid = found.valid_length
            if valid < len(wal.MAGIC):  # empty, or a torn header: start the file afresh
                os.ftruncate(fd, 0)
                _write_all(fd, wal.header())
                valid = len(wal.MAGIC)
                os.fsync(fd)
            elif found.dropped_bytes:
                os.ftruncate(fd, valid)
                os.fsync(fd)
            if created:
                _fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, valid), Recovery(found.records, found.valid_length,
                                              found.dropped_bytes, found.reason)

    @property
    def size(self) -> int:
        return self._size

    def append(self, record: bytes) -> None:
        """Append one record durably; when this returns the record survives a crash."""
        self.append_many([record])

    def append_many(self, records: Sequence[bytes]) -> None:
        """Append records with one write and one fsync (the engine's effects of one step)."""
        if not records:
            return
        fd = self._require_open()
        data = b"".join(wal.frame(r) for r in records)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            # The tail may now hold a partial record; recovery would cut it, but this
            # process must not go on signing with an unknown file state.
            self.close()
            raise SigningLogError(f"writing the signing log {self.path} failed: {exc}") \
                from None
        self._size += len(data)
        self.appends += 1

    def compact(self, keep: Iterable[bytes]) -> None:
        """Replace the file's contents with `keep`, atomically and durably."""
        self._require_open()
        data = wal.encode_log(keep)
        tmp = self.path.with_name(self.path.name + ".compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        old = self._fd
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        if old is not None:
            os.close(old)
        self._size = len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _require_open(self) -> int:
        if self._fd is None:
            raise SigningLogError(f"the signing log {self.path} is closed")
        return self._fd


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
