"""A simulated node: the consensus engine and block sync driven exactly as the daemon
drives them (the simulator is the handler of their effects), over a ledger-like
application, a byte-level WAL and a mempool. Byzantine variants override a few hooks."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from protocol import wal
from protocol.block import Block, Header
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
    Timeout,
    ValidateBlock,
)
from protocol.crypto import SigningKey, sha256
from protocol.encoding import encode
from protocol.merkle import merkle_root
from protocol.proposal import Proposal, encode_message
from protocol.sync import (
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
from protocol.votes import NIL, Certificate, Evidence, Vote

if TYPE_CHECKING:
    from tests.sim.world import World

MEMPOOL_MAX = 400
BLOCK_TXS_MAX = 50
STATUS_INTERVAL_MS = 1000
WAL_COMPACT_RECORDS = 64


class Crashed(Exception):
    """Raised inside a node's step when a fault kills it mid-step."""


class SimNode:
    honest = True

    def __init__(self, world: World, index: int, key: SigningKey) -> None:
        self.world = world
        self.index = index
        self.name = f"n{index}"
        self.key = key
        self.app: Any = world.workload.new_ledger()
        self.wal = bytearray()
        self.up = False
        self.incarnation = 0
        self.tear_next_append = False
        self.crash_at_precommit: str | None = None
        """Dies right after its next precommit of a block is `persisted` (not yet sent)
        or `sent`: a locked node's restart, at the step where the lock matters."""
        self.engine: ConsensusEngine | None = None
        self.sync: BlockSync | None = None
        self.mempool: dict[bytes, bytes] = {}
        self.evidence_pool: dict[bytes, Evidence] = {}
        self.live_records: list[SignedRecord] = []
        self.signed_count = 0

    # ---- clock and lifecycle ----

    def now(self) -> int:
        return self.world.genesis_time_ms + self.world.now + self.world.skew(self.index)

    def boot(self) -> None:
        """Start (or restart) from durable state: the ledger and the WAL bytes."""
        assert not self.up
        self.up = True
        self.incarnation += 1
        found = wal.scan(bytes(self.wal))
        if found.valid_length < len(wal.MAGIC):
            self.wal = bytearray(wal.header())
        else:
            del self.wal[found.valid_length:]
        records = []
        for raw in found.records:
            try:
                records.append(SignedRecord.decode(raw))
            except RecordError as exc:
                raise AssertionError(f"{self.name}: a checksummed record failed: {exc}") \
                    from None
        self.live_records = records
        cfg: EngineConfig = self.world.engine_config
        self.engine = ConsensusEngine(cfg, self.key, records)
        app = self.app
        self.sync = BlockSync(app.chain_id, app.height, app.last_block_hash,
                              app.validators_at(app.height + 1),
                              SyncConfig(batch=8, max_in_flight=3, request_timeout_ms=1500,
                                         ban_ms=4000, lag_grace_ms=600))
        self.mempool = {}
        self.evidence_pool = {}
        now = self.now()
        effects = self.engine.start_height(now, app.height + 1, app.validators_at(app.height + 1),
                                           app.last_block_hash, app.last_time_ms, False)
        if self.honest:
            self.world.checker.on_boot(self, self.engine)
        self._run(effects)
        self._schedule_status(self.incarnation)

    def crash(self, mode: str = "clean") -> None:
        """Lose everything volatile. `torn_tail`/`garbage_tail` leave the debris of an
        append that was in progress (and whose message was therefore never sent)."""
        if not self.up:
            return
        self.up = False
        self.engine = None
        self.sync = None
        rng = self.world.rng
        if mode == "torn_tail":
            frame = wal.frame(b"x" * rng.randint(1, 200))
            self.wal += frame[: rng.randint(1, len(frame) - 1)]
        elif mode == "garbage_tail":
            self.wal += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))

    # ---- inputs from the world ----

    def guarded(self, fn: Any, *args: Any) -> None:
        """Run one step; a fault may kill the node in the middle of it."""
        if not self.up:
            return
        try:
            fn(*args)
        except Crashed:
            self.crash("clean")
            self.world.node_crashed(self)

    def on_timer(self, incarnation: int, timeout: Timeout) -> None:
        if self.up and incarnation == self.incarnation and self.engine is not None:
            self._run(self.engine.on_timeout(self.now(), timeout))

    def on_receive(self, src: int, channel: str, raw: bytes) -> None:
        if not self.up:
            return
        if channel == "consensus":
            msg = self.world.decode_consensus(raw)
            if msg is None:
                self.world.stats["rejected"] += 1
                return
            assert self.engine is not None
            self._run(self.engine.on_message(self.now(), msg))
        elif channel == "sync":
            try:
                smsg = decode_sync_message(raw)
            except SyncError:
                self.world.stats["rejected"] += 1
                return
            self._on_sync(src, smsg)
        elif channel == "tx":
            self._add_tx(raw, gossip=False)

    def submit(self, raw: bytes) -> None:
        """A client hands a transaction to this node."""
        if self.up and self._add_tx(raw, gossip=True):
            self.world.stats["submitted"] += 1

    def _add_tx(self, raw: bytes, gossip: bool) -> bool:
        h = sha256(raw)
        if h in self.mempool or len(self.mempool) >= MEMPOOL_MAX:
            return False
        if not self.world.workload.accept_tx(self.app, raw):
            return False
        was_empty = not self.mempool
        self.mempool[h] = raw
        if gossip:
            self.world.broadcast(self.index, "tx", raw)
        if was_empty and self.engine is not None:
            self._run(self.engine.on_txs_available(self.now(), True))
        return True

    # ---- effects ----

    def _run(self, effects: Iterable[Any]) -> None:
        queue: deque[Any] = deque(effects)
        while queue:
            if not self.up:
                return
            e = queue.popleft()
            more = self._effect(e)
            if more:
                queue.extend(more)

    def _effect(self, e: Any) -> list[Any] | None:
        engine, sync = self.engine, self.sync
        assert engine is not None and sync is not None
        if isinstance(e, PersistSigned):
            self._persist(e.record)
        elif isinstance(e, Broadcast):
            self._broadcast_consensus(e)
        elif isinstance(e, ScheduleTimeout):
            self.world.at(e.delay_ms, self.index, self.on_timer, self.incarnation, e.timeout)
        elif isinstance(e, RequestProposal):
            return self._build_proposal(e)
        elif isinstance(e, ValidateBlock):
            try:
                self.app.check_block(e.block)
                ok, reason = True, ""
            except self.world.workload.rejected as exc:
                ok, reason = False, str(exc)
            return engine.on_block_verdict(self.now(), e.block.hash(), ok, reason)
        elif isinstance(e, Commit):
            return self._commit(e.block, e.certificate, "consensus")
        elif isinstance(e, EvidenceFound):
            self.world.checker_evidence(self, e.evidence)
            if len(self.evidence_pool) < 50:
                self.evidence_pool.setdefault(e.evidence.hash(), e.evidence)
            self.world.broadcast(self.index, "consensus", encode_message(e.evidence))
        elif isinstance(e, Behind):
            pass  # status is exchanged periodically; the hint only speeds that up
        elif isinstance(e, SendSyncRequest):
            self.world.send(self.index, int(e.peer[1:]), "sync",
                            encode_sync_message(e.request))
        elif isinstance(e, ApplyBlock):
            return self._apply_synced(e)
        elif isinstance(e, DropPeer):
            self.world.checker_drop(self, int(e.peer[1:]), e.reason)
        else:
            raise AssertionError(f"unknown effect {e!r}")
        return None

    def _persist(self, rec: SignedRecord) -> None:
        frame = wal.frame(rec.encode())
        if self.tear_next_append:
            self.tear_next_append = False
            self.wal += frame[: self.world.rng.randint(0, len(frame) - 1)]
            raise Crashed()
        self.wal += frame
        self.live_records.append(rec)
        self.signed_count += 1
        if self.honest:
            self.world.checker.on_persist(self, rec)
        if self.crash_at_precommit == "persisted" and _locks(rec):
            self.crash_at_precommit = None
            raise Crashed()

    def _broadcast_consensus(self, e: Broadcast) -> None:
        msg = e.message
        if isinstance(msg, Proposal | Vote):
            self.world.checker_signed(self, msg)
        self.world.broadcast(self.index, "consensus", e.raw)
        if (self.crash_at_precommit == "sent" and isinstance(msg, Vote)
                and msg.validator == self.key.public and msg.type == "precommit"
                and msg.block_hash != NIL):
            self.crash_at_precommit = None
            raise Crashed()

    def _build_proposal(self, e: RequestProposal) -> list[Any]:
        assert self.engine is not None
        block = self._make_block(e.height, e.time_ms)
        if block is None:
            return []
        return self.engine.on_proposal_ready(self.now(), e.height, e.round, block)

    def _make_block(self, height: int, time_ms: int) -> Block | None:
        app = self.app
        if height != app.height + 1:
            return None
        txs = list(self.mempool.values())[:BLOCK_TXS_MAX]
        last = app.certificate(app.height) if app.height else None
        ev = tuple(self.evidence_pool.values())[:10]
        try:
            block, skipped = app.build_block(txs, time_ms, self.key.public, last, ev)
        except self.world.workload.rejected:
            return None  # e.g. our clock is behind the last block: let the round time out
        for raw in skipped:
            self.mempool.pop(sha256(raw), None)
        return block

    def _commit(self, block: Block, cert: Certificate, via: str) -> list[Any]:
        app = self.app
        if block.height <= app.height:
            return []
        assert block.height == app.height + 1, "engine or sync skipped a height"
        validators = app.validators_at(block.height)
        prev = app.last_block_hash
        try:
            app.commit(block, cert)
        except self.world.workload.rejected as exc:
            if via == "consensus" and self.honest:
                self.world.checker.fail(f"{self.name}: decided block {block.height} "
                                        f"rejected by the ledger: {exc}")
            raise
        if self.honest:
            self.world.checker.on_commit(self, block, cert, validators, prev)
            for raw in block.txs:
                self.world.checker.on_ack(sha256(raw), block.height)
        self.world.on_commit(self, block)
        for raw in block.txs:
            self.mempool.pop(sha256(raw), None)
        for ev in block.evidence:
            self.evidence_pool.pop(ev.hash(), None)
        self._compact_wal(block.height)
        assert self.engine is not None and self.sync is not None
        now = self.now()
        nxt = app.validators_at(app.height + 1)
        out: list[Any] = list(self.engine.start_height(
            now, app.height + 1, nxt, app.last_block_hash, app.last_time_ms,
            bool(self.mempool)))
        out.extend(self.sync.on_applied(now, app.height, app.last_block_hash, nxt))
        return out

    def _compact_wal(self, committed: int) -> None:
        if len(self.live_records) < WAL_COMPACT_RECORDS:
            return
        self.live_records = [r for r in self.live_records if r.height > committed]
        self.wal = bytearray(wal.encode_log(r.encode() for r in self.live_records))

    # ---- sync ----

    def _schedule_status(self, incarnation: int) -> None:
        self.world.at(STATUS_INTERVAL_MS, self.index, self._status_tick, incarnation)

    def _status_tick(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        self._send_status()
        assert self.sync is not None
        self._run(self.sync.on_tick(self.now()))
        self._schedule_status(incarnation)

    def _send_status(self) -> None:
        st = SyncStatus(self.app.height, self.app.last_block_hash)
        self.world.broadcast(self.index, "sync", encode_sync_message(st))

    def _on_sync(self, src: int, msg: Any) -> None:
        assert self.sync is not None
        peer = f"n{src}"
        if isinstance(msg, SyncStatus):
            self._run(self.sync.on_status(self.now(), peer, msg))
        elif isinstance(msg, SyncRequest):
            self.world.send(self.index, src, "sync", encode_sync_message(self._serve(msg)))
        elif isinstance(msg, SyncResponse):
            self._run(self.sync.on_response(self.now(), peer, msg))

    def _serve(self, req: SyncRequest) -> SyncResponse:
        return serve(req, self.app.height, self.app.block, self.app.certificate)

    def _apply_synced(self, e: ApplyBlock) -> list[Any]:
        assert self.sync is not None
        try:
            return self._commit(e.block, e.certificate, "sync")
        except self.world.workload.rejected as exc:
            return self.sync.on_apply_failed(self.now(), e.block.height, str(exc))


class ByzantineNode(SimNode):
    """A validator running the honest engine with some behaviours layered on top."""

    honest = False

    def __init__(self, world: World, index: int, key: SigningKey,
                 behaviours: tuple[str, ...]) -> None:
        super().__init__(world, index, key)
        self.behaviours = set(behaviours)
        self._endorsed: set[tuple[int, int, bytes]] = set()
        self._stale_sent: dict[tuple[int, int], tuple[Proposal, list[Vote]]] = {}
        """stale_pol: what it proposed at (height, round), resent as it was."""

    def on_receive(self, src: int, channel: str, raw: bytes) -> None:
        super().on_receive(src, channel, raw)
        endorse = self.behaviours & {"amnesia", "stale_pol"}
        if endorse and channel == "consensus" and self.up:
            msg = self.world.decode_consensus(raw)
            # Including the height it has itself committed: that is when a second
            # quorum, for another block, would break agreement.
            if isinstance(msg, Proposal) and msg.height >= self.app.height:
                self._endorse(msg.height, msg.round, msg.block_hash,
                              precommit="amnesia" in endorse)

    def _endorse(self, height: int, round: int, block_hash: bytes,
                 precommit: bool = True) -> None:
        """Prevote (and precommit) every proposal seen, to everyone: the vote that most
        helps two honest groups reach quorums for different blocks -- or, prevotes
        alone, helps a proof of lock form for every block proposed, round after round."""
        if (height, round, block_hash) in self._endorsed or len(self._endorsed) > 10_000:
            return
        self._endorsed.add((height, round, block_hash))
        cid = self.world.chain_id
        for t in ("prevote", "precommit") if precommit else ("prevote",):
            v = Vote.create(self.key, cid, t, height, round, block_hash)
            self.world.broadcast(self.index, "consensus", encode_message(v))

    def _stale_proposal(self, msg: Proposal) -> tuple[Proposal, list[Vote]] | None:
        """What a proposer that attacks the unlock rule sends instead of `msg`. Once it
        holds proofs of lock for two blocks, the block of the *older* one, re-proposed
        with it (honest nodes locked on the newer must refuse it); with a proof of lock
        for one block only, a fresh other block (which unlocked nodes and its own
        prevote may carry to a second proof of lock, in a later round); now and then a
        made-up pol_round (nobody may accept it without the +2/3 prevotes). Returns the
        proposal and the prevotes to relay with it; None to propose `msg` (round 0)."""
        e, rng = self.engine, self.world.rng
        r = msg.round
        if e is None or r == 0 or msg.height != e.height:
            return None
        q = e.validators.quorum()
        pols = sorted((pr, v) for pr, rv in e._rounds.items() if pr < r
                      for v, n in rv.prevote_tally.items()
                      if v != NIL and n >= q and v in e._blocks)
        cid = self.world.chain_id
        if rng.random() < 0.8:
            newest = pols[-1][1] if pols else None
            stale = [x for x in pols if x[1] != newest]
            if stale:
                self.world.stats["stale_pol_old"] += 1
                pr, v = stale[0]
                relay = e._rounds[pr].votes_for("prevote", v)
                return Proposal.create(self.key, cid, msg.height, r, pr, e._blocks[v]), relay
            now = max(self.now(), e.prev_time_ms + 1)  # fresh means timely, too
            fresh = self._alternative_block(msg.block, now)
            if fresh is not None and fresh.hash() != newest:
                self.world.stats["stale_pol_fresh"] += 1
                return Proposal.create(self.key, cid, msg.height, r, -1, fresh), []
        known = [b for h, b in e._blocks.items() if h != msg.block_hash]
        block = rng.choice(known) if known and rng.random() < 0.5 else \
            self._alternative_block(msg.block)
        if block is None:
            return None
        self.world.stats["stale_pol_fake"] += 1
        return Proposal.create(self.key, cid, msg.height, r, rng.randrange(r), block), []

    def boot(self) -> None:
        super().boot()
        if "garbage" in self.behaviours or "bad_signature" in self.behaviours:
            self.world.at(200, self.index, self._mischief, self.incarnation)

    def _halves(self) -> tuple[list[int], list[int]]:
        peers = [n.index for n in self.world.nodes if n.index != self.index]
        self.world.rng.shuffle(peers)
        k = len(peers) // 2
        return peers[:k], peers[k:]

    def _broadcast_consensus(self, e: Broadcast) -> None:
        msg = e.message
        rng = self.world.rng
        if "silent" in self.behaviours and rng.random() < 0.8:
            return
        if ("stale_pol" in self.behaviours and isinstance(msg, Vote)
                and msg.type == "precommit" and msg.validator == self.key.public):
            return  # its precommits would only help honest nodes decide

        a, b = self._halves()
        cid = self.world.chain_id
        if isinstance(msg, Vote) and "double_vote" in self.behaviours and rng.random() < 0.7:
            other = NIL if msg.block_hash != NIL else rng.randbytes(32)
            twin = Vote.create(self.key, cid, msg.type, msg.height, msg.round, other)
            for p in a:
                self.world.send(self.index, p, "consensus", e.raw)
            for p in b:
                self.world.send(self.index, p, "consensus", encode_message(twin))
            return
        if (isinstance(msg, Proposal) and "stale_pol" in self.behaviours
                and msg.proposer == self.key.public):
            stale = self._stale_sent.get((msg.height, msg.round))
            if stale is None:
                stale = self._stale_proposal(msg)
                if stale is not None and len(self._stale_sent) < 10_000:
                    self._stale_sent[(msg.height, msg.round)] = stale
            if stale is not None:
                p2, relay = stale
                self.world.broadcast(self.index, "consensus", encode_message(p2))
                for v in relay:
                    self.world.broadcast(self.index, "consensus", encode_message(v))
                self._endorse(p2.height, p2.round, p2.block_hash, precommit=False)
                return
            if msg.round == 0 and "bad_clock" not in self.behaviours:
                # No proof of lock yet: split the validators instead.
                alt = self._alternative_block(msg.block)
                if alt is not None:
                    p2 = Proposal.create(self.key, cid, msg.height, msg.round, -1, alt)
                    for p in a:
                        self.world.send(self.index, p, "consensus", e.raw)
                    for p in b:
                        self.world.send(self.index, p, "consensus", encode_message(p2))
                    return
        if isinstance(msg, Proposal) and "amnesia" in self.behaviours:
            # Forget the lock: always a fresh block, never the valid value.
            alt = self._alternative_block(msg.block)
            if alt is not None:
                p2 = Proposal.create(self.key, cid, msg.height, msg.round, -1, alt)
                self.world.broadcast(self.index, "consensus", encode_message(p2))
                self._endorse(msg.height, msg.round, p2.block_hash)
                return
        if (isinstance(msg, Proposal) and "equivocate_proposal" in self.behaviours
                and rng.random() < 0.8):
            alt = self._alternative_block(msg.block)
            if alt is not None:
                p2 = Proposal.create(self.key, cid, msg.height, msg.round, msg.pol_round, alt)
                for p in a:
                    self.world.send(self.index, p, "consensus", e.raw)
                for p in b:
                    self.world.send(self.index, p, "consensus", encode_message(p2))
                return
        if "bad_signature" in self.behaviours and rng.random() < 0.5:
            self.world.broadcast(self.index, "consensus", _corrupt_sig(msg))
        self.world.broadcast(self.index, "consensus", e.raw)

    def _alternative_block(self, block: Block, time_ms: int | None = None) -> Block | None:
        """Another block for `block`'s height, timed just after it (or at `time_ms`)."""
        if block.height != self.app.height + 1:
            return None
        txs = list(self.mempool.values())[:BLOCK_TXS_MAX]
        self.world.rng.shuffle(txs)
        last = self.app.certificate(self.app.height) if self.app.height else None
        try:
            when = block.header.time_ms + 1 if time_ms is None else time_ms
            alt, _ = self.app.build_block(txs[: len(txs) // 2], when,
                                          self.key.public, last, ())
        except self.world.workload.rejected:
            return None
        return alt

    def _build_proposal(self, e: RequestProposal) -> list[Any]:
        if "invalid_block" in self.behaviours and self.world.rng.random() < 0.7:
            block = self._make_block(e.height, e.time_ms)
            if block is not None:
                bad = _invalidate(block, self.world.rng.randrange(5), self.world)
                prop = Proposal.create(self.key, self.world.chain_id, e.height, e.round, -1, bad)
                self.world.broadcast(self.index, "consensus", encode_message(prop))
            return []
        if "bad_clock" in self.behaviours and self.world.rng.random() < 0.7:
            # A valid block, but timed by a clock 4-10 drift bounds ahead: honest nodes
            # must refuse it while it is fresh (DESIGN 5), or the chain runs ahead of time.
            ahead = self.world.rng.randint(4, 10) * self.world.engine_config.max_clock_drift_ms
            e = RequestProposal(e.height, e.round, e.time_ms + ahead)
        return super()._build_proposal(e)

    def _serve(self, req: SyncRequest) -> SyncResponse:
        if "sync_liar" not in self.behaviours:
            return super()._serve(req)
        return _lie(self, req)

    def _send_status(self) -> None:
        if "sync_liar" in self.behaviours and self.world.rng.random() < 0.5:
            st = SyncStatus(self.app.height + self.world.rng.randint(1, 30),
                            self.world.rng.randbytes(32))
            self.world.broadcast(self.index, "sync", encode_sync_message(st))
            return
        super()._send_status()

    def _mischief(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        _mischief(self, self.behaviours)
        self.world.at(self.world.rng.randint(100, 600), self.index, self._mischief, incarnation)


class OutsiderNode(SimNode):
    """Not a validator: can only send junk, forged or badly signed messages, and lie
    about blocks. Runs the honest engine so it follows the chain."""

    honest = False

    def __init__(self, world: World, index: int, key: SigningKey,
                 behaviours: tuple[str, ...]) -> None:
        super().__init__(world, index, key)
        self.behaviours = set(behaviours)

    def boot(self) -> None:
        super().boot()
        self.world.at(150, self.index, self._mischief, self.incarnation)

    def _mischief(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        _mischief(self, self.behaviours)
        self.world.at(self.world.rng.randint(100, 600), self.index, self._mischief, incarnation)

    def _serve(self, req: SyncRequest) -> SyncResponse:
        if "sync_liar" not in self.behaviours:
            return super()._serve(req)
        return _lie(self, req)

    def _send_status(self) -> None:
        if "sync_liar" in self.behaviours and self.world.rng.random() < 0.5:
            st = SyncStatus(self.app.height + self.world.rng.randint(1, 30),
                            self.world.rng.randbytes(32))
            self.world.broadcast(self.index, "sync", encode_sync_message(st))
            return
        super()._send_status()


# ---- Byzantine helpers --------------------------------------------------------------

def _locks(rec: SignedRecord) -> bool:
    return rec.step.value == "precommit" and rec.block_hash != NIL


def _corrupt_sig(msg: Any) -> bytes:
    wire = msg.to_wire()
    if "sig" in wire:
        sig = bytearray(wire["sig"])
        sig[0] ^= 0x55
        wire["sig"] = bytes(sig)
        kind = "proposal" if isinstance(msg, Proposal) else "vote"
        return encode({"type": kind, "msg": wire})
    return encode_message(msg)


def _invalidate(block: Block, how: int, world: World) -> Block:
    """A block that is well-formed but must be refused by every honest validator."""
    hd = block.header
    rng = world.rng
    if how == 0:
        return Block(_with(hd, state_root=rng.randbytes(32)), block.txs, block.last_commit,
                     block.evidence)
    if how == 1:
        txs = (*block.txs, world.workload.bad_tx())
        return Block(_with(hd, txs_root=merkle_root(list(txs))), txs, block.last_commit,
                     block.evidence)
    if how == 2:
        return Block(_with(hd, time_ms=hd.time_ms + 20 * world.engine_config.max_clock_drift_ms),
                     block.txs, block.last_commit, block.evidence)
    if how == 3:
        return Block(_with(hd, prev_hash=rng.randbytes(32)), block.txs, block.last_commit,
                     block.evidence)
    return Block(_with(hd, validators_hash=rng.randbytes(32)), block.txs, block.last_commit,
                 block.evidence)


def _with(hd: Header, **changes: Any) -> Header:
    fields = hd.to_wire()
    fields.update(changes)
    return Header(**fields)


def _mischief(node: SimNode, behaviours: set[str]) -> None:
    world = node.world
    rng = world.rng
    peers = [n.index for n in world.nodes if n.index != node.index]
    if not peers:
        return
    dst = rng.choice(peers)
    if "garbage" in behaviours:
        channel = rng.choice(("consensus", "sync", "tx"))
        kind = rng.randrange(3)
        if kind == 0:
            raw = rng.randbytes(rng.randint(0, 300))
        elif kind == 1:  # a valid-looking message cut short
            v = Vote.create(node.key, world.chain_id, "prevote", node.app.height + 1, 0, NIL)
            full = encode_message(v)
            raw = full[: rng.randint(0, len(full) - 1)]
        else:  # structurally wrong fields
            raw = encode({"type": "vote", "msg": {"body": {"type": "prevote", "height": -1},
                                                  "signer": b"", "sig": b""}})
        world.send(node.index, dst, channel, raw)
    if "bad_signature" in behaviours:
        # A vote claiming to come from some validator, signed by someone else.
        h = node.app.height + 1
        vals = node.app.validators_at(h).members
        victim = rng.choice(vals)
        forged = Vote.create(node.key, world.chain_id, rng.choice(("prevote", "precommit")), h,
                             rng.randint(0, 3), rng.randbytes(32))
        forged = Vote(forged.type, forged.height, forged.round, forged.block_hash, victim,
                      forged.sig)
        world.send(node.index, dst, "consensus", encode_message(forged))


def _lie(node: SimNode, req: SyncRequest) -> SyncResponse:
    """Answer a sync request with something invalid."""
    rng = node.world.rng
    app = node.app
    h = req.start
    how = rng.randrange(4)
    if h <= app.height and how < 3:
        block, cert = app.block(h), app.certificate(h)
        if how == 0:  # certificate stripped to one signature
            cert = Certificate(cert.height, cert.round, cert.block_hash, cert.signatures[:1])
            if len(app.validators_at(h).members) == 1:
                cert = Certificate(cert.height, cert.round, cert.block_hash,
                                   ((cert.signatures[0][0], bytes(64)),))
        elif how == 1:  # block tampered (its hash no longer matches the certificate)
            block = Block(_with(block.header, time_ms=block.header.time_ms + 1), block.txs,
                          block.last_commit, block.evidence)
        else:  # wrong height
            return SyncResponse(req.request_id, ((app.block(max(1, h - 1)), cert),)) \
                if h > 1 else SyncResponse(req.request_id, ((block, _self_cert(node, block)),))
        return SyncResponse(req.request_id, ((block, cert),))
    # A fabricated block, "certified" by the liar alone.
    try:
        base = app.build_block([], app.last_time_ms + 1, node.key.public,
                               app.certificate(app.height) if app.height else None, ())[0]
    except Exception:  # the liar may not be allowed to build: then it lies with nothing
        return SyncResponse(req.request_id, ())
    fake = Block(_with(base.header, height=h, state_root=rng.randbytes(32)), base.txs,
                 base.last_commit, base.evidence)
    return SyncResponse(req.request_id, ((fake, _self_cert(node, fake)),))


def _self_cert(node: SimNode, block: Block) -> Certificate:
    v = Vote.create(node.key, node.world.chain_id, "precommit", block.height, 0, block.hash())
    return Certificate.from_votes([v])
