"""What the simulated commune does: its genesis, its ledger, its clients, its membership
changes and the application invariants checked after every commit.

- `ToyWorkload`: the small in-memory application of `tests/sim/app.py` (opaque data
  transactions, validator add/remove). Cheap: the many-seed CI runs use it.
- `LedgerWorkload`: the real `ledger.Ledger` (in-memory SQLite) with real signed
  transactions: treasury deposits, transfers between accounts, a member admitted by
  `member.apply` + `member.attest` and then `member.node`, a member resigning. Checks
  money conservation after every commit and replays every chain from genesis.

Clients behave like wallets: one pending transaction per key (the ledger wants exact
next nonces), resubmitted to some live node until an honest node commits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ledger.execute import BlockRejected as LedgerBlockRejected
from ledger.genesis import Founder, Genesis
from ledger.ledger import Ledger, LedgerError
from ledger.membership import default_peer_id
from protocol.block import Block
from protocol.crypto import SigningKey, sha256
from protocol.transactions import Transaction, TxError, decode_tx, make_tx
from protocol.votes import Certificate, Evidence, ValidatorSet
from tests.sim.app import BAD_TX, BlockRejected, SimGenesis, SimLedger, data_tx, member_tx, parse_tx
from tests.sim.invariants import SimFailure

if TYPE_CHECKING:
    from tests.sim.node import SimNode
    from tests.sim.world import World

GENESIS_TIME_MS = 1_700_000_000_000


class ToyWorkload:
    """Opaque transactions over `SimLedger`: data items and validator add/remove."""

    rejected: tuple[type[Exception], ...] = (BlockRejected,)

    def __init__(self, seed: int, founders: list[SigningKey]) -> None:
        members = tuple(k.public for k in founders)
        self.chain_id = sha256(b"sim-genesis" + str(seed).encode() + b"".join(sorted(members)))
        self.genesis = SimGenesis(self.chain_id, members, GENESIS_TIME_MS)
        self._next = 0
        self.pending: dict[bytes, bytes] = {}
        self.member_events: list[tuple[str, bytes, bytes]] = []
        """(op, member, hash of the transaction whose commit makes the change)."""

    def new_ledger(self) -> SimLedger:
        return SimLedger.open(None, self.genesis)

    def accept_tx(self, app: SimLedger, raw: bytes) -> bool:
        if len(raw) > 4096:
            return False
        try:
            parse_tx(raw)
        except BlockRejected:
            return False
        return sha256(raw) not in app.tx_ids

    def bad_tx(self) -> bytes:
        return BAD_TX

    def start(self, world: World) -> None:
        self.world = world
        world.at(world.rng.randint(50, 400), -1, self._client_tick)
        if world.joiner is not None:
            world.at(world.rng.randint(300, world.sc.safety_ms // 2), -1, self._member_op,
                     "add", world.joiner.key.public)
        world.at(1000, -1, self._resubmit)

    def _client_tick(self) -> None:
        w = self.world
        ups = [n for n in w.nodes if n.up]
        if ups and w.stats["client_txs"] < 400:
            self._next += 1
            node = w.rng.choice(ups)
            node.guarded(node.submit, data_tx(self._next))
            w.stats["client_txs"] += 1
        w.at(w.rng.randint(1, 2 * w.sc.tx_interval_ms), -1, self._client_tick)

    def _member_op(self, op: str, who: bytes) -> None:
        self._next += 1
        raw = member_tx(op, who, self._next)
        self.pending[sha256(raw)] = raw
        self.member_events.append((op, who, sha256(raw)))
        self.world.submit_somewhere(raw)

    def _resubmit(self) -> None:
        """Clients retry their membership change until it is committed; once the joiner
        is in, the remove (if planned) goes out."""
        w = self.world
        for raw in list(self.pending.values()):
            w.submit_somewhere(raw)
        if (w.sc.remove and w.joiner is not None and len(self.member_events) == 1
                and not self.pending):
            founders = [n for n in w.nodes[: w.sc.size] if n.honest]
            if founders:
                self._member_op("remove", w.rng.choice(founders).key.public)
        w.at(1000, -1, self._resubmit)

    def on_commit(self, node: SimNode, block: Block) -> None:
        for raw in block.txs:
            self.pending.pop(sha256(raw), None)

    def busy(self) -> bool:
        return bool(self.pending)

    def replay(self, app: SimLedger) -> None:
        """Re-apply every committed block to a fresh ledger: same root at every height."""
        fresh = self.new_ledger()
        for h in range(1, app.height + 1):
            fresh.commit(app.block(h), app.certificate(h))
            if fresh.state_root != app.roots[h - 1]:
                raise SimFailure(f"replay: state root differs at height {h}")


class LedgerApp:
    """`ledger.Ledger` behind the interface the simulated node uses (raw transactions in
    and out, like the daemon's mempool hands them over)."""

    def __init__(self, genesis: Genesis) -> None:
        self.ledger = Ledger.open(None, genesis)
        self.chain_id = genesis.chain_id

    @property
    def height(self) -> int:
        return self.ledger.height

    @property
    def last_block_hash(self) -> bytes:
        return self.ledger.last_block_hash

    @property
    def last_time_ms(self) -> int:
        return self.ledger.last_time_ms

    @property
    def state_root(self) -> bytes:
        return self.ledger.state_root

    def validators_at(self, height: int) -> ValidatorSet:
        return self.ledger.validators_at(height)

    def block(self, h: int) -> Block:
        b = self.ledger.block(h)
        assert b is not None
        return b

    def certificate(self, h: int) -> Certificate:
        c = self.ledger.certificate(h)
        assert c is not None
        return c

    def build_block(self, raws: list[bytes], time_ms: int, proposer: bytes,
                    last_commit: Certificate | None,
                    evidence: tuple[Evidence, ...] = ()) -> tuple[Block, list[bytes]]:
        txs: list[Transaction] = []
        for raw in raws:
            try:
                txs.append(decode_tx(raw, self.chain_id))
            except TxError:
                continue
        block, rejected = self.ledger.build_block(txs, time_ms, proposer, last_commit, evidence)
        gone = {tid for tid, _ in rejected}
        return block, [t.raw for t in txs if t.id in gone]

    def check_block(self, block: Block) -> None:
        self.ledger.check_block(block)

    def commit(self, block: Block, certificate: Certificate) -> None:
        self.ledger.commit(block, certificate)


@dataclass
class _Step:
    key: SigningKey
    kind: str
    args: Callable[[], dict[str, Any]]
    event: tuple[str, bytes] | None = None
    """A membership change this step's commit makes: (op, member)."""


class LedgerWorkload:
    """Real transactions over the real ledger."""

    rejected: tuple[type[Exception], ...] = (LedgerBlockRejected, LedgerError)

    def __init__(self, seed: int, founders: list[SigningKey]) -> None:
        self.founders = founders
        self.treasurer = founders[0]
        self.investor = SigningKey.derive("sim", str(seed), "investor")
        self.genesis = Genesis.create(
            name=f"sim {seed}", currency="EUR", minor_units=2,
            founders=[Founder(k.public, f"founder {i}") for i, k in enumerate(founders)],
            treasury_signers=[self.treasurer.public], treasury_threshold=1,
            genesis_time_ms=GENESIS_TIME_MS)
        self.chain_id = self.genesis.chain_id
        self.pending: dict[bytes, bytes] = {}
        """Transactions clients wait for: hash -> raw."""
        self.member_events: list[tuple[str, bytes, bytes]] = []
        self._scripts: list[list[_Step]] = []
        self._waiting: dict[int, bytes] = {}
        """Script index -> hash of the transaction it waits for."""
        self._events: dict[bytes, tuple[str, bytes]] = {}
        self._signer: dict[bytes, bytes] = {}

    def new_ledger(self) -> LedgerApp:
        return LedgerApp(self.genesis)

    def accept_tx(self, app: LedgerApp, raw: bytes) -> bool:
        try:
            tx = decode_tx(raw, self.chain_id)
        except TxError:
            return False
        return app.ledger.check_tx(tx) is None

    def bad_tx(self) -> bytes:
        return b"\x81\xa4junk\xc0"

    # ---- clients ----

    def start(self, world: World) -> None:
        self.world = world
        rng = world.rng
        wallets = [*self.founders[:3], self.investor]
        # The treasurer deposits for every wallet, then wallets pay each other.
        deposits = [_Step(self.treasurer, "treasury.deposit",
                          partial(dict, account=k.public, amount=100_000,
                                  reference=f"wire {k.public.hex()[:8]}"))
                    for k in wallets]
        self._scripts.append(deposits)
        for k in wallets:
            others = [o for o in wallets if o is not k]
            steps = [_Step(k, "account.transfer", partial(self._transfer_args, k, others))
                     for _ in range(rng.randint(3, 8))]
            self._scripts.append(steps)
        joiner = world.joiner
        if joiner is not None:
            j = joiner.key
            attesters = self.founders[:2] if len(self.founders) >= 2 else self.founders[:1]
            steps = [_Step(j, "member.apply", partial(dict, name="joiner", enterprise="sim",
                                                      labour="simulated labour"))]
            steps += [_Step(a, "member.attest", partial(dict, applicant=j.public))
                      for a in attesters]
            steps.append(_Step(j, "member.node", partial(dict, peer_id=default_peer_id(j.public)),
                               ("add", j.public)))
            if world.sc.remove:
                victims = [n.key for n in world.nodes[1: world.sc.size] if n.honest]
                if victims:
                    v = rng.choice(victims)
                    steps.append(_Step(v, "member.resign", dict, ("remove", v.public)))
            self._scripts.append(steps)
        world.at(rng.randint(100, 400), -1, self._tick)

    def _transfer_args(self, k: SigningKey, others: list[SigningKey]) -> dict[str, Any]:
        balance = _balance(self.world.reference_app(), k.public)
        return {"to": self.world.rng.choice(others).public, "amount": max(1, balance // 3)}

    def _tick(self) -> None:
        """Each script sends its next step once the previous one is committed, and
        resubmits the pending one (mempools forget on a crash; gossip is lossy)."""
        w = self.world
        app = w.reference_app()
        for i, steps in enumerate(self._scripts):
            wait = self._waiting.get(i)
            if wait is not None and wait in self.pending:
                w.submit_somewhere(self.pending[wait])
                continue
            if not steps:
                continue
            step = steps[0]
            if any(self._signer.get(h) == step.key.public for h in self.pending):
                continue  # one pending transaction per key: nonces must be consecutive
            if step.kind == "account.transfer" and _balance(app, step.key.public) < 3:
                continue  # not funded yet (its deposit is still on its way)
            if step.kind == "member.resign" and app.validators_at(app.height + 1).size < 2:
                continue
            steps.pop(0)
            tx = make_tx(step.key, self.chain_id, step.kind, app.ledger.next_nonce(
                step.key.public), step.args())
            h = sha256(tx.raw)
            self.pending[h] = tx.raw
            self._signer[h] = step.key.public
            self._waiting[i] = h
            if step.event is not None:
                self._events[h] = step.event
                self.member_events.append((*step.event, h))
            w.submit_somewhere(tx.raw)
        w.at(w.rng.randint(300, 900), -1, self._tick)

    def on_commit(self, node: SimNode, block: Block) -> None:
        for raw in block.txs:
            self.pending.pop(sha256(raw), None)
        held, inflow, _ = node.app.ledger.conservation()
        if held != inflow:
            raise SimFailure(f"conservation broken at {node.name} height {block.height}: "
                             f"held {held}, net inflow {inflow}")

    def busy(self) -> bool:
        return bool(self.pending) or any(self._scripts)

    def replay(self, app: LedgerApp) -> None:
        fresh = Ledger.open(None, self.genesis)
        for h in range(1, app.height + 1):
            block = app.block(h)
            fresh.commit(block, app.certificate(h))
            if fresh.state_root != block.header.state_root:
                raise SimFailure(f"replay: state root differs at height {h}")
        if fresh.state_root != app.state_root:
            raise SimFailure("replay: final state root differs")
        fresh.close()


def _balance(app: LedgerApp, who: bytes) -> int:
    return app.ledger.state.balance(who)


def make_workload(mode: str, seed: int, founders: list[SigningKey]) -> ToyWorkload | LedgerWorkload:
    if mode == "toy":
        return ToyWorkload(seed, founders)
    if mode == "ledger":
        return LedgerWorkload(seed, founders)
    raise ValueError(f"unknown mode {mode!r}")
