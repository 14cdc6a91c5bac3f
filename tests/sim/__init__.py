"""Deterministic simulation of the consensus engine and block sync (DESIGN.md section 9).

Many nodes in one process over a simulated network with a seeded scheduler and virtual
time; faults during a safety phase, then a liveness phase in which a connected quorum must
keep committing. See `python -m tests.sim --help`.
"""
