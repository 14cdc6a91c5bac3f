"""Block sync: a node behind fetches certified blocks from peers, verifies every
certificate against the validator set of its height (following membership changes),
drops peers that lie or stall, and never holds more than its window in flight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol.block import Block
from protocol.crypto import SigningKey, sha256
from protocol.encoding import encode
from protocol.sync import (
    MAX_SYNC_BATCH,
    ApplyBlock,
    BlockSync,
    DropPeer,
    SendSyncRequest,
    SyncConfig,
    SyncError,
    SyncRequest,
    SyncResponse,
    SyncStatus,
    decode_sync_message,
    encode_sync_message,
    serve,
)
from protocol.votes import PRECOMMIT, Certificate, Vote
from tests.sim.app import SimGenesis, SimLedger, data_tx, member_tx

T0 = 1_700_000_000_000
CHAIN = sha256(b"test-sync")
KEYS = {f"v{i}": SigningKey.derive("test-sync", str(i)) for i in range(6)}
BY_PUB = {k.public: k for k in KEYS.values()}
GENESIS = SimGenesis(CHAIN, tuple(KEYS[f"v{i}"].public for i in range(4)), T0)


def certify(ledger: SimLedger, block: Block, signers: int | None = None) -> Certificate:
    vs = ledger.validators_at(block.height)
    members = vs.members[: signers if signers is not None else vs.quorum()]
    return Certificate.from_votes(
        Vote.create(BY_PUB[m], CHAIN, PRECOMMIT, block.height, 0, block.hash()) for m in members)


def build_chain(n: int) -> SimLedger:
    """n blocks; v4 is added by block 3 (a validator from height 5) and v0 removed by
    block 7 (gone from height 9)."""
    lg = SimLedger.open(None, GENESIS)
    for h in range(1, n + 1):
        txs = [data_tx(h)]
        if h == 3:
            txs.append(member_tx("add", KEYS["v4"].public, 1000))
        if h == 7:
            txs.append(member_tx("remove", KEYS["v0"].public, 1001))
        vs = lg.validators_at(h)
        last = lg.certificate(h - 1) if h > 1 else None
        block, skipped = lg.build_block(txs, T0 + h * 1000, vs.members[h % vs.size], last)
        assert not skipped
        lg.commit(block, certify(lg, block))
    return lg


CHAIN_12 = build_chain(12)


@dataclass
class Follower:
    """A node behind: its ledger, its sync machine, and what the machine asked for."""

    sync: BlockSync
    ledger: SimLedger = field(default_factory=lambda: SimLedger.open(None, GENESIS))
    sent: list[SendSyncRequest] = field(default_factory=list)
    drops: list[DropPeer] = field(default_factory=list)
    now: int = 0

    @classmethod
    def new(cls, **cfg: Any) -> Follower:
        lg = SimLedger.open(None, GENESIS)
        config = SyncConfig(**{"batch": 4, "max_in_flight": 2, "lag_grace_ms": 1000,
                               "request_timeout_ms": 5000, "ban_ms": 60_000, **cfg})
        return cls(BlockSync(CHAIN, 0, CHAIN, lg.validators_at(1), config), lg)

    def run(self, effects: list[Any]) -> None:
        queue = list(effects)
        while queue:
            e = queue.pop(0)
            if isinstance(e, SendSyncRequest):
                self.sent.append(e)
            elif isinstance(e, DropPeer):
                self.drops.append(e)
            elif isinstance(e, ApplyBlock):
                try:
                    self.ledger.commit(e.block, e.certificate)
                except ValueError as exc:
                    queue += self.sync.on_apply_failed(self.now, e.block.height, str(exc))
                    continue
                lg = self.ledger
                queue += self.sync.on_applied(self.now, lg.height, lg.last_block_hash,
                                              lg.validators_at(lg.height + 1))
            else:
                raise AssertionError(e)

    def status(self, peer: str, height: int) -> None:
        self.run(self.sync.on_status(self.now, peer, SyncStatus(height, sha256(b"x"))))

    def answer(self, source: SimLedger, peer: str | None = None,
               tamper: Any = None) -> int:
        """Answer every pending request (of `peer`, or all) from `source`."""
        pending, self.sent = self.sent, []
        answered = 0
        for req in pending:
            if peer is not None and req.peer != peer:
                self.sent.append(req)
                continue
            resp = serve(req.request, source.height, source.block, source.certificate)
            if tamper is not None:
                resp = tamper(resp)
            # Through the wire format, as a peer would send it.
            msg = decode_sync_message(encode_sync_message(resp))
            assert isinstance(msg, SyncResponse)
            self.run(self.sync.on_response(self.now, req.peer, msg))
            answered += 1
        return answered

    def sync_all(self, source: SimLedger, limit: int = 100) -> None:
        for _ in range(limit):
            if not self.answer(source):
                return
        raise AssertionError("sync did not settle")


def test_catches_up_from_an_honest_peer_across_membership_changes() -> None:
    f = Follower.new()
    f.status("good", 12)
    assert len(f.sent) == 1, "one request per peer at a time"
    f.status("good2", 12)
    f.status("good3", 12)
    assert len(f.sent) == 2, "at most max_in_flight requests"
    assert [r.request.start for r in f.sent] == [1, 5] and all(
        r.request.count == 4 for r in f.sent)
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 12 and not f.drops
    for h in range(1, 13):
        assert f.ledger.block(h).hash() == CHAIN_12.block(h).hash()
    assert KEYS["v4"].public in f.ledger.validators_at(5).members
    assert KEYS["v0"].public not in f.ledger.validators_at(9).members
    assert not f.sync.is_syncing(f.now) and not f.sync.in_flight and not f.sync.buffer


def test_a_certificate_from_the_old_validator_set_is_refused_after_a_change() -> None:
    """At height 9 v0 no longer votes: a 'certificate' counting v0 is invalid there."""
    f = Follower.new()
    f.status("liar", 12)
    f.status("good", 12)

    def old_set_cert(resp: SyncResponse) -> SyncResponse:
        items = []
        for block, cert in resp.items:
            if block.height == 9:
                members = [KEYS[f"v{i}"].public for i in range(4)]  # the genesis set
                votes = [Vote.create(BY_PUB[m], CHAIN, PRECOMMIT, 9, 0, block.hash())
                         for m in members[:3]]
                cert = Certificate.from_votes(votes)
            items.append((block, cert))
        return SyncResponse(resp.request_id, tuple(items))

    for _ in range(20):
        if not f.answer(CHAIN_12, "liar", old_set_cert) and not f.answer(CHAIN_12, "good"):
            break
    assert f.ledger.height == 12
    assert [d.peer for d in f.drops] == ["liar"]
    assert "certificate" in f.drops[0].reason or "validator" in f.drops[0].reason


def _forged_chain() -> SimLedger:
    """A different chain 'certified' by keys that are not validators."""
    outsiders = [SigningKey.derive("forger", str(i)) for i in range(4)]
    g = SimGenesis(CHAIN, tuple(k.public for k in outsiders), T0)
    lg = SimLedger.open(None, g)
    by = {k.public: k for k in outsiders}
    for h in range(1, 13):
        vs = lg.validators_at(h)
        block, _ = lg.build_block([data_tx(100 + h)], T0 + h * 1000, vs.members[0],
                                  lg.certificate(h - 1) if h > 1 else None)
        cert = Certificate.from_votes(Vote.create(by[m], CHAIN, PRECOMMIT, h, 0, block.hash())
                                      for m in vs.members[:3])
        lg.commit(block, cert)
    return lg


def _tampered_block(resp: SyncResponse) -> SyncResponse:
    b, c = resp.items[0]
    hd = b.header
    wire = hd.to_wire()
    wire["time_ms"] += 1
    from protocol.block import Header
    return SyncResponse(resp.request_id, ((Block(Header(**wire), b.txs, b.last_commit,
                                                  b.evidence), c), *resp.items[1:]))


def _thin_cert(resp: SyncResponse) -> SyncResponse:
    b, c = resp.items[0]
    return SyncResponse(resp.request_id, ((b, Certificate(c.height, c.round, c.block_hash,
                                                           c.signatures[:1])),
                                          *resp.items[1:]))


def _shifted(resp: SyncResponse) -> SyncResponse:
    return SyncResponse(resp.request_id, resp.items[1:])


def _outsider_cert(resp: SyncResponse) -> SyncResponse:
    b, _ = resp.items[0]
    outsiders = [SigningKey.derive("forger", str(i)) for i in range(4)]
    cert = Certificate.from_votes(Vote.create(k, CHAIN, PRECOMMIT, b.height, 0, b.hash())
                                  for k in outsiders)
    return SyncResponse(resp.request_id, ((b, cert), *resp.items[1:]))


def _empty(resp: SyncResponse) -> SyncResponse:
    return SyncResponse(resp.request_id, ())


def _bad_sig(resp: SyncResponse) -> SyncResponse:
    b, c = resp.items[0]
    sigs = tuple((v, bytes(64)) for v, _ in c.signatures)
    return SyncResponse(resp.request_id,
                        ((b, Certificate(c.height, c.round, c.block_hash, sigs)),
                         *resp.items[1:]))


@pytest.mark.parametrize(("lie", "reason"), [
    (_tampered_block, "certificate does not match"), (_thin_cert, "signatures, need"),
    (_shifted, "where 1 was asked"), (_empty, "did not send"), (_bad_sig, "bad signature"),
    ("forged", "another validator set"), (_outsider_cert, "not a validator")])
def test_a_lying_peer_is_dropped_and_another_asked(lie: Any, reason: str) -> None:
    f = Follower.new()
    f.status("liar", 12)
    # The first request goes to the only peer known: the liar.
    assert f.sent and all(r.peer == "liar" for r in f.sent)
    if lie == "forged":
        f.answer(_forged_chain(), "liar")
    else:
        f.answer(CHAIN_12, "liar", lie)
    assert [d.peer for d in f.drops] == ["liar"]
    assert reason in f.drops[0].reason, f.drops[0].reason
    assert not any(r.peer == "liar" for r in f.sent)
    assert f.ledger.height == 0
    # A banned peer's status is ignored; an honest one gets the job done.
    f.status("liar", 50)
    f.status("good", 12)
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 12
    assert f.ledger.block(12).hash() == CHAIN_12.block(12).hash()
    assert [d.peer for d in f.drops] == ["liar"]


def test_a_silent_peer_times_out_and_the_range_is_asked_elsewhere() -> None:
    f = Follower.new(max_in_flight=1)
    f.status("slow", 12)
    (req,) = f.sent
    f.sent = []
    f.status("good", 12)
    assert not f.sent, "one request in flight at most"
    f.now += 4999
    f.run(f.sync.on_tick(f.now))
    assert not f.drops
    f.now += 1
    f.run(f.sync.on_tick(f.now))
    assert [d.peer for d in f.drops] == ["slow"] and "timed out" in f.drops[0].reason
    assert f.sent and f.sent[0].peer == "good" and f.sent[0].request.start == 1
    # Its late answer is ignored.
    late = serve(req.request, 12, CHAIN_12.block, CHAIN_12.certificate)
    f.run(f.sync.on_response(f.now, "slow", late))
    assert f.ledger.height == 0
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 12


def test_one_block_behind_waits_for_consensus_before_syncing() -> None:
    f = Follower.new(lag_grace_ms=1000)
    f.status("peer", 1)
    assert not f.sent
    f.now += 999
    f.run(f.sync.on_tick(f.now))
    assert not f.sent
    f.now += 1
    f.run(f.sync.on_tick(f.now))
    assert f.sent and f.sent[0].request.start == 1 and f.sent[0].request.count == 1
    # Two behind: at once.
    g = Follower.new()
    g.status("peer", 2)
    assert g.sent


def test_blocks_committed_by_consensus_meanwhile_are_skipped() -> None:
    f = Follower.new()
    f.status("good", 12)
    # Consensus commits blocks 1..3 on its own before any answer arrives.
    for h in range(1, 4):
        f.ledger.commit(CHAIN_12.block(h), CHAIN_12.certificate(h))
        lg = f.ledger
        f.run(f.sync.on_applied(f.now, h, lg.last_block_hash, lg.validators_at(h + 1)))
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 12 and not f.drops


def test_a_block_the_ledger_refuses_drops_its_peer() -> None:
    """A well-certified block the ledger still refuses (here: a ledger whose state was
    different -- it can only mean a broken peer or a quorum gone bad)."""
    f = Follower.new()
    f.status("odd", 12)
    f.status("good", 12)
    refuse = {"done": False}
    real_commit = f.ledger.commit

    def commit(block: Block, cert: Certificate) -> None:
        if block.height == 2 and not refuse["done"]:
            refuse["done"] = True
            raise ValueError("state root mismatch")
        real_commit(block, cert)

    f.ledger.commit = commit  # type: ignore[method-assign,assignment]
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 12
    assert len(f.drops) == 1 and "rejected by the ledger" in f.drops[0].reason


def test_window_and_in_flight_are_bounded() -> None:
    f = Follower.new(batch=4, max_in_flight=3)
    for i in range(10):
        f.status(f"p{i}", 12)
    assert len(f.sent) == 3 and len({r.peer for r in f.sent}) == 3
    assert max(r.request.start + r.request.count - 1 for r in f.sent) <= 12
    f.status("p0", 10_000)  # a wild claim widens nothing beyond the window
    assert len(f.sync.in_flight) <= 3
    assert all(r.start + r.count - 1 <= f.sync.height + 12 for r in f.sync.in_flight.values())


def test_sync_messages_round_trip_and_reject_garbage() -> None:
    for msg in (SyncStatus(7, sha256(b"h")), SyncRequest(3, 5, 10),
                serve(SyncRequest(1, 11, 5), 12, CHAIN_12.block, CHAIN_12.certificate)):
        assert decode_sync_message(encode_sync_message(msg)) == msg
    resp = serve(SyncRequest(1, 11, 5), 12, CHAIN_12.block, CHAIN_12.certificate)
    assert [b.height for b, _ in resp.items] == [11, 12]
    assert serve(SyncRequest(1, 13, 5), 12, CHAIN_12.block, CHAIN_12.certificate).items == ()
    bad: list[Any] = [
        b"", b"\xff", encode({"type": "status", "msg": {"height": -1, "hash": bytes(32)}}),
        encode({"type": "request", "msg": {"id": 1, "start": 0, "count": 1}}),
        encode({"type": "request", "msg": {"id": 1, "start": 1, "count": MAX_SYNC_BATCH + 1}}),
        encode({"type": "response", "msg": {"id": 1, "items": [{"block": 1, "cert": 2}]}}),
        encode({"type": "response", "msg": {"id": 1, "items": [1] * (MAX_SYNC_BATCH + 1)}}),
        encode({"type": "what", "msg": {}}), encode([1, 2, 3]),
    ]
    for raw in bad:
        with pytest.raises(SyncError):
            decode_sync_message(raw)


def _fork_of(base: SimLedger, from_height: int) -> SimLedger:
    """A chain sharing `base` below `from_height`, then different, certified by the
    very same validators (as if more than a third of them had double-signed)."""
    lg = SimLedger.open(None, GENESIS)
    for h in range(1, 13):
        if h < from_height:
            lg.commit(base.block(h), base.certificate(h))
            continue
        vs = lg.validators_at(h)
        block, _ = lg.build_block([data_tx(500 + h)], T0 + h * 1000 + 7, vs.members[0],
                                  lg.certificate(h - 1) if h > 1 else None)
        lg.commit(block, certify(lg, block))
    return lg


def test_a_certified_block_that_does_not_extend_our_chain_is_not_applied() -> None:
    fork = _fork_of(CHAIN_12, 1)
    f = Follower.new(batch=1, max_in_flight=1)
    f.status("good", 1)
    f.now += 10_000
    f.run(f.sync.on_tick(f.now))
    f.sync_all(CHAIN_12)
    assert f.ledger.height == 1
    f.status("forker", 12)
    f.answer(fork, "forker")
    assert [d.peer for d in f.drops] == ["forker"]
    assert "does not extend our chain" in f.drops[0].reason
    assert f.ledger.height == 1


def test_a_block_naming_another_validator_set_is_refused() -> None:
    from protocol.block import Header
    b = CHAIN_12.block(1)
    wire = b.header.to_wire()
    wire["validators_hash"] = sha256(b"some other set")
    bad = Block(Header(**wire), b.txs, b.last_commit, b.evidence)
    lg = SimLedger.open(None, GENESIS)
    cert = certify(lg, bad)  # signed by the real validators of height 1

    def swap(resp: SyncResponse) -> SyncResponse:
        return SyncResponse(resp.request_id, ((bad, cert),))

    f = Follower.new(batch=1)
    f.status("odd", 12)
    f.answer(CHAIN_12, "odd", swap)
    assert [d.peer for d in f.drops] == ["odd"]
    assert "another validator set" in f.drops[0].reason
