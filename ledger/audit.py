"""The auditor's replay: check a commune's whole signed log, trusting nothing but math.

Given a log (genesis, then every block with its commit certificate), `Auditor` checks,
block by block and in this order, so that the first failure names the most specific
cause:

1. the block decodes and belongs to this commune (its chain id is the genesis hash);
2. the hash chain: its height follows, its `prev_hash` is the previous block's hash;
3. every transaction decodes and carries a valid signature (index and id on failure);
4. everything a live node checks (`Ledger.check_block`): the header commits to the body
   (transactions root, previous certificate, evidence), proposer, validator-set hashes,
   the previous block's certificate against the validators of its height, time,
   evidence, then the re-execution of every transaction into a fresh in-memory store
   and the comparison of the state root;
5. its own commit certificate (`Ledger.commit`): more than 2/3 of the validators of its
   height, each a valid signature on this block's hash -- the validator set being the
   one the replayed log itself produces (membership changes in block H vote from H+2);
6. after every block that changed the state: the conservation identity of DESIGN 6.3
   (money held = deposits - payouts - acquisitions + liquidations), no negative
   balance, arrears or holding anywhere, and the bond-service and dividend identities
   (`INVARIANT_QUERIES`).

The first failure stops the replay with an `AuditFailure`: height, transaction (index and
id) where one is to blame, which check failed and why. A log that passes is summarized
in a report (`Auditor.report`): members over time, validator sets, treasury flows and
actions, withdrawals, governance, dividends per period, assets, bonds and rents (when the
ledger has those tables), and evidence of misbehaviour.

Signature checks are the cost of a replay. They are pure functions of the log's bytes
(`check_signatures`), so a caller may run them ahead of execution in other processes
and hand the verdicts in (`Auditor.apply(record, verdict)`); this module itself stays
single-threaded and deterministic, like the rest of `ledger/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ledger.execute import BlockRejected
from ledger.export import BlockRecord, LogEnd, LogFormatError, LogReader
from ledger.genesis import Genesis, GenesisError
from ledger.ledger import Ledger, LedgerError
from ledger.rules import Rules
from protocol.block import Block, BlockError
from protocol.crypto import id_text, sha256, verify
from protocol.encoding import DecodeError, decode
from protocol.envelope import Domain
from protocol.transactions import TxError, decode_tx
from protocol.votes import Certificate, CertificateError

# ---- failures ------------------------------------------------------------------------------

CHECKS = {
    "format": "the log file is malformed, truncated or damaged",
    "genesis": "the genesis document is invalid or not the expected one",
    "block-format": "a block or certificate does not decode",
    "chain": "a block of another commune, or a break in the hash chain",
    "tx-format": "a transaction does not decode",
    "tx-signature": "a transaction's signature is invalid",
    "block-body": "the header does not commit to the block's body",
    "certificate": "the block's commit certificate is invalid",
    "last-commit": "the previous block's certificate inside the block is invalid",
    "block": "the block breaks a consensus rule (proposer, validators, time, evidence)",
    "transaction": "a transaction does not execute",
    "state-root": "the re-executed state does not match the header's state root",
    "invariant": "a ledger invariant is broken after the block",
    "end": "the end of the log does not match the blocks",
}


@dataclass(frozen=True)
class Failure:
    """The first thing wrong with a log."""

    check: str
    """One of `CHECKS`."""
    reason: str
    height: int | None = None
    """The block at fault (None for the genesis, the file header or the end record)."""
    tx_index: int | None = None
    tx_id: bytes | None = None
    offset: int | None = None
    """Byte offset of the record in the log file, when read from one."""

    def __post_init__(self) -> None:
        assert self.check in CHECKS, self.check

    def describe(self) -> str:
        where = self.check if self.height is None else f"block {self.height}"
        if self.tx_index is not None:
            where += f", transaction {self.tx_index}"
            if self.tx_id is not None:
                where += f" ({self.tx_id.hex()})"
        return f"{where}: {self.check}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "what": CHECKS[self.check], "reason": self.reason,
                "height": self.height, "tx_index": self.tx_index,
                "tx_id": None if self.tx_id is None else self.tx_id.hex(),
                "offset": self.offset}


class AuditFailure(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def _fail(check: str, reason: str, height: int | None, **kw: Any) -> AuditFailure:
    return AuditFailure(Failure(check, reason, height, **kw))


# ---- signatures (pure; may run in other processes) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SigVerdict:
    """What `check_signatures` found in one block: all good, or the first bad transaction."""

    checked: int
    bad_index: int | None = None
    bad_id: bytes | None = None
    check: str | None = None
    """"tx-format" or "tx-signature" for a bad transaction; "block-format" if the block
    itself does not decode (the auditor then reports its own decode error)."""
    reason: str | None = None


# The canonical encoding of a transaction envelope {"body", "sig", "signer"} (keys in
# canonical order) is: fixmap(3), "body", canonical(body), "sig", bin8(64) sig, "signer",
# bin8(32) signer. So the signed body bytes are a slice of the raw transaction, and a
# signature can be checked without decoding anything. This is sound because the ledger
# decodes every transaction canonically before executing it (a raw transaction that is
# not canonical is rejected there, see `Auditor.apply`), so for every transaction that
# executes, the slice *is* canonical(body); anything not shaped like this is decoded in full.
_ENV_PREFIX = b"\x83\xa4body"
_ENV_SIG = b"\xa3sig\xc4\x40"
_ENV_SIGNER = b"\xa6signer\xc4\x20"
_ENV_SUFFIX = len(_ENV_SIG) + 64 + len(_ENV_SIGNER) + 32
_TX_DOMAIN = Domain.TX.value


def _verify_raw_tx(chain_id: bytes, raw: bytes) -> bool | None:
    """The signature verdict from the raw bytes alone, or None if not shaped canonically."""
    n = len(raw)
    if (n <= len(_ENV_PREFIX) + _ENV_SUFFIX or raw[:6] != _ENV_PREFIX
            or raw[n - 111:n - 105] != _ENV_SIG or raw[n - 41:n - 32] != _ENV_SIGNER):
        return None
    return verify(raw[n - 32:], raw[n - 105:n - 41], _TX_DOMAIN + chain_id + raw[6:n - 111])


def check_block_signatures(chain_id: bytes, txs: tuple[bytes, ...]) -> SigVerdict:
    """Verify every transaction signature of a block, stopping at the first bad one."""
    assert _ENV_SUFFIX == 111
    for i, raw in enumerate(txs):
        if _verify_raw_tx(chain_id, raw):
            continue
        try:
            tx = decode_tx(raw)
        except TxError as exc:
            return SigVerdict(i, i, sha256(raw), "tx-format", str(exc))
        if not tx.verify(chain_id):
            return SigVerdict(i, i, tx.id, "tx-signature",
                              f"bad signature by {id_text(tx.signer)} on {tx.kind} "
                              f"nonce {tx.nonce} (tampered, or signed for another commune)")
        # A valid signature that the raw check missed: the bytes are not canonical.
        return SigVerdict(i, i, tx.id, "tx-format", "the transaction is not canonically "
                          "encoded")
    return SigVerdict(len(txs))


def check_signatures(chain_id: bytes, raw_block: bytes) -> SigVerdict:
    """`check_block_signatures` from a block's bytes (what a worker process gets)."""
    try:
        block = Block.decode(raw_block)
    except BlockError as exc:
        return SigVerdict(0, check="block-format", reason=str(exc))
    return check_block_signatures(chain_id, block.txs)


