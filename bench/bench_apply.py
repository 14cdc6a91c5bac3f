"""How many transactions per second the ledger applies, next to the Ed25519 verify rate.

The state machine must not be the bottleneck (issue 3): a node verifies each signature
once (mempool), so block execution and storage should run at least twice as fast as
single-core signature verification. This measures, with the SQLite store on disk
(WAL, synchronous=FULL) and signatures already verified:

- proposer path: `build_block` (executes) + `commit` (writes; the execution is cached);
- validator path: a second ledger receiving the same blocks, whose mempool already
  holds the transactions (`check_block(known=...)`: header, certificate, execution,
  state root) + `commit`;
- catch-up path: a third ledger that decodes every transaction of every block (block
  sync after downtime, audit replay) before the same checks;

for three workloads: transfers between many accounts, membership attestations (each
admitting a member), and dividend claims. Setup (keys, signing, funding) is not timed.
Both wall-clock and CPU time are printed: on a shared machine CPU time is the steadier
figure, wall time includes the fsync of each block.

    .venv/bin/python bench/bench_apply.py [--transfers N] [--members N] [--block N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger.ledger import Ledger  # noqa: E402
from ledger.modules import MODULES  # noqa: E402
from ledger.money import add_common_income, debit  # noqa: E402
from ledger.rules import Exec, Rules  # noqa: E402
from ledger.testing import Harness, key, make_genesis  # noqa: E402
from protocol.block import Block  # noqa: E402
from protocol.crypto import SigningKey, verify  # noqa: E402
from protocol.transactions import Transaction, make_tx  # noqa: E402
from protocol.votes import Certificate  # noqa: E402

COMMONS = key("bench", "commons")
INCOME_PER_PERIOD = 10**9


def _income(ex: Exec, period: int) -> None:
    """Stand-in for rent of commune-owned assets, so that claims have dividends to claim."""
    debit(ex, COMMONS.public, INCOME_PER_PERIOD)
    add_common_income(ex, INCOME_PER_PERIOD)


def bench_rules() -> Rules:
    rules = Rules()
    for m in MODULES:
        m.install(rules)
    rules.on_period_close(100, "bench income", _income)
    return rules.freeze()


def verify_rate(n: int = 20_000) -> tuple[float, float]:
    """(wall, cpu) verifications per second of a transfer's signature, best of three."""
    k = SigningKey.derive("bench", "verify")
    tx = make_tx(k, b"\x00" * 32, "account.transfer", 1, {"to": k.public, "amount": 1})
    from protocol.envelope import Domain, signing_bytes

    msg = signing_bytes(Domain.TX, b"\x00" * 32, tx.envelope.body)
    sig = tx.envelope.sig
    wall = cpu = 0.0
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            verify(k.public, sig, msg)
        wall = max(wall, n / (time.perf_counter() - t))
        cpu = max(cpu, n / (time.process_time() - c))
    return wall, cpu


@dataclass
class Figures:
    name: str
    txs: int
    wall: float
    cpu: float

    def line(self) -> str:
        return (f"{self.name:<48} {self.txs:>6} tx  {self.txs / self.wall:>9,.0f} tx/s wall  "
                f"{self.txs / self.cpu:>9,.0f} tx/s cpu")


