"""Assets, bond auctions, series, rent, re-auctions and liquidation on the real ledger.

Properties (hypothesis) drive the state machine through blocks and compare it with the
pure references in `ledger/auction.py` and `ledger/bonds.py`; the examples pin the rules
DESIGN 6.4-6.7 states in words. `check_invariants` (conservation, no negative balance,
holdings adding up) runs after every block of every test here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.simulate import LocalBackend, check_invariants
from ledger.auction import (
    BondBid,
    bond_commitment,
    clear_bond_auction,
    no_reveal_forfeit,
    rent_commitment,
    rental_auction_id,
)
from ledger.bonds import level_payment, liquidate, service_period, split_service
from ledger.replay import replay
from ledger.testing import GENESIS_TIME_MS, Harness, key, make_genesis
from protocol.crypto import SigningKey
from protocol.transactions import Transaction

PERIOD_S = 100
WINDOW_S = 10
BIDDERS = [key("rules", "bidder", str(i)) for i in range(6)]
FUNDS = 10**9


class World:
    """A harness with founders f0 (sole treasury signer), f1, f2 and funded bidders."""

    def __init__(self, founders: int = 3, *, on_disk: bool = False, **params: int) -> None:
        p = {"period_seconds": PERIOD_S, "commit_seconds": WINDOW_S,
             "reveal_seconds": WINDOW_S, **params}
        g, keys = make_genesis(founders, signers=1, threshold=1, params=p)
        path = None
        if on_disk:
            self.tmp = tempfile.TemporaryDirectory(prefix="assets-rules-")
            path = f"{self.tmp.name}/ledger.db"
        self.h = Harness(g, keys, path=path)
        self.f = self.h.founders
        self.roots: list[bytes] = []

    @property
    def state(self) -> Any:
        return self.h.ledger.state

    def at(self, period: int, seconds: float = 0) -> int:
        return GENESIS_TIME_MS + period * PERIOD_S * 1000 + int(seconds * 1000)

    def block(self, txs: Sequence[Transaction] = (), time_ms: int | None = None,
              strict: bool = True) -> list[tuple[bytes, str]]:
        t = max(time_ms or 0, self.h.time_ms + 1)
        _, rejected = self.h.block(list(txs), time_ms=t, strict=strict)
        self.roots.append(self.h.ledger.state_root)
        _check(self.h)
        return rejected

    def deposit(self, who: SigningKey, amount: int) -> None:
        self.h.add_key(who)
        self.block([self.h.tx(self.f[0], "treasury.deposit", {
            "account": who.public, "amount": amount, "reference": "wire"})])

    def request(self, by: SigningKey, price: int, rent: int, term: int, maturity: int,
                max_rate: int) -> bytes:
        tx = self.h.tx(by, "asset.request", {"description": "x", "price": price, "rent": rent,
                                             "term": term, "maturity": maturity,
                                             "max_rate_bps": max_rate})
        self.block([tx])
        return tx.id

    def auction(self, asset: bytes, bids: Sequence[tuple[SigningKey, int, int, int, bool]]
                ) -> None:
        """Commit (bidder, amount, rate, lock, reveal) bids, reveal, close."""
        row = self.state.row("auctions", asset)
        commits, reveals = [], []
        for i, (who, amount, rate, lock, reveal) in enumerate(bids):
            salt = i.to_bytes(32, "big")
            commits.append(self.h.tx(who, "bond.commit", {
                "asset": asset, "commitment": bond_commitment(asset, who.public, amount, rate,
                                                              salt), "lock": lock}))
            if reveal:
                reveals.append((who, {"asset": asset, "amount": amount, "rate_bps": rate,
                                      "salt": salt}))
        self.block(commits)
        self.block([self.h.tx(w, "bond.reveal", args) for w, args in reveals],
                   time_ms=row["commit_end_ms"])
        self.block([], time_ms=row["reveal_end_ms"])

    def acquire(self, asset: bytes, failed: bool = False) -> None:
        kind = "treasury.acquire_failed" if failed else "treasury.acquire"
        self.block([self.h.tx(self.f[0], kind, {"asset": asset})])

    def close_to(self, period: int) -> None:
        """Commit a block at the start of `period` (closing every period before it)."""
        self.block([], time_ms=self.at(period))

    def series(self, asset: bytes) -> dict[str, Any]:
        s = self.state.row("series", asset)
        assert s is not None
        return dict(s)

    def holding(self, asset: bytes, who: SigningKey) -> dict[str, Any]:
        b = self.state.row("bonds", (asset, who.public))
        assert b is not None
        return dict(b)

    def balance(self, who: SigningKey) -> int:
        return int(self.state.balance(who.public))

    def pool_income(self, period: int) -> int:
        row = self.state.period(period)
        return int(row["pool"])


def _check(h: Harness) -> None:
    class _B:
        ledger = h.ledger

    check_invariants(_B())  # type: ignore[arg-type]


# ---- the bond auction on the ledger equals the reference ---------------------------------

bid_strategy = st.tuples(st.integers(0, 5), st.integers(1, 60_000), st.integers(0, 1500),
                         st.integers(0, 3_000), st.booleans())


@settings(max_examples=25, deadline=None)
@given(bids=st.lists(bid_strategy, min_size=0, max_size=8),
       price=st.integers(1, 100_000), max_rate=st.integers(0, 1200))
def test_bond_auction_clears_like_the_reference(bids: list[tuple[int, int, int, int, bool]],
                                                 price: int, max_rate: int) -> None:
    w = World(2)
    for b in BIDDERS:
        w.h.add_key(b)
    w.block([w.h.tx(w.f[0], "treasury.deposit", {"account": b.public, "amount": FUNDS,
                                                  "reference": "wire"}) for b in BIDDERS])
    rent = level_payment(price, max_rate, 12, 12)
    asset = w.request(w.f[0], price, rent, 12, 12, max_rate)
    full = [(BIDDERS[i], amount, rate, amount + extra, reveal)
            for i, amount, rate, extra, reveal in bids]
    w.auction(asset, full)
    revealed = [(order, b) for order, b in enumerate(full, start=1) if b[4]]
    ref = clear_bond_auction([BondBid(b[0].public, b[1], b[2], order) for order, b in revealed],
                             price, max_rate)
    auction = w.state.row("auctions", asset)
    a = w.state.row("assets", asset)
    fee_bps = w.state.params()["no_reveal_fee_bps"]
    expected_balance = {b.public: FUNDS for b in BIDDERS}
    allocation = dict(zip([o for o, _ in revealed], ref.allocations, strict=True))
    for order, (who, _amount, _rate, lock, reveal) in enumerate(full, start=1):
        row = w.state.row("bond_bids", (asset, order))
        if reveal:
            assert row["allocation"] == allocation[order]
            expected_balance[who.public] -= allocation[order]
        else:
            assert row["status"] == "forfeited"
            assert row["forfeit"] == no_reveal_forfeit(lock, fee_bps)
            expected_balance[who.public] -= row["forfeit"]
    for b in BIDDERS:
        assert w.balance(b) == expected_balance[b.public]
    if ref.cleared:
        assert a["status"] == "funded" and a["escrow"] == price
        assert auction["result"] == ref.stop_out_bps
        s = w.series(asset)
        assert s["rate_bps"] == ref.stop_out_bps and s["face"] == price
        held: dict[bytes, int] = {}
        for (_order, b), share in zip(revealed, ref.allocations, strict=True):
            if share:
                held[b[0].public] = held.get(b[0].public, 0) + share
        holders = [s["holders"][i:i + 32] for i in range(0, len(s["holders"]), 32)]
        assert sorted(holders) == sorted(held)
        for h, face in held.items():
            assert w.state.row("bonds", (asset, h))["face"] == face
    else:
        assert a["status"] == "failed" and a["escrow"] == 0
        assert w.state.row("series", asset) is None
    forfeits = sum(w.state.row("bond_bids", (asset, o))["forfeit"]
                   for o in range(1, len(full) + 1))
    assert auction["forfeited"] == forfeits
    assert w.state.pool() == forfeits  # common income of the open period


# ---- service: splits sum exactly, principal over the life equals the face ----------------


@settings(max_examples=15, deadline=None)
@given(face=st.integers(1, 200_000), rate=st.integers(0, 2000), maturity=st.integers(1, 8),
       extra=st.integers(0, 5000), shares=st.lists(st.integers(1, 100), min_size=1,
                                                   max_size=5))
def test_service_over_a_series_life(face: int, rate: int, maturity: int, extra: int,
                                    shares: list[int]) -> None:
    """Rent >= A every period: each close follows `service_period`, the holders' split
    follows `split_service`, and the principal received over the life sums to the face."""
    w = World(2)
    lessee = w.f[1]
    rent = level_payment(face, rate, maturity, 12) + extra
    # Holdings pro rata to `shares` (largest remainder), one bid each, all at `rate`.
    alloc = _split(face, shares)
    bids = [(BIDDERS[i], amount, rate, amount, True) for i, amount in enumerate(alloc) if amount]
    for b, amount, *_ in bids:
        w.deposit(b, amount)
    w.deposit(lessee, rent * 100)
    asset = w.request(lessee, face, rent, 100, maturity, rate)
    w.auction(asset, bids)
    w.acquire(asset)
    holders = [b for b, *_ in bids]
    outstanding, unpaid = face, 0
    period = w.state.open_period() + 1  # the rental's first period
    assert w.series(asset)["start_period"] == period
    received = {h.public: [0, 0] for h in holders}
    while outstanding:
        before = [w.holding(asset, h)["outstanding"] for h in holders]
        svc = service_period(outstanding, unpaid, rent, rate, 12)
        split = split_service(before, svc.interest_paid, svc.principal_paid)
        w.close_to(period + 1)
        s = w.series(asset)
        assert (s["outstanding"], s["unpaid_interest"]) == (outstanding - svc.principal_paid,
                                                            svc.unpaid_interest)
        for h, pay in zip(holders, split, strict=True):
            received[h.public][0] += pay.interest
            received[h.public][1] += pay.principal
            hold = w.holding(asset, h)
            assert (hold["interest_received"], hold["principal_received"]) == \
                tuple(received[h.public])
        assert w.pool_income(period) == svc.surplus + carry(w, period)
        outstanding, unpaid = outstanding - svc.principal_paid, svc.unpaid_interest
        period += 1
        assert period < 200, "rent >= A at a rate the series bears must redeem it"
    s = w.series(asset)
    assert s["status"] == "redeemed" and s["principal_paid"] == face
    assert sum(r[1] for r in received.values()) == face
    assert w.state.row("assets", asset)["owned"] == 1
    # From now on the whole rent is common income.
    w.close_to(period + 1)
    assert w.pool_income(period) == rent + carry(w, period)
    assert replay(w.h.genesis, w.h.ledger.blocks()) == w.roots


def carry(w: World, period: int) -> int:
    return 0 if period == 0 else int(w.state.period(period - 1)["carry"])


def _split(total: int, weights: list[int]) -> list[int]:
    from ledger.allocation import largest_remainder

    return largest_remainder(total, weights)


# ---- examples of the rules stated in words -----------------------------------------------


def funded_asset(w: World, price: int = 60_000, rent: int = 10_000, term: int = 12,
                 maturity: int = 8, rate: int = 800, lessee: SigningKey | None = None,
                 holders: Sequence[tuple[SigningKey, int]] = ((BIDDERS[0], 60_000),),
                 acquire: bool = True, max_rate: int = 1200) -> bytes:
    lessee = lessee or w.f[0]
    for who, amount in holders:
        w.deposit(who, amount)
    asset = w.request(lessee, price, rent, term, maturity, max_rate)
    w.auction(asset, [(who, amount, rate, amount, True) for who, amount in holders])
    if acquire:
        w.acquire(asset)
    return asset


def test_missed_rent_arrears_default_and_reauction() -> None:
    """DESIGN 6.5-6.6: a short balance misses the period (arrears, unpaid interest);
    `grace_periods` misses default; arrears paid later service the series at the next
    close; the re-auction's reserve is the level payment and its term must cover the
    remaining maturity; the winner pays the second price from the next period."""
    w = World(3, grace_periods=2)
    f0, f1, f2 = w.f
    asset = funded_asset(w)  # acquired in period 0: rent and interest from period 1
    w.deposit(f0, 10_000)
    w.close_to(2)  # close 0 (nothing), close 1: rent paid
    assert w.series(asset)["outstanding"] == 60_000 - (10_000 - 400)
    w.close_to(3)  # close 2: missed
    acct = w.state.account(f0.public)
    assert acct["arrears"] == 10_000 and acct["balance"] == 0
    rental = w.state.row("rentals", asset)
    assert (rental["missed"], rental["status"]) == (1, "active")
    interest = round(50_400 * 800 / 120_000)
    assert w.series(asset)["unpaid_interest"] == interest
    # 4000 arrive: they pay arrears first and wait on the asset until the next close.
    w.deposit(f0, 4_000)
    assert w.balance(f0) == 0 and w.state.account(f0.public)["arrears"] == 6_000
    assert w.state.row("assets", asset)["pending"] == 4_000
    w.close_to(4)  # close 3: missed again (default), but the 4000 service the series
    s = w.series(asset)
    svc = service_period(50_400, interest, 4_000, 800, 12)
    assert (s["outstanding"], s["unpaid_interest"]) == (50_400 - svc.principal_paid,
                                                        svc.unpaid_interest)
    assert w.state.row("rentals", asset)["status"] == "defaulted"
    a = w.state.row("assets", asset)
    assert (a["status"], a["reauctions"], a["pending"]) == ("reauction", 1, 0)
    auction_id = rental_auction_id(asset, 0)
    auction = w.state.row("auctions", auction_id)
    assert auction["reserve"] == level_payment(60_000, 800, 8, 12)
    # Rental starts in period 5 (the auction closes in 4); maturity runs periods 1..8.
    assert auction["min_term"] == 4
    w.deposit(f1, 50_000)
    w.deposit(f2, 50_000)
    bids = [(f1, 9_000, 4, 100), (f2, 8_500, 10, 0), (f0, 20_000, 3, 0)]
    commits, reveals = [], []
    for who, rent, term, lock in bids:
        salt = bytes([term]) * 32
        commits.append(w.h.tx(who, "rent.commit", {"asset": asset, "lock": lock,
                                                   "commitment": rent_commitment(
                                                       auction_id, who.public, rent, term,
                                                       salt)}))
        reveals.append(w.h.tx(who, "rent.reveal", {"asset": asset, "rent": rent,
                                                   "term": term, "salt": salt}))
    w.block(commits)
    w.block(reveals, time_ms=auction["commit_end_ms"])
    again = w.h.tx(f2, "rent.reveal", {"asset": asset, "rent": 8_500, "term": 10,
                                       "salt": bytes([10]) * 32})
    reason = w.h.reason(again)
    assert reason is not None and "bid 2 in rental re-auction 0" in reason and \
        "is already revealed" in reason
    w.h._pending.clear()
    w.block([], time_ms=auction["reveal_end_ms"])
    auction = w.state.row("auctions", auction_id)
    assert (auction["status"], auction["winner"], auction["result"]) == ("cleared",
                                                                         f1.public, 8_500)
    assert [w.state.row("rent_bids", (auction_id, i))["status"] for i in (1, 2, 3)] == \
        ["won", "lost", "invalid"]
    assert w.balance(f1) == 50_000  # every lock goes back, the winner's too
    rental = w.state.row("rentals", asset)
    assert (rental["lessee"], rental["rent"], rental["start"], rental["last"],
            rental["number"]) == (f1.public, 8_500, 5, 8, 1)
    # f0's later money keeps paying its old arrears into the asset.
    assert w.state.account(f0.public)["arrears"] == 16_000


def test_unrevealed_rental_bid_forfeits_and_nobody_valid_means_liquidation() -> None:
    w = World(3, notice_periods=0, no_reveal_fee_bps=2500)
    f0, f1, _ = w.f
    asset = funded_asset(w, holders=((BIDDERS[0], 40_000), (BIDDERS[1], 20_000)))
    w.deposit(f0, 100_000)
    w.block([w.h.tx(f0, "rental.end", {"asset": asset})])  # notice 0: ends at the close of 0
    w.close_to(1)
    assert w.state.row("rentals", asset)["status"] == "ended"
    auction_id = rental_auction_id(asset, 0)
    auction = w.state.row("auctions", auction_id)
    w.deposit(f1, 1_000)
    salt = b"\x01" * 32
    w.block([w.h.tx(f1, "rent.commit", {"asset": asset, "lock": 1_000, "commitment":
                                        rent_commitment(auction_id, f1.public, 9_000, 12,
                                                        salt)})])
    w.block([], time_ms=auction["reveal_end_ms"])
    assert w.state.row("assets", asset)["status"] == "liquidating"
    assert w.balance(f1) == 750 and w.state.pool() == 250
    # Interest accrues on the idle asset at the close of 1 (no rent ever came).
    w.close_to(2)
    unpaid = w.series(asset)["unpaid_interest"]
    assert unpaid == 400  # interest runs from period 1, the rental's first
    w.block([w.h.tx(w.f[0], "treasury.liquidated", {"asset": asset, "proceeds": 61_000})])
    liq = liquidate(61_000, [40_000, 20_000], unpaid)
    s = w.series(asset)
    assert s["status"] == "liquidated" and s["outstanding"] == 0
    assert w.holding(asset, BIDDERS[0])["principal_received"] == liq.holders[0].principal
    assert w.holding(asset, BIDDERS[1])["interest_received"] == liq.holders[1].interest
    assert w.state.pool() == liq.surplus + carry(w, 2)  # 250 forfeited, split at close 1
    assert w.state.flows()["liquidations"] == 61_000


def test_acquire_failed_refunds_the_current_holders() -> None:
    w = World(3)
    asset = funded_asset(w, holders=((BIDDERS[0], 30_000), (BIDDERS[1], 30_000)),
                         acquire=False)
    w.block([w.h.tx(BIDDERS[0], "bond.transfer", {"asset": asset, "to": BIDDERS[2].public,
                                                  "amount": 10_000})])
    w.acquire(asset, failed=True)
    assert [w.balance(b) for b in BIDDERS[:3]] == [20_000, 30_000, 10_000]
    assert w.state.row("assets", asset)["status"] == "cancelled"
    assert w.state.flows()["acquisitions"] == 0


def test_bond_transfer_moves_future_payments() -> None:
    w = World(3)
    asset = funded_asset(w, rent=20_000, holders=((BIDDERS[0], 30_000), (BIDDERS[1], 30_000)))
    w.deposit(w.f[0], 200_000)
    w.block([w.h.tx(BIDDERS[1], "bond.transfer", {"asset": asset, "to": BIDDERS[0].public,
                                                  "amount": 10_000})])
    w.close_to(2)  # close 1: 400 interest, 19_600 principal split 40k:20k
    a, b = w.holding(asset, BIDDERS[0]), w.holding(asset, BIDDERS[1])
    assert (a["interest_received"], b["interest_received"]) == (267, 133)
    assert (a["principal_received"], b["principal_received"]) == (13_067, 6_533)
    assert (a["face"], a["sent"], b["face"], b["sent"]) == (40_000, 0, 30_000, 10_000)
    assert a["outstanding"] + b["outstanding"] == w.series(asset)["outstanding"]


def test_owned_asset_returned_and_liquidated_is_all_common_income() -> None:
    w = World(3, notice_periods=0)
    asset = funded_asset(w, price=3_000, rent=3_000, maturity=1, rate=0, max_rate=0,
                         holders=((BIDDERS[0], 3_000),))
    w.deposit(w.f[0], 10_000)
    w.close_to(2)  # close 1 redeems the series
    assert w.state.row("assets", asset)["owned"] == 1
    w.block([w.h.tx(w.f[0], "rental.end", {"asset": asset})])
    w.close_to(3)
    auction = w.state.row("auctions", rental_auction_id(asset, 0))
    assert (auction["reserve"], auction["min_term"]) == (1, 0)  # min_rent, nothing to cover
    w.block([], time_ms=auction["reveal_end_ms"])
    w.block([w.h.tx(w.f[0], "treasury.liquidated", {"asset": asset, "proceeds": 5_000})])
    w.close_to(4)
    assert w.pool_income(3) == 5_000
    assert w.state.row("assets", asset)["status"] == "liquidated"


def test_restart_reopens_the_same_state() -> None:
    """Every asset table round-trips through SQLite (names, types, keys)."""
    w = World(3, on_disk=True)
    asset = funded_asset(w, holders=((BIDDERS[0], 40_000), (BIDDERS[1], 20_000)))
    w.deposit(w.f[0], 15_000)
    w.close_to(3)  # one rent paid, one missed
    root = w.h.ledger.state_root
    tables = {t: w.state.rows(t) for t in ("assets", "auctions", "bond_bids", "series",
                                           "bonds", "rentals", "arrears", "commitments")}
    h2 = w.h.reopen()
    assert h2.ledger.state_root == root
    for t, rows in tables.items():
        assert h2.ledger.state.rows(t) == rows, t
    assert h2.ledger.state.row("assets", asset)["status"] == "rented"
    h2.ledger.close()


def test_local_backend_checks_invariants() -> None:
    """The checker itself notices a broken identity (so its silence means something)."""
    from bootstrap.scenario import parse_scenario
    from bootstrap.simulate import InvariantError

    s = parse_scenario({"seed": "x", "commune": {"name": "c", "currency": "EUR",
                                                  "minor_units": 2},
                        "founders": ["a"], "treasury": {"signers": ["a"], "threshold": 1},
                        "periods": 1, "steps": []})
    b = LocalBackend(s, check=True)
    b.advance_to(b.genesis_time_ms + 1)
    b.ledger._state.data["scalars"]["pool"] = {"value": 5}  # money from nowhere
    try:
        check_invariants(b)
    except InvariantError as exc:
        assert "money held 5 != net inflow 0" in str(exc)
    else:
        raise AssertionError("invariant violation not detected")


def test_bounds_on_bids_and_holders(monkeypatch: Any) -> None:
    """An auction takes at most MAX_BIDS bids, a series at most MAX_HOLDERS holders."""
    from ledger import auctions, series

    monkeypatch.setattr(auctions, "MAX_BIDS", 1)
    monkeypatch.setattr(series, "MAX_HOLDERS", 1)
    w = World(3)
    w.deposit(BIDDERS[0], 60_000)
    asset = w.request(w.f[0], 60_000, 10_000, 12, 8, 1200)
    first = w.h.tx(BIDDERS[0], "bond.commit", {"asset": asset, "lock": 60_000,
                                               "commitment": b"\x01" * 32})
    w.block([first])
    second = w.h.tx(BIDDERS[0], "bond.commit", {"asset": asset, "lock": 0 + 1,
                                                "commitment": b"\x02" * 32})
    reason = w.h.reason(second)
    assert reason is not None and "already has 1 bids, the most one auction takes" in reason
    w.h._pending.clear()
    w.auction(asset, [])  # the sealed bid forfeits; nothing clears
    asset = funded_asset(w, holders=((BIDDERS[1], 60_000),))
    reason = w.h.reason(w.h.tx(BIDDERS[1], "bond.transfer", {
        "asset": asset, "to": BIDDERS[2].public, "amount": 1}))
    assert reason is not None and "already has 1 holders" in reason
