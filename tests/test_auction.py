"""Sealed-bid auctions: commitments and salts, forfeits, uniform-price and second-price clearing."""

from __future__ import annotations

import hashlib
import hmac
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.auction import (
    BondBid,
    RentBid,
    bond_commitment,
    clear_bond_auction,
    clear_rental_auction,
    derive_salt,
    no_reveal_forfeit,
    rent_commitment,
    rental_auction_id,
)
from protocol.crypto import SigningKey, sha256
from protocol.encoding import encode

SETTINGS = settings(max_examples=300, deadline=None)

AUCTION = bytes(range(32))
BIDDER = bytes(range(32, 64))
SALT = bytes(32)


def who(n: int) -> bytes:
    return n.to_bytes(32, "big")


# ---- commitments and salts -------------------------------------------------------------


def test_commitment_vectors() -> None:
    """Pinned bytes: every node, and every later version, must compute the same hashes."""
    bond = bond_commitment(AUCTION, BIDDER, 200_000, 500, SALT)
    assert bond == sha256(encode({"domain": "venture-commune/bond-bid/v1", "auction": AUCTION,
                                  "bidder": BIDDER, "amount": 200_000, "rate_bps": 500,
                                  "salt": SALT}))
    assert bond.hex() == "94c2cba2c1a08c3c5eb640b9ae08e0a4bafd4887463f0ffb7affbe5d6fbb8ea1"
    rent = rent_commitment(AUCTION, BIDDER, 12_000, 24, SALT)
    assert rent.hex() == "4bceaefb81347b2dd942390261b6562c08aabf7c2204851db50f94a469d6140f"
    salt = derive_salt(bytes(32), AUCTION, 0)
    assert salt == hmac.new(bytes(32), encode({"domain": "venture-commune/bid-salt/v1",
                                               "auction": AUCTION, "index": 0}),
                            hashlib.sha256).digest()
    assert salt.hex() == "199aaa01aed9bbbbfccc5dbdf7e51a05254dc4d27be43ee7bd33e3788efdacb2"
    assert rental_auction_id(AUCTION, 0).hex() == \
        "b713611580e2a066af678ae2515c7c5429d3ba717066ae7a84ce8bc865e0a530"


def test_commitments_bind_every_field() -> None:
    base = bond_commitment(AUCTION, BIDDER, 100, 500, SALT)
    variants = {
        bond_commitment(who(1), BIDDER, 100, 500, SALT),
        bond_commitment(AUCTION, who(1), 100, 500, SALT),
        bond_commitment(AUCTION, BIDDER, 101, 500, SALT),
        bond_commitment(AUCTION, BIDDER, 100, 501, SALT),
        bond_commitment(AUCTION, BIDDER, 100, 500, who(1)),
        rent_commitment(AUCTION, BIDDER, 100, 500, SALT),  # same numbers, other kind of bid
    }
    assert base not in variants and len(variants) == 6
    assert bond_commitment(AUCTION, BIDDER, 100, 500, SALT) == base


