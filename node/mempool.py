"""Transactions waiting for a block: verified once, bounded, ordered by nonce.

Every transaction arrives here first, from the control API or from gossip, often
many times over (gossip repeats, peers re-gossip). Signature checks are the
expensive part, so a transaction's signature is verified exactly once: afterwards
the mempool knows it by id, and ids it refused recently are remembered too, so a
peer repeating junk costs a hash, not a verification.

Admission asks the ledger whether the transaction could apply after what is
already pending from the same signer (`LedgerView.check_tx` with the pending nonce),
so a client can queue several transactions without waiting for each to commit.
The pool is bounded in count and bytes; when full it evicts first transactions
that wait on a nonce gap (they cannot be included until the gap fills), oldest
first, then the highest nonce of whoever holds the most entries, so one busy or
hostile signer cannot push everyone else out. Entries also expire by age.

After a block commits, `block_committed` removes what it included and rechecks the
rest of the touched signers against the new state, dropping what the block made
invalid; what remains is offered for re-gossip (`due_for_gossip`), because nothing
may depend on a single gossip message arriving.

Whatever leaves the pool without being committed -- refused at admission, skipped by
the block builder, dropped by a recheck, evicted, expired -- leaves its reason behind
(`rejection`), in bounded memory, so a client waiting on its transaction learns why
instead of hearing "unknown". Only refusals that can never change (a bad signature, a
used nonce) also short-circuit later copies of the same bytes; the others are history
for reporting, and the same bytes may be admitted again once the state allows.

A pending transaction that leaves uncommitted while its nonce is still unused takes
its signer's later-nonce entries with it (`_drop_successors`): they could never apply
without it, and would otherwise sit for `max_age` saying "waiting for nonce N". Each
is recorded, not final, as "nonce N (tx <id>) was dropped: <its reason>", under the
stage of the cause. The rule looks only at the moment of leaving, which makes the
order of arrivals harmless:

- no cascade while a transaction with that nonce is pending, nor when the nonce is
  already used on chain (another transaction with it committed: the chain goes on);
- a transaction refused on arrival never was pending, so entries already waiting
  on its nonce keep waiting, and a later admitted transaction with that nonce (new
  bytes, or the same ones once the state allows) lets them through;
- successors arriving after the cascade (resubmitted, re-gossiped) are admitted like
  any gapped entry and wait for the nonce; so a client may resubmit the missing
  nonce and its successors in either order.

This is plain synchronous data: the driver calls it from the trio loop.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from protocol.crypto import sha256
from protocol.transactions import MAX_TX_BYTES, Transaction, TxError, decode_tx

DEFAULT_MAX_TXS = 20_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PER_SIGNER = 5_000
DEFAULT_MAX_NONCE_GAP = 1_000
DEFAULT_MAX_AGE = 600.0
"""Seconds a transaction may wait before it is dropped (its author may resubmit)."""
REGOSSIP_DELAY = 3.0
"""Seconds after a gossip before an entry still pending is gossiped again (doubling)."""
REGOSSIP_MAX_DELAY = 60.0
REGOSSIP_BATCH = 200
REMEMBERED_IDS = 50_000
"""Ids of refused and committed transactions remembered, so repeats cost no verification."""
REMEMBERED_REJECTIONS = 10_000
"""Ids (with the reason) of transactions that left the pool uncommitted, for reporting."""
MAX_REASON_CHARS = 300


def stranded_reason(gone: Transaction, reason: str) -> str:
    """Why a later-nonce transaction was dropped along with `gone` (which left for `reason`)."""
    return f"nonce {gone.nonce} (tx {gone.id.hex()}) was dropped: {reason}"


class LedgerView(Protocol):
    """What admission needs from the ledger's committed state."""

    def account_nonce(self, account: bytes) -> int:
        """The last nonce of `account` in a committed transaction (0 if none)."""
        ...

    def check_tx(self, tx: Transaction, pending_nonce: int) -> str | None:
        """Why `tx` could not apply after this signer's pending nonce, or None if it could.

        `pending_nonce` is the highest nonce of the signer among committed and pending
        transactions that `tx` would follow. The signature is already verified.
        """
        ...


