"""The audit log file: a commune's whole signed history in one streamable file.

Layout (all integers big-endian):

    magic    8 bytes   b"\\x89CMNLOG\\n"  (a non-ASCII first byte and a newline, so a text
                                         tool or a line-ending conversion breaks it
                                         visibly, as PNG does)
    version  2 bytes   FORMAT_VERSION
    records  each: length (4 bytes) + the canonical msgpack of one map

Records, in this order and no other:

    {"type": "genesis", "chain_id": <32>, "genesis": <canonical genesis document>}
    {"type": "block", "height": h, "block": <canonical block>, "certificate": <canonical
     commit certificate of that block>}                          heights 1, 2, ... in order
    {"type": "end", "blocks": n, "last_hash": <hash of block n, or the chain id if n = 0>,
     "digest": <sha256 of every byte of the file before this record>}

Evidence of misbehaviour travels inside the blocks that recorded it (the header commits
to it). Each block record carries the certificate the node committed that block with,
which is how the newest block is proven; older blocks are proven twice, since the next
block's header commits to its `last_commit`.

Nothing in the file is trusted by the reader: blocks and certificates are checked by the
replay (`ledger/audit.py`). The format itself only makes damage visible: the end record
makes truncation detectable (a file cut at a record boundary has no end record), the
digest makes any flipped byte detectable even where no signature reaches, and every
record is bounded in size before it is read.

`export_store` reads a node's SQLite store directly, read-only and inside one read
transaction (a consistent snapshot even while the daemon commits), so it works whether or
not the daemon runs. It reads the store's tables (`chain_meta`, `chain_blocks`,
`chain_certificates`) by name: that schema is the store's contract with this module.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from protocol.block import MAX_BLOCK_BYTES
from protocol.crypto import HASH_LEN, sha256
from protocol.encoding import DecodeError, EncodeError, decode, encode

MAGIC = b"\x89CMNLOG\n"
FORMAT_VERSION = 1
PREAMBLE_LEN = len(MAGIC) + 2
LEN_BYTES = 4
MAX_GENESIS_RECORD = 2 * 1024 * 1024
MAX_RECORD = MAX_BLOCK_BYTES + 512 * 1024
"""A block at its size limit plus the largest certificate, with room to spare."""

BLOCK_FIELDS = frozenset({"type", "height", "block", "certificate"})
GENESIS_FIELDS = frozenset({"type", "chain_id", "genesis"})
END_FIELDS = frozenset({"type", "blocks", "last_hash", "digest"})


class LogFormatError(ValueError):
    """The file is not a well-formed log: what is wrong, and where.

    `height` is the block height the damaged part holds or would hold (None before the
    first block record), `offset` the byte offset of the record that failed.
    """

    def __init__(self, reason: str, *, offset: int, height: int | None,
                 truncated: bool = False) -> None:
        where = f"at byte {offset}" + (f" (block {height})" if height is not None else "")
        super().__init__(f"{reason} {where}")
        self.reason = reason
        self.offset = offset
        self.height = height
        self.truncated = truncated


@dataclass(frozen=True, slots=True)
class BlockRecord:
    height: int
    block: bytes
    """Canonical encoding of the block (decoded and checked by the replay)."""
    certificate: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class LogEnd:
    blocks: int
    last_hash: bytes


# ---- writing ---------------------------------------------------------------------------


class LogWriter:
    """Writes a log to a binary stream as blocks arrive; `finish` seals it."""

    def __init__(self, out: BinaryIO, genesis: bytes, chain_id: bytes) -> None:
        assert len(chain_id) == HASH_LEN and sha256(genesis) == chain_id, \
            "the chain id is the hash of the genesis document"
        self._out = out
        self._digest = hashlib.sha256()
        self._blocks = 0
        self._last_hash = chain_id
        self._finished = False
        self._write(MAGIC + FORMAT_VERSION.to_bytes(2, "big"))
        self._record({"type": "genesis", "chain_id": chain_id, "genesis": genesis})

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._digest.update(data)

    def _record(self, obj: dict[str, Any]) -> None:
        data = encode(obj)
        assert len(data) <= MAX_RECORD
        self._write(len(data).to_bytes(LEN_BYTES, "big") + data)

    def block(self, height: int, block: bytes, certificate: bytes, block_hash: bytes) -> None:
        """Append block `height` (which must be the next one) with its certificate.

        `block_hash` is the hash of its header, kept for the end record; the writer does
        not decode blocks (the replay checks everything).
        """
        assert not self._finished and height == self._blocks + 1, "blocks in height order"
        assert len(block_hash) == HASH_LEN
        self._record({"type": "block", "height": height, "block": block,
                      "certificate": certificate})
        self._blocks = height
        self._last_hash = block_hash

    def finish(self) -> LogEnd:
        assert not self._finished
        self._finished = True
        digest = self._digest.digest()
        self._record({"type": "end", "blocks": self._blocks, "last_hash": self._last_hash,
                      "digest": digest})
        return LogEnd(self._blocks, self._last_hash)


# ---- reading ---------------------------------------------------------------------------


class LogReader:
    """Reads a log from a binary stream, one record at a time, checking its shape.

    Use: `reader = LogReader(stream)`; `reader.genesis` and `reader.chain_id` are read at
    once; iterate `reader.blocks()` for the block records; after the last one,
    `reader.end` holds the end record (the iteration raises `LogFormatError` if the file
    is truncated, damaged or has anything after its end record).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._in = stream
        self._offset = 0
        self._digest = hashlib.sha256()
        self.end: LogEnd | None = None
        self._last_digest = self._digest.copy()
        pre = self._read_exact(PREAMBLE_LEN, None, "file header")
        if pre[:len(MAGIC)] != MAGIC:
            raise LogFormatError("not a commune log file (bad magic bytes)", offset=0,
                                 height=None)
        version = int.from_bytes(pre[len(MAGIC):], "big")
        if version != FORMAT_VERSION:
            raise LogFormatError(f"log format version {version} is not supported (this reader "
                                 f"reads version {FORMAT_VERSION})", offset=len(MAGIC),
                                 height=None)
        rec, off = self._next(None, MAX_GENESIS_RECORD)
        if rec is None:
            raise LogFormatError("the file ends before the genesis record", offset=off,
                                 height=None, truncated=True)
        if rec.get("type") != "genesis" or set(rec) != GENESIS_FIELDS:
            raise LogFormatError("the first record must be the genesis record", offset=off,
                                 height=None)
        if type(rec["genesis"]) is not bytes or type(rec["chain_id"]) is not bytes:
            raise LogFormatError("genesis record fields malformed", offset=off, height=None)
        if sha256(rec["genesis"]) != rec["chain_id"]:
            raise LogFormatError("the genesis record's chain id is not the hash of its "
                                 "genesis document", offset=off, height=None)
        self.genesis: bytes = rec["genesis"]
        self.chain_id: bytes = rec["chain_id"]
        self._started = False

    def _read_exact(self, n: int, height: int | None, what: str) -> bytes:
        data = self._in.read(n)
        if len(data) != n:
            raise LogFormatError(f"the file is truncated: {what} is cut short "
                                 f"({len(data)} of {n} bytes)", offset=self._offset,
                                 height=height, truncated=True)
        self._offset += n
        self._digest.update(data)
        return data

    def _next(self, height: int | None, limit: int) -> tuple[dict[str, Any] | None, int]:
        """The next record as a map, or None at a clean end of file; and its offset."""
        off = self._offset
        head = self._in.read(LEN_BYTES)
        if not head:
            return None, off
        if len(head) != LEN_BYTES:
            raise LogFormatError("the file is truncated inside a record length", offset=off,
                                 height=height, truncated=True)
        digest_before = self._digest.copy()
        self._offset += LEN_BYTES
        self._digest.update(head)
        n = int.from_bytes(head, "big")
        if not 0 < n <= limit:
            raise LogFormatError(f"record length {n} is outside 1..{limit}", offset=off,
                                 height=height)
        data = self._read_exact(n, height, "a record")
        try:
            obj = decode(data, max_size=limit)
        except (DecodeError, EncodeError) as exc:
            raise LogFormatError(f"record is not canonical msgpack: {exc}", offset=off,
                                 height=height) from None
        if type(obj) is not dict:
            raise LogFormatError("record is not a map", offset=off, height=height)
        self._last_digest = digest_before
        return obj, off

    def blocks(self) -> Iterator[BlockRecord]:
        assert not self._started, "a log is read once"
        self._started = True
        expected = 1
        while True:
            rec, off = self._next(expected, MAX_RECORD)
            if rec is None:
                raise LogFormatError(f"the file is truncated: it ends after block "
                                     f"{expected - 1} without an end record", offset=off,
                                     height=expected, truncated=True)
            kind = rec.get("type")
            if kind == "block":
                if set(rec) != BLOCK_FIELDS:
                    raise LogFormatError("block record fields wrong", offset=off,
                                         height=expected)
                if rec["height"] != expected:
                    raise LogFormatError(f"block record for height {rec['height']!r} where "
                                         f"height {expected} belongs", offset=off,
                                         height=expected)
                if type(rec["block"]) is not bytes or type(rec["certificate"]) is not bytes:
                    raise LogFormatError("block record fields must be bytes", offset=off,
                                         height=expected)
                yield BlockRecord(expected, rec["block"], rec["certificate"], off)
                expected += 1
            elif kind == "end":
                self._check_end(rec, off, expected - 1)
                return
            else:
                raise LogFormatError(f"unexpected record type {kind!r}", offset=off,
                                     height=expected)

    def _check_end(self, rec: dict[str, Any], off: int, blocks: int) -> None:
        if set(rec) != END_FIELDS:
            raise LogFormatError("end record fields wrong", offset=off, height=None)
        if rec["blocks"] != blocks:
            raise LogFormatError(f"the end record counts {rec['blocks']!r} blocks, the file "
                                 f"holds {blocks}", offset=off, height=None)
        if rec["digest"] != self._last_digest.digest():
            raise LogFormatError("the file digest does not match its contents (the file "
                                 "was damaged or edited)", offset=off, height=None)
        if type(rec["last_hash"]) is not bytes or len(rec["last_hash"]) != HASH_LEN:
            raise LogFormatError("end record last_hash malformed", offset=off, height=None)
        if self._in.read(1):
            raise LogFormatError("data after the end record", offset=self._offset,
                                 height=None)
        self.end = LogEnd(blocks, rec["last_hash"])


