"""The deterministic simulator in CI: many seeds of faults and Byzantine validators with
the small application, some seeds with the real ledger, every kept regression, exact
replay, and proof that the invariant checks bite.

Seed counts: SIM_SEEDS (default 300) and SIM_LEDGER_SEEDS (default 24); longer runs:
`python -m tests.sim --seeds N [--start S] [--mode ledger]`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import pytest

import tests.sim.node as sim_node
from protocol.consensus import ConsensusEngine
from protocol.crypto import sha256
from protocol.votes import validator_set
from tests.sim.__main__ import main as sim_main
from tests.sim.invariants import Checker, SimFailure
from tests.sim.regressions import REGRESSIONS, scenario_of
from tests.sim.scenario import BEHAVIOURS, SIZES, draw
from tests.sim.world import World, run_scenario

SEEDS = int(os.environ.get("SIM_SEEDS", "300"))
LEDGER_SEEDS = int(os.environ.get("SIM_LEDGER_SEEDS", "24"))


def _run(job: tuple[int, str]) -> str | None:
    seed, mode = job
    sc = draw(seed, None, mode)
    try:
        run_scenario(sc)
    except Exception as exc:  # any failure of a seed is reported with its replay command
        return f"{sc.describe()}\n  {type(exc).__name__}: {exc}\n  replay: {sc.command()}"
    return None


def _map(fn: Callable[[Any], str | None], jobs: list[Any]) -> list[str | None]:
    """Seeds are independent: use both cores when there are two."""
    workers = min(2, os.cpu_count() or 1)
    if workers < 2 or len(jobs) < 8:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, jobs, chunksize=4))


def test_many_seeds_with_faults_and_byzantine_validators() -> None:
    failures = [f for f in _map(_run, [(s, "toy") for s in range(SEEDS)]) if f]
    assert not failures, f"{len(failures)} of {SEEDS} seeds failed:\n" + "\n".join(failures)


def test_seeds_with_the_real_ledger() -> None:
    jobs = [(s, "ledger") for s in range(LEDGER_SEEDS)]
    failures = [f for f in _map(_run, jobs) if f]
    assert not failures, "\n".join(failures)


def test_the_seeds_cover_every_size_and_fault() -> None:
    if SEEDS < 300:
        pytest.skip("coverage of faults is asserted for the CI run of 300 seeds")
    seen: Counter[str] = Counter()
    for s in range(SEEDS):
        sc = draw(s)
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
    wanted = ([f"size{n}" for n in SIZES] + list(BEHAVIOURS)
              + [f"crash:{m}" for m in ("clean", "mid_append", "torn_tail", "garbage_tail")]
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