def test_commitment_rejects_malformed_input() -> None:
    with pytest.raises(ValueError):
        bond_commitment(AUCTION[:31], BIDDER, 1, 1, SALT)
    with pytest.raises(ValueError):
        bond_commitment(AUCTION, BIDDER, -1, 1, SALT)
    with pytest.raises(ValueError):
        bond_commitment(AUCTION, BIDDER, 1, 1, SALT + b"x")
    with pytest.raises(ValueError):
        rent_commitment(AUCTION, BIDDER, 1, True, SALT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        derive_salt(b"short", AUCTION, 0)
    with pytest.raises(ValueError):
        derive_salt(bytes(32), AUCTION, -1)
    with pytest.raises(ValueError):
        rental_auction_id(AUCTION, -1)


def test_derived_salts_survive_a_restart_and_stay_distinct() -> None:
    key = SigningKey.derive("test", "ivan")
    again = SigningKey(key.seed())  # the node after a restart, key loaded from its keystore
    salts = {derive_salt(key.seed(), AUCTION, i) for i in range(10)}
    assert len(salts) == 10 and all(len(s) == 32 for s in salts)
    assert derive_salt(again.seed(), AUCTION, 3) == derive_salt(key.seed(), AUCTION, 3)
    assert derive_salt(key.seed(), who(9), 0) not in salts
    other = SigningKey.derive("test", "bob")
    assert derive_salt(other.seed(), AUCTION, 0) not in salts
    rounds = {rental_auction_id(AUCTION, k) for k in range(5)} | {AUCTION}
    assert len(rounds) == 6  # bond auction and each rental round are distinct auctions


def test_no_reveal_forfeit() -> None:
    assert no_reveal_forfeit(20_000, 1000) == 2_000
    assert no_reveal_forfeit(19_999, 1000) == 1_999  # 1999.9 rounded down
    assert no_reveal_forfeit(9, 1000) == 0
    assert no_reveal_forfeit(5, 10_000) == 5
    assert no_reveal_forfeit(5, 0) == 0
    with pytest.raises(ValueError):
        no_reveal_forfeit(5, 10_001)


# ---- bond auction ----------------------------------------------------------------------


def test_scenarios_md_example() -> None:
    bids = [BondBid(who(1), 200_000, 500, 0), BondBid(who(2), 150_000, 650, 1)]
    c = clear_bond_auction(bids, 300_000, 900)
    assert c.cleared and c.stop_out_bps == 650 and c.allocations == (200_000, 100_000)


def test_pro_rata_at_stop_out() -> None:
    bids = [BondBid(who(1), 80_000, 500, 0), BondBid(who(2), 40_000, 650, 1),
            BondBid(who(3), 30_000, 650, 2), BondBid(who(4), 20_000, 700, 3),
            BondBid(who(5), 50_000, 950, 4)]
    c = clear_bond_auction(bids, 120_000, 900)
    assert c.stop_out_bps == 650
    assert c.allocations == (80_000, 22_857, 17_143, 0, 0)


def test_ties_at_stop_out_go_to_the_earlier_commit() -> None:
    # 10 units over three equal bids: 3.33 each, the leftover unit to the earliest commit
    bids = [BondBid(who(1), 5, 300, 7), BondBid(who(2), 5, 300, 2), BondBid(who(3), 5, 300, 4)]
    c = clear_bond_auction(bids, 10, 900)
    assert c.allocations == (3, 4, 3)
    # shuffling the input changes nothing but the order of the answer
    c2 = clear_bond_auction(list(reversed(bids)), 10, 900)
    assert c2.allocations == (3, 4, 3)[::-1]


def test_not_cleared() -> None:
    bids = [BondBid(who(1), 40_000, 500, 0), BondBid(who(2), 30_000, 800, 1),
            BondBid(who(3), 90_000, 901, 2)]  # above the maximum: out
    c = clear_bond_auction(bids, 100_000, 900)
    assert not c.cleared and c.stop_out_bps is None and c.allocations == (0, 0, 0)
    assert clear_bond_auction([], 1, 900) == clear_bond_auction([], 1, 0)
    assert not clear_bond_auction([], 1, 900).cleared


def test_exact_demand_and_zero_rate() -> None:
    bids = [BondBid(who(1), 1_000, 0, 0), BondBid(who(2), 2_000, 0, 1)]
    c = clear_bond_auction(bids, 3_000, 0)
    assert c.cleared and c.stop_out_bps == 0 and c.allocations == (1_000, 2_000)


def test_bond_auction_rejects_malformed_bids() -> None:
    with pytest.raises(ValueError):
        clear_bond_auction([BondBid(who(1), 0, 500, 0)], 10, 900)
    with pytest.raises(ValueError):
        clear_bond_auction([BondBid(who(1), 5, 500, 0), BondBid(who(2), 5, 500, 0)], 10, 900)
    with pytest.raises(ValueError):
        clear_bond_auction([BondBid(b"short", 5, 500, 0)], 10, 900)
    with pytest.raises(ValueError):
        clear_bond_auction([], 0, 900)


def reference_clearing(bids: list[BondBid], face: int,
                       max_rate: int) -> tuple[int | None, list[int]]:
    """Brute force: try every candidate rate; hand out leftover units one at a time."""
    candidates = sorted({b.rate_bps for b in bids if b.rate_bps <= max_rate})
    stop = None
    for rate in candidates:
        if sum(b.amount for b in bids if b.rate_bps <= rate) >= face:
            stop = rate
            break
    if stop is None:
        return None, [0] * len(bids)
    out = [b.amount if b.rate_bps < stop else 0 for b in bids]
    remaining = face - sum(out)
    at = [i for i, b in enumerate(bids) if b.rate_bps == stop]
    total_at = sum(bids[i].amount for i in at)
    quota = {i: Fraction(remaining * bids[i].amount, total_at) for i in at}
    for i in at:
        out[i] = quota[i].numerator // quota[i].denominator
    while sum(out) < face:  # one unit to the largest deficit, ties to the earlier commit
        i = max(at, key=lambda j: (quota[j] - out[j], -bids[j].order))
        out[i] += 1
    return stop, out


RATES = st.sampled_from([0, 100, 250, 300, 450, 500, 650, 900, 901, 1200])
# small amounts and faces make equal remainders at the stop-out (commit-order ties) common
bid_sets = st.lists(st.tuples(st.integers(1, 10_000), RATES), max_size=25) | \
    st.lists(st.tuples(st.integers(1, 6), RATES), max_size=25)


@SETTINGS
@given(raw=bid_sets, face=st.integers(1, 60_000) | st.integers(1, 40),
       max_rate=st.sampled_from([0, 300, 900, 2000]), data=st.data())
def test_clearing_matches_brute_force(raw: list[tuple[int, int]], face: int, max_rate: int,
                                      data: st.DataObject) -> None:
    orders = data.draw(st.permutations(list(range(len(raw)))))
    bids = [BondBid(who(i), amount, rate, orders[i]) for i, (amount, rate) in enumerate(raw)]
    c = clear_bond_auction(bids, face, max_rate)
    stop, expected = reference_clearing(bids, face, max_rate)
    assert c.stop_out_bps == stop
    assert list(c.allocations) == expected
    assert all(a >= 0 for a in c.allocations)
    if c.cleared:
        assert sum(c.allocations) == face
        for b, a in zip(bids, c.allocations, strict=True):
            assert a <= b.amount
            if b.rate_bps > stop:  # type: ignore[operator]
                assert a == 0
    else:
        assert sum(c.allocations) == 0


# ---- rental re-auction -----------------------------------------------------------------


def test_second_price_rules() -> None:
    bids = [RentBid(who(1), 15_000, 24, 0), RentBid(who(2), 13_000, 24, 1),
            RentBid(who(3), 20_000, 3, 2)]  # highest rent, but its term is too short
    c = clear_rental_auction(bids, 11_000, 12)
    assert (c.winner, c.price, c.valid) == (0, 13_000, (True, True, False))
    # one valid bid pays the reserve
    c = clear_rental_auction(bids[:1], 11_000, 12)
    assert (c.winner, c.price) == (0, 11_000)
    # a second bid below the reserve is invalid: the reserve sets the price
    c = clear_rental_auction([RentBid(who(1), 15_000, 24, 0), RentBid(who(2), 9_000, 24, 1)],
                             11_000, 12)
    assert (c.winner, c.price, c.valid) == (0, 11_000, (True, False))
    # tie at the top: the earlier commit wins and pays the tied rent
    c = clear_rental_auction([RentBid(who(1), 15_000, 24, 5), RentBid(who(2), 15_000, 30, 2)],
                             11_000, 12)
    assert (c.winner, c.price) == (1, 15_000)
    # nothing valid: liquidation
    c = clear_rental_auction([RentBid(who(1), 10_999, 24, 0)], 11_000, 12)
    assert (c.winner, c.price, c.valid) == (None, None, (False,))
    assert clear_rental_auction([], 1, 0).winner is None
    # a bid exactly at the reserve and the required term is valid
    c = clear_rental_auction([RentBid(who(1), 11_000, 12, 0)], 11_000, 12)
    assert (c.winner, c.price) == (0, 11_000)


rent_sets = st.lists(st.tuples(st.integers(1, 50), st.integers(1, 30)), max_size=15)


@SETTINGS
@given(raw=rent_sets, reserve=st.integers(0, 50), min_term=st.integers(0, 30),
       data=st.data())
def test_second_price_matches_brute_force(raw: list[tuple[int, int]], reserve: int,
                                          min_term: int, data: st.DataObject) -> None:
    orders = data.draw(st.permutations(list(range(len(raw)))))
    bids = [RentBid(who(i), rent, term, orders[i]) for i, (rent, term) in enumerate(raw)]
    c = clear_rental_auction(bids, reserve, min_term)
    valid = [i for i, b in enumerate(bids) if b.rent >= reserve and b.term >= min_term]
    assert [i for i, ok in enumerate(c.valid) if ok] == valid
    if not valid:
        assert c.winner is None and c.price is None
        return
    top = max(bids[i].rent for i in valid)
    winner = min((i for i in valid if bids[i].rent == top), key=lambda i: bids[i].order)
    others = [bids[i].rent for i in valid if i != winner]
    assert c.winner == winner
    assert c.price == max([reserve, *others])
    assert reserve <= c.price <= top
