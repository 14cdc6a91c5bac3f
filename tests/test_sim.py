"""The deterministic simulator in CI: many seeds of faults and Byzantine validators with
the small application, some seeds with the real ledger, every kept regression, exact
replay, and proof that the invariant checks bite -- including on re-introduced lock-rule
bugs that only the simulator's targeted schedules and vote checks catch.

Seed counts: SIM_SEEDS (default 300) and SIM_LEDGER_SEEDS (default 24), see
`tests/sim/ci.py`; longer runs: `python -m tests.sim --seeds N [--start S] [--mode ledger]`;
the full mutation check: `python -m tests.sim.mutate`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import tests.sim.node as sim_node
from protocol.consensus import ConsensusEngine
from protocol.crypto import sha256
from protocol.votes import validator_set
from tests.sim.__main__ import main as sim_main
from tests.sim.ci import (
    LOCK_SEEDS,
    SEEDS,
    ledger_scenarios,
    lock_scenarios,
    parallel_map,
    run_covered,
    toy_scenarios,
)
from tests.sim.invariants import Checker, SimFailure
from tests.sim.mutate import MUTANTS, TARGET, apply, mutant_engine
from tests.sim.regressions import REGRESSIONS, scenario_of
from tests.sim.scenario import BEHAVIOURS, CRASH_MODES, PROFILES, SIZES, Scenario, draw
from tests.sim.world import World, run_scenario

LOCK_MOMENTS = {
    "restarted_locked": 20,
    "reproposal_pol_older_than_lock": 3,
    "reproposal_without_pol": 10,
    "reproposal_older_than_drift": 20,
    "relocked": 3,
}
"""Moments the lock rules decide that CI's lock-hunting seeds must reach at least this
often (measured on 120 seeds: 130, 10, 72, 665, 26), so that a change to the generator
cannot quietly stop the simulator from testing them. See `Checker.cover`."""


def _run_all(scenarios: list[Scenario]) -> tuple[list[str], Counter[str]]:
    failures: list[str] = []
    cover: Counter[str] = Counter()
    for sc, (err, reached) in zip(scenarios, parallel_map(run_covered, scenarios),
                                  strict=True):
        cover.update(reached)
        if err is not None:
            failures.append(f"{sc.describe()}\n  {err}\n  replay: {sc.command()}")
    return failures, cover


def test_many_seeds_with_faults_and_byzantine_validators() -> None:
    failures, _ = _run_all(toy_scenarios())
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures)


def test_lock_hunting_seeds() -> None:
    failures, cover = _run_all(lock_scenarios())
    assert not failures, f"{len(failures)} of {LOCK_SEEDS} seeds failed:\n" + "\n".join(failures)
    if LOCK_SEEDS >= 100:
        short = {k: cover[k] for k, n in LOCK_MOMENTS.items() if cover[k] < n}
        assert not short, f"lock-rule moments reached too rarely: {short} of {dict(cover)}"


def test_seeds_with_the_real_ledger() -> None:
    failures, _ = _run_all(ledger_scenarios())
    assert not failures, "\n".join(failures)


def test_the_seeds_cover_every_size_and_fault() -> None:
    if SEEDS < 300:
        pytest.skip("coverage of faults is asserted for the CI run of 300 seeds")
    seen: Counter[str] = Counter()
    for s in range(SEEDS):
        sc = draw(s)
        seen[sc.profile] += 1
        seen[f"size{sc.size}"] += 1
        seen.update(b for _, bs in sc.byzantine for b in bs)
        seen.update(f"crash:{m}" for m in sc.crash_modes)
        seen.update(f"outsider:{b}" for b in sc.outsider)
        for flag in ("joiner", "remove", "adversarial_timing"):
            seen[flag] += bool(getattr(sc, flag))
        seen["twin"] += sc.twin is not None
        seen["partitions"] += sc.partitions > 0
        seen["loss30"] += sc.loss >= 0.3
        seen["dup50"] += sc.dup >= 0.5
        seen["replay"] += sc.replay > 0
    wanted = ([f"size{n}" for n in SIZES] + list(BEHAVIOURS) + list(PROFILES)
              + ["stale_pol", "bad_clock"]
              + [f"crash:{m}" for m in (*CRASH_MODES, "at_precommit")]
              + ["joiner", "remove", "adversarial_timing", "twin", "partitions", "loss30",
                 "dup50", "replay", "outsider:garbage", "outsider:sync_liar"])
    missing = [w for w in wanted if seen[w] < 3]
    assert not missing, f"faults too rare in {SEEDS} seeds: {missing}"


@pytest.mark.parametrize("entry", REGRESSIONS, ids=[f"seed{e['seed']}" for e in REGRESSIONS])
def test_regression(entry: dict[str, Any]) -> None:
    sc = scenario_of(entry)
    run_scenario(sc)


def test_a_seed_replays_exactly() -> None:
    sc = draw(11)
    assert World(sc).digest() == World(sc).digest()
    first, second = run_scenario(sc), run_scenario(sc)
    assert first.digest() == second.digest()
    assert first.stats == second.stats


def test_runner_reports_and_replays(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--seed", "4", "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "ok seed=4" in out and "1/1 seeds passed" in out


def test_the_checks_bite_on_a_node_that_forgets_its_wal(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A node restarted without its signing records double-signs; the simulator must
    say so, with the command that replays the run."""

    def forgetful(config: Any, key: Any, records: Any = ()) -> ConsensusEngine:
        return ConsensusEngine(config, key, ())

    monkeypatch.setattr(sim_node, "ConsensusEngine", forgetful)
    with pytest.raises(SimFailure, match="self-equivocation"):
        run_scenario(draw(0))
    assert sim_main(["--seed", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL (invariant)" in out and "self-equivocation" in out
    assert "replay: .venv/bin/python -m tests.sim --seed 0 --nodes" in out


def test_checker_flags_disagreement_and_foreign_certificates() -> None:
    from protocol.crypto import SigningKey
    from protocol.votes import PRECOMMIT, Certificate, Vote
    from tests.sim.app import SimGenesis, SimLedger, data_tx

    key = SigningKey.derive("checker")
    chain = sha256(b"checker")
    lg = SimLedger.open(None, SimGenesis(chain, (key.public,), 0))
    blocks = [lg.build_block([data_tx(i)], 10, key.public, None)[0] for i in range(2)]
    certs = [Certificate.from_votes([Vote.create(key, chain, PRECOMMIT, 1, 0, b.hash())])
             for b in blocks]

    class FakeNode:
        name = "n0"

        @staticmethod
        def now() -> int:
            return 10

    ck = Checker(chain, {key.public}, 1000)
    vs = validator_set([key.public])
    ck.on_commit(FakeNode(), blocks[0], certs[0], vs, chain)  # type: ignore[arg-type]
    with pytest.raises(SimFailure, match="agreement"):
        ck.on_commit(FakeNode(), blocks[1], certs[1], vs, chain)  # type: ignore[arg-type]
    other = validator_set([SigningKey.derive("someone").public])
    with pytest.raises(SimFailure, match="certificate"):
        Checker(chain, set(), 1000).on_commit(FakeNode(), blocks[0], certs[0], other,  # type: ignore[arg-type]
                                              chain)


def test_every_mutant_still_matches_the_engine() -> None:
    """The mutation check edits the engine's source by exact match: if the engine
    changed under a mutant, the mutant must be brought up to date (or dropped, with
    the reason), not silently skipped."""
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / TARGET).read_text()
    for m in MUTANTS:
        assert apply(m, source) != source


CAUGHT_BY_PINNED = [
    (entry["catches"], entry["seed"]) for entry in REGRESSIONS if "catches" in entry
]


@pytest.mark.parametrize(("mutant", "seed"), CAUGHT_BY_PINNED,
                         ids=[f"{m}-seed{s}" for m, s in CAUGHT_BY_PINNED])
def test_the_simulator_catches_a_reintroduced_lock_bug(
        mutant: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-rule bugs that random faults missed (see `python -m tests.sim.mutate`),
    each re-introduced into a copy of the engine: the pinned scenario that caught it
    must still fail on it (and pass on the real engine, as `test_regression` shows)."""
    entry = next(e for e in REGRESSIONS if e.get("catches") == mutant and e["seed"] == seed)
    monkeypatch.setattr(sim_node, "ConsensusEngine", mutant_engine(mutant))
    with pytest.raises(SimFailure):
        run_scenario(scenario_of(entry))
