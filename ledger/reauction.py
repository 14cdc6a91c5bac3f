"""Returns, rental re-auctions and liquidation (DESIGN 6.6).

At each period close, after rent (step 210), a rental that defaulted (`grace_periods`
consecutive misses) or whose last period has just closed (term or notice) returns its
asset to the commune, which offers it again to members in a sealed-bid, second-price
rental auction opened right then (its windows are the commune's commit and reveal
parameters, from the time of the closing block). `rent.commit` (members only) locks a
deposit, which may be zero and only backs the no-reveal forfeit (DESIGN's "same
commit-reveal rules": an unrevealed bid forfeits `no_reveal_fee_bps` of its lock);
every lock goes back at the close, the winner's too.

The close (`ledger.auction.clear_rental_auction`, bids in commit order): valid bids offer
at least the reserve -- the series' level payment while bonds are outstanding, else
`min_rent` -- for a term covering the series' remaining maturity, counted from the
period the new rental would start (the one after the close) to the last period of the
series' maturity. Bids of keys that are no longer members are not valid. The winner
rents from the next period at the second price; with no valid bid the asset is
`liquidating` until the treasury records its sale (`treasury.liquidated`, k-of-n), whose
proceeds go to the holders -- unpaid interest first, then principal, pro rata; they bear
the shortfall -- and the rest to common income.
"""

from __future__ import annotations

from typing import Any

from ledger import assets, auctions, rentals, series
from ledger.auction import RentBid, clear_rental_auction, rent_commitment, rental_auction_id
from ledger.membership import require_member
from ledger.money import add_common_income, credit, record_flow
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Row

KIND = "rent"
CLOSE_ORDER = 210
INVALID = "invalid"
"""A revealed rental bid below the reserve, too short, or of a key no longer a member."""


def install(rules: Rules) -> None:
    rules.table("rent_bids", [("auction", bytes), ("bid", int)],
                [("bidder", bytes), ("lock", int), ("rent", int), ("term", int),
                 ("status", str), ("forfeit", int), ("height", int)],
                "sealed rental bids in commit order; rent and term are 0 until revealed")
    rules.money_holder("rental bid locks", lambda s: sum(
        int(r["lock"]) for r in s.data["rent_bids"].values()
        if r["status"] in auctions.UNSETTLED))
    rules.on_period_close(CLOSE_ORDER, "returns and re-auctions", returns)
    rules.on_tx("rent.commit", commit)
    rules.on_tx("rent.reveal", reveal)
    rules.treasury_action("treasury.liquidated", _check_liquidated, _liquidated)


def terms(ex: Exec, asset: bytes, start: int) -> tuple[int, int]:
    """(reserve, shortest valid term) for a rental starting in period `start`."""
    s = ex.peek("series", asset)
    if s is None or series.outstanding(ex, asset) == 0 or s["status"] != series.ACTIVE:
        return ex.param("min_rent"), 0
    end = int(s["start_period"]) + int(s["maturity"])  # first period after the maturity
    return int(s["level_payment"]), max(0, end - start)


def returns(ex: Exec, period: int) -> None:
    grace = ex.param("grace_periods")
    for asset in assets.live_assets(ex):
        r = rentals.active_rental(ex, asset)
        if r is None:
            continue
        if r["missed"] >= grace:
            r["status"] = rentals.DEFAULTED
        elif period >= r["last"]:
            r["status"] = rentals.ENDED if r["notice_period"] >= 0 else rentals.EXPIRED
        else:
            continue
        r["ended_period"] = period
        ex.put("rentals", asset, r)
        _open(ex, asset, period + 1)


def _open(ex: Exec, asset: bytes, period: int) -> None:
    """Offer a returned asset to members; the auction runs in `period`."""
    a = ex.get("assets", asset)
    assert a is not None
    k = int(a["reauctions"])
    a.update(status=assets.REAUCTION, reauctions=k + 1, reauction_round=k)
    assets.put_asset(ex, asset, a)
    reserve, min_term = terms(ex, asset, period + 1)
    auctions.open_auction(ex, rental_auction_id(asset, k), asset, KIND, k,
                          ex.param("commit_seconds"), ex.param("reveal_seconds"),
                          reserve=reserve, min_term=min_term, period=period)


def _what(asset: bytes, k: int) -> str:
    return f"rental re-auction {k} of asset {asset.hex()}"


def _current(ex: Exec, asset: bytes) -> tuple[Row, bytes, int]:
    a = assets.get_asset(ex, asset)
    k = int(a["reauction_round"])
    return a, rental_auction_id(asset, k), k


