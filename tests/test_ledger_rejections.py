"""Every rejection reason of the ledger core, table-driven, each leaving the state unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ledger.core import install as core_install
from ledger.membership import install as membership_install
from ledger.money import install as money_install
from ledger.rules import Rules
from ledger.testing import Harness, key, make_genesis
from protocol.crypto import SigningKey
from protocol.transactions import Transaction

A = key("outsider", "a")
B = key("outsider", "b")
C = key("outsider", "c")


@pytest.fixture(scope="module")
def world() -> Harness:
    """3 founders (f0, f1 treasury signers, threshold 2); f2 holds 1000; A applied;
    B is a former member who resigned; C was expelled; one open proposal; period 0 closed."""
    h = Harness.create(3, params={"period_seconds": 100, "admission_attestations": 2})
    f0, f1, f2 = h.founders
    dep = h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 1000,
                                        "reference": "wire"})
    h.block([dep, h.tx(f1, "treasury.approve", {"action": dep.id})])
    h.block([h.tx(A, "member.apply", {"name": "A", "enterprise": "", "labour": "x"}),
             h.tx(B, "member.apply", {"name": "B", "enterprise": "", "labour": "x"}),
             h.tx(C, "member.apply", {"name": "C", "enterprise": "", "labour": "x"})])
    h.block([h.tx(f0, "member.attest", {"applicant": B.public}),
             h.tx(f1, "member.attest", {"applicant": B.public}),
             h.tx(f0, "member.attest", {"applicant": C.public}),
             h.tx(f1, "member.attest", {"applicant": C.public}),
             h.tx(f0, "member.attest", {"applicant": A.public})])
    h.block([h.tx(B, "member.resign")])
    expel = h.tx(f0, "proposal.create", {"title": "expel C",
                                         "change": {"type": "expel", "member": C.public}})
    h.block([expel])
    h.block([h.tx(m, "proposal.vote", {"proposal": expel.id, "yes": True})
             for m in (f0, f1, f2)])
    assert h.ledger.state.proposal(expel.id)["status"] == "passed"
    assert not h.ledger.state.is_member(C.public)
    wd = h.tx(f2, "account.withdraw", {"amount": 100, "reference": "iban"})
    h.block([wd])
    pay = h.tx(f0, "treasury.payout", {"withdrawal": wd.id})
    h.block([pay, h.tx(f1, "treasury.approve", {"action": pay.id})])
    h.world = {"withdrawal": wd.id, "payout": pay.id}  # type: ignore[attr-defined]
    h.block([], dt_ms=100_000)  # closes period 0
    open_p = h.tx(f1, "proposal.create", {"title": "longer periods", "voting_seconds": 50,
                                          "change": {"type": "param", "name": "period_seconds",
                                                     "value": 200}})
    pending = h.tx(f0, "treasury.deposit", {"account": A.public, "amount": 5,
                                            "reference": "pending"})
    h.block([open_p, pending, h.tx(f0, "proposal.vote", {"proposal": open_p.id, "yes": False})])
    h.world.update(open=open_p.id, pending=pending.id, expel=expel.id)  # type: ignore[attr-defined]
    return h


@dataclass
class Case:
    name: str
    make: Callable[[Harness], Transaction]
    reason: str


def f(i: int) -> Callable[[Harness], SigningKey]:
    return lambda h: h.founders[i]


def w(h: Harness, name: str) -> bytes:
    return h.world[name]  # type: ignore[attr-defined,no-any-return]


CASES = [
    # nonces
    Case("nonce replay", lambda h: h.tx(h.founders[2], "account.transfer",
                                        {"to": A.public, "amount": 1}, nonce=1),
         "nonce 1 was already used by z"),
    Case("nonce gap", lambda h: h.tx(h.founders[2], "account.transfer",
                                     {"to": A.public, "amount": 1},
                                     nonce=h.ledger.next_nonce(h.founders[2].public) + 1),
         "is not the next nonce"),
    # membership
    Case("apply as member", lambda h: h.tx(h.founders[0], "member.apply",
                                           {"name": "x", "enterprise": "", "labour": ""}),
         "is already a member"),
    Case("apply twice", lambda h: h.tx(A, "member.apply",
                                       {"name": "x", "enterprise": "", "labour": ""}),
         "already has a pending application"),
    Case("apply when expelled", lambda h: h.tx(C, "member.apply",
                                               {"name": "x", "enterprise": "", "labour": ""}),
         "was expelled by proposal"),
    Case("attest by non-member", lambda h: h.tx(B, "member.attest", {"applicant": A.public}),
         "only members can attest labour"),
    Case("attest oneself", lambda h: h.tx(A, "member.attest", {"applicant": A.public}),
         "only members can attest labour"),
    Case("attest without application", lambda h: h.tx(h.founders[1], "member.attest",
                                                       {"applicant": B.public}),
         "has no pending application"),
    Case("attest a member", lambda h: h.tx(h.founders[1], "member.attest",
                                           {"applicant": h.founders[2].public}),
         "is already a member"),
    Case("attest twice", lambda h: h.tx(h.founders[0], "member.attest", {"applicant": A.public}),
         "already attested"),
    Case("resign as non-member", lambda h: h.tx(B, "member.resign"),
         "only members can resign"),
    Case("node by non-member", lambda h: h.tx(A, "member.node", {"peer_id": b"p"}),
         "only members can register a node"),
    Case("node unchanged", lambda h: h.tx(h.founders[0], "member.node",
                                          {"peer_id": b"\x00\x24\x08\x01\x12\x20"
                                           + h.founders[0].public}),
         "already registered"),
    Case("node of another member", lambda h: h.tx(h.founders[0], "member.node",
                                                  {"peer_id": b"\x00\x24\x08\x01\x12\x20"
                                                   + h.founders[1].public}),
         "peer id already votes for member"),
    # accounts
    Case("overdraft", lambda h: h.tx(h.founders[2], "account.transfer",
                                     {"to": A.public, "amount": 5000}),
         "insufficient balance: z"),
    Case("transfer to oneself", lambda h: h.tx(h.founders[2], "account.transfer",
                                               {"to": h.founders[2].public, "amount": 1}),
         "a transfer to oneself moves nothing"),
    Case("withdraw too much", lambda h: h.tx(A, "account.withdraw",
                                             {"amount": 1, "reference": "x"}),
         "has 0, needs 1"),
    # treasury
    Case("deposit by non-signer", lambda h: h.tx(h.founders[2], "treasury.deposit",
                                                 {"account": A.public, "amount": 1,
                                                  "reference": "x"}),
         "is not a treasury signer"),
    Case("approve unknown action", lambda h: h.tx(h.founders[1], "treasury.approve",
                                                  {"action": b"\x01" * 32}),
         "no treasury action"),
    Case("approve executed action", lambda h: h.tx(h.founders[1], "treasury.approve",
                                                   {"action": w(h, "payout")}),
         "already executed"),
    Case("approve twice", lambda h: h.tx(h.founders[0], "treasury.approve",
                                         {"action": w(h, "pending")}),
         "already approved treasury action"),
    Case("payout of unknown withdrawal", lambda h: h.tx(h.founders[0], "treasury.payout",
                                                        {"withdrawal": b"\x02" * 32}),
         "no withdrawal request"),
    Case("payout twice", lambda h: h.tx(h.founders[0], "treasury.payout",
                                        {"withdrawal": w(h, "withdrawal")}),
         "is already paid"),
    # governance
    Case("proposal by non-member", lambda h: h.tx(A, "proposal.create", {
        "title": "t", "change": {"type": "expel", "member": h.founders[0].public}}),
         "only members can make proposals"),
    Case("unknown parameter", lambda h: h.tx(h.founders[0], "proposal.create", {
        "title": "t", "change": {"type": "param", "name": "speed", "value": 1}}),
         "unknown parameter 'speed'"),
    Case("parameter out of range", lambda h: h.tx(h.founders[0], "proposal.create", {
        "title": "t", "change": {"type": "param", "name": "no_reveal_fee_bps", "value": 10001}}),
         "parameter no_reveal_fee_bps must be an integer from 0 to 10000"),
    Case("treasury signer not a member", lambda h: h.tx(h.founders[0], "proposal.create", {
        "title": "t", "change": {"type": "treasury", "signers": [A.public], "threshold": 1}}),
         "is not a member"),
    Case("treasury threshold above signers", lambda h: h.tx(h.founders[0], "proposal.create", {
        "title": "t", "change": {"type": "treasury", "signers": [h.founders[0].public],
                                 "threshold": 2}}),
         "threshold 2 is more than the 1 signers"),
    Case("expel a non-member", lambda h: h.tx(h.founders[0], "proposal.create", {
        "title": "t", "change": {"type": "expel", "member": B.public}}),
         "is not a member"),
    Case("vote by non-member", lambda h: h.tx(A, "proposal.vote",
                                              {"proposal": w(h, "open"), "yes": True}),
         "only members can vote"),
    Case("vote on unknown proposal", lambda h: h.tx(h.founders[0], "proposal.vote",
                                                    {"proposal": b"\x03" * 32, "yes": True}),
         "no proposal"),
    Case("vote on decided proposal", lambda h: h.tx(h.founders[0], "proposal.vote",
                                                    {"proposal": w(h, "expel"), "yes": True}),
         "is already passed"),
    Case("vote twice", lambda h: h.tx(h.founders[0], "proposal.vote",
                                      {"proposal": w(h, "open"), "yes": True}),
         "already voted on proposal"),
    # dividends
    Case("claim an open period", lambda h: h.tx(h.founders[0], "dividend.claim",
                                                {"periods": [5]}),
         "period 5 has not closed yet"),
    Case("claim without entitlement", lambda h: h.tx(h.founders[0], "dividend.claim",
                                                     {"periods": [0]}),
         "no dividend for period 0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rejection(world: Harness, case: Case) -> None:
    root = world.ledger.state_root
    tx = case.make(world)
    world._pending.clear()
    reason = world.reason(tx)
    assert reason is not None and case.reason in reason, reason
    block, rejected = world.build([tx])
    assert rejected == [(tx.id, reason)]
    assert block.txs == ()
    assert world.ledger.state_root == root


def test_vote_after_window(world: Harness) -> None:
    tx = world.tx(world.founders[1], "proposal.vote", {"proposal": world.world["open"],  # type: ignore[attr-defined]
                                                       "yes": True})
    world._pending.clear()
    reason = world.ledger.check_tx(tx, time_ms=world.time_ms + 60_000)
    assert reason is not None and "closed at" in reason


def test_bad_signature(world: Harness) -> None:
    other = Harness.create(2, name="another commune")
    tx = other.tx(other.founders[0], "member.resign")
    reason = world.ledger.check_tx(tx)
    assert reason is not None and "bad signature" in reason


def test_unregistered_kind_and_last_validator_and_former_signer() -> None:
    rules = Rules()
    for install in (core_install, money_install, membership_install):
        install(rules)
    rules.freeze()
    g, keys = make_genesis(1)
    h = Harness(g, keys, rules=rules)
    only = h.founders[0]
    tx = h.tx(only, "account.transfer", {"to": A.public, "amount": 1})
    assert h.reason(tx) == "account.transfer is not enabled on this ledger yet"
    h._pending.clear()
    reason = h.reason(h.tx(only, "member.resign"))
    assert reason is not None and "is the last validator" in reason


def test_signer_who_left_cannot_act() -> None:
    h = Harness.create(3, signers=2, threshold=1)
    f0, f1, _ = h.founders
    h.block([h.tx(f1, "member.resign")])
    reason = h.reason(h.tx(f1, "treasury.deposit", {"account": A.public, "amount": 1,
                                                    "reference": "x"}))
    assert reason is not None and "is no longer a member and cannot act" in reason
