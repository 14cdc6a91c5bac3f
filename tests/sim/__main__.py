"""Runner: `python -m tests.sim --seeds N [--start S] [--seed S] [--nodes K] [--mode M]`.

A failing run prints its seed, what broke, and the one command that replays it exactly.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from tests.sim.invariants import SimFailure
from tests.sim.scenario import draw
from tests.sim.world import run_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed of a --seeds run")
    ap.add_argument("--seed", type=int, help="run exactly this seed")
    ap.add_argument("--nodes", type=int, help="validators at genesis (else drawn from the seed)")
    ap.add_argument("--mode", default="toy", choices=("toy", "ledger"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    failures = 0
    t0 = time.perf_counter()
    for seed in seeds:
        sc = draw(seed, args.nodes, args.mode)
        t = time.perf_counter()
        try:
            world = run_scenario(sc)
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
    print(f"{n - failures}/{n} seeds passed in {time.perf_counter() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
