"""The BFT consensus engine: Tendermint's Algorithm 1, sans I/O.

Follows "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic 2018): rounds of
propose / prevote / precommit, locking (lockedValue/lockedRound), the valid value a
proposer must re-propose (validValue/validRound), the +2/3 prevote and precommit rules,
the f+1 round skip, and step timeouts that grow with the round. Line numbers in comments
refer to Algorithm 1. Every validator has power 1 (DESIGN 5); the proposer of (h, r) is
`ValidatorSet.proposer(h, r)`.

Refinements, all from Tendermint practice (the last three each forced by a failure the
simulator found):
- Block time is the proposer's clock (DESIGN 5). As in Tendermint's proposer-based
  timestamps, a validator checks a *fresh* proposal (pol_round = -1) against its own
  clock when it receives it (`timely`: within `max_clock_drift`); a re-proposal carrying
  a proof of lock is not re-checked, since more than 2/3 prevoted it when it was fresh.
  Without this a locked value could become forever "too old" and liveness would die.
- Round 0 of a height waits until transactions are available or `empty_block_interval`
  has passed since the previous block (DESIGN 5); a proposal arriving meanwhile is
  handled normally. Later rounds never wait.
- Gossip is lossy, and Algorithm 1 assumes every message of a correct process eventually
  arrives. So the engine resends its own messages of the current height when a step has
  stalled for `rebroadcast_interval`, and a proposer re-proposing its valid value sends
  the +2/3 prevotes of `pol_round` along (a `Broadcast` may carry others' votes).
- A quorum counts distinct senders of *that* message: an equivocating validator's vote
  counts for each value it signed (bounded to NIL and blocks we know), or honest nodes
  that saw its other vote first could never accept a proof of lock that includes it.
- A precommit's signing record carries the locked block and its +2/3 prevotes
  (`LockProof`), so a restarted validator keeps its valid value as well as its lock;
  with the lock alone, locked and unlocked honest validators can wait on each other
  forever.

Driver contract (the daemon over libp2p with real timers, the simulator in virtual time):
- Construct one `ConsensusEngine` per process lifetime with the signing records found in
  the WAL, then call `start_height` for `ledger.height + 1`, and again after every
  commit (whether the engine decided it or block sync applied it).
- Feed every decoded consensus message to `on_message`, fired timers to `on_timeout`,
  built blocks to `on_proposal_ready`, ledger verdicts to `on_block_verdict`, mempool
  state changes to `on_txs_available`. Every call takes the local clock in Unix ms.
- Carry out the returned effects in order. `PersistSigned` must be durable before any
  later effect of the same call is carried out (several records may share one fsync).
  Answers to effects (verdicts, built blocks) may come synchronously or later.
- The engine verifies signatures on votes and proposals itself; the driver only decodes.

The signing guard: every proposal and vote is recorded as a `SignedRecord` keyed by
(height, round, step) before it is sent. The engine never signs a second value for a key
it holds a record for -- it resends the recorded message instead and follows the rules as
if it had just cast it -- and on restart it restores its lock from its recorded
precommits, so a restarted honest node is indistinguishable from one that never stopped.
This holds as long as every record whose message was sent survives: a crash can only
tear the record being appended, whose message was not sent yet (`protocol/wal.py`).
Records of heights at or below the last committed one are no longer needed; a node
may compact them away.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.block import Block, BlockError
from protocol.consensus_types import (
    Behind,
    Broadcast,
    Commit,
    Effect,
    EngineConfig,
    EvidenceFound,
    LockProof,
    PersistSigned,
    RequestProposal,
    RoundVotes,
    ScheduleTimeout,
    SignedRecord,
    Step,
    Timeout,
    TimeoutKind,
    ValidateBlock,
)
from protocol.crypto import SigningKey
from protocol.proposal import ConsensusMessage, Proposal
from protocol.votes import NIL, PRECOMMIT, PREVOTE, Certificate, Evidence, ValidatorSet, Vote

_STEP_ORDER = {Step.PROPOSE: 0, Step.PREVOTE: 1, Step.PRECOMMIT: 2}
MAX_EVIDENCE_SEEN = 10_000


class ConsensusEngine:
    """One validator's view of consensus, one height at a time."""

    def __init__(self, config: EngineConfig, key: SigningKey | None,
                 records: Iterable[SignedRecord] = ()) -> None:
        self.config = config
        self.chain_id = config.chain_id
        self.key = key
        self._records: dict[tuple[int, int, Step], SignedRecord] = {}
        for rec in records:
            prev = self._records.get(rec.key())
            # Two records for one key would mean we already double-signed; keep the first.
            if prev is None:
                self._records[rec.key()] = rec
        self._evidence_seen: dict[bytes, None] = {}
        self.height = 0
        self.validators = ValidatorSet(())
        self._reset_height_state()

    # ---- state of the current height -----------------------------------------------

    def _reset_height_state(self) -> None:
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_value: bytes | None = None
        self.locked_round = -1
        self.valid_value: bytes | None = None
        self.valid_round = -1
        self.decided: Commit | None = None
        self.prev_hash = b""
        self.prev_time_ms = 0
        self._rounds: dict[int, RoundVotes] = {}
        self._blocks: dict[bytes, Block] = {}
        self._verdicts: dict[bytes, bool] = {}
        self._validating: set[bytes] = set()
        self._to_validate: list[bytes] = []
        self._waiting = False
        self._txs_available = False
        self._pending_request: tuple[int, int] | None = None
        self._future: list[ConsensusMessage] = []
        self._future_proposals = 0
        self._behind_hinted: set[int] = set()
        self._missing_block_hinted = False
        self._last_rebroadcast_state: tuple[int, Step] | None = None

    @property
    def is_validator(self) -> bool:
        return self.key is not None and self.key.public in self.validators

    def _f(self) -> int:
        """Most faulty validators the set tolerates: n - quorum."""
        return self.validators.size - self.validators.quorum()

    def _round(self, r: int) -> RoundVotes:
        rv = self._rounds.get(r)
        if rv is None:
            rv = self._rounds[r] = RoundVotes()
        return rv

    # ---- inputs ----------------------------------------------------------------------

    def start_height(self, now_ms: int, height: int, validators: ValidatorSet,
                     prev_hash: bytes, prev_time_ms: int,
                     txs_available: bool = False) -> list[Effect]:
        """Begin deciding `height`. `prev_hash`/`prev_time_ms` are those of the last
        committed block (the chain id and genesis time at height 1)."""
        if height <= self.height:
            raise ValueError(f"height {height} is not after {self.height}: heights go forward")
        if validators.size == 0:
            raise ValueError("an empty validator set cannot decide anything")
        future = [m for m in self._future if _msg_height(m) == height]
        self.height = height
        self.validators = validators
        self._reset_height_state()
        self.prev_hash = prev_hash
        self.prev_time_ms = prev_time_ms
        self._txs_available = txs_available
        for k in [k for k in self._records if k[0] < height]:
            del self._records[k]
        out: list[Effect] = []
        restarted = self._restore_from_records(out)
        start_round = max((k[1] for k in self._records if k[0] == height), default=0)
        self._start_round(now_ms, start_round, out, gate=not restarted)
        for step in (Step.PREVOTE, Step.PRECOMMIT):
            rec = self._records.get((height, start_round, step))
            if rec is not None:  # we had voted in this round before the restart
                self.step = step
                self._resend(rec, out)
        out.append(ScheduleTimeout(Timeout(height, 0, TimeoutKind.REBROADCAST),
                                   self.config.rebroadcast_interval_ms))
        for msg in future:
            self._on_message(now_ms, msg, out)
        self._process(now_ms, out)
        return out

    def on_message(self, now_ms: int, msg: ConsensusMessage) -> list[Effect]:
        out: list[Effect] = []
        self._on_message(now_ms, msg, out)
        self._process(now_ms, out)
        return out

    def on_timeout(self, now_ms: int, timeout: Timeout) -> list[Effect]:
        out: list[Effect] = []
        if timeout.height != self.height or self.decided is not None:
            return out
        kind, r = timeout.kind, timeout.round
        if kind is TimeoutKind.REBROADCAST:
            # Only when stuck: while rounds and steps move, fresh messages are flowing.
            state = (self.round, self.step)
            if state == self._last_rebroadcast_state:
                self._rebroadcast(out)
            self._last_rebroadcast_state = state
            out.append(ScheduleTimeout(timeout, self.config.rebroadcast_interval_ms))
        elif kind is TimeoutKind.WAIT:
            if self._waiting and r == self.round:
                self._open_gate(now_ms, out)
        elif kind is TimeoutKind.PROPOSE:  # line 57
            if r == self.round and self.step is Step.PROPOSE and not self._waiting:
                self._vote(PREVOTE, NIL, out)
        elif kind is TimeoutKind.PREVOTE:  # line 61
            if r == self.round and self.step is Step.PREVOTE:
                self._vote(PRECOMMIT, NIL, out)
        elif kind is TimeoutKind.PRECOMMIT and r == self.round:  # line 65
            self._start_round(now_ms, r + 1, out)
        self._process(now_ms, out)
        return out

    def on_txs_available(self, now_ms: int, available: bool) -> list[Effect]:
        self._txs_available = available
        out: list[Effect] = []
        if available and self._waiting and self.decided is None:
            self._open_gate(now_ms, out)
            self._process(now_ms, out)
        return out

    def on_proposal_ready(self, now_ms: int, height: int, round: int,
                          block: Block) -> list[Effect]:
        """The block we asked for. Ignored if the round has moved on meanwhile."""
        out: list[Effect] = []
        if (self._pending_request != (height, round) or height != self.height
                or round != self.round or self.step is not Step.PROPOSE
                or self.decided is not None):
            return out
        self._pending_request = None
        if self._precheck(block) is not None:
            return out  # not a block for this height after all: let the round time out
        h = block.hash()
        self._blocks[h] = block
        self._verdicts[h] = True  # the ledger built it
        self._propose(now_ms, block, -1, out)
        self._process(now_ms, out)
        return out

    def on_block_verdict(self, now_ms: int, block_hash: bytes, ok: bool,
                         reason: str = "") -> list[Effect]:
        out: list[Effect] = []
        if block_hash in self._validating:
            self._validating.discard(block_hash)
            self._verdicts[block_hash] = ok
            self._process(now_ms, out)
        return out

    # ---- messages --------------------------------------------------------------------

    def _on_message(self, now_ms: int, msg: ConsensusMessage, out: list[Effect]) -> None:
        if isinstance(msg, Evidence):
            self._on_evidence(msg, out)
            return
        h = msg.height
        if h != self.height:
            if h > self.height:
                # Proposals carry blocks (up to 4 MiB): only a few are kept.
                if (h == self.height + 1 and len(self._future) < self.config.max_future_messages
                        and (not isinstance(msg, Proposal) or self._future_proposals < 4)):
                    self._future_proposals += isinstance(msg, Proposal)
                    self._future.append(msg)
                if h not in self._behind_hinted and len(self._behind_hinted) < 64:
                    self._behind_hinted.add(h)
                    out.append(Behind(h))
            return
        if self.decided is not None or msg.round > self.round + self.config.max_rounds_ahead:
            return
        if isinstance(msg, Proposal):
            self._on_proposal(now_ms, msg)
        else:
            self._on_vote(msg, out)

    def _on_proposal(self, now_ms: int, p: Proposal) -> None:
        if p.proposer != self.validators.proposer(self.height, p.round):
            return
        rv = self._round(p.round)
        if rv.proposal is not None:
            return  # duplicate, or an equivocating proposer: the first one stands
        if not p.verify(self.chain_id):
            return
        self._accept_proposal(now_ms, p, rv)

    def _accept_proposal(self, now_ms: int, p: Proposal, rv: RoundVotes) -> None:
        rv.proposal = p
        rv.timely = abs(p.block.header.time_ms - now_ms) <= self.config.max_clock_drift_ms
        rv.senders.add(p.proposer)
        self._learn_block(p.block, p.block_hash)

    def _learn_block(self, block: Block, h: bytes) -> None:
        if h in self._blocks:
            return
        self._blocks[h] = block
        if h not in self._verdicts:
            problem = self._precheck(block)
            if problem is not None:
                self._verdicts[h] = False

    def _precheck(self, block: Block) -> str | None:
        """What the engine can check without the ledger; the ledger checks the rest."""
        hd = block.header
        if hd.chain_id != self.chain_id:
            return "block of another chain"
        if hd.height != self.height:
            return "block of another height"
        if hd.prev_hash != self.prev_hash:
            return "block does not extend our last block"
        if hd.time_ms <= self.prev_time_ms:
            return "block time not after the previous block's"
        if hd.validators_hash != self.validators.hash():
            return "block names another validator set"
        try:
            block.check_body()
        except BlockError as exc:
            return str(exc)
        return None

    def _on_vote(self, v: Vote, out: list[Effect]) -> None:
        if v.validator not in self.validators:
            return
        rv = self._round(v.round)
        existing = rv.votes_of(v.type, v.validator)
        if existing is not None:
            if v.block_hash in existing:
                return  # duplicate (signatures are deterministic)
            if not v.verify(self.chain_id):
                return
            self._found_evidence(Evidence(next(iter(existing.values())), v), out)
            # An equivocator's vote still counts for each value it signed (others may
            # need it to see a proof of lock), but only for values that can matter, so
            # that it cannot make us store votes for arbitrary hashes.
            if v.block_hash == NIL or v.block_hash in self._blocks:
                rv.add(v)
            return
        if not v.verify(self.chain_id):
            return
        rv.add(v)

    def _on_evidence(self, ev: Evidence, out: list[Effect]) -> None:
        if ev.hash() in self._evidence_seen:
            return
        try:
            ev.check(self.chain_id)
        except ValueError:
            return
        self._found_evidence(ev, out)

    def _found_evidence(self, ev: Evidence, out: list[Effect]) -> None:
        key = ev.hash()
        if key in self._evidence_seen:
            return
        if len(self._evidence_seen) >= MAX_EVIDENCE_SEEN:
            del self._evidence_seen[next(iter(self._evidence_seen))]
        self._evidence_seen[key] = None
        out.append(EvidenceFound(ev))

    # ---- the algorithm ---------------------------------------------------------------

    def _start_round(self, now_ms: int, r: int, out: list[Effect], gate: bool = True) -> None:
        """StartRound (line 11), with round 0 waiting for transactions or the interval."""
        self.round = r
        self.step = Step.PROPOSE
        self._pending_request = None
        self._waiting = False
        if r == 0 and gate and not self._txs_available:
            wait = self.prev_time_ms + self.config.empty_block_interval_ms - now_ms
            if wait > 0:
                self._waiting = True
                out.append(ScheduleTimeout(Timeout(self.height, 0, TimeoutKind.WAIT), wait))
                return
        self._enter_propose(now_ms, out)

    def _open_gate(self, now_ms: int, out: list[Effect]) -> None:
        self._waiting = False
        if self.step is Step.PROPOSE and self.round == 0:
            self._enter_propose(now_ms, out)

    def _enter_propose(self, now_ms: int, out: list[Effect]) -> None:
        h, r = self.height, self.round
        if self.is_validator and self.validators.proposer(h, r) == self._me():
            rec = self._records.get((h, r, Step.PROPOSE))
            if rec is not None:
                self._resend(rec, out)
                prop = rec.decoded()
                assert isinstance(prop, Proposal)
                self._relay_proof_of_lock(prop, out)
                rv = self._round(r)
                if rv.proposal is None:
                    self._accept_proposal(now_ms, prop, rv)
                self._verdicts.setdefault(prop.block_hash, True)
            elif self.valid_value is not None and self.valid_value in self._blocks:  # line 15
                self._propose(now_ms, self._blocks[self.valid_value], self.valid_round, out)
            else:
                self._pending_request = (h, r)
                out.append(RequestProposal(h, r, max(now_ms, self.prev_time_ms + 1)))
        out.append(ScheduleTimeout(Timeout(h, r, TimeoutKind.PROPOSE),
                                   self.config.timeout_ms(TimeoutKind.PROPOSE, r)))

    def _propose(self, now_ms: int, block: Block, pol_round: int, out: list[Effect]) -> None:
        assert self.key is not None
        key = (self.height, self.round, Step.PROPOSE)
        rec = self._records.get(key)
        if rec is None:
            prop = Proposal.create(self.key, self.chain_id, self.height, self.round,
                                   pol_round, block)
            rec = SignedRecord.of(prop)
            self._records[key] = rec
            out.append(PersistSigned(rec))
            out.append(Broadcast(prop, rec.message))
        else:
            self._resend(rec, out)
            decoded = rec.decoded()
            assert isinstance(decoded, Proposal)
            prop = decoded
        self._relay_proof_of_lock(prop, out)
        rv = self._round(self.round)
        if rv.proposal is None:
            self._accept_proposal(now_ms, prop, rv)
            self._verdicts.setdefault(prop.block_hash, True)

    def _relay_proof_of_lock(self, prop: Proposal, out: list[Effect]) -> None:
        """A re-proposal is only acceptable to those who hold its +2/3 prevotes of
        `pol_round` (line 28); gossip may have lost them, so the proposer sends them along
        (as Tendermint's gossip layer does)."""
        if prop.pol_round < 0:
            return
        pol = self._rounds.get(prop.pol_round)
        if pol is None:
            return
        for vote in pol.votes_for(PREVOTE, prop.block_hash):
            out.append(Broadcast.of(vote))

    def _vote(self, vote_type: str, block_hash: bytes, out: list[Effect],
              proof: LockProof | None = None) -> bytes:
        """Cast our vote of this round (or resend the one we recorded) and move to the
        step. Returns the value actually voted."""
        step = Step(vote_type)
        self.step = step
        if not self.is_validator:
            return block_hash
        assert self.key is not None
        key = (self.height, self.round, step)
        rec = self._records.get(key)
        if rec is None:
            vote = Vote.create(self.key, self.chain_id, vote_type, self.height, self.round,
                               block_hash)
            rec = SignedRecord.of(vote, proof)
            self._records[key] = rec
            out.append(PersistSigned(rec))
            out.append(Broadcast(vote, rec.message))
        else:
            self._resend(rec, out)
            decoded = rec.decoded()
            assert isinstance(decoded, Vote)
            vote = decoded
        rv = self._round(self.round)
        mine = rv.votes_of(vote_type, self._me())
        if mine is None or vote.block_hash not in mine:
            rv.add(vote)
        return vote.block_hash

    def _process(self, now_ms: int, out: list[Effect]) -> None:
        """Apply the upon-rules until none fires, then ask for the verdicts they need."""
        if self.height == 0:
            return
        for _ in range(10_000):
            if self.decided is not None or not self._step_once(now_ms, out):
                break
        else:
            raise AssertionError("consensus rules did not settle")
        if self.decided is None:
            for h in self._to_validate:
                out.append(ValidateBlock(self._blocks[h]))
        self._to_validate.clear()

    def _step_once(self, now_ms: int, out: list[Effect]) -> bool:
        if self._try_decide(out):
            return True
        if self._try_skip(now_ms, out):
            return True
        q = self.validators.quorum()
        r = self.round
        rv = self._round(r)
        p = rv.proposal
        if self.step is Step.PROPOSE and p is not None:
            v = p.block_hash
            if p.pol_round == -1:  # line 22
                ok = self._verdict(v)
                if ok is not None:
                    good = (ok and rv.timely
                            and (self.locked_round == -1 or self.locked_value == v))
                    self._vote(PREVOTE, v if good else NIL, out)
                    return True
            else:  # line 28
                pol = self._rounds.get(p.pol_round)
                if pol is not None and pol.prevote_tally.get(v, 0) >= q:
                    ok = self._verdict(v)
                    if ok is not None:
                        good = ok and (self.locked_round <= p.pol_round
                                       or self.locked_value == v)
                        self._vote(PREVOTE, v if good else NIL, out)
                        return True
        if (self.step is Step.PREVOTE and not rv.prevote_timeout_set
                and rv.voters(PREVOTE) >= q):  # line 34
            rv.prevote_timeout_set = True
            out.append(ScheduleTimeout(Timeout(self.height, r, TimeoutKind.PREVOTE),
                                       self.config.timeout_ms(TimeoutKind.PREVOTE, r)))
            return True
        if not rv.polka_seen and _STEP_ORDER[self.step] >= 1:  # line 36
            for v, n in rv.prevote_tally.items():
                if v != NIL and n >= q and v in self._blocks:
                    ok = self._verdict(v)
                    if ok:
                        rv.polka_seen = True
                        if self.step is Step.PREVOTE:
                            proof = LockProof(self._blocks[v],
                                              tuple(rv.votes_for(PREVOTE, v)))
                            voted = self._vote(PRECOMMIT, v, out, proof)
                            if voted == v:
                                self.locked_value, self.locked_round = v, r
                        self.valid_value, self.valid_round = v, r
                        return True
        if self.step is Step.PREVOTE and rv.prevote_tally.get(NIL, 0) >= q:  # line 44
            self._vote(PRECOMMIT, NIL, out)
            return True
        if not rv.precommit_timeout_set and rv.voters(PRECOMMIT) >= q:  # line 47
            rv.precommit_timeout_set = True
            out.append(ScheduleTimeout(Timeout(self.height, r, TimeoutKind.PRECOMMIT),
                                       self.config.timeout_ms(TimeoutKind.PRECOMMIT, r)))
            return True
        return False

    def _try_decide(self, out: list[Effect]) -> bool:  # line 49
        q = self.validators.quorum()
        for r in sorted(self._rounds):
            rv = self._rounds[r]
            if rv.voters(PRECOMMIT) < q:
                continue
            for v, n in rv.precommit_tally.items():
                if v == NIL or n < q:
                    continue
                if v not in self._blocks:
                    if not self._missing_block_hinted:
                        # Decided by a quorum, but we never saw the block: sync fetches it.
                        self._missing_block_hinted = True
                        out.append(Behind(self.height + 1))
                    continue
                if self._verdict(v):
                    cert = Certificate.from_votes(rv.votes_for(PRECOMMIT, v))
                    self.decided = Commit(self._blocks[v], cert, r)
                    out.append(self.decided)
                    return True
        return False

    def _try_skip(self, now_ms: int, out: list[Effect]) -> bool:  # line 55
        need = self._f() + 1
        best = -1
        for r, rv in self._rounds.items():
            if r > self.round and r > best and len(rv.senders) >= need:
                best = r
        if best > self.round:
            self._start_round(now_ms, best, out)
            return True
        return False

    def _verdict(self, block_hash: bytes) -> bool | None:
        """The ledger's verdict on a block we hold; asks for it the first time."""
        ok = self._verdicts.get(block_hash)
        if ok is None and block_hash not in self._validating:
            self._validating.add(block_hash)
            self._to_validate.append(block_hash)
        return ok

    # ---- restart, resend ---------------------------------------------------------------

    def _restore_from_records(self, out: list[Effect]) -> bool:
        """Re-enter the height as we left it: our recorded votes count again, our lock is
        the value of our latest non-nil precommit (line 36 locks exactly when it
        precommits), and its proof gives back the locked block and the prevotes that
        justify re-proposing it (our valid value)."""
        mine = sorted((rec for k, rec in self._records.items() if k[0] == self.height),
                      key=lambda rec: (rec.round, _STEP_ORDER[rec.step]))
        if not mine:
            return False
        for rec in mine:
            msg = rec.decoded()
            if isinstance(msg, Vote):
                rv = self._round(rec.round)
                if rv.votes_of(msg.type, msg.validator) is None \
                        and msg.validator in self.validators:
                    rv.add(msg)
                if msg.type == PRECOMMIT and msg.block_hash != NIL:
                    self.locked_value, self.locked_round = msg.block_hash, msg.round
                    if rec.proof is not None:
                        self._restore_proof(rec.proof, msg.round)
        return True

    def _restore_proof(self, proof: LockProof, r: int) -> None:
        if self._precheck(proof.block) is not None:
            return
        h = proof.block.hash()
        self._blocks[h] = proof.block
        self._verdicts[h] = True  # we validated it before locking on it, at this height
        self.valid_value, self.valid_round = h, r
        rv = self._round(r)
        for v in proof.prevotes:
            if v.validator in self.validators and rv.votes_of(PREVOTE, v.validator) is None \
                    and v.verify(self.chain_id):
                rv.add(v)

    def _resend(self, rec: SignedRecord, out: list[Effect]) -> None:
        out.append(Broadcast(rec.decoded(), rec.message))

    def _rebroadcast(self, out: list[Effect]) -> None:
        """Resend our messages of the last two rounds, our votes of the rounds we locked
        or saw a valid value in (others may need them as a proof of lock), and the proof
        of lock of our current proposal."""
        keep = {self.round, self.round - 1, self.locked_round, self.valid_round}
        for k in sorted(self._records, key=lambda k: (k[1], _STEP_ORDER[k[2]])):
            if k[0] == self.height and k[1] in keep:
                self._resend(self._records[k], out)
        rv = self._rounds.get(self.round)
        if rv is not None and rv.proposal is not None and rv.proposal.proposer == (
                self.key.public if self.key else None):
            self._relay_proof_of_lock(rv.proposal, out)

    def _me(self) -> bytes:
        assert self.key is not None
        return self.key.public


def _msg_height(msg: ConsensusMessage) -> int:
    return -1 if isinstance(msg, Evidence) else msg.height
