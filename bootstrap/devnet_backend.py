"""The scenario player's backend over live daemons (`commune devnet`).

`bootstrap.player.ScenarioPlayer` decides *what* a scenario does and *when* (in the
ledger's time); `bootstrap.simulate.LocalBackend` makes it happen on one in-process
ledger with virtual time. `DaemonBackend` makes the same transactions happen on a
running commune, in real time, through the daemons' control APIs only:

- a member who has a daemon acts through it: the daemon signs with the member's key and
  picks the nonce (`POST /v1/sign`). A sealed bid the scenario means to reveal is placed
  with the daemon's own bid action (`/v1/actions/bond_bid`, `rent_bid`), and then the
  daemon reveals it by itself in the reveal window, as it would for a member; with
  `auto_claim`, the daemons claim their members' dividends by themselves too. The
  player's own reveal and claim transactions for those are not sent: the backend waits
  until the ledger shows the daemon did it (and says so if it did not).
- an actor without a daemon (an investor, or a member beyond `--nodes`) is signed for
  here, with the key the scenario derives for the name, and submitted as a raw signed
  transaction to one of the daemons (`POST /v1/txs`), which gossips it to the others.
- the committed state is read through `GET /v1/state/{table}` (raw rows, canonical
  msgpack), so the player's reads and the summary are the very reads it makes on the
  in-process ledger (`ApiReader`).

Ordering. On the in-process ledger a whole group of actions goes into one block, in
order. Here each transaction needs a consensus round, so independent actions run
concurrently and dependent ones wait for each other (`plan`): an action waits for the
commit of every earlier action of its group that writes what it reads or writes (an
account, a membership, an asset), governance and other commune-wide actions (propose,
vote, resign, a failed purchase, a liquidation) run alone, and an asset request goes
last in its group, so that its auction's commit window opens just before the bids are
sent. A transaction that needs an earlier one's id (an approval of a treasury action)
is sent once that one is committed, to a daemon that has that block. One signer has at
most one transaction in flight, so a rejected transaction never leaves a nonce gap
behind it.

Bids on one asset by different bidders touch nothing of each other's, but their commit
order numbers them, and the numbers break ties (DESIGN 6.4: the stop-out rate's shares,
the rental winner, remainders of bond service) and are part of the summary compared
with `simulate`. They must commit in the scenario's order, but need not wait for each
other's commit: a bid is *sequenced* after the earlier ones, sent once each of them is
ready (pending, no nonce gap) in the mempool of every validator's daemon, or committed,
or refused (`_announce`). A proposer reaps ready transactions in the order they arrived
(`node.mempool.Mempool.reap`), so whatever block takes them takes them in that order,
and the bids of a group go out a gossip hop apart instead of a block apart. A bid not
seen everywhere within `SEQUENCE_DEADLINE_SECONDS` (a lagging daemon) holds the next
ones until it commits, as before. A bid the signing daemon refuses for the state holds
them while that daemon retries it (`node.daemon.STATE_RETRY_SECONDS`).

Time. `advance_to(t)` waits for a committed block at or after `t` (the daemons make an
empty block every `empty_block_interval`, which is what closes periods and auctions);
`submit(..., t)` waits for the wall clock to reach `t` first. Every wait is on a
condition observed through the API, with a deadline; a daemon that dies or a chain that
stops making blocks ends the run with a `DevnetError` saying where to look.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bootstrap.player import Action, Intent, Outcome
from bootstrap.scenario import (
    AcquireFailedStep,
    BidStep,
    LiquidatedStep,
    ProposeStep,
    RentBidStep,
    ResignStep,
    Scenario,
    Step,
    VoteStep,
)
from ledger.membership import default_peer_id
from node.client import Client, ClientError, DaemonNotRunning
from protocol.crypto import parse_id
from protocol.encoding import decode, encode
from protocol.transactions import make_tx

MAX_CONCURRENT_ACTIONS = 8
"""Actions of one group in flight at once (each is a thread waiting on the API)."""
SUBMIT_WAIT_SECONDS = 20.0
"""How long one API call waits for its transaction to commit before asking again."""
COMMIT_DEADLINE_SECONDS = 90.0
"""A transaction not committed (nor rejected) by then means the commune is stuck."""
BLOCK_DEADLINE_SECONDS = 45.0
"""Longest wait for a block past a given time, beyond that time itself."""
DAEMON_ACTION_DEADLINE_SECONDS = 20.0
"""Longest wait for a daemon's own reveal or claim once it is due."""
POLL_SECONDS = 0.1
NODE_REGISTRATION_GRACE_SECONDS = 10.0
"""How long an admitted member's daemon has to register its node before the devnet asks."""
CATCH_UP_POLL_SECONDS = 0.02
"""Daemons are a block or so apart at most: catching up takes milliseconds."""
SEQUENCE_DEADLINE_SECONDS = 5.0
"""Longest wait for a bid to be ready at every validator before the bids sequenced after
it fall back to waiting for its commit (a gossip hop takes tens of milliseconds)."""
MAX_STATE_BYTES = 64 * 1024 * 1024

BARRIER_STEPS = (ProposeStep, VoteStep, ResignStep, AcquireFailedStep, LiquidatedStep)
"""Steps whose effects reach beyond the actors they name: they run alone."""


