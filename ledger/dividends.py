"""Periods, the common-income pool and equal dividends (DESIGN 6.7).

At each period close (after the assets module's rent and return steps, which add to
the pool) the pool is split among the members at that moment: each gets
`floor(pool / members)`, recorded as an entitlement; the remainder stays in the pool
for the next period. Entitlements are money held for their member until claimed with
`dividend.claim`, which is valid once per period and still valid after the member
leaves (the share is given up, what it earned is not).
"""

from __future__ import annotations

from ledger.money import credit, take_common_income
from ledger.rules import Call, Exec, Result, Rules, TxRejected

CLOSE_ORDER = 300


def install(rules: Rules) -> None:
    rules.table("periods", [("period", int)],
                [("start_ms", int), ("end_ms", int), ("closed_height", int),
                 ("closed_ms", int), ("pool", int), ("members", int), ("share", int),
                 ("carry", int)],
                "closed periods: the pool split, the per-member share and the carry")
    rules.table("dividends", [("member", bytes), ("period", int)],
                [("amount", int), ("claimed_height", int)],
                "entitlements; claimed_height 0 while unclaimed")
    rules.money_holder("unclaimed dividends", lambda s: sum(
        int(r["amount"]) for r in s.data["dividends"].values() if not r["claimed_height"]))
    rules.on_period_close(CLOSE_ORDER, "dividends", close)
    rules.on_tx("dividend.claim", claim)


def close(ex: Exec, period: int) -> None:
    pool = ex.scalar("pool")
    members = ex.state.keys("members")
    n = len(members)
    share = pool // n if n else 0
    if share:
        for m in members:
            ex.put("dividends", (m, period), {"amount": share, "claimed_height": 0})
        take_common_income(ex, share * n)
    ex.put("periods", period, {"start_ms": ex.scalar("period_start_ms"),
                               "end_ms": ex.scalar("period_end_ms"),
                               "closed_height": ex.height, "closed_ms": ex.time_ms,
                               "pool": pool, "members": n, "share": share,
                               "carry": pool - share * n})


def claim(ex: Exec, tx: Call) -> Result:
    total = 0
    rows = []
    for period in tx.args["periods"]:
        key = (tx.signer, period)
        row = ex.get("dividends", key)
        if row is None:
            if period >= ex.period:
                raise TxRejected(f"period {period} has not closed yet (open period is "
                                 f"{ex.period})")
            raise TxRejected(f"no dividend for period {period} for this key")
        if row["claimed_height"]:
            raise TxRejected(f"dividend for period {period} already claimed at height "
                             f"{row['claimed_height']}")
        row["claimed_height"] = ex.height
        rows.append((key, row))
        total += int(row["amount"])
    for key, row in rows:
        ex.put("dividends", key, row)
    credit(ex, tx.signer, total)
    return {"claimed": total}
