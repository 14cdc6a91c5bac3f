"""The simulator runs that CI makes, in one place: `tests/test_sim.py` runs them, and so do
`python -m tests.sim --ci` and the mutation check (`python -m tests.sim.mutate`), so that
"the simulator catches this bug in CI" means exactly the same seeds everywhere.

Seed counts come from SIM_SEEDS (toy application, default 300), SIM_LEDGER_SEEDS (real
ledger, default 24) and SIM_LOCK_SEEDS (toy application, every seed drawn with the
lock-hunting profile, default 100); the pinned regressions (`tests/sim/regressions.py`)
run as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from tests.sim.regressions import REGRESSIONS, scenario_of
from tests.sim.scenario import Scenario, draw
from tests.sim.world import World

SEEDS = int(os.environ.get("SIM_SEEDS", "300"))
LEDGER_SEEDS = int(os.environ.get("SIM_LEDGER_SEEDS", "24"))
LOCK_SEEDS = int(os.environ.get("SIM_LOCK_SEEDS", "100"))
LOCK_SEEDS_START = 1000
"""Lock-hunting seeds start here, apart from the general ones (a seed means another
scenario under a forced profile)."""

T = TypeVar("T")
R = TypeVar("R")


def toy_scenarios(n: int = SEEDS) -> list[Scenario]:
    return [draw(s, None, "toy") for s in range(n)]


def ledger_scenarios(n: int = LEDGER_SEEDS) -> list[Scenario]:
    return [draw(s, None, "ledger") for s in range(n)]


def lock_scenarios(n: int = LOCK_SEEDS) -> list[Scenario]:
    """Extra seeds for the lock rules: the bugs only the lock-hunting profile reaches
    are caught by a few percent of its runs each (`python -m tests.sim.mutate`), too
    few among the general seeds alone."""
    return [draw(s, None, "toy", profile="lock_hunt")
            for s in range(LOCK_SEEDS_START, LOCK_SEEDS_START + n)]


def regression_scenarios() -> list[Scenario]:
    return [scenario_of(e) for e in REGRESSIONS]


def ci_scenarios() -> list[tuple[str, Scenario]]:
    """Every simulator run of CI, labelled by where it comes from."""
    return ([("toy", sc) for sc in toy_scenarios()]
            + [("ledger", sc) for sc in ledger_scenarios()]
            + [("lock", sc) for sc in lock_scenarios()]
            + [("regression", sc) for sc in regression_scenarios()])


def run_one(sc: Scenario) -> str | None:
    """None if the run passed, else what broke (a crash of the run counts as a failure)."""
    return run_covered(sc)[0]


def run_covered(sc: Scenario) -> tuple[str | None, dict[str, int]]:
    """`run_one`, with how often the run reached the moments the lock rules decide
    (`Checker.cover`)."""
    world = World(sc)
    try:
        world.run()
    except Exception as exc:  # any failure of a seed is reported with its replay command
        return f"{type(exc).__name__}: {exc}", dict(world.checker.cover)
    return None, dict(world.checker.cover)


def parallel_map(fn: Callable[[T], R], jobs: Iterable[T], workers: int = 2) -> list[R]:
    """Seeds are independent: use both cores when there are two. Longest-first order is
    the caller's business; chunks stay small so one slow seed does not idle a core."""
    items = list(jobs)
    workers = min(workers, os.cpu_count() or 1)
    if workers < 2 or len(items) < 8:
        return [fn(j) for j in items]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, items, chunksize=2))