class DevnetError(RuntimeError):
    """The devnet cannot go on (a daemon died, the chain stalled); the message says why."""


class Monitor(Protocol):
    """Who watches the run (the live display); every call comes from any thread."""

    def action_started(self, action: Action, text: str) -> None: ...

    def action_done(self, action: Action, text: str, outcome: Outcome,
                    height: int | None) -> None: ...

    def waiting(self, text: str, until_ms: int | None) -> None: ...

    def warn(self, text: str) -> None: ...

    def advanced(self, time_ms: int, height: int) -> None:
        """A block at or after `time_ms` is committed (a period or an auction closed)."""
        ...


CLIENT_TIMEOUT = SUBMIT_WAIT_SECONDS + 30.0
MAX_IDLE_CLIENTS = 8


class ClientPool:
    """Reusable API clients of one daemon, safe to share between threads.

    Making an httpx client costs about 0.1 s of CPU (it prepares TLS even for plain
    HTTP), more than the request itself: the devnet makes thousands of requests, so
    each thread borrows an idle client and gives it back.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._idle: list[Client] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def client(self) -> Iterator[Client]:
        with self._lock:
            c = self._idle.pop() if self._idle else None
        if c is None:
            c = Client.from_home(self.home, timeout=CLIENT_TIMEOUT)
        try:
            yield c
        finally:
            with self._lock:
                if len(self._idle) < MAX_IDLE_CLIENTS:
                    self._idle.append(c)
                    c = None
            if c is not None:
                c.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()


@dataclass
class Endpoint:
    """One running daemon as the backend sees it."""

    name: str
    home: Path
    member: bytes
    pool: ClientPool
    alive: Callable[[], str | None] = lambda: None
    """None while the process runs, else why it is gone (checked on every wait)."""

    def client(self) -> contextlib.AbstractContextManager[Client]:
        return self.pool.client()


Send = Callable[[Client, float], dict[str, Any]]
"""Sends one transaction through a client; the float is how long the call may wait for
its commit."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_json(value: Any) -> Any:
    """Transaction args as the API takes them: bytes as hex (ids too), the rest as is."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


# ---- reads ------------------------------------------------------------------------------


class ApiReader:
    """`bootstrap.player.Reader` over one daemon's `GET /v1/state/{table}`.

    Read-your-writes: `require(height)` makes every later read wait until this daemon
    has committed at least that height (another daemon may have reported the commit).
    """

    def __init__(self, endpoint: Endpoint, pause: Callable[[float], None]) -> None:
        self.endpoint = endpoint
        self._pause = pause
        """Sleeps a little; raises if the run must stop."""
        self._min_height = 0
        self._lock = threading.Lock()

    def require(self, height: int) -> None:
        with self._lock:
            self._min_height = max(self._min_height, height)

    def _get(self, table: str, **params: str) -> list[tuple[Any, dict[str, Any]]]:
        deadline = time.monotonic() + BLOCK_DEADLINE_SECONDS
        while True:
            try:
                with self.endpoint.client() as c:
                    answer = c.get(f"state/{table}", **params)
            except ClientError as exc:
                self._pause(0)  # a daemon that died says so first
                raise DevnetError(f"{self.endpoint.name}'s daemon: {exc.message}") from None
            if int(answer["height"]) >= self._min_height:
                break
            if time.monotonic() > deadline:
                raise DevnetError(f"{self.endpoint.name}'s daemon stayed at height "
                                  f"{answer['height']}, below {self._min_height}, for "
                                  f"{BLOCK_DEADLINE_SECONDS:.0f} s")
            self._pause(CATCH_UP_POLL_SECONDS)
        out = []
        for k, r in answer["rows"]:
            key = decode(bytes.fromhex(k), max_size=MAX_STATE_BYTES)
            row = decode(bytes.fromhex(r), max_size=MAX_STATE_BYTES)
            out.append((tuple(key) if isinstance(key, list) else key, row))
        return out

    def row(self, table: str, key: Any) -> dict[str, Any] | None:
        found = self._get(table, key=encode(key).hex())
        return found[0][1] if found else None

    def rows(self, table: str, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, dict[str, Any]]]:
        return self._get(table, prefix=encode(list(prefix)).hex())

    def scalar(self, name: str) -> int:
        row = self.row("scalars", name)
        return 0 if row is None else int(row["value"])


# ---- the backend --------------------------------------------------------------------------


@dataclass
class _Done:
    txid: bytes | None
    reason: str | None
    height: int | None = None


@dataclass
class _Bid:
    """A member's bid placed through the daemon's bid action (the daemon reveals it)."""

    table: str  # "bond_bids" or "rent_bids"
    auction: bytes
    order: int


@dataclass
class BackendStats:
    transactions: int = 0
    by_daemon: int = 0
    """Reveals and claims the devnet waited for the daemons to make on their own (a daemon
    often claims before the devnet would have: those are not counted)."""
    late: list[str] = field(default_factory=list)


class DaemonBackend:
    """The player's `Backend` over the daemons of a devnet (see the module docstring)."""

    def __init__(self, scenario: Scenario, chain_id: bytes, genesis_time_ms: int,
                 endpoints: Sequence[Endpoint], *, auto_claim: bool,
                 monitor: Monitor, stopping: threading.Event) -> None:
        assert endpoints
        self.scenario = scenario
        self._chain_id = chain_id
        self._genesis_time_ms = genesis_time_ms
        self.endpoints = list(endpoints)
        self.by_member = {e.member: e for e in self.endpoints}
        self.auto_claim = auto_claim
        self.monitor = monitor
        self.stopping = stopping
        self.reader = ApiReader(self.endpoints[0], self._pause)
        self.names = {scenario.key(n).public: n for n in scenario.actors}
        self.period_ms = scenario.commune.params.period_seconds * 1000
        self.stats = BackendStats()
        self._signer_locks: dict[bytes, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._nonces: dict[bytes, int] = {}  # next nonce of actors signed for here
        self._daemon_bids: dict[int, _Bid] = {}  # bid step index -> where its row is
        self._gateway = 0
        self._watermark = 0
        """Highest height at which one of our transactions committed."""
        self._proposers: list[Endpoint] = list(self.endpoints)
        """Daemons that may propose while the current group runs (`_announce` asks them)."""
        self._heights: dict[str, int] = {}
        """Heights each daemon is known to have reached."""
        self._unregistered: dict[bytes, float] = {}
        """Members with a daemon but no registered node yet, since when."""
        self.trace: Callable[[str], None] = lambda line: None
        """Where timings of every transaction go (the devnet writes DIR/devnet.log)."""

    # ---- Backend protocol ----------------------------------------------------------------

    @property
    def chain_id(self) -> bytes:
        return self._chain_id

    @property
    def genesis_time_ms(self) -> int:
        return self._genesis_time_ms

    @property
    def view(self) -> ApiReader:
        return self.reader

    def last_time_ms(self) -> int:
        last = self._status(self.endpoints[0]).get("last_block")
        return self._genesis_time_ms if not last else int(last["time_ms"])

    def advance_to(self, time_ms: int) -> None:
        """Wait until the reader daemon has committed a block at or after `time_ms`."""
        self.monitor.waiting(self._what_at(time_ms), time_ms)
        deadline = time.monotonic() + max(0, time_ms - now_ms()) / 1000 + BLOCK_DEADLINE_SECONDS
        while True:
            status = self._status(self.endpoints[0])
            last = status.get("last_block")
            if last and int(last["time_ms"]) >= time_ms:
                self.reader.require(int(last["height"]))
                self.monitor.advanced(time_ms, int(last["height"]))
                self._register_nodes()
                return
            if time.monotonic() > deadline:
                raise DevnetError(
                    f"no block at or after {_clock(time_ms)} in {BLOCK_DEADLINE_SECONDS:.0f} s "
                    f"past it (height {status.get('height')}): consensus is stuck; see "
                    f"the daemons' logs (DIR/NAME/daemon.log)")
            self._sleep_until(min(time_ms, now_ms() + 250) if now_ms() < time_ms else None)

    def submit(self, actions: Sequence[Action], time_ms: int) -> list[Outcome]:
        if not actions:
            return []
        wait_ms = time_ms - now_ms()
        if wait_ms > 0:
            self.monitor.waiting(f"waiting for {_clock(time_ms)}", time_ms)
            self._sleep_until(time_ms)
        outcomes = self._run_group(list(actions))
        self._register_nodes()
        return outcomes

    def _register_nodes(self) -> None:
        """Members admitted during the run vote once their node is registered.

        Founders' nodes are in the genesis; a member admitted later is a validator only
        after a `member.node` naming the peer id that votes for it (DESIGN 6.2). The
        scenario (and `simulate`) has no such step, as it changes no figure. The member's
        daemon registers its node by itself once admitted; this reports it, and signs
        the registration through the daemon if it has not happened after
        `NODE_REGISTRATION_GRACE_SECONDS` (a daemon that does not do it on its own).
        Never blocks: called after each group and each block waited for.
        """
        now = time.monotonic()
        for who, row in self.reader.rows("members"):
            endpoint = self.by_member.get(who)
            if endpoint is None:
                continue
            if row["node"]:
                if self._unregistered.pop(who, None) is not None:
                    action = Action(None, "node", (Intent(self.scenario.key(endpoint.name),
                                                          "member.node", {}),))
                    text = f"{endpoint.name}'s daemon registered its node: it votes now"
                    self.monitor.action_started(action, text)
                    self.monitor.action_done(action, text, Outcome((), None), None)
                continue
            since = self._unregistered.setdefault(who, now)
            if now - since < NODE_REGISTRATION_GRACE_SECONDS:
                continue
            self._unregistered[who] = now  # try again after another grace period
            args = {"peer_id": default_peer_id(who).hex()}
            with self._signer_lock(who):
                self._catch_up(endpoint)
                done = self._sign(endpoint, "member.node", args)
            if done.reason is not None:
                self.monitor.warn(f"registering {endpoint.name}'s node failed: {done.reason}")
            elif done.height is not None:
                self.reader.require(done.height)

    # ---- scheduling ----------------------------------------------------------------------

    def _run_group(self, actions: list[Action]) -> list[Outcome]:
        n = len(actions)
        after_commit, after_send = plan(self.scenario, actions, self._name)
        announced = {i for deps in after_send for i in deps}
        if announced:
            self._proposers = self._validator_endpoints()
        sent = [threading.Event() for _ in range(n)]
        wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        outcomes: list[Outcome | None] = [None] * n
        done: set[int] = set()
        started: set[int] = set()
        running: dict[Future[Outcome], int] = {}
        pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIONS,
                                  thread_name_prefix="devnet-action")

        def notifier(j: int) -> Callable[[], None] | None:
            if j not in announced:
                return None

            def on_sent() -> None:
                sent[j].set()
                wake.put(None)
            return on_sent

        def can_start(j: int) -> bool:
            return after_commit[j] <= done and all(sent[i].is_set() for i in after_send[j])

        finished_ok = False
        try:
            while len(done) < n:
                for j in range(n):
                    if j not in started and can_start(j) \
                            and len(running) < MAX_CONCURRENT_ACTIONS:
                        started.add(j)
                        f = pool.submit(self._run_action, actions[j], notifier(j))
                        running[f] = j
                        f.add_done_callback(lambda _: wake.put(None))
                assert running, "no action can start: the group's dependencies form a cycle"
                with contextlib.suppress(queue.Empty):
                    wake.get(timeout=1.0)
                for f in [f for f in running if f.done()]:
                    j = running.pop(f)
                    outcomes[j] = f.result()
                    done.add(j)
                    sent[j].set()
            finished_ok = True
        finally:
            if not finished_ok:
                # Ctrl-C or a failed action: the others notice `stopping` at their next
                # check, or fail fast once the daemons are stopped; do not wait for them.
                self.stopping.set()
            pool.shutdown(wait=finished_ok, cancel_futures=True)
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    # ---- one action ------------------------------------------------------------------------

    def _run_action(self, action: Action, on_sent: Callable[[], None] | None = None
                    ) -> Outcome:
        """Run an action's transactions in order; `on_sent` is called once the last one
        is ready at every validator (see `_announce`), if it gets that far."""
        text = self.describe(action)
        self.trace(f"start: {text}")
        self.monitor.action_started(action, text)
        ids: list[bytes] = []
        reason: str | None = None
        height: int | None = None
        for k, intent in enumerate(action.intents):
            last = k == len(action.intents) - 1
            done = self._run_intent(action, intent, ids, on_sent if last else None)
            if done.height is not None:
                height = done.height if height is None else max(height, done.height)
                self.reader.require(done.height)
            if done.reason is not None:
                reason = done.reason
                break
            if done.txid is not None:
                ids.append(done.txid)
        outcome = Outcome(tuple(ids), reason)
        if reason is None and height is not None and action.step is not None:
            self._check_on_time(action, height)
        self.monitor.action_done(action, text, outcome, height)
        return outcome

    def _run_intent(self, action: Action, intent: Intent, earlier: list[bytes],
                    on_sent: Callable[[], None] | None = None) -> _Done:
        signer = intent.key.public
        endpoint = self.by_member.get(signer)
        step = self.scenario.steps[action.step] if action.step is not None else None
        if endpoint is not None:
            if intent.kind in ("bond.reveal", "rent.reveal") and action.step in self._daemon_bids:
                return self._await_reveal(action.step, endpoint)
            if intent.kind == "dividend.claim" and step is None and self.auto_claim:
                return self._await_claim(intent, endpoint)
        args = intent.resolve(earlier)
        with self._signer_lock(signer):
            if endpoint is None:
                return self._signed_here(intent, args, on_sent)
            self._catch_up(endpoint)
            if isinstance(step, BidStep) and intent.kind == "bond.commit" and step.reveal \
                    and step.lock >= step.amount:
                return self._daemon_bid(step, endpoint, "bond_bid", "bond_bids", {
                    "asset": args["asset"].hex(), "amount": step.amount,
                    "rate_bps": step.rate_bps, "lock": step.lock}, on_sent)
            if isinstance(step, RentBidStep) and intent.kind == "rent.commit" and step.reveal:
                return self._daemon_bid(step, endpoint, "rent_bid", "rent_bids", {
                    "asset": args["asset"].hex(), "rent": step.rent, "term": step.term,
                    "lock": args.get("lock", 0)}, on_sent)
            return self._sign(endpoint, intent.kind, to_json(args), on_sent)

    def _sign(self, endpoint: Endpoint, kind: str, args: dict[str, Any],
              on_sent: Callable[[], None] | None = None) -> _Done:
        """Have the member's daemon sign and submit; wait for the verdict."""
        return self._call(endpoint, lambda c, wait: c.sign(kind, args, wait=wait), on_sent)

    def _signer_lock(self, signer: bytes) -> threading.Lock:
        with self._locks_guard:
            return self._signer_locks.setdefault(signer, threading.Lock())

    def _signed_here(self, intent: Intent, args: dict[str, Any],
                     on_sent: Callable[[], None] | None = None) -> _Done:
        """An actor without a daemon: sign with its scenario key, submit to any daemon."""
        who = intent.key.public
        if who not in self._nonces:
            row = self.reader.row("accounts", who)
            self._nonces[who] = 1 if row is None else int(row["nonce"]) + 1
        tx = make_tx(intent.key, self._chain_id, intent.kind, self._nonces[who], args)
        self._gateway = (self._gateway + 1) % len(self.endpoints)
        first = self.endpoints[self._gateway]
        others = [e for e in self.endpoints if e is not first]
        self._catch_up(first)

        def send(c: Client, wait: float) -> dict[str, Any]:
            result = c.submit(tx.raw)  # its verdict is the one reported; waited for below
            for e in others:  # the next proposer has it at once, not after a gossip hop;
                # as a batch, so that a daemon a block behind, which refuses it for now,
                # does not hold the others (it gets it by gossip)
                with contextlib.suppress(ClientError), e.client() as other:
                    other.submit_batch([tx.raw])
            return result

        done = self._call(first, send, on_sent)
        if done.reason is None:
            self._nonces[who] += 1
        return done

    def _daemon_bid(self, step: Step, endpoint: Endpoint, action: str, table: str,
                    body: dict[str, Any], on_sent: Callable[[], None] | None) -> _Done:
        done, result = self._call_result(
            endpoint, lambda c, wait: c.action(action, body, wait=wait), on_sent)
        if done.reason is None:
            res = result.get("result") or {}
            auction = bytes.fromhex(str(res.get("auction") or body["asset"]))
            self._daemon_bids[step.index] = _Bid(table, auction, int(res["bid"]))
        return done

    def _call(self, endpoint: Endpoint, fn: Send,
              on_sent: Callable[[], None] | None = None) -> _Done:
        return self._call_result(endpoint, fn, on_sent)[0]

    def _call_result(self, endpoint: Endpoint, fn: Send,
                     on_sent: Callable[[], None] | None = None
                     ) -> tuple[_Done, dict[str, Any]]:
        """Send, then wait for the commit (or the rejection) with a deadline.

        `fn(client, wait)` sends, its API call waiting up to `wait` seconds for the
        commit. With `on_sent` it returns at once, and `on_sent` is called when the
        transaction is ready at every validator (`_announce`).
        """
        self.check()
        started = time.monotonic()
        try:
            with endpoint.client() as c:
                result = fn(c, 0 if on_sent else SUBMIT_WAIT_SECONDS)
        except DaemonNotRunning:
            self.check()
            raise DevnetError(f"{endpoint.name}'s daemon stopped answering") from None
        except ClientError as exc:
            if exc.kind in ("rejected", "usage", "not_found"):
                self.trace(f"{endpoint.name} refused after "
                           f"{(time.monotonic() - started) * 1000:.0f} ms: {exc.message}")
                return _Done(None, exc.message), {}
            raise DevnetError(f"{endpoint.name}'s daemon: {exc.message}") from None
        with self._locks_guard:
            self.stats.transactions += 1
        if on_sent is not None and result.get("status") == "pending":
            self.trace(f"{endpoint.name} took {str(result['id'])[:12]} after "
                       f"{(time.monotonic() - started) * 1000:.0f} ms")
            self._announce(str(result["id"]), on_sent, started)
        deadline = time.monotonic() + COMMIT_DEADLINE_SECONDS
        while result.get("status") == "pending":
            if time.monotonic() > deadline:
                raise DevnetError(f"transaction {result.get('id')} sent to {endpoint.name} "
                                  f"was not committed in {COMMIT_DEADLINE_SECONDS:.0f} s: "
                                  "consensus is stuck; see the daemons' logs")
            self.check()
            with endpoint.client() as c:
                result = c.wait_tx(str(result["id"]), timeout=SUBMIT_WAIT_SECONDS)
        status = result.get("status")
        txid = bytes.fromhex(str(result["id"])) if result.get("id") else None
        self.trace(f"{endpoint.name} {result.get('kind', 'tx')} {str(result.get('id'))[:12]} "
                   f"{status} at height {result.get('height')} after "
                   f"{(time.monotonic() - started) * 1000:.0f} ms")
        if status == "committed":
            height = int(result["height"])
            with self._locks_guard:
                self._watermark = max(self._watermark, height)
                self._heights[endpoint.name] = max(self._heights.get(endpoint.name, 0), height)
            return _Done(txid, None, height), result
        reason = str(result.get("reason") or f"the daemon dropped the transaction without a "
                     f"verdict (status {status})")
        return _Done(None, reason), result

    def _announce(self, txid: str, on_sent: Callable[[], None], started: float) -> None:
        """Call `on_sent` once `txid` is ready at every validator's daemon, or committed.

        Ready: pending with no nonce gap, so every proposer reaps it before anything
        that arrives later (see the module docstring). Refused or dropped: nothing is
        called, the caller's action ends with the verdict. Not everywhere within
        `SEQUENCE_DEADLINE_SECONDS`: nothing is called either, so what is sequenced after
        it waits for its commit.
        """
        deadline = time.monotonic() + SEQUENCE_DEADLINE_SECONDS
        waiting = list(self._proposers)
        rounds = 1
        asking = ThreadPoolExecutor(max_workers=len(waiting), thread_name_prefix="devnet-ask")
        try:
            while waiting:
                answers = list(asking.map(lambda e: self._tx_status(e, txid), waiting))
                behind = self._not_ready(waiting, answers)
                if behind is None:
                    return  # it can never commit; the action ends with the verdict
                waiting = behind
                if not waiting:
                    break
                rounds += 1
                if time.monotonic() > deadline:
                    self.trace(f"{txid[:12]} not ready at "
                               f"{', '.join(e.name for e in waiting)} after "
                               f"{SEQUENCE_DEADLINE_SECONDS:.0f} s: the next bids wait for "
                               "its commit")
                    return
                self._pause(CATCH_UP_POLL_SECONDS)
        finally:
            asking.shutdown(wait=False, cancel_futures=True)
        self.trace(f"{txid[:12]} ready everywhere after "
                   f"{(time.monotonic() - started) * 1000:.0f} ms ({rounds} rounds of asking)")
        on_sent()

    @staticmethod
    def _not_ready(asked: list[Endpoint], answers: list[dict[str, Any]]
                   ) -> list[Endpoint] | None:
        """The daemons that do not have the transaction ready yet ([] once it is committed
        anywhere: its block is decided, what is sent now commits later); None if it was
        refused for good."""
        behind: list[Endpoint] = []
        for e, status in zip(asked, answers, strict=True):
            state = status.get("status")
            if state == "committed":
                return []
            if state == "rejected" and status.get("final"):
                return None
            if state != "pending" or "waiting_for_nonce" in status:
                behind.append(e)
        return behind

    def _tx_status(self, endpoint: Endpoint, txid: str) -> dict[str, Any]:
        try:
            with endpoint.client() as c:
                return c.wait_tx(txid, timeout=0)
        except ClientError as exc:
            self.check()
            raise DevnetError(f"{endpoint.name}'s daemon: {exc.message}") from None

    def _validator_endpoints(self) -> list[Endpoint]:
        """Daemons that may propose the next blocks (the validators of the next two
        heights, as the reader daemon knows them); every daemon if it cannot say."""
        try:
            with self.endpoints[0].client() as c:
                answer = c.get("validators")
            ids = {parse_id(t) for t in [*answer["validators"], *answer["next"]]}
        except (ClientError, KeyError, TypeError, ValueError):
            self.check()
            return list(self.endpoints)
        return [e for e in self.endpoints if e.member in ids] or list(self.endpoints)

    def _catch_up(self, endpoint: Endpoint) -> None:
        """Wait until `endpoint` has every block in which we saw a transaction commit.

        Its mempool judges a new transaction against its own committed state: an approval
        sent to a daemon one block behind the one that committed the approved action
        would be refused as approving nothing.
        """
        need = self._watermark
        if self._heights.get(endpoint.name, 0) >= need:
            return
        started = time.monotonic()
        deadline = started + BLOCK_DEADLINE_SECONDS
        while True:
            height = int(self._status(endpoint)["height"])
            with self._locks_guard:
                self._heights[endpoint.name] = max(self._heights.get(endpoint.name, 0), height)
            if height >= need:
                self.trace(f"catch-up {endpoint.name} to {need}: "
                           f"{(time.monotonic() - started) * 1000:.0f} ms")
                return
            if time.monotonic() > deadline:
                raise DevnetError(f"{endpoint.name}'s daemon stayed at height {height}, "
                                  f"below {need}, for {BLOCK_DEADLINE_SECONDS:.0f} s: it "
                                  "does not keep up with the others")
            self._pause(CATCH_UP_POLL_SECONDS)

    # ---- what the daemons do on their own ----------------------------------------------------

    def _await_reveal(self, step_index: int, endpoint: Endpoint) -> _Done:
        bid = self._daemon_bids[step_index]
        auction = self.reader.row("auctions", bid.auction)
        end = int(auction["reveal_end_ms"]) if auction else now_ms()
        deadline = time.monotonic() + max(0, end - now_ms()) / 1000 + \
            DAEMON_ACTION_DEADLINE_SECONDS
        while True:
            row = self.reader.row(bid.table, (bid.auction, bid.order))
            status = None if row is None else row["status"]
            if status in ("revealed", "won", "lost"):
                with self._locks_guard:
                    self.stats.by_daemon += 1
                return _Done(None, None)
            if status == "forfeited" or time.monotonic() > deadline:
                return _Done(None, f"{endpoint.name}'s daemon did not reveal the bid before "
                                   "the reveal window closed")
            self._pause()

    def _await_claim(self, intent: Intent, endpoint: Endpoint) -> _Done:
        periods = intent.resolve([]).get("periods", [])
        deadline = time.monotonic() + DAEMON_ACTION_DEADLINE_SECONDS
        while True:
            rows = [self.reader.row("dividends", (intent.key.public, p)) for p in periods]
            if all(r is None or r["claimed_height"] for r in rows):
                with self._locks_guard:
                    self.stats.by_daemon += 1
                return _Done(None, None)
            if time.monotonic() > deadline:
                break
            self._pause()
        self.monitor.warn(f"{endpoint.name}'s daemon did not claim its dividend within "
                          f"{DAEMON_ACTION_DEADLINE_SECONDS:.0f} s; claiming through its API")
        with self._signer_lock(intent.key.public):
            self._catch_up(endpoint)
            done = self._call(endpoint, lambda c, wait: c.action("claim", {}, wait=wait))
        if done.reason == "no unclaimed dividends":
            return _Done(None, None)
        return done

    # ---- helpers ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise if the run must stop: Ctrl-C, or a daemon that is gone."""
        if self.stopping.is_set():
            raise DevnetError("stopping")
        for e in self.endpoints:
            gone = e.alive()
            if gone is not None:
                raise DevnetError(f"{e.name}'s daemon {gone}; its log: {e.home}/daemon.log")

    def _pause(self, seconds: float = POLL_SECONDS) -> None:
        self.check()
        if seconds and self.stopping.wait(seconds):
            self.check()

    def _sleep_until(self, time_ms: int | None) -> None:
        """Wait for the wall clock (a deadline, not a synchronization), interruptibly."""
        if time_ms is None:
            self._pause()
            return
        while True:
            self.check()
            left = time_ms - now_ms()
            if left <= 0:
                return
            if self.stopping.wait(min(left, 250) / 1000):
                self.check()

    def _status(self, endpoint: Endpoint) -> dict[str, Any]:
        self.check()
        try:
            with endpoint.client() as c:
                status: dict[str, Any] = c.request("GET", "status", timeout=10.0)
                return status
        except ClientError as exc:
            self.check()
            raise DevnetError(f"{endpoint.name}'s daemon: {exc.message}") from None

    def _name(self, who: bytes) -> str:
        return self.names.get(who, who.hex()[:8])

    def period_at(self, time_ms: int) -> int:
        return (time_ms - self._genesis_time_ms) // self.period_ms

    def _what_at(self, time_ms: int) -> str:
        offset = time_ms - self._genesis_time_ms
        if offset % self.period_ms == 0:
            p = offset // self.period_ms
            return f"waiting for the close of period {p - 1}"
        return f"waiting for a block at {_clock(time_ms)}"

    def _check_on_time(self, action: Action, height: int) -> None:
        """A step's transactions must land in the step's period, or figures drift."""
        assert action.step is not None
        step = self.scenario.steps[action.step]
        end = self._genesis_time_ms + (step.period + 1) * self.period_ms
        if now_ms() < end:
            return
        try:
            with self.endpoints[0].client() as c:
                block_time = int(c.get(f"block/{height}")["time_ms"])
        except ClientError:
            return
        if block_time >= end:
            text = (f"{self.describe(action)} (step {step.index}, period {step.period}) "
                    f"committed in period {self.period_at(block_time)}: the devnet fell "
                    "behind real time, figures may differ from simulate")
            self.stats.late.append(text)
            self.monitor.warn(text)

    def by_daemon(self, action: Action) -> bool:
        """Whether the member's daemon does this action on its own (nothing is sent)."""
        signer = action.intents[0].key.public
        if signer not in self.by_member:
            return False
        if action.step is None:
            return self.auto_claim and action.intents[0].kind == "dividend.claim"
        return action.what == "reveal" and action.step in self._daemon_bids

    def describe(self, action: Action) -> str:
        text = describe_action(self.scenario, action, self._name)
        if self.by_daemon(action):
            who = self._name(action.intents[0].key.public)
            text = f"{who}'s daemon: " + text.removeprefix(who + " ")
        return text


