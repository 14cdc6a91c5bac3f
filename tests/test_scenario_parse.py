"""Scenario files are validated before anything runs; every rejection names the step and why."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bootstrap.scenario import (
    AcquireStep,
    ApplyStep,
    BidStep,
    ExpelChange,
    LiquidatedStep,
    ParamChange,
    Params,
    ProposeStep,
    RentBidStep,
    RequestStep,
    ScenarioError,
    TreasuryChange,
    VoteStep,
    load_scenario,
    parse_scenario,
    parse_scenario_text,
)
from ledger.auction import BondBid, clear_bond_auction
from ledger.bonds import covers_level_payment, level_payment
from protocol.crypto import SigningKey

SCENARIOS = Path(__file__).resolve().parent.parent / "bootstrap" / "scenarios"

BASE: dict[str, Any] = {
    "seed": "any text",
    "commune": {
        "name": "Example commune",
        "currency": "EUR",
        "minor_units": 2,
        "params": {"period_seconds": 60, "periods_per_year": 12, "commit_seconds": 10,
                   "reveal_seconds": 10, "grace_periods": 2, "notice_periods": 1,
                   "admission_attestations": 2, "no_reveal_fee_bps": 1000, "min_rent": 1},
    },
    "founders": ["alice", "bob", "carol"],
    "treasury": {"signers": ["alice", "bob"], "threshold": 2},
    "periods": 40,
    "auto_claim": True,
    "steps": [
        {"period": 0, "by": "ivan", "do": "deposit", "amount": 400000},
        {"period": 0, "by": "bob", "do": "deposit", "amount": 150000},
        {"period": 0, "by": "alice", "do": "deposit", "amount": 50000},
        {"period": 0, "by": "alice", "do": "request", "asset": "van", "price": 300000,
         "rent": 12000, "term": 36, "maturity": 30, "max_rate_bps": 900},
        {"period": 0, "by": "ivan", "do": "bid", "asset": "van", "amount": 200000,
         "rate_bps": 500},
        {"period": 0, "by": "bob", "do": "bid", "asset": "van", "amount": 150000,
         "rate_bps": 650},
        {"period": 1, "by": "treasury", "do": "acquire", "asset": "van"},
    ],
}


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def with_steps(*extra: dict[str, Any]) -> dict[str, Any]:
    d = doc()
    d["steps"].extend(copy.deepcopy(list(extra)))
    return d


def rejected(obj: Any) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(obj)
    return info.value


# ---- what parses -----------------------------------------------------------------------


def test_scenarios_md_example() -> None:
    s = parse_scenario(BASE)
    assert s.periods == 40 and s.auto_claim and s.founders == ("alice", "bob", "carol")
    assert s.actors == ("alice", "bob", "carol", "ivan") and s.assets == ("van",)
    assert s.treasury.signers == ("alice", "bob") and s.treasury.threshold == 2
    assert s.commune.currency == "EUR" and s.commune.minor_units == 2
    request = s.steps[3]
    assert isinstance(request, RequestStep)
    assert (request.index, request.period, request.by, request.price, request.maturity) == \
        (3, 0, "alice", 300000, 30)
    assert request.description == "van" and request.commit_seconds is None
    bid = s.steps[4]
    assert isinstance(bid, BidStep) and bid.lock == 200000 and bid.reveal is True
    assert isinstance(s.steps[6], AcquireStep) and s.steps[6].by == "treasury"
    assert [st.index for st in s.steps_in(0)] == [0, 1, 2, 3, 4, 5]
    assert s.key("ivan").public == SigningKey.derive("any text", "ivan").public
    assert set(s.keys()) == set(s.actors)
    with pytest.raises(ValueError):
        s.key("treasury")


def test_defaults() -> None:
    d = doc()
    del d["commune"]["params"]
    del d["auto_claim"]
    s = parse_scenario(d)
    p = s.commune.params
    # DESIGN 6.10's defaults
    assert (p.admission_attestations, p.grace_periods, p.notice_periods, p.no_reveal_fee_bps,
            p.min_rent) == (2, 2, 1, 1000, 1)
    assert p == Params()
    assert s.auto_claim is True and s.description == ""
    d["commune"]["params"] = {"period_seconds": 20, "commit_seconds": 4, "reveal_seconds": 4}
    assert parse_scenario(d).commune.params.voting_seconds == 40  # two periods


def test_every_step_kind() -> None:
    d = with_steps(
        {"period": 1, "by": "dave", "do": "apply", "enterprise": "bikes"},
        {"period": 1, "by": "alice", "do": "attest", "applicant": "dave"},
        {"period": 1, "by": "dave", "do": "propose", "name": "slower",
         "change": {"type": "param", "name": "grace_periods", "value": 3}},
        {"period": 1, "by": "bob", "do": "vote", "proposal": "slower", "yes": True},
        {"period": 1, "by": "bob", "do": "propose", "name": "signers",
         "change": {"type": "treasury", "signers": ["bob", "dave"], "threshold": 1},
         "title": "new signers", "voting_seconds": 300},
        {"period": 1, "by": "bob", "do": "propose", "name": "out",
         "change": {"type": "expel", "member": "carol"}},
        {"period": 2, "by": "ivan", "do": "transfer", "to": "erin", "amount": 5},
        {"period": 2, "by": "ivan", "do": "withdraw", "amount": 5},
        {"period": 2, "by": "ivan", "do": "bond_transfer", "asset": "van", "to": "erin",
         "amount": 1000},
        {"period": 2, "by": "erin", "do": "bond_transfer", "asset": "van", "to": "fay",
         "amount": 10},
        {"period": 3, "by": "alice", "do": "end_rental", "asset": "van"},
        {"period": 5, "by": "carol", "do": "rent_bid", "asset": "van", "rent": 12000,
         "term": 30, "reveal": False},
        {"period": 6, "by": "treasury", "do": "liquidated", "asset": "van", "proceeds": 0},
        {"period": 6, "by": "treasury", "do": "acquire_failed", "asset": "van"},
        {"period": 7, "by": "carol", "do": "claim"},
        {"period": 7, "by": "carol", "do": "resign"},
    )
    s = parse_scenario(d)
    kinds = [type(st).do for st in s.steps[7:]]
    assert kinds == ["apply", "attest", "propose", "vote", "propose", "propose", "transfer",
                     "withdraw", "bond_transfer", "bond_transfer", "end_rental", "rent_bid",
                     "liquidated", "acquire_failed", "claim", "resign"]
    assert s.actors == ("alice", "bob", "carol", "ivan", "dave", "erin", "fay")
    apply = s.steps[7]
    assert isinstance(apply, ApplyStep) and apply.enterprise == "bikes" and apply.labour == ""
    props = [st for st in s.steps if isinstance(st, ProposeStep)]
    assert props[0].change == ParamChange("grace_periods", 3) and props[0].title == "slower"
    assert props[1].change == TreasuryChange(("bob", "dave"), 1)
    assert props[1].voting_seconds == 300 and props[1].title == "new signers"
    assert props[2].change == ExpelChange("carol")
    vote = s.steps[10]
    assert isinstance(vote, VoteStep) and vote.yes is True
    rent_bid = s.steps[18]
    assert isinstance(rent_bid, RentBidStep) and rent_bid.reveal is False
    liq = s.steps[19]
    assert isinstance(liq, LiquidatedStep) and liq.proceeds == 0


def test_frozen() -> None:
    s = parse_scenario(BASE)
    with pytest.raises(AttributeError):
        s.periods = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.steps[0].period = 3  # type: ignore[misc]


# ---- the shipped examples --------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.json")), ids=lambda p: p.stem)
def test_example_scenarios_parse(path: Path) -> None:
    s = load_scenario(path)
    assert s.description
    p = s.commune.params
    for st in s.steps:
        if isinstance(st, RequestStep):  # the guarantee holds in every shipped request
            assert covers_level_payment(st.rent, st.price, st.max_rate_bps, st.maturity,
                                        p.periods_per_year)


def test_examples_cover_the_issue() -> None:
    names = {p.stem for p in SCENARIOS.glob("*.json")}
    assert {"lifecycle", "failed_auction", "default_reauction", "liquidation_shortfall",
            "per_capita_neutrality"} <= names


def test_lifecycle_fits_a_devnet_and_its_auction_splits_at_the_stop_out() -> None:
    s = load_scenario(SCENARIOS / "lifecycle.json")
    p = s.commune.params
    assert 20 <= p.period_seconds <= 30 and 12 <= s.periods <= 20
    assert p.commit_seconds + p.reveal_seconds < p.period_seconds
    assert any(isinstance(st, ApplyStep) for st in s.steps)
    request = next(st for st in s.steps if isinstance(st, RequestStep))
    bids = [st for st in s.steps if isinstance(st, BidStep)]
    clearing = clear_bond_auction(
        [BondBid(s.key(b.by).public, b.amount, b.rate_bps, i) for i, b in enumerate(bids)],
        request.price, request.max_rate_bps)
    assert clearing.stop_out_bps == 650
    assert clearing.allocations == (80000, 22857, 17143, 0, 0)
    assert level_payment(request.price, request.max_rate_bps, request.maturity,
                         p.periods_per_year) == 20529


def test_failed_auction_does_not_clear() -> None:
    s = load_scenario(SCENARIOS / "failed_auction.json")
    request = next(st for st in s.steps if isinstance(st, RequestStep))
    bids = [st for st in s.steps if isinstance(st, BidStep) and st.reveal]
    clearing = clear_bond_auction(
        [BondBid(s.key(b.by).public, b.amount, b.rate_bps, i) for i, b in enumerate(bids)],
        request.price, request.max_rate_bps)
    assert not clearing.cleared
    assert isinstance(s.steps[8], AcquireStep)  # the step the description says is rejected


# ---- what is rejected, and where -------------------------------------------------------


def test_rejects_json_problems() -> None:
    text = json.dumps(BASE)
    assert parse_scenario_text(text).periods == 40
    for bad, why in [
        (text[:-1], "not valid JSON"),
        (text.replace('"amount": 400000', '"amount": 4000.5'), "not an integer"),
        (text.replace('"amount": 400000', '"amount": 4e5'), "not an integer"),
        (text.replace('"amount": 400000', '"amount": NaN'), "NaN is not allowed"),
        (text.replace('"periods": 40', '"periods": 40, "periods": 41'), "duplicate key"),
        ("[]", "expected an object"),
        ("", "not valid JSON"),
    ]:
        with pytest.raises(ScenarioError) as info:
            parse_scenario_text(bad)
        assert info.value.step is None
        assert why in str(info.value), (why, str(info.value))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.json")
    f = tmp_path / "s.json"
    f.write_text(json.dumps(BASE))
    assert load_scenario(f).periods == 40


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.update(extra=1), "extra: unknown field"),
    (lambda d: d.pop("seed"), "seed: required field missing"),
    (lambda d: d.update(seed=""), "seed"),
    (lambda d: d.update(periods=0), "periods"),
    (lambda d: d.update(periods="40"), "expected an integer"),
    (lambda d: d.update(periods=True), "expected an integer"),
    (lambda d: d.update(auto_claim=1), "auto_claim"),
    (lambda d: d.update(steps={}), "steps: expected a list"),
    (lambda d: d.update(founders=[]), "founders"),
    (lambda d: d.update(founders=["alice", "alice"]), "duplicate"),
    (lambda d: d.update(founders=["alice", "treasury"]), "reserved"),
    (lambda d: d.update(founders=["alice", " bob"]), "spaces"),
    (lambda d: d["commune"].update(colour="red"), "commune.colour: unknown field"),
    (lambda d: d["commune"].update(minor_units=-1), "commune.minor_units"),
    (lambda d: d["commune"]["params"].update(speed=3), "commune.params.speed: unknown"),
    (lambda d: d["commune"]["params"].update(grace_periods=0), "grace_periods"),
    (lambda d: d["commune"]["params"].update(no_reveal_fee_bps=10_001), "no_reveal_fee_bps"),
    (lambda d: d["commune"]["params"].update(period_seconds=20), "fit inside a period"),
    (lambda d: d["commune"]["params"].update(commit_seconds=50), "fit inside a period"),
    (lambda d: d["treasury"].update(signers=["alice", "ivan"]), "not a founder"),
    (lambda d: d["treasury"].update(threshold=3), "only 2 signers"),
    (lambda d: d["treasury"].update(threshold=0), "treasury.threshold"),
])
def test_rejects_bad_header(mutate: Any, fragment: str) -> None:
    d = doc()
    mutate(d)
    err = rejected(d)
    assert err.step is None
    assert fragment in str(err), str(err)


REQUEST = {"period": 0, "by": "alice", "do": "request", "asset": "bus", "price": 1000,
           "rent": 100, "term": 12, "maturity": 12, "max_rate_bps": 900}


@pytest.mark.parametrize("steps, index, fragment", [
    # shape of a step
    ([[1, 2]], 7, "a step is an object"),
    ([{"period": 1, "by": "bob"}], 7, "do: required field missing"),
    ([{"period": 1, "by": "bob", "do": "dance"}], 7, "unknown step 'dance'"),
    ([{"period": 1, "by": "bob", "do": "deposit", "amount": 5, "colour": 1}], 7,
     "colour: unknown field"),
    ([{"period": 1, "by": "bob", "do": "deposit"}], 7, "amount: required field missing"),
    ([{"period": 1, "by": "bob", "do": "deposit", "amount": "5"}], 7, "amount: expected an int"),
    ([{"period": 1, "by": "bob", "do": "deposit", "amount": 0}], 7, "below the minimum"),
    ([{"period": 1, "by": "bob", "do": "deposit", "amount": 10**16}], 7, "above the maximum"),
    ([{"period": 1, "by": "bob", "do": "bid", "asset": "van", "amount": 5, "rate_bps": 5,
       "reveal": "no"}], 7, "reveal: expected true or false"),
    ([{"period": 1, "by": "", "do": "deposit", "amount": 5}], 7, "by"),
    ([{"period": -1, "by": "bob", "do": "deposit", "amount": 5}], 7, "period"),
    # time
    ([{"period": 40, "by": "bob", "do": "deposit", "amount": 5}], 7,
     "not before the end of the run"),
    ([{"period": 3, "by": "bob", "do": "deposit", "amount": 5},
      {"period": 2, "by": "bob", "do": "deposit", "amount": 5}], 8, "period order"),
    # the treasury pseudo-actor
    ([{"period": 1, "by": "alice", "do": "acquire", "asset": "van"}], 7, "treasury action"),
    ([{"period": 1, "by": "treasury", "do": "deposit", "amount": 5}], 7, "reserved"),
    ([{"period": 1, "by": "bob", "do": "transfer", "to": "treasury", "amount": 5}], 7,
     "reserved"),
    # references to assets
    ([{"period": 1, "by": "bob", "do": "bid", "asset": "bus", "amount": 5, "rate_bps": 5}], 7,
     "no earlier step requests an asset named 'bus'"),
    ([{"period": 1, "by": "treasury", "do": "acquire", "asset": "bus"}], 7, "'bus'"),
    ([{"period": 1, "by": "treasury", "do": "liquidated", "asset": "bus", "proceeds": 1}], 7,
     "'bus'"),
    ([{"period": 1, "by": "bob", "do": "rent_bid", "asset": "bus", "rent": 5, "term": 5}], 7,
     "'bus'"),
    ([{"period": 1, "by": "alice", "do": "end_rental", "asset": "bus"}], 7, "'bus'"),
    ([{**REQUEST, "period": 1, "asset": "van"}], 7, "already requested at step 3"),
    ([{**REQUEST, "period": 1, "commit_seconds": 30, "reveal_seconds": 30}], 7,
     "fit inside a period"),
    ([{**REQUEST, "period": 1, "reveal_seconds": 50}], 7, "fit inside a period"),
    ([{**REQUEST, "period": 1, "max_rate_bps": 100_001}], 7, "max_rate_bps"),
    ([{**REQUEST, "period": 1, "term": 0}], 7, "term"),
    # member-only steps by names that cannot be members at that point
    ([{**REQUEST, "period": 1, "by": "ivan"}], 7, "'ivan' cannot be a member here"),
    ([{"period": 1, "by": "ivan", "do": "claim"}], 7, "cannot be a member"),
    ([{"period": 1, "by": "ivan", "do": "resign"}], 7, "cannot be a member"),
    ([{"period": 1, "by": "dave", "do": "attest", "applicant": "erin"}], 7,
     "cannot be a member"),
    ([{"period": 1, "by": "bob", "do": "rent_bid", "asset": "van", "rent": 5, "term": 5},
      {"period": 1, "by": "ivan", "do": "rent_bid", "asset": "van", "rent": 5, "term": 5}], 8,
     "'ivan' cannot be a member"),
    ([{"period": 1, "by": "dave", "do": "attest", "applicant": "ivan"},
      {"period": 1, "by": "dave", "do": "apply"}], 7, "cannot be a member"),
    # membership references
    ([{"period": 1, "by": "alice", "do": "attest", "applicant": "dave"}], 7,
     "no earlier apply step by 'dave'"),
    ([{"period": 1, "by": "alice", "do": "apply"}], 7, "founder, already a member"),
    # bonds held
    ([{"period": 1, "by": "alice", "do": "bond_transfer", "asset": "van", "to": "bob",
       "amount": 5}], 7, "'alice' can hold no bonds of 'van'"),
    ([{"period": 1, "by": "ivan", "do": "bond_transfer", "asset": "van", "to": "treasury",
       "amount": 5}], 7, "reserved"),
    # governance
    ([{"period": 1, "by": "bob", "do": "vote", "proposal": "x", "yes": True}], 7,
     "no earlier propose step named 'x'"),
    ([{"period": 1, "by": "bob", "do": "vote", "proposal": "x", "yes": 1}], 7,
     "yes: expected true or false"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "param", "name": "grace_periods", "value": 3}},
      {"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "param", "name": "grace_periods", "value": 4}}], 8,
     "exists already (step 7)"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "param", "name": "speed", "value": 3}}], 7, "unknown parameter"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "param", "name": "grace_periods", "value": 0}}], 7,
     "grace_periods must be from 1"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "param", "name": "period_seconds", "value": 20}}], 7,
     "fit inside a period"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "link", "genesis": "x"}}], 7, "change.type: expected one of"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "expel", "member": "ivan"}}], 7, "change.member"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "treasury", "signers": ["bob", "ivan"], "threshold": 1}}], 7,
     "change.signers[1]"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "treasury", "signers": ["bob"], "threshold": 2}}], 7,
     "only 1 signers"),
    ([{"period": 1, "by": "bob", "do": "propose", "name": "x",
       "change": {"type": "expel", "member": "carol", "why": "no"}}], 7, "unknown field"),
])
def test_rejects_bad_step(steps: list[Any], index: int, fragment: str) -> None:
    err = rejected(with_steps(*steps))
    assert err.step == index, str(err)
    assert fragment in err.reason, err.reason
    assert str(err).startswith(f"step {index}: ")


def test_an_applicant_may_act_as_a_member_after_applying() -> None:
    """Whether the application succeeds is the ledger's business, not the parser's."""
    s = parse_scenario(with_steps(
        {"period": 1, "by": "ivan", "do": "apply"},
        {"period": 1, "by": "ivan", "do": "request", "asset": "bus", "price": 1000,
         "rent": 100, "term": 12, "maturity": 12, "max_rate_bps": 900},
        {"period": 1, "by": "bob", "do": "bid", "asset": "bus", "amount": 5, "rate_bps": 5,
         "lock": 3},  # a lock below the amount is the ledger's rejection at reveal time
    ))
    assert s.assets == ("van", "bus")


def test_parameter_bounds_match_the_genesis() -> None:
    """A scenario that parses must make a valid genesis: same bounds as the ledger's."""
    genesis = pytest.importorskip("ledger.genesis")
    from bootstrap.scenario import PARAM_BOUNDS

    assert set(PARAM_BOUNDS) == set(genesis.PARAMS)
    for name, (lo, hi) in PARAM_BOUNDS.items():
        spec = genesis.PARAMS[name]
        assert (lo, hi) == (spec.min, spec.max), name
