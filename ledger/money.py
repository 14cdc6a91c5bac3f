"""Accounts and the only ways money moves: `credit`, `debit`, and the treasury flows.

Conservation (DESIGN 6.3) is an identity between two sides:

    money held = deposits - payouts - acquisitions + liquidation proceeds

where "money held" sums every registered money holder (balances, pending withdrawals,
the common-income pool, unclaimed dividends, and whatever escrows other modules
register). `record_flow` is the only way the right-hand side changes, and every
module moves money between holders, so the identity holds after every block; tests and
the auditor check it with `conservation`.

Arrears are debts, not money: an account's arrears entries are an ordered list (oldest
first), each with a kind and a reference; the module that created the debt registers
a payee per kind. `credit` pays arrears before anything reaches the balance (DESIGN
6.5: "a deposit or transfer to that account pays them before anything else").

The account row also carries the signer's nonce: a key that signs or receives anything
has one row, and a transaction usually rewrites one row instead of two.
"""

from __future__ import annotations

from ledger.rules import Exec, MoneyHolder, Rules, TxRejected
from ledger.state import Row, State
from protocol.crypto import id_text

MAX_BALANCE = 2**62
"""Bound on any balance or running total; keeps every sum inside SQLite's int64."""

FLOWS = ("deposits", "payouts", "acquisitions", "liquidations")


def install(rules: Rules) -> None:
    rules.table("accounts", [("id", bytes)],
                [("balance", int), ("nonce", int), ("arrears", int), ("arrears_head", int),
                 ("arrears_tail", int)],
                "every key that signed or received anything: balance, last nonce, total "
                "arrears and the range of its arrears entries")
    rules.table("arrears", [("account", bytes), ("n", int)],
                [("amount", int), ("kind", str), ("ref", bytes), ("since_ms", int)],
                "debts an account pays before its balance grows, oldest (lowest n) first")
    rules.money_holder("balances", lambda s: sum(
        int(r["balance"]) for r in s.data["accounts"].values()))
    rules.money_holder("common income pool", lambda s: _scalar(s, "pool"))


def _scalar(state: State, name: str) -> int:
    row = state.peek("scalars", name)
    return 0 if row is None else int(row["value"])


def new_account() -> Row:
    return {"balance": 0, "nonce": 0, "arrears": 0, "arrears_head": 0, "arrears_tail": 0}


def account(ex: Exec, who: bytes) -> Row:
    """A copy of the account row (a fresh zero row if the key has none)."""
    return ex.get("accounts", who) or new_account()


def balance(ex: Exec, who: bytes) -> int:
    row = ex.peek("accounts", who)
    return 0 if row is None else int(row["balance"])


def debit(ex: Exec, who: bytes, amount: int) -> None:
    """Take `amount` from a balance, or reject the transaction."""
    assert amount >= 0
    row = account(ex, who)
    has = int(row["balance"])
    if has < amount:
        raise TxRejected(f"insufficient balance: {id_text(who)} has {has}, needs {amount}")
    row["balance"] = has - amount
    ex.put("accounts", who, row)


def credit(ex: Exec, who: bytes, amount: int) -> int:
    """Give `amount` to an account, paying its arrears first.

    Returns the part that reached the balance. Arrears entries are settled and written
    before their payees run, so a payee that credits this same account again sees the
    debt already reduced (and pays what remains, oldest first).
    """
    assert amount >= 0
    if amount == 0:
        return 0
    row = account(ex, who)
    payments: list[tuple[str, bytes, int]] = []
    rest = amount
    if row["arrears"]:
        head, tail = int(row["arrears_head"]), int(row["arrears_tail"])
        while rest and head < tail:
            entry = ex.get("arrears", (who, head))
            assert entry is not None, "arrears entries are contiguous"
            pay = min(rest, int(entry["amount"]))
            rest -= pay
            payments.append((entry["kind"], entry["ref"], pay))
            if pay == entry["amount"]:
                ex.delete("arrears", (who, head))
                head += 1
            else:
                entry["amount"] = int(entry["amount"]) - pay
                ex.put("arrears", (who, head), entry)
        row["arrears"] = int(row["arrears"]) - (amount - rest)
        row["arrears_head"] = head
        assert row["arrears"] >= 0 and (row["arrears"] == 0) == (head == tail)
        ex.put("accounts", who, row)
    if payments:
        for kind, ref, pay in payments:
            ex.rules.arrears_payees[kind](ex, who, ref, pay)
        row = account(ex, who)  # payees may have written this account
    if rest:
        new = row["balance"] + rest
        if new > MAX_BALANCE:
            raise TxRejected(f"balance of {id_text(who)} would exceed {MAX_BALANCE}")
        row["balance"] = new
        ex.put("accounts", who, row)
    return rest


def add_arrears(ex: Exec, who: bytes, amount: int, kind: str, ref: bytes) -> None:
    """Record a debt of `amount` (of a registered kind) that later credits pay first."""
    assert amount > 0 and kind in ex.rules.arrears_payees, kind
    row = account(ex, who)
    tail = int(row["arrears_tail"])
    ex.put("arrears", (who, tail), {"amount": amount, "kind": kind, "ref": ref,
                                    "since_ms": ex.time_ms})
    row["arrears_tail"] = tail + 1
    row["arrears"] = int(row["arrears"]) + amount
    ex.put("accounts", who, row)


def add_common_income(ex: Exec, amount: int) -> None:
    """Money that belongs to the commune as a whole; split at the next period close."""
    assert amount >= 0
    if amount:
        ex.set_scalar("pool", ex.scalar("pool") + amount)


def take_common_income(ex: Exec, amount: int) -> None:
    """Money leaving the pool (the dividend split moves it into entitlements)."""
    pool = ex.scalar("pool")
    assert 0 <= amount <= pool
    ex.set_scalar("pool", pool - amount)


def record_flow(ex: Exec, flow: str, amount: int) -> None:
    """Money crossing the treasury boundary; the caller moves the matching money."""
    assert flow in FLOWS and amount >= 0
    total = ex.scalar(flow) + amount
    if total > MAX_BALANCE:
        raise TxRejected(f"treasury {flow} total would exceed {MAX_BALANCE}")
    ex.set_scalar(flow, total)


def conservation(state: State, holders: list[tuple[str, MoneyHolder]]
                 ) -> tuple[int, int, dict[str, int]]:
    """(money held, net inflow, held per holder). The two totals must be equal."""
    held = {name: int(fn(state)) for name, fn in holders}
    inflow = (_scalar(state, "deposits") - _scalar(state, "payouts")
              - _scalar(state, "acquisitions") + _scalar(state, "liquidations"))
    return sum(held.values()), inflow, held
