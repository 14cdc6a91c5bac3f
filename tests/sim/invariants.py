"""The simulator's invariants (DESIGN.md section 9), checked at the moment the state they
concern changes -- which is after every step that could break them -- plus the checks
that only make sense at the end of a run (liveness, lost transactions, replay)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.block import Block
from protocol.consensus_types import Step
from protocol.proposal import Proposal
from protocol.votes import Certificate, CertificateError, Evidence, ValidatorSet, Vote

if TYPE_CHECKING:
    from tests.sim.node import SimNode


class SimFailure(AssertionError):
    """An invariant broke; the message says which, where and when."""


class Checker:
    def __init__(self, chain_id: bytes, honest_keys: set[bytes], future_slack_ms: int) -> None:
        self.chain_id = chain_id
        self.future_slack_ms = future_slack_ms
        """How far ahead of an honest clock a committed block's time may be: the drift
        bound plus the largest difference between two honest clocks."""
        self.honest_keys = honest_keys
        """Keys held by exactly one honest node: they must never equivocate."""
        self.committed: dict[int, bytes] = {}
        self.signed: dict[tuple[bytes, int, int, Step], bytes] = {}
        self.acked: dict[bytes, int] = {}
        """Transaction hash -> height at which some honest node acknowledged it."""
        self.commits = 0
        self.now = 0

    def fail(self, what: str) -> None:
        raise SimFailure(f"t={self.now}ms: {what}")

    def on_commit(self, node: SimNode, block: Block, cert: Certificate,
                  validators: ValidatorSet, prev_hash: bytes) -> None:
        h, bh = block.height, block.hash()
        self.commits += 1
        first = self.committed.setdefault(h, bh)
        if first != bh:
            self.fail(f"agreement: {node.name} committed {bh.hex()[:12]} at height {h}, "
                      f"another honest node committed {first.hex()[:12]}")
        if block.header.prev_hash != prev_hash:
            self.fail(f"hash chain broken at {node.name} height {h}")
        if block.header.time_ms > node.now() + self.future_slack_ms:
            self.fail(f"block {h} committed at {node.name} has a time "
                      f"{block.header.time_ms - node.now()}ms ahead of its clock")
        try:
            cert.verify(self.chain_id, validators, bh)
        except CertificateError as exc:
            self.fail(f"certificate of height {h} at {node.name} invalid: {exc}")
        for ev in block.evidence:
            if ev.a.validator in self.honest_keys:
                self.fail(f"evidence against honest validator committed at height {h}")

    def on_signed(self, node: SimNode, msg: Proposal | Vote) -> None:
        if isinstance(msg, Proposal):
            key = (msg.proposer, msg.height, msg.round, Step.PROPOSE)
        else:
            key = (msg.validator, msg.height, msg.round, Step(msg.type))
        if key[0] not in self.honest_keys:
            return
        first = self.signed.setdefault(key, msg.block_hash)
        if first != msg.block_hash:
            self.fail(f"self-equivocation: {node.name} signed two values for "
                      f"height {key[1]} round {key[2]} {key[3].value}")

    def on_evidence(self, node: SimNode, ev: Evidence) -> None:
        if ev.a.validator in self.honest_keys:
            self.fail(f"{node.name} found evidence against an honest validator "
                      f"(height {ev.a.height} round {ev.a.round} {ev.a.type})")

    def on_drop(self, node: SimNode, peer: SimNode, reason: str) -> None:
        if peer.honest and "timed out" not in reason:
            self.fail(f"{node.name} dropped honest peer {peer.name}: {reason}")

    def on_ack(self, tx_hash: bytes, height: int) -> None:
        self.acked.setdefault(tx_hash, height)
