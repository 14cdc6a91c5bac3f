"""Membership, treasury, governance and dividends working together (DESIGN 6.2-6.3, 6.7-6.8)."""

from __future__ import annotations

import pytest

from ledger.execute import close_periods
from ledger.modules import MODULES
from ledger.money import add_arrears, add_common_income, credit
from ledger.rules import Exec, Rules
from ledger.testing import Harness, key, make_genesis, rent_stand_in_rules

A = key("outsider", "a")
B = key("outsider", "b")
LESSEE = key("lessee")
RENT = 250


def rent_rules() -> Rules:
    return rent_stand_in_rules(LESSEE.public, RENT)


def rent_harness(founders: int = 3) -> Harness:
    g, keys = make_genesis(founders, signers=1, threshold=1, params={"period_seconds": 100})
    return Harness(g, keys, rules=rent_rules())


def deposit(h: Harness, who: bytes, amount: int) -> None:
    h.block([h.tx(h.founders[0], "treasury.deposit", {"account": who, "amount": amount,
                                                      "reference": "wire"})])


def held(h: Harness) -> None:
    total, inflow, _ = h.ledger.conservation()
    assert total == inflow


def test_dividends_split_equally_with_carry_and_survive_resignation() -> None:
    h = rent_harness(3)
    f0, f1, f2 = h.founders
    deposit(h, LESSEE.public, 2 * RENT)
    h.block([], dt_ms=100_000)  # close period 0: pool 250 -> 83 each, carry 1
    p0 = h.ledger.state.period(0)
    assert p0 is not None and (p0["pool"], p0["members"], p0["share"], p0["carry"]) == \
        (250, 3, 83, 1)
    assert h.ledger.state.pool() == 1
    h.block([h.tx(f1, "member.resign")])
    h.block([], dt_ms=100_000)  # close period 1: pool 251 among 2 -> 125 each, carry 1
    p1 = h.ledger.state.period(1)
    assert p1 is not None and (p1["members"], p1["share"], p1["carry"]) == (2, 125, 1)
    assert h.ledger.state.dividends(f1.public) == [(0, 83, 0)]
    h.block([h.tx(f1, "dividend.claim", {"periods": [0]}),
             h.tx(f0, "dividend.claim", {"periods": [0, 1]})])
    assert h.ledger.state.balance(f1.public) == 83
    assert h.ledger.state.balance(f0.public) == 83 + 125
    again = h.tx(f0, "dividend.claim", {"periods": [1]})
    assert "already claimed at height" in (h.reason(again) or "")
    held(h)
    assert h.ledger.state.unclaimed_periods(f2.public) == [0, 1]


def test_arrears_are_paid_before_the_balance() -> None:
    h = rent_harness(2)
    f0 = h.founders[0]
    h.block([], dt_ms=100_000)  # lessee has nothing: 250 arrears
    h.block([], dt_ms=100_000)  # 500 arrears
    assert h.ledger.state.arrears(LESSEE.public) == 500
    assert h.ledger.state.pool() == 0
    deposit(h, LESSEE.public, 300)  # pays the oldest debt in full, 50 of the next
    assert h.ledger.state.balance(LESSEE.public) == 0
    assert h.ledger.state.arrears(LESSEE.public) == 200
    assert h.ledger.state.pool() == 300
    deposit(h, f0.public, 1000)
    h.block([h.tx(f0, "account.transfer", {"to": LESSEE.public, "amount": 450})])
    assert h.ledger.state.arrears(LESSEE.public) == 0
    assert h.ledger.state.balance(LESSEE.public) == 250
    assert h.ledger.state.rows("arrears") == []
    held(h)


