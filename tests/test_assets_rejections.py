"""Every rejection reason of the asset, auction, bond, rental and liquidation transactions.

One world holds an asset in every state at one moment (period 3, 5 s into it), so each
case is one transaction checked against it: rejected with its reason, state unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from ledger.auction import bond_commitment, rent_commitment, rental_auction_id
from ledger.bonds import level_payment
from ledger.testing import GENESIS_TIME_MS, Harness, key
from protocol.crypto import SigningKey
from protocol.transactions import Transaction

I = key("assets", "investor")  # noqa: E741 - the investor, as in the scenarios
POOR = key("assets", "poor")
SALT = b"\x05" * 32
OTHER_SALT = b"\x06" * 32
PERIOD_S = 100


def at(seconds: float) -> int:
    return GENESIS_TIME_MS + int(seconds * 1000)


def request(h: Harness, who: SigningKey, price: int = 10_000, rent: int = 2_000,
            term: int = 10, maturity: int = 6, max_rate: int = 1000) -> Transaction:
    return h.tx(who, "asset.request", {"description": "thing", "price": price, "rent": rent,
                                       "term": term, "maturity": maturity,
                                       "max_rate_bps": max_rate})


def bond_commit(h: Harness, who: SigningKey, asset: bytes, amount: int, rate: int,
                lock: int | None = None, salt: bytes = SALT) -> Transaction:
    c = bond_commitment(asset, who.public, amount, rate, salt)
    return h.tx(who, "bond.commit", {"asset": asset, "commitment": c,
                                     "lock": amount if lock is None else lock})


def bond_reveal(h: Harness, who: SigningKey, asset: bytes, amount: int, rate: int,
                salt: bytes = SALT) -> Transaction:
    return h.tx(who, "bond.reveal", {"asset": asset, "amount": amount, "rate_bps": rate,
                                     "salt": salt})


def rent_commit(h: Harness, who: SigningKey, asset: bytes, rent: int, term: int, lock: int = 0,
                round_index: int = 0, salt: bytes = SALT) -> Transaction:
    c = rent_commitment(rental_auction_id(asset, round_index), who.public, rent, term, salt)
    return h.tx(who, "rent.commit", {"asset": asset, "commitment": c, "lock": lock})


def treasury(h: Harness, kind: str, **args: Any) -> Transaction:
    return h.tx(h.founders[0], kind, args)


@pytest.fixture(scope="module")
def world() -> Harness:
    """Founders f0, f1 (signers, threshold 1), f2; investor I; POOR holds 10.

    Assets: R rented (notice given, ends at the close of 3), S rented (term ends at the
    close of 3), F failed, U funded, C cancelled, L liquidating, Q in a re-auction
    (commit window open, one sealed bid by f1), W in its bond reveal window (I's bid
    revealed, another with a lock below its amount), V in its bond commit window (one
    sealed bid by I).
    """
    h = Harness.create(3, signers=2, threshold=1, params={
        "period_seconds": PERIOD_S, "commit_seconds": 10, "reveal_seconds": 10,
        "notice_periods": 1})
    f0, f1, f2 = h.founders
    h.add_key(I)
    h.add_key(POOR)
    h.block([treasury(h, "treasury.deposit", account=who.public, amount=amount,
                      reference="wire")
             for who, amount in ((I, 1_000_000), (f0, 100_000), (f1, 100_000),
                                 (f2, 100_000), (POOR, 10))], time_ms=at(1))
    reqs = {name: request(h, f0) for name in "RFUCLQ"}
    reqs["S"] = request(h, f2, price=1000, rent=2000, term=3, maturity=1)
    h.block(list(reqs.values()), time_ms=at(2))
    ids = {name: tx.id for name, tx in reqs.items()}
    funded = [n for n in ids if n != "F"]
    h.block([bond_commit(h, I, ids[n], 10_000 if n != "S" else 1000, 500) for n in funded],
            time_ms=at(3))
    h.block([bond_reveal(h, I, ids[n], 10_000 if n != "S" else 1000, 500) for n in funded],
            time_ms=at(12))
    h.block([], time_ms=at(22))  # the bond auctions close
    h.block([treasury(h, "treasury.acquire", asset=ids[n]) for n in "RLQS"]
            + [treasury(h, "treasury.acquire_failed", asset=ids["C"])], time_ms=at(23))
    # Rentals run from period 1. L's lessee gives notice now: it ends at the close of 1.
    h.block([h.tx(f0, "rental.end", {"asset": ids["L"]})], time_ms=at(30))
    # Period 1: Q's lessee gives notice (ends at the close of 2).
    h.block([h.tx(f0, "rental.end", {"asset": ids["Q"]})], time_ms=at(150))
    h.block([], time_ms=at(222))  # L's re-auction (opened at the close of 1) closes: no bids
    # Period 2: R's lessee gives notice (ends at the close of 3); W is requested.
    w = request(h, f1)
    h.block([h.tx(f0, "rental.end", {"asset": ids["R"]}), w], time_ms=at(293))
    ids["W"] = w.id
    h.block([bond_commit(h, I, w.id, 4000, 600),
             bond_commit(h, f2, w.id, 1000, 600, lock=500)], time_ms=at(294))
    # Period 3 (the close of 2 opens Q's re-auction); W's reveal window is open.
    v = request(h, f1)
    ids["V"] = v.id
    h.block([bond_reveal(h, I, w.id, 4000, 600), v], time_ms=at(304))
    h.block([bond_commit(h, I, v.id, 5000, 700),
             rent_commit(h, f1, ids["Q"], 3000, 10)], time_ms=at(305))
    state = h.ledger.state
    statuses = {n: state.row("assets", ids[n])["status"] for n in ids}  # type: ignore[index]
    assert statuses == {"R": "rented", "F": "failed", "U": "funded", "C": "cancelled",
                        "L": "liquidating", "Q": "reauction", "S": "rented",
                        "W": "auction", "V": "auction"}, statuses
    assert state.open_period() == 3
    h.world = ids  # type: ignore[attr-defined]
    return h


def a(h: Harness, name: str) -> bytes:
    return h.world[name]  # type: ignore[attr-defined,no-any-return]


@dataclass
class Case:
    name: str
    make: Callable[[Harness], Transaction]
    reason: str


def f(i: int) -> Callable[[Harness], SigningKey]:
    return lambda h: h.founders[i]


UNKNOWN = b"\x09" * 32

CASES = [
    # asset.request
    Case("request by non-member", lambda h: request(h, I), "only members can request assets"),
    Case("maturity beyond term", lambda h: request(h, h.founders[0], term=5, maturity=6),
         "bond maturity 6 is longer than the rental term 5"),
    Case("rent below the level payment", lambda h: request(h, h.founders[0], rent=1000),
         f"rent 1000 does not cover the level payment {level_payment(10_000, 1000, 6, 12)} "
         "of a 10000 bond series over 6 periods at 1000 bps"),
    # bond.commit
    Case("commit on unknown asset", lambda h: bond_commit(h, I, UNKNOWN, 1, 1),
         f"no asset {UNKNOWN.hex()}"),
    Case("commit on failed asset", lambda h: bond_commit(h, I, a(h, "F"), 1, 1),
         "is failed: cannot bid for its bonds (only when auction)"),
    Case("commit on funded asset", lambda h: bond_commit(h, I, a(h, "U"), 1, 1),
         "is funded: cannot bid for its bonds"),
    Case("commit after the commit window", lambda h: bond_commit(h, I, a(h, "W"), 1, 1,
                                                                 salt=OTHER_SALT),
         "the commit window of the bond auction of asset"),
    Case("commit twice", lambda h: bond_commit(h, I, a(h, "V"), 5000, 700),
         "this commitment was already made"),
    Case("lock above balance", lambda h: bond_commit(h, POOR, a(h, "V"), 100, 700),
         "insufficient balance: z"),
    # bond.reveal
    Case("reveal on unknown asset", lambda h: bond_reveal(h, I, UNKNOWN, 1, 1),
         f"no asset {UNKNOWN.hex()}"),
    Case("reveal in the commit window", lambda h: bond_reveal(h, I, a(h, "V"), 5000, 700),
         "the reveal window of the bond auction of asset"),
    Case("reveal after the close", lambda h: bond_reveal(h, I, a(h, "R"), 10_000, 500),
         "is not open: nothing to reveal"),
    Case("reveal with the wrong rate", lambda h: bond_reveal(h, f(2)(h), a(h, "W"), 1000, 601),
         "the reveal matches no sealed bid of this signer"),
    Case("reveal another's bid", lambda h: bond_reveal(h, f(0)(h), a(h, "W"), 1000, 600),
         "the reveal matches no sealed bid of this signer"),
    Case("reveal twice", lambda h: bond_reveal(h, I, a(h, "W"), 4000, 600),
         "is already revealed"),
    Case("reveal above the lock", lambda h: bond_reveal(h, f(2)(h), a(h, "W"), 1000, 600),
         "the revealed amount 1000 exceeds the bid's lock 500"),
    # bond.transfer
    Case("transfer without a series", lambda h: h.tx(I, "bond.transfer", {
        "asset": a(h, "F"), "to": POOR.public, "amount": 1}), "has no bond series"),
    Case("transfer of a cancelled series", lambda h: h.tx(I, "bond.transfer", {
        "asset": a(h, "C"), "to": POOR.public, "amount": 1}),
         "is cancelled: nothing outstanding to transfer"),
    Case("transfer more than held", lambda h: h.tx(I, "bond.transfer", {
        "asset": a(h, "R"), "to": POOR.public, "amount": 10_001}),
         "outstanding face of asset"),
    Case("transfer by a non-holder", lambda h: h.tx(POOR, "bond.transfer", {
        "asset": a(h, "R"), "to": I.public, "amount": 1}), "holds 0 outstanding face"),
    Case("transfer to oneself", lambda h: h.tx(I, "bond.transfer", {
        "asset": a(h, "R"), "to": I.public, "amount": 1}),
         "a bond transfer to oneself moves nothing"),
    # treasury.acquire / acquire_failed / liquidated
    Case("acquire unknown asset", lambda h: treasury(h, "treasury.acquire", asset=UNKNOWN),
         f"no asset {UNKNOWN.hex()}"),
    Case("acquire a failed asset", lambda h: treasury(h, "treasury.acquire", asset=a(h, "F")),
         "is failed: cannot record its purchase (only when funded)"),
    Case("acquire twice", lambda h: treasury(h, "treasury.acquire", asset=a(h, "R")),
         "is rented: cannot record its purchase"),
    Case("acquire during the auction", lambda h: treasury(h, "treasury.acquire",
                                                          asset=a(h, "W")),
         "is auction: cannot record its purchase"),
    Case("acquire_failed after the purchase", lambda h: treasury(
        h, "treasury.acquire_failed", asset=a(h, "R")), "is rented: cannot record its purchase"),
    Case("acquire_failed twice", lambda h: treasury(h, "treasury.acquire_failed",
                                                    asset=a(h, "C")),
         "is cancelled: cannot record its purchase"),
    Case("acquire by a non-signer", lambda h: h.tx(h.founders[2], "treasury.acquire",
                                                   {"asset": a(h, "U")}),
         "is not a treasury signer"),
    Case("liquidated while rented", lambda h: treasury(h, "treasury.liquidated",
                                                       asset=a(h, "R"), proceeds=1),
         "is rented: cannot record its sale (only when liquidating)"),
    Case("liquidated during a re-auction", lambda h: treasury(h, "treasury.liquidated",
                                                              asset=a(h, "Q"), proceeds=1),
         "is reauction: cannot record its sale"),
    Case("liquidated unknown asset", lambda h: treasury(h, "treasury.liquidated",
                                                        asset=UNKNOWN, proceeds=1),
         f"no asset {UNKNOWN.hex()}"),
    # rental.end
    Case("end on unknown asset", lambda h: h.tx(f(0)(h), "rental.end", {"asset": UNKNOWN}),
         f"no asset {UNKNOWN.hex()}"),
    Case("end without a rental", lambda h: h.tx(f(0)(h), "rental.end", {"asset": a(h, "U")}),
         "has no active rental"),
    Case("end a returned asset", lambda h: h.tx(f(0)(h), "rental.end", {"asset": a(h, "Q")}),
         "has no active rental"),
    Case("end by another", lambda h: h.tx(f(1)(h), "rental.end", {"asset": a(h, "R")}),
         "only the lessee can end the rental"),
    Case("end twice", lambda h: h.tx(f(0)(h), "rental.end", {"asset": a(h, "R")}),
         "notice was already given in period 2: the rental ends at the close of period 3"),
    Case("end no earlier than its term", lambda h: h.tx(f(2)(h), "rental.end",
                                                        {"asset": a(h, "S")}),
         "the rental ends at the close of period 3 anyway"),
    # rent.commit
    Case("rent bid by non-member", lambda h: rent_commit(h, I, a(h, "Q"), 3000, 10),
         "only members can bid in rental re-auctions"),
    Case("rent bid on unknown asset", lambda h: rent_commit(h, f(0)(h), UNKNOWN, 3000, 10),
         f"no asset {UNKNOWN.hex()}"),
    Case("rent bid on a rented asset", lambda h: rent_commit(h, f(0)(h), a(h, "R"), 3000, 10),
         "is rented: cannot bid to rent it (only when reauction)"),
    Case("rent bid on a liquidating asset", lambda h: rent_commit(h, f(0)(h), a(h, "L"), 3000,
                                                                  10),
         "is liquidating: cannot bid to rent it"),
    Case("rent bid twice", lambda h: rent_commit(h, f(1)(h), a(h, "Q"), 3000, 10),
         "this commitment was already made"),
    Case("rent bid lock above balance", lambda h: rent_commit(h, f(0)(h), a(h, "Q"), 3000, 10,
                                                              lock=10**9),
         "insufficient balance"),
    # rent.reveal
    Case("rent reveal in the commit window", lambda h: h.tx(f(1)(h), "rent.reveal", {
        "asset": a(h, "Q"), "rent": 3000, "term": 10, "salt": SALT}),
         "the reveal window of rental re-auction 0 of asset"),
    Case("rent reveal with no auction", lambda h: h.tx(f(1)(h), "rent.reveal", {
        "asset": a(h, "R"), "rent": 3000, "term": 10, "salt": SALT}),
         "is not open: nothing to reveal"),
    Case("rent reveal on unknown asset", lambda h: h.tx(f(1)(h), "rent.reveal", {
        "asset": UNKNOWN, "rent": 3000, "term": 10, "salt": SALT}),
         f"no asset {UNKNOWN.hex()}"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rejection(world: Harness, case: Case) -> None:
    root = world.ledger.state_root
    tx = case.make(world)
    world._pending.clear()
    reason = world.reason(tx)
    assert reason is not None and case.reason in reason, reason
    block, rejected = world.build([tx])
    assert len(rejected) == 1 and rejected[0][0] == tx.id and case.reason in rejected[0][1]
    assert block.txs == ()
    assert world.ledger.state_root == root


def test_late_reveals_and_commits(world: Harness) -> None:
    """Windows are checked against the block time, not the open period."""
    h = world
    q = a(h, "Q")
    auction = h.ledger.state.row("auctions", rental_auction_id(q, 0))
    assert auction is not None
    commit_end, reveal_end = auction["commit_end_ms"], auction["reveal_end_ms"]
    reveal = h.tx(h.founders[1], "rent.reveal", {"asset": q, "rent": 3000, "term": 10,
                                                 "salt": b"\x07" * 32})
    h._pending.clear()
    reason = h.ledger.check_tx(reveal, time_ms=commit_end)
    assert reason is not None and "matches no sealed bid" in reason
    assert h.ledger.check_tx(reveal, time_ms=commit_end - 1) == (
        f"the reveal window of rental re-auction 0 of asset {q.hex()} opens at {commit_end} "
        f"ms (block time {commit_end - 1} ms)")
    late = rent_commit(h, h.founders[0], q, 3000, 10, salt=b"\x08" * 32)
    h._pending.clear()
    reason = h.ledger.check_tx(late, time_ms=commit_end)
    assert reason is not None and "the commit window of rental re-auction 0" in reason
    assert h.ledger.check_tx(late, time_ms=commit_end - 1) is None
    assert reveal_end == commit_end + 10_000
