"""The signing log's file handling: durable appends, recovery of the valid prefix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.signing_log import SigningLog, SigningLogError
from protocol import wal


def test_append_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "signed.log"
    log, rec = SigningLog.open(path)
    assert rec.records == () and rec.dropped_bytes == 0
    assert path.read_bytes() == wal.MAGIC
    assert (path.stat().st_mode & 0o777) == 0o600
    log.append(b"vote-1")
    log.append_many([b"vote-2", b"proposal-3"])
    log.close()
    log, rec = SigningLog.open(path)
    assert rec.records == (b"vote-1", b"vote-2", b"proposal-3")
    assert log.size == path.stat().st_size
    log.close()


def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    path = tmp_path / "signed.log"
    log, _ = SigningLog.open(path)
    log.append_many([b"a" * 10, b"b" * 20])
    log.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(wal.frame(b"c" * 30)[:-5])  # a crash mid-append
    log, rec = SigningLog.open(path)
    assert rec.records == (b"a" * 10, b"b" * 20)
    assert rec.dropped_bytes > 0 and rec.reason == "torn record payload"
    assert path.read_bytes() == whole
    log.append(b"d")
    log.close()
    _, rec = SigningLog.open(path)
    assert rec.records == (b"a" * 10, b"b" * 20, b"d")


def test_torn_header_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "signed.log"
    path.write_bytes(wal.MAGIC[:3])
    log, rec = SigningLog.open(path)
    assert rec.records == ()
    log.append(b"x")
    log.close()
    assert SigningLog.open(path)[1].records == (b"x",)


def test_foreign_file_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "signed.log"
    path.write_bytes(b"#!/bin/sh\necho not a log\n")
    with pytest.raises(SigningLogError, match="not a signing log"):
        SigningLog.open(path)
    assert path.read_bytes() == b"#!/bin/sh\necho not a log\n"


def test_compact_keeps_only_given_records(tmp_path: Path) -> None:
    path = tmp_path / "signed.log"
    log, _ = SigningLog.open(path)
    for i in range(50):
        log.append(b"r%d" % i)
    log.compact([b"r48", b"r49"])
    log.append(b"r50")
    assert log.size == path.stat().st_size
    log.close()
    assert SigningLog.open(path)[1].records == (b"r48", b"r49", b"r50")
    # A compaction that crashed before its rename leaves a stray file: ignored, removed.
    (tmp_path / "signed.log.compact").write_bytes(b"junk")
    assert SigningLog.open(path)[1].records == (b"r48", b"r49", b"r50")
    assert not (tmp_path / "signed.log.compact").exists()


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log, _ = SigningLog.open(tmp_path / "signed.log")
    log.close()
    with pytest.raises(SigningLogError, match="closed"):
        log.append(b"x")


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8),
       cut=st.integers(min_value=0))
def test_any_truncation_recovers_a_prefix(tmp_path_factory: pytest.TempPathFactory,
                                          records: list[bytes], cut: int) -> None:
    """Whatever byte a crash stops at, recovery yields a prefix of what was appended."""
    path = tmp_path_factory.mktemp("wal") / "signed.log"
    log, _ = SigningLog.open(path)
    for r in records:
        log.append(r)
    log.close()
    size = path.stat().st_size
    os.truncate(path, cut % (size + 1))
    log, rec = SigningLog.open(path)
    assert list(rec.records) == records[: len(rec.records)]
    log.append(b"after")
    log.close()
    assert SigningLog.open(path)[1].records == (*rec.records, b"after")