@dataclass(frozen=True)
class Resources:
    """What an action reads and writes, what it is numbered in, whether it runs alone.

    `sequence`: counters the action takes the next number of (the bids of an auction),
    so actions sharing one must commit in the group's order, though neither reads what
    the other writes.
    """

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    sequence: frozenset[str] = frozenset()
    alone: bool = False


def resources(scenario: Scenario, action: Action, name: Callable[[bytes], str]) -> Resources:
    """What an action touches (`Resources`).

    Accounts (balances) and memberships are separate resources: an attestation
    reads the attester's membership and writes the applicant's, a deposit writes
    only the depositor's account, so an actor's deposit and attestation need not
    wait for each other. Treasury signers only authorize: they are not resources
    (one signer's transactions are serialized anyway, see `DaemonBackend`). A bid
    reads its asset (its auction must be open) and writes only the bidder's account
    (the lock), and is numbered in its asset's bids.
    """
    if action.step is None:  # the runner's own: a claim credits the claimant
        who = name(action.intents[0].key.public)
        return Resources(writes=frozenset({f"account:{who}"}))
    step: Any = scenario.steps[action.step]
    if action.what == "reveal":
        return Resources(writes=frozenset({f"bid:{step.index}"}))
    if isinstance(step, BARRIER_STEPS):
        return Resources(alone=True)
    reads: set[str] = set()
    writes: set[str] = set()
    sequence: set[str] = set()
    by = step.by
    do = step.do
    if do in ("deposit", "withdraw", "claim"):
        writes.add(f"account:{by}")
    elif do == "transfer":
        writes |= {f"account:{by}", f"account:{step.to}"}
    elif do == "apply":
        writes.add(f"member:{by}")
    elif do == "attest":  # an admission changes the member count, which caps admissions
        reads.add(f"member:{by}")
        writes |= {f"member:{step.applicant}", "members"}
    elif do == "request":
        reads.add(f"member:{by}")
        writes.add(f"asset:{step.asset}")
    elif do in ("bid", "rent_bid"):
        reads |= {f"member:{by}", f"asset:{step.asset}"}
        writes.add(f"account:{by}")
        sequence.add(f"bids:{step.asset}")
    elif do == "bond_transfer":
        writes |= {f"asset:{step.asset}", f"account:{by}", f"account:{step.to}"}
    elif do == "end_rental":
        reads.add(f"member:{by}")
        writes.add(f"asset:{step.asset}")
    elif do == "acquire":
        writes.add(f"asset:{step.asset}")
    else:  # anything not modelled above runs alone
        return Resources(alone=True)
    return Resources(frozenset(reads), frozenset(writes), frozenset(sequence))


