"""Asset requests and their sealed-bid, uniform-price bond auctions (DESIGN 6.4).

`asset.request` (a member, with a rental offer) opens the auction for face = price; it is
rejected unless the offered rent covers the level payment of the series at the highest
rate the requester accepts, so whatever rate the auction stops out at, the rental alone
can service the bonds. Anyone with a key may bid: `bond.commit` locks money in escrow
behind a commitment, `bond.reveal` opens it (not above its lock), and the close clears
the revealed bids with `ledger.auction.clear_bond_auction` (bids in commit order). A
cleared auction moves the allocations from the locks into the asset's acquisition escrow
and issues the series; every lock's unused part goes back; an unrevealed bid forfeits
`no_reveal_fee_bps` of its lock to the common income of the period the auction closes in.
"""

from __future__ import annotations

from ledger import assets, auctions, series
from ledger.auction import BondBid, bond_commitment, clear_bond_auction
from ledger.bonds import level_payment
from ledger.membership import require_member
from ledger.money import credit
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Row

KIND = "bond"


def install(rules: Rules) -> None:
    rules.table("bond_bids", [("auction", bytes), ("bid", int)],
                [("bidder", bytes), ("lock", int), ("amount", int), ("rate_bps", int),
                 ("status", str), ("allocation", int), ("forfeit", int), ("height", int)],
                "sealed bond bids in commit order; amount and rate are 0 until revealed")
    rules.money_holder("bond bid locks", lambda s: sum(
        int(r["lock"]) for r in s.data["bond_bids"].values()
        if r["status"] in auctions.UNSETTLED))
    rules.on_tx("asset.request", request)
    rules.on_tx("bond.commit", commit)
    rules.on_tx("bond.reveal", reveal)


def request(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "request assets")
    a = tx.args
    price, rent, term, maturity, max_rate = (a["price"], a["rent"], a["term"], a["maturity"],
                                             a["max_rate_bps"])
    if maturity > term:
        raise TxRejected(f"bond maturity {maturity} is longer than the rental term {term}: the "
                         "rental must guarantee the bonds until they mature")
    need = level_payment(price, max_rate, maturity, ex.param("periods_per_year"))
    if rent < need:
        raise TxRejected(f"rent {rent} does not cover the level payment {need} of a {price} "
                         f"bond series over {maturity} periods at {max_rate} bps: the rental "
                         "agreement must guarantee the bonds")
    commit_s = a.get("commit_seconds", ex.param("commit_seconds"))
    reveal_s = a.get("reveal_seconds", ex.param("reveal_seconds"))
    asset_id = tx.id
    assets.put_asset(ex, asset_id, {
        "seq": ex.next_seq("assets"), "requester": tx.signer, "description": a["description"],
        "enterprise": a.get("enterprise", ""), "price": price, "rent": rent, "term": term,
        "maturity": maturity, "max_rate_bps": max_rate, "status": assets.AUCTION, "owned": 0,
        "period": ex.period, "height": ex.height, "time_ms": ex.time_ms, "reauctions": 0,
        "reauction_round": 0, "escrow": 0, "pending": 0})
    row = auctions.open_auction(ex, asset_id, asset_id, KIND, 0, commit_s, reveal_s,
                                reserve=max_rate, min_term=0)
    return {"asset": asset_id.hex(), "level_payment": need,
            "commit_end_ms": row["commit_end_ms"], "reveal_end_ms": row["reveal_end_ms"]}


def _what(asset_id: bytes) -> str:
    return f"the bond auction of asset {asset_id.hex()}"


def commit(ex: Exec, tx: Call) -> Result:
    asset_id: bytes = tx.args["asset"]
    a = assets.get_asset(ex, asset_id)
    assets.require_status(a, asset_id, (assets.AUCTION,), "bid for its bonds")
    lock: int = tx.args["lock"]
    order = auctions.commit_bid(ex, asset_id, _what(asset_id), tx.signer,
                                tx.args["commitment"], lock)
    ex.put("bond_bids", (asset_id, order), {
        "bidder": tx.signer, "lock": lock, "amount": 0, "rate_bps": 0,
        "status": auctions.SEALED, "allocation": 0, "forfeit": 0, "height": ex.height})
    return {"bid": order}


def reveal(ex: Exec, tx: Call) -> Result:
    asset_id: bytes = tx.args["asset"]
    assets.get_asset(ex, asset_id)
    amount: int = tx.args["amount"]
    rate: int = tx.args["rate_bps"]
    commitment = bond_commitment(asset_id, tx.signer, amount, rate, tx.args["salt"])
    order = auctions.reveal_order(ex, asset_id, _what(asset_id), commitment)
    bid = ex.get("bond_bids", (asset_id, order))
    assert bid is not None and bid["bidder"] == tx.signer
    if bid["status"] != auctions.SEALED:
        raise TxRejected(f"bid {order} in {_what(asset_id)} is already revealed")
    if amount > bid["lock"]:
        raise TxRejected(f"the revealed amount {amount} exceeds the bid's lock {bid['lock']}")
    bid.update(amount=amount, rate_bps=rate, status=auctions.REVEALED)
    ex.put("bond_bids", (asset_id, order), bid)
    return {"bid": order}


def close(ex: Exec, asset_id: bytes, auction: Row) -> None:
    """Clear the auction (its reveal window has ended); settle every lock."""
    a = ex.get("assets", asset_id)
    assert a is not None and a["status"] == assets.AUCTION
    bids: list[tuple[int, Row]] = []
    for order in range(1, int(auction["bids"]) + 1):
        bid = ex.get("bond_bids", (asset_id, order))
        assert bid is not None
        bids.append((order, bid))
    priced = [(order, bid) for order, bid in bids if bid["status"] == auctions.REVEALED]
    clearing = clear_bond_auction(
        [BondBid(bid["bidder"], int(bid["amount"]), int(bid["rate_bps"]), order)
         for order, bid in priced], int(a["price"]), int(a["max_rate_bps"]))
    allocation = {order: share for (order, _), share in zip(priced, clearing.allocations,
                                                            strict=True)}
    forfeited = 0
    winners: list[tuple[bytes, int, int]] = []
    for order, bid in bids:
        if bid["status"] == auctions.SEALED:
            fee = auctions.forfeit_unrevealed(ex, bid["bidder"], int(bid["lock"]))
            bid.update(status=auctions.FORFEITED, forfeit=fee)
            forfeited += fee
        else:
            share = allocation.get(order, 0)
            bid.update(status=auctions.WON if share else auctions.LOST, allocation=share)
            if share:
                winners.append((bid["bidder"], share, order))
            credit(ex, bid["bidder"], int(bid["lock"]) - share)
        ex.put("bond_bids", (asset_id, order), bid)
    a = ex.get("assets", asset_id)  # credits above may have parked arrears on assets
    assert a is not None
    if clearing.cleared:
        assert clearing.stop_out_bps is not None
        a["status"] = assets.FUNDED
        a["escrow"] = int(a["price"])
        series.issue(ex, asset_id, int(a["price"]), clearing.stop_out_bps,
                     int(a["maturity"]), winners)
        auctions.finish(ex, asset_id, auction, auctions.CLEARED, clearing.stop_out_bps, b"",
                        forfeited)
    else:
        a["status"] = assets.FAILED
        auctions.finish(ex, asset_id, auction, auctions.FAILED, -1, b"", forfeited)
    assets.put_asset(ex, asset_id, a)
