"""The simulator's invariants (DESIGN.md section 9), checked at the moment the state they
concern changes -- which is after every step that could break them -- plus the checks
that only make sense at the end of a run (liveness, lost transactions, replay).

Besides agreement and the like, every vote an honest validator signs is checked against
the rules of Algorithm 1 *as that validator saw things* (`_check_vote`): random runs
rarely turn a broken lock rule into a fork, but they often reach the moment where the
broken rule casts a vote the correct rule would not. The lock it is checked against is
the one its durable signing records imply (`locks`), not the engine's own idea of it, so
a restart that loses the lock is caught too -- at the restart (`on_boot`) and at the
first vote that ignores it.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from protocol.block import Block
from protocol.consensus import ConsensusEngine
from protocol.consensus_types import SignedRecord, Step
from protocol.proposal import Proposal
from protocol.votes import (
    NIL,
    PREVOTE,
    Certificate,
    CertificateError,
    Evidence,
    ValidatorSet,
    Vote,
)

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
        self.locks: dict[tuple[bytes, int], tuple[int, bytes]] = {}
        """(honest key, height) -> (round, block) of its latest durably recorded precommit
        of a block: its lock as Algorithm 1 defines it (line 36 locks exactly when it
        precommits)."""
        self.cover: Counter[str] = Counter()
        """How often the moments the lock rules decide were reached (see `_check_vote`):
        a run that never reaches them cannot catch a bug in them."""
        self._judged: set[tuple[bytes, int, int, Step]] = set()

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

    def on_persist(self, node: SimNode, rec: SignedRecord) -> None:
        """An honest node durably recorded something it signed: the moment it cast it.
        A vote is judged then (see `_check_vote`); a precommit of a block moves its lock.
        A record the engine writes again (after a restart, say) is not judged again:
        the view that justified it may be gone."""
        if not node.honest or rec.step is Step.PROPOSE:
            return
        e = node.engine
        key = (node.key.public, rec.height, rec.round, rec.step)
        if key not in self._judged and e is not None and e.height == rec.height:
            self._judged.add(key)
            self._check_vote(node, e, rec)
        if rec.step is not Step.PRECOMMIT or rec.block_hash == NIL:
            return
        k = (node.key.public, rec.height)
        lock = self.locks.get(k)
        if lock is None or rec.round > lock[0]:
            self.locks[k] = (rec.round, rec.block_hash)

    def on_boot(self, node: SimNode, engine: ConsensusEngine) -> None:
        """A restarted honest node must hold the lock its records imply (and the valid
        value that goes with it, Algorithm 1 keeps validRound >= lockedRound), or it may
        prevote against it: the guard re-sends recorded votes, it does not remember."""
        if not node.honest or not engine.is_validator:
            return
        want = self.locks.get((node.key.public, engine.height))
        got = (engine.locked_round, engine.locked_value)
        if want is not None:
            self.cover["restarted_locked"] += 1
        if (want is None and got[0] != -1) or (want is not None and got != want):
            self.fail(f"restart: {node.name} at height {engine.height} holds lock "
                      f"{_fmt(got)}, its signing records say {_fmt(want)}")
        if engine.valid_round < engine.locked_round or (
                engine.valid_round == engine.locked_round
                and engine.valid_value != engine.locked_value):
            self.fail(f"restart: {node.name} at height {engine.height} restored valid value "
                      f"{_fmt((engine.valid_round, engine.valid_value))} behind its lock "
                      f"{_fmt(got)}")

    def _check_vote(self, node: SimNode, e: ConsensusEngine, v: SignedRecord) -> None:
        """The vote `node` just cast for the first time, against Algorithm 1 given what
        its engine holds (proposal, votes, ledger verdicts) and the lock its records
        imply. Timeliness is left out (the future-time check covers it)."""
        self.cover["votes_checked"] += 1
        h, r = v.height, v.round
        lock = self.locks.get((node.key.public, h))
        rv = e._rounds.get(r)
        p = rv.proposal if rv is not None else None
        where = f"{node.name} at height {h} round {r}"
        if v.step is Step.PRECOMMIT:
            if v.block_hash != NIL and not _polka(e, r, v.block_hash):  # line 36
                self.fail(f"lock rule: {where} precommitted {_short(v.block_hash)} without "
                          f"+2/3 prevotes for it in that round")
            if v.block_hash != NIL and lock is not None and lock[1] != v.block_hash:
                self.cover["relocked"] += 1
            return
        if p is not None and p.pol_round >= 0:
            self.cover["reproposal_voted"] += 1
            if abs(p.block.header.time_ms - node.now()) > e.config.max_clock_drift_ms:
                self.cover["reproposal_older_than_drift"] += 1
            if lock is not None and lock[1] != p.block_hash:
                self.cover["reproposal_against_lock"] += 1
                if lock[0] > p.pol_round:
                    self.cover["reproposal_pol_older_than_lock"] += 1
            if not _polka(e, p.pol_round, p.block_hash):
                self.cover["reproposal_without_pol"] += 1
        if v.block_hash != NIL:
            if p is None or p.block_hash != v.block_hash:
                self.fail(f"{where} prevoted {_short(v.block_hash)}, not the round's proposal")
                return
            if p.pol_round >= 0 and not _polka(e, p.pol_round, v.block_hash):  # line 28
                self.fail(f"unlock rule: {where} prevoted {_short(v.block_hash)} re-proposed "
                          f"with pol_round {p.pol_round} without holding +2/3 prevotes of it")
            if lock is not None and lock[1] != v.block_hash and not (
                    p.pol_round >= 0 and lock[0] <= p.pol_round):  # lines 22 and 28
                self.fail(f"lock rule: {where} locked on {_fmt(lock)} prevoted "
                          f"{_short(v.block_hash)} (pol_round {p.pol_round}) without a proof "
                          f"of lock from round {lock[0]} or later")
            return
        # A nil prevote refusing a re-proposal that Algorithm 1 says to accept (line 28:
        # proof of lock held, block valid, lock no later than the proof). Liveness rests
        # on it: with a lock on a block, only such a re-proposal ever moves the node.
        if (p is not None and p.pol_round >= 0 and _polka(e, p.pol_round, p.block_hash)
                and e._verdicts.get(p.block_hash) is True
                and (lock is None or lock[1] == p.block_hash or lock[0] <= p.pol_round)):
            self.fail(f"unlock rule: {where} prevoted nil on {_short(p.block_hash)} "
                      f"re-proposed with its proof of lock from round {p.pol_round} "
                      f"(lock {_fmt(lock)})")

    def on_evidence(self, node: SimNode, ev: Evidence) -> None:
        if ev.a.validator in self.honest_keys:
            self.fail(f"{node.name} found evidence against an honest validator "
                      f"(height {ev.a.height} round {ev.a.round} {ev.a.type})")

    def on_drop(self, node: SimNode, peer: SimNode, reason: str) -> None:
        if peer.honest and "timed out" not in reason:
            self.fail(f"{node.name} dropped honest peer {peer.name}: {reason}")

    def on_ack(self, tx_hash: bytes, height: int) -> None:
        self.acked.setdefault(tx_hash, height)


def _polka(e: ConsensusEngine, r: int, block_hash: bytes) -> bool:
    """+2/3 of the validators' prevotes for `block_hash` in round `r`, as `e` holds them."""
    rv = e._rounds.get(r)
    if rv is None:
        return False
    voters = {x.validator for x in rv.votes_for(PREVOTE, block_hash)
              if x.validator in e.validators}
    return len(voters) >= e.validators.quorum()


def _short(h: bytes | None) -> str:
    return "-" if h is None else (h.hex()[:8] or "nil")


def _fmt(lock: tuple[int, bytes | None] | None) -> str:
    return "none" if lock is None or lock[0] < 0 else f"{_short(lock[1])}@{lock[0]}"
