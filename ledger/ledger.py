"""The ledger: what consensus, the node and the auditor ask, and the one place blocks commit.

Consensus sees blocks as values. It asks the ledger to build a block (as proposer), to
judge one (`check_block`: every header field, the previous commit certificate, the
evidence, every transaction's signature and execution, the state root), and to commit
one with its certificate. A block that was built or checked is executed once: the
result is cached by block hash, and `commit` only writes it (one SQLite transaction,
durable before returning) and makes it the settled state.

Everything here is synchronous and deterministic; the caller owns threads and clocks.
Not thread-safe: execution writes into the in-memory state and rolls it back, so every
call (queries through `state` included) must come from one thread at a time. The one
exception is the store write of a commit (`prepare_commit` / `PendingCommit.write` /
`finish_commit`), which touches no in-memory state and may run on a worker thread
while the owner keeps reading.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from ledger.core import unpack_ids
from ledger.execute import (
    BlockRejected,
    Executed,
    execute_block,
    genesis_changes,
    run_tx,
)
from ledger.gcpause import gc_paused
from ledger.genesis import Genesis
from ledger.modules import DEFAULT_RULES
from ledger.money import conservation
from ledger.queries import StateView
from ledger.rules import Exec, Rules, TxRejected
from ledger.state import State
from ledger.store import Store
from protocol.block import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    PROTOCOL_VERSION,
    Block,
    BlockError,
    Header,
    commit_hash,
    evidence_hash,
)
from protocol.crypto import sha256
from protocol.encoding import decode, encode
from protocol.merkle import inclusion_proof, merkle_root
from protocol.transactions import Transaction, TxError, decode_tx
from protocol.votes import Certificate, CertificateError, Evidence, ValidatorSet

CACHE_BLOCKS = 8
"""Executed candidate blocks kept per height (a few rounds' proposals)."""

RECENT_BLOCKS = 16
"""Decoded committed blocks (and certificates) kept for history reads."""

BLOCK_BYTES_MARGIN = 64 * 1024
"""Room left in a built block for its header, certificate and evidence."""


class LedgerError(RuntimeError):
    """A ledger that cannot open, or a call that breaks the API's preconditions."""


class PendingCommit:
    """A checked block on its way into the store (`Ledger.prepare_commit`)."""

    def __init__(self, block: Block, certificate: Certificate, block_hash: bytes,
                 executed: Executed, write: Callable[[], None]) -> None:
        self.block = block
        self.certificate = certificate
        self.block_hash = block_hash
        self.executed = executed
        self.height = block.height
        self._write = write
        self.written = False

    def write(self) -> None:
        """Commit the staged SQLite transaction (durable when this returns). It touches
        no in-memory ledger state, so it may run on another thread than the ledger's."""
        assert not self.written, "written twice"
        self._write()
        self.written = True


class Ledger:
    """One commune's committed chain and state, over a SQLite store."""

    def __init__(self, store: Store, genesis: Genesis, rules: Rules, state: State) -> None:
        self._store = store
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.rules = rules
        self._state = state
        self.state = StateView(state, rules, store)
        last = store.last_block()
        if last is None:
            self.height, self.last_block_hash, self.last_time_ms = 0, self.chain_id, \
                genesis.genesis_time_ms
        else:
            self.height, self.last_block_hash, self.last_time_ms, _ = last
        self._val_heights: list[int] = []
        self._val_sets: list[ValidatorSet] = []
        for h, packed in store.validator_history():
            self._add_validators(h, packed)
        self._cache: OrderedDict[bytes, Executed] = OrderedDict()
        self._pending: PendingCommit | None = None
        self._recent: OrderedDict[int, tuple[Block, Certificate]] = OrderedDict()
        """Blocks committed through this object, newest last (immutable values)."""

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | None, genesis: Genesis, rules: Rules | None = None) -> Ledger:
        """Open (or create) the store at `path`; None keeps everything in memory.

        A reopened store loads its state tables and verifies them against the stored
        state root of its last block, so a damaged store is refused, not served.
        """
        rules = rules or DEFAULT_RULES
        rules.freeze()
        store = Store(path, rules.tables)
        try:
            state = State(rules.tables)
            stored = store.meta("genesis")
            if stored is None:
                changes = genesis_changes(state, rules, genesis)
                root, h = state.root_after(changes)
                state.apply(changes, h)
                packed = b"".join(sorted(genesis.founder_ids()))
                store.init_genesis(genesis.encode(), genesis.chain_id, changes, root, packed)
            else:
                if stored != genesis.encode():
                    other = store.meta("chain_id") or b""
                    raise LedgerError(f"the store at {path} belongs to chain {other.hex()}, "
                                      f"not {genesis.chain_id.hex()}")
                with gc_paused():
                    store.load_state(state)
                    state.hash = state.recompute_hash()
                last = store.last_block()
                expected = last[3] if last else store.meta("genesis_state_root")
                if state.root() != expected:
                    raise LedgerError(f"the state tables of {path} do not match the state "
                                      "root of its last block: the store is damaged, or was "
                                      "written under other rules (another version)")
        except Exception:
            store.close()
            raise
        return cls(store, genesis, rules, state)

    def close(self) -> None:
        self._store.close()

    @property
    def concurrent_commit_writes(self) -> bool:
        """Whether `PendingCommit.write` may run on a worker thread while this object is
        read on its own (a file store: see `ledger.store`)."""
        return self._store.concurrent_writes

    # ---- chain facts ---------------------------------------------------------------------

    @property
    def state_root(self) -> bytes:
        return self._state.root()

    def _add_validators(self, from_height: int, packed: bytes) -> None:
        assert not self._val_heights or from_height > self._val_heights[-1]
        self._val_heights.append(from_height)
        self._val_sets.append(ValidatorSet(unpack_ids(packed)))

    def validators_at(self, height: int) -> ValidatorSet:
        """Who votes at `height`; known for every height up to `self.height + 2`."""
        if not 1 <= height <= self.height + 2:
            raise LedgerError(f"validator set of height {height} is not known yet "
                              f"(committed height {self.height})")
        i = bisect.bisect_right(self._val_heights, height) - 1
        assert i >= 0
        return self._val_sets[i]

    def next_nonce(self, signer: bytes) -> int:
        row = self._state.peek("accounts", signer)
        return 1 if row is None else int(row["nonce"]) + 1

    # ---- mempool -------------------------------------------------------------------------

    def check_tx(self, tx: Transaction, *, time_ms: int | None = None,
                 signature_checked: bool = False) -> str | None:
        """Would `tx` execute on top of the committed state now? None, or the reason not.

        A mempool holding transactions with future nonces can tell them apart from
        stale ones by `next_nonce`.
        """
        if not signature_checked and not tx.verify(self.chain_id):
            return "bad signature (wrong key, tampered body, or signed for another commune)"
        ex = Exec(self._state, self.rules, self.genesis, self.height + 1,
                  self.last_time_ms if time_ms is None else time_ms)
        try:
            run_tx(ex, tx, 0)
        except TxRejected as exc:
            return exc.reason
        finally:
            self._state.rollback(0)
        return None

    # ---- building and checking blocks ----------------------------------------------------

    def build_block(self, txs: Sequence[Transaction], time_ms: int, proposer: bytes,
                    last_commit: Certificate | None, evidence: Sequence[Evidence] = (),
                    verified: Collection[bytes] = ()) -> tuple[Block, list[tuple[bytes, str]]]:
        """Propose the next block: execute `txs` in order, leaving out those that fail.

        Returns the block (every header field filled, state root included) and the ids
        and reasons of the transactions left out. Signatures are checked unless their
        ids are in `verified`. Evidence that does not check out is left out silently.
        Transactions beyond the block's size limits are neither included nor rejected.
        """
        if self._pending is not None:
            raise LedgerError(f"block {self._pending.height} is being committed")
        with gc_paused():
            return self._build_block(txs, time_ms, proposer, last_commit, evidence, verified)

    def _build_block(self, txs: Sequence[Transaction], time_ms: int, proposer: bytes,
                     last_commit: Certificate | None, evidence: Sequence[Evidence],
                     verified: Collection[bytes]) -> tuple[Block, list[tuple[bytes, str]]]:
        height = self.height + 1
        try:
            self._check_time(time_ms)
        except BlockRejected as exc:
            raise LedgerError(exc.reason) from None
        if proposer not in self.validators_at(height):
            raise LedgerError("the proposer is not a validator at this height")
        if height == 1:
            if last_commit is not None:
                raise LedgerError("the first block has no previous certificate")
        else:
            if last_commit is None:
                raise LedgerError("a block after the first needs the previous certificate")
            try:
                last_commit.verify(self.chain_id, self.validators_at(height - 1),
                                   self.last_block_hash)
            except CertificateError as exc:
                raise LedgerError(f"last_commit does not commit the last block: {exc}") from None
            if last_commit.height != self.height:
                raise LedgerError("last_commit is for another height")
        rejected: list[tuple[bytes, str]] = []
        ok_txs = []
        for tx in txs:
            if tx.id in verified or tx.verify(self.chain_id):
                ok_txs.append(tx)
            else:
                rejected.append((tx.id, "bad signature"))
        good_ev = []
        seen: set[bytes] = set()
        for e in evidence:
            try:
                self._check_evidence(e, height)
            except BlockRejected:
                continue
            if e.hash() not in seen:
                seen.add(e.hash())
                good_ev.append(e)
        executed = execute_block(self._state, self.rules, self.genesis, height, time_ms,
                                 ok_txs, good_ev, skip_invalid=True, max_txs=MAX_BLOCK_TXS,
                                 max_bytes=MAX_BLOCK_BYTES - BLOCK_BYTES_MARGIN)
        rejected.extend(executed.rejected)
        raws = tuple(tx.raw for tx in executed.included)
        evidence_t = tuple(good_ev)
        header = Header(
            version=PROTOCOL_VERSION, chain_id=self.chain_id, height=height, time_ms=time_ms,
            prev_hash=self.last_block_hash, proposer=proposer, txs_root=merkle_root(raws),
            state_root=executed.state_root,
            validators_hash=self.validators_at(height).hash(),
            next_validators_hash=self.validators_at(height + 1).hash(),
            last_commit_hash=commit_hash(last_commit), evidence_hash=evidence_hash(evidence_t))
        block = Block(header, raws, last_commit, evidence_t)
        self._remember(block.hash(), executed)
        return block, rejected

    def _check_time(self, time_ms: int) -> None:
        if self.height == 0:
            if time_ms < self.genesis.genesis_time_ms:
                raise BlockRejected(f"block time {time_ms} is before the genesis time "
                                    f"{self.genesis.genesis_time_ms}")
        elif time_ms <= self.last_time_ms:
            raise BlockRejected(f"block time {time_ms} is not after the previous block's "
                                f"{self.last_time_ms}")

    def _check_evidence(self, e: Evidence, height: int) -> None:
        vh = e.a.height
        if not 1 <= vh <= height:
            raise BlockRejected(f"evidence for height {vh} outside 1..{height}")
        try:
            e.check(self.chain_id)
        except ValueError as exc:
            raise BlockRejected(f"invalid evidence: {exc}") from None
        if e.a.validator not in self.validators_at(vh):
            raise BlockRejected(f"evidence against {e.a.validator.hex()[:16]}, who is not a "
                                f"validator at height {vh}")
        if self._state.has("evidence", e.hash()):
            raise BlockRejected(f"evidence {e.hash().hex()} is already recorded")

    def check_block(self, block: Block, verified: Collection[bytes] = (),
                    known: Mapping[bytes, Transaction] | None = None) -> None:
        """Raise `BlockRejected` unless `block` is a valid next block; cache its execution.

        `verified`: ids of transactions whose signatures the caller already checked.
        `known`: transactions the caller already decoded (and verified), by id, such as
        a mempool's; they are used instead of decoding the block's bytes again.

        What makes skipping work safe: a transaction object from `known` is used only
        if its `raw` bytes are identical to the bytes the block carries (its id alone
        is not trusted), so it decodes to exactly what decoding the block would give;
        and the caller promises that every object in `known`, and every id in
        `verified`, had its signature verified under *this* ledger's chain id (a
        signature for another commune verifies nothing here). A mempool of this chain
        that admits only through `decode_tx(raw, chain_id)` keeps that promise.
        """
        if self._pending is not None:
            raise LedgerError(f"block {self._pending.height} is being committed")
        bh = block.hash()
        if bh in self._cache:
            return
        with gc_paused():
            self._check_block(block, bh, verified, known or {})

    def _check_block(self, block: Block, bh: bytes, verified: Collection[bytes],
                     known: Mapping[bytes, Transaction]) -> None:
        h = block.header
        height = self.height + 1
        if h.version != PROTOCOL_VERSION:
            raise BlockRejected(f"protocol version {h.version}, this node runs "
                                f"{PROTOCOL_VERSION}")
        if h.chain_id != self.chain_id:
            raise BlockRejected("block of another chain")
        if h.height != height:
            raise BlockRejected(f"block height {h.height}, expected {height}")
        if h.prev_hash != self.last_block_hash:
            raise BlockRejected("block does not follow the last committed block (prev_hash)")
        self._check_time(h.time_ms)
        try:
            block.check_body()
        except BlockError as exc:
            raise BlockRejected(str(exc)) from None
        validators = self.validators_at(height)
        if h.proposer not in validators:
            raise BlockRejected("the proposer is not a validator at this height")
        if h.validators_hash != validators.hash():
            raise BlockRejected("validators_hash is not this height's validator set")
        if h.next_validators_hash != self.validators_at(height + 1).hash():
            raise BlockRejected("next_validators_hash is not the next height's validator set")
        if block.last_commit is not None:
            try:
                block.last_commit.verify(self.chain_id, self.validators_at(height - 1),
                                         self.last_block_hash)
            except CertificateError as exc:
                raise BlockRejected(f"last_commit: {exc}") from None
        if len(block.txs) > MAX_BLOCK_TXS:
            raise BlockRejected(f"{len(block.txs)} transactions, over {MAX_BLOCK_TXS}")
        seen: set[bytes] = set()
        for e in block.evidence:
            self._check_evidence(e, height)
            if e.hash() in seen:
                raise BlockRejected("the same evidence twice")
            seen.add(e.hash())
        txs = []
        for i, raw in enumerate(block.txs):
            mine = known.get(sha256(raw)) if known else None
            if mine is not None and mine.raw == raw:
                txs.append(mine)
                continue
            try:
                tx = decode_tx(raw)
            except TxError as exc:
                raise BlockRejected(f"transaction {i} is malformed: {exc}") from None
            if tx.id not in verified and not tx.verify(self.chain_id):
                raise BlockRejected(f"transaction {i} ({tx.id.hex()}) has a bad signature")
            txs.append(tx)
        executed = execute_block(self._state, self.rules, self.genesis, height, h.time_ms,
                                 txs, block.evidence)
        if executed.state_root != h.state_root:
            raise BlockRejected(f"state root {h.state_root.hex()} does not match the "
                                f"executed state {executed.state_root.hex()}")
        self._remember(bh, executed)

    def _remember(self, block_hash: bytes, executed: Executed) -> None:
        self._cache[block_hash] = executed
        self._cache.move_to_end(block_hash)
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)

    def commit(self, block: Block, certificate: Certificate) -> list[Transaction]:
        """Make `block` the next committed block; durable before returning.

        Returns the block's transactions as executed (decoded, in block order), so the
        caller need not decode the block's bytes again.
        """
        pending = self.prepare_commit(block, certificate)
        try:
            pending.write()
        except BaseException:
            self.abort_commit(pending)
            raise
        return self.finish_commit(pending)

    def prepare_commit(self, block: Block, certificate: Certificate) -> PendingCommit:
        """The first of commit's three steps: check everything, stage the store write.

        `commit` = `prepare_commit` (checks, and every insert of the block's SQLite
        transaction, not yet committed), then `PendingCommit.write` (its COMMIT: the
        fsync), then `finish_commit` (the in-memory state and the chain facts). The
        split lets a caller run the write -- most of a commit's wall time -- off its
        own thread: it is one SQLite statement on the store's writer connection, with
        Python's GIL released while the disk works, and until `finish_commit` every
        fact of this ledger (height, state, queries) stays at the last committed
        block. Between prepare and finish only reads and `check_tx` are allowed; a
        second commit, a block check or a block build raise `LedgerError`.
        """
        if self._pending is not None:
            raise LedgerError(f"block {self._pending.height} is being committed")
        with gc_paused():
            bh = block.hash()
            executed = self._cache.get(bh)
            if executed is None or executed.settled_root != self.state_root \
                    or executed.height != self.height + 1:
                self._check_block(block, bh, (), {})
                executed = self._cache[bh]
            try:
                certificate.verify(self.chain_id, self.validators_at(block.height), bh)
            except CertificateError as exc:
                raise BlockRejected(f"certificate does not commit block {block.height}: "
                                    f"{exc}") from None
            self._store.stage_block(block.height, bh, block.header.time_ms,
                                    block.header.proposer, executed.state_root,
                                    block.encode(), encode(certificate.to_wire()),
                                    executed.outcomes, executed.changes,
                                    executed.new_validators)
            self._pending = PendingCommit(block, certificate, bh, executed,
                                          self._store.commit_staged)
            return self._pending

    def abort_commit(self, pending: PendingCommit) -> None:
        """Forget a prepared commit that was not written (its staged rows are undone)."""
        assert pending is self._pending, "not the commit in progress"
        assert not pending.written, "a written commit is finished, not aborted"
        self._store.rollback_staged()
        self._pending = None

    def finish_commit(self, pending: PendingCommit) -> list[Transaction]:
        """After a successful `PendingCommit.write`: the block becomes the settled state."""
        assert pending is self._pending, "not the commit in progress"
        assert pending.written, "finish_commit before the write"
        block, executed = pending.block, pending.executed
        with gc_paused():
            self._state.apply(executed.changes, executed.hash)
            assert self._state.root() == executed.state_root
            self.height = block.height
            self.last_block_hash = pending.block_hash
            self.last_time_ms = block.header.time_ms
            if executed.new_validators is not None:
                self._add_validators(block.height + 2, executed.new_validators)
            self._cache.clear()
            self._pending = None
        self._recent[block.height] = (block, pending.certificate)
        while len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)
        return list(executed.included)

    # ---- history -------------------------------------------------------------------------

    def block(self, height: int) -> Block | None:
        """A committed block; the last `RECENT_BLOCKS` ones without a store read or a
        decode (the node asks for the block it just committed several times over)."""
        recent = self._recent.get(height)
        if recent is not None:
            return recent[0]
        raw = self._store.block_raw(height)
        return None if raw is None else Block.decode(raw)

    def certificate(self, height: int) -> Certificate | None:
        recent = self._recent.get(height)
        if recent is not None:
            return recent[1]
        raw = self._store.certificate_raw(height)
        if raw is None:
            return None
        return Certificate.from_wire(decode(raw))

    def blocks(self, start: int = 1) -> Iterator[tuple[Block, Certificate]]:
        """Committed blocks with their certificates, for sync, export and audit."""
        for _h, b, c in self._store.blocks(start):
            yield Block.decode(b), Certificate.from_wire(decode(c))

    def tx_result(self, txid: bytes) -> tuple[int, int, Any] | None:
        """(height, index, result) of a committed transaction."""
        row = self._store.tx(txid)
        return None if row is None else (row[0], row[1], row[3])

    def tx_proof(self, txid: bytes) -> tuple[Header, int, bytes, list[bytes]] | None:
        """A committed transaction with its Merkle inclusion proof against its header."""
        row = self._store.tx(txid)
        if row is None:
            return None
        block = self.block(row[0])
        assert block is not None
        return block.header, row[1], block.txs[row[1]], inclusion_proof(block.txs, row[1])

    def conservation(self) -> tuple[int, int, dict[str, int]]:
        """(money held, net inflow through the treasury, per holder): equal when sound."""
        return conservation(self._state, self.rules.money_holders)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL over the store (state tables and chain_* history)."""
        return self._store.query(query, params)
