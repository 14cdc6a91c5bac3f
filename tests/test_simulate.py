"""`commune simulate`: the example scenarios' figures, determinism, the CLI, every step kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cli
from bootstrap.scenario import load_scenario, parse_scenario
from bootstrap.simulate import run_scenario, simulate
from ledger.bonds import level_payment, period_interest, service_period

SCENARIOS = Path(__file__).resolve().parent.parent / "bootstrap" / "scenarios"
NAMES = ("lifecycle", "failed_auction", "default_reauction", "liquidation_shortfall",
         "per_capita_neutrality")


@pytest.fixture(scope="module")
def summaries() -> dict[str, dict[str, Any]]:
    return {n: simulate(load_scenario(SCENARIOS / f"{n}.json"), check=True) for n in NAMES}


def dividends(summary: dict[str, Any]) -> dict[int, tuple[int, int, int, int]]:
    return {d["period"]: (d["pool"], d["members"], d["share"], d["carry"])
            for d in summary["dividends"]}


def test_required_summary_fields(summaries: dict[str, dict[str, Any]]) -> None:
    """Every field SCENARIOS.md lists is there, with its type."""
    for s in summaries.values():
        assert {"periods", "height", "state_root", "actors", "assets", "treasury",
                "dividends", "rejected"} <= set(s)
        for a in s["actors"].values():
            assert {"id", "member", "balance", "arrears", "dividends_earned",
                    "dividends_claimed"} <= set(a)
            assert a["id"].startswith("z") and a["balance"] >= 0
        for asset in s["assets"].values():
            assert {"status", "lessee", "rent", "owned", "auction", "series",
                    "reauctions"} <= set(asset)
            assert {"cleared", "stop_out_bps", "allocations"} <= set(asset["auction"])
            if asset["series"] is not None:
                assert {"rate_bps", "face", "outstanding", "unpaid_interest",
                        "holders"} <= set(asset["series"])
                for h in asset["series"]["holders"].values():
                    assert {"face", "outstanding", "interest_received",
                            "principal_received"} <= set(h)
            for r in asset["reauctions"]:
                assert {"period", "winner", "rent", "price"} <= set(r)
        assert {"deposits", "payouts", "acquisitions", "liquidations"} <= set(s["treasury"])
        for d in s["dividends"]:
            assert set(d) >= {"period", "pool", "members", "share", "carry"}
        for r in s["rejected"]:
            assert {"step", "reason"} <= set(r)
        assert s["conservation"]["held"] == s["conservation"]["inflow"]
        json.dumps(s)  # plain JSON


def test_lifecycle(summaries: dict[str, dict[str, Any]]) -> None:
    s = summaries["lifecycle"]
    van = s["assets"]["van"]
    assert van["auction"]["cleared"] and van["auction"]["stop_out_bps"] == 650
    assert van["auction"]["allocations"] == {"ivan": 80_000, "bob": 22_857, "carol": 17_143}
    assert [b["status"] for b in van["auction"]["bids"]] == ["won", "won", "won", "lost",
                                                             "lost"]
    series = van["series"]
    assert series["redeemed_period"] == 7 and series["outstanding"] == 0
    holders = series["holders"]
    assert {h: (v["face"], v["interest_received"], v["principal_received"])
            for h, v in holders.items()} == {"ivan": (80_000, 1325, 80_000),
                                             "bob": (22_857, 379, 22_857),
                                             "carol": (17_143, 286, 17_143)}
    assert level_payment(120_000, 900, 6, 12) == 20_529 <= 24_000
    assert (van["status"], van["lessee"], van["rent"], van["owned"]) == ("rented", "alice",
                                                                        24_000, True)
    d = dividends(s)
    assert all(d[p] == (0, 4, 0, 0) for p in range(7))
    assert d[7] == (22_010, 4, 5_502, 2)
    assert all(d[p] == (24_002, 4, 6_000, 2) for p in range(8, 14))
    assert s["actors"]["dave"]["member"] and not s["actors"]["ivan"]["member"]
    for m in ("alice", "bob", "carol", "dave"):
        assert s["actors"][m]["dividends_earned"] == s["actors"][m]["dividends_claimed"] == \
            5_502 + 6 * 6_000
    assert s["actors"]["ivan"]["balance"] == 120_000 + 1_325 - 50_000
    assert s["treasury"] == {**s["treasury"], "deposits": 550_000, "payouts": 50_000,
                             "acquisitions": 120_000, "liquidations": 0}
    assert s["rejected"] == []


def test_failed_auction(summaries: dict[str, dict[str, Any]]) -> None:
    s = summaries["failed_auction"]
    kiln = s["assets"]["kiln"]
    assert level_payment(100_000, 800, 12, 12) == 8_699
    assert kiln["status"] == "failed" and kiln["series"] is None
    assert kiln["auction"]["cleared"] is False and kiln["auction"]["allocations"] == {}
    assert kiln["auction"]["forfeited"] == 2_000
    assert dividends(s)[0] == (2_000, 3, 666, 2)
    assert s["actors"]["carol"]["balance"] == 20_000 - 2_000 + 666
    assert s["actors"]["ivan"]["balance"] == 60_000  # every lock released
    assert [(r["step"], r["do"]) for r in s["rejected"]] == [(8, "acquire")]
    assert "is failed: cannot record its purchase" in s["rejected"][0]["reason"]


def test_default_and_reauction(summaries: dict[str, dict[str, Any]]) -> None:
    s = summaries["default_reauction"]
    loom = s["assets"]["loom"]
    assert loom["series"]["level_payment"] == level_payment(60_000, 800, 8, 12) == 7_727
    [r] = loom["reauctions"]
    assert (r["period"], r["winner"], r["rent"], r["price"], r["term"], r["reserve"],
            r["min_term"]) == (6, "bob", 9_000, 8_500, 10, 7_727, 3)
    assert [(b["by"], b["status"]) for b in r["bids"]] == [("bob", "won"), ("carol", "lost"),
                                                           ("alice", "invalid")]
    assert (loom["status"], loom["lessee"], loom["rent"], loom["owned"]) == ("rented", "bob",
                                                                            8_500, True)
    # The series close by close: rents at closes 2, 3; none at 4, 5 (missed) and 6
    # (re-auction); bob's 8500 from 7.
    assert period_interest(40_736, 800, 12) == 272
    outstanding, unpaid, interest = 60_000, 0, 0
    for close, rent in enumerate([10_000, 10_000, 0, 0, 0] + [8_500] * 5, start=2):
        svc = service_period(outstanding, unpaid, rent, 800, 12)
        if close in (4, 5, 6):
            assert svc.interest_due == 272 and svc.interest_paid == 0
        outstanding -= svc.principal_paid
        unpaid = svc.unpaid_interest
        interest += svc.interest_paid
        if not outstanding:
            break
    assert close == 11 and svc.surplus == 121
    assert loom["series"]["redeemed_period"] == 11
    assert loom["series"]["holders"]["ivan"]["interest_received"] == interest == 2_379
    alice = s["actors"]["alice"]
    # 20000 of arrears (closes 4 and 5), paid down by her dividends since.
    assert alice["arrears"] == 20_000 - alice["dividends_claimed"]
    assert dividends(s)[11] == (121, 3, 40, 1)
    assert s["rejected"] == []


def test_liquidation_shortfall(summaries: dict[str, dict[str, Any]]) -> None:
    s = summaries["liquidation_shortfall"]
    press = s["assets"]["press"]
    assert press["auction"]["stop_out_bps"] == 700
    assert press["auction"]["allocations"] == {"ivan": 50_000, "erin": 30_000}
    [r] = press["reauctions"]
    assert (r["winner"], r["reserve"], r["min_term"]) == (None, 8_259, 7)
    assert [(b["by"], b["rent"], b["status"]) for b in r["bids"]] == [("bob", 5_000,
                                                                      "invalid")]
    assert press["status"] == "liquidated"
    series = press["series"]
    assert series["status"] == "liquidated" and series["principal_written_off"] == 23_251
    ivan, erin = series["holders"]["ivan"], series["holders"]["erin"]
    # Outstanding after two rents: ivan 39303, erin 23581; liquidation pays 229 + 24771
    # and 138 + 14862.
    assert (ivan["written_off"], erin["written_off"]) == (14_532, 8_719)
    assert ivan["principal_received"] == 50_000 - 39_303 + 24_771
    assert erin["principal_received"] == 30_000 - 23_581 + 14_862
    two_rents_interest = (467 + 417)
    assert ivan["interest_received"] + erin["interest_received"] == two_rents_interest + 367
    assert all(d[0] == 0 for d in dividends(s).values())  # nothing left for common income
    assert s["treasury"]["liquidations"] == 40_000
    assert s["rejected"] == []


def test_per_capita_neutrality_example(summaries: dict[str, dict[str, Any]]) -> None:
    s = summaries["per_capita_neutrality"]
    for m in ("alice", "bob", "carol"):
        a = s["actors"][m]
        assert (a["balance"], a["dividends_earned"], a["dividends_claimed"]) == (1_000, 5_000,
                                                                                 5_000)
    assert s["actors"]["ivan"]["balance"] == 9_000
    for asset in s["assets"].values():
        assert asset["owned"] and asset["series"]["redeemed_period"] == 4
    assert all(dividends(s)[p] == (3_000, 3, 1_000, 0) for p in range(5, 10))


def test_same_file_same_state_root() -> None:
    for n in NAMES:
        scenario = load_scenario(SCENARIOS / f"{n}.json")
        a, b = simulate(scenario), simulate(scenario)
        assert a == b, n


# ---- every step kind, rejections reported and the run going on --------------------------

KITCHEN: dict[str, Any] = {
    "seed": "kitchen sink",
    "commune": {"name": "All steps", "currency": "EUR", "minor_units": 2,
                "params": {"grace_periods": 1, "notice_periods": 0}},
    "founders": ["alice", "bob", "carol"],
    "treasury": {"signers": ["alice", "bob"], "threshold": 2},
    "periods": 8,
    "auto_claim": False,
    "steps": [
        {"period": 0, "by": "ivan", "do": "deposit", "amount": 100_000},
        {"period": 0, "by": "alice", "do": "deposit", "amount": 20_000},
        {"period": 0, "by": "bob", "do": "deposit", "amount": 20_000},
        {"period": 0, "by": "dora", "do": "apply", "enterprise": "bakery"},
        {"period": 0, "by": "alice", "do": "attest", "applicant": "dora"},
        {"period": 0, "by": "bob", "do": "attest", "applicant": "dora"},
        {"period": 0, "by": "alice", "do": "request", "asset": "oven", "price": 10_000,
         "rent": 6_000, "term": 6, "maturity": 2, "max_rate_bps": 1200},
        {"period": 0, "by": "bob", "do": "request", "asset": "cart", "price": 5_000,
         "rent": 100, "term": 6, "maturity": 2, "max_rate_bps": 1200},  # 7: rent too low
        {"period": 0, "by": "ivan", "do": "bid", "asset": "oven", "amount": 6_000,
         "rate_bps": 600},
        {"period": 0, "by": "bob", "do": "bid", "asset": "oven", "amount": 4_000,
         "rate_bps": 700, "lock": 5_000},
        {"period": 0, "by": "ivan", "do": "bid", "asset": "oven", "amount": 9_000,
         "rate_bps": 100, "reveal": False},  # 10: forfeits 900
        {"period": 0, "by": "ivan", "do": "bid", "asset": "cart", "amount": 5_000,
         "rate_bps": 100},  # 11: the cart does not exist
        {"period": 0, "by": "bob", "do": "transfer", "to": "carol", "amount": 1_000,
         "memo": "thanks"},
        {"period": 1, "by": "treasury", "do": "acquire", "asset": "oven",
         "reference": "invoice 1"},
        {"period": 1, "by": "ivan", "do": "bond_transfer", "asset": "oven", "to": "erin",
         "amount": 2_000},
        {"period": 1, "by": "alice", "do": "propose", "name": "longer grace",
         "change": {"type": "param", "name": "grace_periods", "value": 3}},
        {"period": 1, "by": "bob", "do": "vote", "proposal": "longer grace", "yes": True},
        {"period": 1, "by": "carol", "do": "vote", "proposal": "longer grace", "yes": True},
        {"period": 1, "by": "dora", "do": "vote", "proposal": "longer grace", "yes": True},
        {"period": 2, "by": "ivan", "do": "withdraw", "amount": 1_000},
        {"period": 2, "by": "ivan", "do": "withdraw", "amount": 10**9},  # 20: too much
        {"period": 3, "by": "alice", "do": "end_rental", "asset": "oven"},
        {"period": 4, "by": "carol", "do": "rent_bid", "asset": "oven", "rent": 7_000,
         "term": 4, "lock": 1_000, "reveal": False},  # forfeits 100
        {"period": 4, "by": "bob", "do": "rent_bid", "asset": "oven", "rent": 6_500,
         "term": 4},
        {"period": 4, "by": "dora", "do": "rent_bid", "asset": "oven", "rent": 6_000,
         "term": 4},
        {"period": 5, "by": "carol", "do": "claim"},
        {"period": 6, "by": "dora", "do": "resign"},
        {"period": 7, "by": "treasury", "do": "liquidated", "asset": "oven",
         "proceeds": 1},  # 27: it is rented
        {"period": 7, "by": "alice", "do": "claim"},
    ],
}


def test_every_step_kind() -> None:
    s = simulate(parse_scenario(KITCHEN), check=True)
    rejected = {r["step"]: r for r in s["rejected"]}
    assert set(rejected) == {7, 11, 20, 27}, s["rejected"]
    assert "does not cover the level payment" in rejected[7]["reason"]
    assert "does not exist: its request (step 7) was rejected" in rejected[11]["reason"]
    assert "insufficient balance" in rejected[20]["reason"]
    assert "is rented: cannot record its sale" in rejected[27]["reason"]
    oven = s["assets"]["oven"]
    assert oven["auction"]["allocations"] == {"ivan": 6_000, "bob": 4_000}
    assert oven["auction"]["stop_out_bps"] == 700 and oven["auction"]["forfeited"] == 900
    assert set(oven["series"]["holders"]) == {"ivan", "bob", "erin"}
    assert oven["series"]["holders"]["erin"]["face"] == 2_000
    [r] = oven["reauctions"]
    assert (r["winner"], r["price"], r["term"]) == ("bob", 6_000, 4)
    assert [b["status"] for b in r["bids"]] == ["forfeited", "won", "lost"]
    assert (oven["lessee"], oven["rent"]) == ("bob", 6_000)
    actors = s["actors"]
    assert not actors["dora"]["member"] and actors["carol"]["member"]
    assert actors["erin"]["balance"] > 0  # received payments on the transferred bonds
    assert s["treasury"]["payouts"] == 1_000
    assert actors["carol"]["dividends_claimed"] > 0
    last_share = s["dividends"][7]["share"]  # closes after the run's last step
    assert actors["alice"]["dividends_claimed"] == actors["alice"]["dividends_earned"] - \
        last_share
    assert actors["bob"]["dividends_claimed"] == 0  # auto_claim is off
    assert s["dividends"][0]["pool"] == 900


# ---- the command ---------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_json_and_human(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(SCENARIOS / "failed_auction.json")
    code, out, _ = run_cli(["simulate", path, "--json"], capsys)
    assert code == 0
    assert json.loads(out) == simulate(load_scenario(path))
    code, out, _ = run_cli(["simulate", path], capsys)
    assert code == 0
    for text in ("Pottery commune", "kiln", "failed", "Rejected steps", "666"):
        assert text in out


def test_cli_refuses_bad_scenarios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["simulate", str(tmp_path / "missing.json")], capsys)
    assert code == 5 and "no scenario file" in err
    bad = dict(KITCHEN, steps=[{"period": 0, "by": "ivan", "do": "bid", "asset": "nothing",
                                "amount": 1, "rate_bps": 1}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    code, out, err = run_cli(["simulate", str(path), "--json"], capsys)
    assert code == 1 and out == ""
    assert "step 0: asset: no earlier step requests an asset named 'nothing'" in err


def test_run_reports_blocks_and_time() -> None:
    run = run_scenario(load_scenario(SCENARIOS / "lifecycle.json"))
    assert run.backend.ledger.height == run.summary()["height"] > 14
    assert run.state.runner_rejected == []
    run.backend.close()


def test_period_length_changed_by_governance() -> None:
    """The player follows the ledger's period bounds, not the genesis period length."""
    doc = {
        "seed": "longer periods", "commune": {"name": "Slow", "currency": "EUR",
                                              "minor_units": 2},
        "founders": ["a", "b", "c"], "treasury": {"signers": ["a"], "threshold": 1},
        "periods": 6,
        "steps": [
            {"period": 0, "by": "a", "do": "propose", "name": "slower",
             "change": {"type": "param", "name": "period_seconds", "value": 95}},
            {"period": 0, "by": "b", "do": "vote", "proposal": "slower", "yes": True},
            {"period": 0, "by": "c", "do": "vote", "proposal": "slower", "yes": True},
            {"period": 0, "by": "a", "do": "vote", "proposal": "slower", "yes": True},
            {"period": 2, "by": "i", "do": "deposit", "amount": 10_000},
            {"period": 2, "by": "a", "do": "deposit", "amount": 30_000},
            {"period": 2, "by": "a", "do": "request", "asset": "saw", "price": 10_000,
             "rent": 10_000, "term": 3, "maturity": 1, "max_rate_bps": 0},
            {"period": 2, "by": "i", "do": "bid", "asset": "saw", "amount": 10_000,
             "rate_bps": 0},
            {"period": 3, "by": "treasury", "do": "acquire", "asset": "saw"},
        ],
    }
    run = run_scenario(parse_scenario(doc), check=True)
    s = run.summary()
    assert s["rejected"] == []
    saw = s["assets"]["saw"]
    assert (saw["status"], saw["owned"], saw["rental"]["paid"]) == ("rented", True, 20_000)
    assert len(s["dividends"]) == 6
    periods = run.backend.ledger.state.rows("periods")
    assert [r["end_ms"] - r["start_ms"] for _, r in periods] == [60_000] + [95_000] * 5
    run.backend.close()
