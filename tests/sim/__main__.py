"""Runner: `python -m tests.sim --seeds N [--start S] [--seed S] [--nodes K] [--mode M]`,
or `python -m tests.sim --ci` for exactly the runs CI makes (`tests/sim/ci.py`).

A failing run prints its seed, what broke, and the one command that replays it exactly.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter

import protocol.consensus
from tests.sim.ci import ci_scenarios, parallel_map, run_one
from tests.sim.invariants import SimFailure
from tests.sim.scenario import PROFILES, draw
from tests.sim.world import World


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed of a --seeds run")
    ap.add_argument("--seed", type=int, help="run exactly this seed")
    ap.add_argument("--nodes", type=int, help="validators at genesis (else drawn from the seed)")
    ap.add_argument("--mode", default="toy", choices=("toy", "ledger"))
    ap.add_argument("--profile", choices=PROFILES,
                    help="draw every seed with this profile (default: as the seed says)")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--cover", action="store_true",
                    help="print how often the runs reached the moments the lock rules decide")
    ap.add_argument("--ci", action="store_true",
                    help="run exactly CI's seeds and regressions, on --workers processes")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.ci:
        return _ci(args.workers)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    print(f"engine: {protocol.consensus.__file__}", flush=True)
    failures = 0
    t0 = time.perf_counter()
    cover: Counter[str] = Counter()
    for seed in seeds:
        sc = draw(seed, args.nodes, args.mode, profile=args.profile)
        t = time.perf_counter()
        world = World(sc)
        try:
            try:
                world.run()
            finally:
                cover.update(world.checker.cover)
        except Exception as exc:  # report any crash of the run as a failure of the seed
            failures += 1
            kind = "invariant" if isinstance(exc, SimFailure) else "crash"
            print(f"FAIL ({kind}) {sc.describe()}\n  {exc}")
            if args.verbose or not isinstance(exc, SimFailure):
                traceback.print_exc()
            print(f"  replay: {sc.command()}")
            continue
        if args.verbose or args.seed is not None:
            heights = ",".join(str(n.app.height) for n in world.nodes)
            print(f"ok {sc.describe()} heights={heights} "
                  f"events={world.stats['events']} sent={world.stats['sent']} "
                  f"{time.perf_counter() - t:.2f}s digest={world.digest()}")
    n = len(seeds)
    if args.cover:
        print("reached: " + ", ".join(f"{k}={v}" for k, v in sorted(cover.items())))
    print(f"{n - failures}/{n} seeds passed in {time.perf_counter() - t0:.1f}s")
    return 1 if failures else 0


def _ci(workers: int) -> int:
    """One line per failing run (its origin, scenario and error), then a summary; the
    mutation check parses this output."""
    print(f"engine: {protocol.consensus.__file__}", flush=True)
    t0 = time.perf_counter()
    jobs = ci_scenarios()
    results = parallel_map(run_one, [sc for _, sc in jobs], workers)
    failures = 0
    for (label, sc), err in zip(jobs, results, strict=True):
        if err is not None:
            failures += 1
            print(f"FAIL {label} {sc.describe()}\n  {err}\n  replay: {sc.command()}")
    print(f"{len(jobs) - failures}/{len(jobs)} runs passed in {time.perf_counter() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