def opens_window(action: Action) -> bool:
    return action.step is not None and action.what == "request"


def plan(scenario: Scenario, actions: Sequence[Action], name: Callable[[bytes], str]
         ) -> tuple[list[set[int]], list[set[int]]]:
    """For each action of a group, the actions whose commit it waits for, and the earlier
    ones it is only sent after (`DaemonBackend._announce`).

    Two actions conflict when one writes what the other reads or writes, or when either
    must run alone; the later one waits for the earlier one's commit. Actions numbered
    in the same sequence and otherwise independent (bids on one asset by different
    bidders) are sent in the group's order, each once the earlier ones are on their way
    into blocks in that order. An action that opens a window (an asset request opens its
    auction's commit window) goes last in its group: the player sends what depends on it
    (the bids) only once the whole group is done, so the window must open as late as
    possible. A step naming the asset is in a later group; if a later action of the group
    still conflicts with it (a barrier), it stays where it is.
    """
    n = len(actions)
    res = [resources(scenario, a, name) for a in actions]
    after_commit: list[set[int]] = []
    after_send: list[set[int]] = []
    for j, rj in enumerate(res):
        conflicts = {i for i in range(j) if rj.alone or res[i].alone
                     or res[i].writes & (rj.reads | rj.writes) or rj.writes & res[i].reads}
        after_commit.append(conflicts)
        after_send.append({i for i in range(j)
                           if i not in conflicts and res[i].sequence & rj.sequence})
    for j in range(n):
        if opens_window(actions[j]) and not any(j in after_commit[i] or j in after_send[i]
                                                for i in range(j + 1, n)):
            after_commit[j] |= {i for i in range(n) if i != j and not opens_window(actions[i])}
            after_send[j] -= after_commit[j]
    return after_commit, after_send


