"""Finalized transactions per second and commit latency of a devnet of real daemons.

Starts N member daemons on this machine (separate processes, real libp2p on
127.0.0.1, through the helpers of tests/daemons.py), funds many accounts through the
treasury (a deposit into a faucet account, approved by the second treasury signer,
then one transfer from the faucet to each load account), and puts the devnet under
transfer load, one phase per load level on the same devnet (warm-up, measured window,
drain):

- load: every load account sends transfers of 1 minor unit, one at a time (sign,
  submit, wait for the commit, next nonce), so the number of load accounts is the
  number of transactions in flight; accounts are spread round-robin over the nodes
  and each submits to its own node (`POST /v1/txs` with the raw signed transaction).
  Signing is client-side, in `--workers` generator processes (one by default) that
  speak HTTP/1.1 over a small keep-alive pool of their own (`LeanClient`: httpx costs
  ~1-2 ms of CPU per request, which on two cores would be taken from the daemons).
- commit confirmation, as the submitting client sees it. `--confirm blocks` (default):
  a follower per node fetches each new block (`GET /v1/block/{h}?txs=ids`: ids only,
  `--block-txs full` for the decoded descriptions; between blocks it
  long-polls `GET /v1/txs/{oldest pending}/wait`, so no busy polling) and the commit
  time of a transaction is when its client saw it in a block of the node it submitted
  to. `--confirm wait`: the submit request itself waits for the commit
  (`{"wait": 30}`), one open request per transaction in flight.
- figures over the measured window: finalized tx/s (transactions in the blocks node 0
  committed in the window; the client's own count of confirmations beside it), commit
  latency p50/p99 of the transactions submitted in the window (submission to
  confirmation), blocks/s and transactions per block, RSS (now and peak, /proc) and
  CPU (cores busy, /proc) of every daemon, daemon CPU per finalized transaction, the
  generator's CPU and its rate per CPU-second (its ceiling on one core), and per node
  per second the gossip counters of the daemons' metrics. Every node must end with
  the same block hash at the last measured height.

On a shared machine the daemons get what the scheduler gives them: the load average
before and after each phase is printed, and CPU per transaction is the steadier
figure. `--profile DIR` records every daemon with py-spy (`.venv/bin/pip install
py-spy`) during each measured window and prints where their time went (by package,
by trio task, by function); the collapsed stacks stay in DIR. `--daemon-env NAME=VALUE`
passes library knobs to the daemons for comparisons. Every daemon, generator and
profiler started here is stopped on the way out, also on Ctrl-C, SIGTERM or failure.

    .venv/bin/python bench/bench_devnet.py [--nodes 4 7] [--accounts 100 400 1000 2000]
        [--warm S] [--measure S] [--drain S] [--workers N] [--confirm blocks|wait]
        [--profile DIR] [--daemon-env NAME=VALUE] [--keep] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from node.client import Client, ClientError, read_token  # noqa: E402
from protocol.crypto import SigningKey, id_text  # noqa: E402
from protocol.transactions import make_tx  # noqa: E402
from tests.daemons import Daemon, make_commune, running, wait_for  # noqa: E402

LABEL = "bench-devnet"
FAUCET = SigningKey.derive(LABEL, "faucet")
FUNDS_PER_ACCOUNT = 10**9
FAUCET_WINDOW = 900
"""Faucet transfers submitted before waiting: under the mempool's nonce-gap bound (1,000)."""
TX_TIMEOUT = 60.0
"""A transaction not confirmed this long after submission counts as lost."""
WAIT_SECONDS = 30
FOLLOW_POLL = 0.02
"""Seconds between block polls when the follower has no pending transaction to wait on."""
CONNECTIONS_PER_NODE = 64
SUBMIT_BATCH = 500
"""Transactions per batch request (the API takes up to 1,000)."""
BATCH_POSTS_PER_NODE = 2
"""Batch requests on the wire to one node at a time."""
PARAMS = {"empty_block_interval": 1, "max_clock_drift": 10, "period_seconds": 3600,
          "commit_seconds": 600, "reveal_seconds": 600}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def account_key(i: int) -> SigningKey:
    return SigningKey.derive(LABEL, "account", str(i))


# ---- the machine and the daemons' processes -------------------------------------------------