def check_signatures_batch(chain_id: bytes, raw_blocks: list[bytes]) -> list[SigVerdict]:
    """`check_signatures` over several blocks: one task for a worker process."""
    return [check_signatures(chain_id, raw) for raw in raw_blocks]


Prefetch = Callable[[bytes, Iterable[BlockRecord]],
                    Iterator[tuple[BlockRecord, SigVerdict | None]]]
"""Turns block records into (record, signature verdict) pairs, in order; a None verdict
leaves the signatures to `Auditor.apply`."""


def inline_prefetch(chain_id: bytes, records: Iterable[BlockRecord]
                    ) -> Iterator[tuple[BlockRecord, SigVerdict | None]]:
    for rec in records:
        yield rec, None


# ---- the replay ----------------------------------------------------------------------------

_TX_REASON = re.compile(r"^transaction (\d+)\b")


INVARIANT_QUERIES: tuple[tuple[frozenset[str], str, str], ...] = (
    (frozenset({"periods"}),
     "SELECT period, pool, members, share, carry FROM periods "
     "WHERE share * members + carry != pool OR share < 0 OR carry < 0 LIMIT 1",
     "period {0}: the dividend split does not add up (pool {1}, {2} members x share {3} "
     "+ carry {4})"),
    (frozenset({"series"}),
     "SELECT asset, face, outstanding, principal_paid, principal_written_off FROM series "
     "WHERE principal_paid + outstanding + principal_written_off != face "
     "OR outstanding < 0 OR unpaid_interest < 0 OR principal_paid < 0 LIMIT 1",
     "bond series {0}: face {1} is not outstanding {2} + principal paid {3} + written off "
     "{4}"),
    (frozenset({"series", "bonds"}),
     "SELECT s.asset, s.outstanding, coalesce(b.o, 0) FROM series s LEFT JOIN "
     "(SELECT asset, sum(outstanding) AS o FROM bonds GROUP BY asset) b ON b.asset = s.asset "
     "WHERE coalesce(b.o, 0) != s.outstanding LIMIT 1",
     "bond series {0}: outstanding {1}, but its holdings add up to {2}"),
    (frozenset({"bonds"}),
     "SELECT asset, holder, outstanding, face FROM bonds WHERE outstanding < 0 "
     "OR interest_received < 0 OR principal_received < 0 LIMIT 1",
     "bond holding {0}/{1} is negative (outstanding {2}, face {3})"),
    (frozenset({"assets", "series"}),
     "SELECT a.id, a.escrow, coalesce(s.face, 0), coalesce(s.status, 'none') FROM assets a "
     "LEFT JOIN series s ON s.asset = a.id WHERE a.escrow < 0 OR a.pending < 0 OR "
     "(a.escrow != 0 AND (s.face IS NULL OR s.status != 'funded' OR s.face != a.escrow)) "
     "LIMIT 1",
     "asset {0}: escrow {1} does not match its series (face {2}, {3})"),
)
"""Invariants of bond service and dividends (DESIGN 6.5, 6.7) checked after every block
that changed the state, beside conservation (6.3): each query returns a violating row.
A query runs only if the ledger has its tables."""


