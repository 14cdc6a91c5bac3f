"""`commune simulate`: a scenario played on one in-process ledger with virtual time.

The ledger is the real one (`ledger.ledger.Ledger`, in-memory store): every block is
built, certified by the founders' keys and committed exactly as a node would, so the
run's state root is a property of the scenario file alone. The genesis time is fixed
(`GENESIS_TIME_MS`), block times are the player's virtual times, nothing reads a clock:
the same file always gives the same state root.

`LocalBackend` implements the player's `Backend`: it signs each action's transactions
with the actors' next nonces, builds a block, and if the ledger leaves a transaction out
it keeps the part of that action before it, records the reason, drops the rest of the
action and builds again (the nonces of later transactions shift, so they are signed
anew). With `check`, money conservation and non-negative balances are asserted after
every block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bootstrap.player import Action, Outcome, PlayerState, Reader, ScenarioPlayer
from bootstrap.scenario import Scenario
from bootstrap.summary import summarize
from ledger.genesis import Founder, Genesis
from ledger.testing import Harness
from protocol.block import MAX_BLOCK_TXS
from protocol.transactions import Transaction, make_tx

GENESIS_TIME_MS = 1_704_067_200_000
"""2024-01-01T00:00:00Z: every simulated commune starts here, so runs are reproducible."""

MAX_ACTION_TXS = MAX_BLOCK_TXS // 2
"""Transactions submitted per block; larger submissions are split across blocks."""


class InvariantError(AssertionError):
    """A ledger invariant broke after a block (only with `check`): a bug, not bad input."""


def scenario_genesis(scenario: Scenario, genesis_time_ms: int = GENESIS_TIME_MS) -> Genesis:
    c = scenario.commune
    founders = [Founder(scenario.key(n).public, n) for n in scenario.founders]
    return Genesis.create(
        name=c.name, currency=c.currency, minor_units=c.minor_units, founders=founders,
        treasury_signers=[scenario.key(n).public for n in scenario.treasury.signers],
        treasury_threshold=scenario.treasury.threshold, genesis_time_ms=genesis_time_ms,
        params=c.params.as_dict())


class LocalBackend:
    """The player's backend on one in-memory ledger: one block per submission."""

    def __init__(self, scenario: Scenario, *, check: bool = False,
                 genesis_time_ms: int = GENESIS_TIME_MS) -> None:
        genesis = scenario_genesis(scenario, genesis_time_ms)
        founders = [scenario.key(n) for n in scenario.founders]
        self.harness = Harness(genesis, founders)
        self.ledger = self.harness.ledger
        self.check = check
        self.blocks = 0

    @property
    def chain_id(self) -> bytes:
        return self.ledger.chain_id

    @property
    def genesis_time_ms(self) -> int:
        return self.ledger.genesis.genesis_time_ms

    @property
    def view(self) -> Reader:
        return self.ledger.state

    def last_time_ms(self) -> int:
        return self.ledger.last_time_ms

    def advance_to(self, time_ms: int) -> None:
        if self.ledger.height == 0 or self.ledger.last_time_ms < time_ms:
            self._commit([], time_ms)

    def submit(self, actions: Sequence[Action], time_ms: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        chunk: list[Action] = []
        size = 0
        for action in actions:
            if chunk and size + len(action.intents) > MAX_ACTION_TXS:
                outcomes += self._submit_block(chunk, time_ms)
                time_ms = self.ledger.last_time_ms + 1
                chunk, size = [], 0
            chunk.append(action)
            size += len(action.intents)
        if chunk:
            outcomes += self._submit_block(chunk, time_ms)
        return outcomes

    def _submit_block(self, actions: Sequence[Action], time_ms: int) -> list[Outcome]:
        time_ms = max(time_ms, self.ledger.last_time_ms + 1)
        limit = [len(a.intents) for a in actions]  # intents still to send, per action
        reasons: list[str | None] = [None] * len(actions)
        cache: dict[tuple[int, int, int, tuple[bytes, ...]], Transaction] = {}
        while True:
            txs, owner, ids = self._sign(actions, limit, cache)
            block, rejected = self.harness.build(txs, time_ms=time_ms)
            if not rejected:
                assert len(block.txs) == len(txs), "block limits: submit fewer transactions"
                break
            first = min(txs.index(t) for t in txs if t.id in {r[0] for r in rejected})
            reason = dict(rejected)[txs[first].id]
            ai, position = owner[first]
            limit[ai] = position
            reasons[ai] = reason
        self._commit_built(block)
        return [Outcome(tuple(ids[i]), reasons[i]) for i in range(len(actions))]

    def _sign(self, actions: Sequence[Action], limit: list[int],
              cache: dict[tuple[int, int, int, tuple[bytes, ...]], Transaction]
              ) -> tuple[list[Transaction], list[tuple[int, int]], list[list[bytes]]]:
        """Sign what is left to send; a retry re-signs only what a dropped one shifted."""
        nonces: dict[bytes, int] = {}
        txs: list[Transaction] = []
        owner: list[tuple[int, int]] = []
        ids: list[list[bytes]] = []
        for ai, action in enumerate(actions):
            mine: list[bytes] = []
            for position, intent in enumerate(action.intents[:limit[ai]]):
                who = intent.key.public
                nonce = nonces.get(who) or self.ledger.next_nonce(who)
                nonces[who] = nonce + 1
                known = (ai, position, nonce, tuple(mine))
                tx = cache.get(known) or make_tx(intent.key, self.chain_id, intent.kind,
                                                 nonce, intent.resolve(mine))
                cache[known] = tx
                mine.append(tx.id)
                txs.append(tx)
                owner.append((ai, position))
            ids.append(mine)
        return txs, owner, ids

    def _commit(self, txs: list[Transaction], time_ms: int) -> None:
        block, rejected = self.harness.build(txs, time_ms=time_ms)
        assert not rejected
        self._commit_built(block)

    def _commit_built(self, block: Any) -> None:
        self.harness.commit(block)
        self.blocks += 1
        if self.check:
            check_invariants(self)

    def close(self) -> None:
        self.ledger.close()


def check_invariants(backend: LocalBackend) -> None:
    """Money conservation, no negative balance or debt, escrows that match their assets."""
    held, inflow, per_holder = backend.ledger.conservation()
    if held != inflow:
        raise InvariantError(f"after block {backend.ledger.height}: money held {held} != net "
                             f"inflow {inflow} ({per_holder})")
    for holder, amount in per_holder.items():
        if amount < 0:
            raise InvariantError(f"{holder} is negative: {amount}")
    state = backend.ledger.state
    for key, row in state.rows("accounts"):
        if row["balance"] < 0 or row["arrears"] < 0:
            raise InvariantError(f"account {key.hex()} is negative: {row}")
    for key, row in state.rows("assets"):
        s = state.row("series", key)
        if row["escrow"] and (s is None or s["status"] != "funded" or
                              row["escrow"] != s["face"]):
            raise InvariantError(f"asset {key.hex()}: escrow {row['escrow']} without a funded "
                                 "series of that face")
    for key, s in state.rows("series"):
        holdings = [state.row("bonds", (key, h)) for h in _holders(s["holders"])]
        if sum(b["outstanding"] for b in holdings if b) != s["outstanding"]:
            raise InvariantError(f"series {key.hex()}: holdings do not add up to outstanding")
        if sum(b["principal_received"] for b in holdings if b) != s["principal_paid"]:
            raise InvariantError(f"series {key.hex()}: principal received != principal paid")
        if s["principal_paid"] + s["outstanding"] + s["principal_written_off"] != s["face"]:
            raise InvariantError(f"series {key.hex()}: principal paid + outstanding + written "
                                 f"off != face")


def _holders(packed: bytes) -> list[bytes]:
    return [packed[i:i + 32] for i in range(0, len(packed), 32)]


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    backend: LocalBackend
    player: ScenarioPlayer
    state: PlayerState
    seconds: float

    def summary(self) -> dict[str, Any]:
        return summarize(self.scenario, self.backend.view, self.player.names,
                         self.state, height=self.backend.ledger.height,
                         state_root=self.backend.ledger.state_root,
                         conservation=self.backend.ledger.conservation()[:2])


def run_scenario(scenario: Scenario, *, check: bool = False) -> Run:
    """Play `scenario` on a fresh in-memory ledger and return the finished run."""
    started = time.perf_counter()
    backend = LocalBackend(scenario, check=check)
    player = ScenarioPlayer(scenario, backend)
    state = player.run()
    return Run(scenario, backend, player, state, time.perf_counter() - started)


def simulate(scenario: Scenario, *, check: bool = False) -> dict[str, Any]:
    """The JSON summary of a scenario played on the state machine (SCENARIOS.md)."""
    run = run_scenario(scenario, check=check)
    try:
        return run.summary()
    finally:
        run.backend.close()
