"""The WAL format: whatever a crash does to the tail, recovery keeps exactly the records
that were completely written before it, and never accepts a damaged one."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wal

records_st = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


def test_round_trip_and_empty() -> None:
    recs = [b"a", b"bb" * 100, bytes(range(256))]
    data = wal.encode_log(recs)
    found = wal.scan(data)
    assert list(found.records) == recs
    assert found.valid_length == len(data) and found.dropped_bytes == 0 and found.reason is None
    assert wal.scan(b"").records == () and wal.scan(b"").valid_length == 0
    assert wal.scan(wal.header()).records == ()


def test_torn_header_is_an_empty_log_and_a_foreign_file_is_refused() -> None:
    for i in range(1, len(wal.MAGIC)):
        found = wal.scan(wal.MAGIC[:i])
        assert found.records == () and found.valid_length == 0 and found.reason == "torn header"
    with pytest.raises(wal.WalError):
        wal.scan(b"SQLite format 3\x00")
    with pytest.raises(wal.WalError):
        wal.scan(b"xy")


@settings(max_examples=150, deadline=None)
@given(records_st, st.data())
def test_any_truncation_keeps_the_complete_prefix(recs: list[bytes], data: st.DataObject) -> None:
    full = wal.encode_log(recs)
    cut = data.draw(st.integers(len(wal.MAGIC), len(full)))
    found = wal.scan(full[:cut])
    # Exactly the records whose frames fit entirely before the cut survive.
    ends, pos = [], len(wal.MAGIC)
    for r in recs:
        pos += 8 + len(r)
        ends.append(pos)
    complete = sum(1 for e in ends if e <= cut)
    assert list(found.records) == recs[:complete]
    assert found.valid_length == (ends[complete - 1] if complete else len(wal.MAGIC))
    assert found.valid_length + found.dropped_bytes == cut


@settings(max_examples=150, deadline=None)
@given(records_st, st.binary(min_size=1, max_size=64), st.data())
def test_garbage_or_a_flipped_byte_never_yields_a_damaged_record(
        recs: list[bytes], garbage: bytes, data: st.DataObject) -> None:
    full = wal.encode_log(recs)
    found = wal.scan(full + garbage)
    assert list(found.records[: len(recs)]) == recs
    # A flipped byte anywhere after the header: every record returned is an original one,
    # in order, and nothing after the damage is returned.
    if len(full) > len(wal.MAGIC):
        i = data.draw(st.integers(len(wal.MAGIC), len(full) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = bytearray(full)
        bad[i] ^= 1 << bit
        got = wal.scan(bytes(bad)).records
        assert list(got) == recs[: len(got)]
        assert len(got) < len(recs) or i >= len(full)


def test_bounds() -> None:
    with pytest.raises(ValueError):
        wal.frame(b"")
    huge_len = struct.pack(">II", wal.MAX_RECORD_BYTES + 1, 0)
    found = wal.scan(wal.MAGIC + huge_len + b"x")
    assert found.records == () and found.reason is not None and "length" in found.reason
    zero = struct.pack(">II", 0, 0)
    assert wal.scan(wal.MAGIC + zero).records == ()
