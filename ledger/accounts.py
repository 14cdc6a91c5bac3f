"""Transfers and withdrawal requests (DESIGN 6.3).

A withdrawal request moves money from the balance into `withdrawals` (pending), where
it stays counted as money held until the treasury records the payout off-ledger with a
k-of-n `treasury.payout`. There is no cancel: a request is a claim on the treasury.
"""

from __future__ import annotations

from ledger.money import credit, debit
from ledger.rules import Call, Exec, Result, Rules, TxRejected

PENDING = "pending"
PAID = "paid"


def install(rules: Rules) -> None:
    rules.table("withdrawals", [("id", bytes)],
                [("account", bytes), ("amount", int), ("reference", str), ("status", str),
                 ("height", int), ("time_ms", int), ("paid_height", int), ("action", bytes)],
                "withdrawal requests (id = the account.withdraw transaction)")
    rules.money_holder("pending withdrawals", lambda s: sum(
        int(r["amount"]) for r in s.data["withdrawals"].values() if r["status"] == PENDING))
    rules.on_tx("account.transfer", transfer)
    rules.on_tx("account.withdraw", withdraw)


def transfer(ex: Exec, tx: Call) -> Result:
    to: bytes = tx.args["to"]
    if to == tx.signer:
        raise TxRejected("a transfer to oneself moves nothing")
    amount: int = tx.args["amount"]
    debit(ex, tx.signer, amount)
    credit(ex, to, amount)
    return None


def withdraw(ex: Exec, tx: Call) -> Result:
    amount: int = tx.args["amount"]
    debit(ex, tx.signer, amount)
    ex.put("withdrawals", tx.id, {"account": tx.signer, "amount": amount,
                                  "reference": tx.args["reference"], "status": PENDING,
                                  "height": ex.height, "time_ms": ex.time_ms,
                                  "paid_height": 0, "action": b""})
    return {"withdrawal": tx.id.hex()}
