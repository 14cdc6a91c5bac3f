"""The consensus engine, driven by hand: every message is delivered explicitly, so the
schedules that matter (the classic fork attempt against locking, restarts between two
steps, equivocation) happen exactly, not by chance as in the simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol.block import Block
from protocol.consensus import ConsensusEngine
from protocol.consensus_types import (
    Behind,
    Broadcast,
    Commit,
    EngineConfig,
    EvidenceFound,
    PersistSigned,
    RecordError,
    RequestProposal,
    ScheduleTimeout,
    SignedRecord,
    Step,
    Timeout,
    TimeoutKind,
    ValidateBlock,
)
from protocol.crypto import SigningKey, sha256
from protocol.encoding import encode
from protocol.proposal import MessageError, Proposal, decode_message, encode_message
from protocol.votes import NIL, PRECOMMIT, PREVOTE, Evidence, ValidatorSet, Vote, validator_set
from tests.sim.app import SimGenesis, SimLedger, data_tx

T0 = 1_700_000_000_000
CHAIN = sha256(b"test-consensus")
DRIFT = 1000


def config(**kw: Any) -> EngineConfig:
    base: dict[str, Any] = dict(chain_id=CHAIN, timeout_propose_ms=300,
                                timeout_propose_delta_ms=100, timeout_prevote_ms=200,
                                timeout_prevote_delta_ms=100, timeout_precommit_ms=200,
                                timeout_precommit_delta_ms=100, rebroadcast_interval_ms=500,
                                empty_block_interval_ms=0, max_clock_drift_ms=DRIFT)
    base.update(kw)
    return EngineConfig(**base)


@dataclass
class Node:
    """One engine with its ledger; effects are carried out except sending, which the
    test does by hand from `outbox`."""

    key: SigningKey
    ledger: SimLedger
    engine: ConsensusEngine
    records: list[SignedRecord] = field(default_factory=list)
    outbox: list[Any] = field(default_factory=list)
    timeouts: list[Timeout] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    behind: list[int] = field(default_factory=list)
    effects: list[Any] = field(default_factory=list)
    now: int = T0 + 10

    def run(self, effects: list[Any]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            self.effects.append(e)
            if isinstance(e, PersistSigned):
                self.records.append(e.record)
            elif isinstance(e, Broadcast):
                self.outbox.append(e.message)
            elif isinstance(e, ScheduleTimeout):
                self.timeouts.append(e.timeout)
            elif isinstance(e, RequestProposal):
                last = self.ledger.certificate(self.ledger.height) if self.ledger.height else None
                block, _ = self.ledger.build_block([data_tx(e.height * 100 + e.round)],
                                                   e.time_ms, self.key.public, last)
                queue += self.engine.on_proposal_ready(self.now, e.height, e.round, block)
            elif isinstance(e, ValidateBlock):
                try:
                    self.ledger.check_block(e.block)
                    ok = True
                except ValueError:
                    ok = False
                queue += self.engine.on_block_verdict(self.now, e.block.hash(), ok)
            elif isinstance(e, Commit):
                self.commits.append(e)
            elif isinstance(e, EvidenceFound):
                self.evidence.append(e.evidence)
            elif isinstance(e, Behind):
                self.behind.append(e.height)

    def take(self) -> list[Any]:
        out, self.outbox = self.outbox, []
        return out

    def give(self, *msgs: Any) -> None:
        for m in msgs:
            self.run(self.engine.on_message(self.now, m))

    def fire(self, kind: TimeoutKind, round: int) -> None:
        self.run(self.engine.on_timeout(self.now, Timeout(self.engine.height, round, kind)))


def make_nodes(n: int, **kw: Any) -> tuple[list[Node], ValidatorSet]:
    keys = [SigningKey.derive("test-consensus", str(i)) for i in range(n)]
    vs = validator_set([k.public for k in keys])
    keys.sort(key=lambda k: k.public)  # node i is validator i in proposer order
    genesis = SimGenesis(CHAIN, tuple(k.public for k in keys), T0)
    nodes = [Node(k, SimLedger.open(None, genesis), ConsensusEngine(config(**kw), k))
             for k in keys]
    return nodes, vs


def start(node: Node, txs: bool = True) -> None:
    lg = node.ledger
    node.run(node.engine.start_height(node.now, lg.height + 1, lg.validators_at(lg.height + 1),
                                      lg.last_block_hash, lg.last_time_ms, txs))


def votes(msgs: list[Any], vote_type: str) -> list[Vote]:
    return [m for m in msgs if isinstance(m, Vote) and m.type == vote_type]


def proposals(msgs: list[Any]) -> list[Proposal]:
    return [m for m in msgs if isinstance(m, Proposal)]


def exchange(nodes: list[Node], rounds: int = 6) -> None:
    """Deliver everything to everyone until quiet."""
    for _ in range(rounds):
        sent = [(i, n.take()) for i, n in enumerate(nodes)]
        if not any(m for _, m in sent):
            return
        for i, msgs in sent:
            for j, n in enumerate(nodes):
                if j != i:
                    n.give(*msgs)


def check_persist_before_broadcast(node: Node) -> None:
    """Every signed message went out only after its record was persisted."""
    persisted: set[bytes] = set()
    for e in node.effects:
        if isinstance(e, PersistSigned):
            persisted.add(e.record.message)
        elif isinstance(e, Broadcast) and isinstance(e.message, Proposal | Vote):
            signer = e.message.proposer if isinstance(e.message, Proposal) \
                else e.message.validator
            if signer == node.key.public:
                assert e.raw in persisted, "broadcast of an unpersisted signature"


def check_no_double_sign(node: Node) -> None:
    seen: dict[tuple[int, int, Step], bytes] = {}
    for rec in node.records:
        assert seen.setdefault(rec.key(), rec.block_hash) == rec.block_hash


# ---- the happy paths ----------------------------------------------------------------

def test_single_validator_decides_alone() -> None:
    (node,), vs = make_nodes(1)
    start(node)
    assert len(node.commits) == 1
    c = node.commits[0]
    c.certificate.verify(CHAIN, vs, c.block.hash())
    assert [r.step for r in node.records] == [Step.PROPOSE, Step.PREVOTE, Step.PRECOMMIT]
    check_persist_before_broadcast(node)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_all_commit_the_same_block_at_round_zero(n: int) -> None:
    nodes, vs = make_nodes(n)
    for nd in nodes:
        start(nd)
    exchange(nodes)
    hashes = {nd.commits[0].block.hash() for nd in nodes}
    assert len(hashes) == 1 and all(nd.commits[0].round == 0 for nd in nodes)
    for nd in nodes:
        nd.commits[0].certificate.verify(CHAIN, vs, nd.commits[0].block.hash())
        check_persist_before_broadcast(nd)
        check_no_double_sign(nd)


def test_round_zero_waits_for_transactions_or_the_empty_block_interval() -> None:
    nodes, _ = make_nodes(4, empty_block_interval_ms=5000)
    a = nodes[1]  # proposer of height 1, round 0
    start(a, txs=False)
    assert not any(isinstance(e, RequestProposal) for e in a.effects)
    waits = [e for e in a.effects if isinstance(e, ScheduleTimeout)
             and e.timeout.kind is TimeoutKind.WAIT]
    assert waits and waits[0].delay_ms == T0 + 5000 - a.now
    assert not any(t.kind is TimeoutKind.PROPOSE for t in a.timeouts)
    a.run(a.engine.on_txs_available(a.now, True))
    assert any(isinstance(e, RequestProposal) for e in a.effects)
    assert any(t.kind is TimeoutKind.PROPOSE for t in a.timeouts)
    # A validator waiting too handles a proposal that arrives meanwhile.
    b = nodes[2]
    start(b, txs=False)
    b.give(*a.take())
    assert votes(b.take(), PREVOTE)[0].block_hash != NIL


def test_empty_block_interval_opens_the_gate() -> None:
    nodes, _ = make_nodes(4, empty_block_interval_ms=5000)
    a = nodes[1]
    start(a, txs=False)
    a.now += 5000
    a.fire(TimeoutKind.WAIT, 0)
    req = [e for e in a.effects if isinstance(e, RequestProposal)]
    assert req and req[0].time_ms == a.now and req[0].time_ms > T0


def test_timeouts_grow_with_the_round() -> None:
    cfg = config()
    for kind in (TimeoutKind.PROPOSE, TimeoutKind.PREVOTE, TimeoutKind.PRECOMMIT):
        assert cfg.timeout_ms(kind, 0) < cfg.timeout_ms(kind, 1) < cfg.timeout_ms(kind, 5)


# ---- locking: the classic fork attempt --------------------------------------------------

def test_locked_validator_refuses_a_fresh_block_and_the_fork_fails() -> None:
    """4 validators, one Byzantine (driven by hand). Round 0: A decides v with the
    Byzantine's help while C (locked on v) and D never see A's precommit. Round 1: D,
    which never saw a polka, proposes a fresh block w. Without locking C would prevote
    w, and C, D and the Byzantine are a quorum: a second decision at the same height."""
    nodes, _ = make_nodes(4)
    # proposer(h, r) = members[(h + r) % 4]: at height 1, round 0 -> nodes[1],
    # round 1 -> nodes[2].
    byz, a, d, c = nodes
    for nd in (a, c, d):
        start(nd)
    a_out = a.take()
    prop_v = proposals(a_out)[0]
    v = prop_v.block_hash
    c.give(prop_v)
    d.give(prop_v)
    c_out, d_out = c.take(), d.take()
    assert votes(d_out, PREVOTE)[0].block_hash == v
    # Prevotes: A and C see a polka for v (A, C, Byzantine); D sees only its own.
    byz_pv = Vote.create(byz.key, CHAIN, PREVOTE, 1, 0, v)
    a.give(*votes(c_out, PREVOTE), byz_pv)
    c.give(*votes(a_out, PREVOTE), byz_pv)
    pc_a, pc_c = votes(a.take(), PRECOMMIT), votes(c.take(), PRECOMMIT)
    assert pc_a[0].block_hash == v and pc_c[0].block_hash == v
    assert c.engine.locked_value == v and c.engine.locked_round == 0
    # A gets C's and the Byzantine's precommits: A decides v (and moves on).
    byz_pc = Vote.create(byz.key, CHAIN, PRECOMMIT, 1, 0, v)
    a.give(*pc_c, byz_pc)
    assert a.commits and a.commits[0].block.hash() == v
    # D times out to precommit nil; nobody else ever hears from A again.
    d.fire(TimeoutKind.PREVOTE, 0)
    pc_d = votes(d.take(), PRECOMMIT)
    assert pc_d[0].block_hash == NIL
    c.give(*pc_d, byz_pc)
    d.give(*pc_c, byz_pc)
    assert not c.commits and not d.commits
    c.fire(TimeoutKind.PRECOMMIT, 0)
    d.fire(TimeoutKind.PRECOMMIT, 0)
    assert c.engine.round == 1 and d.engine.round == 1
    props = proposals(d.take())
    assert props and props[0].round == 1 and props[0].pol_round == -1
    w = props[0].block_hash
    assert w != v
    c.give(props[0])
    pv_c1 = votes(c.take(), PREVOTE)
    assert pv_c1[-1].round == 1 and pv_c1[-1].block_hash == NIL, "a locked validator prevoted w"
    # Even with the Byzantine prevoting w there is no polka for w (D and it only).
    d.give(*pv_c1, Vote.create(byz.key, CHAIN, PREVOTE, 1, 1, w))
    assert not any(m.block_hash == w for m in votes(d.take(), PRECOMMIT))
    assert not d.commits and not c.commits
    check_no_double_sign(c)
    check_no_double_sign(d)


def test_a_locked_validator_reproposes_its_value_with_the_proof_of_lock() -> None:
    """After the failed fork, C (locked on v) proposes v with pol_round 0 and relays the
    prevotes; D, which never saw the polka, can then accept it and everyone decides v."""
    nodes, _ = make_nodes(4)
    byz, a, c, d = nodes[0], nodes[1], nodes[2], nodes[3]
    # proposer(1, 0) = nodes[1] = a; proposer(1, 1) = c.
    for nd in (a, c, d):
        start(nd)
    a_out = a.take()
    prop_v = proposals(a_out)[0]
    v = prop_v.block_hash
    c.give(prop_v)
    byz_pv = Vote.create(byz.key, CHAIN, PREVOTE, 1, 0, v)
    c.give(*votes(a_out, PREVOTE), byz_pv)
    assert c.engine.locked_value == v
    c.take()
    # D saw nothing of round 0. Round 1 for both C and D.
    for nd in (c, d):
        nd.give(Vote.create(byz.key, CHAIN, PRECOMMIT, 1, 0, NIL))
    c.fire(TimeoutKind.PROPOSE, 0)
    c.fire(TimeoutKind.PREVOTE, 0)
    c.fire(TimeoutKind.PRECOMMIT, 0)
    d.fire(TimeoutKind.PROPOSE, 0)
    d.fire(TimeoutKind.PREVOTE, 0)
    d.fire(TimeoutKind.PRECOMMIT, 0)
    assert c.engine.round == 1 and d.engine.round == 1
    sent = c.take()
    prop = proposals(sent)[-1]
    assert prop.round == 1 and prop.pol_round == 0 and prop.block_hash == v
    relayed = [m for m in votes(sent, PREVOTE) if m.round == 0 and m.block_hash == v]
    assert len(relayed) >= 3, "the proof of lock travels with the re-proposal"
    d.take()
    d.give(*sent)
    assert votes(d.take(), PREVOTE)[-1].block_hash == v


def test_a_higher_proof_of_lock_unlocks() -> None:
    nodes, _ = make_nodes(4)
    c = nodes[2]
    start(c)
    # C locks on v in round 0 (proposal from nodes[1], polka from three validators).
    start(nodes[1])
    prop_v = proposals(nodes[1].take())[0]
    v = prop_v.block_hash
    c.give(prop_v, *[Vote.create(n.key, CHAIN, PREVOTE, 1, 0, v) for n in nodes[:2]])
    assert c.engine.locked_value == v
    # Round 1: a polka for w that C did not take part in; round 2: w re-proposed with it.
    w_block = _other_block(nodes[3], v)
    w = w_block.hash()
    c.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 0, NIL) for n in (nodes[0], nodes[1])])
    c.fire(TimeoutKind.PRECOMMIT, 0)
    assert c.engine.round == 1
    c.fire(TimeoutKind.PROPOSE, 1)
    c.give(*[Vote.create(n.key, CHAIN, PREVOTE, 1, 1, w) for n in (nodes[0], nodes[1], nodes[3])])
    c.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 1, NIL) for n in (nodes[0], nodes[1])])
    c.fire(TimeoutKind.PREVOTE, 1)
    c.fire(TimeoutKind.PRECOMMIT, 1)
    assert c.engine.round == 2
    c.take()
    proposer2 = nodes[(1 + 2) % 4]
    p2 = Proposal.create(proposer2.key, CHAIN, 1, 2, 1, w_block)
    c.give(p2)
    assert votes(c.take(), PREVOTE)[-1].block_hash == w, "lockedRound 0 <= pol_round 1"


def _other_block(node: Node, not_hash: bytes) -> Block:
    lg = node.ledger
    block, _ = lg.build_block([data_tx(999)], T0 + 50, node.key.public, None)
    assert block.hash() != not_hash
    return block


# ---- restarts ---------------------------------------------------------------------------

def test_restart_never_signs_a_second_value_and_restores_the_lock() -> None:
    nodes, _ = make_nodes(4)
    c = nodes[2]
    start(c)
    start(nodes[1])
    prop_v = proposals(nodes[1].take())[0]
    v = prop_v.block_hash
    c.give(prop_v, *[Vote.create(n.key, CHAIN, PREVOTE, 1, 0, v) for n in nodes[:2]])
    assert [r.step for r in c.records] == [Step.PREVOTE, Step.PRECOMMIT]
    # Crash and restart from the records, with nothing else remembered.
    wire = [r.encode() for r in c.records]
    again = ConsensusEngine(config(), c.key, [SignedRecord.decode(b) for b in wire])
    c2 = Node(c.key, c.ledger, again, records=list(c.records))
    start(c2)
    assert again.locked_value == v and again.locked_round == 0
    assert again.valid_value == v and again.round == 0 and again.step is Step.PRECOMMIT
    # It resends what it signed instead of signing anew.
    resent = votes(c2.take(), PRECOMMIT)
    assert resent and resent[0].block_hash == v
    # Timeouts that would make a fresh engine vote nil in round 0 change nothing.
    c2.fire(TimeoutKind.PROPOSE, 0)
    c2.fire(TimeoutKind.PREVOTE, 0)
    check_no_double_sign(c2)
    # Round 1, whose proposer is C itself: it re-proposes v with its proof of lock,
    # which it only has from the record's lock proof.
    c2.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 0, NIL) for n in (nodes[0], nodes[3])])
    c2.take()
    c2.fire(TimeoutKind.PRECOMMIT, 0)
    assert again.round == 1
    sent = c2.take()
    props = proposals(sent)
    assert props and props[0].block_hash == v and props[0].pol_round == 0
    assert len([m for m in votes(sent, PREVOTE) if m.round == 0 and m.block_hash == v]) >= 3
    check_no_double_sign(c2)


def test_restart_resends_a_recorded_prevote_rather_than_a_nil_one() -> None:
    nodes, _ = make_nodes(4)
    c = nodes[3]
    start(c)
    start(nodes[1])
    c.give(proposals(nodes[1].take())[0])
    (pv,) = votes(c.take(), PREVOTE)
    assert pv.block_hash != NIL
    again = ConsensusEngine(config(), c.key, list(c.records))
    c2 = Node(c.key, c.ledger, again, records=list(c.records))
    start(c2)
    c2.fire(TimeoutKind.PROPOSE, 0)  # a fresh engine would prevote nil here
    sent = votes(c2.take(), PREVOTE)
    assert sent and all(v.block_hash == pv.block_hash and v.sig == pv.sig for v in sent)
    assert len(c2.records) == 1, "nothing new was signed"


def test_signing_record_round_trip_and_tamper() -> None:
    nodes, _ = make_nodes(1)
    start(nodes[0])
    for rec in nodes[0].records:
        assert SignedRecord.decode(rec.encode()) == rec
    pc = [r for r in nodes[0].records if r.step is Step.PRECOMMIT][0]
    assert pc.proof is not None
    forged = SignedRecord(pc.height, pc.round, pc.step, sha256(b"other"), pc.message, None)
    with pytest.raises(RecordError):
        SignedRecord.decode(forged.encode())
    with pytest.raises(RecordError):
        SignedRecord.decode(b"\x93garbage")
    with pytest.raises(RecordError):
        SignedRecord.decode(encode({"height": 1}))


# ---- bad input, equivocation, skipping ------------------------------------------------

def test_equivocation_is_evidence_once_and_bad_votes_are_ignored() -> None:
    nodes, vs = make_nodes(4)
    c = nodes[2]
    start(c)
    liar = nodes[0]
    x = Vote.create(liar.key, CHAIN, PREVOTE, 1, 0, sha256(b"x"))
    y = Vote.create(liar.key, CHAIN, PREVOTE, 1, 0, sha256(b"y"))
    c.give(x, y, y, x)
    assert len(c.evidence) == 1
    c.evidence[0].check(CHAIN)
    c.give(c.evidence[0])  # the same evidence by gossip: nothing new
    assert len(c.evidence) == 1
    rv = c.engine._rounds[0]
    before = dict(rv.prevote_tally)
    outsider = SigningKey.derive("outsider")
    bad_sig = Vote(PREVOTE, 1, 0, sha256(b"z"), nodes[1].key.public, bytes(64))
    wrong_chain = Vote.create(nodes[1].key, sha256(b"other chain"), PREVOTE, 1, 0, sha256(b"z"))
    c.give(Vote.create(outsider, CHAIN, PREVOTE, 1, 0, sha256(b"z")), bad_sig, wrong_chain)
    assert rv.prevote_tally == before
    # A proposal from the wrong proposer, or badly signed, is ignored.
    start(nodes[1])
    good = proposals(nodes[1].take())[0]
    wrong = Proposal.create(nodes[3].key, CHAIN, 1, 0, -1, good.block)
    c.give(wrong)
    assert rv.proposal is None
    c.give(Proposal(good.height, good.round, good.pol_round, good.block, good.proposer,
                    bytes(64), good.block_hash))
    assert rv.proposal is None
    c.give(good)
    assert rv.proposal == good
    del vs


def test_f_plus_one_messages_from_a_later_round_skip_ahead() -> None:
    nodes, _ = make_nodes(4)
    c = nodes[2]
    start(c)
    c.give(Vote.create(nodes[0].key, CHAIN, PREVOTE, 1, 3, NIL))
    assert c.engine.round == 0  # one validator may be lying
    c.give(Vote.create(nodes[1].key, CHAIN, PRECOMMIT, 1, 3, NIL))
    assert c.engine.round == 3


def test_messages_for_the_next_height_are_kept_and_hint_sync() -> None:
    nodes, _ = make_nodes(1)
    (a,) = nodes
    start(a)
    assert a.commits
    block, cert = a.commits[0].block, a.commits[0].certificate
    # Another single-validator engine, not yet at height 2, sees a height-2 message.
    b = Node(a.key, SimLedger.open(None, a.ledger.genesis), ConsensusEngine(config(), None))
    start(b)
    a.ledger.commit(block, cert)
    a.take()
    start(a)
    h2 = [m for m in a.take() if getattr(m, "height", 0) == 2]
    b.give(*h2)
    assert b.behind == [2]
    b.ledger.commit(block, cert)
    start(b)
    assert [c.block.height for c in b.commits] == [2], \
        "buffered height-2 messages decide once we get there"


def test_timeliness_applies_to_fresh_proposals_only() -> None:
    nodes, _ = make_nodes(4)
    c = nodes[2]
    c.now = T0 + 10 + 5 * DRIFT  # C's clock is far ahead of the proposer's
    start(c)
    start(nodes[1])
    c.give(proposals(nodes[1].take())[0])
    assert votes(c.take(), PREVOTE)[0].block_hash == NIL


def test_proposal_wire_format_rejects_malformed_input() -> None:
    nodes, _ = make_nodes(4)
    start(nodes[1])
    p = proposals(nodes[1].take())[0]
    raw = encode_message(p)
    assert decode_message(raw) == p
    assert p.verify(CHAIN) and not p.verify(sha256(b"other"))
    wire = p.to_wire()
    bad_cases: list[Any] = [
        b"", b"\xc1", raw[:-3], encode({"type": "nope", "msg": {}}),
        encode({"type": "proposal", "msg": {**wire, "extra": 1}}),
        encode({"type": "proposal", "msg": {**wire, "body": {**wire["body"], "pol_round": 0}}}),
        encode({"type": "proposal", "msg": {**wire, "body": {**wire["body"], "pol_round": -2}}}),
        encode({"type": "proposal", "msg": {**wire, "body": {**wire["body"], "height": 2}}}),
        encode({"type": "proposal", "msg": {**wire, "body": {**wire["body"],
                                                             "block": sha256(b"x")}}}),
        encode({"type": "proposal", "msg": {**wire, "sig": b"short"}}),
        encode({"type": "vote", "msg": {"body": {}, "signer": b"", "sig": b""}}),
        encode({"type": "evidence", "msg": {"a": 1}}),
    ]
    for bad in bad_cases:
        with pytest.raises(MessageError):
            decode_message(bad)


def test_an_older_proof_of_lock_does_not_unlock() -> None:
    """Locked on v in round 1, C must refuse w re-proposed with a polka from round 0."""
    nodes, _ = make_nodes(4)
    c = nodes[2]
    start(c)
    w_block = _other_block(nodes[3], b"")
    w = w_block.hash()
    # Round 0: a polka for w that C sees only as votes (it never prevoted w).
    c.give(*[Vote.create(n.key, CHAIN, PREVOTE, 1, 0, w) for n in (nodes[0], nodes[1], nodes[3])])
    c.fire(TimeoutKind.PROPOSE, 0)
    c.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 0, NIL) for n in (nodes[0], nodes[1])])
    c.fire(TimeoutKind.PRECOMMIT, 0)
    assert c.engine.round == 1
    # Round 1: C locks on v (proposed by C itself, the round-1 proposer, plus a polka).
    sent = c.take()
    prop_v = proposals(sent)[0]
    v = prop_v.block_hash
    c.give(*[Vote.create(n.key, CHAIN, PREVOTE, 1, 1, v) for n in (nodes[0], nodes[1])])
    assert c.engine.locked_value == v and c.engine.locked_round == 1
    c.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 1, NIL) for n in (nodes[0], nodes[1])])
    c.fire(TimeoutKind.PRECOMMIT, 1)
    assert c.engine.round == 2
    c.take()
    p2 = Proposal.create(nodes[3].key, CHAIN, 1, 2, 0, w_block)
    c.give(p2)
    assert votes(c.take(), PREVOTE)[-1].block_hash == NIL, "pol_round 0 < lockedRound 1"


def test_the_guard_resends_rather_than_signing_a_second_value() -> None:
    """Defence in depth: even if the engine's state were somehow rolled back to before a
    recorded vote, the record decides what goes out."""
    nodes, _ = make_nodes(4)
    c = nodes[3]
    start(c)
    start(nodes[1])
    c.give(proposals(nodes[1].take())[0])
    (pv,) = votes(c.take(), PREVOTE)
    c.engine.step = Step.PROPOSE  # pretend we forgot that we prevoted
    c.fire(TimeoutKind.PROPOSE, 0)  # would prevote nil
    again = votes(c.take(), PREVOTE)
    assert again == [pv] and len(c.records) == 1


def test_an_equivocators_second_vote_still_counts_towards_a_proof_of_lock() -> None:
    """X prevoted nil to us and v to others. A re-proposal of v relays X's v prevote as
    part of its proof of lock: we must count it, or we can never accept v."""
    nodes, _ = make_nodes(4)
    x, a, c, d = nodes  # a proposes round 0, c round 1
    start(d)
    start(a)
    a_out = a.take()
    prop_v = proposals(a_out)[0]
    v = prop_v.block_hash
    d.give(Vote.create(x.key, CHAIN, PREVOTE, 1, 0, NIL))  # X's nil arrives first
    # D missed the round-0 proposal and moves on to round 1 by timeouts.
    d.give(*[Vote.create(n.key, CHAIN, PRECOMMIT, 1, 0, NIL) for n in (x, a)])
    d.fire(TimeoutKind.PROPOSE, 0)
    d.fire(TimeoutKind.PREVOTE, 0)
    d.fire(TimeoutKind.PRECOMMIT, 0)
    assert d.engine.round == 1
    d.take()
    pol = [Vote.create(n.key, CHAIN, PREVOTE, 1, 0, v) for n in (x, a, c)]
    reprop = Proposal.create(c.key, CHAIN, 1, 1, 0, prop_v.block)
    d.give(reprop, *pol)
    assert len(d.evidence) == 1  # X equivocated, and that is recorded
    assert votes(d.take(), PREVOTE)[-1].block_hash == v
