"""Rentals: the purchase that starts them, rent at every period close, arrears, `rental.end`.

DESIGN 6.4-6.5. `treasury.acquire` (k-of-n) records that the escrowed bond money bought
the asset: the escrow leaves the ledger, the series starts to accrue interest with the
next period, and the requester's rental runs from the next period for its term. The
rental row of an asset is its current (or last) rental; a re-auction replaces it.

At each period close (step 110, before returns at 210 and dividends at 300), for every
asset in creation order: an active rental is charged its rent from the lessee's balance
-- all of it, or nothing and the period is missed (the rent becomes arrears of kind
`asset-rent` on the lessee) -- and the asset's income of the period (rent charged plus
arrears paid since the last close) services its series if one is running, or is common
income. A period without income still accrues the series' interest as unpaid interest.

Close orders 110 and 210 keep DESIGN's order (rent, returns, dividends at 300) while
leaving 100 and 200 free for the stand-in steps of the ledger core's own tests.
"""

from __future__ import annotations

from typing import Any

from ledger import assets, series
from ledger.money import add_arrears, add_common_income, balance, debit, record_flow
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Row

CLOSE_ORDER = 110

ACTIVE = "active"
ENDED = "ended"
"""Ended by the lessee's notice."""
EXPIRED = "expired"
"""Its term ran out."""
DEFAULTED = "defaulted"
"""`grace_periods` consecutive periods missed."""


def install(rules: Rules) -> None:
    rules.table("rentals", [("asset", bytes)],
                [("number", int), ("lessee", bytes), ("rent", int), ("term", int),
                 ("start", int), ("last", int), ("missed", int), ("missed_total", int),
                 ("paid", int), ("status", str), ("notice_period", int),
                 ("ended_period", int)],
                "each asset's current or last rental: periods start..last are charged; "
                "missed = consecutive missed periods; number 0 = the requester's, k+1 = "
                "the winner of re-auction k")
    rules.treasury_action("treasury.acquire", _check_acquire, _acquire)
    rules.treasury_action("treasury.acquire_failed", _check_acquire, _acquire_failed)
    rules.arrears_payee(assets.RENT_ARREARS, _arrears_paid)
    rules.on_period_close(CLOSE_ORDER, "rent and bond service", close)
    rules.on_tx("rental.end", end)


def start_rental(ex: Exec, asset: bytes, number: int, lessee: bytes, rent: int, term: int,
                 start: int) -> None:
    ex.put("rentals", asset, {"number": number, "lessee": lessee, "rent": rent, "term": term,
                              "start": start, "last": start + term - 1, "missed": 0,
                              "missed_total": 0, "paid": 0, "status": ACTIVE,
                              "notice_period": -1, "ended_period": -1})


def active_rental(ex: Exec, asset: bytes) -> Row | None:
    a = ex.peek("assets", asset)
    r = ex.get("rentals", asset)
    if a is None or a["status"] != assets.RENTED or r is None or r["status"] != ACTIVE:
        return None
    return r


# ---- the purchase ----------------------------------------------------------------------


def _check_acquire(ex: Exec, args: dict[str, Any]) -> None:
    a = assets.get_asset(ex, args["asset"])
    assets.require_status(a, args["asset"], (assets.FUNDED,), "record its purchase")


def _acquire(ex: Exec, action_id: bytes, args: dict[str, Any]) -> Result:
    asset: bytes = args["asset"]
    a = assets.get_asset(ex, asset)
    price = int(a["price"])
    assert a["escrow"] == price
    record_flow(ex, "acquisitions", price)
    start = ex.period + 1
    a.update(escrow=0, status=assets.RENTED)
    assets.put_asset(ex, asset, a)
    series.activate(ex, asset, start)
    start_rental(ex, asset, 0, a["requester"], int(a["rent"]), int(a["term"]), start)
    return {"acquired": price, "rental_start": start}


def _acquire_failed(ex: Exec, action_id: bytes, args: dict[str, Any]) -> Result:
    asset: bytes = args["asset"]
    a = assets.get_asset(ex, asset)
    a.update(escrow=0, status=assets.CANCELLED)
    assets.put_asset(ex, asset, a)
    refunded = series.refund(ex, asset)
    assert refunded == a["price"]
    return {"refunded": refunded}


# ---- rent at every close ---------------------------------------------------------------


def _arrears_paid(ex: Exec, debtor: bytes, asset: bytes, amount: int) -> None:
    """Arrears paid by later money: income of the asset, applied at the next close."""
    a = ex.get("assets", asset)
    assert a is not None
    a["pending"] = int(a["pending"]) + amount
    assets.put_asset(ex, asset, a)


def _charge(ex: Exec, asset: bytes, period: int) -> int:
    """Charge the active rental's rent for `period`, if it runs then. Returns what was paid."""
    r = active_rental(ex, asset)
    if r is None or not r["start"] <= period <= r["last"]:
        return 0
    rent = int(r["rent"])
    lessee: bytes = r["lessee"]
    paid = 0
    if balance(ex, lessee) >= rent:
        debit(ex, lessee, rent)
        r["missed"] = 0
        r["paid"] = int(r["paid"]) + rent
        paid = rent
    else:
        r["missed"] = int(r["missed"]) + 1
        r["missed_total"] = int(r["missed_total"]) + 1
    ex.put("rentals", asset, r)
    if not paid:
        add_arrears(ex, lessee, rent, assets.RENT_ARREARS, asset)
    return paid


def close(ex: Exec, period: int) -> None:
    for asset in assets.live_assets(ex):
        income = _charge(ex, asset, period)
        a = ex.get("assets", asset)
        assert a is not None
        if a["pending"]:
            income += int(a["pending"])
            a["pending"] = 0
            assets.put_asset(ex, asset, a)
        if series.accrues(ex, asset, period):
            svc = series.service(ex, asset, period, income)
            add_common_income(ex, svc.surplus)
            if series.outstanding(ex, asset) == 0:
                a = ex.get("assets", asset)  # paying holders may have parked arrears here
                assert a is not None
                if not a["owned"]:
                    a["owned"] = 1
                    assets.put_asset(ex, asset, a)
        else:
            add_common_income(ex, income)


# ---- ending a rental -------------------------------------------------------------------


def end(ex: Exec, tx: Call) -> Result:
    """`rental.end`: ends at the close of the period `notice_periods` after this one."""
    asset: bytes = tx.args["asset"]
    assets.get_asset(ex, asset)
    r = active_rental(ex, asset)
    if r is None:
        raise TxRejected(f"asset {asset.hex()} has no active rental")
    if r["lessee"] != tx.signer:
        raise TxRejected(f"only the lessee can end the rental of asset {asset.hex()}")
    if r["notice_period"] >= 0:
        raise TxRejected(f"notice was already given in period {r['notice_period']}: the rental "
                         f"ends at the close of period {r['last']}")
    last = ex.period + ex.param("notice_periods")
    if last >= r["last"]:
        raise TxRejected(f"the rental ends at the close of period {r['last']} anyway; with "
                         f"the notice it could end only at the close of period {last}")
    r["notice_period"] = ex.period
    r["last"] = last
    ex.put("rentals", asset, r)
    return {"last_period": last}
