"""Sealed-bid bookkeeping shared by the bond auction (6.4) and the rental re-auction (6.6).

Both auctions are commit-reveal with the same windows and the same close: commits
until `commit_end_ms`, reveals from then until `reveal_end_ms`, and the close at the
start of the first block whose time reaches `reveal_end_ms` (a start-of-block hook,
before that block's transactions, so no reveal can slip in after the close). What
differs -- the bids' contents and the clearing rule -- belongs to each kind's module,
which registers its close function here.

An auction is named by its id: the asset id for the bond auction,
`rental_auction_id(asset, k)` for the k-th re-auction. A commitment is a hash that
includes the auction and the bidder, so a commitment names at most one bid anywhere;
`commitments` maps it to its bid, which both prevents a commitment being made twice and
finds the bid a reveal opens (a bidder may hold several bids in one auction; the
reveal's contents say which).

Bids are numbered 1, 2, ... in commit order within their auction: that order breaks
every tie (DESIGN 6.4: "ties to the earlier commit").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ledger.auction import no_reveal_forfeit
from ledger.money import add_common_income, credit, debit
from ledger.rules import Exec, Rules, TxRejected
from ledger.state import Row

OPEN = "open"
CLEARED = "cleared"
FAILED = "failed"

SEALED = "sealed"
REVEALED = "revealed"
WON = "won"
LOST = "lost"
FORFEITED = "forfeited"
UNSETTLED = (SEALED, REVEALED)
"""Bid statuses whose lock is still held in escrow."""

MAX_BIDS = 10_000
"""Bids per auction: bounds the work of one close."""

HOOK_ORDER = 100

Closer = Callable[[Exec, bytes, Row], None]
"""Closes one due auction: (ex, auction id, auction row). Must settle every lock."""


def install(rules: Rules, closers: Mapping[str, Closer]) -> None:
    rules.table("auctions", [("id", bytes)],
                [("asset", bytes), ("kind", str), ("round", int), ("opened_period", int),
                 ("opened_ms", int), ("commit_end_ms", int), ("reveal_end_ms", int),
                 ("status", str), ("bids", int), ("revealed", int), ("reserve", int),
                 ("min_term", int), ("result", int), ("winner", bytes), ("forfeited", int),
                 ("closed_period", int), ("closed_height", int)],
                "sealed-bid auctions (bond: id = asset, reserve = max_rate_bps, result = "
                "stop-out rate; rent: id = rental_auction_id(asset, round), reserve = "
                "reserve rent, result = price paid); result -1 when nothing cleared")
    rules.table("open_auctions", [("reveal_end_ms", int), ("id", bytes)], [],
                "index of open auctions by the end of their reveal window")
    rules.table("commitments", [("commitment", bytes)], [("auction", bytes), ("bid", int)],
                "every sealed bid's commitment, and the bid it names")
    table = dict(closers)

    def close_due(ex: Exec) -> None:
        for (end, auction_id), _ in list(ex.scan("open_auctions")):
            if end > ex.time_ms:
                break
            row = ex.get("auctions", auction_id)
            assert row is not None and row["status"] == OPEN
            ex.delete("open_auctions", (end, auction_id))
            table[row["kind"]](ex, auction_id, row)
            closed = ex.peek("auctions", auction_id)
            assert closed is not None and closed["status"] != OPEN, "a closer must decide"

    rules.on_block_start(HOOK_ORDER, "auction closes", close_due)


def open_auction(ex: Exec, auction_id: bytes, asset: bytes, kind: str, round_index: int,
                 commit_seconds: int, reveal_seconds: int, reserve: int,
                 min_term: int, period: int | None = None) -> Row:
    """Open an auction now: commits until now + commit, reveals for `reveal` after that.

    `period` is the period it runs in: the open one, unless a period close opens it
    (then the next).
    """
    assert not ex.has("auctions", auction_id)
    commit_end = ex.time_ms + commit_seconds * 1000
    reveal_end = commit_end + reveal_seconds * 1000
    row: Row = {"asset": asset, "kind": kind, "round": round_index,
                "opened_period": ex.period if period is None else period, "opened_ms": ex.time_ms,
                "commit_end_ms": commit_end, "reveal_end_ms": reveal_end, "status": OPEN,
                "bids": 0, "revealed": 0, "reserve": reserve, "min_term": min_term,
                "result": -1, "winner": b"", "forfeited": 0, "closed_period": -1,
                "closed_height": 0}
    ex.put("auctions", auction_id, row)
    ex.put("open_auctions", (reveal_end, auction_id), {})
    return dict(row)


def commit_bid(ex: Exec, auction_id: bytes, what: str, bidder: bytes, commitment: bytes,
               lock: int) -> int:
    """Record a sealed bid: checks the window, moves the lock into escrow, returns its order.

    The caller writes the bid row under (auction, order).
    """
    row = ex.get("auctions", auction_id)
    if row is None or row["status"] != OPEN:
        raise TxRejected(f"{what} is not open for bids")
    if ex.time_ms >= int(row["commit_end_ms"]):
        raise TxRejected(f"the commit window of {what} closed at {row['commit_end_ms']} ms "
                         f"(block time {ex.time_ms} ms)")
    if ex.has("commitments", commitment):
        raise TxRejected("this commitment was already made (use a fresh salt for each bid)")
    if int(row["bids"]) >= MAX_BIDS:
        raise TxRejected(f"{what} already has {MAX_BIDS} bids, the most one auction takes")
    debit(ex, bidder, lock)
    order = int(row["bids"]) + 1
    row["bids"] = order
    ex.put("auctions", auction_id, row)
    ex.put("commitments", commitment, {"auction": auction_id, "bid": order})
    return order


def reveal_order(ex: Exec, auction_id: bytes, what: str, commitment: bytes) -> int:
    """The order of the bid that `commitment` opens, or reject: window, match."""
    row = ex.get("auctions", auction_id)
    if row is None or row["status"] != OPEN:
        raise TxRejected(f"{what} is not open: nothing to reveal")
    if ex.time_ms < int(row["commit_end_ms"]):
        raise TxRejected(f"the reveal window of {what} opens at {row['commit_end_ms']} ms "
                         f"(block time {ex.time_ms} ms)")
    if ex.time_ms >= int(row["reveal_end_ms"]):  # pragma: no cover - the close hook ran first
        raise TxRejected(f"the reveal window of {what} closed at {row['reveal_end_ms']} ms")
    c = ex.peek("commitments", commitment)
    if c is None or c["auction"] != auction_id:
        raise TxRejected(f"the reveal matches no sealed bid of this signer in {what} "
                         "(wrong amount, rate, rent, term or salt)")
    row["revealed"] = int(row["revealed"]) + 1
    ex.put("auctions", auction_id, row)
    return int(c["bid"])


def forfeit_unrevealed(ex: Exec, bidder: bytes, lock: int) -> int:
    """An unrevealed bid at the close: the fee goes to common income, the rest back."""
    fee = no_reveal_forfeit(lock, ex.param("no_reveal_fee_bps"))
    add_common_income(ex, fee)
    credit(ex, bidder, lock - fee)
    return fee


def finish(ex: Exec, auction_id: bytes, row: Row, status: str, result: int, winner: bytes,
           forfeited: int) -> None:
    assert status in (CLEARED, FAILED)
    row.update(status=status, result=result, winner=winner, forfeited=forfeited,
               closed_period=ex.period, closed_height=ex.height)
    ex.put("auctions", auction_id, row)
