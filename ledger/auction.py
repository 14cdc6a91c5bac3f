"""Sealed-bid auctions: commitments, salts, forfeits, and the two clearing rules.

Both auctions of the commune are commit-reveal (DESIGN 6.4, 6.6): a bid is first a hash,
then opened. This module holds what every node must compute identically about them:

- the commitment hashes of bond bids and rental bids (canonical msgpack of a fixed map
  with a domain label, so a bond commitment can never open as a rental bid or vice
  versa, nor a bid in one auction as a bid in another);
- the deterministic salt a node derives from its key seed, so that a node restarted
  between commit and reveal can still open its bids;
- the no-reveal forfeit;
- uniform-price clearing of a bond auction, with the largest-remainder split at the
  stop-out rate;
- second-price clearing of a rental re-auction.

Auction ids: a bond auction is named by its asset's id (one bond auction per asset);
the k-th rental re-auction of an asset (k = 0, 1, ...) is `rental_auction_id(asset, k)`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.allocation import largest_remainder
from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, sha256
from protocol.encoding import encode

__all__ = [
    "BondBid",
    "BondClearing",
    "RentBid",
    "RentalClearing",
    "SALT_LEN",
    "bond_commitment",
    "clear_bond_auction",
    "clear_rental_auction",
    "derive_salt",
    "no_reveal_forfeit",
    "rent_commitment",
    "rental_auction_id",
]

SALT_LEN = 32
MAX_BID_INDEX = 2**32 - 1

_BOND_DOMAIN = "venture-commune/bond-bid/v1"
_RENT_DOMAIN = "venture-commune/rent-bid/v1"
_SALT_DOMAIN = "venture-commune/bid-salt/v1"
_RENTAL_AUCTION_DOMAIN = "venture-commune/rental-auction/v1"


def _bytes(name: str, value: bytes, length: int) -> None:
    if type(value) is not bytes or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _int(name: str, value: int, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---- commitments and salts -------------------------------------------------------------


def bond_commitment(auction_id: bytes, bidder: bytes, amount: int, rate_bps: int,
                    salt: bytes) -> bytes:
    """`sha256(canonical({domain, auction, bidder, amount, rate_bps, salt}))`.

    The bidder is inside the hash so nobody can copy another's commitment and open it
    as their own once the first reveal shows the preimage.
    """
    _bytes("auction_id", auction_id, HASH_LEN)
    _bytes("bidder", bidder, PUBLIC_KEY_LEN)
    _int("amount", amount, 0)
    _int("rate_bps", rate_bps, 0)
    _bytes("salt", salt, SALT_LEN)
    return sha256(encode({"domain": _BOND_DOMAIN, "auction": auction_id, "bidder": bidder,
                          "amount": amount, "rate_bps": rate_bps, "salt": salt}))


def rent_commitment(auction_id: bytes, bidder: bytes, rent: int, term: int,
                    salt: bytes) -> bytes:
    """`sha256(canonical({domain, auction, bidder, rent, term, salt}))`."""
    _bytes("auction_id", auction_id, HASH_LEN)
    _bytes("bidder", bidder, PUBLIC_KEY_LEN)
    _int("rent", rent, 0)
    _int("term", term, 0)
    _bytes("salt", salt, SALT_LEN)
    return sha256(encode({"domain": _RENT_DOMAIN, "auction": auction_id, "bidder": bidder,
                          "rent": rent, "term": term, "salt": salt}))


def rental_auction_id(asset_id: bytes, round_index: int) -> bytes:
    """Id of the `round_index`-th rental re-auction of an asset (0 for the first).

    Distinct from the asset id (the bond auction's id) and from every other round, so
    commitments and derived salts never repeat across auctions of one asset.
    """
    _bytes("asset_id", asset_id, HASH_LEN)
    _int("round_index", round_index, 0)
    return sha256(encode({"domain": _RENTAL_AUCTION_DOMAIN, "asset": asset_id,
                          "round": round_index}))


def derive_salt(secret: bytes, auction_id: bytes, index: int) -> bytes:
    """Salt of a node's `index`-th bid in an auction: HMAC-SHA256 keyed by its key seed.

    Deterministic, so a node that restarts between commit and reveal recomputes the
    salt instead of having to persist it; unpredictable to anyone without the seed, so
    the commitment still hides the bid. `index` separates several bids of one bidder
    in one auction.
    """
    if type(secret) is not bytes or len(secret) < 16:
        raise ValueError("secret must be at least 16 bytes (a key seed)")
    _bytes("auction_id", auction_id, HASH_LEN)
    _int("index", index, 0)
    if index > MAX_BID_INDEX:
        raise ValueError(f"index must be at most {MAX_BID_INDEX}")
    message = encode({"domain": _SALT_DOMAIN, "auction": auction_id, "index": index})
    return hmac.new(secret, message, hashlib.sha256).digest()


def no_reveal_forfeit(lock: int, no_reveal_fee_bps: int) -> int:
    """What an unrevealed commit forfeits to common income: `floor(lock * fee / 10_000)`."""
    _int("lock", lock, 0)
    _int("no_reveal_fee_bps", no_reveal_fee_bps, 0)
    if no_reveal_fee_bps > 10_000:
        raise ValueError("no_reveal_fee_bps is at most 10000 (the whole lock)")
    return lock * no_reveal_fee_bps // 10_000


# ---- bond auction: uniform price -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BondBid:
    """A revealed bond bid. `order` is its commit order (unique within the auction)."""

    bidder: bytes
    amount: int
    rate_bps: int
    order: int


@dataclass(frozen=True, slots=True)
class BondClearing:
    """Outcome of a bond auction; `allocations[i]` belongs to the i-th bid given.

    Not cleared: `stop_out_bps` is None and every allocation is zero. Cleared: the
    allocations sum to the face exactly and every winner holds at `stop_out_bps`.
    """

    cleared: bool
    stop_out_bps: int | None
    allocations: tuple[int, ...]


def _check_orders(orders: Sequence[int]) -> None:
    for o in orders:
        _int("order", o, 0)
    if len(set(orders)) != len(orders):
        raise ValueError("commit orders must be unique within an auction")


def clear_bond_auction(bids: Sequence[BondBid], face: int, max_rate_bps: int) -> BondClearing:
    """Uniform-price clearing (DESIGN 6.4 step 2).

    Bids above `max_rate_bps` are out. The stop-out rate is the lowest rate at which
    the cumulative amount of bids at or below it reaches the face. Bids below it are
    filled in full; bids at it share what remains pro rata to their amounts by largest
    remainder, positions in commit order; bids above it get nothing. No such rate: the
    auction does not clear.
    """
    _int("face", face, 1)
    _int("max_rate_bps", max_rate_bps, 0)
    for b in bids:
        _bytes("bidder", b.bidder, PUBLIC_KEY_LEN)
        _int("amount", b.amount, 1)
        _int("rate_bps", b.rate_bps, 0)
    _check_orders([b.order for b in bids])
    allocations = [0] * len(bids)
    eligible = sorted((i for i, b in enumerate(bids) if b.rate_bps <= max_rate_bps),
                      key=lambda i: (bids[i].rate_bps, bids[i].order))
    filled = 0  # cumulative amount strictly below the current rate
    pos = 0
    while pos < len(eligible):
        rate = bids[eligible[pos]].rate_bps
        end = pos
        while end < len(eligible) and bids[eligible[end]].rate_bps == rate:
            end += 1
        at_rate = eligible[pos:end]  # already in commit order
        amount_at_rate = sum(bids[i].amount for i in at_rate)
        if filled + amount_at_rate >= face:
            for i in eligible[:pos]:
                allocations[i] = bids[i].amount
            shares = largest_remainder(face - filled, [bids[i].amount for i in at_rate])
            for i, share in zip(at_rate, shares, strict=True):
                allocations[i] = share
            assert sum(allocations) == face
            return BondClearing(True, rate, tuple(allocations))
        filled += amount_at_rate
        pos = end
    return BondClearing(False, None, tuple(allocations))


# ---- rental re-auction: second price ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RentBid:
    """A revealed rental bid. `order` is its commit order (unique within the auction)."""

    bidder: bytes
    rent: int
    term: int
    order: int


@dataclass(frozen=True, slots=True)
class RentalClearing:
    """Outcome of a rental re-auction.

    `winner` indexes the bids given (None: no valid bid, the asset goes to
    liquidation); `price` is the rent per period the winner pays; `valid[i]` says
    whether the i-th bid met the reserve and the term rule.
    """

    winner: int | None
    price: int | None
    valid: tuple[bool, ...]


def clear_rental_auction(bids: Sequence[RentBid], reserve: int,
                         min_term: int) -> RentalClearing:
    """Second-price clearing (DESIGN 6.6).

    Valid bids offer at least the reserve and a term of at least `min_term` (the
    series' remaining maturity). The highest valid rent wins, ties to the earlier
    commit; the winner pays the second-highest valid rent or the reserve, whichever is
    higher (a tie at the top therefore pays the winner's own rent).
    """
    _int("reserve", reserve, 0)
    _int("min_term", min_term, 0)
    for b in bids:
        _bytes("bidder", b.bidder, PUBLIC_KEY_LEN)
        _int("rent", b.rent, 0)
        _int("term", b.term, 0)
    _check_orders([b.order for b in bids])
    valid = tuple(b.rent >= reserve and b.term >= min_term for b in bids)
    ranked = sorted((i for i, ok in enumerate(valid) if ok),
                    key=lambda i: (-bids[i].rent, bids[i].order))
    if not ranked:
        return RentalClearing(None, None, valid)
    winner = ranked[0]
    second = bids[ranked[1]].rent if len(ranked) > 1 else reserve
    price = max(second, reserve)
    assert reserve <= price <= bids[winner].rent
    return RentalClearing(winner, price, valid)