# ---- from a node's store -----------------------------------------------------------------


class ExportError(RuntimeError):
    """The store cannot be exported (missing, not a commune store, inconsistent)."""


def _open_readonly(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise ExportError(f"no ledger store at {db}")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn
    except sqlite3.Error as exc:
        raise ExportError(f"cannot open {db} read-only: {exc}") from None


class StoreSnapshot:
    """A consistent read-only view of a node's store: its genesis and committed blocks.

    One read transaction covers the whole view, so blocks a running daemon commits
    meanwhile are simply not included (the log ends at a consistent height). Use it as a
    context manager.
    """

    def __init__(self, db: Path) -> None:
        self._conn = _open_readonly(db)
        self.db = db
        try:
            self._conn.execute("BEGIN")
            try:
                rows = dict(self._conn.execute("SELECT key, value FROM chain_meta "
                                               "WHERE key IN ('genesis', 'chain_id')"))
            except sqlite3.Error as exc:
                raise ExportError(f"{db} is not a commune ledger store: {exc}") from None
            if "genesis" not in rows:
                raise ExportError(f"{db} has no genesis yet (the node never started)")
            self.genesis = bytes(rows["genesis"])
            self.chain_id = sha256(self.genesis)
            if rows.get("chain_id") is not None and bytes(rows["chain_id"]) != self.chain_id:
                raise ExportError(f"{db}: the stored chain id is not the hash of the stored "
                                  "genesis; the store is damaged")
            row = self._conn.execute("SELECT max(height) FROM chain_blocks").fetchone()
            self.height: int = int(row[0] or 0)
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def blocks(self, start: int = 1) -> Iterator[tuple[int, bytes, bytes, bytes]]:
        """(height, block, certificate, block hash) from `start` to `self.height`."""
        expected = start
        for h, block, bhash, cert in self._conn.execute(
                "SELECT b.height, b.raw, b.hash, c.raw FROM chain_blocks b "
                "LEFT JOIN chain_certificates c ON c.height = b.height "
                "WHERE b.height >= ? AND b.height <= ? ORDER BY b.height",
                (start, self.height)):
            if h != expected:
                raise ExportError(f"{self.db} has no block {expected} (next stored is {h}); "
                                  "the store is damaged")
            if cert is None:
                raise ExportError(f"{self.db} has block {h} without its certificate")
            yield h, bytes(block), bytes(cert), bytes(bhash)
            expected += 1
        if expected != self.height + 1:
            raise ExportError(f"{self.db} has no block {expected}; the store is damaged")

    def block_raw(self, height: int) -> bytes | None:
        if not 1 <= height <= self.height:
            return None
        row = self._conn.execute("SELECT raw FROM chain_blocks WHERE height = ?",
                                 (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def certificate_raw(self, height: int) -> bytes | None:
        if not 1 <= height <= self.height:
            return None
        row = self._conn.execute("SELECT raw FROM chain_certificates WHERE height = ?",
                                 (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def tx_location(self, txid: bytes) -> tuple[int, int] | None:
        """(height, index) of a committed transaction."""
        row = self._conn.execute("SELECT height, idx FROM chain_txs WHERE id = ?",
                                 (txid,)).fetchone()
        if row is None or not 1 <= row[0] <= self.height:
            return None
        return int(row[0]), int(row[1])

    def validator_history(self) -> list[tuple[int, bytes]]:
        """(first height, packed sorted member ids) of every validator set so far."""
        return [(int(h), bytes(m)) for h, m in self._conn.execute(
            "SELECT from_height, members FROM chain_validators ORDER BY from_height")]


def export_store(db: Path, out: BinaryIO, *,
                 progress: Callable[[int, int], None] | None = None) -> tuple[bytes, LogEnd]:
    """Write the log of the store at `db` to `out`. Returns (chain id, end record).

    `progress(height, last_height)` is called after each block when given.
    """
    with StoreSnapshot(db) as snap:
        writer = LogWriter(out, snap.genesis, snap.chain_id)
        for h, block, cert, bhash in snap.blocks():
            writer.block(h, block, cert, bhash)
            if progress is not None:
                progress(h, snap.height)
        return snap.chain_id, writer.finish()


def write_log(out: BinaryIO, genesis: bytes,
              blocks: Iterable[tuple[bytes, bytes, bytes]]) -> LogEnd:
    """Write a log from (block, certificate, block hash) triples in height order."""
    writer = LogWriter(out, genesis, sha256(genesis))
    for h, (block, cert, bhash) in enumerate(blocks, start=1):
        writer.block(h, block, cert, bhash)
    return writer.finish()
