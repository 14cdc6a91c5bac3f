"""Deterministic simulation of the consensus engine and block sync (DESIGN.md section 9).

Many nodes in one process over a simulated network with a seeded scheduler and virtual
time; faults during a safety phase, then a liveness phase in which a connected quorum must
keep committing. See `python -m tests.sim --help`.

Seeds draw a general mix of faults or a profile aimed at the lock rules (`scenario.py`);
every honest vote is checked against Algorithm 1 as its node saw things
(`invariants.py`); `python -m tests.sim.mutate` re-introduces known consensus bugs into a
scratch copy of the engine and reports which of CI's runs (`ci.py`) catch each.
"""
