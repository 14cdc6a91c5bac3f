"""Mutation check of the simulator: does it, alone, catch known consensus bugs?

`python -m tests.sim.mutate [NAME ...] [--list] [--workers 2]`

Each mutant is one small edit of `protocol/consensus.py` that re-introduces a bug (most of
them bugs this engine once had, or that Tendermint implementations are known to have
had). For each, the relevant part of the repository is copied to a scratch directory,
the edit is made *there* (the working tree is never touched), and the scratch copy runs
exactly CI's simulator runs (`python -m tests.sim --ci`). The report says which runs
failed: a mutant no run catches is a hole in the simulator.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

from protocol.consensus import ConsensusEngine

REPO = Path(__file__).resolve().parents[2]
TARGET = "protocol/consensus.py"
COPIED = ("protocol", "ledger", "tests/__init__.py", "tests/sim", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    old: str
    new: str


MUTANTS = [
    Mutant("unlock_any_pol",
           "unlock rule: a re-proposal unlocks whatever the round of its proof of lock",
           "good = ok and (self.locked_round <= p.pol_round\n"
           "                                       or self.locked_value == v)",
           "good = ok"),
    Mutant("unlock_without_pol",
           "unlock rule: a re-proposal is prevoted without +2/3 prevotes of its pol_round",
           "if pol is not None and pol.prevote_tally.get(v, 0) >= q:",
           "if True:"),
    Mutant("unlock_older_pol",
           "unlock rule: a proof of lock older than the lock unlocks, a newer one does not",
           "good = ok and (self.locked_round <= p.pol_round",
           "good = ok and (self.locked_round >= p.pol_round"),
    Mutant("lock_not_restored",
           "restart: the lock is not restored from the recorded precommits",
           "self.locked_value, self.locked_round = msg.block_hash, msg.round",
           "pass"),
    Mutant("first_lock_restored",
           "restart: the lock is restored from the earliest recorded precommit, not the latest",
           "key=lambda rec: (rec.round, _STEP_ORDER[rec.step]))",
           "key=lambda rec: (rec.round, _STEP_ORDER[rec.step]), reverse=True)"),
    Mutant("valid_value_not_restored",
           "restart: the locked block and its proof of lock are not restored",
           "self.valid_value, self.valid_round = h, r\n        rv = self._round(r)",
           "rv = self._round(r)"),
    Mutant("repropose_clock_checked",
           "proposal time: a re-proposal (pol_round >= 0) is checked against the local clock",
           "good = ok and (self.locked_round <= p.pol_round",
           "good = ok and rv.timely and (self.locked_round <= p.pol_round"),
    Mutant("fresh_ignores_lock",
           "lock rule: a locked validator prevotes any fresh proposal",
           "good = (ok and rv.timely\n"
           "                            and (self.locked_round == -1 or self.locked_value == v))",
           "good = ok and rv.timely"),
    Mutant("no_clock_check",
           "proposal time: fresh proposals are not checked against the local clock",
           "rv.timely = abs(p.block.header.time_ms - now_ms) <= self.config.max_clock_drift_ms",
           "rv.timely = True"),
    Mutant("no_pol_relay",
           "a re-proposal does not carry its proof of lock",
           "if prop.pol_round < 0:\n            return\n        pol = self._rounds.get",
           "if True:\n            return\n        pol = self._rounds.get"),
    Mutant("equivocator_counted_once",
           "an equivocator's second vote is not counted towards a proof of lock",
           "if v.block_hash == NIL or v.block_hash in self._blocks:\n                rv.add(v)",
           "if False:\n                rv.add(v)"),
    Mutant("guard_signs_anew",
           "signing guard: a recorded vote is signed anew instead of resent",
           "rec = self._records.get(key)\n        if rec is None:\n            vote = Vote.create",
           "rec = None\n        if rec is None:\n            vote = Vote.create"),
    Mutant("decide_short_of_quorum",
           "a height is decided with one precommit short of +2/3",
           "if v == NIL or n < q:",
           "if v == NIL or n < q - 1:"),
]


def apply(mutant: Mutant, source: str) -> str:
    """The mutated source; the edit must match exactly once, so a drifting engine makes
    the check fail loudly rather than silently test nothing."""
    count = source.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: its target occurs {count} times in {TARGET}")
    return source.replace(mutant.old, mutant.new)


def mutant_engine(name: str) -> type[ConsensusEngine]:
    """The engine class with mutant `name` applied, loaded as a module of its own (the
    real `protocol.consensus` is untouched): for in-process checks that pinned
    scenarios still catch it."""
    mutant = next(m for m in MUTANTS if m.name == name)
    source = apply(mutant, (REPO / TARGET).read_text())
    module = types.ModuleType(f"protocol.consensus_mutant_{name}")
    module.__file__ = f"<mutant {name} of {TARGET}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
    engine: type[ConsensusEngine] = module.ConsensusEngine
    return engine


def scratch_copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in COPIED:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=ignore)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_mutant(mutant: Mutant, workers: int,
               sim_args: list[str] | None = None) -> tuple[list[str], str, float]:
    """(failing runs, summary line, seconds) of CI's simulator runs on the mutant, or
    of `python -m tests.sim SIM_ARGS`."""
    with tempfile.TemporaryDirectory(prefix=f"mut-{mutant.name}-") as tmp:
        root = Path(tmp)
        scratch_copy(root)
        target = root / TARGET
        target.write_text(apply(mutant, target.read_text()))
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.perf_counter()
        args = sim_args if sim_args is not None else ["--ci", "--workers", str(workers)]
        proc = subprocess.run([sys.executable, "-m", "tests.sim", *args], cwd=root, env=env,
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - t0
        out = proc.stdout
        engine = re.search(r"^engine: (.*)$", out, re.M)
        if engine is None or not engine.group(1).startswith(str(root)):
            raise SystemExit(f"mutant {mutant.name}: the run did not use the scratch copy:\n"
                             f"{out[:500]}{proc.stderr[-2000:]}")
        lines = out.splitlines()
        fails = [f"{line[5:]}\n    {lines[i + 1].strip() if i + 1 < len(lines) else ''}"
                 for i, line in enumerate(lines) if line.startswith("FAIL ")]
        if proc.returncode not in (0, 1) or (proc.returncode == 1 and not fails):
            raise SystemExit(f"mutant {mutant.name}: the run broke:\n{proc.stderr[-3000:]}")
        summary = out.strip().splitlines()[-1] if out.strip() else proc.stderr[-500:]
        return fails, summary, took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim.mutate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every failing run")
    ap.add_argument("--sim", help="run `python -m tests.sim SIM` instead of CI's runs "
                    "(e.g. --sim='--seeds 100 --profile lock_hunt')")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28} {m.what}")
        return 0
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants: {sorted(unknown)}")
    source = (REPO / TARGET).read_text()
    for m in chosen:
        apply(m, source)  # every target matches before anything runs
    missed = 0
    for m in chosen:
        fails, summary, took = run_mutant(m, args.workers,
                                          args.sim.split() if args.sim else None)
        by_origin: dict[str, int] = {}
        for f in fails:
            origin = f.split(" ", 1)[0]
            by_origin[origin] = by_origin.get(origin, 0) + 1
        caught = ", ".join(f"{k} {v}" for k, v in sorted(by_origin.items())) or "NOT CAUGHT"
        missed += not fails
        print(f"{m.name:28} {caught:40} ({summary}; {took:.0f}s)", flush=True)
        shown = fails if args.verbose else fails[:3]
        for f in shown:
            print(f"    {f}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