class Bench:
    def __init__(self, folder: str, block_size: int) -> None:
        g, keys = make_genesis(1, signers=1, threshold=1,
                               params={"period_seconds": 3600, "admission_attestations": 1})
        self.rules = bench_rules()
        self.h = Harness(g, keys, path=os.path.join(folder, "proposer.db"), rules=self.rules)
        self.follower = Ledger.open(os.path.join(folder, "follower.db"), g, self.rules)
        self.catchup = Ledger.open(os.path.join(folder, "catchup.db"), g, self.rules)
        self.block_size = block_size
        self.founder = self.h.founders[0]
        self.committed: list[tuple[Block, Certificate]] = []

    def fill(self, txs: list[Transaction]) -> None:
        """Untimed: commit txs on both ledgers."""
        for i in range(0, len(txs), self.block_size):
            block, rejected = self.h.block(txs[i:i + self.block_size])
            assert not rejected, rejected[:3]
            self.follow(block)

    def follow(self, block: Block) -> None:
        for other in (self.follower, self.catchup):
            other.check_block(block)
            other.commit(block, self.h.last_commit)  # type: ignore[arg-type]

    def measure(self, name: str, txs: list[Transaction],
                profile: cProfile.Profile | None) -> tuple[Figures, Figures, Figures]:
        blocks: list[tuple[Block, Certificate, set[bytes]]] = []
        wall = cpu = 0.0
        for i in range(0, len(txs), self.block_size):
            chunk = txs[i:i + self.block_size]
            ids = {t.id for t in chunk}
            w, c = time.perf_counter(), time.process_time()
            if profile:
                profile.enable()
            block, rejected = self.h.ledger.build_block(
                chunk, self.h.time_ms + 1000,
                self.h.ledger.validators_at(self.h.ledger.height + 1).members[0],
                self.h.last_commit, verified=ids)
            self.h.ledger.check_block(block)  # cached: a proposer judges its own block free
            cert = self.h.certify(block)
            self.h.ledger.commit(block, cert)
            if profile:
                profile.disable()
            wall += time.perf_counter() - w
            cpu += time.process_time() - c
            assert not rejected, rejected[:3]
            self.h.last_commit = cert
            self.h.time_ms = block.header.time_ms
            self.h._pending.clear()
            blocks.append((block, cert, ids))
        proposer = Figures(f"{name}: build + commit", len(txs), wall, cpu)
        by_id = {t.id: t for t in txs}
        figures = [proposer]
        for label, ledger, known in (("check + commit", self.follower, by_id),
                                     ("decode + check + commit", self.catchup, None)):
            wall = cpu = 0.0
            for block, cert, ids in blocks:
                w, c = time.perf_counter(), time.process_time()
                ledger.check_block(block, verified=ids, known=known)
                ledger.commit(block, cert)
                wall += time.perf_counter() - w
                cpu += time.process_time() - c
            assert ledger.state_root == self.h.ledger.state_root
            figures.append(Figures(f"{name}: {label}", len(txs), wall, cpu))
        return figures[0], figures[1], figures[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transfers", type=int, default=20_000)
    ap.add_argument("--members", type=int, default=5_000,
                    help="applicants attested (and later claiming)")
    ap.add_argument("--block", type=int, default=2_000, help="transactions per block")
    ap.add_argument("--profile", action="store_true", help="profile the proposer path")
    ap.add_argument("--dir", default=None, help="where to put the stores (default: a temp dir "
                    "beside this repository, on disk)")
    args = ap.parse_args()

    rate_wall, rate = verify_rate()
    print(f"Ed25519 verify (libsodium, one core): {rate_wall:,.0f} /s wall, {rate:,.0f} /s cpu; "
          f"target 2x = {2 * rate:,.0f} tx/s cpu")
    folder = tempfile.mkdtemp(prefix="bench-apply-", dir=args.dir or str(Path(__file__).parent))
    profile = cProfile.Profile() if args.profile else None
    try:
        b = Bench(folder, args.block)
        h, f0 = b.h, b.founder
        rnd = random.Random(7)
        t0 = time.perf_counter()
        people = [key("bench", "person", str(i)) for i in range(args.transfers)]
        applicants = [key("bench", "applicant", str(i)) for i in range(args.members)]
        b.fill([h.tx(f0, "treasury.deposit", {"account": p.public, "amount": 10**9,
                                              "reference": "setup"})
                for p in people]
               + [h.tx(f0, "treasury.deposit", {"account": COMMONS.public,
                                                "amount": 10 * INCOME_PER_PERIOD,
                                                "reference": "setup"})])
        b.fill([h.tx(a, "member.apply", {"name": f"applicant {i}", "enterprise": "bench",
                                         "labour": "benchmarking"})
                for i, a in enumerate(applicants)])
        print(f"setup: {len(people)} funded accounts, {len(applicants)} applicants "
              f"({time.perf_counter() - t0:.1f} s, untimed)")

        results: list[Figures] = []
        transfers = [h.tx(p, "account.transfer", {"to": rnd.choice(people).public,
                                                  "amount": rnd.randint(1, 1000)})
                     for p in people]
        transfers = [t for t in transfers if t.args["to"] != t.signer]
        results += b.measure("transfers", transfers, profile)

        attests = [h.tx(f0, "member.attest", {"applicant": a.public}) for a in applicants]
        results += b.measure("attestations (each admits)", attests, profile)

        # Two period closes with common income: every member has two dividends to claim.
        for _ in range(2):
            end = h.ledger.state.scalar("period_end_ms")
            block, _ = h.block([], time_ms=end)
            b.follow(block)
        period = h.ledger.state.open_period()
        claims = [h.tx(a, "dividend.claim", {"periods": [period - 2, period - 1]})
                  for a in applicants]
        results += b.measure("dividend claims", claims, profile)

        print(f"\nblocks of {args.block} transactions, signatures pre-verified, store on disk:")
        for r in results:
            print("  " + r.line())
        print()
        for i, path in enumerate(("proposer", "validator", "catch-up")):
            rs = results[i::3]
            total = sum(r.txs for r in rs)
            wall = sum(r.wall for r in rs)
            cpu = sum(r.cpu for r in rs)
            print(f"{path + ' path, all workloads:':<34} {total / wall:>9,.0f} tx/s wall "
                  f"({total / wall / rate_wall:.2f}x verify), {total / cpu:>9,.0f} tx/s cpu "
                  f"({total / cpu / rate:.2f}x verify)")
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        b.follower.close()
        b.catchup.close()
        h.ledger.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
