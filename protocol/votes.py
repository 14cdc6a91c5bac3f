"""Consensus votes, commit certificates, validator sets and evidence (wire formats).

These live in `protocol/` because they are what nodes exchange and what auditors
check; they know nothing of the ledger. A validator set is data: an ordered tuple of
member ids, each with power 1 (DESIGN 5). Its order is the proposer rotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, SigningKey, sha256
from protocol.encoding import encode
from protocol.envelope import Domain, check_signature, sign

PREVOTE = "prevote"
PRECOMMIT = "precommit"
VOTE_TYPES = (PREVOTE, PRECOMMIT)
NIL = b""
"""The block hash of a vote for no block."""

MAX_VALIDATORS = 1000


class CertificateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """Members that vote at one height, in proposer order. Power is 1 each."""

    members: tuple[bytes, ...]

    def __post_init__(self) -> None:
        assert len(set(self.members)) == len(self.members), "duplicate validator"
        assert all(len(m) == PUBLIC_KEY_LEN for m in self.members)
        assert len(self.members) <= MAX_VALIDATORS

    @property
    def size(self) -> int:
        return len(self.members)

    def quorum(self) -> int:
        """Smallest count that is more than 2/3 of the set."""
        return (2 * self.size) // 3 + 1

    def proposer(self, height: int, round: int) -> bytes:
        return self.members[(height + round) % self.size]

    def hash(self) -> bytes:
        return sha256(encode([bytes(m) for m in self.members]))

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def to_wire(self) -> list[bytes]:
        return list(self.members)


@dataclass(frozen=True, slots=True)
class Vote:
    """A signed prevote or precommit for `block_hash` (NIL for none) at height/round."""

    type: str
    height: int
    round: int
    block_hash: bytes
    validator: bytes
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "height": self.height, "round": self.round,
                "block": self.block_hash}

    @classmethod
    def create(cls, key: SigningKey, chain_id: bytes, type: str, height: int, round: int,
               block_hash: bytes) -> Vote:
        body = {"type": type, "height": height, "round": round, "block": block_hash}
        return cls(type, height, round, block_hash, key.public,
                   sign(key, Domain.VOTE, chain_id, body))

    def verify(self, chain_id: bytes) -> bool:
        return check_signature(Domain.VOTE, chain_id, self.body(), self.validator, self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {"body": self.body(), "signer": self.validator, "sig": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> Vote:
        if type(obj) is not dict or set(obj) != {"body", "signer", "sig"}:
            raise ValueError("vote must be a map of body, signer, sig")
        b, signer, sig = obj["body"], obj["signer"], obj["sig"]
        if type(b) is not dict or set(b) != {"type", "height", "round", "block"}:
            raise ValueError("vote body must have type, height, round, block")
        if b["type"] not in VOTE_TYPES:
            raise ValueError("vote type must be prevote or precommit")
        for f in ("height", "round"):
            if type(b[f]) is not int or not 0 <= b[f] < 2**62:
                raise ValueError(f"vote {f} must be a non-negative integer")
        blk = b["block"]
        if type(blk) is not bytes or len(blk) not in (0, HASH_LEN):
            raise ValueError("vote block must be a 32-byte hash or empty (nil)")
        if type(signer) is not bytes or len(signer) != PUBLIC_KEY_LEN:
            raise ValueError("vote signer must be a 32-byte key")
        if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
            raise ValueError("vote sig must be 64 bytes")
        return cls(b["type"], b["height"], b["round"], blk, signer, sig)

    def conflicts_with(self, other: Vote) -> bool:
        """Same validator, same height/round/type, different block: equivocation."""
        return (self.validator == other.validator and self.type == other.type
                and self.height == other.height and self.round == other.round
                and self.block_hash != other.block_hash)


@dataclass(frozen=True, slots=True)
class Certificate:
    """More than 2/3 of a height's validators precommitting one block in one round."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]
    """(validator id, signature) pairs, sorted by validator id."""

    @classmethod
    def from_votes(cls, votes: Iterable[Vote]) -> Certificate:
        vs = sorted(votes, key=lambda v: v.validator)
        assert vs, "a certificate needs votes"
        first = vs[0]
        for v in vs:
            assert v.type == PRECOMMIT and v.height == first.height
            assert v.round == first.round and v.block_hash == first.block_hash
        return cls(first.height, first.round, first.block_hash,
                   tuple((v.validator, v.sig) for v in vs))

    def votes(self) -> list[Vote]:
        return [Vote(PRECOMMIT, self.height, self.round, self.block_hash, val, sig)
                for val, sig in self.signatures]

    def verify(self, chain_id: bytes, validators: ValidatorSet,
               expected_hash: bytes | None = None) -> None:
        """Raise `CertificateError` unless this certificate commits the block."""
        if expected_hash is not None and self.block_hash != expected_hash:
            raise CertificateError("certificate is for another block")
        if self.block_hash == NIL:
            raise CertificateError("certificate for nil")
        seen: set[bytes] = set()
        prev = b""
        for val, _sig in self.signatures:
            if val <= prev:
                raise CertificateError("signatures not sorted by validator or duplicated")
            prev = val
            if val not in validators:
                raise CertificateError(f"signer {val.hex()[:16]} is not a validator at this height")
            seen.add(val)
        if len(seen) < validators.quorum():
            raise CertificateError(
                f"{len(seen)} signatures, need {validators.quorum()} of {validators.size}")
        for vote in self.votes():
            if not vote.verify(chain_id):
                raise CertificateError(f"bad signature from {vote.validator.hex()[:16]}")

    def to_wire(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "block": self.block_hash,
                "sigs": [[v, s] for v, s in self.signatures]}

    @classmethod
    def from_wire(cls, obj: Any) -> Certificate:
        if type(obj) is not dict or set(obj) != {"height", "round", "block", "sigs"}:
            raise CertificateError("certificate must be a map of height, round, block, sigs")
        h, r, blk, sigs = obj["height"], obj["round"], obj["block"], obj["sigs"]
        if type(h) is not int or type(r) is not int or h < 1 or r < 0:
            raise CertificateError("certificate height/round invalid")
        if type(blk) is not bytes or len(blk) != HASH_LEN:
            raise CertificateError("certificate block must be a 32-byte hash")
        if type(sigs) is not list or not 0 < len(sigs) <= MAX_VALIDATORS:
            raise CertificateError("certificate sigs must be a non-empty list")
        pairs = []
        for p in sigs:
            if (type(p) is not list or len(p) != 2 or type(p[0]) is not bytes
                    or len(p[0]) != PUBLIC_KEY_LEN or type(p[1]) is not bytes
                    or len(p[1]) != SIGNATURE_LEN):
                raise CertificateError("certificate signature entry malformed")
            pairs.append((p[0], p[1]))
        return cls(h, r, blk, tuple(pairs))

    def hash(self) -> bytes:
        return sha256(encode(self.to_wire()))


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two conflicting signed votes by one validator (equivocation)."""

    a: Vote
    b: Vote

    def check(self, chain_id: bytes) -> None:
        if not self.a.conflicts_with(self.b):
            raise ValueError("votes do not conflict")
        if not (self.a.verify(chain_id) and self.b.verify(chain_id)):
            raise ValueError("evidence carries a bad signature")

    def to_wire(self) -> dict[str, Any]:
        # Canonical order so the same equivocation is one piece of evidence.
        x, y = sorted([self.a.to_wire(), self.b.to_wire()], key=encode)
        return {"a": x, "b": y}

    @classmethod
    def from_wire(cls, obj: Any) -> Evidence:
        if type(obj) is not dict or set(obj) != {"a", "b"}:
            raise ValueError("evidence must be a map of a, b")
        return cls(Vote.from_wire(obj["a"]), Vote.from_wire(obj["b"]))

    def hash(self) -> bytes:
        return sha256(encode(self.to_wire()))


def validator_set(members: Sequence[bytes]) -> ValidatorSet:
    """The canonical order of a validator set: sorted by id."""
    return ValidatorSet(tuple(sorted(members)))