def commit(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "bid in rental re-auctions")
    asset: bytes = tx.args["asset"]
    a, auction_id, k = _current(ex, asset)
    assets.require_status(a, asset, (assets.REAUCTION,), "bid to rent it")
    lock: int = tx.args["lock"]
    order = auctions.commit_bid(ex, auction_id, _what(asset, k), tx.signer,
                                tx.args["commitment"], lock)
    ex.put("rent_bids", (auction_id, order), {
        "bidder": tx.signer, "lock": lock, "rent": 0, "term": 0, "status": auctions.SEALED,
        "forfeit": 0, "height": ex.height})
    return {"bid": order, "auction": auction_id.hex()}


def reveal(ex: Exec, tx: Call) -> Result:
    asset: bytes = tx.args["asset"]
    _a, auction_id, k = _current(ex, asset)
    rent: int = tx.args["rent"]
    term: int = tx.args["term"]
    commitment = rent_commitment(auction_id, tx.signer, rent, term, tx.args["salt"])
    order = auctions.reveal_order(ex, auction_id, _what(asset, k), commitment)
    bid = ex.get("rent_bids", (auction_id, order))
    assert bid is not None and bid["bidder"] == tx.signer
    if bid["status"] != auctions.SEALED:
        raise TxRejected(f"bid {order} in {_what(asset, k)} is already revealed")
    bid.update(rent=rent, term=term, status=auctions.REVEALED)
    ex.put("rent_bids", (auction_id, order), bid)
    return {"bid": order}


def close(ex: Exec, auction_id: bytes, auction: Row) -> None:
    """Second-price clearing; the winner rents from the next period, else liquidation."""
    asset: bytes = auction["asset"]
    a = ex.peek("assets", asset)
    assert a is not None and a["status"] == assets.REAUCTION
    start = ex.period + 1
    reserve, min_term = terms(ex, asset, start)
    bids: list[tuple[int, Row]] = []
    for order in range(1, int(auction["bids"]) + 1):
        bid = ex.get("rent_bids", (auction_id, order))
        assert bid is not None
        bids.append((order, bid))
    eligible = [(order, bid) for order, bid in bids
                if bid["status"] == auctions.REVEALED and ex.has("members", bid["bidder"])]
    clearing = clear_rental_auction(
        [RentBid(bid["bidder"], int(bid["rent"]), int(bid["term"]), order)
         for order, bid in eligible], reserve, min_term)
    valid = {order for (order, _), ok in zip(eligible, clearing.valid, strict=True) if ok}
    winner = None if clearing.winner is None else eligible[clearing.winner]
    forfeited = 0
    for order, bid in bids:
        if bid["status"] == auctions.SEALED:
            fee = auctions.forfeit_unrevealed(ex, bid["bidder"], int(bid["lock"]))
            bid.update(status=auctions.FORFEITED, forfeit=fee)
            forfeited += fee
        else:
            won = winner is not None and order == winner[0]
            bid["status"] = auctions.WON if won else auctions.LOST if order in valid \
                else INVALID
            credit(ex, bid["bidder"], int(bid["lock"]))
        ex.put("rent_bids", (auction_id, order), bid)
    auction.update(reserve=reserve, min_term=min_term)
    a = ex.get("assets", asset)
    assert a is not None
    if winner is None:
        a["status"] = assets.LIQUIDATING
        auctions.finish(ex, auction_id, auction, auctions.FAILED, -1, b"", forfeited)
    else:
        assert clearing.price is not None
        _order, bid = winner
        a["status"] = assets.RENTED
        rentals.start_rental(ex, asset, int(auction["round"]) + 1, bid["bidder"],
                             clearing.price, int(bid["term"]), start)
        auctions.finish(ex, auction_id, auction, auctions.CLEARED, clearing.price,
                        bid["bidder"], forfeited)
    assets.put_asset(ex, asset, a)


def _check_liquidated(ex: Exec, args: dict[str, Any]) -> None:
    a = assets.get_asset(ex, args["asset"])
    assets.require_status(a, args["asset"], (assets.LIQUIDATING,), "record its sale")


def _liquidated(ex: Exec, action_id: bytes, args: dict[str, Any]) -> Result:
    asset: bytes = args["asset"]
    proceeds: int = args["proceeds"]
    record_flow(ex, "liquidations", proceeds)
    a = assets.get_asset(ex, asset)
    a["status"] = assets.LIQUIDATED
    assets.put_asset(ex, asset, a)
    surplus, shortfall = series.liquidate_series(ex, asset, proceeds)
    add_common_income(ex, surplus)
    return {"proceeds": proceeds, "to_holders": proceeds - surplus, "common_income": surplus,
            "shortfall": shortfall}
