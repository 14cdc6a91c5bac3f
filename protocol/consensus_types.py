"""What goes in and out of the consensus engine: configuration, timeouts, effects and
the signing records that make restarts safe.

The engine (`protocol/consensus.py`) is sans-I/O. Every input is a method call carrying
the caller's current time; every output is one of the effect values below, returned in
the order the caller must carry them out. See the engine's module docstring for the
contract a driver (the daemon, the simulator) has to keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.block import Block
from protocol.crypto import HASH_LEN
from protocol.encoding import DecodeError, decode, encode
from protocol.proposal import (
    MAX_CONSENSUS_MESSAGE_BYTES,
    ConsensusMessage,
    MessageError,
    Proposal,
    decode_message,
    encode_message,
)
from protocol.votes import NIL, PRECOMMIT, PREVOTE, Certificate, Evidence, Vote


class Step(StrEnum):
    """What a signature or a timeout belongs to within one height and round."""

    PROPOSE = "propose"
    PREVOTE = PREVOTE
    PRECOMMIT = PRECOMMIT


class TimeoutKind(StrEnum):
    PROPOSE = "propose"
    """No acceptable proposal in time: prevote nil."""
    PREVOTE = "prevote"
    """More than 2/3 prevoted but not for one value: precommit nil."""
    PRECOMMIT = "precommit"
    """More than 2/3 precommitted but not for one value: next round."""
    WAIT = "wait"
    """Round 0 waits for transactions or for `empty_block_interval` to pass."""
    REBROADCAST = "rebroadcast"
    """Gossip is lossy: resend our own messages of this height periodically."""


@dataclass(frozen=True, slots=True)
class Timeout:
    height: int
    round: int
    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Durations in milliseconds. Step timeouts grow linearly with the round so that,
    once the network is timely again, some round is long enough for everyone."""

    chain_id: bytes
    timeout_propose_ms: int = 3000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 1000
    timeout_prevote_delta_ms: int = 500
    timeout_precommit_ms: int = 1000
    timeout_precommit_delta_ms: int = 500
    rebroadcast_interval_ms: int = 2000
    empty_block_interval_ms: int = 10_000
    max_clock_drift_ms: int = 5_000
    max_rounds_ahead: int = 256
    """Messages for rounds further ahead than this are dropped (memory bound)."""
    max_future_messages: int = 4096
    """Bound on messages for the next height buffered until we get there."""

    def __post_init__(self) -> None:
        assert len(self.chain_id) == HASH_LEN
        for name in ("timeout_propose_ms", "timeout_prevote_ms", "timeout_precommit_ms",
                     "rebroadcast_interval_ms"):
            assert getattr(self, name) > 0, name
        assert self.empty_block_interval_ms >= 0 and self.max_clock_drift_ms >= 0

    def timeout_ms(self, kind: TimeoutKind, round: int) -> int:
        r = min(round, 10_000)
        if kind is TimeoutKind.PROPOSE:
            return self.timeout_propose_ms + r * self.timeout_propose_delta_ms
        if kind is TimeoutKind.PREVOTE:
            return self.timeout_prevote_ms + r * self.timeout_prevote_delta_ms
        if kind is TimeoutKind.PRECOMMIT:
            return self.timeout_precommit_ms + r * self.timeout_precommit_delta_ms
        if kind is TimeoutKind.REBROADCAST:
            return self.rebroadcast_interval_ms
        raise ValueError(f"{kind} has no fixed duration")


MAX_RECORD_BYTES = 2 * MAX_CONSENSUS_MESSAGE_BYTES
"""A record holds a signed message and at most one block besides (a lock proof)."""


class RecordError(ValueError):
    """A persisted signing record that does not decode or does not match its message."""


