"""A small deterministic application with the ledger's interface, for the simulator.

It executes opaque transactions -- data items with unique ids, and "add validator" /
"remove validator" operations -- so the simulator exercises membership changes (a change
in block H takes effect at H+2) without the commune's whole state machine. The real
`ledger.Ledger` runs in the simulator's ledger mode; both answer the same calls.

Its checks are what the engine must not let through: the hash chain, block time after the
previous block's, the proposer and validator-set hashes, the previous block's
certificate, evidence, every transaction valid and not replayed, the state root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.block import PROTOCOL_VERSION, Block, BlockError, Header, commit_hash, evidence_hash
from protocol.crypto import sha256
from protocol.encoding import DecodeError, decode, encode
from protocol.merkle import merkle_root
from protocol.votes import Certificate, CertificateError, Evidence, ValidatorSet, validator_set


class BlockRejected(ValueError):
    pass


_VERIFIED: dict[tuple[bytes, bytes, bytes], str | None] = {}


def verify_certificate(cert: Certificate, chain_id: bytes, validators: ValidatorSet,
                       expected: bytes) -> None:
    """`cert.verify`, memoized: whether a certificate commits a block to a validator set
    is a pure function of the three, and every simulated node checks the same ones."""
    key = (cert.hash(), validators.hash(), chain_id + expected)
    if key not in _VERIFIED:
        if len(_VERIFIED) > 20_000:
            _VERIFIED.clear()
        try:
            cert.verify(chain_id, validators, expected)
            _VERIFIED[key] = None
        except CertificateError as exc:
            _VERIFIED[key] = str(exc)
    problem = _VERIFIED[key]
    if problem is not None:
        raise CertificateError(problem)


@dataclass(frozen=True)
class SimGenesis:
    chain_id: bytes
    members: tuple[bytes, ...]
    time_ms: int


def data_tx(n: int) -> bytes:
    return encode({"op": "data", "id": n})


def member_tx(op: str, who: bytes, n: int) -> bytes:
    assert op in ("add", "remove")
    return encode({"op": op, "who": who, "id": n})


BAD_TX = encode({"op": "bad", "id": -1})


def parse_tx(raw: bytes) -> dict[str, Any]:
    try:
        obj = decode(raw, max_size=4096)
    except DecodeError as exc:
        raise BlockRejected(f"undecodable transaction: {exc}") from None
    if type(obj) is not dict or obj.get("op") not in ("data", "add", "remove"):
        raise BlockRejected("unknown transaction")
    if type(obj.get("id")) is not int:
        raise BlockRejected("transaction without id")
    return obj


@dataclass
class SimLedger:
    """Committed blocks and the state they produce; durable across a simulated crash."""

    genesis: SimGenesis
    blocks: list[Block] = field(default_factory=list)
    certs: list[Certificate] = field(default_factory=list)
    roots: list[bytes] = field(default_factory=list)
    members_after: list[tuple[bytes, ...]] = field(default_factory=list)
    tx_ids: set[bytes] = field(default_factory=set)
    evidence_ids: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.members_after:
            self.members_after = [tuple(sorted(self.genesis.members))]

    @classmethod
    def open(cls, path: None, genesis: SimGenesis) -> SimLedger:
        return cls(genesis)

    # ---- queries ----

    @property
    def chain_id(self) -> bytes:
        return self.genesis.chain_id

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def last_block_hash(self) -> bytes:
        return self.blocks[-1].hash() if self.blocks else self.genesis.chain_id

    @property
    def last_time_ms(self) -> int:
        return self.blocks[-1].header.time_ms if self.blocks else self.genesis.time_ms

    @property
    def state_root(self) -> bytes:
        return self.roots[-1] if self.roots else sha256(b"genesis" + self.genesis.chain_id)

    def validators_at(self, height: int) -> ValidatorSet:
        assert 1 <= height <= self.height + 2, f"validators of {height} not known yet"
        return validator_set(self.members_after[max(height - 2, 0)])

    def block(self, h: int) -> Block:
        return self.blocks[h - 1]

    def certificate(self, h: int) -> Certificate:
        return self.certs[h - 1]

    # ---- execution ----

    def _execute(
        self, txs: tuple[bytes, ...], time_ms: int, height: int, strict: bool
    ) -> tuple[list[bytes], list[bytes], tuple[bytes, ...]]:
        """Run txs over the current state: (accepted, skipped, members after)."""
        members = set(self.members_after[-1])
        seen: set[bytes] = set()
        ok: list[bytes] = []
        skipped: list[bytes] = []
        for raw in txs:
            try:
                tx = parse_tx(raw)
                tid = sha256(raw)
                if tid in self.tx_ids or tid in seen:
                    raise BlockRejected("transaction replayed")
                if tx["op"] in ("add", "remove"):
                    who = tx.get("who")
                    if type(who) is not bytes or len(who) != 32:
                        raise BlockRejected("bad member id")
                    if tx["op"] == "add":
                        if who in members:
                            raise BlockRejected("already a member")
                        members.add(who)
                    else:
                        if who not in members or len(members) == 1:
                            raise BlockRejected("cannot remove")
                        members.remove(who)
                seen.add(tid)
                ok.append(raw)
            except BlockRejected:
                if strict:
                    raise
                skipped.append(raw)
        return ok, skipped, tuple(sorted(members))

    def _root(
        self,
        height: int,
        time_ms: int,
        txs: list[bytes] | tuple[bytes, ...],
        members: tuple[bytes, ...],
    ) -> bytes:
        return sha256(
            encode([self.state_root, height, time_ms, list(members), merkle_root(list(txs))])
        )

    def build_block(
        self,
        txs: list[bytes],
        time_ms: int,
        proposer: bytes,
        last_commit: Certificate | None,
        evidence: tuple[Evidence, ...] = (),
    ) -> tuple[Block, list[bytes]]:
        h = self.height + 1
        assert time_ms > self.last_time_ms
        ok, skipped, members = self._execute(tuple(txs), time_ms, h, strict=False)
        good_ev = tuple(e for e in evidence if self._evidence_problem(e, set()) is None)
        header = Header(
            version=PROTOCOL_VERSION,
            chain_id=self.chain_id,
            height=h,
            time_ms=time_ms,
            prev_hash=self.last_block_hash,
            proposer=proposer,
            txs_root=merkle_root(ok),
            state_root=self._root(h, time_ms, ok, members),
            validators_hash=self.validators_at(h).hash(),
            next_validators_hash=self.validators_at(h + 1).hash(),
            last_commit_hash=commit_hash(last_commit),
            evidence_hash=evidence_hash(good_ev),
        )
        return Block(header, tuple(ok), last_commit, good_ev), skipped

    def _evidence_problem(self, ev: Evidence, seen: set[bytes]) -> str | None:
        try:
            ev.check(self.chain_id)
        except ValueError as exc:
            return str(exc)
        hid = ev.hash()
        if hid in self.evidence_ids or hid in seen:
            return "evidence already recorded"
        if not 1 <= ev.a.height <= self.height:
            return "evidence from a height not yet committed"
        if ev.a.validator not in self.validators_at(ev.a.height):
            return "evidence against a non-validator"
        return None

    def check_block(self, block: Block) -> None:
        hd = block.header
        h = self.height + 1
        if hd.chain_id != self.chain_id or hd.version != PROTOCOL_VERSION:
            raise BlockRejected("wrong chain or version")
        if hd.height != h:
            raise BlockRejected(f"height {hd.height}, expected {h}")
        if hd.prev_hash != self.last_block_hash:
            raise BlockRejected("does not extend the last block")
        if hd.time_ms <= self.last_time_ms:
            raise BlockRejected("time not after the previous block")
        if hd.proposer not in self.validators_at(h):
            raise BlockRejected("proposer is not a validator")
        if (
            hd.validators_hash != self.validators_at(h).hash()
            or hd.next_validators_hash != self.validators_at(h + 1).hash()
        ):
            raise BlockRejected("validator set hashes wrong")
        try:
            block.check_body()
        except BlockError as exc:
            raise BlockRejected(str(exc)) from None
        if block.last_commit is not None:
            try:
                verify_certificate(block.last_commit, self.chain_id,
                                   self.validators_at(h - 1), self.last_block_hash)
            except CertificateError as exc:
                raise BlockRejected(f"last commit: {exc}") from None
        seen: set[bytes] = set()
        for ev in block.evidence:
            problem = self._evidence_problem(ev, seen)
            if problem is not None:
                raise BlockRejected(f"evidence: {problem}")
            seen.add(ev.hash())
        _, _, members = self._execute(block.txs, hd.time_ms, h, strict=True)
        if hd.state_root != self._root(h, hd.time_ms, block.txs, members):
            raise BlockRejected("state root mismatch")

    def commit(self, block: Block, certificate: Certificate) -> None:
        self.check_block(block)
        h = self.height + 1
        try:
            verify_certificate(certificate, self.chain_id, self.validators_at(h), block.hash())
        except CertificateError as exc:
            raise BlockRejected(f"certificate: {exc}") from None
        _, _, members = self._execute(block.txs, block.header.time_ms, h, strict=True)
        self.roots.append(block.header.state_root)
        self.blocks.append(block)
        self.certs.append(certificate)
        self.members_after.append(members)
        self.tx_ids.update(sha256(t) for t in block.txs)
        self.evidence_ids.update(e.hash() for e in block.evidence)
