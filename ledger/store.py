"""The SQLite store: blocks, certificates, transactions, and the state as tables.

One committed block is one SQLite transaction: the block, its certificate, its
transactions with their results, and its change set applied to the state tables all
land together or not at all, and WAL with `synchronous=FULL` makes the commit durable
before `commit_block` returns. A process killed at any instant reopens at a block
boundary.

The state tables mirror the in-memory tables column for column (declared in the
rules), so the CLI and the API answer from SQL. Store-only tables are prefixed
`chain_` and hold history that is not state: blocks, certificates, transactions, and
the validator sets of past heights (needed to check old certificates and evidence).

A file store has two connections: `conn` for everything the owner reads (and the
one-time setup), and a writer connection that only block commits use. Under WAL a
reader sees the last committed transaction, so the node can keep answering queries
and serving sync from `conn` on its event loop while a worker thread makes the next
block durable (`stage_block` on the owner's thread, `commit_staged` -- the fsync --
on the worker) -- and what it answers is always durable. An in-memory store (tests,
replay) has one connection, and its commits stay on the caller's thread
(`concurrent_writes` is False).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from ledger.execute import TxOutcome
from ledger.state import Change, State, Table

SCHEMA_VERSION = 1

WRITER_CACHE_KIB = 64 * 1024
"""Page cache of the connection that commits blocks: big block blobs would otherwise
push the state tables' B-tree pages out of SQLite's default 2 MiB between blocks."""
READER_CACHE_KIB = 2 * 1024
"""Page cache of the reading connection (history lookups, the one state load at open)."""

STORE_TABLES = (
    """CREATE TABLE IF NOT EXISTS chain_meta (
        key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chain_blocks (
        height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, time_ms INTEGER NOT NULL,
        proposer BLOB NOT NULL, state_root BLOB NOT NULL, num_txs INTEGER NOT NULL,
        raw BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS chain_certificates (
        height INTEGER PRIMARY KEY, raw BLOB NOT NULL)""",
    # Where each committed transaction is; the rest of it is in its block. Kept narrow on
    # purpose: one random-key insert per transaction is the store's main cost.
    """CREATE TABLE IF NOT EXISTS chain_txs (
        id BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL,
        kind TEXT NOT NULL) WITHOUT ROWID""",
    # Results (JSON) of the transactions that return one; appended in block order.
    """CREATE TABLE IF NOT EXISTS chain_tx_results (
        height INTEGER NOT NULL, idx INTEGER NOT NULL, result TEXT NOT NULL,
        PRIMARY KEY (height, idx)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chain_validators (
        from_height INTEGER PRIMARY KEY, members BLOB NOT NULL)""",
)


class StoreError(RuntimeError):
    """The store cannot be used: another chain's, a newer schema, or corrupt."""


def _result_json(result: Any) -> str | None:
    if result is None:
        return None
    return json.dumps(result, sort_keys=True, separators=(",", ":"))


class Store:
    """The SQLite file of one ledger. `path=None` keeps it in memory (tests, replay)."""

    def __init__(self, path: str | None, tables: Mapping[str, Table]) -> None:
        for name in tables:
            assert not name.startswith("chain_") and not name.startswith("sqlite_"), name
        self.path = path
        self.tables = dict(tables)
        self.conn = self._connect(path, WRITER_CACHE_KIB if path is None else READER_CACHE_KIB)
        self._writer = self.conn if path is None else self._connect(path, WRITER_CACHE_KIB)
        """The connection `commit_block` writes through (see the module docstring)."""
        self._upsert: dict[str, str] = {}
        self._delete: dict[str, str] = {}
        with self.transaction():
            for sql in STORE_TABLES:
                self.conn.execute(sql)
            for t in self.tables.values():
                self.conn.execute(t.create_sql())
                cols = t.key_names + t.column_names
                self._upsert[t.name] = (
                    f'INSERT OR REPLACE INTO "{t.name}" ({", ".join(cols)}) '
                    f'VALUES ({", ".join("?" * len(cols))})')
                self._delete[t.name] = (
                    f'DELETE FROM "{t.name}" WHERE '
                    + " AND ".join(f'"{k}" = ?' for k in t.key_names))
            version = self.meta("schema_version")
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION).encode())
            elif int(version) != SCHEMA_VERSION:
                raise StoreError(f"store schema {int(version)} is not {SCHEMA_VERSION}")

    @staticmethod
    def _connect(path: str | None, cache_kib: int) -> sqlite3.Connection:
        conn = sqlite3.connect(path or ":memory:", isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = OFF")
        if path is not None:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        return conn

    @property
    def concurrent_writes(self) -> bool:
        """Whether `commit_staged` may run on another thread while this one reads."""
        return self._writer is not self.conn

    def close(self) -> None:
        if self._writer is not self.conn:
            self._writer.close()
        self.conn.close()

    # ---- transactions --------------------------------------------------------------------

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def transaction(self) -> Store._Tx:
        return Store._Tx(self.conn)

    # ---- meta ----------------------------------------------------------------------------

    def meta(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM chain_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO chain_meta (key, value) VALUES (?, ?)",
                          (key, value))

    # ---- writes --------------------------------------------------------------------------

    def _write_changes(self, changes: list[Change],
                       conn: sqlite3.Connection | None = None) -> None:
        upserts: dict[str, list[tuple[Any, ...]]] = {}
        deletes: dict[str, list[tuple[Any, ...]]] = {}
        tables = self.tables
        for table, key, _old, new in changes:
            t = tables[table]
            kv = t.key_values(key)
            if new is None:
                deletes.setdefault(table, []).append(kv)
            else:
                upserts.setdefault(table, []).append(kv + t.values(new))  # type: ignore[attr-defined]
        ex = (conn or self.conn).executemany
        for table, rows in deletes.items():
            ex(self._delete[table], rows)
        for table, rows in upserts.items():
            ex(self._upsert[table], rows)

    def init_genesis(self, genesis: bytes, chain_id: bytes, changes: list[Change],
                     root: bytes, validators: bytes) -> None:
        with self.transaction():
            if self.meta("genesis") is not None:
                raise StoreError("store already initialized")
            self._set_meta("genesis", genesis)
            self._set_meta("chain_id", chain_id)
            self._set_meta("genesis_state_root", root)
            self._write_changes(changes)
            self.conn.execute("INSERT INTO chain_validators (from_height, members) VALUES (1, ?)",
                              (validators,))

    def commit_block(self, height: int, block_hash: bytes, time_ms: int, proposer: bytes,
                     state_root: bytes, raw_block: bytes, raw_certificate: bytes,
                     outcomes: list[TxOutcome], changes: list[Change],
                     new_validators: bytes | None) -> None:
        """Everything a committed block changes, in one durable SQLite transaction."""
        self.stage_block(height, block_hash, time_ms, proposer, state_root, raw_block,
                         raw_certificate, outcomes, changes, new_validators)
        self.commit_staged()

    def stage_block(self, height: int, block_hash: bytes, time_ms: int, proposer: bytes,
                    state_root: bytes, raw_block: bytes, raw_certificate: bytes,
                    outcomes: list[TxOutcome], changes: list[Change],
                    new_validators: bytes | None) -> None:
        """The first half of `commit_block`: open the block's SQLite transaction on the
        writer connection and make every insert, durable and visible to no one until
        `commit_staged` (or undone by `rollback_staged`; a crash undoes it too).

        The split puts the CPU work (a few ms per thousand rows, each row taking
        Python's GIL) on the owner's thread and leaves `commit_staged` -- one statement
        whose time is the fsync, run with the GIL released -- to whichever thread the
        caller likes. Readers on `conn` see the last committed block throughout (WAL
        snapshots), never a half-written one.
        """
        c = self._writer
        assert not c.in_transaction, "a staged block is not committed yet"
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO chain_blocks (height, hash, time_ms, proposer, state_root, "
                      "num_txs, raw) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (height, block_hash, time_ms, proposer, state_root, len(outcomes),
                       raw_block))
            c.execute("INSERT INTO chain_certificates (height, raw) VALUES (?, ?)",
                      (height, raw_certificate))
            c.executemany("INSERT INTO chain_txs (id, height, idx, kind) VALUES (?, ?, ?, ?)",
                          [(o.id, height, i, o.kind) for i, o in enumerate(outcomes)])
            results = [(height, i, _result_json(o.result)) for i, o in enumerate(outcomes)
                       if o.result is not None]
            if results:
                c.executemany("INSERT INTO chain_tx_results (height, idx, result) "
                              "VALUES (?, ?, ?)", results)
            self._write_changes(changes, c)
            if new_validators is not None:
                c.execute("INSERT INTO chain_validators (from_height, members) VALUES (?, ?)",
                          (height + 2, new_validators))
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def commit_staged(self) -> None:
        """Make the staged block durable (the fsync); on failure nothing of it remains."""
        c = self._writer
        assert c.in_transaction, "no staged block"
        try:
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def rollback_staged(self) -> None:
        if self._writer.in_transaction:
            self._writer.execute("ROLLBACK")

    # ---- reads ---------------------------------------------------------------------------

    def last_block(self) -> tuple[int, bytes, int, bytes] | None:
        """(height, hash, time_ms, state_root) of the last committed block."""
        row = self.conn.execute("SELECT height, hash, time_ms, state_root FROM chain_blocks "
                                "ORDER BY height DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], bytes(row[1]), row[2], bytes(row[3]))

    def load_state(self, state: State) -> None:
        for t in self.tables.values():
            nk = len(t.key_names)
            cols = t.key_names + t.column_names
            sql = f'SELECT {", ".join(cols)} FROM "{t.name}"'
            names = t.column_names
            for r in self.conn.execute(sql):
                state.load_row(t.name, t.key_of(tuple(r[:nk])), dict(zip(names, r[nk:],
                                                                         strict=True)))

    def validator_history(self) -> list[tuple[int, bytes]]:
        return [(h, bytes(m)) for h, m in self.conn.execute(
            "SELECT from_height, members FROM chain_validators ORDER BY from_height")]

    def block_raw(self, height: int) -> bytes | None:
        row = self.conn.execute("SELECT raw FROM chain_blocks WHERE height = ?",
                                (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def block_height(self, block_hash: bytes) -> int | None:
        row = self.conn.execute("SELECT height FROM chain_blocks WHERE hash = ?",
                                (block_hash,)).fetchone()
        return None if row is None else int(row[0])

    def certificate_raw(self, height: int) -> bytes | None:
        row = self.conn.execute("SELECT raw FROM chain_certificates WHERE height = ?",
                                (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def tx(self, txid: bytes) -> tuple[int, int, str, Any] | None:
        """(height, index, kind, result) of a committed transaction."""
        row = self.conn.execute(
            "SELECT t.height, t.idx, t.kind, r.result FROM chain_txs t LEFT JOIN "
            "chain_tx_results r ON r.height = t.height AND r.idx = t.idx WHERE t.id = ?",
            (txid,)).fetchone()
        if row is None:
            return None
        return (row[0], row[1], row[2], None if row[3] is None else json.loads(row[3]))

    def blocks(self, start: int = 1) -> Iterator[tuple[int, bytes, bytes]]:
        """(height, raw block, raw certificate) from `start` on."""
        for h, b, c in self.conn.execute(
                "SELECT b.height, b.raw, c.raw FROM chain_blocks b JOIN chain_certificates c "
                "ON c.height = b.height WHERE b.height >= ? ORDER BY b.height", (start,)):
            yield h, bytes(b), bytes(c)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL for queries (the CLI and API); refuses anything that writes."""
        if not self.conn.execute("SELECT 1").fetchone():  # pragma: no cover
            raise StoreError("store closed")
        self.conn.execute("PRAGMA query_only = ON")
        try:
            return list(self.conn.execute(sql, params))
        finally:
            self.conn.execute("PRAGMA query_only = OFF")