@dataclass
class Progress:
    height: int
    block_hash: bytes
    time_ms: int
    txs: int
    state_root: bytes
    offset: int | None


@dataclass
class _Member:
    id: bytes
    name: str
    joined_height: int
    joined_ms: int
    how: str


@dataclass
class _History:
    """What the report needs that the final state no longer shows."""

    member_events: list[dict[str, Any]] = field(default_factory=list)
    member_counts: list[tuple[int, int, int]] = field(default_factory=list)
    """(height, time_ms, members) whenever the count changed."""
    blocks: int = 0
    txs: int = 0
    first_time_ms: int | None = None
    last_time_ms: int | None = None
    state_changes: int = 0
    invariant_checks: int = 0
    certificates: int = 0
    signatures: int = 0
    closes: list[dict[str, Any]] = field(default_factory=list)
    """Per block that closed periods: rent charged, bond service paid (see `_track_periods`)."""


class Auditor:
    """Replays one log block by block into a fresh in-memory ledger."""

    def __init__(self, genesis: Genesis, rules: Rules | None = None) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.ledger = Ledger.open(None, genesis, rules)
        self.height = 0
        self.last_hash = self.chain_id
        self.last_time_ms = genesis.genesis_time_ms
        self._root = self.ledger.state_root
        self.history = _History()
        self._members: dict[bytes, _Member] = {}
        for f in genesis.founders:
            self._members[f.id] = _Member(f.id, f.name, 0, genesis.genesis_time_ms, "founder")
            self.history.member_events.append(
                {"height": 0, "time_ms": genesis.genesis_time_ms, "member": f.id,
                 "name": f.name, "event": "joined", "how": "founder"})
        self.history.member_counts.append((0, genesis.genesis_time_ms, len(self._members)))
        self._periods_closed = self.ledger.state.count("periods")
        self._rent_totals: dict[tuple[bytes, int], tuple[int, int]] = {}
        self._service_totals: dict[bytes, tuple[int, int, int]] = {}
        tables = self.ledger.rules.tables
        self._invariant_queries = [(q, w) for need, q, w in INVARIANT_QUERIES
                                   if need <= tables.keys()]
        self._check_invariants(0)

    def close(self) -> None:
        self.ledger.close()

    # ---- one block ------------------------------------------------------------------

    def apply(self, rec: BlockRecord, verdict: SigVerdict | None = None) -> Progress:
        """Check and commit one block record; raise `AuditFailure` at the first problem."""
        h = self.height + 1
        off = rec.offset if rec.offset >= 0 else None
        if rec.height != h:
            raise _fail("chain", f"record for height {rec.height} where height {h} belongs",
                        h, offset=off)
        try:
            block = Block.decode(rec.block)
        except BlockError as exc:
            raise _fail("block-format", f"the block does not decode: {exc}", h,
                        offset=off) from None
        hd = block.header
        if hd.chain_id != self.chain_id:
            raise _fail("chain", f"the block belongs to another commune (chain id "
                        f"{hd.chain_id.hex()}, this log's is {self.chain_id.hex()})", h,
                        offset=off)
        if hd.height != h:
            raise _fail("chain", f"the block says height {hd.height}, it stands at {h}", h,
                        offset=off)
        if hd.prev_hash != self.last_hash:
            what = "the chain id" if h == 1 else f"the hash of block {h - 1}"
            raise _fail("chain", f"hash chain broken: prev_hash {hd.prev_hash.hex()} is not "
                        f"{what} ({self.last_hash.hex()})", h, offset=off)
        if verdict is None:
            verdict = check_block_signatures(self.chain_id, block.txs)
        if verdict.check is not None:
            assert verdict.reason is not None
            raise _fail(verdict.check, verdict.reason, h, tx_index=verdict.bad_index,
                        tx_id=verdict.bad_id, offset=off)
        if verdict.checked != len(block.txs):
            raise _fail("tx-signature", "the signature check did not cover every transaction",
                        h, offset=off)
        try:
            block.check_body()
        except BlockError as exc:
            raise _fail("block-body", str(exc), h, offset=off) from None
        try:
            cert = Certificate.from_wire(decode(rec.certificate))
        except (DecodeError, CertificateError) as exc:
            raise _fail("certificate", f"the certificate does not decode: {exc}", h,
                        offset=off) from None
        bh = block.hash()
        if cert.height != h:
            raise _fail("certificate", f"the certificate is for height {cert.height}", h,
                        offset=off)
        if cert.block_hash != bh:
            raise _fail("certificate", "the certificate is for another block (hash "
                        f"{cert.block_hash.hex()}, this block's is {bh.hex()})", h, offset=off)
        verified = {sha256(raw) for raw in block.txs}
        try:
            self.ledger.check_block(block, verified)
        except BlockRejected as exc:
            raise self._classify(exc.reason, h, block, off) from None
        except LedgerError as exc:
            raise _fail("block", str(exc), h, offset=off) from None
        # The ledger verifies the certificate as it commits (signers are validators of
        # this height, more than 2/3 of them, every signature valid): checked once only,
        # since signatures are the cost of a replay.
        try:
            self.ledger.commit(block, cert)
        except BlockRejected as exc:
            members = ", ".join(id_text(v) for v in self.ledger.validators_at(h).members)
            raise _fail("certificate", f"{exc.reason} (validators at this height: "
                        f"{members})", h, offset=off) from None
        self.height = h
        self.last_hash = bh
        self.last_time_ms = hd.time_ms
        hist = self.history
        hist.blocks += 1
        hist.txs += len(block.txs)
        hist.signatures += len(block.txs) + len(cert.signatures)
        hist.certificates += 1 + (block.last_commit is not None)
        if hist.first_time_ms is None:
            hist.first_time_ms = hd.time_ms
        hist.last_time_ms = hd.time_ms
        root = self.ledger.state_root
        if root != self._root:
            self._root = root
            hist.state_changes += 1
            self._check_invariants(h, off)
            self._track_members(h, hd.time_ms)
            self._track_periods(h)
        return Progress(h, bh, hd.time_ms, len(block.txs), root, off)

    def _classify(self, reason: str, h: int, block: Block, off: int | None) -> AuditFailure:
        m = _TX_REASON.match(reason)
        if m is not None:
            i = int(m.group(1))
            txid = sha256(block.txs[i]) if i < len(block.txs) else None
            check = ("tx-format" if "malformed" in reason else
                     "tx-signature" if "bad signature" in reason else "transaction")
            return _fail(check, reason, h, tx_index=i, tx_id=txid, offset=off)
        if reason.startswith("state root"):
            check = "state-root"
        elif reason.startswith("last_commit"):
            check = "last-commit"
        else:
            check = "block"
        return _fail(check, reason, h, offset=off)

    def _check_invariants(self, h: int, off: int | None = None) -> None:
        held, inflow, per_holder = self.ledger.conservation()
        self.history.invariant_checks += 1
        if held != inflow:
            raise _fail("invariant", f"money is not conserved: held {held} "
                        f"({', '.join(f'{k} {v}' for k, v in per_holder.items())}) but "
                        f"deposits - payouts - acquisitions + liquidations = {inflow}", h,
                        offset=off)
        for name, amount in per_holder.items():
            if amount < 0:
                raise _fail("invariant", f"{name} hold a negative total {amount}", h,
                            offset=off)
        row = self.ledger.sql("SELECT id, balance, arrears FROM accounts "
                              "WHERE balance < 0 OR arrears < 0 LIMIT 1")
        if row:
            raise _fail("invariant", f"account {id_text(bytes(row[0][0]))} has balance "
                        f"{row[0][1]} and arrears {row[0][2]}: never negative", h,
                        offset=off)
        for sql, what in self._invariant_queries:
            bad = self.ledger.sql(sql)
            if bad:
                raise _fail("invariant", what.format(*[
                    bytes(v).hex() if isinstance(v, bytes) else v for v in bad[0]]), h,
                    offset=off)

    def _track_members(self, h: int, time_ms: int) -> None:
        now = set(self.ledger.state.members())
        before = set(self._members)
        if now == before:
            return
        for m in sorted(now - before):
            row = self.ledger.state.member(m) or {}
            app = row.get("application", b"")
            how = "admitted" + (f" (application {app.hex()})" if app else "")
            self._members[m] = _Member(m, str(row.get("name", "")), h, time_ms, how)
            self.history.member_events.append(
                {"height": h, "time_ms": time_ms, "member": m, "name": row.get("name", ""),
                 "event": "joined", "how": how})
        for m in sorted(before - now):
            gone = self._members.pop(m)
            dep = self.ledger.state.row("departures", m) or {}
            how = str(dep.get("reason", "left"))
            ref = dep.get("ref", b"")
            if ref:
                how += f" by proposal {ref.hex()}"
            self.history.member_events.append(
                {"height": h, "time_ms": time_ms, "member": m, "name": gone.name,
                 "event": "left", "how": how})
        self.history.member_counts.append((h, time_ms, len(now)))

    def _track_periods(self, h: int) -> None:
        """At each block that closed periods: the rent charged and the bond service paid
        at those closes (both only change at closes), as differences of running totals."""
        closed = self.ledger.state.count("periods")
        if closed == self._periods_closed:
            return
        first, self._periods_closed = self._periods_closed, closed
        led, tables = self.ledger, self.ledger.rules.tables
        rent = missed = interest = principal = written_off = 0
        if "rentals" in tables:
            for asset, number, paid, miss in led.sql(
                    "SELECT asset, number, paid, missed_total FROM rentals"):
                before = self._rent_totals.get((bytes(asset), number), (0, 0))
                rent += paid - before[0]
                missed += miss - before[1]
                self._rent_totals[(bytes(asset), number)] = (paid, miss)
        if "series" in tables:
            for asset, i, p, w in led.sql(
                    "SELECT asset, interest_paid, principal_paid, principal_written_off + "
                    "interest_written_off FROM series"):
                before2 = self._service_totals.get(bytes(asset), (0, 0, 0))
                interest += i - before2[0]
                principal += p - before2[1]
                written_off += w - before2[2]
                self._service_totals[bytes(asset)] = (i, p, w)
        self.history.closes.append({
            "height": h, "periods": [first, closed - 1], "rent_paid": rent,
            "rents_missed": missed, "interest_paid": interest, "principal_paid": principal,
            "written_off": written_off})

    def check_end(self, end: LogEnd) -> None:
        if end.blocks != self.height:
            raise _fail("end", f"the end record counts {end.blocks} blocks, {self.height} "
                        "were replayed", None)
        if end.last_hash != self.last_hash:
            raise _fail("end", f"the end record names last block {end.last_hash.hex()}, the "
                        f"replayed chain ends with {self.last_hash.hex()}", self.height or None)

    # ---- the report -----------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Everything an auditor reads, as JSON-ready data (ids as text, hashes in hex)."""
        return build_report(self)


