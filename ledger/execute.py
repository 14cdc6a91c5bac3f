"""Executing a block's worth of state changes: period closes, hooks, transactions.

The executor is pure: it reads the settled state, runs the rules, and returns the
block's change set and the resulting state root, leaving the state as it found it
(the undo log is rolled back). Committing the change set is the ledger's decision.

Order (DESIGN 6.5, issue 3): every period close the block's time crosses, each in turn
with the registered steps in their order; then the start-of-block hooks (time
deadlines); then the evidence the block carries; then each transaction in order; then
the validator set the new state produces is scheduled two heights ahead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ledger.core import schedule_validators
from ledger.genesis import Genesis
from ledger.money import new_account
from ledger.multiset_hash import MultisetHash
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Change, State
from protocol.crypto import id_text
from protocol.encoding import encode
from protocol.transactions import Transaction
from protocol.votes import Evidence


class BlockRejected(Exception):
    """A block that is invalid; `reason` says exactly why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TxOutcome(NamedTuple):
    id: bytes
    kind: str
    signer: bytes
    nonce: int
    result: Result


@dataclass(frozen=True)
class Executed:
    """What a block did to the state, ready to commit."""

    height: int
    time_ms: int
    changes: list[Change]
    state_root: bytes
    hash: MultisetHash
    outcomes: list[TxOutcome]
    included: list[Transaction]
    rejected: list[tuple[bytes, str]]
    new_validators: bytes | None
    settled_root: bytes
    """The root this was executed on top of (a cached result is valid only on it)."""


_make = tuple.__new__
"""Builds NamedTuples (`Call`) without their Python-level constructor: a hot path."""


def nonce_reason(signer: bytes, nonce: int, last: int) -> str:
    if nonce <= last:
        return (f"nonce {nonce} was already used by {id_text(signer)}: the next nonce is "
                f"{last + 1}")
    return f"nonce {nonce} is not the next nonce {last + 1} for {id_text(signer)}"


def run_tx(ex: Exec, tx: Transaction, index: int) -> Result:
    """Execute one transaction or raise `TxRejected`, leaving no trace if it fails."""
    state = ex.state
    env = tx.envelope
    signer = env.signer
    body = env.body
    acct = state.data["accounts"].get(signer)
    last = acct["nonce"] if acct is not None else 0
    nonce = body["nonce"]
    if nonce != last + 1:
        raise TxRejected(nonce_reason(signer, nonce, last))
    kind = body["kind"]
    handler = ex.rules.handlers.get(kind)
    if handler is None:
        raise TxRejected(f"{kind} is not enabled on this ledger yet")
    mark = len(state.undo)
    try:
        row = dict(acct) if acct is not None else new_account()
        row["nonce"] = nonce
        # A well-formed row by construction: written without the per-write check.
        state.undo.append(("accounts", signer, acct))
        state.data["accounts"][signer] = row
        call = _make(Call, (tx.id, signer, kind, nonce, dict(body["args"]), index))
        return handler(ex, call)
    except TxRejected:
        state.rollback(mark)
        raise
    except Exception as exc:  # a rule's bug must not split nodes or crash them; same everywhere
        state.rollback(mark)
        raise TxRejected(f"internal error in {kind}: {type(exc).__name__}: {exc}") from exc


def close_periods(ex: Exec) -> int:
    """Close every period whose end the block's time reached. Returns how many."""
    closed = 0
    while ex.time_ms >= ex.scalar("period_end_ms"):
        period = ex.scalar("period")
        for _order, _name, step in ex.rules.close_steps:
            step(ex, period)
        end = ex.scalar("period_end_ms")
        ex.set_scalar("period", period + 1)
        ex.set_scalar("period_start_ms", end)
        ex.set_scalar("period_end_ms", end + ex.param("period_seconds") * 1000)
        closed += 1
    return closed


def record_evidence(ex: Exec, evidence: Sequence[Evidence]) -> None:
    for e in evidence:
        key = e.hash()
        if ex.has("evidence", key):
            raise BlockRejected(f"evidence {key.hex()} is already recorded")
        ex.put("evidence", key, {"validator": e.a.validator, "height": e.a.height,
                                 "round": e.a.round, "included_height": ex.height,
                                 "raw": encode(e.to_wire())})


def execute_block(state: State, rules: Rules, genesis: Genesis, height: int, time_ms: int,
                  txs: Sequence[Transaction], evidence: Sequence[Evidence] = (), *,
                  skip_invalid: bool = False, max_txs: int | None = None,
                  max_bytes: int | None = None) -> Executed:
    """Run one block on top of the settled state; the state is left unchanged.

    With `skip_invalid` (building a block), failing transactions are left out and
    reported; otherwise the first failure rejects the block. `max_txs`/`max_bytes`
    bound what a builder includes; transactions past them are neither included nor
    rejected.
    """
    assert not state.undo, "execution over an open undo log"
    settled = state.root()
    ex = Exec(state, rules, genesis, height, time_ms)
    outcomes: list[TxOutcome] = []
    included: list[Transaction] = []
    rejected: list[tuple[bytes, str]] = []
    size = 0
    try:
        try:
            close_periods(ex)
            for _order, _name, hook in rules.block_hooks:
                hook(ex)
        except TxRejected as exc:  # a rule that cannot run at a deadline: a bug, loudly
            raise BlockRejected(f"period close or block-start hook failed at height "
                                f"{height}: {exc.reason}") from exc
        record_evidence(ex, evidence)
        for i, tx in enumerate(txs):
            if skip_invalid and ((max_txs is not None and len(included) >= max_txs)
                                 or (max_bytes is not None
                                     and size + len(tx.raw) > max_bytes)):
                break
            try:
                result = run_tx(ex, tx, len(included))
            except TxRejected as exc:
                if skip_invalid:
                    rejected.append((tx.id, exc.reason))
                    continue
                raise BlockRejected(f"transaction {i} ({tx.kind} {tx.id.hex()}) is invalid: "
                                    f"{exc.reason}") from None
            included.append(tx)
            size += len(tx.raw)
            env = tx.envelope
            outcomes.append(TxOutcome(tx.id, env.body["kind"], env.signer, env.body["nonce"],
                                      result))
        new_validators = schedule_validators(ex)
        changes = state.changes()
        state.revert(changes)
    finally:
        state.rollback(0)  # after an exception; a no-op after `revert`
    root, new_hash = state.root_after(changes)
    return Executed(height, time_ms, changes, root, new_hash, outcomes, included, rejected,
                    new_validators, settled)


def genesis_changes(state: State, rules: Rules, genesis: Genesis) -> list[Change]:
    """The rows a genesis document creates, as a change set over the empty state."""
    assert not state.undo
    ex = Exec(state, rules, genesis, 0, genesis.genesis_time_ms)
    try:
        for _order, _name, init in rules.genesis_inits:
            init(ex, genesis)
        return state.changes()
    finally:
        state.rollback(0)