@dataclass(frozen=True, slots=True)
class LockProof:
    """Why we precommitted a block: the block and the +2/3 prevotes for it in that round.
    Kept with the precommit so that a restarted node still holds its locked value and
    can re-propose it with a proof of lock; without them, locked and unlocked honest
    validators can block each other forever."""

    block: Block
    prevotes: tuple[Vote, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"block": self.block.to_wire(), "prevotes": [v.to_wire() for v in self.prevotes]}

    @classmethod
    def from_wire(cls, obj: Any) -> LockProof:
        if type(obj) is not dict or set(obj) != {"block", "prevotes"}:
            raise RecordError("lock proof must be a map of block, prevotes")
        if type(obj["prevotes"]) is not list or len(obj["prevotes"]) > 1000:
            raise RecordError("lock proof prevotes must be a list")
        try:
            return cls(Block.from_wire(obj["block"]),
                       tuple(Vote.from_wire(v) for v in obj["prevotes"]))
        except ValueError as exc:
            raise RecordError(f"lock proof: {exc}") from None


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """One thing this node signed: (height, round, step) -> value, with the signed
    message itself so a restarted node can resend it instead of signing anew."""

    height: int
    round: int
    step: Step
    block_hash: bytes
    """The value signed; NIL for a nil vote."""
    message: bytes
    """The encoded consensus message (a Proposal or a Vote)."""
    proof: LockProof | None = None
    """For a precommit of a block: what we locked on and why."""

    def key(self) -> tuple[int, int, Step]:
        return (self.height, self.round, self.step)

    def encode(self) -> bytes:
        return encode({"height": self.height, "round": self.round, "step": self.step.value,
                       "hash": self.block_hash, "msg": self.message,
                       "proof": None if self.proof is None else self.proof.to_wire()})

    def decoded(self) -> Proposal | Vote:
        msg = decode_message(self.message)
        assert isinstance(msg, Proposal | Vote)
        return msg

    @classmethod
    def of(cls, msg: Proposal | Vote, proof: LockProof | None = None) -> SignedRecord:
        raw = encode_message(msg)
        if isinstance(msg, Proposal):
            assert proof is None
            return cls(msg.height, msg.round, Step.PROPOSE, msg.block_hash, raw)
        rec = cls(msg.height, msg.round, Step(msg.type), msg.block_hash, raw, proof)
        rec.check_proof()
        return rec

    def check_proof(self) -> None:
        p = self.proof
        if p is None:
            return
        if self.step is not Step.PRECOMMIT or self.block_hash == NIL:
            raise RecordError("only a precommit of a block carries a lock proof")
        if p.block.hash() != self.block_hash or p.block.height != self.height:
            raise RecordError("lock proof holds another block")
        seen = set()
        for v in p.prevotes:
            if (v.type != PREVOTE or v.height != self.height or v.round != self.round
                    or v.block_hash != self.block_hash or v.validator in seen):
                raise RecordError("lock proof prevote does not support the lock")
            seen.add(v.validator)

    @classmethod
    def decode(cls, data: bytes) -> SignedRecord:
        """Checks that the record is internally consistent (the message says what the
        record says), so a corrupted store cannot smuggle in a different value."""
        try:
            obj: Any = decode(data, max_size=MAX_RECORD_BYTES)
        except DecodeError as exc:
            raise RecordError(f"undecodable signing record: {exc}") from None
        if type(obj) is not dict or set(obj) != {"height", "round", "step", "hash", "msg",
                                                  "proof"}:
            raise RecordError("signing record fields wrong")
        if obj["step"] not in {s.value for s in Step} or type(obj["msg"]) is not bytes:
            raise RecordError("signing record step or message malformed")
        try:
            msg = decode_message(obj["msg"])
        except MessageError as exc:
            raise RecordError(f"signing record message: {exc}") from None
        if not isinstance(msg, Proposal | Vote):
            raise RecordError("signing record holds neither a proposal nor a vote")
        proof = None if obj["proof"] is None else LockProof.from_wire(obj["proof"])
        if proof is not None and not isinstance(msg, Vote):
            raise RecordError("a proposal record carries no lock proof")
        rec = cls.of(msg, proof) if isinstance(msg, Vote) else cls.of(msg)
        if (rec.height, rec.round, rec.step.value, rec.block_hash) != (
                obj["height"], obj["round"], obj["step"], obj["hash"]):
            raise RecordError("signing record does not match its message")
        return rec


# ---- effects: what the engine asks its driver to do, in order ----------------------