# ---- driving a whole log ----------------------------------------------------------------------


@dataclass
class AuditResult:
    ok: bool
    failure: Failure | None
    auditor: Auditor | None
    end: LogEnd | None = None

    def report(self) -> dict[str, Any]:
        rep: dict[str, Any] = self.auditor.report() if self.auditor is not None else {}
        rep["ok"] = self.ok
        rep["failure"] = None if self.failure is None else self.failure.to_json()
        return rep


def audit_records(genesis: Genesis, records: Iterable[BlockRecord], *,
                  end: Callable[[], LogEnd | None] | None = None,
                  prefetch: Prefetch = inline_prefetch,
                  on_block: Callable[[Progress], None] | None = None,
                  rules: Rules | None = None) -> AuditResult:
    """Replay `records` (in height order) on `genesis`; never raises for a bad log.

    `end()` is asked for the log's end record after the last record (None when the source
    has none, e.g. a peer).
    """
    auditor = Auditor(genesis, rules)
    stream = prefetch(genesis.chain_id, records)
    try:
        for rec, verdict in stream:
            p = auditor.apply(rec, verdict)
            if on_block is not None:
                on_block(p)
        last = end() if end is not None else None
        if last is not None:
            auditor.check_end(last)
    except AuditFailure as exc:
        return AuditResult(False, exc.failure, auditor)
    except LogFormatError as exc:
        return AuditResult(False, Failure("format", exc.reason, exc.height, offset=exc.offset),
                           auditor)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:  # a prefetch ahead of a failure stops now, not at collection
            close()
    return AuditResult(True, None, auditor, last)