def dependencies(scenario: Scenario, actions: Sequence[Action],
                 name: Callable[[bytes], str]) -> list[set[int]]:
    """For each action of a group, every action it waits for in some way (`plan`)."""
    after_commit, after_send = plan(scenario, actions, name)
    return [c | s for c, s in zip(after_commit, after_send, strict=True)]


# ---- words for people --------------------------------------------------------------------


def _m(amount: int) -> str:
    return f"{amount:,}"


def describe_action(scenario: Scenario, action: Action, name: Callable[[bytes], str]) -> str:
    """One line saying what an action does, for the progress display."""
    if action.step is None:
        intent = action.intents[0]
        periods = intent.resolve([]).get("periods", [])
        which = ", ".join(str(p) for p in periods)
        return f"{name(intent.key.public)} claims the dividend of period {which}"
    s: Any = scenario.steps[action.step]
    if action.what == "reveal":
        return f"{s.by} reveals the sealed bid of step {s.index}"
    do = s.do
    texts: Mapping[str, Callable[[], str]] = {
        "deposit": lambda: f"{s.by} deposits {_m(s.amount)} (treasury)",
        "withdraw": lambda: f"{s.by} withdraws {_m(s.amount)} (treasury)",
        "transfer": lambda: f"{s.by} pays {s.to} {_m(s.amount)}",
        "apply": lambda: f"{s.by} applies for membership"
                         + (f" ({s.enterprise})" if s.enterprise else ""),
        "attest": lambda: f"{s.by} attests {s.applicant}'s labour",
        "resign": lambda: f"{s.by} resigns",
        "request": lambda: (f"{s.by} requests {s.asset}: price {_m(s.price)}, rent "
                            f"{_m(s.rent)} × {s.term} periods, bonds ≤ {s.max_rate_bps} bps"),
        "bid": lambda: f"{s.by} bids {_m(s.amount)} at {s.rate_bps} bps for {s.asset}'s bonds"
                       + ("" if s.reveal else " (never revealed)"),
        "acquire": lambda: f"the treasury buys {s.asset}",
        "acquire_failed": lambda: f"the purchase of {s.asset} falls through",
        "end_rental": lambda: f"{s.by} ends the rental of {s.asset}",
        "rent_bid": lambda: f"{s.by} bids rent {_m(s.rent)} × {s.term} for {s.asset}",
        "liquidated": lambda: f"the treasury sells {s.asset} for {_m(s.proceeds)}",
        "claim": lambda: f"{s.by} claims dividends",
        "propose": lambda: f"{s.by} proposes {s.name!r}",
        "vote": lambda: f"{s.by} votes {'yes' if s.yes else 'no'} on {s.proposal!r}",
        "bond_transfer": lambda: f"{s.by} transfers {_m(s.amount)} of {s.asset}'s bonds "
                                 f"to {s.to}",
    }
    fn = texts.get(do)
    return fn() if fn else f"{s.by} {do}"


def _clock(time_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time_ms / 1000))