@dataclass(frozen=True, slots=True)
class PersistSigned:
    """Store `record` durably (append to the WAL and fsync) before carrying out any
    later effect of the same batch. If the node cannot persist, it must stop: sending
    the following Broadcast without the record is what double signing is made of."""

    record: SignedRecord


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Gossip `message` to every peer (`raw` is its wire encoding)."""

    message: ConsensusMessage
    raw: bytes

    @classmethod
    def of(cls, message: ConsensusMessage) -> Broadcast:
        return cls(message, encode_message(message))


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Call `on_timeout(timeout)` once `delay_ms` have passed. Never cancelled: the
    engine ignores timeouts that no longer apply."""

    timeout: Timeout
    delay_ms: int


@dataclass(frozen=True, slots=True)
class RequestProposal:
    """We propose at height/round: build a block (mempool transactions, pending evidence,
    the previous block's certificate) with `time_ms` as its time, and answer with
    `on_proposal_ready(height, round, block)`."""

    height: int
    round: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class ValidateBlock:
    """Ask the ledger whether `block` is a valid next block; answer with
    `on_block_verdict(block.hash(), ok, reason)`."""

    block: Block


@dataclass(frozen=True, slots=True)
class Commit:
    """Height decided: commit `block` with `certificate`, then call `start_height` for
    the next height with the validator set the ledger now gives for it."""

    block: Block
    certificate: Certificate
    round: int


@dataclass(frozen=True, slots=True)
class EvidenceFound:
    """Two conflicting signed votes: keep for a future block and gossip."""

    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Behind:
    """A message for a later height arrived: peers may have committed blocks we lack;
    block sync should ask them (a hint only -- the message may be from a liar)."""

    height: int


Effect = (PersistSigned | Broadcast | ScheduleTimeout | RequestProposal | ValidateBlock
          | Commit | EvidenceFound | Behind)


@dataclass(slots=True)
class RoundVotes:
    """One round's proposal and votes at the current height, with running tallies.

    A quorum in Algorithm 1 is a set of distinct validators that sent *that* message, so
    an equivocating validator counts towards every value it signed that we accepted; the
    engine bounds which second values it accepts (NIL, or blocks it knows)."""

    proposal: Proposal | None = None
    timely: bool = False
    prevotes: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)
    precommits: dict[bytes, dict[bytes, Vote]] = field(default_factory=dict)
    """validator -> block hash -> vote."""
    prevote_tally: dict[bytes, int] = field(default_factory=dict)
    precommit_tally: dict[bytes, int] = field(default_factory=dict)
    senders: set[bytes] = field(default_factory=set)
    prevote_timeout_set: bool = False
    precommit_timeout_set: bool = False
    polka_seen: bool = False
    """Line 36 of Algorithm 1 fired in this round (it fires once)."""

    def book(self, vote_type: str) -> tuple[dict[bytes, dict[bytes, Vote]], dict[bytes, int]]:
        if vote_type == PREVOTE:
            return self.prevotes, self.prevote_tally
        return self.precommits, self.precommit_tally

    def votes_of(self, vote_type: str, validator: bytes) -> dict[bytes, Vote] | None:
        return self.book(vote_type)[0].get(validator)

    def voters(self, vote_type: str) -> int:
        """Distinct validators with any vote of this type in this round."""
        return len(self.book(vote_type)[0])

    def votes_for(self, vote_type: str, block_hash: bytes) -> list[Vote]:
        out = []
        for by_hash in self.book(vote_type)[0].values():
            v = by_hash.get(block_hash)
            if v is not None:
                out.append(v)
        return out

    def add(self, vote: Vote) -> None:
        votes, tally = self.book(vote.type)
        by_hash = votes.setdefault(vote.validator, {})
        assert vote.block_hash not in by_hash
        by_hash[vote.block_hash] = vote
        tally[vote.block_hash] = tally.get(vote.block_hash, 0) + 1
        self.senders.add(vote.validator)


__all__ = [
    "NIL", "Behind", "LockProof", "Broadcast", "Commit", "Effect", "EngineConfig", "EvidenceFound",
    "PersistSigned", "RecordError", "RequestProposal", "RoundVotes", "ScheduleTimeout",
    "SignedRecord", "Step", "Timeout", "TimeoutKind", "ValidateBlock",
]
