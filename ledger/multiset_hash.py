"""The state hash: a homomorphic multiset hash over every row of the state.

The state root must be identical on every node, depend only on the state (never on the
history that produced it), and cost O(rows changed) per block. A multiset hash gives all
three: each entry (table, key, row) is hashed to a group element, the state's hash is the
sum of its entries' elements, so a block adds the rows it wrote and subtracts the rows
they replaced or deleted, in any order and with no scan of the rest.

Construction: AdHash (Bellare and Micciancio, "A New Paradigm for Collision-free Hashing",
EUROCRYPT 1997) in the group of integers modulo 2**4096; an entry's element is 512 bytes
of BLAKE3 extendable output (little-endian), domain-separated. The best known attack is
Wagner's generalized birthday algorithm ("A Generalized Birthday Problem", CRYPTO 2002),
about 2**(2*sqrt(4096)) = 2**128 work: the same 128-bit collision level as SHA-256, which
every other hash in the system (ids, block hashes, Merkle roots) already stands on.

Why not MuHash3072 or LtHash16: in CPython one 3072-bit modular multiplication costs about
7 us and turning LtHash16's 2048-byte element into an integer about 2 us plus lane-wise
arithmetic; both would cap block execution below the throughput target (DESIGN 9, issue
3 benchmark). An AdHash-4096 element costs about 2 us and a plain big-integer addition.
The trade-off is written down so an auditor can weigh it.
"""

from __future__ import annotations

import hashlib

from blake3 import blake3

BITS = 4096
SIZE = BITS // 8
"""Bytes of one element and of the serialized accumulator (512)."""

MASK = (1 << BITS) - 1
DOMAIN = b"venture-commune/state-entry/v1\n"


def element(entry: bytes) -> int:
    """The group element of one encoded state entry."""
    return int.from_bytes(blake3(DOMAIN + entry).digest(SIZE), "little")


class MultisetHash:
    """A running multiset hash. Inserts and removals accumulate lazily; `digest()` is the root."""

    __slots__ = ("_value",)

    def __init__(self, value: int = 0) -> None:
        self._value = value & MASK

    def copy(self) -> MultisetHash:
        return MultisetHash(self._value)

    def insert(self, entry: bytes) -> None:
        self._value += element(entry)

    def remove(self, entry: bytes) -> None:
        self._value -= element(entry)

    def combine(self, added: int, removed: int) -> None:
        """Fold in pre-summed elements (the block executor sums them without reducing)."""
        self._value += added - removed

    @property
    def value(self) -> int:
        self._value &= MASK  # two's complement: also reduces negative sums correctly
        return self._value

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(SIZE, "little")

    @classmethod
    def from_bytes(cls, data: bytes) -> MultisetHash:
        if len(data) != SIZE:
            raise ValueError(f"a multiset hash value is {SIZE} bytes")
        return cls(int.from_bytes(data, "little"))

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MultisetHash) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)
