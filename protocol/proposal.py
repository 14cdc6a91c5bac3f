"""Signed block proposals and the framing of every consensus gossip message.

A proposal is the proposer's signature over `{height, round, pol_round, block}` where
`block` is the block hash (the header hash, which commits to the whole body), sent
together with the block itself. `pol_round` is the round in which the proposer saw
more than 2/3 prevotes for this block ("proof of lock"), or -1 for a fresh block;
validators use it to decide whether they may unlock (Tendermint, Algorithm 1).

Consensus gossip carries three kinds of message -- proposals, votes and evidence -- in
one tagged map `{"type": ..., "msg": ...}` so a single decoder rejects anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.block import MAX_BLOCK_BYTES, Block, BlockError
from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, SigningKey
from protocol.encoding import DecodeError, EncodeError, decode, encode
from protocol.envelope import Domain, check_signature, sign
from protocol.votes import Evidence, Vote

MAX_ROUND = 2**31
"""Rounds beyond this are nonsense (timeouts grow with the round); reject them."""

MAX_CONSENSUS_MESSAGE_BYTES = MAX_BLOCK_BYTES + 64 * 1024
"""A proposal is a block plus a small signed header; nothing else comes close."""


class MessageError(ValueError):
    """A consensus message that is malformed, oversized or internally inconsistent."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """`proposer` proposes `block` at height/round; `pol_round` is -1 or < round.
    Build one with `create` or `from_wire`, which keep `block_hash == block.hash()`."""

    height: int
    round: int
    pol_round: int
    block: Block
    proposer: bytes
    sig: bytes
    block_hash: bytes
    """`block.hash()`, computed once (hashing a header means encoding it)."""

    def body(self) -> dict[str, Any]:
        return {"height": self.height, "round": self.round, "pol_round": self.pol_round,
                "block": self.block_hash}

    @classmethod
    def create(cls, key: SigningKey, chain_id: bytes, height: int, round: int,
               pol_round: int, block: Block) -> Proposal:
        assert block.height == height, "a proposal carries a block of its own height"
        assert pol_round == -1 or 0 <= pol_round < round
        bh = block.hash()
        body = {"height": height, "round": round, "pol_round": pol_round, "block": bh}
        return cls(height, round, pol_round, block, key.public,
                   sign(key, Domain.PROPOSAL, chain_id, body), bh)

    def verify(self, chain_id: bytes) -> bool:
        return check_signature(Domain.PROPOSAL, chain_id, self.body(), self.proposer, self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {"body": self.body(), "signer": self.proposer, "sig": self.sig,
                "block": self.block.to_wire()}

    @classmethod
    def from_wire(cls, obj: Any) -> Proposal:
        if type(obj) is not dict or set(obj) != {"body", "signer", "sig", "block"}:
            raise MessageError("proposal must be a map of body, signer, sig, block")
        b, signer, sig = obj["body"], obj["signer"], obj["sig"]
        if type(b) is not dict or set(b) != {"height", "round", "pol_round", "block"}:
            raise MessageError("proposal body must have height, round, pol_round, block")
        h, r, pol = b["height"], b["round"], b["pol_round"]
        if type(h) is not int or not 1 <= h < 2**62:
            raise MessageError("proposal height must be a positive integer")
        if type(r) is not int or not 0 <= r < MAX_ROUND:
            raise MessageError("proposal round out of range")
        if type(pol) is not int or not -1 <= pol < r:
            raise MessageError("proposal pol_round must be -1 or below the round")
        if type(b["block"]) is not bytes or len(b["block"]) != HASH_LEN:
            raise MessageError("proposal block must be a 32-byte hash")
        if type(signer) is not bytes or len(signer) != PUBLIC_KEY_LEN:
            raise MessageError("proposal signer must be a 32-byte key")
        if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
            raise MessageError("proposal sig must be 64 bytes")
        try:
            block = Block.from_wire(obj["block"])
        except BlockError as exc:
            raise MessageError(f"proposal block: {exc}") from None
        if block.height != h:
            raise MessageError("proposal block is for another height")
        if block.hash() != b["block"]:
            raise MessageError("proposal signs another block than the one it carries")
        return cls(h, r, pol, block, signer, sig, b["block"])


ConsensusMessage = Proposal | Vote | Evidence


def encode_message(msg: ConsensusMessage) -> bytes:
    if isinstance(msg, Proposal):
        return encode({"type": "proposal", "msg": msg.to_wire()})
    if isinstance(msg, Vote):
        return encode({"type": "vote", "msg": msg.to_wire()})
    return encode({"type": "evidence", "msg": msg.to_wire()})


def decode_message(raw: bytes) -> ConsensusMessage:
    """Structural decoding only; signatures are checked by the engine, which knows the
    validator set. Raises `MessageError` for anything that is not a well-formed message."""
    if type(raw) is not bytes:
        raise MessageError("a consensus message is bytes")
    if len(raw) > MAX_CONSENSUS_MESSAGE_BYTES:
        raise MessageError(f"message of {len(raw)} bytes is over the limit")
    try:
        obj = decode(raw, max_size=MAX_CONSENSUS_MESSAGE_BYTES)
    except (DecodeError, EncodeError) as exc:
        raise MessageError(f"undecodable message: {exc}") from None
    if type(obj) is not dict or set(obj) != {"type", "msg"}:
        raise MessageError("message must be a map of type, msg")
    kind, body = obj["type"], obj["msg"]
    try:
        if kind == "proposal":
            return Proposal.from_wire(body)
        if kind == "vote":
            return Vote.from_wire(body)
        if kind == "evidence":
            return Evidence.from_wire(body)
    except MessageError:
        raise
    except ValueError as exc:
        raise MessageError(f"{kind}: {exc}") from None
    raise MessageError(f"unknown message type {kind!r}")
