"""Write-ahead log format: checksummed, length-prefixed records, and crash recovery.

The node appends a record for everything it signs and fsyncs it before sending the
message (DESIGN 5). A crash can only tear the record being appended -- which was never
sent -- so recovery keeps the longest valid prefix and drops the torn or corrupted tail.
That is what makes dropping it safe: nothing after the first bad byte was ever acted on.

Layout: an 8-byte file header `MAGIC`, then records, each

    length: u32 big-endian | crc32(length bytes + payload): u32 big-endian | payload

This module is pure: it turns records into bytes and bytes back into records.
Opening, appending, fsyncing and truncating the file belong to `node/`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"VCWAL01\n"
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Bigger than any record we write (a signed proposal carries at most one 4 MiB block)."""

_HEAD = struct.Struct(">II")


class WalError(ValueError):
    """The bytes are not a write-ahead log at all (wrong magic): refuse, never truncate."""


@dataclass(frozen=True, slots=True)
class WalScan:
    """What recovery found: the valid records, where the valid prefix ends, and why the
    rest (if any) was dropped. The node truncates its file to `valid_length`."""

    records: tuple[bytes, ...]
    valid_length: int
    dropped_bytes: int
    reason: str | None


def header() -> bytes:
    return MAGIC


def frame(payload: bytes) -> bytes:
    """The bytes to append for one record."""
    if not payload:
        raise ValueError("a WAL record is not empty")
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"WAL record of {len(payload)} bytes is over {MAX_RECORD_BYTES}")
    length = struct.pack(">I", len(payload))
    return length + struct.pack(">I", zlib.crc32(length + payload)) + payload


def encode_log(records: Iterable[bytes]) -> bytes:
    """A whole log (header and records): what a compaction writes to a fresh file."""
    return MAGIC + b"".join(frame(r) for r in records)


def scan(data: bytes) -> WalScan:
    """Parse a log and return its longest valid prefix of records.

    A torn header (a prefix of MAGIC, including empty data) is an empty log. Any other
    header raises `WalError`: the file is not ours and must not be truncated.
    """
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            return WalScan((), 0, len(data), "torn header" if data else None)
        raise WalError("not a write-ahead log (bad magic)")
    if data[: len(MAGIC)] != MAGIC:
        raise WalError("not a write-ahead log (bad magic)")
    records: list[bytes] = []
    pos = len(MAGIC)
    end = len(data)
    reason: str | None = None
    while pos < end:
        if end - pos < _HEAD.size:
            reason = "torn record header"
            break
        length, crc = _HEAD.unpack_from(data, pos)
        if length == 0 or length > MAX_RECORD_BYTES:
            reason = f"bad record length {length}"
            break
        if end - pos - _HEAD.size < length:
            reason = "torn record payload"
            break
        body_start = pos + _HEAD.size
        payload = data[body_start: body_start + length]
        if zlib.crc32(data[pos: pos + 4] + payload) != crc:
            reason = "checksum mismatch"
            break
        records.append(bytes(payload))
        pos = body_start + length
    return WalScan(tuple(records), pos, end - pos, reason)
