"""The commune state: typed tables of plain rows, with an undo log.

Each table maps a key (one value, or a tuple for composite keys) to a row: a dict of
the table's declared columns, each an int, bytes or str. Nothing else is allowed in a
row, because rows are hashed into the state root and mirrored into SQLite, and both
must round-trip exactly (a bool or a float would not).

Execution writes straight into the tables and records what it overwrote in an undo
log. A rejected transaction rolls back to its mark; a finished block turns the log
into its change set (the first old value and the final new value of every touched
row), and rolls the tables back so that nothing changes until the block is committed.
That keeps reads on the hot path a single dict lookup.

`get` returns a copy, so a handler that edits the dict it read cannot change the state
behind the undo log's back; `put` takes ownership of the dict it is given.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from ledger.multiset_hash import MultisetHash, element

Value = int | bytes | str
Key = Any
"""A `Value`, or a tuple of them for a composite key."""
Row = dict[str, Any]
"""Column name to value; values are `Value`s (checked by `Table.check` on every write)."""

_SQL_TYPES = {int: "INTEGER", bytes: "BLOB", str: "TEXT"}
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
"""Tuples pack as arrays: an entry is the array [table, key, [column values in order]]."""
MAX_KEY_COLUMNS = 4


class RowError(TypeError):
    """A row or key that does not match its table's declaration (a bug in a handler)."""


@dataclass(frozen=True)
class Table:
    """Declaration of one state table; it is also the layout of its SQLite mirror."""

    name: str
    key: tuple[tuple[str, type], ...]
    columns: tuple[tuple[str, type], ...]
    doc: str = ""
    key_names: tuple[str, ...] = field(init=False)
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        assert self.name.isidentifier() and not self.name.startswith("_"), self.name
        assert 1 <= len(self.key) <= MAX_KEY_COLUMNS
        names = [n for n, _ in self.key] + [n for n, _ in self.columns]
        assert len(set(names)) == len(names), f"duplicate column in {self.name}"
        for n, t in list(self.key) + list(self.columns):
            assert n.isidentifier() and t in _SQL_TYPES, (self.name, n, t)
        object.__setattr__(self, "key_names", tuple(n for n, _ in self.key))
        object.__setattr__(self, "column_names", tuple(n for n, _ in self.columns))
        object.__setattr__(self, "_key_types", tuple(t for _, t in self.key))
        getter = operator.itemgetter(*self.column_names) if self.columns else (lambda r: ())
        object.__setattr__(self, "values", getter if len(self.columns) != 1
                           else (lambda r, _n=self.column_names[0]: (r[_n],)))

    @property
    def composite(self) -> bool:
        return len(self.key) > 1

    def check(self, key: Key, row: Row) -> None:
        """Raise `RowError` unless key and row match the declaration exactly.

        On every write, so it is written for speed: C-level key-set comparison first.
        """
        kt = self._key_types  # type: ignore[attr-defined]
        if len(kt) == 1:
            if type(key) is not kt[0]:
                raise RowError(f"{self.name}: key must be {kt[0].__name__}, got {key!r}")
        elif type(key) is not tuple or len(key) != len(kt) or any(
                type(v) is not t for v, t in zip(key, kt, strict=False)):
            raise RowError(f"{self.name}: key must be a tuple of {self.key_names} "
                           f"({', '.join(t.__name__ for t in kt)}), got {key!r}")
        if type(row) is not dict or len(row) != len(self.columns):
            raise RowError(f"{self.name}: row must have exactly the columns "
                           f"{self.column_names}, got {row!r}")
        try:  # as many keys as columns, and every column present: exactly the columns
            for n, t in self.columns:
                if type(row[n]) is not t:
                    raise RowError(f"{self.name}.{n} must be {t.__name__}, got {row[n]!r}")
        except KeyError:
            raise RowError(f"{self.name}: row must have exactly the columns "
                           f"{self.column_names}, got {row!r}") from None

    def entry(self, key: Key, row: Row) -> bytes:
        """The bytes hashed into the state root for one row (table, key, column values)."""
        return _packb((self.name, key, self.values(row)))  # type: ignore[attr-defined]

    def key_of(self, values: tuple[Value, ...]) -> Key:
        return values if self.composite else values[0]

    def key_values(self, key: Key) -> tuple[Value, ...]:
        return key if self.composite else (key,)

    def create_sql(self) -> str:
        cols = [f'"{n}" {_SQL_TYPES[t]} NOT NULL' for n, t in self.key + self.columns]
        pk = ", ".join(f'"{n}"' for n in self.key_names)
        return (f'CREATE TABLE IF NOT EXISTS "{self.name}" ({", ".join(cols)}, '
                f"PRIMARY KEY ({pk})) WITHOUT ROWID")


