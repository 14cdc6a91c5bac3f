"""Properties over generated scenarios: conservation after every block, exact splits,
principal over a series' life, per-capita neutrality, determinism."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.scenario import parse_scenario
from bootstrap.simulate import run_scenario, simulate
from ledger.bonds import level_payment


def random_scenario(seed: int) -> dict[str, Any]:
    """A commune life drawn from `seed`: valid for the parser, not always for the ledger.

    Requests come with bids that may or may not cover the price (some above the
    maximum rate, some left sealed), purchases or failed purchases a period later,
    rentals ended with rental bids where the re-auction will be, sales of what may be
    liquidating, and random deposits, transfers, withdrawals, bond transfers,
    applications and resignations around them. Lessees' money is drawn too, so some
    pay, some fall into arrears, some default.
    """
    rng = random.Random(seed)
    founders = [f"f{i}" for i in range(rng.randint(1, 4))]
    investors = [f"i{i}" for i in range(rng.randint(1, 3))]
    newcomers = [f"n{i}" for i in range(rng.randint(0, 2))]
    periods = rng.randint(4, 14)
    notice = rng.randint(0, 2)
    params = {"grace_periods": rng.randint(1, 3), "notice_periods": notice,
              "no_reveal_fee_bps": rng.choice([0, 1000, 5000, 10_000]),
              "min_rent": rng.randint(1, 500), "admission_attestations": rng.randint(1, 2)}
    signers = rng.sample(founders, rng.randint(1, len(founders)))
    members = list(founders)
    everyone = founders + investors
    plan: dict[int, list[dict[str, Any]]] = {p: [] for p in range(periods)}
    bidders: dict[str, set[str]] = {}

    def add(p: int, by: str, do: str, **fields: Any) -> None:
        if p < periods:
            plan[p].append({"period": p, "by": by, "do": do, **fields})

    for who in everyone:
        rich = who in investors or rng.random() < 0.5
        add(0, who, "deposit", amount=rng.choice([300_000, 1_000_000] if rich else
                                                 [1_000, 30_000, 100_000]))
    for p in range(periods):
        for _ in range(rng.randint(0, 4)):
            event = rng.choice(["request", "request", "deposit", "transfer", "withdraw",
                                "bond_transfer", "apply", "attest", "resign", "liquidated"])
            by = rng.choice(everyone)
            if event == "request":
                name = f"a{len(bidders)}"
                bidders[name] = set()
                price = rng.choice([1_000, 10_000, 60_000, 150_000])
                maturity = rng.randint(1, 8)
                max_rate = rng.choice([0, 300, 800, 1500])
                rent = level_payment(price, max_rate, maturity, 12) + rng.choice(
                    [-1, 0, 0, 10, 5_000])
                requester = rng.choice(members)
                add(p, requester, "request", asset=name, price=price, rent=max(1, rent),
                    term=maturity + rng.randint(0, 6), maturity=maturity, max_rate_bps=max_rate)
                demand = price * rng.choice([1, 2, 2, 3, 4]) // 2
                while demand > 0:
                    bidder = rng.choice(everyone)
                    amount = min(demand, rng.randint(1, price))
                    demand -= amount
                    rate = rng.randint(0, max_rate) if rng.random() < 0.85 else max_rate + 1
                    add(p, bidder, "bid", asset=name, amount=amount, rate_bps=rate,
                        lock=amount + rng.choice([0, 0, 1_000]), reveal=rng.random() > 0.1)
                    bidders[name].add(bidder)
                add(p + 1, "treasury", "acquire_failed" if rng.random() < 0.1 else "acquire",
                    asset=name)
                if rng.random() < 0.5:
                    end = rng.randint(p + 1, p + 4)
                    add(end, requester, "end_rental", asset=name)
                    for bidder in rng.sample(members, rng.randint(0, len(members))):
                        add(end + notice + 1, bidder, "rent_bid", asset=name,
                            rent=max(1, rent + rng.randint(-rent, rent)),
                            term=rng.randint(1, 12), lock=rng.choice([0, 0, 500]),
                            reveal=rng.random() > 0.1)
                    add(end + notice + 2, "treasury", "liquidated", asset=name,
                        proceeds=rng.choice([0, price // 3, price, 2 * price]))
            elif event == "deposit":
                add(p, by, "deposit", amount=rng.choice([1_000, 20_000, 100_000]))
            elif event == "withdraw":
                add(p, by, "withdraw", amount=rng.choice([1, 5_000, 50_000]))
            elif event == "transfer":
                add(p, by, "transfer", to=rng.choice(everyone),
                    amount=rng.choice([1, 1_000, 30_000]))
            elif event == "bond_transfer":
                held = [a for a, bs in bidders.items() if bs]
                if held:
                    asset = rng.choice(held)
                    to = rng.choice(everyone)
                    add(p, rng.choice(sorted(bidders[asset])), "bond_transfer", asset=asset,
                        to=to, amount=rng.choice([1, 1_000, 20_000]))
                    bidders[asset].add(to)
            elif event == "liquidated" and bidders:
                add(p, "treasury", "liquidated", asset=rng.choice(sorted(bidders)),
                    proceeds=rng.choice([0, 5_000, 50_000]))
            elif event == "apply" and newcomers:
                who = rng.choice(newcomers)
                add(p, who, "apply", enterprise="e", labour="l")
                if who not in members:
                    members.append(who)
                    everyone.append(who)
            elif event == "attest":
                applicants = [n for n in newcomers if n in members]
                if applicants:
                    add(p, rng.choice(members), "attest", applicant=rng.choice(applicants))
            elif event == "resign" and rng.random() < 0.3:
                add(p, rng.choice(members), "resign")
    steps = [step for p in range(periods) for step in plan[p]]
    return {"seed": f"random {seed}", "commune": {"name": "Random", "currency": "EUR",
                                                  "minor_units": 2, "params": params},
            "founders": founders, "treasury": {"signers": signers,
                                               "threshold": rng.randint(1, len(signers))},
            "periods": periods, "auto_claim": rng.random() > 0.2, "steps": steps}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_scenarios_conserve_money(seed: int) -> None:
    """Conservation, no negative balance, holdings adding up: after every block
    (`check=True` raises otherwise). Series never pay more principal than their face."""
    run = run_scenario(parse_scenario(random_scenario(seed)), check=True)
    s = run.summary()
    run.backend.close()
    assert s["conservation"]["held"] == s["conservation"]["inflow"]
    assert run.state.runner_rejected == []
    for a in s["actors"].values():
        assert a["balance"] >= 0 and a["arrears"] >= 0
        assert a["dividends_claimed"] <= a["dividends_earned"]
    for asset in s["assets"].values():
        series = asset["series"]
        if series is None:
            continue
        holders = series["holders"].values()
        assert sum(h["outstanding"] for h in holders) == series["outstanding"]
        principal = sum(h["principal_received"] for h in holders)
        assert principal == series["principal_paid"]
        assert principal + series["outstanding"] + series["principal_written_off"] == \
            series["face"]
        assert sum(h["interest_received"] for h in holders) == series["interest_paid"]
        if series["status"] == "redeemed":
            assert principal == series["face"] and asset["owned"]
        assert sum(asset["auction"]["allocations"].values()) == series["face"]
    for d in s["dividends"]:
        assert d["share"] * d["members"] + d["carry"] == d["pool"]


def test_random_scenario_is_deterministic() -> None:
    scenario = parse_scenario(random_scenario(7))
    assert simulate(scenario) == simulate(scenario)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(2, 5), data=st.data())
def test_per_capita_neutrality(n: int, data: st.DataObject) -> None:
    """Everyone rents a commune-owned asset; common income is all the rent. The member
    whose rent is the per-capita share pays nothing net and receives nothing net; the
    heavier users pay the lighter ones exactly the difference."""
    others = data.draw(st.lists(st.integers(1, 3_000), min_size=n - 1, max_size=n - 1))
    # Member 0's rent = the mean of the others' (make their sum divisible by n - 1), so
    # it is also the mean of all rents: the per-capita share, with no carry.
    others[-1] += (-sum(others)) % (n - 1)
    rents = [sum(others) // (n - 1)] + others
    share = sum(rents) // n
    assert share * n == sum(rents) and rents[0] == share
    names = [f"m{i}" for i in range(n)]
    periods = 9
    deposit = max(rents) * (periods + 2)
    steps: list[dict[str, Any]] = [{"period": 0, "by": "ivan", "do": "deposit",
                                    "amount": sum(rents)}]
    for name, rent in zip(names, rents, strict=True):
        steps.append({"period": 0, "by": name, "do": "deposit", "amount": deposit})
        steps.append({"period": 0, "by": name, "do": "request", "asset": f"{name}-tool",
                      "price": rent, "rent": rent, "term": 50, "maturity": 1,
                      "max_rate_bps": 0})
        steps.append({"period": 0, "by": "ivan", "do": "bid", "asset": f"{name}-tool",
                      "amount": rent, "rate_bps": 0})
        steps.append({"period": 1, "by": "treasury", "do": "acquire", "asset": f"{name}-tool"})
    steps.sort(key=lambda step: step["period"])
    scenario = {"seed": f"neutral {n}", "commune": {"name": "Neutral", "currency": "EUR",
                                                           "minor_units": 2},
                "founders": names, "treasury": {"signers": names[:1], "threshold": 1},
                "periods": periods, "auto_claim": True, "steps": steps}
    s = simulate(parse_scenario(scenario), check=True)
    assert s["rejected"] == []
    owned_periods = periods - 3  # rent of period 2 redeems every series (maturity 1)
    for name, rent in zip(names, rents, strict=True):
        a = s["actors"][name]
        assert s["assets"][f"{name}-tool"]["series"]["redeemed_period"] == 2
        assert a["dividends_earned"] == a["dividends_claimed"] == share * owned_periods
        # Paid its asset once (the redeeming rent), then rent against dividends.
        net = a["dividends_earned"] - rent * owned_periods
        assert a["balance"] == deposit - rent + net
        if rent == share:
            assert net == 0
    assert sum(s["actors"][m]["dividends_earned"] - r * owned_periods
               for m, r in zip(names, rents, strict=True)) == 0
