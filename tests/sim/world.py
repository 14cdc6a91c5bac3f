"""The simulated world: virtual time, a seeded scheduler, a faulty network, the fault
schedule of a run, its two phases, and the end-of-run checks.

Everything random comes from one `random.Random` seeded by the run's seed, and every
event is ordered by (virtual time, insertion sequence), so a seed replays exactly.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.block import Block
from protocol.consensus_types import EngineConfig
from protocol.crypto import SigningKey, sha256
from protocol.proposal import ConsensusMessage, MessageError, Proposal, decode_message
from protocol.votes import Evidence, Vote
from tests.sim.app import BAD_TX, BlockRejected, SimGenesis, SimLedger, data_tx, member_tx, parse_tx
from tests.sim.invariants import Checker, SimFailure
from tests.sim.node import ByzantineNode, OutsiderNode, SimNode
from tests.sim.scenario import Scenario

GENESIS_TIME_MS = 1_700_000_000_000
DRIFT_MS = 1000


def sim_engine_config(chain_id: bytes) -> EngineConfig:
    """Timeouts scaled to the simulated network (delays of tens of ms)."""
    return EngineConfig(chain_id=chain_id, timeout_propose_ms=400, timeout_propose_delta_ms=100,
                        timeout_prevote_ms=200, timeout_prevote_delta_ms=100,
                        timeout_precommit_ms=200, timeout_precommit_delta_ms=100,
                        rebroadcast_interval_ms=500, empty_block_interval_ms=800,
                        max_clock_drift_ms=DRIFT_MS)


class ToyWorkload:
    """Opaque transactions over `SimLedger`: data items and validator add/remove."""

    rejected: type[Exception] = BlockRejected

    def __init__(self, genesis: SimGenesis) -> None:
        self.genesis = genesis
        self._next = 0

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

    def client_tx(self) -> bytes:
        self._next += 1
        return data_tx(self._next)

    def member_tx(self, op: str, who: bytes) -> bytes:
        self._next += 1
        return member_tx(op, who, self._next)

    def replay(self, app: SimLedger) -> None:
        """Re-apply every committed block to a fresh ledger: same root at every height."""
        fresh = self.new_ledger()
        for h in range(1, app.height + 1):
            fresh.commit(app.block(h), app.certificate(h))
            if fresh.state_root != app.roots[h - 1]:
                raise SimFailure(f"replay: state root differs at height {h}")


@dataclass
class Stats:
    counts: Counter[str] = field(default_factory=Counter)

    def __getitem__(self, k: str) -> int:
        return self.counts[k]

    def __setitem__(self, k: str, v: int) -> None:
        self.counts[k] = v


class World:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.now = 0
        self.genesis_time_ms = GENESIS_TIME_MS
        self._queue: list[tuple[int, int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.stats: Counter[str] = Counter()
        self.healed = False
        self.cut: set[tuple[int, int]] = set()
        self.loss, self.dup, self.replay_p = sc.loss, sc.dup, sc.replay
        self.delay = sc.delay_ms
        self._recent: list[tuple[int, int, str, bytes]] = []
        self._decoded: dict[bytes, ConsensusMessage | None] = {}

        keys = [SigningKey.derive("sim", str(sc.seed), "validator", str(i))
                for i in range(sc.size)]
        members = tuple(k.public for k in keys)
        chain_id = sha256(b"sim-genesis" + str(sc.seed).encode() + b"".join(sorted(members)))
        self.chain_id = chain_id
        self.genesis = SimGenesis(chain_id, members, GENESIS_TIME_MS)
        self.workload = ToyWorkload(self.genesis)
        self.engine_config = sim_engine_config(chain_id)

        byz = dict(sc.byzantine)
        self.nodes: list[SimNode] = []
        for i, k in enumerate(keys):
            if i in byz:
                self.nodes.append(ByzantineNode(self, i, k, byz[i]))
            else:
                self.nodes.append(SimNode(self, i, k))
        self.joiner: SimNode | None = None
        if sc.joiner:
            jk = SigningKey.derive("sim", str(sc.seed), "joiner")
            self.joiner = SimNode(self, len(self.nodes), jk)
            self.nodes.append(self.joiner)
        if sc.twin is not None:
            twin = SimNode(self, len(self.nodes), keys[sc.twin])
            twin.honest = False
            self.nodes[sc.twin].honest = False
            self.nodes.append(twin)
        if sc.outsider:
            ok = SigningKey.derive("sim", str(sc.seed), "outsider")
            self.nodes.append(OutsiderNode(self, len(self.nodes), ok, sc.outsider))
        assert len(self.nodes) == len(sc.skew_ms)
        honest_keys = {n.key.public for n in self.nodes if n.honest}
        self.checker = Checker(chain_id, honest_keys)
        self.pending_member_txs: dict[bytes, bytes] = {}
        self.member_events: list[tuple[str, bytes, bytes]] = []
        """(op, member, tx hash) submitted."""

    # ---- scheduler ----

    def at(self, delay_ms: int, node: int, fn: Callable[..., None], *args: Any) -> None:
        assert delay_ms >= 0
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._seq, node, fn, args))

    def run_until(self, t_end: int, done: Callable[[], bool] = lambda: False) -> None:
        q = self._queue
        while q and q[0][0] <= t_end:
            t, _, node, fn, args = heapq.heappop(q)
            self.now = self.checker.now = t
            if node >= 0:
                self.nodes[node].guarded(fn, *args)
            else:
                fn(*args)
            self.stats["events"] += 1
            if done():
                return
        self.now = self.checker.now = max(self.now, t_end)

    def skew(self, i: int) -> int:
        return self.sc.skew_ms[i]

    # ---- network ----

    def _link_cut(self, a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in self.cut

    def send(self, src: int, dst: int, channel: str, raw: bytes) -> None:
        self.stats["sent"] += 1
        self.stats[f"sent_{channel}"] += 1
        if self._link_cut(src, dst):
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            return
        node = self.nodes[dst]
        lo, hi = self.delay
        self.at(rng.randint(lo, hi), dst, node.on_receive, src, channel, raw)
        if self.dup and rng.random() < self.dup:
            self.at(rng.randint(lo, hi * 3), dst, node.on_receive, src, channel, raw)
        if self.replay_p:
            if len(self._recent) < 256:
                self._recent.append((src, dst, channel, raw))
            else:
                self._recent[rng.randrange(256)] = (src, dst, channel, raw)
            if rng.random() < self.replay_p:
                s, d, c, r = rng.choice(self._recent)
                if not self._link_cut(s, d):
                    self.at(rng.randint(lo, hi * 5), d, self.nodes[d].on_receive, s, c, r)

    def broadcast(self, src: int, channel: str, raw: bytes) -> None:
        for n in self.nodes:
            if n.index != src:
                self.send(src, n.index, channel, raw)

    def decode_consensus(self, raw: bytes) -> ConsensusMessage | None:
        """`decode_message`, shared by all receivers of the same bytes: decoding is a pure
        function of them and messages are immutable, so this only saves time."""
        if raw in self._decoded:
            return self._decoded[raw]
        try:
            msg: ConsensusMessage | None = decode_message(raw)
        except MessageError:
            msg = None
        if len(self._decoded) > 4096:
            self._decoded.clear()
        self._decoded[raw] = msg
        return msg

    # ---- hooks from nodes ----

    def checker_signed(self, node: SimNode, msg: Proposal | Vote) -> None:
        if node.honest:
            self.checker.on_signed(node, msg)

    def checker_evidence(self, node: SimNode, ev: Evidence) -> None:
        if node.honest:
            self.checker.on_evidence(node, ev)

    def checker_drop(self, node: SimNode, peer: int, reason: str) -> None:
        self.stats["drops"] += 1
        if node.honest:
            self.checker.on_drop(node, self.nodes[peer], reason)

    def on_commit(self, node: SimNode, block: Block) -> None:
        if not node.honest:
            return
        for raw in block.txs:
            self.pending_member_txs.pop(sha256(raw), None)

    def node_crashed(self, node: SimNode) -> None:
        self.stats["crashes"] += 1
        self.at(self.rng.randint(200, 3000) if not self.healed else 10, -1, self._restart, node)

    def _restart(self, node: SimNode) -> None:
        if not node.up:
            node.boot()
            self.stats["restarts"] += 1

    # ---- the run ----

    def honest_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.honest]

    def run(self) -> None:
        sc = self.sc
        for n in self.nodes:
            self.at(self.rng.randint(0, 50), -1, self._restart, n)
        self._plan_faults()
        self._plan_clients()
        self.run_until(sc.safety_ms)
        self._heal()
        honest = self.honest_nodes()
        target = max(n.app.height for n in honest) + sc.liveness_blocks
        self.stats["heal_height"] = target - sc.liveness_blocks

        def done() -> bool:
            return all(n.up and n.app.height >= target for n in honest) and \
                not self.pending_member_txs
        self.run_until(sc.safety_ms + sc.liveness_ms, done)
        slow = [f"{n.name}@{n.app.height}" for n in honest if n.app.height < target]
        if slow:
            raise SimFailure(f"liveness: after healing, honest nodes {', '.join(slow)} "
                             f"did not reach height {target} within {sc.liveness_ms}ms")
        if self.pending_member_txs:
            raise SimFailure("liveness: a membership transaction was never committed")
        self._final_checks()

    def _plan_faults(self) -> None:
        sc, rng = self.sc, self.rng
        horizon = int(sc.safety_ms * 0.85)
        n = len(self.nodes)
        for _ in range(sc.partitions):
            start = rng.randint(0, horizon)
            if n < 2:
                break
            if rng.random() < 0.5:  # links cut one by one, restored in random order
                links = [(a, b) for a in range(n) for b in range(a + 1, n)]
                rng.shuffle(links)
                chosen = links[: rng.randint(1, len(links))]
                t = start
                for link in chosen:
                    t += rng.randint(0, 400)
                    self.at(t - self.now, -1, self.cut.add, link)
                order = chosen[:]
                rng.shuffle(order)
                t += rng.randint(200, 3000)
                for link in order:
                    t += rng.randint(0, 400)
                    self.at(t - self.now, -1, self.cut.discard, link)
            else:  # split in two groups
                idx = list(range(n))
                rng.shuffle(idx)
                k = rng.randint(1, n - 1)
                group = set(idx[:k])
                links = [(a, b) for a in range(n) for b in range(a + 1, n)
                         if (a in group) != (b in group)]
                self.at(start, -1, self.cut.update, links)
                self.at(start + rng.randint(500, 4000), -1, self.cut.difference_update, links)
        crashable = [i for i, nd in enumerate(self.nodes) if not isinstance(nd, OutsiderNode)]
        for mode in sc.crash_modes:
            t = rng.randint(100, horizon)
            victim = rng.choice(crashable)
            self.at(t, -1, self._crash, victim, mode)

    def _crash(self, i: int, mode: str) -> None:
        node = self.nodes[i]
        if not node.up or self.healed:
            return
        if mode == "mid_append":
            node.tear_next_append = True  # dies inside its next WAL append
            return
        node.crash(mode)
        self.node_crashed(node)

    def _plan_clients(self) -> None:
        sc = self.sc
        self.at(self.rng.randint(50, 400), -1, self._client_tick)
        if self.joiner is not None:
            self.at(self.rng.randint(300, sc.safety_ms // 2), -1, self._member_op, "add",
                    self.joiner.key.public)
        self.at(1000, -1, self._resubmit_member_txs)

    def _client_tick(self) -> None:
        ups = [n for n in self.nodes if n.up]
        if ups and self.stats["client_txs"] < 400:
            node = self.rng.choice(ups)
            node.guarded(node.submit, self.workload.client_tx())
            self.stats["client_txs"] += 1
        self.at(self.rng.randint(1, 2 * self.sc.tx_interval_ms), -1, self._client_tick)

    def _member_op(self, op: str, who: bytes) -> None:
        raw = self.workload.member_tx(op, who)
        self.pending_member_txs[sha256(raw)] = raw
        self.member_events.append((op, who, sha256(raw)))
        self._submit_member(raw)

    def _submit_member(self, raw: bytes) -> None:
        ups = [n for n in self.nodes if n.up and n.honest]
        if ups:
            node = self.rng.choice(ups)
            node.guarded(node.submit, raw)

    def _resubmit_member_txs(self) -> None:
        """A client retries its membership change until it is committed; once the joiner
        is in, the remove (if planned) goes out."""
        for raw in list(self.pending_member_txs.values()):
            self._submit_member(raw)
        sc = self.sc
        if (sc.remove and self.joiner is not None and len(self.member_events) == 1
                and not self.pending_member_txs):
            honest_founders = [n for n in self.nodes[: sc.size] if n.honest]
            if honest_founders:
                victim = self.rng.choice(honest_founders)
                self._member_op("remove", victim.key.public)
        self.at(1000, -1, self._resubmit_member_txs)

    def _heal(self) -> None:
        self.healed = True
        self.cut.clear()
        self.loss = 0.0
        self.replay_p = 0.0
        self.dup = min(self.dup, 0.1)
        self.delay = (1, min(self.delay[1], 50))
        for n in self.nodes:
            n.tear_next_append = False
            if not n.up:
                n.boot()
                self.stats["restarts"] += 1

    # ---- end-of-run checks ----

    def _final_checks(self) -> None:
        honest = self.honest_nodes()
        for n in honest:
            app = n.app
            for tx_hash, h in self.checker.acked.items():
                if h <= app.height and tx_hash not in {sha256(t) for t in app.block(h).txs}:
                    raise SimFailure(f"lost acknowledged transaction at {n.name} height {h}")
            self.workload.replay(app)
        low = min(n.app.height for n in honest)
        ref = honest[0].app
        for n in honest[1:]:
            for h in range(1, low + 3):
                if n.app.validators_at(h) != ref.validators_at(h):
                    raise SimFailure(f"validator sets differ at height {h}")
        for op, who, tx_hash in self.member_events:
            h = self.checker.acked.get(tx_hash)
            if h is None:
                raise SimFailure(f"membership {op} never committed")
            for n in honest:
                if n.app.height >= h:
                    before = who in n.app.validators_at(h + 1)
                    after = who in n.app.validators_at(h + 2)
                    if before != (op == "remove") or after != (op == "add"):
                        raise SimFailure(f"{op} committed at {h} did not change the "
                                         f"validator set at {h + 2} on {n.name}")

    def digest(self) -> str:
        """A fingerprint of the run's outcome, to check that a seed replays exactly."""
        h = hashlib.sha256()
        for n in self.nodes:
            h.update(n.app.last_block_hash + n.app.height.to_bytes(8, "big"))
        h.update(repr(sorted(self.stats.items())).encode())
        return h.hexdigest()[:16]


def run_scenario(sc: Scenario) -> World:
    world = World(sc)
    world.run()
    return world


def dump(world: World) -> str:
    """Each node's consensus state, for a failing run's report."""
    lines = []
    for n in world.nodes:
        e = n.engine
        if e is None:
            lines.append(f"  {n.name} down height={n.app.height}")
            continue
        rv = e._rounds.get(e.round)
        pv = {k.hex()[:6] or "nil": c for k, c in rv.prevote_tally.items()} if rv else {}
        pc = {k.hex()[:6] or "nil": c for k, c in rv.precommit_tally.items()} if rv else {}
        lines.append(
            f"  {n.name} {'honest' if n.honest else 'faulty'} h={e.height} r={e.round} "
            f"step={e.step.value} waiting={e._waiting} locked={e.locked_round}:"
            f"{(e.locked_value or b'').hex()[:6]} valid={e.valid_round} "
            f"validator={e.is_validator} prop={'y' if rv and rv.proposal else 'n'} "
            f"prevotes={pv} precommits={pc} rounds={sorted(e._rounds)[-5:]} "
            f"mempool={len(n.mempool)} sync_target={n.sync.target(n.now()) if n.sync else '-'}")
    return "\n".join(lines)
