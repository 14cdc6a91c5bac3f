"""The shell around the consensus engine: real timers, gossip in, effects out.

The engine (`protocol/consensus.py`) and the block-sync machine (`protocol/sync.py`)
decide everything; this module only carries out what they ask, with real I/O:

- every engine input goes through one queue consumed by one task (`_consensus_loop`),
  so the engine sees one call at a time and its effects run in the order returned;
- `PersistSigned` records go to the signing log (one fsync per batch, on a worker
  thread that the consensus task waits for) *before* any later effect of the same
  batch runs -- in particular before the signed message is broadcast (DESIGN 5: no
  double signing across crashes);
- timers are trio tasks that feed `Timeout`s back into the queue;
- `RequestProposal` builds a block from the mempool through the ledger,
  `ValidateBlock` asks the ledger (transactions the mempool already decoded and
  verified are taken from it, not decoded again), `Commit` commits through the
  ledger (durably, in one SQLite transaction written on a worker thread, so the
  event loop keeps serving gossip and the API during the fsync; see
  `_commit_durably`) and starts the next height;
- block sync runs beside consensus: peers' heights come from a status exchange on the
  sync request/response protocol (every few seconds, and at once when the engine says
  we are `Behind`), blocks come back with their certificates, and each is applied
  through the same commit path as a consensus decision.

Gossip (two topics per commune, `topics`): the consensus topic carries proposals,
votes and evidence one per message; its validator checks structure, signature and,
for heights whose validator set is known, that the signer votes there. The
transaction topic carries *batches* of transactions (`encode_tx_batch`), because a
pubsub message costs far more than a transaction; its validator admits each
transaction to the mempool on the spot (one signature check per transaction) and
rejects the batch -- dropping it and penalizing the forwarder -- only for bytes no
honest node forwards.

Nothing here relies on a single gossip message arriving: the engine rebroadcasts
its own messages, pending transactions are re-gossiped with backoff and within a
budget (a repair must never become the flood that starves consensus), and whatever
consensus misses, sync fetches by request.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ledger.ledger import PendingCommit
from node.logs import get_logger
from node.mempool import AddResult, Mempool
from node.metrics import Metrics
from node.signing_log import SigningLog
from protocol.block import MAX_BLOCK_BYTES, Block
from protocol.consensus import ConsensusEngine
from protocol.consensus_types import (
    Behind,
    Broadcast,
    Commit,
    Effect,
    EngineConfig,
    EvidenceFound,
    PersistSigned,
    RequestProposal,
    ScheduleTimeout,
    SignedRecord,
    Timeout,
    ValidateBlock,
)
from protocol.crypto import SigningKey
from protocol.encoding import DecodeError, decode, encode
from protocol.proposal import MessageError, Proposal, decode_message, encode_message
from protocol.sync import (
    ApplyBlock,
    BlockSync,
    DropPeer,
    SendSyncRequest,
    SyncConfig,
    SyncEffect,
    SyncError,
    SyncRequest,
    SyncResponse,
    SyncStatus,
    decode_sync_message,
    encode_sync_message,
    serve,
)
from protocol.transactions import MAX_TX_BYTES, Transaction
from protocol.votes import Certificate, Evidence, ValidatorSet, Vote

log = get_logger("driver")

MAX_BLOCK_TXS = 2_000
"""Transactions per proposed block: keeps building, validating and applying a block
well under a second, which is what commit latency is made of."""
MAX_PROPOSAL_TX_BYTES = MAX_BLOCK_BYTES - 256 * 1024
MAX_PENDING_EVIDENCE = 50
INPUT_QUEUE = 4096
STATUS_INTERVAL = 2.0
"""Seconds between status exchanges with each peer (block sync's view of heights)."""
SYNC_TICK = 0.5
REGOSSIP_TICK = 1.0
"""How often the mempool is asked for transactions due for another gossip round."""
GOSSIPED_FIRST_REPAIR = 12.0
"""Seconds before a node re-gossips a transaction it received by gossip (its author's
node repairs first; this is the fallback if that node went away)."""
SIGN_LOG_COMPACT_BYTES = 1 << 20
"""Size of the signing log above which it is rewritten without committed heights."""
SYNC_REQUEST_TIMEOUT = 10.0
GOSSIP_BATCH_TXS = 500
GOSSIP_BATCH_BYTES = 512 * 1024
GOSSIP_BATCH_DELAY = 0.02
"""Seconds a new transaction may wait for others to share its gossip message."""
GOSSIP_QUEUE_BYTES = 8 * 1024 * 1024
"""Bytes waiting to be gossiped above which mempool repairs are skipped."""
LAG_PROBE_INTERVAL = 0.05
"""Seconds between event-loop lag probes (a sleeping task measures its oversleep)."""
LAG_SAMPLES = 2400
"""Lag probes kept for `status` (two minutes at the probe interval)."""


def encode_tx_batch(raws: Sequence[bytes]) -> bytes:
    """The transaction topic's message: a canonical msgpack list of raw transactions."""
    assert 0 < len(raws) <= GOSSIP_BATCH_TXS
    return encode(list(raws))


def decode_tx_batch(data: bytes) -> list[bytes]:
    """ValueError unless `data` is a list of 1..GOSSIP_BATCH_TXS raw transactions."""
    if len(data) > GOSSIP_BATCH_BYTES + MAX_TX_BYTES + 64:
        raise ValueError("transaction batch too large")
    try:
        obj = decode(data, max_size=GOSSIP_BATCH_BYTES + MAX_TX_BYTES + 64)
    except DecodeError as exc:
        raise ValueError(f"undecodable transaction batch: {exc}") from None
    if type(obj) is not list or not 0 < len(obj) <= GOSSIP_BATCH_TXS:
        raise ValueError("a transaction batch is a list of 1 to "
                         f"{GOSSIP_BATCH_TXS} transactions")
    if any(type(x) is not bytes for x in obj):
        raise ValueError("a transaction batch holds raw transactions (bytes)")
    return obj


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def topics(chain_id: bytes) -> tuple[str, str]:
    """(transactions topic, consensus topic) of one commune: per chain, so communes on
    one network never see each other's traffic."""
    prefix = f"/venture-commune/{chain_id.hex()}"
    return f"{prefix}/txs/1", f"{prefix}/consensus/1"


def sync_protocol(chain_id: bytes) -> str:
    return f"/venture-commune/{chain_id.hex()[:32]}/sync/1.0.0"


class LedgerLike(Protocol):
    """What the driver needs from `ledger.ledger.Ledger` (see that module)."""

    chain_id: bytes
    height: int

    def validators_at(self, height: int) -> ValidatorSet: ...

    def build_block(self, txs: Sequence[Transaction], time_ms: int, proposer: bytes,
                    last_commit: Certificate | None, evidence: Sequence[Evidence] = (),
                    verified: Collection[bytes] = ()
                    ) -> tuple[Block, list[tuple[bytes, str]]]: ...

    def check_block(self, block: Block, verified: Collection[bytes] = (),
                    known: Mapping[bytes, Transaction] | None = None) -> None: ...

    @property
    def concurrent_commit_writes(self) -> bool: ...

    def prepare_commit(self, block: Block, certificate: Certificate) -> PendingCommit: ...

    def abort_commit(self, pending: PendingCommit) -> None: ...

    def finish_commit(self, pending: PendingCommit) -> list[Transaction]: ...

    def block(self, height: int) -> Block | None: ...

    def certificate(self, height: int) -> Certificate | None: ...


class NetLike(Protocol):
    """What the driver needs from `node.net.Network`."""

    @property
    def peer_id(self) -> str: ...

    def peers(self) -> Sequence[Any]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def request(self, peer_id: str, protocol_id: str, data: bytes,
                      timeout: float = 10.0, max_response_size: int | None = None) -> bytes: ...

    def penalize(self, peer_id: str, reason: str, weight: float = 1.0) -> None: ...


class MempoolTxs(Mapping[bytes, Transaction]):
    """The mempool's decoded transactions by id, as `Ledger.check_block(known=...)` takes
    them, so a block of transactions this node already admitted is neither decoded nor
    verified a second time.

    Safe because the mempool admits only through `decode_tx(raw, chain_id)` with this
    node's chain id, which verifies the signature under that chain id, and the ledger
    uses an entry only if its raw bytes are identical to the bytes in the block (see
    `Ledger.check_block`). A live view: nothing is copied per block.
    """

    def __init__(self, mempool: Mempool) -> None:
        self._mempool = mempool

    def __getitem__(self, txid: bytes) -> Transaction:
        tx = self._mempool.get(txid)
        if tx is None:
            raise KeyError(txid)
        return tx

    def get(self, txid: bytes, default: Any = None) -> Any:
        tx = self._mempool.get(txid)
        return default if tx is None else tx

    def __contains__(self, txid: object) -> bool:
        return txid in self._mempool

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._mempool.verified_ids()))

    def __len__(self) -> int:
        return len(self._mempool)


