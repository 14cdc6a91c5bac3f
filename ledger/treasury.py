"""The treasury: money enters and leaves the ledger only through k-of-n actions (DESIGN 6.3).

One treasury signer proposes an action (`treasury.deposit`, `treasury.payout`, and the
asset kinds the assets module registers); other signers approve it with
`treasury.approve`; it executes in the transaction that brings the approvals of current
signers to the threshold (at once when the threshold is 1). The action's own check runs
at the proposal and again at execution, so an action that became impossible meanwhile
(a withdrawal paid by another action) makes the approving transaction fail with the
reason instead of executing twice.

Signers must be members when they act: a signer who leaves the commune stays listed
until governance changes the list, but their approvals no longer count. This never
lowers the threshold silently; governance fixes a treasury that lost its signers.
"""

from __future__ import annotations

from typing import Any

from ledger.accounts import PAID, PENDING
from ledger.genesis import Genesis
from ledger.money import credit, record_flow
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from protocol.crypto import id_text
from protocol.encoding import decode, encode

ACTION_PENDING = "pending"
ACTION_EXECUTED = "executed"


def install(rules: Rules) -> None:
    rules.table("treasury_signers", [("id", bytes)], [("since_height", int)],
                "who may propose and approve treasury actions")
    rules.table("treasury_actions", [("id", bytes)],
                [("kind", str), ("proposer", bytes), ("args", bytes), ("approvals", int),
                 ("status", str), ("height", int), ("time_ms", int), ("executed_height", int)],
                "proposed treasury actions (id = the proposing transaction); args canonical")
    rules.table("treasury_approvals", [("action", bytes), ("signer", bytes)],
                [("height", int)], "approvals, the proposer's included")
    rules.on_genesis(20, "treasury", _init)
    for kind in ("treasury.deposit", "treasury.payout", "treasury.acquire",
                 "treasury.acquire_failed", "treasury.liquidated"):
        rules.on_tx(kind, propose)
    rules.on_tx("treasury.approve", approve)
    rules.treasury_action("treasury.deposit", _check_deposit, _deposit)
    rules.treasury_action("treasury.payout", _check_payout, _payout)


def _init(ex: Exec, g: Genesis) -> None:
    for s in g.treasury_signers:
        ex.put("treasury_signers", s, {"since_height": 0})


def signers(ex: Exec) -> list[bytes]:
    return ex.state.keys("treasury_signers")


def threshold(ex: Exec) -> int:
    return ex.scalar("treasury_threshold")


def set_treasury(ex: Exec, new_signers: list[bytes], new_threshold: int) -> None:
    """Replace signers and threshold (governance)."""
    assert 1 <= new_threshold <= len(new_signers)
    old = set(signers(ex))
    for s in old - set(new_signers):
        ex.delete("treasury_signers", s)
    for s in sorted(set(new_signers) - old):
        ex.put("treasury_signers", s, {"since_height": ex.height})
    ex.set_scalar("treasury_threshold", new_threshold)


def _require_signer(ex: Exec, who: bytes) -> None:
    if not ex.has("treasury_signers", who):
        raise TxRejected(f"{id_text(who)} is not a treasury signer")
    if not ex.has("members", who):
        raise TxRejected(f"treasury signer {id_text(who)} is no longer a member and cannot act")


def propose(ex: Exec, tx: Call) -> Result:
    _require_signer(ex, tx.signer)
    action = ex.rules.treasury_actions.get(tx.kind)
    if action is None:
        raise TxRejected(f"{tx.kind} is not enabled on this ledger yet")
    action.check(ex, tx.args)
    ex.put("treasury_actions", tx.id, {"kind": tx.kind, "proposer": tx.signer,
                                       "args": encode(tx.args), "approvals": 1,
                                       "status": ACTION_PENDING, "height": ex.height,
                                       "time_ms": ex.time_ms, "executed_height": 0})
    ex.put("treasury_approvals", (tx.id, tx.signer), {"height": ex.height})
    return _maybe_execute(ex, tx.id)


def approve(ex: Exec, tx: Call) -> Result:
    _require_signer(ex, tx.signer)
    action_id: bytes = tx.args["action"]
    row = ex.peek("treasury_actions", action_id)
    if row is None:
        raise TxRejected(f"no treasury action {action_id.hex()}")
    if row["status"] != ACTION_PENDING:
        raise TxRejected(f"treasury action {action_id.hex()} already executed")
    if ex.has("treasury_approvals", (action_id, tx.signer)):
        raise TxRejected(f"{id_text(tx.signer)} already approved treasury action "
                         f"{action_id.hex()}")
    ex.put("treasury_approvals", (action_id, tx.signer), {"height": ex.height})
    return _maybe_execute(ex, action_id)


def _maybe_execute(ex: Exec, action_id: bytes) -> Result:
    row = ex.get("treasury_actions", action_id)
    assert row is not None
    valid = sum(1 for s in signers(ex)
                if ex.has("treasury_approvals", (action_id, s)) and ex.has("members", s))
    row["approvals"] = valid
    need = threshold(ex)
    result: dict[str, Any] = {"approvals": valid, "threshold": need, "executed": 0}
    if valid >= need:
        action = ex.rules.treasury_actions[row["kind"]]
        args = decode(row["args"])
        action.check(ex, args)
        out = action.execute(ex, action_id, args)
        row["status"] = ACTION_EXECUTED
        row["executed_height"] = ex.height
        result["executed"] = 1
        if out:
            result.update(out)
    ex.put("treasury_actions", action_id, row)
    return result


def _check_deposit(ex: Exec, args: dict[str, Any]) -> None:
    pass  # any key may receive a deposit; the amount is bounded by the schema


def _deposit(ex: Exec, action_id: bytes, args: dict[str, Any]) -> Result:
    record_flow(ex, "deposits", args["amount"])
    credit(ex, args["account"], args["amount"])
    return None


def _check_payout(ex: Exec, args: dict[str, Any]) -> None:
    w = ex.peek("withdrawals", args["withdrawal"])
    if w is None:
        raise TxRejected(f"no withdrawal request {args['withdrawal'].hex()}")
    if w["status"] != PENDING:
        raise TxRejected(f"withdrawal {args['withdrawal'].hex()} is already {w['status']}")


def _payout(ex: Exec, action_id: bytes, args: dict[str, Any]) -> Result:
    w = ex.get("withdrawals", args["withdrawal"])
    assert w is not None
    record_flow(ex, "payouts", int(w["amount"]))
    w["status"] = PAID
    w["paid_height"] = ex.height
    w["action"] = action_id
    ex.put("withdrawals", args["withdrawal"], w)
    return {"paid": int(w["amount"])}
