"""Bond series and their holders (DESIGN 6.4-6.6): issue, service, transfer, refund, liquidation.

A series is issued at par when its asset's bond auction clears: face = the price,
rate = the stop-out rate, each winner's holding = its allocation. It is `funded` while
the money waits in escrow, `active` from the purchase (interest from the rental's first
period), and ends `redeemed` (outstanding reached zero: the asset is the commune's),
`cancelled` (purchase failed, escrow refunded) or `liquidated` (sale proceeds paid,
the shortfall written off).

Holdings are keyed by (asset, holder): a holder's bonds in one series are one position,
so every split is "across the holders, pro rata to their outstanding face" (DESIGN 6.5).
The order of positions, which breaks largest-remainder ties, is the commit order of the
bid that created each position: a bidder's first winning bid places them, and a key
that receives bonds by transfer is placed after every existing position. The series row
keeps that order as the concatenated holder ids, so a close walks the holders directly.

Per holding: `face` is what the key acquired (allocation plus transfers in), `sent` the
outstanding face it transferred away, so `outstanding = face - sent - principal_received
- written_off` always, and over the holdings `sum(face - sent)` is the series' face.

Money leaves a series only as a payment to holders, credited after every row of the
series is written: a credit can pay the holder's arrears, which parks the money on the
indebted asset (`assets.pending`) instead of re-entering any service.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.bonds import (
    HolderPayment,
    Service,
    level_payment,
    liquidate,
    service_period,
    split_service,
)
from ledger.money import credit
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Row
from protocol.crypto import PUBLIC_KEY_LEN, id_text

FUNDED = "funded"
ACTIVE = "active"
REDEEMED = "redeemed"
CANCELLED = "cancelled"
LIQUIDATED = "liquidated"

MAX_HOLDERS = 10_000
"""Positions per series (as many as an auction can have winners)."""


def install(rules: Rules) -> None:
    rules.table("series", [("asset", bytes)],
                [("rate_bps", int), ("face", int), ("outstanding", int),
                 ("unpaid_interest", int), ("maturity", int), ("level_payment", int),
                 ("issued_period", int), ("start_period", int), ("status", str),
                 ("holders", bytes), ("interest_paid", int), ("principal_paid", int),
                 ("redeemed_period", int), ("principal_written_off", int),
                 ("interest_written_off", int)],
                "bond series, one per funded asset; start_period = first period of interest "
                "(-1 until bought); holders = holder ids in position order")
    rules.table("bonds", [("asset", bytes), ("holder", bytes)],
                [("bid", int), ("face", int), ("outstanding", int), ("interest_received", int),
                 ("principal_received", int), ("sent", int), ("written_off", int)],
                "holdings: bid = commit order of the bid that created it (0: by transfer)")
    rules.on_tx("bond.transfer", transfer)


def holders(series: Row) -> list[bytes]:
    packed: bytes = series["holders"]
    assert len(packed) % PUBLIC_KEY_LEN == 0
    return [packed[i:i + PUBLIC_KEY_LEN] for i in range(0, len(packed), PUBLIC_KEY_LEN)]


def _holding(bid: int) -> Row:
    return {"bid": bid, "face": 0, "outstanding": 0, "interest_received": 0,
            "principal_received": 0, "sent": 0, "written_off": 0}


def _check_holding(b: Row) -> None:
    assert b["outstanding"] == b["face"] - b["sent"] - b["principal_received"] - \
        b["written_off"] >= 0, b


def issue(ex: Exec, asset: bytes, face: int, rate_bps: int, maturity: int,
          winners: Sequence[tuple[bytes, int, int]]) -> None:
    """Issue a series at par: `winners` = (bidder, allocation, bid order) in commit order."""
    order: list[bytes] = []
    rows: dict[bytes, Row] = {}
    for bidder, allocation, bid in winners:
        assert allocation > 0
        if bidder not in rows:
            order.append(bidder)
            rows[bidder] = _holding(bid)
        row = rows[bidder]
        row["face"] += allocation
        row["outstanding"] += allocation
    assert sum(r["face"] for r in rows.values()) == face
    for h in order:
        ex.put("bonds", (asset, h), rows[h])
    ex.put("series", asset, {
        "rate_bps": rate_bps, "face": face, "outstanding": face, "unpaid_interest": 0,
        "maturity": maturity,
        "level_payment": level_payment(face, rate_bps, maturity, ex.param("periods_per_year")),
        "issued_period": ex.period, "start_period": -1, "status": FUNDED,
        "holders": b"".join(order), "interest_paid": 0, "principal_paid": 0,
        "redeemed_period": -1, "principal_written_off": 0, "interest_written_off": 0})


def activate(ex: Exec, asset: bytes, start_period: int) -> None:
    """The asset was bought: interest runs from `start_period` (the rental's first)."""
    s = ex.get("series", asset)
    assert s is not None and s["status"] == FUNDED
    s["status"] = ACTIVE
    s["start_period"] = start_period
    ex.put("series", asset, s)


def _rows(ex: Exec, asset: bytes, s: Row) -> tuple[list[bytes], list[Row]]:
    hs = holders(s)
    rows = []
    for h in hs:
        row = ex.get("bonds", (asset, h))
        assert row is not None
        rows.append(row)
    return hs, rows


def _pay(ex: Exec, asset: bytes, s: Row, interest: int, principal: int,
         shares: Sequence[HolderPayment] | None = None,
         written_off: Sequence[int] | None = None) -> None:
    """Split one payment across the holders, write everything, then credit them.

    `shares` (and `written_off`) come precomputed for a liquidation; otherwise the
    payment is split pro rata to the outstanding face before it, by largest remainder.
    """
    hs, rows = _rows(ex, asset, s)
    if shares is None:
        shares = split_service([int(r["outstanding"]) for r in rows], interest, principal)
    losses = written_off if written_off is not None else [0] * len(hs)
    assert sum(p.interest for p in shares) == interest
    assert sum(p.principal for p in shares) == principal
    for h, row, pay, loss in zip(hs, rows, shares, losses, strict=True):
        row["outstanding"] -= pay.principal + loss
        row["interest_received"] += pay.interest
        row["principal_received"] += pay.principal
        row["written_off"] += loss
        _check_holding(row)
        ex.put("bonds", (asset, h), row)
    s["outstanding"] = int(s["outstanding"]) - principal - sum(losses)
    s["interest_paid"] = int(s["interest_paid"]) + interest
    s["principal_paid"] = int(s["principal_paid"]) + principal
    assert s["outstanding"] >= 0
    ex.put("series", asset, s)
    for h, pay in zip(hs, shares, strict=True):
        credit(ex, h, pay.interest + pay.principal)


def accrues(ex: Exec, asset: bytes, period: int) -> bool:
    """Does the close of `period` service this asset's series?"""
    s = ex.peek("series", asset)
    return s is not None and s["status"] == ACTIVE and period >= int(s["start_period"])


def service(ex: Exec, asset: bytes, period: int, income: int) -> Service:
    """One period close (DESIGN 6.5): `income` (rent, 0 if none) services the series.

    Unpaid interest, this period's interest, then principal; the surplus is returned
    for common income. Redeems the series when its principal reaches zero.
    """
    s = ex.get("series", asset)
    assert s is not None and s["status"] == ACTIVE and period >= s["start_period"]
    svc = service_period(int(s["outstanding"]), int(s["unpaid_interest"]), income,
                         int(s["rate_bps"]), ex.param("periods_per_year"))
    s["unpaid_interest"] = svc.unpaid_interest
    if svc.principal_paid == s["outstanding"]:
        s["status"] = REDEEMED
        s["redeemed_period"] = period
    _pay(ex, asset, s, svc.interest_paid, svc.principal_paid)
    return svc


def outstanding(ex: Exec, asset: bytes) -> int:
    """Principal still owed by the asset's series (0 without a live series)."""
    s = ex.peek("series", asset)
    if s is None or s["status"] not in (FUNDED, ACTIVE):
        return 0
    return int(s["outstanding"])


def refund(ex: Exec, asset: bytes) -> int:
    """The purchase failed: every holder gets its outstanding face back; series cancelled.

    Nothing was paid before the purchase, so the holdings' outstanding face adds up to
    the escrow exactly (transfers move face, never create it).
    """
    s = ex.get("series", asset)
    assert s is not None and s["status"] == FUNDED
    s["status"] = CANCELLED
    total = int(s["outstanding"])
    _pay(ex, asset, s, 0, total)
    return total


def liquidate_series(ex: Exec, asset: bytes, proceeds: int) -> tuple[int, int]:
    """Pay sale proceeds to the holders (DESIGN 6.6). Returns (surplus, shortfall).

    Unpaid interest first, then principal, each pro rata to outstanding face; what the
    proceeds do not cover is written off pro rata; the series is closed.
    """
    s = ex.get("series", asset)
    if s is None or s["status"] != ACTIVE:
        return proceeds, 0
    _hs, rows = _rows(ex, asset, s)
    liq = liquidate(proceeds, [int(r["outstanding"]) for r in rows], int(s["unpaid_interest"]))
    s["status"] = LIQUIDATED
    s["unpaid_interest"] = 0
    s["principal_written_off"] = liq.principal_written_off
    s["interest_written_off"] = liq.interest_written_off
    _pay(ex, asset, s, liq.interest_paid, liq.principal_paid, liq.holders, liq.shortfall)
    assert s["outstanding"] == 0
    return liq.surplus, liq.principal_written_off


def transfer(ex: Exec, tx: Call) -> Result:
    """`bond.transfer`: bonds are property, unlike shares (DESIGN 6.5)."""
    asset: bytes = tx.args["asset"]
    to: bytes = tx.args["to"]
    amount: int = tx.args["amount"]
    if to == tx.signer:
        raise TxRejected("a bond transfer to oneself moves nothing")
    s = ex.get("series", asset)
    if s is None:
        raise TxRejected(f"asset {asset.hex()} has no bond series")
    if s["status"] not in (FUNDED, ACTIVE):
        raise TxRejected(f"the bond series of asset {asset.hex()} is {s['status']}: nothing "
                         "outstanding to transfer")
    mine = ex.get("bonds", (asset, tx.signer))
    have = 0 if mine is None else int(mine["outstanding"])
    if have < amount:
        raise TxRejected(f"{id_text(tx.signer)} holds {have} outstanding face of asset "
                         f"{asset.hex()}, not {amount}")
    assert mine is not None
    mine["outstanding"] = have - amount
    mine["sent"] += amount
    _check_holding(mine)
    ex.put("bonds", (asset, tx.signer), mine)
    theirs = ex.get("bonds", (asset, to))
    if theirs is None:
        hs = holders(s)
        if len(hs) >= MAX_HOLDERS:
            raise TxRejected(f"the series already has {MAX_HOLDERS} holders, the most it takes")
        theirs = _holding(0)
        s["holders"] = s["holders"] + to
        ex.put("series", asset, s)
    theirs["face"] += amount
    theirs["outstanding"] += amount
    _check_holding(theirs)
    ex.put("bonds", (asset, to), theirs)
    return {"outstanding": int(theirs["outstanding"])}