@dataclass(slots=True)
class Entry:
    tx: Transaction
    size: int
    added: float
    seq: int
    source: str
    next_gossip: float = field(default=-1e18)
    gossips: int = 0


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a transaction is not (or no longer) in the pool, and whether that is final.

    `stage`: "admission" (refused on arrival), "block" (the block builder skipped it),
    "recheck" (a committed block made it invalid), "evicted" (the pool was full),
    "expired" (it waited longer than the pool keeps anything). `final`: the same bytes
    can never apply (resubmitting them is pointless; sign a new transaction).
    """

    reason: str
    stage: str
    final: bool

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "stage": self.stage, "final": self.final}


STAGES = ("admission", "block", "recheck", "evicted", "expired")


@dataclass(frozen=True, slots=True)
class AddResult:
    """Outcome of `add`. `status` is "added", "known" (already pending) or "rejected"."""

    status: str
    txid: bytes
    reason: str | None = None
    tx: Transaction | None = None
    evicted: tuple[bytes, ...] = ()
    """Ids that left to make room: the evicted ones, each followed by what it stranded."""
    state_dependent: bool = False
    """Refused by the ledger's view of the committed state (a balance, a window, an
    object not there yet): the same bytes may be accepted after the next block."""

    @property
    def ok(self) -> bool:
        return self.status in ("added", "known")


class Mempool:
    """Pending transactions of one commune (`chain_id`)."""

    def __init__(self, chain_id: bytes, ledger: LedgerView, *,
                 max_txs: int = DEFAULT_MAX_TXS, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_per_signer: int = DEFAULT_MAX_PER_SIGNER,
                 max_nonce_gap: int = DEFAULT_MAX_NONCE_GAP,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        assert max_txs > 0 and max_bytes >= MAX_TX_BYTES and max_per_signer > 0
        self.chain_id = chain_id
        self.ledger = ledger
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.max_per_signer = max_per_signer
        self.max_nonce_gap = max_nonce_gap
        self.max_age = max_age
        self._by_id: dict[bytes, Entry] = {}
        self._by_signer: dict[bytes, dict[int, bytes]] = {}
        self._bytes = 0
        self._seq = 0
        self._refused: OrderedDict[bytes, str] = OrderedDict()
        self._rejections: OrderedDict[bytes, Rejection] = OrderedDict()
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    # ---- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, txid: object) -> bool:
        return txid in self._by_id

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, txid: bytes) -> Transaction | None:
        e = self._by_id.get(txid)
        return e.tx if e else None

    def added_at(self, txid: bytes) -> float | None:
        e = self._by_id.get(txid)
        return e.added if e else None

    def pending_nonce(self, signer: bytes) -> int:
        """The nonce a new transaction of `signer` should follow (contiguous pending chain)."""
        n = self.ledger.account_nonce(signer)
        chain = self._by_signer.get(signer, {})
        while n + 1 in chain:
            n += 1
        return n

    def verified_ids(self) -> Collection[bytes]:
        """Ids whose signatures were verified here (a live view, for block checks)."""
        return self._by_id.keys()

    def refused_reason(self, txid: bytes) -> str | None:
        """Why `txid` was refused or dropped (see `rejection`), or None if not remembered."""
        r = self.rejection(txid)
        return None if r is None else r.reason

    def rejection(self, txid: bytes) -> Rejection | None:
        """The latest reason `txid` left (or never entered) the pool uncommitted.

        None when it is pending, committed, or was never seen or long forgotten (the
        record is bounded: the last `REMEMBERED_REJECTIONS` ids).
        """
        if txid in self._by_id or txid in self._committed:
            return None
        return self._rejections.get(txid)

    def rejections_remembered(self) -> int:
        return len(self._rejections)

    def was_committed(self, txid: bytes) -> bool:
        return txid in self._committed

    # ---- admission ----------------------------------------------------------------------

    def add(self, raw: bytes, now: float, source: str = "api") -> AddResult:
        if len(raw) > MAX_TX_BYTES:  # not remembered: its id is not even the real one
            return AddResult("rejected", sha256(raw[:MAX_TX_BYTES + 1]),
                             f"transaction is {len(raw)} bytes, over {MAX_TX_BYTES}")
        txid = sha256(raw)
        if txid in self._by_id:
            return AddResult("known", txid, tx=self._by_id[txid].tx)
        if txid in self._committed:
            return AddResult("rejected", txid, "already committed")
        cached = self._refused.get(txid)
        if cached is not None:
            return AddResult("rejected", txid, cached)
        try:
            tx = decode_tx(raw, self.chain_id)  # the one signature verification
        except TxError as exc:
            return self._refuse(txid, str(exc))
        return self._admit(tx, now, source)

    def _admit(self, tx: Transaction, now: float, source: str) -> AddResult:
        committed = self.ledger.account_nonce(tx.signer)
        if tx.nonce <= committed:
            return self._refuse(tx.id, f"nonce {tx.nonce} already used "
                                       f"(the account's last nonce is {committed})")
        chain = self._by_signer.get(tx.signer, {})
        if tx.nonce in chain:
            # No replacement: there are no fees to outbid with, and letting a second
            # transaction with the same nonce in would let gossip order decide.
            # Not final: it may become valid if the pending one is evicted.
            return self._reject(tx.id, f"nonce {tx.nonce} is taken by pending transaction "
                                       f"{chain[tx.nonce].hex()}", "admission")
        if tx.nonce - committed > self.max_nonce_gap:
            return self._reject(tx.id, f"nonce {tx.nonce} is too far ahead of the account's "
                                       f"last nonce {committed}", "admission")
        if len(chain) >= self.max_per_signer:
            return self._reject(tx.id, f"signer already has {len(chain)} pending "
                                       "transactions", "admission")
        # Checked as if every lower nonce were in place: a gapped transaction is held
        # for its gap to fill, and the block builder rechecks everything in order.
        reason = self.ledger.check_tx(tx, tx.nonce - 1)
        if reason is not None:
            # A state-dependent refusal (balance, window) may change with the next
            # block, so it is not remembered as final.
            return self._reject(tx.id, reason, "admission", state_dependent=True)
        size = len(tx.raw)
        evicted = self._make_room(size, tx)
        if evicted is None:
            return self._reject(tx.id, "mempool full", "admission")
        self._rejections.pop(tx.id, None)
        self._seq += 1
        self._by_id[tx.id] = Entry(tx, size, now, self._seq, source)
        self._by_signer.setdefault(tx.signer, {})[tx.nonce] = tx.id
        self._bytes += size
        return AddResult("added", tx.id, tx=tx, evicted=tuple(evicted))

    def _refuse(self, txid: bytes, reason: str, stage: str = "admission") -> AddResult:
        """A final refusal: remembered so that later copies cost no verification."""
        self._refused[txid] = reason
        self._refused.move_to_end(txid)
        while len(self._refused) > REMEMBERED_IDS:
            self._refused.popitem(last=False)
        self._record(txid, reason, stage, final=True)
        return AddResult("rejected", txid, reason)

    def _reject(self, txid: bytes, reason: str, stage: str,
                state_dependent: bool = False) -> AddResult:
        """A refusal that may not hold later: recorded for reporting only."""
        self._record(txid, reason, stage, final=False)
        return AddResult("rejected", txid, reason, state_dependent=state_dependent)

    def _record(self, txid: bytes, reason: str, stage: str, final: bool) -> None:
        assert stage in STAGES, stage
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS - 1] + "…"
        self._rejections[txid] = Rejection(reason, stage, final)
        self._rejections.move_to_end(txid)
        while len(self._rejections) > REMEMBERED_REJECTIONS:
            self._rejections.popitem(last=False)

    def _make_room(self, size: int, incoming: Transaction) -> list[bytes] | None:
        """Evict until `size` more bytes and one more entry fit; None if `incoming` loses."""
        evicted: list[bytes] = []
        while len(self._by_id) + 1 > self.max_txs or self._bytes + size > self.max_bytes:
            victim = self._victim(incoming)
            if victim is None:
                return None
            e = self._remove(victim)
            reason = "evicted: the mempool was full; submit it again later"
            self._record(victim, reason, "evicted", final=False)
            evicted.append(victim)
            evicted.extend(self._drop_successors(e.tx, reason, "evicted"))
        return evicted

    def _victim(self, incoming: Transaction) -> bytes | None:
        gapped = self._gapped()
        if gapped:
            return min(gapped, key=lambda i: self._by_id[i].seq)
        if incoming.nonce > self.pending_nonce(incoming.signer) + 1:
            return None  # the newcomer is itself gapped: it goes, not a ready one
        # The highest nonce of the signer holding the most entries (the newcomer counted).
        def load(s: bytes) -> int:
            return len(self._by_signer[s]) + (1 if s == incoming.signer else 0)
        signer = max(self._by_signer, key=lambda s: (load(s), -min(
            self._by_id[i].seq for i in self._by_signer[s].values())))
        if signer == incoming.signer and incoming.nonce > max(self._by_signer[signer]):
            return None
        chain = self._by_signer[signer]
        return chain[max(chain)]

    def _gapped(self) -> list[bytes]:
        out: list[bytes] = []
        for signer, chain in self._by_signer.items():
            ready = self.pending_nonce(signer)
            out.extend(txid for n, txid in chain.items() if n > ready)
        return out

    def _drop_successors(self, gone: Transaction, reason: str, stage: str) -> list[bytes]:
        """Drop the entries of `gone`'s signer that can no longer apply now it left.

        Called after `gone` left the pool uncommitted for `reason`. Its successors
        stay if its nonce is pending again or already used on chain (see the module
        docstring for why the rule is this and no more).
        """
        assert gone.id not in self._by_id
        chain = self._by_signer.get(gone.signer)
        if not chain or gone.nonce in chain:
            return []
        if gone.nonce <= self.ledger.account_nonce(gone.signer):
            return []
        why = stranded_reason(gone, reason)
        later = [chain[n] for n in sorted(chain) if n > gone.nonce]
        for txid in later:
            self._remove(txid)
            self._record(txid, why, stage, final=False)
        return later

    def _remove(self, txid: bytes) -> Entry:
        e = self._by_id.pop(txid)
        chain = self._by_signer[e.tx.signer]
        del chain[e.tx.nonce]
        if not chain:
            del self._by_signer[e.tx.signer]
        self._bytes -= e.size
        return e

    # ---- block building -----------------------------------------------------------------

    def reap(self, max_txs: int, max_bytes: int) -> list[Transaction]:
        """Ready transactions for a block: each signer's in nonce order, signers by arrival.

        Only contiguous chains from each account's committed nonce are ready; the
        ledger's block builder still checks each against the state as it goes.
        """
        heap: list[tuple[int, bytes, int]] = []
        for signer, chain in self._by_signer.items():
            n = self.ledger.account_nonce(signer) + 1
            if n in chain:
                heapq.heappush(heap, (self._by_id[chain[n]].seq, signer, n))
        out: list[Transaction] = []
        total = 0
        while heap and len(out) < max_txs:
            _, signer, n = heapq.heappop(heap)
            e = self._by_id[self._by_signer[signer][n]]
            if total + e.size > max_bytes:
                continue  # this signer's chain stops here; others may still fit
            out.append(e.tx)
            total += e.size
            nxt = self._by_signer[signer].get(n + 1)
            if nxt is not None:
                heapq.heappush(heap, (self._by_id[nxt].seq, signer, n + 1))
        return out

    def drop(self, txids: Iterable[bytes], reason: str) -> list[bytes]:
        """Remove transactions the ledger refused while building a block; remember why.

        Their successors go too (`_drop_successors`). The builder then reports those
        as well, refused for a wrong nonce: that is a consequence, not their fault,
        so an id already dropped keeps the reason it was dropped with (not final).
        """
        dropped = []
        for txid in txids:
            if txid in self._by_id:
                e = self._remove(txid)
                dropped.append(txid)
                self._refuse(txid, reason, "block")
                dropped.extend(self._drop_successors(e.tx, reason, "block"))
            elif txid not in self._rejections:
                self._refuse(txid, reason, "block")
        return dropped

    # ---- after a commit -----------------------------------------------------------------

    def block_committed(self, txs: Iterable[Transaction],
                        recheck_all: bool = False) -> dict[bytes, str]:
        """Forget included transactions and drop what the block made invalid.

        Rechecks the signers the block touched (or everyone, with `recheck_all`, which
        the driver uses after period closes and periodically). Returns the dropped ids
        with the reason.
        """
        touched: set[bytes] = set()
        for tx in txs:
            touched.add(tx.signer)
            self._committed[tx.id] = None
            self._committed.move_to_end(tx.id)
            if tx.id in self._by_id:
                self._remove(tx.id)
        while len(self._committed) > REMEMBERED_IDS:
            self._committed.popitem(last=False)
        signers = list(self._by_signer) if recheck_all else [
            s for s in touched if s in self._by_signer]
        dropped: dict[bytes, str] = {}
        for signer in signers:
            dropped.update(self._recheck_signer(signer))
        return dropped

    def _recheck_signer(self, signer: bytes) -> dict[bytes, str]:
        dropped: dict[bytes, str] = {}
        committed = self.ledger.account_nonce(signer)
        chain = self._by_signer.get(signer, {})
        for n in sorted(chain):
            txid = chain[n]
            if n <= committed:
                self._remove(txid)
                dropped[txid] = f"nonce {n} was used by another committed transaction"
                self._refuse(txid, dropped[txid], "recheck")
        pending = committed
        chain = self._by_signer.get(signer, {})
        for n in sorted(chain):
            if n != pending + 1:
                break  # gapped entries are checked once the gap fills
            txid = chain[n]
            reason = self.ledger.check_tx(self._by_id[txid].tx, pending)
            if reason is not None:
                e = self._remove(txid)
                dropped[txid] = reason
                self._record(txid, reason, "recheck", final=False)
                for later in self._drop_successors(e.tx, reason, "recheck"):
                    dropped[later] = stranded_reason(e.tx, reason)
                break
            pending = n
        return dropped

    def expire(self, now: float) -> list[bytes]:
        """Drop entries older than `max_age`, and the younger successors they strand.

        Returns the ids dropped: the expired ones (oldest first), then the stranded.
        """
        old = [txid for txid, e in self._by_id.items() if now - e.added > self.max_age]
        reason = (f"expired: waited over {self.max_age:.0f} s in the mempool without "
                  "being included (a nonce gap, or no blocks); submit it again")
        gone = []
        for txid in old:
            gone.append(self._remove(txid).tx)
            self._record(txid, reason, "expired", final=False)
        out = list(old)
        for tx in sorted(gone, key=lambda t: t.nonce):  # the lowest gap names the cause
            out.extend(self._drop_successors(tx, reason, "expired"))
        return out

    def due_for_gossip(self, now: float, limit: int = REGOSSIP_BATCH) -> list[bytes]:
        """Raw bytes of entries due for another gossip round; marks them gossiped.

        Each entry is re-gossiped with exponential backoff (`mark_gossiped`), the ready
        ones (next in their signer's nonce order) first, at most `limit` per call: a
        re-gossip is a repair for a lost message, and an unbounded repair of a large
        mempool would itself flood the network and starve consensus.
        """
        due = [e for e in self._by_id.values() if e.next_gossip <= now]
        if not due:
            return []
        ready: dict[bytes, int] = {}

        def rank(e: Entry) -> tuple[int, int]:
            s = e.tx.signer
            if s not in ready:
                ready[s] = self.ledger.account_nonce(s) + 1
            return (0 if e.tx.nonce == ready[s] else 1, e.seq)

        due.sort(key=rank)
        out = []
        for e in due[:limit]:
            self._schedule_gossip(e, now)
            out.append(e.tx.raw)
        return out

    def mark_gossiped(self, txid: bytes, now: float, first_delay: float | None = None) -> None:
        """Record a gossip of `txid` at `now`; the next one is due after a backoff.

        `first_delay` overrides the delay after the first gossip (the driver uses a
        longer one for transactions that arrived by gossip: their author's node is
        already repairing them).
        """
        e = self._by_id.get(txid)
        if e is not None:
            self._schedule_gossip(e, now, first_delay)

    def _schedule_gossip(self, e: Entry, now: float, first_delay: float | None = None) -> None:
        if e.gossips == 0 and first_delay is not None:
            delay = first_delay
        else:
            delay = min(REGOSSIP_MAX_DELAY, REGOSSIP_DELAY * (2 ** min(e.gossips, 16)))
        e.gossips += 1
        e.next_gossip = now + delay

    def check_invariants(self) -> None:
        """For tests: the indexes agree and the byte count is exact."""
        assert self._bytes == sum(e.size for e in self._by_id.values())
        assert len(self._by_id) <= self.max_txs and self._bytes <= self.max_bytes
        assert len(self._rejections) <= REMEMBERED_REJECTIONS
        n = 0
        for signer, chain in self._by_signer.items():
            assert chain, "empty chain kept"
            for nonce, txid in chain.items():
                e = self._by_id[txid]
                assert e.tx.signer == signer and e.tx.nonce == nonce
                n += 1
        assert n == len(self._by_id)
