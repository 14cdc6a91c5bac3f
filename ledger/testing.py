"""A driver for a single ledger with known keys: tests, benchmarks, scenario runners.

It plays every validator at once: builds a block with the first validator as proposer,
signs the commit certificate with all validators' keys it knows, and commits. Keys are
derived deterministically from labels, so runs are reproducible. Not for production:
it holds private keys in memory by design.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ledger.execute import BlockRejected
from ledger.genesis import Founder, Genesis
from ledger.ledger import Ledger
from ledger.modules import MODULES
from ledger.money import add_arrears, add_common_income, debit
from ledger.rules import Exec, Rules, TxRejected
from protocol.block import Block
from protocol.crypto import SigningKey
from protocol.transactions import Transaction, make_tx
from protocol.votes import PRECOMMIT, Certificate, Vote

GENESIS_TIME_MS = 1_700_000_000_000


def key(*labels: str) -> SigningKey:
    return SigningKey.derive("ledger-testing", *labels)


def make_genesis(founders: int = 3, *, signers: int | None = None, threshold: int | None = None,
                 params: Mapping[str, int] | None = None,
                 genesis_time_ms: int = GENESIS_TIME_MS, name: str = "Test commune"
                 ) -> tuple[Genesis, list[SigningKey]]:
    keys = [key("founder", str(i)) for i in range(founders)]
    n_signers = min(2, founders) if signers is None else signers
    g = Genesis.create(
        name=name, currency="EUR", minor_units=2,
        founders=[Founder(k.public, f"founder {i}", f"labour of founder {i}")
                  for i, k in enumerate(keys)],
        treasury_signers=[k.public for k in keys[:n_signers]],
        treasury_threshold=n_signers if threshold is None else threshold,
        genesis_time_ms=genesis_time_ms, params=params)
    return g, keys


def rent_stand_in_rules(lessee: bytes, rent: int, kind: str = "test-rent",
                        reference: bytes = b"asset") -> Rules:
    """Every module, plus a stand-in for the assets module's rent step.

    At each period close `lessee` pays `rent` into the common income, or owes it
    as arrears (of `kind`, paid into the common income when settled). Tests of
    membership, treasury and dividends use it to have income without assets.
    """

    def charge(ex: Exec, period: int) -> None:
        try:
            debit(ex, lessee, rent)
        except TxRejected:
            add_arrears(ex, lessee, rent, kind, reference)
            return
        add_common_income(ex, rent)

    rules = Rules()
    for m in MODULES:
        m.install(rules)
    rules.arrears_payee(kind, lambda ex, debtor, ref, amount: add_common_income(ex, amount))
    rules.on_period_close(100, "test rent", charge)
    return rules.freeze()


class Harness:
    """One ledger plus the keys of everyone who signs on it."""

    def __init__(self, genesis: Genesis, keys: Sequence[SigningKey], path: str | None = None,
                 rules: Rules | None = None) -> None:
        self.genesis = genesis
        self.path = path
        self.rules = rules
        self.ledger = Ledger.open(path, genesis, rules)
        self.keys: dict[bytes, SigningKey] = {k.public: k for k in keys}
        ids = set(genesis.founder_ids())
        self._founders = [k for k in keys if k.public in ids]
        self._pending: dict[bytes, int] = {}
        self.last_commit: Certificate | None = self.ledger.certificate(self.ledger.height)
        self.time_ms = max(self.ledger.last_time_ms, genesis.genesis_time_ms)

    @classmethod
    def create(cls, founders: int = 3, path: str | None = None, **kw: Any) -> Harness:
        g, keys = make_genesis(founders, **kw)
        return cls(g, keys, path)

    @property
    def founders(self) -> list[SigningKey]:
        """Founder keys in the order they were made (the first ones are treasury signers)."""
        return list(self._founders)

    def add_key(self, k: SigningKey) -> SigningKey:
        self.keys[k.public] = k
        return k

    def tx(self, signer: SigningKey, kind: str, args: dict[str, Any] | None = None,
           nonce: int | None = None) -> Transaction:
        """Sign a transaction with the signer's next nonce (counting ones not yet in a block)."""
        self.add_key(signer)
        if nonce is None:
            n = self._pending.get(signer.public) or self.ledger.next_nonce(signer.public)
            self._pending[signer.public] = n + 1
            nonce = n
        return make_tx(signer, self.genesis.chain_id, kind, nonce, args or {})

    def certify(self, block: Block) -> Certificate:
        validators = self.ledger.validators_at(block.height)
        votes = [Vote.create(self.keys[v], self.genesis.chain_id, PRECOMMIT, block.height, 0,
                             block.hash()) for v in validators.members if v in self.keys]
        return Certificate.from_votes(votes)

    def build(self, txs: Sequence[Transaction] = (), *, dt_ms: int = 1000,
              time_ms: int | None = None, evidence: Sequence[Any] = ()
              ) -> tuple[Block, list[tuple[bytes, str]]]:
        t = self.time_ms + dt_ms if time_ms is None else time_ms
        proposer = self.ledger.validators_at(self.ledger.height + 1).members[0]
        return self.ledger.build_block(list(txs), t, proposer, self.last_commit, evidence,
                                       verified={tx.id for tx in txs})

    def commit(self, block: Block) -> Certificate:
        cert = self.certify(block)
        self.ledger.commit(block, cert)
        self.last_commit = cert
        self.time_ms = block.header.time_ms
        self._pending.clear()
        return cert

    def block(self, txs: Sequence[Transaction] = (), *, dt_ms: int = 1000,
              time_ms: int | None = None, strict: bool = True,
              evidence: Sequence[Any] = ()) -> tuple[Block, list[tuple[bytes, str]]]:
        """Build, certify and commit one block. With `strict`, any left-out tx is an error."""
        block, rejected = self.build(txs, dt_ms=dt_ms, time_ms=time_ms, evidence=evidence)
        if strict and rejected:
            raise BlockRejected(f"transactions left out: {rejected}")
        self.commit(block)
        return block, rejected

    def reason(self, tx: Transaction) -> str | None:
        """Why `tx` would be rejected now (None if it would execute)."""
        return self.ledger.check_tx(tx, time_ms=self.time_ms + 1)

    def reopen(self) -> Harness:
        """Close and reopen the ledger from its store (a restart)."""
        assert self.path is not None
        self.ledger.close()
        others = [k for k in self.keys.values() if k not in self._founders]
        return Harness(self.genesis, self._founders + others, self.path, self.rules)
