"""`commune simulate` on a large generated commune: periods per second and peak memory.

The scenario (generated from a seed, so every run plays the same file): 5 founders and
hundreds of members admitted by attestation in period 0, dozens of assets requested
over the first half of the run, each funded by investors' sealed bids (a few above the
maximum rate, a few left sealed), bought a period later, rented; some rentals are
ended and re-auctioned among members (some re-let, some liquidated and sold), some
bonds change hands, members top up their accounts, investors withdraw, and every member
claims its dividend at every close (the daemon default). It runs on the real ledger
(in-memory SQLite store), every block built, certified and committed.

    .venv/bin/python bench/bench_simulate.py [--members N] [--assets N] [--periods N]
        [--seed S] [--tracemalloc] [--write FILE]

Both wall-clock and CPU time are printed (on a shared machine CPU time is the steadier
figure). Peak memory is the process's maximum resident set (getrusage); with
--tracemalloc also the peak of Python allocations (slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model  # noqa: E402
from bootstrap.scenario import parse_scenario  # noqa: E402
from bootstrap.simulate import run_scenario  # noqa: E402
from ledger.bonds import level_payment  # noqa: E402


def generate(members: int, assets: int, periods: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    founders = [f"f{i}" for i in range(5)]
    newcomers = [f"m{i}" for i in range(max(0, members - len(founders)))]
    everyone = founders + newcomers
    investors = [f"i{i}" for i in range(20)]
    plan: dict[int, list[dict[str, Any]]] = {p: [] for p in range(periods)}

    def add(p: int, by: str, do: str, **fields: Any) -> None:
        if p < periods:
            plan[p].append({"period": p, "by": by, "do": do, **fields})

    for who in investors:
        add(0, who, "deposit", amount=50_000_000)
    for m in newcomers:
        add(0, m, "apply", enterprise="workshop", labour="works in the commune")
        add(0, "f0", "attest", applicant=m)
        add(0, "f1", "attest", applicant=m)
    for m in everyone:
        add(0, m, "deposit", amount=20_000)
    span = max(1, periods // 2)
    for k in range(assets):
        p = 1 + k * span // max(1, assets)
        requester = everyone[k % len(everyone)]
        name = f"asset{k}"
        price = rng.randrange(50_000, 500_000, 1_000)
        maturity = rng.randint(12, 60)
        term = maturity + rng.randint(12, 60)
        rent = level_payment(price, 1200, maturity, 12) * 105 // 100
        add(p, requester, "deposit", amount=rent * (term + 2))
        add(p, requester, "request", asset=name, price=price, rent=rent, term=term,
            maturity=maturity, max_rate_bps=1200)
        demand = price * 3 // 2
        holders = []
        while demand > 0:
            bidder = rng.choice(investors)
            amount = min(demand, rng.randrange(10_000, 200_000, 1_000))
            demand -= amount
            rate = rng.randint(300, 1100) if rng.random() < 0.9 else 1500
            add(p, bidder, "bid", asset=name, amount=amount, rate_bps=rate,
                reveal=rng.random() < 0.95)
            holders.append(bidder)
        add(p + 1, "treasury", "acquire", asset=name)
        if rng.random() < 0.5:
            add(p + 3, holders[0], "bond_transfer", asset=name, to=rng.choice(investors),
                amount=1_000)
        # The rental runs periods p + 2 ... p + 1 + term; some are ended early (notice 1).
        end = p + 2 + rng.randint(2, 20) if rng.random() < 0.4 else p + 1 + term
        if end < p + 1 + term:
            add(end, requester, "end_rental", asset=name)
            end += 1
        reauction = end + 1  # the close of `end` returns the asset
        good = rng.random() < 0.7
        for bidder in rng.sample(everyone, 3):
            add(reauction, bidder, "deposit", amount=rent * (periods + 12))
            add(reauction, bidder, "rent_bid", asset=name,
                rent=rent + rng.randint(0, rent // 5) if good else max(1, rent // 2),
                term=max(term, periods))
        if not good:
            add(reauction + 1, "treasury", "liquidated", asset=name,
                proceeds=price * rng.randint(40, 110) // 100)
    for p in range(12, periods, 12):
        for who in rng.sample(investors, 3):
            add(p, who, "withdraw", amount=100_000)
    steps = [step for p in range(periods) for step in plan[p]]
    return {"seed": f"bench {seed}",
            "description": f"{members} members, {assets} assets, {periods} periods",
            "commune": {"name": "Benchmark commune", "currency": "EUR", "minor_units": 2,
                        "params": {"admission_attestations": 2}},
            "founders": founders, "treasury": {"signers": ["f0", "f1"], "threshold": 2},
            "periods": periods, "auto_claim": True, "steps": steps}


def machine() -> str:
    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=300)
    ap.add_argument("--assets", type=int, default=40)
    ap.add_argument("--periods", type=int, default=240)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--write", type=Path, help="also write the generated scenario here")
    args = ap.parse_args()
    doc = generate(args.members, args.assets, args.periods, args.seed)
    if args.write:
        args.write.write_text(json.dumps(doc, indent=1))
    scenario = parse_scenario(doc)
    if args.tracemalloc:
        tracemalloc.start()
    cpu0 = time.process_time()
    run = run_scenario(scenario)
    cpu = time.process_time() - cpu0
    summary = run.summary()
    traced = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    statuses: dict[str, int] = {}
    for a in summary["assets"].values():
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    txs = run.backend.ledger.sql("SELECT COUNT(*) FROM chain_txs")[0][0]
    members = sum(1 for a in summary["actors"].values() if a["member"])
    print(f"machine: {machine()}")
    print(f"scenario: {len(scenario.steps)} steps, {members} members at the end, "
          f"{len(summary['assets'])} assets ({', '.join(f'{v} {k}' for k, v in sorted(statuses.items()))}), "  # noqa: E501
          f"{scenario.periods} periods, {len(summary['rejected'])} steps rejected")
    print(f"ledger: {summary['height']} blocks, {txs} transactions")
    print(f"time: {run.seconds:.1f} s wall -> {scenario.periods / run.seconds:.1f} periods/s, "
          f"{txs / run.seconds:.0f} tx/s; {cpu:.1f} s CPU -> {scenario.periods / cpu:.1f} "
          f"periods/s, {txs / cpu:.0f} tx/s")
    mem = f"peak memory: {rss_kb / 1024:.0f} MiB resident (getrusage)"
    if traced is not None:
        mem += f", {traced / 2**20:.0f} MiB traced Python allocations"
    print(mem)
    run.backend.close()


if __name__ == "__main__":
    main()
