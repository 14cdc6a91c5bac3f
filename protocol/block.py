"""Block and header wire formats (DESIGN 4).

A block is a header, the raw transactions, the commit certificate of the previous
block and any evidence. The header commits to all of them by hash, and its hash is
what validators precommit; so a certificate for a header fixes the whole block.

Times are Unix milliseconds (`time_ms`), chosen by the proposer; parameters stay in
seconds as DESIGN.md writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, sha256
from protocol.encoding import DecodeError, decode, encode
from protocol.merkle import EMPTY_ROOT, merkle_root
from protocol.votes import Certificate, CertificateError, Evidence

PROTOCOL_VERSION = 1
MAX_BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCK_TXS = 10_000
MAX_EVIDENCE = 100
NO_CERTIFICATE_HASH = sha256(b"no certificate")

HEADER_FIELDS = (
    "version", "chain_id", "height", "time_ms", "prev_hash", "proposer", "txs_root",
    "state_root", "validators_hash", "next_validators_hash", "last_commit_hash",
    "evidence_hash",
)


class BlockError(ValueError):
    """A structurally invalid block or header."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    chain_id: bytes
    height: int
    time_ms: int
    prev_hash: bytes
    """Hash of the previous header; the chain id at height 1."""
    proposer: bytes
    txs_root: bytes
    state_root: bytes
    validators_hash: bytes
    next_validators_hash: bytes
    last_commit_hash: bytes
    evidence_hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HEADER_FIELDS}

    def encode(self) -> bytes:
        return encode(self.to_wire())

    def hash(self) -> bytes:
        return sha256(self.encode())

    @classmethod
    def from_wire(cls, obj: Any) -> Header:
        if type(obj) is not dict or set(obj) != set(HEADER_FIELDS):
            raise BlockError("header fields wrong")
        for name in ("version", "height", "time_ms"):
            if type(obj[name]) is not int or obj[name] < 0:
                raise BlockError(f"header {name} must be a non-negative integer")
        for name in HEADER_FIELDS[3:]:
            if name == "time_ms":
                continue
            want = PUBLIC_KEY_LEN if name == "proposer" else HASH_LEN
            if type(obj[name]) is not bytes or len(obj[name]) != want:
                raise BlockError(f"header {name} must be {want} bytes")
        if type(obj["chain_id"]) is not bytes or len(obj["chain_id"]) != HASH_LEN:
            raise BlockError("header chain_id must be 32 bytes")
        if obj["height"] < 1:
            raise BlockError("block heights start at 1")
        return cls(**obj)


def evidence_hash(evidence: tuple[Evidence, ...]) -> bytes:
    return merkle_root([encode(e.to_wire()) for e in evidence]) if evidence else EMPTY_ROOT


def commit_hash(cert: Certificate | None) -> bytes:
    return cert.hash() if cert is not None else NO_CERTIFICATE_HASH


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]
    last_commit: Certificate | None
    evidence: tuple[Evidence, ...] = field(default=())

    @property
    def height(self) -> int:
        return self.header.height

    def hash(self) -> bytes:
        return self.header.hash()

    def check_body(self) -> None:
        """The header commits to the body: transactions, certificate and evidence."""
        if merkle_root(self.txs) != self.header.txs_root:
            raise BlockError("transactions root does not match the transactions")
        if commit_hash(self.last_commit) != self.header.last_commit_hash:
            raise BlockError("last commit hash does not match the certificate")
        if evidence_hash(self.evidence) != self.header.evidence_hash:
            raise BlockError("evidence hash does not match the evidence")
        if (self.header.height == 1) != (self.last_commit is None):
            raise BlockError("only the first block has no previous certificate")
        if self.last_commit is not None:
            if self.last_commit.height != self.header.height - 1:
                raise BlockError("certificate is not for the previous height")
            if self.last_commit.block_hash != self.header.prev_hash:
                raise BlockError("certificate is not for the previous block")

    def to_wire(self) -> dict[str, Any]:
        return {
            "header": self.header.to_wire(),
            "txs": list(self.txs),
            "last_commit": self.last_commit.to_wire() if self.last_commit else None,
            "evidence": [e.to_wire() for e in self.evidence],
        }

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def from_wire(cls, obj: Any) -> Block:
        if type(obj) is not dict or set(obj) != {"header", "txs", "last_commit", "evidence"}:
            raise BlockError("block must be a map of header, txs, last_commit, evidence")
        header = Header.from_wire(obj["header"])
        txs = obj["txs"]
        if type(txs) is not list or len(txs) > MAX_BLOCK_TXS:
            raise BlockError(f"block txs must be a list of at most {MAX_BLOCK_TXS}")
        if any(type(t) is not bytes for t in txs):
            raise BlockError("block txs must be raw bytes")
        ev = obj["evidence"]
        if type(ev) is not list or len(ev) > MAX_EVIDENCE:
            raise BlockError("block evidence must be a list")
        try:
            cert = None if obj["last_commit"] is None else Certificate.from_wire(obj["last_commit"])
            evidence = tuple(Evidence.from_wire(e) for e in ev)
        except (CertificateError, ValueError) as exc:
            raise BlockError(str(exc)) from None
        return cls(header, tuple(txs), cert, evidence)

    @classmethod
    def decode(cls, data: bytes) -> Block:
        try:
            return cls.from_wire(decode(data, max_size=MAX_BLOCK_BYTES))
        except DecodeError as exc:
            raise BlockError(f"undecodable block: {exc}") from None