def audit_log(stream: BinaryIO, *, expected_genesis: Genesis | None = None,
              prefetch: Prefetch = inline_prefetch,
              on_block: Callable[[Progress], None] | None = None,
              rules: Rules | None = None) -> AuditResult:
    """Replay a log file. With `expected_genesis`, the log must be that commune's."""
    try:
        reader = LogReader(stream)
    except LogFormatError as exc:
        return AuditResult(False, Failure("format", exc.reason, None, offset=exc.offset), None)
    try:
        genesis = Genesis.decode(reader.genesis)
    except GenesisError as exc:
        return AuditResult(False, Failure("genesis", f"the log's genesis is invalid: {exc}"),
                           None)
    if expected_genesis is not None and genesis.chain_id != expected_genesis.chain_id:
        return AuditResult(False, Failure(
            "genesis", f"the log is of commune {genesis.name!r} (chain id "
            f"{genesis.chain_id.hex()}), not of the given genesis {expected_genesis.name!r} "
            f"({expected_genesis.chain_id.hex()})"), None)
    return audit_records(genesis, reader.blocks(), end=lambda: reader.end,
                         prefetch=prefetch, on_block=on_block, rules=rules)


# ---- report ------------------------------------------------------------------------------------

COVERED_TABLES = frozenset({
    "params", "scalars", "validator_schedule", "evidence", "accounts", "arrears", "members",
    "applications", "attestations", "departures", "withdrawals", "treasury_signers",
    "treasury_actions", "treasury_approvals", "proposals", "open_proposals", "votes",
    "periods", "dividends", "assets", "asset_index", "series", "bonds", "rentals", "auctions",
    "open_auctions", "commitments", "bond_bids", "rent_bids"})