def machine() -> dict[str, Any]:
    model = cpu_model()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "node", "ledger",
                                "protocol"], cwd=ROOT, text=True, capture_output=True,
                               timeout=10).stdout.split("\n")
        changed = sum(1 for x in dirty if x.strip())
        code = (head or "not a git checkout") + (
            f" + {changed} uncommitted files in node/ledger/protocol" if changed else "")
    except (OSError, subprocess.SubprocessError):
        code = "unknown"
    return {"code": code, "cpu": model, "cores": os.cpu_count() or 0,
            "python": platform.python_version(), "os": f"{platform.system()} "
            f"{platform.release()}", "load_before": list(os.getloadavg())}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its own threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) in MiB, from /proc/PID/status."""
    now = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            now = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return now, peak


def pid_of(d: Daemon) -> int:
    assert d.proc is not None and d.proc.poll() is None, f"{d.name} is not running"
    return d.proc.pid


# ---- the load generator (runs in worker processes) ------------------------------------------


@dataclass
class NodeSpec:
    index: int
    url: str
    token: str
    start_height: int


@dataclass
class WorkerSpec:
    index: int
    chain_id: bytes
    nodes: list[NodeSpec]
    accounts: list[tuple[int, int]]
    """(account index, node index): each account submits to its node only."""
    warm: float
    measure: float
    drain: float
    confirm: str
    submit: str
    block_txs: str = "ids"
    """What the follower asks of each block: transaction ids only, or full descriptions."""


@dataclass
class WorkerResult:
    index: int
    confirmed: list[tuple[float, float, int]] = field(default_factory=list)
    """(submitted, confirmed, node), monotonic seconds."""
    unconfirmed: list[float] = field(default_factory=list)
    """Submission times of transactions still unconfirmed at the end (or lost)."""
    errors: dict[str, int] = field(default_factory=dict)
    cpu_window: float = 0.0
    """Generator CPU seconds over the measured window."""
    submitted_window: int = 0
    sign_seconds_window: float = 0.0


def _error_class(message: str) -> str:
    for key in ("mempool full", "already used", "taken by pending", "too far ahead",
                "balance", "pending transactions", "bad signature"):
        if key in message:
            return key
    return message[:60]


class _Waiter:
    __slots__ = ("event", "submitted", "confirmed")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.submitted = 0.0
        self.confirmed = 0.0


class HttpFailure(Exception):
    """The request did not get an HTTP answer (connection refused or reset, timeout)."""


class LeanClient:
    """A minimal keep-alive HTTP/1.1 client of one daemon's control API, for the hot path.

    httpx costs about 1-2 ms of CPU per request here, which would make the generator
    share the two cores with the daemons at a rate close to what it measures; this
    writes the request bytes and reads a Content-Length response on a pool of trio
    sockets for a fraction of that. No pipelining: one request per connection at a time.
    """

    def __init__(self, url: str, token: str, connections: int, timeout: float) -> None:
        rest = url.removeprefix("http://")
        host, _, port = rest.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._head = (f"Host: {rest}\r\nAuthorization: Bearer {token}\r\n").encode()
        self._idle: list[tuple[trio.SocketStream, bytearray]] = []
        self._slots = trio.Semaphore(connections)
        self._timeout = timeout

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.request("POST", path, json.dumps(body).encode())

    async def request(self, method: str, path: str,
                      body: bytes | None = None) -> tuple[int, Any]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                with trio.fail_after(self._timeout):
                    if conn is None:
                        conn = (await trio.open_tcp_stream(self.host, self.port), bytearray())
                    stream, buf = conn
                    head = f"{method} {path} HTTP/1.1\r\n".encode() + self._head
                    if body is not None:
                        head += (f"Content-Type: application/json\r\nContent-Length: "
                                 f"{len(body)}\r\n").encode()
                    await stream.send_all(head + b"\r\n" + (body or b""))
                    status, data, keep = await self._response(stream, buf)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, ValueError) as exc:
                if conn is not None:
                    await conn[0].aclose()
                raise HttpFailure(f"{type(exc).__name__}: {exc}") from None
            if keep:
                self._idle.append(conn)
            else:
                await conn[0].aclose()
        return status, (json.loads(data) if data else None)

    @staticmethod
    async def _response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes, bool]:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ValueError("connection closed before a response")
            buf += chunk
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        del buf[: end + 4]
        while len(buf) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ValueError("connection closed inside a response body")
            buf += chunk
        data = bytes(buf[:length])
        del buf[:length]
        return status, data, headers.get("connection", "").lower() != "close"

    async def aclose(self) -> None:
        for stream, _ in self._idle:
            await stream.aclose()
        self._idle.clear()


class BatchSubmitter:
    """Submissions to one node gathered into `POST /v1/txs {"txs": [...]}` requests.

    Natural batching: whatever the accounts queued while the previous request was on
    the wire goes in the next one (up to the API's limit), so a lightly loaded node
    sees single transactions and a busy one large batches; the answer of each
    transaction is handed back to its account as if it had been submitted alone.
    """

    def __init__(self, client: LeanClient) -> None:
        self.client = client
        self._queue: list[tuple[bytes, _Reply]] = []
        self._wakeup = trio.Event()

    async def submit(self, raw: bytes) -> tuple[int, Any]:
        reply = _Reply()
        self._queue.append((raw, reply))
        self._wakeup.set()
        await reply.done.wait()
        if reply.failure is not None:
            raise HttpFailure(reply.failure)
        return reply.status, reply.doc

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch, self._queue = self._queue[:SUBMIT_BATCH], self._queue[SUBMIT_BATCH:]
            try:
                status, doc = await self.client.post(
                    "/v1/txs", {"txs": [raw.hex() for raw, _ in batch]})
            except HttpFailure as exc:
                for _, reply in batch:
                    reply.failure = str(exc)
                    reply.done.set()
                continue
            results = doc.get("results") if status == 200 and isinstance(doc, dict) else None
            for k, (_, reply) in enumerate(batch):
                if results is None:  # the whole request was refused: each gets its answer
                    reply.status, reply.doc = status, doc
                elif results[k].get("status") == "rejected":
                    reply.status = 422
                    reply.doc = {"error": {"message": str(results[k].get("reason"))}}
                else:
                    reply.status, reply.doc = 200, results[k]
                reply.done.set()


class _Reply:
    __slots__ = ("done", "status", "doc", "failure")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = 0
        self.doc: Any = None
        self.failure: str | None = None


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of one generator process: derive keys, say ready, run when told."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    keys = {i: account_key(i) for i, _ in spec.accounts}
    conn.send("ready")
    t_start = conn.recv()
    result = trio.run(_worker, spec, keys, t_start)
    conn.send(result)


async def _worker(spec: WorkerSpec, keys: dict[int, SigningKey],
                  t_start: float) -> WorkerResult:
    out = WorkerResult(spec.index)
    errors: Counter[str] = Counter()
    t_window = t_start + spec.warm
    t_stop = t_window + spec.measure
    t_hard = t_stop + spec.drain
    pending: dict[int, dict[str, _Waiter]] = {n.index: {} for n in spec.nodes}
    nodes = {n.index: n for n in spec.nodes}
    submitted_window = 0
    sign_seconds = 0.0
    # Recipients: the next account of this worker on the same node (any account would do).
    by_node: dict[int, list[int]] = defaultdict(list)
    for i, n in spec.accounts:
        by_node[n].append(i)
    recipient = {}
    for accts in by_node.values():
        for j, i in enumerate(accts):
            recipient[i] = keys[accts[(j + 1) % len(accts)]].public

    def trio_at(t: float) -> float:
        return trio.current_time() + (t - time.monotonic())

    clients = {n.index: LeanClient(n.url, n.token, CONNECTIONS_PER_NODE, WAIT_SECONDS + 30.0)
               for n in spec.nodes}

    batches = None if spec.submit == "single" else {
        ns.index: BatchSubmitter(clients[ns.index]) for ns in spec.nodes}

    async def resync_nonce(i: int, node: int) -> int:
        while True:
            try:
                status, doc = await clients[node].get(f"/v1/account/{id_text(keys[i].public)}")
                if status == 200:
                    return int(doc["pending_nonce"]) + 1
            except HttpFailure:
                pass
            errors["resync failed"] += 1
            await trio.sleep(0.5)

    async def account(i: int, node: int) -> None:
        nonlocal submitted_window, sign_seconds
        client = clients[node]
        key = keys[i]
        to = recipient[i]
        nonce = await resync_nonce(i, node)  # accounts are reused from phase to phase
        waiting = pending[node]
        while time.monotonic() < t_stop:
            c0 = time.process_time()
            tx = make_tx(key, spec.chain_id, "account.transfer", nonce, {"to": to, "amount": 1})
            txid = tx.id.hex()
            w = _Waiter()
            body: dict[str, Any] = {"tx": tx.raw.hex()}
            if spec.confirm == "wait":
                body["wait"] = WAIT_SECONDS
            waiting[txid] = w  # before submitting, so the follower cannot miss it
            w.submitted = now = time.monotonic()
            if t_window <= now < t_stop:
                submitted_window += 1
                sign_seconds += time.process_time() - c0
            try:
                if batches is not None:
                    status, doc = await batches[node].submit(tx.raw)
                else:
                    status, doc = await client.post("/v1/txs", body)
            except HttpFailure as exc:
                errors[f"http: {str(exc)[:40]}"] += 1
                waiting.pop(txid, None)
                await trio.sleep(0.1)
                nonce = await resync_nonce(i, node)
                continue
            if status != 200:
                try:
                    message = str(doc["error"]["message"])
                except (KeyError, TypeError):
                    message = f"HTTP {status}"
                errors[_error_class(message)] += 1
                waiting.pop(txid, None)
                await trio.sleep(0.05)
                nonce = await resync_nonce(i, node)
                continue
            if spec.confirm == "wait":
                waiting.pop(txid, None)
                state = doc.get("status")
                if state == "committed":
                    out.confirmed.append((w.submitted, time.monotonic(), node))
                    nonce += 1
                else:
                    errors[f"wait: {state}"] += 1
                    out.unconfirmed.append(w.submitted)
                    nonce = await resync_nonce(i, node)
                continue
            with trio.move_on_at(trio_at(w.submitted + TX_TIMEOUT)):
                await w.event.wait()
            if not w.event.is_set():
                errors["lost (not confirmed in 60 s)"] += 1
                waiting.pop(txid, None)
                out.unconfirmed.append(w.submitted)
                nonce = await resync_nonce(i, node)
                continue
            out.confirmed.append((w.submitted, w.confirmed, node))
            nonce += 1

    async def follow(node: int) -> None:
        """See each block of `node` as soon as it is committed; confirm what it holds."""
        client = clients[node]
        waiting = pending[node]
        h = nodes[node].start_height
        while True:
            try:
                status, doc = await client.get(f"/v1/block/{h + 1}?txs={spec.block_txs}")
            except HttpFailure:
                errors["follower http error"] += 1
                await trio.sleep(0.1)
                continue
            if status == 200:
                seen = time.monotonic()
                for t in doc["txs"]:
                    w = waiting.pop(t["id"], None)
                    if w is not None:
                        w.confirmed = seen
                        w.event.set()
                h += 1
                continue
            oldest = next(iter(waiting), None)
            if oldest is None:
                await trio.sleep(FOLLOW_POLL)
                continue
            try:  # returns at the commit of the oldest pending transaction (or in 1 s)
                status, doc = await client.get(f"/v1/txs/{oldest}/wait?timeout=1")
                committed = status == 200 and doc.get("status") == "committed"
            except HttpFailure:
                committed = False
            if not committed:
                await trio.sleep(FOLLOW_POLL)

    async def cpu_marks() -> None:
        await trio.sleep_until(trio_at(t_window))
        c0 = time.process_time()
        await trio.sleep_until(trio_at(t_stop))
        out.cpu_window = time.process_time() - c0

    await trio.sleep_until(trio_at(t_start))
    try:
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio_at(t_hard)
            nursery.start_soon(cpu_marks)
            if spec.confirm == "blocks":
                for ns in spec.nodes:
                    nursery.start_soon(follow, ns.index)
            for b in (batches or {}).values():
                for _ in range(BATCH_POSTS_PER_NODE):
                    nursery.start_soon(b.run)
            async with trio.open_nursery() as loads:
                for i, node in spec.accounts:
                    loads.start_soon(account, i, node)
            nursery.cancel_scope.cancel()  # every account is done: stop the followers
    finally:
        for c in clients.values():
            await c.aclose()
    for waiting in pending.values():
        out.unconfirmed.extend(w.submitted for w in waiting.values())
    out.errors = dict(errors)
    out.submitted_window = submitted_window
    out.sign_seconds_window = sign_seconds
    return out


def signing_rate(n: int = 3000) -> float:
    """Transfers signed per CPU-second by `make_tx` (schema, encoding, Ed25519) in one process."""
    k = account_key(0)
    to = account_key(1).public
    c0 = time.process_time()
    for i in range(n):
        make_tx(k, b"\x01" * 32, "account.transfer", i + 1, {"to": to, "amount": 1})
    return n / (time.process_time() - c0)


# ---- the coordinator ---------------------------------------------------------------------------


@contextmanager
def stopping_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` below stops what it started."""
    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def endpoint(d: Daemon) -> tuple[str, str]:
    """(API base URL, token) of a running daemon, found through its home as the CLI does."""
    return d.call(lambda c: c.base_url), read_token(d.paths.token)


def fund(daemons: Sequence[Daemon], accounts: int) -> int:
    """Deposit into the faucet (member0 proposes, member1 approves), then fan out.

    Returns the height at which every load account is funded.
    """
    total = accounts * FUNDS_PER_ACCOUNT + 10**6
    faucet = id_text(FAUCET.public)
    deposit = daemons[0].call(lambda c: c.sign(
        "treasury.deposit", {"account": faucet, "amount": total, "reference": "bench"}))
    wait_for("the deposit to commit on member1", lambda: daemons[1].call(
        lambda c: c.get(f"txs/{deposit['id']}/wait", timeout=1))["status"] == "committed", 60)
    approved = daemons[1].call(lambda c: c.sign(
        "treasury.approve", {"action": deposit["id"]}, wait=WAIT_SECONDS))
    assert approved.get("status") == "committed", approved
    wait_for("the faucet's deposit on member0", lambda: int(daemons[0].call(
        lambda c: c.get(f"account/{faucet}"))["balance"]) == total, 60)
    chain_id = bytes.fromhex(daemons[0].status()["chain_id"])
    height = 0
    with daemons[0].client() as client:
        for start in range(0, accounts, FAUCET_WINDOW):
            last: dict[str, Any] = {}
            for i in range(start, min(start + FAUCET_WINDOW, accounts)):
                tx = make_tx(FAUCET, chain_id, "account.transfer", i + 1,
                             {"to": account_key(i).public, "amount": FUNDS_PER_ACCOUNT})
                last = client.submit(tx.raw)
            done = wait_for(f"the faucet's transfer {start + FAUCET_WINDOW} to commit",
                            _committed(client, last["id"]), 180)
            height = int(done["height"])
    for d in daemons:
        wait_for(f"{d.name} to reach height {height}", _at_least(d, height), 60)
    return height


def _committed(client: Client, txid: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        status = client.wait_tx(txid, 10)
        return status if status.get("status") == "committed" else None
    return check


def _at_least(d: Daemon, height: int) -> Callable[[], bool]:
    return lambda: d.height() >= height


def chain_window(d: Daemon, h0: int, h1: int) -> tuple[int, int, list[int]]:
    """(blocks, transactions, per-block counts) of heights h0+1..h1 on one node."""
    with d.client() as client:
        counts = [len(client.get(f"block/{h}", txs="ids")["txs"])
                  for h in range(h0 + 1, h1 + 1)]
    return len(counts), sum(counts), counts


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def metric_sum(text: str, name: str, contains: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and contains in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_profilers(pids: dict[str, int], seconds: float,
                    out: Path) -> list[subprocess.Popen[bytes]]:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        spy = Path(found)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        procs.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", "100", "--format", "raw", "--nonblocking",
             "--output", str(out / f"{name}.txt")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def summarize_profiles(files: Sequence[Path], top: int = 25) -> str:
    """Where the daemons' samples fall, summed over every profiled daemon.

    By package (innermost frame), by trio task (the coroutine a task was started
    with: which activity the time belongs to), by function (self), and by function
    including callees (leaving out the trunk every sample shares).
    """
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    total = 0
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            raw = stack.split(";")
            frames = [_frame_name(fr) for fr in raw]
            self_t[frames[-1]] += count
            by_package[_package(raw[-1])] += count
            by_task[_task(frames)] += count
            for fr in set(frames):
                incl[fr] += count
    if not total:
        return "no samples"

    def block(title: str, counts: Counter[str], n: int) -> list[str]:
        return ["", f"{title:>6}"] + [f"{100 * c / total:6.1f}  {name}"
                                    for name, c in counts.most_common(n)]

    trunk = {k for k, c in incl.items() if c > 0.8 * total}
    lines = [f"{total} samples at 100 Hz over {len(files)} daemons (a sample is taken "
             "whenever a thread is not idle: running, or runnable and waiting for a CPU)"]
    lines += block("% package (innermost frame)", by_package, 12)
    lines += block("% trio task (what the time was for)", by_task, 15)
    lines += block("% function, self", self_t, top)
    lines += block("% function, with callees", Counter(
        {k: c for k, c in incl.items() if k not in trunk}), top)
    return "\n".join(lines)


TASK_WRAPPERS = ("TrioManager._run_and_manage_task ", "FunctionTask.run ",
                 "SwarmConn._handle_muxed_stream ", "BasicHost._swarm_stream_handler ",
                 "_run_handler ", "_handle (hypercorn")


def _task(frames: Sequence[str]) -> str:
    """The coroutine a trio task runs, past generic wrappers (libp2p's service manager...)."""
    roots = [i for i, fr in enumerate(frames) if fr.startswith("unrolled_run ")]
    if not roots:
        return frames[-1]
    rest = frames[roots[-1] + 1:]
    if not rest:
        return "(trio scheduler itself)"
    for fr in rest:
        if not fr.startswith(TASK_WRAPPERS):
            return fr
    return rest[-1]


def _package(frame: str) -> str:
    """The top-level package (library or project) of a raw py-spy frame."""
    where = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    return where.split("/", 1)[0].removesuffix(".py") if where else "?"


def _frame_name(frame: str) -> str:
    """'func (pkg/mod.py:123)' -> 'func (pkg/mod.py)': one entry per function, all lines."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def run_cluster(n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start `n` daemons, fund the accounts once, run one load phase per load level."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-devnet-{n}-"))
    try:
        daemons, _genesis = make_commune(tmp, n, PARAMS, label=f"{LABEL}-{n}")
        print(f"[{n} nodes] starting daemons in {tmp}", flush=True)
        with running(daemons):
            wait_for("every node connected to the others",
                     lambda: all(d.status()["peers"] >= n - 1 for d in daemons), 60)
            wait_for("a first block", lambda: all(d.height() >= 1 for d in daemons), 60)
            t = time.monotonic()
            most = max(args.accounts)
            funded = fund(daemons, most)
            print(f"[{n} nodes] funded {most} accounts by height {funded} "
                  f"in {time.monotonic() - t:.1f} s", flush=True)
            runs = []
            for level in args.accounts:
                runs.append(load_phase(daemons, level, args))
                print(_row(runs[-1]), flush=True)
            return runs
    finally:
        if args.keep:
            print(f"[{n} nodes] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def load_phase(daemons: Sequence[Daemon], accounts: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, measured window and drain with `accounts` transactions in flight."""
    n = len(daemons)
    workers: list[tuple[mp.process.BaseProcess, Connection]] = []
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        pids = {d.name: pid_of(d) for d in daemons}
        ends = [endpoint(d) for d in daemons]
        heights = [d.height() for d in daemons]
        chain_id = bytes.fromhex(daemons[0].status()["chain_id"])
        w = max(1, min(args.workers, n))
        ctx = mp.get_context("spawn")
        for wi in range(w):
            mine = [j for j in range(n) if j % w == wi]
            spec = WorkerSpec(
                wi, chain_id, [NodeSpec(j, ends[j][0], ends[j][1], heights[j]) for j in mine],
                [(i, i % n) for i in range(accounts) if (i % n) % w == wi],
                args.warm, args.measure, args.drain, args.confirm, args.submit,
                args.block_txs)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
            proc.start()
            workers.append((proc, parent))
        for p, c in workers:
            if not c.poll(120):
                raise RuntimeError(f"generator process {p.pid} did not get ready")
            assert c.recv() == "ready"
        t_start = time.monotonic() + 0.5
        for _p, c in workers:
            c.send(t_start)
        t0 = t_start + args.warm
        t1 = t0 + args.measure
        print(f"[{n} nodes] {accounts} accounts in flight: {args.warm:.0f} s warm-up, "
              f"{args.measure:.0f} s measured", flush=True)
        time.sleep(max(0.0, t0 - time.monotonic()))
        h0 = daemons[0].height()
        cpu0 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        metrics0 = [d.call(lambda c: c.metrics()) for d in daemons]
        wall0 = time.monotonic()
        if args.profile:
            profilers = start_profilers(pids, args.measure,
                                        Path(args.profile) / f"n{n}-a{accounts}")
        peak_rss: dict[str, float] = defaultdict(float)
        while time.monotonic() < t1:
            for name, pid in pids.items():
                peak_rss[name] = max(peak_rss[name], proc_rss_mib(pid)[0])
            time.sleep(min(1.0, max(0.0, t1 - time.monotonic())))
        h1 = daemons[0].height()
        cpu1 = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        wall = time.monotonic() - wall0
        rss = {name: proc_rss_mib(pid) for name, pid in pids.items()}
        metrics1 = [d.call(lambda c: c.metrics()) for d in daemons]
        lags = [d.call(lambda c: c.status()).get("loop_lag_ms") for d in daemons]
        for spy in profilers:
            try:
                spy.wait(timeout=args.measure + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
        results: list[WorkerResult] = []
        for p, c in workers:
            if not c.poll(args.drain + 120):
                raise RuntimeError(f"generator process {p.pid} did not report")
            results.append(c.recv())
            p.join(timeout=10)
        blocks, txs, per_block = chain_window(daemons[0], h0, h1)
        wait_for("every node at the last measured height",
                 lambda: all(d.height() >= h1 for d in daemons), 120)
        hashes = {d.call(lambda c: c.get(f"block/{h1}"))["hash"] for d in daemons}
        assert len(hashes) == 1, f"nodes disagree at height {h1}: {hashes}"
        figures = _figures(n, accounts, args, t0, results, blocks, txs, per_block, wall,
                           (h0, h1), (cpu0, cpu1), rss, peak_rss, (metrics0, metrics1))
        figures["loop_lag_ms"] = lags
        figures["consensus_ms"] = consensus_timings(daemons, h0, h1)
        if args.profile:
            files = sorted((Path(args.profile) / f"n{n}-a{accounts}").glob("*.txt"))
            figures["profile"] = summarize_profiles(files)
        return figures
    finally:
        for spy in profilers:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        for p, _c in workers:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)


CONSENSUS_TIMINGS = (("commit", "ms"), ("commit", "loop_ms"), ("commit", "write_ms"),
                     ("commit", "check_ms"), ("proposal_built", "ms"))
"""(log event, field) of the daemons' per-block timings, in ms (`node/driver.py`)."""


def consensus_timings(daemons: Sequence[Daemon], h0: int, h1: int) -> dict[str, list[float]]:
    """p50/p90/max over every node's blocks h0+1..h1 of each of `CONSENSUS_TIMINGS`,
    from the daemons' JSON log lines: what the consensus task spends per block, and
    how much of it holds the event loop (fields a daemon does not log are left out)."""
    values: dict[str, list[float]] = defaultdict(list)
    for d in daemons:
        if not d.log_files or not d.log_files[-1].exists():
            continue
        for line in d.log_files[-1].read_text(errors="replace").splitlines():
            if '"commit"' not in line and '"proposal_built"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not h0 < int(rec.get("height", 0)) <= h1:
                continue
            for event, name in CONSENSUS_TIMINGS:
                if rec.get("event") == event and isinstance(rec.get(name), int | float):
                    values[f"{event}.{name}"].append(float(rec[name]))
    out = {}
    for key, vs in values.items():
        vs.sort()
        out[key] = [round(percentile(vs, 0.5), 1), round(percentile(vs, 0.9), 1),
                    round(vs[-1], 1)]
    return out


GOSSIP_COUNTERS = {
    "tx_gossip_sent": ("commune_gossip_sent_total", 'topic="txs"'),
    "tx_gossip_delivered": ("commune_gossip_received_total", 'result="delivered",topic="txs"'),
    "consensus_sent": ("commune_gossip_sent_total", 'topic="consensus"'),
    "consensus_delivered": ("commune_gossip_received_total",
                            'result="delivered",topic="consensus"'),
    "consensus_dropped_busy": ("commune_gossip_received_total", "dropped_busy"),
    "mempool_rejected": ("commune_mempool_rejected_total", ""),
}


def _figures(n: int, accounts: int, args: argparse.Namespace, win0: float,
             results: Sequence[WorkerResult], blocks: int, txs: int, per_block: list[int],
             wall: float, heights: tuple[int, int], cpu: tuple[dict[str, float], dict[str, float]],
             rss: dict[str, tuple[float, float]], peak_rss: dict[str, float],
             metrics: tuple[list[str], list[str]]) -> dict[str, Any]:
    confirmed = [c for r in results for c in r.confirmed]
    win1 = win0 + args.measure  # the generators' clock: the same monotonic clock as here
    lat = sorted(c - s for s, c, _ in confirmed if win0 <= s < win1)
    lost = sum(1 for r in results for s in r.unconfirmed if win0 <= s < win1)
    seen = sum(1 for _s, c, _ in confirmed if win0 <= c < win1)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    gen_cpu = sum(r.cpu_window for r in results)
    gen_sub = sum(r.submitted_window for r in results)
    sign_cpu = sum(r.sign_seconds_window for r in results)
    cpu0, cpu1 = cpu
    gossip = {name: [round((metric_sum(m1, metric, sel) - metric_sum(m0, metric, sel)) / wall, 1)
                     for m0, m1 in zip(*metrics, strict=True)]
              for name, (metric, sel) in GOSSIP_COUNTERS.items()}
    return {
        "nodes": n, "accounts": accounts, "confirm": args.confirm, "submit": args.submit,
        "workers": len(results), "measure_s": round(wall, 2), "heights": list(heights),
        "finalized_tps": txs / wall, "client_confirmed_tps": seen / wall,
        "latency_p50_s": percentile(lat, 0.50), "latency_p99_s": percentile(lat, 0.99),
        "latency_mean_s": sum(lat) / len(lat) if lat else math.nan,
        "latency_max_s": lat[-1] if lat else math.nan, "latency_samples": len(lat),
        "unconfirmed_in_window": lost,
        "blocks_per_s": blocks / wall, "txs_per_block": txs / blocks if blocks else 0.0,
        "max_txs_per_block": max(per_block, default=0),
        "rss_mib": {k: round(v[0], 1) for k, v in rss.items()},
        "rss_peak_mib": {k: round(max(v[1], peak_rss.get(k, 0.0)), 1) for k, v in rss.items()},
        "cpu_cores": {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in cpu0},
        "daemon_cpu_ms_per_tx": 1000 * sum(cpu1[k] - cpu0[k] for k in cpu0) / txs
        if txs else math.nan,
        "generator_cpu_cores": gen_cpu / wall,
        "generator_tx_per_cpu_s": gen_sub / gen_cpu if gen_cpu else math.nan,
        "generator_sign_share": sign_cpu / gen_cpu if gen_cpu else math.nan,
        "errors": dict(errors.most_common()),
        "per_node_per_second": gossip,
        "load_after": list(os.getloadavg()),
    }


COLUMNS = ["nodes", "in flight", "finalized tx/s", "client tx/s", "p50 s", "p99 s",
           "blocks/s", "tx/block", "RSS MiB", "CPU cores/node", "daemon CPU ms/tx",
           "gen CPU", "gen tx/CPU-s"]


def _row(r: dict[str, Any]) -> str:
    rss = r["rss_mib"].values()
    cpu = r["cpu_cores"].values()
    return "| " + " | ".join([
        str(r["nodes"]), str(r["accounts"]), f"{r['finalized_tps']:,.0f}",
        f"{r['client_confirmed_tps']:,.0f}", f"{r['latency_p50_s']:.2f}",
        f"{r['latency_p99_s']:.2f}", f"{r['blocks_per_s']:.2f}",
        f"{r['txs_per_block']:.0f}", f"{min(rss):.0f}-{max(rss):.0f}",
        f"{min(cpu):.2f}-{max(cpu):.2f}", f"{r['daemon_cpu_ms_per_tx']:.1f}",
        f"{r['generator_cpu_cores']:.2f}",
        f"{r['generator_tx_per_cpu_s']:,.0f}"]) + " |"


def print_report(mach: dict[str, Any], runs: Sequence[dict[str, Any]], sign_rate: float,
                 args: argparse.Namespace) -> None:
    print()
    print(f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['os']}, Python "
          f"{mach['python']}; load average before: "
          + " ".join(f"{x:.2f}" for x in mach["load_before"]))
    print(f"Code: {mach['code']}" + (f"; daemon environment: {' '.join(mach['daemon_env'])}"
                                      if mach["daemon_env"] else ""))
    print(f"Submission: {args.submit}; commit confirmation: {args.confirm} "
          f"(block transactions: {args.block_txs}); "
          f"{args.warm:.0f} s warm-up, {args.measure:.0f} s measured per phase.")
    print(f"Generator signing alone (make_tx, one process): {sign_rate:,.0f} transfers/CPU-s")
    print()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---:" for _ in COLUMNS) + "|")
    for r in runs:
        print(_row(r))
    for r in runs:
        g = r["per_node_per_second"]
        print(f"\n[{r['nodes']} nodes, {r['accounts']} in flight] latency mean "
              f"{r['latency_mean_s']:.2f} s, max {r['latency_max_s']:.2f} s over "
              f"{r['latency_samples']} transactions; unconfirmed {r['unconfirmed_in_window']}; "
              f"peak RSS {r['rss_peak_mib']}; CPU {r['cpu_cores']}; max tx/block "
              f"{r['max_txs_per_block']}; client errors {r['errors'] or 'none'}; "
              f"load after {' '.join(f'{x:.2f}' for x in r['load_after'])}")
        print("  per node per second: " + "; ".join(f"{k} {v}" for k, v in g.items()))
        if r.get("consensus_ms"):
            print("  per block, ms [p50, p90, max] over all nodes: " + "; ".join(
                f"{k} {v}" for k, v in r["consensus_ms"].items()))
        lags = [lag for lag in r.get("loop_lag_ms", []) if lag and lag.get("samples")]
        if lags:
            print("  event-loop lag, ms [p50, p99, max] per node (last 2 min): " + "; ".join(
                f"[{lag['p50']}, {lag['p99']}, {lag['max']}]" for lag in lags))
        if "profile" in r:
            print(f"\nWhere the daemons' time went ({r['nodes']} nodes, {r['accounts']} in "
                  f"flight):\n{r['profile']}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 7])
    ap.add_argument("--accounts", type=int, nargs="+", default=[100, 400, 1000, 2000],
                    help="load levels: accounts = transactions in flight (each level is "
                         "one phase on the same devnet)")
    ap.add_argument("--warm", type=float, default=30.0)
    ap.add_argument("--measure", type=float, default=60.0)
    ap.add_argument("--drain", type=float, default=30.0,
                    help="seconds after the window for the last transactions to confirm")
    ap.add_argument("--workers", type=int, default=1, help="generator processes")
    ap.add_argument("--confirm", choices=("blocks", "wait"), default="blocks")
    ap.add_argument("--block-txs", choices=("ids", "full"), default="ids",
                    help="what the block follower asks of each block: transaction ids "
                         "(GET /v1/block/{h}?txs=ids, no decoding) or full descriptions "
                         "(the daemons' previous only answer)")
    ap.add_argument("--submit", choices=("batch", "single"), default="batch",
                    help="POST /v1/txs with {'txs': [...]} gathered per node (default), or "
                         "one request per transaction (always with --confirm wait)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy every daemon in the window")
    ap.add_argument("--daemon-env", metavar="NAME=VALUE", action="append", default=[],
                    help="environment for the daemons (e.g. library tuning knobs to compare)")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' data directories")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 4 nodes, 200 accounts, 5 s warm-up, 10 s measured")
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.accounts, args.warm, args.measure, args.drain = [4], [100], 5.0, 10.0, 15.0
    if args.confirm == "wait":
        args.submit = "single"  # the batch endpoint does not wait
    if min(args.accounts) < 2 or args.measure <= 0 or args.warm < 0:
        ap.error("need at least 2 accounts and a positive measured window")
    for item in args.daemon_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--daemon-env wants NAME=VALUE, got {item!r}")
        os.environ[name] = value  # the daemons inherit the environment (tests/daemons.py)
    mach = machine()
    mach["daemon_env"] = args.daemon_env
    sign_rate = signing_rate()
    runs = []
    with stopping_on_sigterm():
        for n in args.nodes:
            runs.extend(run_cluster(n, args))
    print_report(mach, runs, sign_rate, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": mach, "sign_rate": sign_rate,
                                               "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: daemons stopped", file=sys.stderr)
        sys.exit(130)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
