"""Assets the commune acquires for its members (DESIGN 6.4-6.6): the asset table and its life.

An asset is named by the id of the `asset.request` that asked for it. Its `status` walks

    auction -> failed                       (the bond auction did not clear)
    auction -> funded -> cancelled          (the purchase fell through)
    auction -> funded -> rented -> reauction -> rented ...   (a member rents it again)
                                  reauction -> liquidating -> liquidated

and `owned` turns 1 once its bond series is redeemed (from then on its rent is common
income). This module holds the table and the helpers every asset rule shares; the rules
themselves live in one module per DESIGN concept, all installed by `install` here:

- `ledger/auctions.py`: sealed-bid bookkeeping shared by both auctions, and their closes;
- `ledger/bond_auction.py`: the request, bond commits, reveals, uniform-price clearing;
- `ledger/series.py`: bond series and holdings, service, transfers, refund, liquidation;
- `ledger/rentals.py`: acquisition, rent at every close, arrears, `rental.end`;
- `ledger/reauction.py`: returns, rental re-auctions, `treasury.liquidated`.

Money that waits on an asset is held in two columns, both registered for the
conservation check: `escrow` (the bond money between the auction's close and the
purchase) and `pending` (arrears of its rent paid by the lessee's later money, applied
like rent at the next period close: paying the series there, not from inside whatever
credit paid the arrears, keeps every payment a bounded, non-reentrant step).

`asset_index` lists, in creation order, the assets a period close still has to look at;
an asset leaves it when it reaches a final status with nothing pending, so closes cost
what is alive, not everything ever requested.
"""

from __future__ import annotations

from ledger.rules import Exec, Rules, TxRejected
from ledger.state import Row

AUCTION = "auction"
FAILED = "failed"
FUNDED = "funded"
CANCELLED = "cancelled"
RENTED = "rented"
REAUCTION = "reauction"
LIQUIDATING = "liquidating"
LIQUIDATED = "liquidated"
STATUSES = (AUCTION, FAILED, FUNDED, CANCELLED, RENTED, REAUCTION, LIQUIDATING, LIQUIDATED)
FINAL = frozenset({FAILED, CANCELLED, LIQUIDATED})

RENT_ARREARS = "asset-rent"
"""Arrears kind of missed rent; the reference is the asset id."""


def install(rules: Rules) -> None:
    """Register every asset rule (one registration in `ledger/modules.py`)."""
    # Imported here: those modules import this one for the table helpers.
    from ledger import auctions, bond_auction, reauction, rentals, series

    rules.table("assets", [("id", bytes)],
                [("seq", int), ("requester", bytes), ("description", str),
                 ("enterprise", str), ("price", int), ("rent", int), ("term", int),
                 ("maturity", int), ("max_rate_bps", int), ("status", str), ("owned", int),
                 ("period", int), ("height", int), ("time_ms", int),
                 ("reauctions", int), ("reauction_round", int), ("escrow", int),
                 ("pending", int)],
                "assets (id = the asset.request transaction): the request's rental offer, "
                "status, owned once redeemed, rental re-auctions opened and the current "
                "round, acquisition escrow, arrears paid and awaiting the next close")
    rules.table("asset_index", [("seq", int)], [("asset", bytes)],
                "assets that period closes still concern, in creation order")
    rules.money_holder("acquisition escrow", lambda s: sum(
        int(r["escrow"]) for r in s.data["assets"].values()))
    rules.money_holder("rent awaiting service", lambda s: sum(
        int(r["pending"]) for r in s.data["assets"].values()))
    auctions.install(rules, closers={bond_auction.KIND: bond_auction.close,
                                     reauction.KIND: reauction.close})
    bond_auction.install(rules)
    series.install(rules)
    rentals.install(rules)
    reauction.install(rules)


def get_asset(ex: Exec, asset_id: bytes) -> Row:
    """A copy of the asset row, or reject: the id names no asset."""
    row = ex.get("assets", asset_id)
    if row is None:
        raise TxRejected(f"no asset {asset_id.hex()}")
    return row


def require_status(row: Row, asset_id: bytes, allowed: tuple[str, ...], doing: str) -> None:
    if row["status"] not in allowed:
        raise TxRejected(f"asset {asset_id.hex()} is {row['status']}: cannot {doing} "
                         f"(only when {' or '.join(allowed)})")


def put_asset(ex: Exec, asset_id: bytes, row: Row) -> None:
    """Write the asset, keeping its place in the close index in step with its status."""
    assert row["status"] in STATUSES and row["pending"] >= 0 and row["escrow"] >= 0
    ex.put("assets", asset_id, row)
    seq = int(row["seq"])
    live = row["status"] not in FINAL or row["pending"] > 0
    if live and not ex.has("asset_index", seq):
        ex.put("asset_index", seq, {"asset": asset_id})
    elif not live and ex.has("asset_index", seq):
        ex.delete("asset_index", seq)


def live_assets(ex: Exec) -> list[bytes]:
    """Assets a close must look at, in creation order (DESIGN 6.5: asset-creation order)."""
    return [row["asset"] for _seq, row in ex.scan("asset_index")]