"""State tables the report shows in their own sections; any other table (assets, bonds,
rentals, ... as the ledger grows) is listed generically so that nothing is hidden."""

MAX_GENERIC_ROWS = 500


def _hex(b: Any) -> str:
    return bytes(b).hex()


def _id(b: Any) -> str:
    return id_text(bytes(b)) if b else ""


ID_FIELDS = frozenset({
    "account", "member", "signer", "proposer", "applicant", "attester", "bidder", "holder",
    "lessee", "requester", "validator", "to", "from", "owner", "investor", "winner"})
"""Field names whose 32-byte values are member/account ids (shown as "z..."); other
32-byte values are hashes (object ids such as assets and withdrawals, shown in hex)."""


def _plain(v: Any, name: str = "") -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return id_text(b) if len(b) == 32 and name in ID_FIELDS else b.hex()
    if isinstance(v, list):
        return [_plain(x, name) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x, k) for k, x in v.items()}
    return v


def _decode_args(raw: bytes) -> dict[str, Any]:
    try:
        args = decode(bytes(raw))
    except DecodeError:
        return {}
    return {k: _plain(v, k) for k, v in args.items()} if type(args) is dict else {}


def build_report(a: Auditor) -> dict[str, Any]:
    led = a.ledger
    g = a.genesis
    sql = led.sql
    hist = a.history
    held, inflow, per_holder = led.conservation()
    flows = led.state.flows()
    rep: dict[str, Any] = {
        "commune": {
            "name": g.name, "chain_id": g.chain_id.hex(), "currency": g.currency,
            "minor_units": g.minor_units, "genesis_time_ms": g.genesis_time_ms,
            "params": dict(g.params),
            "founders": [{"id": id_text(f.id), "name": f.name} for f in g.founders],
            "treasury": {"signers": [id_text(s) for s in g.treasury_signers],
                         "threshold": g.treasury_threshold},
        },
        "chain": {
            "blocks": a.height, "transactions": hist.txs, "first_time_ms": hist.first_time_ms,
            "last_time_ms": hist.last_time_ms, "last_block_hash": a.last_hash.hex(),
            "state_root": led.state_root.hex(),
            "tx_kinds": {k: n for k, n in sql("SELECT kind, count(*) FROM chain_txs "
                                               "GROUP BY kind ORDER BY kind")},
        },
        "checks": {
            "blocks": a.height, "transaction_signatures": hist.txs,
            "certificates": hist.certificates, "state_roots": a.height,
            "state_changes": hist.state_changes, "invariant_checks": hist.invariant_checks,
        },
    }
    rep["members"] = {
        "events": [{**e, "member": id_text(e["member"])} for e in hist.member_events],
        "counts": [{"height": h, "time_ms": t, "members": n}
                   for h, t, n in hist.member_counts],
        "final": [{"id": _id(m), "name": name, "enterprise": ent, "admitted_height": ah,
                   "node": _hex(node)}
                  for m, name, ent, ah, node in sql(
                      "SELECT id, name, enterprise, admitted_height, node FROM members "
                      "ORDER BY admitted_height, id")],
        "pending_applications": [
            {"applicant": _id(who), "name": name, "attestations": n, "height": h}
            for who, name, n, h in sql("SELECT applicant, name, attestations, height "
                                       "FROM applications ORDER BY height, applicant")],
    }
    rep["validators"] = [{"from_height": h, "members": [id_text(m) for m in
                                                        _unpack(bytes(packed))]}
                         for h, packed in sql("SELECT from_height, members FROM "
                                              "chain_validators ORDER BY from_height")]
    actions = []
    for aid, kind, proposer, args, approvals, status, h, eh in sql(
            "SELECT id, kind, proposer, args, approvals, status, height, executed_height "
            "FROM treasury_actions ORDER BY height, id"):
        actions.append({"id": _hex(aid), "kind": kind, "proposer": _id(proposer),
                        "args": _decode_args(args), "approvals": approvals, "status": status,
                        "height": h, "executed_height": eh})
    rep["treasury"] = {
        "flows": flows, "net_inflow": inflow, "held": held, "held_by": per_holder,
        "signers": [id_text(s) for s in led.state.treasury()["signers"]],
        "threshold": led.state.treasury()["threshold"], "actions": actions,
        "withdrawals": [
            {"id": _hex(w), "account": _id(acct), "amount": amt, "reference": ref,
             "status": st, "height": h, "paid_height": ph}
            for w, acct, amt, ref, st, h, ph in sql(
                "SELECT id, account, amount, reference, status, height, paid_height "
                "FROM withdrawals ORDER BY height, id")],
    }
    rep["accounts"] = [
        {"id": _id(i), "balance": b, "arrears": ar, "nonce": n}
        for i, b, ar, n in sql("SELECT id, balance, arrears, nonce FROM accounts "
                               "WHERE balance != 0 OR arrears != 0 ORDER BY balance DESC, id "
                               "LIMIT 1000")]
    rep["governance"] = [
        {"id": _hex(pid), "proposer": _id(who), "title": title, "type": t,
         "change": _decode_args(change), "status": st, "yes": y, "no": n,
         "decided_height": dh, "outcome": out}
        for pid, who, title, t, change, st, y, n, dh, out in sql(
            "SELECT id, proposer, title, type, change, status, yes, no, decided_height, "
            "outcome FROM proposals ORDER BY created_ms, id")]
    claimed = {p: (c, u) for p, c, u in sql(
        "SELECT period, sum(CASE WHEN claimed_height > 0 THEN amount ELSE 0 END), "
        "sum(CASE WHEN claimed_height = 0 THEN amount ELSE 0 END) FROM dividends "
        "GROUP BY period")}
    rep["dividends"] = [
        {"period": p, "start_ms": s, "end_ms": e, "closed_height": ch, "pool": pool,
         "members": n, "share": share, "carry": carry,
         "claimed": claimed.get(p, (0, 0))[0], "unclaimed": claimed.get(p, (0, 0))[1]}
        for p, s, e, ch, pool, n, share, carry in sql(
            "SELECT period, start_ms, end_ms, closed_height, pool, members, share, carry "
            "FROM periods ORDER BY period")]
    rep["assets"] = _assets_report(a) if "assets" in led.rules.tables else []
    rep["closes"] = list(hist.closes)
    rep["evidence"] = [
        {"hash": _hex(eh), "validator": _id(v), "height": h, "round": r,
         "included_height": ih}
        for eh, v, h, r, ih in sql("SELECT hash, validator, height, round, included_height "
                                   "FROM evidence ORDER BY included_height, hash")]
    rep["other_tables"] = _other_tables(a)
    return rep