class Change(NamedTuple):
    table: str
    key: Key
    old: Row | None
    new: Row | None


class State:
    """All tables in memory, the undo log of the block being executed, the state hash."""

    def __init__(self, specs: Mapping[str, Table]) -> None:
        self.specs: dict[str, Table] = dict(specs)
        self.data: dict[str, dict[Key, Row]] = {name: {} for name in self.specs}
        self._checks = {name: spec.check for name, spec in self.specs.items()}
        self.undo: list[tuple[str, Key, Row | None]] = []
        self.hash = MultisetHash()

    # ---- reads ---------------------------------------------------------------------------

    def get(self, table: str, key: Key) -> Row | None:
        row = self.data[table].get(key)
        return None if row is None else dict(row)

    def peek(self, table: str, key: Key) -> Row | None:
        """The stored row itself, for reads that never modify it (hot paths)."""
        return self.data[table].get(key)

    def has(self, table: str, key: Key) -> bool:
        return key in self.data[table]

    def count(self, table: str) -> int:
        return len(self.data[table])

    def scan(self, table: str, prefix: tuple[Value, ...] = ()) -> Iterator[tuple[Key, Row]]:
        """Rows in key order (copies), optionally only those whose key starts with `prefix`.

        Materialized before yielding, so callers may write to the table while iterating.
        """
        t = self.data[table]
        if prefix:
            n = len(prefix)
            keys = sorted(k for k in t if k[:n] == prefix)
        else:
            keys = sorted(t)
        for k in keys:
            yield k, dict(t[k])

    def keys(self, table: str) -> list[Key]:
        return sorted(self.data[table])

    # ---- writes --------------------------------------------------------------------------

    def put(self, table: str, key: Key, row: Row) -> None:
        self._checks[table](key, row)
        t = self.data[table]
        self.undo.append((table, key, t.get(key)))
        t[key] = row

    def delete(self, table: str, key: Key) -> None:
        old = self.data[table].pop(key, None)
        if old is not None:
            self.undo.append((table, key, old))

    def mark(self) -> int:
        return len(self.undo)

    def rollback(self, mark: int = 0) -> None:
        undo, data = self.undo, self.data
        while len(undo) > mark:
            table, key, old = undo.pop()
            if old is None:
                data[table].pop(key, None)
            else:
                data[table][key] = old

    # ---- block boundaries ------------------------------------------------------------------

    def changes(self) -> list[Change]:
        """The net change of everything written since the last `settle`, in a stable order."""
        # Later entries overwrite earlier ones, so walking the log backwards leaves the
        # oldest value of each row: its value when the log started.
        first = {(table, key): old for table, key, old in reversed(self.undo)}
        data = self.data
        make = tuple.__new__  # a Change without the Python-level NamedTuple constructor
        return [make(Change, (table, key, old, new)) for (table, key), old in first.items()
                if (new := data[table].get(key)) != old]

    def revert(self, changes: list[Change]) -> None:
        """Undo a whole log at once given its `changes()` (cheaper than `rollback(0)`).

        Rows written but left equal to their old value keep an equal copy.
        """
        data = self.data
        for table, key, old, _new in changes:
            if old is None:
                del data[table][key]
            else:
                data[table][key] = old
        self.undo.clear()

    def root_after(self, changes: list[Change]) -> tuple[bytes, MultisetHash]:
        """State root and hash value once `changes` are applied to the settled state."""
        specs = self.specs
        olds = [specs[t].entry(k, o) for t, k, o, _n in changes if o is not None]
        news = [specs[t].entry(k, n) for t, k, _o, n in changes if n is not None]
        removed = sum(map(element, olds))
        added = sum(map(element, news))
        h = self.hash.copy()
        h.combine(added, removed)
        return h.digest(), h

    def apply(self, changes: list[Change], new_hash: MultisetHash) -> None:
        """Make a block's change set the settled state."""
        assert not self.undo, "apply with an open undo log"
        data = self.data
        for table, key, _old, new in changes:
            if new is None:
                data[table].pop(key, None)
            else:
                data[table][key] = new
        self.hash = new_hash

    # ---- whole-state ---------------------------------------------------------------------

    def load_row(self, table: str, key: Key, row: Row) -> None:
        """Insert a row while building the state from storage (no undo, no hash)."""
        self.specs[table].check(key, row)
        self.data[table][key] = row

    def recompute_hash(self) -> MultisetHash:
        """The hash of the whole state from scratch: what `reopen` verifies."""
        total = 0
        for name, rows in self.data.items():
            entry = self.specs[name].entry
            total += sum(map(element, [entry(k, r) for k, r in rows.items()]))
        return MultisetHash(total)

    def root(self) -> bytes:
        return self.hash.digest()
