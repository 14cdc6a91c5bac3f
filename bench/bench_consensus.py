"""What one committed block costs in consensus, as the commune grows.

Runs the deterministic simulator (tests/sim) with no faults -- every validator honest
and up, no loss, 1-20 ms delays, a steady trickle of transactions -- for 4, 16 and 64
validators, and reports per committed block:

- signed messages: proposals and votes created (1 + 2n in a round-0 decision, plus any
  rebroadcasts when a step stalls);
- deliveries: point-to-point messages on the consensus channel (each broadcast reaches
  n - 1 peers; gossip's own fan-out and duplicates come on top in a real network);
- received per node: deliveries / n;
- CPU per node: process time spent in one node's handlers (decoding, signature checks,
  the engine, the small application) divided by blocks; mean and max over nodes.

Every node decodes and verifies every message itself here (the simulator's shared decode
cache is off), so the per-node figure is what a daemon spends, minus networking. The
cost grows as n per node (each node checks 2n votes per block) and n^2 in total.

    .venv/bin/python bench/bench_consensus.py [--sizes 4,16,64] [--blocks 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sim.node import SimNode  # noqa: E402
from tests.sim.scenario import draw  # noqa: E402
from tests.sim.world import World  # noqa: E402


def measure(n: int, blocks: int) -> dict[str, Any]:
    sc = dataclasses.replace(
        draw(1, n), joiner=False, remove=False, byzantine=(), twin=None, outsider=(),
        loss=0.0, dup=0.0, replay=0.0, delay_ms=(1, 20), partitions=0, crashes=0,
        crash_modes=(), adversarial_timing=False, skew_ms=(0,) * n, tx_interval_ms=100)
    world = World(sc)
    world.share_decoding = False
    cpu = [0.0] * n
    orig = SimNode.guarded

    def timed(self: SimNode, fn: Any, *args: Any) -> None:
        t = time.process_time()
        try:
            orig(self, fn, *args)
        finally:
            cpu[self.index] += time.process_time() - t

    SimNode.guarded = timed  # type: ignore[method-assign]
    try:
        for node in world.nodes:
            world.at(0, -1, node.boot)
        world.workload.start(world)
        world.run_until(10**9, lambda: min(x.app.height for x in world.nodes) >= blocks)
    finally:
        SimNode.guarded = orig  # type: ignore[method-assign]
    h = min(x.app.height for x in world.nodes)
    assert h >= blocks, f"only {h} blocks"
    signed = sum(x.signed_count for x in world.nodes)
    deliveries = world.stats["sent_consensus"]
    per_node = [c / h for c in cpu]
    return {"n": n, "blocks": h, "signed": signed / h, "deliveries": deliveries / h,
            "received": deliveries / h / n, "cpu_mean_ms": 1000 * sum(per_node) / n,
            "cpu_max_ms": 1000 * max(per_node), "cpu_total_ms": 1000 * sum(cpu) / h,
            "virtual_s_per_block": world.now / 1000 / h}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4,16,64")
    ap.add_argument("--blocks", type=int, default=20)
    args = ap.parse_args()
    print(f"{'validators':>10} {'blocks':>6} {'signed/blk':>10} {'deliveries/blk':>14} "
          f"{'recv/node/blk':>13} {'CPU/node/blk':>12} {'(max)':>8} {'CPU all/blk':>11}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, args.blocks)
        print(f"{r['n']:>10} {r['blocks']:>6} {r['signed']:>10.1f} {r['deliveries']:>14.0f} "
              f"{r['received']:>13.1f} {r['cpu_mean_ms']:>10.2f}ms {r['cpu_max_ms']:>6.2f}ms "
              f"{r['cpu_total_ms']:>9.1f}ms")


if __name__ == "__main__":
    main()