def _rows(a: Auditor, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a query as {column: value}, values rendered (ids as text, hashes in hex)."""
    cur = a.ledger.sql(sql, params)
    if not cur:
        return []
    names = _columns(a, sql)
    return [{n: _plain(v, n) for n, v in zip(names, row, strict=True)} for row in cur]


def _columns(a: Auditor, sql: str) -> list[str]:
    head = sql.split(" FROM ", 1)[0].removeprefix("SELECT ")
    return [c.strip().split(" AS ")[-1].split(".")[-1] for c in head.split(",")]


def _assets_report(a: Auditor) -> list[dict[str, Any]]:
    """Each asset with its bond series (stop-out rate, service, redemption, holders), its
    rental (rent, periods, paid, missed) and its auctions with their bids."""
    out = []
    for asset in _rows(a, "SELECT id, seq, requester, description, enterprise, price, rent, "
                          "term, maturity, max_rate_bps, status, owned, period, height, "
                          "reauctions FROM assets ORDER BY seq, id"):
        key = bytes.fromhex(asset["id"])
        series = _rows(a, "SELECT rate_bps, face, outstanding, unpaid_interest, maturity, "
                          "level_payment, issued_period, start_period, status, interest_paid, "
                          "principal_paid, redeemed_period, principal_written_off, "
                          "interest_written_off FROM series WHERE asset = ?", (key,))
        if series:
            series[0]["holders"] = _rows(
                a, "SELECT holder, bid, face, outstanding, interest_received, "
                   "principal_received, sent, written_off FROM bonds WHERE asset = ? "
                   "ORDER BY bid = 0, bid, holder", (key,))
        auctions = _rows(a, "SELECT id, kind, round, opened_period, status, bids, revealed, "
                            "reserve, min_term, result, winner, forfeited, closed_period, "
                            "closed_height FROM auctions WHERE asset = ? ORDER BY opened_ms, "
                            "round", (key,))
        for auc in auctions:
            aid = bytes.fromhex(auc["id"])
            if auc["kind"] == "bond":
                auc["bid_list"] = _rows(a, "SELECT bid, bidder, lock, amount, rate_bps, status, "
                                           "allocation, forfeit, height FROM bond_bids WHERE "
                                           "auction = ? ORDER BY bid", (aid,))
            else:
                auc["bid_list"] = _rows(a, "SELECT bid, bidder, lock, rent, term, status, "
                                           "forfeit, height FROM rent_bids WHERE auction = ? "
                                           "ORDER BY bid", (aid,))
        rental = _rows(a, "SELECT number, lessee, rent, term, start, last, missed, "
                          "missed_total, paid, status, notice_period, ended_period FROM "
                          "rentals WHERE asset = ?", (key,))
        out.append({**asset, "series": series[0] if series else None,
                    "rental": rental[0] if rental else None, "auctions": auctions})
    return out


def _unpack(packed: bytes) -> list[bytes]:
    return [packed[i:i + 32] for i in range(0, len(packed), 32)]


def _other_tables(a: Auditor) -> dict[str, Any]:
    """Tables of ledger modules this report has no section for, shown as they are."""
    out: dict[str, Any] = {}
    for name, t in sorted(a.ledger.rules.tables.items()):
        if name in COVERED_TABLES:
            continue
        cols = list(t.key_names + t.column_names)
        quoted = ", ".join(f'"{c}"' for c in cols)
        total = a.ledger.sql(f'SELECT count(*) FROM "{name}"')[0][0]
        rows = a.ledger.sql(f'SELECT {quoted} FROM "{name}" LIMIT {MAX_GENERIC_ROWS}')
        out[name] = {"doc": t.doc, "columns": cols, "count": total,
                     "rows": [[_plain(v, c) for v, c in zip(r, cols, strict=True)]
                              for r in rows]}
    return out
