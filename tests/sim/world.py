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
from protocol.consensus_types import EngineConfig, TimeoutKind
from protocol.crypto import SigningKey, sha256
from protocol.proposal import ConsensusMessage, MessageError, Proposal, decode_message
from protocol.votes import Evidence, Vote
from tests.sim.invariants import Checker, SimFailure
from tests.sim.node import ByzantineNode, Crashed, OutsiderNode, SimNode
from tests.sim.scenario import Scenario
from tests.sim.workloads import GENESIS_TIME_MS, make_workload

DRIFT_MS = 1000


def sim_engine_config(chain_id: bytes) -> EngineConfig:
    """Timeouts scaled to the simulated network (delays of tens of ms)."""
    return EngineConfig(chain_id=chain_id, timeout_propose_ms=400, timeout_propose_delta_ms=100,
                        timeout_prevote_ms=200, timeout_prevote_delta_ms=100,
                        timeout_precommit_ms=200, timeout_precommit_delta_ms=100,
                        rebroadcast_interval_ms=500, empty_block_interval_ms=800,
                        max_clock_drift_ms=DRIFT_MS)


@dataclass
class SplitRound:
    """How late the messages of one round of one height are, on a network out to split
    the validators. Late proposals make nil prevotes; prevotes that reach some nodes
    before the prevote timeout and others after it make some lock while the others
    precommit nil, so the round ends with locks but no decision, and the next proposer
    may not know the newest proof of lock. Each link draws its delay per message kind
    once (a resend is as late)."""

    late_pct: dict[str, int]
    """Message kind -> percentage of links on which it is late."""
    propose_ms: int
    prevote_ms: int
    links: dict[tuple[str, int, int], int] = field(default_factory=dict)

    @classmethod
    def draw(cls, rng: random.Random, cfg: EngineConfig, r: int) -> SplitRound:
        return cls({"proposal": rng.choice((0, 20, 40)), "prevote": rng.choice((20, 40, 60)),
                    "precommit": rng.choice((0, 30, 60))},
                   cfg.timeout_ms(TimeoutKind.PROPOSE, r), cfg.timeout_ms(TimeoutKind.PREVOTE, r))

    def delay(self, rng: random.Random, kind: str, src: int, dst: int) -> int:
        extra = self.links.get((kind, src, dst))
        if extra is None:
            extra = 0
            if rng.randrange(100) < self.late_pct[kind]:
                if kind == "proposal":  # after the propose timeout: a nil prevote
                    extra = self.propose_ms + rng.randint(0, 800)
                elif kind == "prevote":  # around the prevote timeout
                    extra = rng.randint(self.prevote_ms // 2, self.prevote_ms + 1500)
                else:
                    extra = rng.randint(0, 1500)
            self.links[(kind, src, dst)] = extra
        return extra


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
        self.slow: dict[tuple[int, int, str], int] = {}
        """Adversarial timing: extra delay per (sender, receiver, message kind)."""
        self._plans: dict[tuple[int, int], SplitRound] = {}
        """Split rounds: (height, round) -> how late its messages are."""
        self._recent: list[tuple[int, int, str, bytes]] = []
        self._decoded: dict[bytes, ConsensusMessage | None] = {}
        self.share_decoding = True
        """Receivers of the same bytes share one decode (off in the benchmark)."""

        keys = [SigningKey.derive("sim", str(sc.seed), "validator", str(i))
                for i in range(sc.size)]
        self.workload = make_workload(sc.mode, sc.seed, keys)
        chain_id = self.chain_id = self.workload.chain_id
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
        skews = [sc.skew_ms[n.index] for n in self.nodes if n.honest] or [0]
        self.checker = Checker(chain_id, honest_keys,
                               DRIFT_MS + max(skews) - min(skews))

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
        delay = rng.randint(lo, hi)
        if self.sc.split_rounds and channel == "consensus" and not self.healed:
            delay += self._split_delay(src, dst, raw)
        if self.slow and channel == "consensus":
            msg = self.decode_consensus(raw)
            kind = type(msg).__name__ if not isinstance(msg, Vote) else msg.type
            extra = self.slow.get((src, dst, kind), 0)
            if extra < 0:
                return
            delay += extra
        self.at(delay, dst, node.on_receive, src, channel, raw)
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

    def _split_delay(self, src: int, dst: int, raw: bytes) -> int:
        """Extra delay of a consensus message of a split round (see `SplitRound`)."""
        msg = self.decode_consensus(raw)
        if not isinstance(msg, Proposal | Vote) or msg.round >= self.sc.split_rounds:
            return 0
        plan = self._plans.get((msg.height, msg.round))
        if plan is None:
            if len(self._plans) > 10_000:
                self._plans.clear()
            plan = self._plans[(msg.height, msg.round)] = SplitRound.draw(
                self.rng, self.engine_config, msg.round)
        kind = "proposal" if isinstance(msg, Proposal) else msg.type
        return plan.delay(self.rng, kind, src, dst)

    def broadcast(self, src: int, channel: str, raw: bytes) -> None:
        for n in self.nodes:
            if n.index != src:
                self.send(src, n.index, channel, raw)

    def decode_consensus(self, raw: bytes) -> ConsensusMessage | None:
        """`decode_message`, shared by all receivers of the same bytes: decoding is a pure
        function of them and messages are immutable, so this only saves time."""
        if not self.share_decoding:
            try:
                return decode_message(raw)
            except MessageError:
                return None
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
        if node.honest:
            self.workload.on_commit(node, block)

    def submit_somewhere(self, raw: bytes) -> None:
        """A client hands a transaction to some live node (honest: a client retrying
        through a Byzantine node could wait forever, which tests nothing)."""
        ups = [n for n in self.nodes if n.up and n.honest]
        if ups:
            node = self.rng.choice(ups)
            node.guarded(node.submit, raw)

    def reference_app(self) -> Any:
        """The ledger of the most advanced honest node: what a client would query."""
        return max(self.honest_nodes(), key=lambda n: n.app.height).app

    def node_crashed(self, node: SimNode) -> None:
        self.stats["crashes"] += 1
        self.at(self.rng.randint(200, 3000) if not self.healed else 10, -1, self._restart, node)

    def _restart(self, node: SimNode) -> None:
        if not node.up:
            self.stats["restarts"] += 1
            try:
                node.boot()
            except Crashed:  # a fault armed for its next step fired while it started
                node.crash("clean")
                self.node_crashed(node)

    # ---- the run ----

    def honest_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.honest]

    def run(self) -> None:
        sc = self.sc
        for n in self.nodes:
            self.at(self.rng.randint(0, 50), -1, self._restart, n)
        self._plan_faults()
        self.workload.start(self)
        self.run_until(sc.safety_ms)
        self._heal()
        honest = self.honest_nodes()
        target = max(n.app.height for n in honest) + sc.liveness_blocks
        self.stats["heal_height"] = target - sc.liveness_blocks

        def done() -> bool:
            return all(n.up and n.app.height >= target for n in honest) and \
                not self.workload.busy()
        self.run_until(sc.safety_ms + sc.liveness_ms, done)
        slow = [f"{n.name}@{n.app.height}" for n in honest if n.app.height < target]
        if slow:
            raise SimFailure(f"liveness: after healing, honest nodes {', '.join(slow)} "
                             f"did not reach height {target} within {sc.liveness_ms}ms")
        if self.workload.busy():
            raise SimFailure("liveness: client transactions still waiting after healing")
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
        if sc.adversarial_timing:
            self.at(rng.randint(0, 500), -1, self._reslow)
        crashable = [i for i, nd in enumerate(self.nodes) if not isinstance(nd, OutsiderNode)]
        lockers = [i for i, nd in enumerate(self.nodes[: sc.size]) if nd.honest]
        for mode in sc.crash_modes:
            t = rng.randint(100, horizon)
            victim = rng.choice(lockers if mode == "at_precommit" and lockers else crashable)
            self.at(t, -1, self._crash, victim, mode)

    def _reslow(self) -> None:
        """Pick new slow or lossy links per message kind: some nodes then see quorums that
        others miss, which is what makes locking matter. Shifts every second or two until
        the network heals."""
        if self.healed:
            self.slow = {}
            return
        rng, n = self.rng, len(self.nodes)
        self.slow = {}
        for kind in ("Proposal", "prevote", "precommit"):
            for a in range(n):
                for b in range(n):
                    if a != b and rng.random() < 0.3:
                        self.slow[(a, b, kind)] = -1 if rng.random() < 0.5 \
                            else rng.randint(50, 400)
        if rng.random() < 0.5:
            # One node's votes of one kind reach nobody: it may decide on what it
            # receives while the others never learn its vote and go on to later rounds.
            mute, kind = rng.randrange(n), rng.choice(("precommit", "prevote"))
            for b in range(n):
                if b != mute:
                    self.slow[(mute, b, kind)] = -1
        self.at(rng.randint(500, 2500), -1, self._reslow)

    def _crash(self, i: int, mode: str) -> None:
        node = self.nodes[i]
        if not node.up or self.healed:
            return
        if mode == "mid_append":
            node.tear_next_append = True  # dies inside its next WAL append
            return
        if mode == "at_precommit":
            node.crash_at_precommit = self.rng.choice(("persisted", "sent"))
            return
        node.crash(mode)
        self.node_crashed(node)

    def _heal(self) -> None:
        self.healed = True
        self.cut.clear()
        self.slow = {}
        self.loss = 0.0
        self.replay_p = 0.0
        self.dup = min(self.dup, 0.1)
        self.delay = (1, min(self.delay[1], 50))
        for n in self.nodes:
            n.tear_next_append = False
            n.crash_at_precommit = None
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
        for op, who, tx_hash in self.workload.member_events:
            at = self.checker.acked.get(tx_hash)
            if at is None:
                raise SimFailure(f"membership {op} never committed")
            for n in honest:
                if n.app.height >= at:
                    before = who in n.app.validators_at(at + 1)
                    after = who in n.app.validators_at(at + 2)
                    if before != (op == "remove") or after != (op == "add"):
                        raise SimFailure(f"{op} committed at {at} did not change the "
                                         f"validator set at {at + 2} on {n.name}")

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
