"""Re-execute a chain from its genesis, trusting nothing but the genesis.

Each block is checked as a live node checks it (header, previous certificate against
the validator set of its height, evidence, signatures, execution, state root) and
committed with its certificate into a fresh in-memory store. The list of state roots
it returns must equal the roots in the headers; `ReplayError` names the first block
that fails and why. The auditor builds on this.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.execute import BlockRejected
from ledger.genesis import Genesis
from ledger.ledger import Ledger, LedgerError
from ledger.rules import Rules
from protocol.block import Block
from protocol.votes import Certificate


class ReplayError(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height}: {reason}")
        self.height = height
        self.reason = reason


def replay(genesis: Genesis, blocks: Iterable[tuple[Block, Certificate]],
           rules: Rules | None = None, path: str | None = None) -> list[bytes]:
    """State roots after each block, re-executed from genesis (index 0 = height 1)."""
    ledger = Ledger.open(path, genesis, rules)
    if ledger.height != 0:
        ledger.close()
        raise LedgerError("replay needs an empty store")
    roots = []
    try:
        for block, cert in blocks:
            try:
                ledger.check_block(block)
                ledger.commit(block, cert)
            except (BlockRejected, LedgerError) as exc:
                raise ReplayError(block.height, str(exc)) from None
            roots.append(ledger.state_root)
    finally:
        ledger.close()
    return roots
