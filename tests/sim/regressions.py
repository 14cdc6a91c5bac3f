"""Runs that once failed, kept forever: pytest replays every one on each run.

A seed alone is not enough to keep a regression, because the scenario generator (and so
what a seed means) evolves. Each entry therefore pins the whole scenario of the failing
run; its seed still drives the run's own randomness. Add a failure found by
`python -m tests.sim` here with the parameters its report printed.

An entry with `catches` names a mutant of `tests/sim/mutate.py` that its run is known to
catch; `tests/test_sim.py` checks that it still does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.sim.scenario import Scenario, draw

REGRESSIONS: list[dict[str, Any]] = [
    dict(seed=81, size=7, note="POL prevotes lost: locked and unlocked honest validators "
         "split forever until the proposer relays its proof of lock",
         byzantine=((4, ("double_vote", "sync_liar")),), twin=None, outsider=(),
         joiner=False, remove=False, loss=0.05, dup=0.1, replay=0.2, delay_ms=(1, 20),
         partitions=1, crashes=0, crash_modes=(), adversarial_timing=False),
    dict(seed=3, size=10, note="same, with three Byzantine validators",
         byzantine=((1, ("double_vote", "equivocate_proposal", "silent")),
                    (4, ("garbage", "sync_liar")), (8, ("garbage", "invalid_block", "silent"))),
         twin=None, outsider=("bad_signature", "garbage", "sync_liar"), joiner=False,
         remove=False, loss=0.1, dup=0.0, replay=0.2, delay_ms=(1, 60), partitions=0,
         crashes=2, crash_modes=("torn_tail", "mid_append"), adversarial_timing=False),
    dict(seed=86, size=4, note="restarted validators kept their lock but lost the locked "
         "block: deadlock until the precommit record carries a lock proof",
         byzantine=(), twin=None, outsider=("bad_signature", "sync_liar"), joiner=True,
         remove=False, loss=0.05, dup=0.5, replay=0.0, delay_ms=(1, 150), partitions=4,
         crashes=4, crash_modes=("mid_append",) * 4, adversarial_timing=False),
    dict(seed=80, size=4, note="an equivocator's prevote counted for one value only: its "
         "other prevote, needed for a proof of lock, was discarded",
         byzantine=((0, ("bad_signature", "double_vote", "garbage")),), twin=None,
         outsider=(), joiner=False, remove=False, loss=0.05, dup=0.3, replay=0.0,
         delay_ms=(1, 60), partitions=2, crashes=0, crash_modes=(),
         adversarial_timing=False),
    dict(seed=0, size=3, note="simulator: a membership change cleared by a faulty node's "
         "commit", byzantine=(), twin=None, outsider=("garbage", "sync_liar"), joiner=True,
         remove=True, loss=0.3, dup=0.5, replay=0.0, delay_ms=(1, 60), partitions=4,
         crashes=2, crash_modes=("torn_tail", "clean"), adversarial_timing=False),
    dict(seed=257, size=1, note="simulator: a crash inside a WAL append during a client "
         "submission", byzantine=(), twin=None,
         outsider=("bad_signature", "garbage", "sync_liar"), joiner=False, remove=False,
         loss=0.05, dup=0.3, replay=0.05, delay_ms=(1, 60), partitions=0, crashes=2,
         crash_modes=("clean", "mid_append"), adversarial_timing=False),
    # Seeds of the current generator that catch those bugs when re-introduced:
    dict(seed=122, size=7, catches='no_pol_relay',
         note="catches a missing proof-of-lock relay", joiner=True,
         remove=False, byzantine=(), twin=None, outsider=(), loss=0.1, dup=0.3, replay=0.0,
         delay_ms=(1, 150), partitions=1, crashes=0, crash_modes=(),
         adversarial_timing=False),
    dict(seed=273, size=7, note="catches a missing proof-of-lock relay (with crashes)",
         joiner=True, remove=True, byzantine=(), twin=None, outsider=(), loss=0.1, dup=0.0,
         replay=0.05, delay_ms=(1, 150), partitions=1, crashes=4,
         crash_modes=("mid_append", "mid_append", "garbage_tail", "garbage_tail"),
         adversarial_timing=False),
    dict(seed=223, size=4, catches='equivocator_counted_once',
         note="catches an equivocator's second vote not being counted",
         joiner=False, remove=False,
         byzantine=((2, ("amnesia", "double_vote", "invalid_block")),), twin=None,
         outsider=(), loss=0.05, dup=0.1, replay=0.0, delay_ms=(1, 400), partitions=0,
         crashes=0, crash_modes=(), adversarial_timing=False),
    dict(seed=50, size=4, catches='fresh_ignores_lock',
         note="catches a broken lock rule (agreement violated)",
         joiner=False, remove=False, byzantine=((3, ("amnesia",)),), twin=None, outsider=(),
         loss=0.3, dup=0.0, replay=0.0, delay_ms=(1, 20), partitions=0, crashes=0,
         crash_modes=(), adversarial_timing=False, skew_ms=(-85,) * 4),
    dict(seed=181, size=7, note="catches a broken lock rule (agreement violated)",
         joiner=False, remove=False, byzantine=((2, ("amnesia",)), (5, ("amnesia",))),
         twin=None, outsider=(), loss=0.3, dup=0.0, replay=0.0, delay_ms=(1, 20),
         partitions=0, crashes=0, crash_modes=(), adversarial_timing=False,
         skew_ms=(-23,) * 7),
    # Lock-hunting runs that catch the lock-rule bugs random faults missed, each checked
    # by tests/test_sim.py against the mutant it names (`python -m tests.sim.mutate`):
    dict(seed=70, size=4, catches='unlock_any_pol',
         note='locked in round 1, a block re-proposed with a round-0 proof of lock is refused',
         joiner=False, remove=False, byzantine=((3, ('bad_clock', 'stale_pol')),), twin=None,
         outsider=(), loss=0.05, dup=0.0, replay=0.0, delay_ms=(1, 150), partitions=0,
         crashes=2, crash_modes=('at_precommit', 'at_precommit'), adversarial_timing=False,
         skew_ms=(27, -314, 74, -106), split_rounds=8, profile='lock_hunt'),
    dict(seed=1006, size=4, catches='unlock_any_pol',
         note='a proof of lock older than the lock does not unlock',
         joiner=False, remove=False, byzantine=((0, ('bad_clock', 'stale_pol')),), twin=None,
         outsider=(), loss=0.05, dup=0.0, replay=0.0, delay_ms=(1, 20), partitions=0, crashes=2,
         crash_modes=('at_precommit', 'at_precommit'), adversarial_timing=False,
         skew_ms=(-179, 284, 173, -109), split_rounds=8, profile='lock_hunt'),
    dict(seed=1000, size=4, catches='lock_not_restored',
         note='restarted right after its precommit, a node holds its lock again',
         joiner=False, remove=False, byzantine=((2, ('bad_clock', 'stale_pol')),), twin=None,
         outsider=(), loss=0.1, dup=0.0, replay=0.0, delay_ms=(1, 20), partitions=0, crashes=3,
         crash_modes=('at_precommit', 'at_precommit', 'at_precommit'), adversarial_timing=False,
         skew_ms=(263, -158, -290, 297), split_rounds=3, profile='lock_hunt'),
    dict(seed=1012, size=7, catches='no_clock_check',
         note='a fresh block timed by a clock running ahead is refused',
         joiner=False, remove=False,
         byzantine=((2, ('stale_pol',)), (6, ('bad_clock', 'stale_pol'))), twin=None,
         outsider=(), loss=0.1, dup=0.0, replay=0.0, delay_ms=(1, 150), partitions=0, crashes=0,
         crash_modes=(), adversarial_timing=False,
         skew_ms=(145, 354, -125, -240, -31, -380, 271), split_rounds=5, profile='lock_hunt'),
    dict(seed=1001, size=7, catches='unlock_without_pol',
         note='a re-proposal is not prevoted without its +2/3 prevotes',
         joiner=False, remove=False,
         byzantine=((2, ('bad_clock', 'stale_pol')), (5, ('stale_pol',))), twin=None,
         outsider=(), loss=0.1, dup=0.0, replay=0.0, delay_ms=(1, 150), partitions=0, crashes=1,
         crash_modes=('at_precommit',), adversarial_timing=False,
         skew_ms=(-361, -372, 331, -366, 389, -144, 193), split_rounds=8, profile='lock_hunt'),

]


def scenario_of(entry: dict[str, Any]) -> Scenario:
    fields = {k: v for k, v in entry.items() if k not in ("note", "mode_ledger", "catches")}
    mode = "ledger" if entry.get("mode_ledger") else "toy"
    # The general mix as the base: entries pinned before the lock-hunting profile
    # existed name none of its fields, and must not pick them up from a redrawn seed.
    base = draw(fields.pop("seed"), fields["size"], mode, profile="mix")
    sc = dataclasses.replace(base, **fields)
    n_nodes = sc.size + sc.joiner + (sc.twin is not None) + bool(sc.outsider)
    skew = (sc.skew_ms * n_nodes)[:n_nodes]
    return dataclasses.replace(sc, skew_ms=skew)