def test_credit_reentrancy_through_a_payee() -> None:
    """A payee that credits the debtor again pays the debtor's remaining arrears first."""
    rules = Rules()
    for m in MODULES:
        m.install(rules)
    rules.arrears_payee("refund", lambda ex, debtor, ref, amount: credit(ex, debtor, amount // 2))
    rules.arrears_payee("plain", lambda ex, debtor, ref, amount: add_common_income(ex, amount))
    rules.freeze()
    g, keys = make_genesis(1)
    h = Harness(g, keys, rules=rules)
    state = h.ledger._state
    ex = Exec(state, rules, g, 1, h.time_ms)
    add_arrears(ex, A.public, 100, "refund", b"")
    add_arrears(ex, A.public, 40, "plain", b"")
    # 100 pays the first debt; its payee credits 50 back, which pays the second debt (40),
    # leaving 10 for the balance.
    assert credit(ex, A.public, 100) == 0
    acct = state.peek("accounts", A.public)
    assert acct is not None and (acct["balance"], acct["arrears"]) == (10, 0)
    state.rollback(0)


def test_admission_threshold_is_capped_by_members() -> None:
    h = Harness.create(1, params={"admission_attestations": 2})
    f0 = h.founders[0]
    h.block([h.tx(A, "member.apply", {"name": "A", "enterprise": "co-op", "labour": "x"})])
    _, rejected = h.block([h.tx(f0, "member.attest", {"applicant": A.public})])
    assert h.ledger.state.is_member(A.public)  # min(2, 1 member) = 1 attestation
    h.block([h.tx(B, "member.apply", {"name": "B", "enterprise": "", "labour": "y"})])
    h.block([h.tx(A, "member.attest", {"applicant": B.public})])
    assert not h.ledger.state.is_member(B.public)  # now 2 members: needs 2
    assert h.ledger.state.application(B.public)["attestations"] == 1  # type: ignore[index]
    h.block([h.tx(f0, "member.attest", {"applicant": B.public})])
    assert h.ledger.state.is_member(B.public)
    assert h.ledger.state.application(B.public) is None


def test_resigned_member_may_apply_again() -> None:
    h = Harness.create(2, params={"admission_attestations": 1})
    f0, f1 = h.founders
    h.block([h.tx(f1, "member.resign")])
    h.block([h.tx(f1, "member.apply", {"name": "back", "enterprise": "", "labour": "z"})])
    h.block([h.tx(f0, "member.attest", {"applicant": f1.public})])
    assert h.ledger.state.is_member(f1.public)
    assert h.ledger.state.row("departures", f1.public) is None


def test_treasury_k_of_n_withdrawal_and_payout() -> None:
    h = Harness.create(3, signers=3, threshold=2)
    f0, f1, f2 = h.founders
    dep = h.tx(f0, "treasury.deposit", {"account": A.public, "amount": 700, "reference": "w1"})
    h.block([dep])
    assert h.ledger.state.balance(A.public) == 0
    assert h.ledger.state.treasury_action(dep.id)["status"] == "pending"  # type: ignore[index]
    h.block([h.tx(f2, "treasury.approve", {"action": dep.id})])
    assert h.ledger.state.balance(A.public) == 700
    assert h.ledger.tx_result(dep.id) == (1, 0, {"approvals": 1, "threshold": 2, "executed": 0})
    wd = h.tx(A, "account.withdraw", {"amount": 200, "reference": "iban"})
    h.block([wd])
    assert h.ledger.state.balance(A.public) == 500
    held(h)
    pay = h.tx(f1, "treasury.payout", {"withdrawal": wd.id})
    h.block([pay, h.tx(f0, "treasury.approve", {"action": pay.id})])
    assert h.ledger.state.withdrawal(wd.id)["status"] == "paid"  # type: ignore[index]
    assert h.ledger.state.flows() == {"deposits": 700, "payouts": 200, "acquisitions": 0,
                                      "liquidations": 0}
    held(h)


def test_governance_passes_at_two_thirds_and_applies_changes() -> None:
    h = Harness.create(4, signers=1, threshold=1)
    f0, f1, f2, f3 = h.founders
    p = h.tx(f0, "proposal.create", {"title": "new treasury", "change": {
        "type": "treasury", "signers": [f1.public, f2.public], "threshold": 2}})
    h.block([p])
    h.block([h.tx(f0, "proposal.vote", {"proposal": p.id, "yes": True}),
             h.tx(f1, "proposal.vote", {"proposal": p.id, "yes": True})])
    assert h.ledger.state.proposal(p.id)["status"] == "open"  # type: ignore[index]
    h.block([h.tx(f2, "proposal.vote", {"proposal": p.id, "yes": True})])  # 3 of 4 > 2/3
    assert h.ledger.state.proposal(p.id)["status"] == "passed"  # type: ignore[index]
    assert h.ledger.state.treasury() == {"signers": sorted([f1.public, f2.public]),
                                         "threshold": 2}
    late = h.tx(f3, "proposal.vote", {"proposal": p.id, "yes": True})
    assert "is already passed" in (h.reason(late) or "")


def test_governance_window_expiry_param_and_expel() -> None:
    h = Harness.create(3, params={"period_seconds": 100})
    f0, f1, f2 = h.founders
    slow = h.tx(f0, "proposal.create", {"title": "p", "voting_seconds": 10, "change": {
        "type": "param", "name": "period_seconds", "value": 500}})
    h.block([slow])
    h.block([h.tx(f0, "proposal.vote", {"proposal": slow.id, "yes": True}),
             h.tx(f1, "proposal.vote", {"proposal": slow.id, "yes": False})])
    h.block([], dt_ms=10_000)
    assert h.ledger.state.proposal(slow.id)["status"] == "rejected"  # type: ignore[index]
    fast = h.tx(f0, "proposal.create", {"title": "q", "change": {
        "type": "param", "name": "period_seconds", "value": 500}})
    h.block([fast])
    h.block([h.tx(m, "proposal.vote", {"proposal": fast.id, "yes": True}) for m in (f0, f1, f2)])
    assert h.ledger.state.params()["period_seconds"] == 500
    end0 = h.ledger.state.scalar("period_end_ms")
    h.block([], time_ms=end0)
    assert h.ledger.state.scalar("period_end_ms") == end0 + 500_000
    ex = h.tx(f0, "proposal.create", {"title": "expel f2", "change": {
        "type": "expel", "member": f2.public}})
    h.block([ex])
    h.block([h.tx(f2, "proposal.vote", {"proposal": ex.id, "yes": False}),
             h.tx(f0, "proposal.vote", {"proposal": ex.id, "yes": True}),
             h.tx(f1, "proposal.vote", {"proposal": ex.id, "yes": True})])
    assert h.ledger.state.proposal(ex.id)["status"] == "open"  # type: ignore[index]
    assert h.ledger.state.is_member(f2.public)  # 2 of 3 is not more than 2/3
    h.block([], dt_ms=h.ledger.state.params()["voting_seconds"] * 1000)
    assert h.ledger.state.proposal(ex.id)["status"] == "rejected"  # type: ignore[index]
    assert h.ledger.state.is_member(f2.public)


def test_leaving_member_withdraws_votes_and_expulsion_applies() -> None:
    h = Harness.create(4)
    f0, f1, f2, f3 = h.founders
    ex = h.tx(f0, "proposal.create", {"title": "expel f3", "change": {
        "type": "expel", "member": f3.public}})
    h.block([ex])
    h.block([h.tx(f0, "proposal.vote", {"proposal": ex.id, "yes": True}),
             h.tx(f1, "proposal.vote", {"proposal": ex.id, "yes": True})])
    h.block([h.tx(f1, "member.resign")])
    assert h.ledger.state.proposal(ex.id)["yes"] == 1  # type: ignore[index]
    h.block([h.tx(f2, "proposal.vote", {"proposal": ex.id, "yes": True})])  # 2 of 3: no
    assert h.ledger.state.proposal(ex.id)["status"] == "open"  # type: ignore[index]
    h.block([h.tx(f3, "proposal.vote", {"proposal": ex.id, "yes": True})])
    p = h.ledger.state.proposal(ex.id)
    assert p is not None and p["status"] == "passed", p
    assert not h.ledger.state.is_member(f3.public)
    assert h.ledger.state.row("departures", f3.public)["reason"] == "expelled"  # type: ignore[index]


def test_failed_change_is_recorded_not_applied() -> None:
    h = Harness.create(3)
    f0, f1, f2 = h.founders
    p = h.tx(f0, "proposal.create", {"title": "signers", "change": {
        "type": "treasury", "signers": [f2.public], "threshold": 1}})
    h.block([p])
    h.block([h.tx(f2, "member.resign")])
    h.block([h.tx(f0, "proposal.vote", {"proposal": p.id, "yes": True}),
             h.tx(f1, "proposal.vote", {"proposal": p.id, "yes": True})])
    row = h.ledger.state.proposal(p.id)
    assert row is not None and row["status"] == "failed" and "is not a member" in row["outcome"]
    assert f2.public not in h.ledger.state.treasury()["signers"]


def test_several_periods_close_in_one_block() -> None:
    h = rent_harness(2)
    deposit(h, LESSEE.public, 10 * RENT)
    h.block([], dt_ms=350_000)
    assert h.ledger.state.open_period() == 3
    assert [h.ledger.state.period(k)["pool"] for k in range(3)] == [250] * 3  # type: ignore[index]


def test_close_periods_runs_steps_in_order() -> None:
    order: list[str] = []
    rules = Rules()
    for m in MODULES:
        m.install(rules)
    rules.on_period_close(200, "returns", lambda ex, p: order.append(f"returns {p}"))
    rules.on_period_close(100, "rent", lambda ex, p: order.append(f"rent {p}"))
    rules.freeze()
    g, keys = make_genesis(1, params={"period_seconds": 1})
    h = Harness(g, keys, rules=rules)
    ex = Exec(h.ledger._state, rules, g, 1, g.genesis_time_ms + 2000)
    assert close_periods(ex) == 2
    h.ledger._state.rollback(0)
    assert order == ["rent 0", "returns 0", "rent 1", "returns 1"]


def test_a_buggy_rule_is_contained() -> None:
    """A handler that writes a malformed row is rejected with an internal-error reason and
    leaves nothing behind; a close step that cannot run rejects the block, loudly."""
    from ledger.execute import BlockRejected

    def bad_transfer(ex: Exec, tx: object) -> None:
        ex.put("accounts", A.public, {"balance": 1.5})  # wrong columns and type

    rules = Rules()
    for m in MODULES:
        if m.__name__ != "ledger.accounts":
            m.install(rules)
    rules.on_tx("account.transfer", bad_transfer)  # type: ignore[arg-type]
    rules.on_period_close(100, "broken", lambda ex, p: ex.reject("no money for the step"))
    rules.freeze()
    g, keys = make_genesis(1, params={"period_seconds": 100})
    h = Harness(g, keys, rules=rules)
    root = h.ledger.state_root
    tx = h.tx(h.founders[0], "account.transfer", {"to": A.public, "amount": 1})
    reason = h.reason(tx)
    assert reason is not None and reason.startswith("internal error in account.transfer: RowError")
    assert h.ledger.state_root == root
    with pytest.raises(BlockRejected, match="period close or block-start hook failed"):
        h.build([], dt_ms=200_000)
    assert h.ledger.state_root == root and h.ledger.height == 0