@dataclass
class Hooks:
    """Callbacks for the rest of the node (actions, API waiters) after each commit."""

    committed: list[Callable[[Block], None]] = field(default_factory=list)


class Driver:
    """Feeds one consensus engine from the network, timers and the mempool."""

    def __init__(self, *, key: SigningKey, ledger: LedgerLike, mempool: Mempool,
                 net: NetLike, signing_log: SigningLog, records: Sequence[SignedRecord],
                 engine_config: EngineConfig, metrics: Metrics | None = None,
                 genesis_time_ms: int, hooks: Hooks | None = None) -> None:
        self.key = key
        self.ledger = ledger
        self.mempool = mempool
        self.net = net
        self.signing_log = signing_log
        self.metrics = metrics or Metrics()
        self.hooks = hooks or Hooks()
        self.chain_id = ledger.chain_id
        self.genesis_time_ms = genesis_time_ms
        self.engine = ConsensusEngine(engine_config, key, records)
        self._records: list[SignedRecord] = list(records)
        self.tx_topic, self.consensus_topic = topics(self.chain_id)
        self.sync_protocol = sync_protocol(self.chain_id)
        h = ledger.height
        self.sync = BlockSync(self.chain_id, h, self._block_hash(h),
                              ledger.validators_at(h + 1), SyncConfig())
        # Unbounded, because timers and answers to effects must never be lost (a lost
        # timeout can stall a height); gossip, the only input others control, is
        # bounded where it enters (`_consensus_gossip`).
        self._inputs_send, self._inputs = trio.open_memory_channel[tuple[str, Any]](math.inf)
        self._txs_notice_pending = False
        self._gossip_out: deque[bytes] = deque()
        self._gossip_out_bytes = 0
        self._gossip_wakeup = trio.Event()
        self._busy = ""
        """What the consensus task is doing right now ("" when idle): for `status`."""
        self._timers = 0
        self._nursery: trio.Nursery | None = None
        self._evidence: dict[bytes, Evidence] = {}
        self._commit_event = trio.Event()
        self._status_wakeup = trio.Event()
        self._last_commit_wall: float | None = None
        self._known = MempoolTxs(mempool)
        self._checked: tuple[bytes, float] = (b"", 0.0)
        """(hash, seconds) of the last block check: for the commit log line."""
        self._commit_times = (0.0, 0.0, 0.0)
        """(total, on the event loop, store write) seconds of the last commit."""
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.started = trio.Event()
        self.fatal: BaseException | None = None

    # ---- public ------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.ledger.height

    def status(self) -> dict[str, Any]:
        e = self.engine
        t = now_ms()
        return {"height": self.ledger.height, "consensus_height": e.height,
                "round": e.round, "step": e.step.value, "is_validator": e.is_validator,
                "validators": e.validators.size, "syncing": self.sync.is_syncing(t),
                "sync_target": self.sync.target(t), "mempool_txs": len(self.mempool),
                "mempool_bytes": self.mempool.size_bytes,
                "pending_evidence": len(self._evidence),
                "input_queue": self._queue_length(), "busy": self._busy,
                "decided": e.decided is not None, "timers": self._timers,
                "loop_lag_ms": self.loop_lag()}

    def loop_lag(self) -> dict[str, float | int]:
        """How late a task that asked to wake up was woken, over the last two minutes
        (ms; percentiles of `LAG_PROBE_INTERVAL` probes): how long the event loop is
        held by synchronous work -- block checks, builds, gossip validation, queries --
        and so how long gossip, the API and timers wait behind it."""
        lags = sorted(self._lags)
        if not lags:
            return {"samples": 0}

        def at(q: float) -> float:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 1)

        return {"samples": len(lags), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
                "max": round(lags[-1] * 1000, 1)}

    async def _lag_probe(self) -> None:
        while True:
            asked = trio.current_time() + LAG_PROBE_INTERVAL
            await trio.sleep_until(asked)
            self._lags.append(max(0.0, trio.current_time() - asked))

    async def commit_happened(self) -> None:
        """Return at the next commit (of any height)."""
        await self._commit_event.wait()

    def submit(self, raw: bytes, source: str = "api") -> AddResult:
        """Admit a transaction (API or gossip); wakes the engine when blocks can be made."""
        result = self.mempool.add(raw, time.monotonic(), source)
        m = self.metrics
        if result.status == "added":
            m.mempool_admitted.labels(source).inc()
            self._notify_txs()
        elif result.status == "rejected":
            m.mempool_rejected.labels(_reason_label(result.reason or "")).inc()
        m.mempool_txs.set(len(self.mempool))
        m.mempool_bytes.set(self.mempool.size_bytes)
        return result

    async def submit_and_gossip(self, raw: bytes) -> AddResult:
        result = self.submit(raw, "api")
        if result.status == "added":
            self.mempool.mark_gossiped(result.txid, time.monotonic())
            self._queue_gossip(raw)
        return result

    # ---- gossip validators (synchronous: run inside the pubsub task) --------------------

    def validate_tx_gossip(self, origin: str, data: bytes) -> bool:
        """Admit a gossiped batch of transactions on the spot (one signature check each).

        Returns False -- drop and penalize the forwarder -- only for what no honest node
        forwards: a malformed batch, or an undecodable or wrongly signed transaction in
        it. A transaction the ledger refuses for now (a nonce race, a balance) is not the
        forwarder's fault.
        """
        try:
            raws = decode_tx_batch(data)
        except ValueError:
            self.metrics.gossip_in.labels("txs", "invalid").inc()
            return False
        now = time.monotonic()
        for raw in raws:
            result = self.submit(raw, "gossip")
            if result.status == "added":
                self.mempool.mark_gossiped(result.txid, now, GOSSIPED_FIRST_REPAIR)
            if result.ok:
                continue
            reason = result.reason or ""
            if reason.startswith("bad signature") or _is_malformed(reason):
                self.metrics.gossip_in.labels("txs", "invalid").inc()
                return False
            self.metrics.gossip_in.labels("txs", "refused").inc()
        return True

    def validate_consensus_gossip(self, origin: str, data: bytes) -> bool:
        """Structure and signature, and for heights whose validator set this node knows,
        that the signer votes there: a key outside the set never has an honest reason to
        sign consensus messages, so its messages stop at the first hop."""
        try:
            msg = decode_message(data)
        except MessageError:
            self.metrics.gossip_in.labels("consensus", "invalid").inc()
            return False
        if isinstance(msg, Evidence):
            try:
                msg.check(self.chain_id)
            except ValueError:
                ok = False
            else:
                ok = True
        else:
            signer = msg.proposer if isinstance(msg, Proposal) else msg.validator
            ok = self._may_sign(signer, msg.height) and msg.verify(self.chain_id)
        if not ok:
            self.metrics.gossip_in.labels("consensus", "invalid").inc()
        return ok

    def _may_sign(self, signer: bytes, height: int) -> bool:
        known = self.ledger.height + 2
        if not 1 <= height <= known:
            return True  # a set not known yet (the engine buffers at most one height)
        try:
            return signer in self.ledger.validators_at(height)
        except Exception:  # the ledger's window moved meanwhile: let the engine judge
            return True

    # ---- running -----------------------------------------------------------------------

    async def run(self, tx_channel: trio.MemoryReceiveChannel[tuple[str, bytes]],
                  consensus_channel: trio.MemoryReceiveChannel[tuple[str, bytes]],
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._consensus_loop)
            nursery.start_soon(self._drain_txs, tx_channel)
            nursery.start_soon(self._consensus_gossip, consensus_channel)
            nursery.start_soon(self._status_loop)
            nursery.start_soon(self._sync_ticker)
            nursery.start_soon(self._regossip_loop)
            nursery.start_soon(self._gossip_flusher)
            nursery.start_soon(self._lag_probe)
            self._put("start", None)
            await self.started.wait()
            task_status.started()

    def _put(self, kind: str, payload: Any) -> None:
        self._inputs_send.send_nowait((kind, payload))

    def _queue_length(self) -> int:
        return int(self._inputs_send.statistics().current_buffer_used)

    def _notify_txs(self) -> None:
        if not self._txs_notice_pending:  # one notice covers any number of new txs
            self._txs_notice_pending = True
            self._put("txs", None)

    # ---- the consensus task -------------------------------------------------------------

    async def _consensus_loop(self) -> None:
        async for kind, payload in self._inputs:
            t = now_ms()
            e = self.engine
            effects: list[Effect]
            if kind == "start":
                effects = self._start_height(t)
                self.started.set()
            elif kind == "msg":
                effects = e.on_message(t, payload)
            elif kind == "timeout":
                effects = e.on_timeout(t, payload)
            elif kind == "txs":
                self._txs_notice_pending = False
                effects = e.on_txs_available(t, self.mempool_has_ready())
            elif kind == "sync":
                await self._run_sync_effects(payload)
                effects = []
            elif kind == "sync_response":
                peer, resp = payload
                await self._run_sync_effects(self.sync.on_response(t, peer, resp))
                effects = []
            else:  # pragma: no cover
                raise AssertionError(kind)
            self._busy = f"{kind}"
            await self._execute(effects)
            self._busy = ""
            self.metrics.round.set(e.round)

    def mempool_has_ready(self) -> bool:
        return bool(self.mempool.reap(1, MAX_PROPOSAL_TX_BYTES))

    def _start_height(self, t: int) -> list[Effect]:
        h = self.ledger.height
        vs = self.ledger.validators_at(h + 1)
        prev_hash, prev_time = self._prev(h)
        self.metrics.validators.set(vs.size)
        self.metrics.is_validator.set(1 if self.key.public in vs else 0)
        self.metrics.height.set(h)
        return self.engine.start_height(t, h + 1, vs, prev_hash, prev_time,
                                        txs_available=self.mempool_has_ready())

    def _prev(self, h: int) -> tuple[bytes, int]:
        if h == 0:
            return self.chain_id, self.genesis_time_ms
        block = self.ledger.block(h)
        assert block is not None, f"ledger lacks its own block {h}"
        return block.hash(), block.header.time_ms

    def _block_hash(self, h: int) -> bytes:
        return self._prev(h)[0]

    async def _execute(self, effects: list[Effect]) -> None:
        queue: deque[Effect] = deque(effects)
        records: list[SignedRecord] = []
        while queue:
            eff = queue.popleft()
            if isinstance(eff, PersistSigned):
                records.append(eff.record)
                continue
            if records:
                await self._persist(records)
                records = []
            if isinstance(eff, Broadcast):
                self._busy = "broadcast"
                await self._publish(self.consensus_topic, eff.raw)
            elif isinstance(eff, ScheduleTimeout):
                assert self._nursery is not None
                self._nursery.start_soon(self._timer, eff.timeout, eff.delay_ms)
            elif isinstance(eff, RequestProposal):
                queue.extend(self._build_proposal(eff))
            elif isinstance(eff, ValidateBlock):
                queue.extend(self._validate(eff.block))
            elif isinstance(eff, Commit):
                queue.extend(await self._commit(eff.block, eff.certificate, "consensus"))
            elif isinstance(eff, EvidenceFound):
                self._add_evidence(eff.evidence)
                await self._publish(self.consensus_topic, encode_message(eff.evidence))
            elif isinstance(eff, Behind):
                self._status_wakeup.set()
            else:  # pragma: no cover
                raise AssertionError(f"unknown effect {eff!r}")
        if records:
            await self._persist(records)

    async def _persist(self, records: list[SignedRecord]) -> None:
        """Durable before anything that follows: a failure here stops the node.

        The append and its fsync run on a worker thread while the consensus task waits
        for them, so nothing that follows (the broadcast of what was signed) runs before
        the records are durable, and the event loop serves gossip and the API meanwhile.
        Only this task touches the signing log, one call at a time. Shielded: a stopping
        daemon finishes the append it started (one fsync) rather than abandon it.
        """
        raws = [r.encode() for r in records]
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.signing_log.append_many, raws)
        self._records.extend(records)
        for r in records:
            self.metrics.signed.labels(r.step.value).inc()
        self.metrics.sign_log_bytes.set(self.signing_log.size)

    async def _timer(self, timeout: Timeout, delay_ms: int) -> None:
        self._timers += 1
        try:
            await trio.sleep(delay_ms / 1000)
        finally:
            self._timers -= 1
        self._put("timeout", timeout)

    def _build_proposal(self, req: RequestProposal) -> list[Effect]:
        h = req.height
        if h != self.ledger.height + 1:
            return []
        txs = self.mempool.reap(MAX_BLOCK_TXS, MAX_PROPOSAL_TX_BYTES)
        evidence = sorted(self._evidence.values(), key=lambda ev: ev.hash())
        evidence = evidence[:MAX_PENDING_EVIDENCE]
        last_commit = self.ledger.certificate(h - 1) if h > 1 else None
        started = time.perf_counter()
        try:
            block, skipped = self.ledger.build_block(
                txs, req.time_ms, self.key.public, last_commit, evidence,
                verified={tx.id for tx in txs})
        except Exception as exc:  # e.g. our clock is behind the last block: skip the round
            log.warning("proposal_not_built", height=h, round=req.round, error=exc)
            return []
        for txid, reason in skipped:
            self.mempool.drop([txid], reason)
        log.info("proposal_built", height=h, round=req.round, txs=len(block.txs),
                 skipped=len(skipped), ms=round((time.perf_counter() - started) * 1000, 1))
        return self.engine.on_proposal_ready(now_ms(), h, req.round, block)

    def _check_block(self, block: Block) -> str | None:
        """The ledger's verdict; transactions our mempool holds are neither decoded nor
        verified again (`MempoolTxs` says why that is safe)."""
        started = time.perf_counter()
        try:
            self.ledger.check_block(block, verified=self.mempool.verified_ids(),
                                    known=self._known)
        except Exception as exc:  # BlockRejected, or anything else: not a block we accept
            return getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        finally:
            self._checked = (block.hash(), time.perf_counter() - started)
        return None

    def _validate(self, block: Block) -> list[Effect]:
        reason = self._check_block(block)
        log.debug("block_checked", height=block.height, txs=len(block.txs), ok=reason is None,
                  ms=round(self._checked[1] * 1000, 1))
        if reason is not None:
            log.warning("block_refused", height=block.height, reason=reason,
                        proposer=block.header.proposer)
        return self.engine.on_block_verdict(now_ms(), block.hash(), reason is None,
                                            reason or "")

    async def _commit(self, block: Block, cert: Certificate, source: str) -> list[Effect]:
        h = block.height
        if h != self.ledger.height + 1:
            return []  # sync got there first
        txs = await self._commit_durably(block, cert)
        self._after_commit(block, cert, source, txs)
        effects = self._start_height(now_ms())
        # Sync learns every commit, whichever path produced it.
        sync_effects = self.sync.on_applied(now_ms(), h, block.hash(),
                                            self.ledger.validators_at(h + 1))
        await self._run_sync_effects(sync_effects)
        return effects

    async def _commit_durably(self, block: Block, cert: Certificate) -> list[Transaction]:
        """Commit through the ledger; returns the block's transactions as executed.

        The store write (one SQLite transaction and its fsync, most of a commit's wall
        time) runs on a worker thread when the store allows it, so gossip admission,
        the API and sync serving go on meanwhile. What keeps that safe:

        - the consensus task awaits the write: the engine hears of the commit, and the
          next height starts, only after the block is durable (kill -9 at any instant
          loses nothing that was announced);
        - until `finish_commit` the ledger's height, state and queries stay at the last
          committed block; the write touches only the store's writer connection, and
          readers on the loop thread use the other one, which sees committed data only;
        - the whole sequence is shielded from cancellation: a stopping daemon finishes
          the commit (bounded by one fsync) rather than leave the in-memory ledger
          behind its store.
        """
        ledger = self.ledger
        t0 = time.perf_counter()
        with trio.CancelScope(shield=True):
            pending = ledger.prepare_commit(block, cert)
            t1 = time.perf_counter()
            try:
                if ledger.concurrent_commit_writes:
                    self._busy = "commit_write"
                    await trio.to_thread.run_sync(pending.write)
                else:
                    pending.write()
            finally:
                # Whatever happened, the in-memory ledger follows the store: a durable
                # block is finished, one that is not is forgotten.
                t2 = time.perf_counter()
                if pending.written:
                    txs = ledger.finish_commit(pending)
                else:
                    ledger.abort_commit(pending)
        t3 = time.perf_counter()
        self._commit_times = (t3 - t0, (t1 - t0) + (t3 - t2), t2 - t1)
        return txs

    def _after_commit(self, block: Block, cert: Certificate, source: str,
                      txs: Sequence[Transaction]) -> None:
        h = block.height
        total, on_loop, write = self._commit_times
        checked_hash, check_s = self._checked
        now = time.monotonic()
        for tx in txs:
            added = self.mempool.added_at(tx.id)
            if added is not None:
                self.metrics.commit_latency.observe(max(0.0, now - added))
        period_closed = False  # the ledger may say so; a full recheck is cheap enough
        dropped = self.mempool.block_committed(txs, recheck_all=period_closed or not txs)
        for ev in block.evidence:
            self._evidence.pop(ev.hash(), None)
        m = self.metrics
        m.blocks.inc()
        m.block_txs.inc(len(txs))
        m.height.set(h)
        m.mempool_txs.set(len(self.mempool))
        m.mempool_bytes.set(self.mempool.size_bytes)
        if self._last_commit_wall is not None:
            m.block_interval.observe(now - self._last_commit_wall)
        self._last_commit_wall = now
        log.info("commit", height=h, hash=block.hash(), txs=len(txs), round=cert.round,
                 source=source, dropped=len(dropped), ms=round(total * 1000, 1),
                 loop_ms=round(on_loop * 1000, 1), write_ms=round(write * 1000, 1),
                 check_ms=round(check_s * 1000, 1) if checked_hash == block.hash() else None)
        self._follow_params()
        self._compact_signing_log(h)
        for hook in self.hooks.committed:
            try:
                hook(block)
            except Exception:
                log.exception("commit_hook_failed", height=h)
        event, self._commit_event = self._commit_event, trio.Event()
        event.set()

    def _follow_params(self) -> None:
        """Governance may change `empty_block_interval` and `max_clock_drift` (DESIGN
        6.10): the engine follows the committed values from the next height on."""
        state = getattr(self.ledger, "state", None)
        if state is None:
            return
        params = state.params()
        cfg = self.engine.config
        wanted = dataclasses.replace(
            cfg,
            empty_block_interval_ms=int(params.get("empty_block_interval",
                                                   cfg.empty_block_interval_ms // 1000)) * 1000,
            max_clock_drift_ms=int(params.get("max_clock_drift",
                                              cfg.max_clock_drift_ms // 1000)) * 1000)
        if wanted != cfg:
            log.info("consensus_params", empty_block_interval_ms=wanted.empty_block_interval_ms,
                     max_clock_drift_ms=wanted.max_clock_drift_ms)
            self.engine.config = wanted

    def _compact_signing_log(self, committed: int) -> None:
        """Records of committed heights are never needed again (the engine starts above)."""
        self._records = [r for r in self._records if r.height > committed]
        if self.signing_log.size > SIGN_LOG_COMPACT_BYTES:
            self.signing_log.compact([r.encode() for r in self._records])
            self.metrics.sign_log_bytes.set(self.signing_log.size)

    def _add_evidence(self, ev: Evidence) -> None:
        if len(self._evidence) < 10 * MAX_PENDING_EVIDENCE:
            self._evidence.setdefault(ev.hash(), ev)
        log.warning("equivocation", validator=ev.a.validator, height=ev.a.height,
                    round=ev.a.round)

    # ---- gossip --------------------------------------------------------------------------

    async def _publish(self, topic: str, data: bytes) -> None:
        try:
            await self.net.publish(topic, data)
            self.metrics.gossip_out.labels("txs" if topic == self.tx_topic else "consensus").inc()
        except Exception as exc:  # the network may be down or closing: resends cover it
            log.warning("publish_failed", topic=topic, error=exc)

    async def _drain_txs(self, channel: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        """Gossiped transactions were admitted by the validator; count what arrives."""
        async for _origin, _data in channel:
            self.metrics.gossip_in.labels("txs", "delivered").inc()

    def _queue_gossip(self, raw: bytes) -> None:
        self._gossip_out.append(raw)
        self._gossip_out_bytes += len(raw)
        self._gossip_wakeup.set()

    async def _gossip_flusher(self) -> None:
        """Publish queued transactions in batches: one gossip message per batch.

        A pubsub message costs far more than a transaction (a libp2p signature,
        framing, a seen-cache entry, validation at every hop), so a node under load
        gossips its new transactions every `GOSSIP_BATCH_DELAY` seconds in messages of
        up to `GOSSIP_BATCH_TXS` transactions instead of one by one.
        """
        while True:
            await self._gossip_wakeup.wait()
            self._gossip_wakeup = trio.Event()
            if len(self._gossip_out) < GOSSIP_BATCH_TXS:
                await trio.sleep(GOSSIP_BATCH_DELAY)  # let a batch gather
            while self._gossip_out:
                batch: list[bytes] = []
                size = 0
                while self._gossip_out and len(batch) < GOSSIP_BATCH_TXS:
                    nxt = self._gossip_out[0]
                    if batch and size + len(nxt) > GOSSIP_BATCH_BYTES:
                        break
                    batch.append(self._gossip_out.popleft())
                    size += len(nxt)
                self._gossip_out_bytes -= size
                await self._publish(self.tx_topic, encode_tx_batch(batch))

    async def _consensus_gossip(self,
                                channel: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async for _origin, data in channel:
            try:
                msg = decode_message(data)
            except MessageError:
                continue  # the validator let it through, so this cannot happen
            if self._queue_length() >= INPUT_QUEUE:
                # The engine is behind: drop gossip (peers rebroadcast, sync catches up)
                # rather than let a flood grow the queue without bound.
                self.metrics.gossip_in.labels("consensus", "dropped_busy").inc()
                continue
            self.metrics.gossip_in.labels("consensus", "delivered").inc()
            if isinstance(msg, Proposal | Vote | Evidence):
                self._put("msg", msg)

    async def _regossip_loop(self) -> None:
        while True:
            await trio.sleep(REGOSSIP_TICK)
            now = time.monotonic()
            self.mempool.expire(now)
            if self._gossip_out_bytes > GOSSIP_QUEUE_BYTES:
                continue  # new transactions first; repairs wait for a quieter moment
            for raw in self.mempool.due_for_gossip(now):
                self._queue_gossip(raw)

    # ---- block sync ------------------------------------------------------------------------

    async def serve_sync(self, peer_id: str, data: bytes) -> bytes:
        """The sync protocol's request handler: status for status, blocks for requests."""
        try:
            msg = decode_sync_message(data)
        except SyncError as exc:
            self.net.penalize(peer_id, f"malformed sync request: {exc}")
            raise
        h = self.ledger.height
        if isinstance(msg, SyncStatus):
            self._put("sync", self.sync.on_status(now_ms(), peer_id, msg))
            return encode_sync_message(SyncStatus(h, self._block_hash(h)))
        if isinstance(msg, SyncRequest):
            def block_at(x: int) -> Block:
                b = self.ledger.block(x)
                assert b is not None
                return b

            def cert_at(x: int) -> Certificate:
                c = self.ledger.certificate(x)
                assert c is not None
                return c

            if msg.start > h:
                return encode_sync_message(SyncResponse(msg.request_id, ()))
            return encode_sync_message(serve(msg, h, block_at, cert_at))
        self.net.penalize(peer_id, "unsolicited sync response")
        raise SyncError("a sync response is not a request")

    async def _status_loop(self) -> None:
        """Exchange heights with every connected peer: block sync's view of the network."""
        while True:
            with trio.move_on_after(STATUS_INTERVAL):
                await self._status_wakeup.wait()
            self._status_wakeup = trio.Event()
            h = self.ledger.height
            mine = encode_sync_message(SyncStatus(h, self._block_hash(h)))
            async with trio.open_nursery() as nursery:
                for peer in self.net.peers():
                    nursery.start_soon(self._exchange_status, peer.peer_id, mine)

    async def _exchange_status(self, peer_id: str, mine: bytes) -> None:
        try:
            reply = await self.net.request(peer_id, self.sync_protocol, mine, timeout=5.0,
                                           max_response_size=1024)
            msg = decode_sync_message(reply)
        except SyncError as exc:
            self.net.penalize(peer_id, f"malformed sync status: {exc}")
            return
        except Exception as exc:  # unreachable, timeout, reset: try again next round
            log.debug("status_exchange_failed", peer=peer_id, error=exc)
            return
        if isinstance(msg, SyncStatus):
            self._put("sync", self.sync.on_status(now_ms(), peer_id, msg))
        else:
            self.net.penalize(peer_id, "sync status answered with something else")

    async def _sync_ticker(self) -> None:
        while True:
            await trio.sleep(SYNC_TICK)
            self._put("sync", self.sync.on_tick(now_ms()))

    async def _run_sync_effects(self, effects: list[SyncEffect]) -> None:
        """Runs inside the consensus task, so applying a block and the engine never race."""
        queue: deque[SyncEffect] = deque(effects)
        while queue:
            eff = queue.popleft()
            if isinstance(eff, SendSyncRequest):
                assert self._nursery is not None
                self._nursery.start_soon(self._sync_request, eff)
            elif isinstance(eff, ApplyBlock):
                queue.extend(await self._apply_synced(eff))
            elif isinstance(eff, DropPeer):
                log.warning("sync_peer_dropped", peer=eff.peer, reason=eff.reason)
                if "timed out" not in eff.reason:
                    # A slow peer is not a lying one (the sync machine rests it for a
                    # while); a peer that sent invalid blocks loses network standing.
                    self.net.penalize(eff.peer, eff.reason, 5.0)

    async def _apply_synced(self, eff: ApplyBlock) -> list[SyncEffect]:
        block, cert = eff.block, eff.certificate
        h = block.height
        if h != self.ledger.height + 1:
            return []
        reason = self._check_block(block)
        if reason is not None:
            return self.sync.on_apply_failed(now_ms(), h, reason)
        try:
            txs = await self._commit_durably(block, cert)
        except Exception as exc:
            log.exception("synced_block_commit_failed", height=h)
            return self.sync.on_apply_failed(now_ms(), h, str(exc))
        self.metrics.synced_blocks.inc()
        self._after_commit(block, cert, f"sync:{eff.peer}", txs)
        await self._execute(self._start_height(now_ms()))
        return self.sync.on_applied(now_ms(), h, block.hash(), self.ledger.validators_at(h + 1))

    async def _sync_request(self, eff: SendSyncRequest) -> None:
        try:
            reply = await self.net.request(eff.peer, self.sync_protocol,
                                           encode_sync_message(eff.request),
                                           timeout=SYNC_REQUEST_TIMEOUT)
            msg = decode_sync_message(reply)
        except SyncError as exc:
            self.net.penalize(eff.peer, f"malformed sync response: {exc}", 5.0)
            return  # the request times out in the sync machine and is re-asked elsewhere
        except Exception as exc:
            log.debug("sync_request_failed", peer=eff.peer, error=exc)
            return
        if isinstance(msg, SyncResponse):
            self._put("sync_response", (eff.peer, msg))
        else:
            self.net.penalize(eff.peer, "sync request answered with something else")


def _is_malformed(reason: str) -> bool:
    return any(s in reason for s in ("undecodable", "envelope", "over 65536", "unknown field",
                                     "expected", "required field", "unknown transaction kind",
                                     "bytes, over"))


def _reason_label(reason: str) -> str:
    """A bounded label for the rejection metric (reasons carry numbers and ids)."""
    for key in ("bad signature", "nonce", "balance", "mempool full", "already committed",
                "too far ahead", "pending transactions"):
        if key in reason:
            return key
    return "other"

