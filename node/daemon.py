"""`commune daemon`: one member's node, from start-up recovery to a clean stop.

Lifecycle, with trio's structured concurrency (every task lives in one nursery, so
when anything fails or a signal arrives, everything stops together and nothing
outlives the daemon):

1. Start-up: read the config, take the data directory's lock (one daemon per home;
   an advisory lock the kernel drops if the process dies, so `kill -9` leaves nothing
   to clean up), load the genesis and the key, open the ledger (SQLite: it recovers
   its own journal), open the signing log and recover its valid prefix. Any problem
   here is a `DaemonError` with a message saying what to do, before the node talks
   to anyone.
2. Run: the libp2p network, the consensus driver (engine, timers, block sync), the
   member's own automatic actions, the control API on loopback (and the metrics
   endpoint if enabled). Once the API listens, its address goes to `api.json`.
3. Stop on SIGINT/SIGTERM (`Stopper`): cancel the nursery. Ledger commits and
   signing-log appends are synchronous, so a cancellation never lands in the middle
   of one; the API stops, connections close, `api.json` is removed, the lock is
   released; exit code 0. Signals stay handled until the very end, so a second one
   never meets a default handler (which would kill the process, or raise
   KeyboardInterrupt anywhere, mid-write). A second signal is logged
   (`already_stopping`) and ends the daemon at once, from the event loop between
   tasks (exit code 130); a stop that takes longer than `[daemon] stop_timeout` ends
   the same way (exit code 1), and if even that cannot run because the event loop is
   stuck in a synchronous call, a watchdog thread exits the process. A forced exit
   leaves the store and the signing log as a `kill -9` would (a write on a worker
   thread may be cut short), which is what both are built to recover from; it removes
   `api.json` and the pid file so that clients see the daemon is gone.

Crash recovery needs no special path: after `kill -9` the ledger holds every block it
said it committed, the signing log holds everything that was sent, the engine starts
at the height after the ledger's with those records, and block sync fetches whatever
the others committed meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node import api, config, logs
from node.config import Config, ConfigError, Paths
from node.driver import Driver, Hooks, now_ms, sync_protocol, topics
from node.logs import get_logger
from node.mempool import Mempool
from node.metrics import Metrics
from node.signing_log import SigningLog, SigningLogError
from protocol.consensus_types import EngineConfig, RecordError, SignedRecord
from protocol.crypto import IdError, SigningKey, id_text, parse_id
from protocol.schema import Field, SchemaError, Struct
from protocol.transactions import TX_KINDS, TxError, make_tx

log = get_logger("daemon")

STATE_RETRY_SECONDS = 1.5
"""How long an API submission refused by the committed state waits for newer blocks."""

EXIT_FORCED = 130
"""Exit code when a second signal ended the stop before it finished (as Ctrl-C twice)."""
EXIT_STOP_TIMEOUT = 1
"""Exit code when the graceful stop overran `stop_timeout`."""
FORCE_WAIT_SECONDS = 2.0
"""How long the watchdog waits for the event loop to run the safe exit before exiting
from its own thread."""
SLOW_STOP_ENV = "COMMUNE_TEST_SLOW_STOP"
"""Fault injection for tests only: "N" makes the graceful stop wait N seconds (the event
loop keeps running), "block:N" blocks the event loop N seconds while stopping."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DaemonError(Exception):
    """The daemon cannot start (or must stop); the message says what to do.

    `kind` matches the client's error kinds so the CLI maps both to the same exit codes.
    """

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


# ---- the data directory lock ----------------------------------------------------------


class HomeLock:
    """An exclusive advisory lock on `daemon.pid`, holding our pid while we run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DaemonError(f"another daemon is already running for {self.path.parent}"
                                  f" (pid {other or '?'}); stop it first", "exists") from None
            raise DaemonError(f"cannot lock {self.path}: {exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)  # closing drops the lock
                self._fd = None


# ---- JSON <-> transaction arguments ------------------------------------------------------


def args_from_json(kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Transaction arguments from their JSON form: ids as "z...", other bytes as hex.

    Driven by the kind's declared schema, so every kind works without a special case;
    the schema validation in `make_tx` then reports any remaining problem by field.
    """
    struct = TX_KINDS.get(kind)
    if struct is None:
        raise api.bad_request(f"unknown transaction kind {kind!r}; one of: "
                              + ", ".join(sorted(TX_KINDS)))
    return _struct_from_json(struct, args, "args")


def _struct_from_json(struct: Struct, obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise api.bad_request(f"{path} must be an object")
    out: dict[str, Any] = {}
    for name, value in obj.items():
        spec = struct.fields.get(name)
        out[name] = value if spec is None else _field_from_json(spec, value, f"{path}.{name}")
    return out


def _field_from_json(spec: Field, value: Any, path: str) -> Any:
    if spec.kind == "bytes" and isinstance(value, str):
        if value.startswith("z") and spec.min == spec.max == 32:
            try:
                return parse_id(value)
            except IdError as exc:
                raise api.bad_request(f"{path}: {exc}") from None
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise api.bad_request(f"{path}: expected hex (or a 'z...' id)") from None
    if spec.kind in ("list", "unique_list") and isinstance(value, list) and spec.item:
        return [_field_from_json(spec.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if spec.kind == "struct" and spec.struct is not None:
        return _struct_from_json(spec.struct, value, path)
    if spec.kind == "tagged" and spec.variants is not None and isinstance(value, dict):
        variant = spec.variants.get(str(value.get(spec.tag or "")))
        if variant is None:
            return value
        rest = {k: v for k, v in value.items() if k != spec.tag}
        return {spec.tag: value[spec.tag], **_struct_from_json(variant, rest, path)}
    return value


# ---- the node ----------------------------------------------------------------------------


@dataclass
class Started:
    """What a started daemon reports (for tests and the devnet)."""

    api_url: str
    peer_id: str
    listen: list[str]


class Node:
    """Everything one daemon holds; implements the control API's `Backend`."""

    def __init__(self, paths: Paths, cfg: Config, key: SigningKey, genesis: Any,
                 ledger: Any, signing_log: SigningLog, records: list[SignedRecord]) -> None:
        from node.net import Network  # libp2p is heavy to import: only the daemon needs it

        self.paths = paths
        self.config = cfg
        self.key = key
        self.genesis = genesis
        self.ledger = ledger
        self.chain_id: bytes = genesis.chain_id
        self.metrics = Metrics()
        self.mempool = Mempool(self.chain_id, LedgerAdapter(ledger))
        params = genesis.params
        engine_config = EngineConfig(
            chain_id=self.chain_id,
            empty_block_interval_ms=int(params["empty_block_interval"]) * 1000,
            max_clock_drift_ms=int(params["max_clock_drift"]) * 1000,
        )
        self.hooks = Hooks()
        tx_topic, consensus_topic = topics(self.chain_id)
        bootstrap = list(cfg.bootstrap) + genesis_bootstrap(genesis, key.public)
        self.net = Network(
            key.seed(), list(cfg.listen), bootstrap,
            topics=[tx_topic, consensus_topic],
            validators={tx_topic: self._validate_tx, consensus_topic: self._validate_consensus},
            request_handlers={sync_protocol(self.chain_id): self._serve_sync},
            announce=list(cfg.announce),  # [network] announce
        )
        self.driver = Driver(key=key, ledger=ledger, mempool=self.mempool, net=self.net,
                             signing_log=signing_log, records=records,
                             engine_config=engine_config, metrics=self.metrics,
                             genesis_time_ms=genesis.genesis_time_ms, hooks=self.hooks)
        from node.actions import Actions

        self.actions = Actions(self)
        self.started_at = time.time()
        self.api_url = ""

    async def _serve_sync(self, peer_id: str, data: bytes) -> bytes:
        return await self.driver.serve_sync(peer_id, data)

    def _validate_tx(self, origin: str, data: bytes) -> bool:
        return self.driver.validate_tx_gossip(origin, data)

    def _validate_consensus(self, origin: str, data: bytes) -> bool:
        return self.driver.validate_consensus_gossip(origin, data)

    # ---- Backend -------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        d = self.driver.status()
        return {
            "member": id_text(self.key.public), "peer_id": self.net.peer_id,
            "chain_id": self.chain_id.hex(), "commune": self.genesis.name,
            "listen": self.net.listen_addrs, "peers": len(self.net.peers()),
            "uptime_seconds": int(time.time() - self.started_at),
            "pid": os.getpid(), **d,
            "evidence_recorded": self.ledger.state.count("evidence"),
            "best_peer_height": max(d["sync_target"], self.ledger.height),
            "behind": max(0, d["sync_target"] - self.ledger.height),
            "gossip": {name: {"mesh": len(self.net.mesh_peers(topic)),
                              "subscribed": len(self.net.topic_peers(topic))}
                       for name, topic in zip(("txs", "consensus"), topics(self.chain_id),
                                              strict=True)},
            "net": self.net.stats(),
            "last_block": self._last_block_info(),
        }

    def _last_block_info(self) -> dict[str, Any] | None:
        h = self.ledger.height
        if h == 0:
            return None
        b = self.ledger.block(h)
        return {"height": h, "hash": b.hash().hex(), "time_ms": b.header.time_ms,
                "txs": len(b.txs), "state_root": b.header.state_root.hex()}

    async def peers(self) -> list[dict[str, Any]]:
        return [{"peer_id": p.peer_id, "addrs": list(p.addrs), "score": p.score,
                 "height": self.driver.sync.peer_heights.get(p.peer_id)}
                for p in self.net.peers()]

    async def query(self, name: str, params: Mapping[str, str]) -> Any:
        from node import queries

        return queries.run(self, name, params)

    async def submit(self, raw: bytes) -> dict[str, Any]:
        """Admit and gossip a transaction for a client of the API.

        A transaction the committed state refuses is retried after each commit for up
        to `STATE_RETRY_SECONDS`: a client that saw its deposit commit on one node and
        sends the dependent transaction to another would otherwise lose a race against
        block propagation that it has no way to see.
        """
        result = await self.driver.submit_and_gossip(raw)
        if result.status == "rejected" and result.state_dependent:
            with trio.move_on_after(STATE_RETRY_SECONDS):
                while result.status == "rejected" and result.state_dependent:
                    await self.driver.commit_happened()
                    result = await self.driver.submit_and_gossip(raw)
        if result.status == "rejected":
            raise api.rejected(result.reason or "rejected", {"id": result.txid.hex()})
        return {"id": result.txid.hex(), "status": "pending",
                "known": result.status == "known"}

    async def submit_batch(self, raws: list[bytes]) -> list[dict[str, Any]]:
        out = []
        for raw in raws:
            result = await self.driver.submit_and_gossip(raw)
            item: dict[str, Any] = {"id": result.txid.hex(),
                                    "status": "rejected" if result.status == "rejected"
                                    else "pending"}
            if result.status == "rejected":
                item["reason"] = result.reason or "rejected"
            out.append(item)
        return out

    async def sign_and_submit(self, kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
        tx_args = args_from_json(kind, args)
        return await self.sign_args(kind, tx_args)

    async def sign_args(self, kind: str, tx_args: dict[str, Any]) -> dict[str, Any]:
        """Sign with the member's key at the next free nonce and submit."""
        nonce = self.mempool.pending_nonce(self.key.public) + 1
        try:
            tx = make_tx(self.key, self.chain_id, kind, nonce, tx_args)
        except (SchemaError, TxError) as exc:
            raise api.bad_request(str(exc)) from None
        out = await self.submit(tx.raw)
        out.update({"kind": kind, "nonce": nonce, "signer": id_text(self.key.public)})
        return out

    async def action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        from node import actions

        return await actions.run_action(self, name, body)

    async def wait_tx(self, txid: bytes, timeout: float) -> dict[str, Any]:
        deadline = trio.current_time() + timeout
        while True:
            found = self.tx_status(txid)
            if found["status"] != "pending" or trio.current_time() >= deadline:
                return found
            with trio.move_on_at(deadline):
                await self.driver.commit_happened()

    def tx_status(self, txid: bytes) -> dict[str, Any]:
        from node import queries

        return queries.tx_status(self, txid)


class LedgerAdapter:
    """The mempool's view of the ledger (`node.mempool.LedgerView`).

    The ledger checks a transaction against the committed state, so it can judge only
    the signer's next nonce; a transaction queued behind others of the same signer is
    admitted on its structure and signature, and judged fully when its turn comes (the
    mempool rechecks after each commit, the block builder skips what fails).
    """

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def account_nonce(self, account: bytes) -> int:
        return int(self.ledger.next_nonce(account)) - 1

    def check_tx(self, tx: Any, pending_nonce: int) -> str | None:
        if tx.nonce != self.ledger.next_nonce(tx.signer):
            return None
        time_ms = max(now_ms(), self.ledger.last_time_ms + 1)
        reason = self.ledger.check_tx(tx, time_ms=time_ms, signature_checked=True)
        return None if reason is None else str(reason)


def genesis_bootstrap(genesis: Any, me: bytes) -> list[str]:
    """Founders' addresses from the genesis, with their peer ids (our own left out)."""
    from node.net import peer_id_from_public_key

    out = []
    for f in genesis.founders:
        if f.id == me or not f.address:
            continue
        addr = f.address
        if "/p2p/" not in addr:
            addr = f"{addr}/p2p/{peer_id_from_public_key(f.id)}"
        out.append(addr)
    return out


# ---- start-up ------------------------------------------------------------------------------


def load_config(paths: Paths) -> Config:
    if not paths.home.is_dir():
        raise DaemonError(f"no data directory at {paths.home}; create it with "
                          f"`commune init --home {paths.home}`", "not_found")
    try:
        return config.load_config(paths.config, paths.home)
    except ConfigError as exc:
        raise DaemonError(str(exc), "not_found" if "no config file" in str(exc)
                          else "usage") from None


def load_genesis(paths: Paths) -> Any:
    from ledger.genesis import Genesis, GenesisError

    if not paths.genesis.exists():
        raise DaemonError(f"no genesis at {paths.genesis}; create or import one with "
                          "`commune genesis`", "not_found")
    try:
        return Genesis.load(str(paths.genesis))
    except (GenesisError, OSError) as exc:
        raise DaemonError(f"cannot load {paths.genesis}: {exc}") from None


def open_ledger(paths: Paths, genesis: Any) -> Any:
    from ledger.ledger import Ledger

    try:
        return Ledger.open(str(paths.db), genesis)
    except Exception as exc:
        raise DaemonError(f"cannot open the ledger {paths.db}: {exc}") from None


def open_signing_log(paths: Paths) -> tuple[SigningLog, list[SignedRecord]]:
    try:
        signing_log, recovery = SigningLog.open(paths.sign_log)
    except SigningLogError as exc:
        raise DaemonError(str(exc)) from None
    if recovery.dropped_bytes:
        level = log.error if recovery.reason == "checksum mismatch" else log.warning
        level("signing_log_tail_dropped", bytes=recovery.dropped_bytes, reason=recovery.reason)
    records = []
    for i, raw in enumerate(recovery.records):
        try:
            records.append(SignedRecord.decode(raw))
        except RecordError as exc:
            signing_log.close()
            raise DaemonError(f"signing log {paths.sign_log} record {i} is corrupt ({exc}); "
                              "refusing to sign anything until it is inspected") from None
    return signing_log, records


class Resources:
    """What the daemon must release on any way out; `close` is idempotent.

    `close` runs at the end of `run`, once every task (and every worker thread a task
    waits for) is done. A forced stop calls `abandon` instead: a commit write or a
    signing-log append may then be running on a worker thread, and closing files under
    it is worse than leaving them to the kernel; the store and the log are built to be
    recovered from exactly that (a `kill -9`).
    """

    def __init__(self, paths: Paths, lock: HomeLock) -> None:
        self.paths = paths
        self.lock = lock
        self.ledger: Any = None
        self.signing_log: SigningLog | None = None
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.paths.api_endpoint.unlink(missing_ok=True)
        finally:
            try:
                if self.signing_log is not None:
                    self.signing_log.close()
                if self.ledger is not None and hasattr(self.ledger, "close"):
                    self.ledger.close()
            finally:
                self.lock.release()

    def abandon(self) -> None:
        """Before `os._exit`: remove what tells clients a daemon is running; the kernel
        closes the files and drops the lock when the process ends."""
        if self.closed:
            return
        self.closed = True
        self.paths.api_endpoint.unlink(missing_ok=True)
        self.paths.pid.unlink(missing_ok=True)


class Stopper:
    """How the daemon stops, whatever arrives while it does (see the module docstring).

    `requested` is set by the first SIGINT/SIGTERM (or the caller's `shutdown` event);
    everything else follows from it. Later signals and the `timeout` bound end the
    process with `os._exit` after `resources.close()`, from the trio thread.
    """

    def __init__(self, timeout: float, resources: Resources) -> None:
        assert timeout > 0
        self.timeout = timeout
        self.resources = resources
        self.requested = trio.Event()
        self.signals = 0
        self._token = trio.lowlevel.current_trio_token()
        self._finished = threading.Event()
        self._watchdog: threading.Thread | None = None

    def request(self, why: str) -> None:
        if self.requested.is_set():
            return
        log.info("stop_requested", why=why, timeout_seconds=self.timeout)
        self.requested.set()
        self._watchdog = threading.Thread(target=self._watch_time, name="stop-watchdog",
                                          daemon=True)
        self._watchdog.start()

    async def watch_signals(self, signals: Any) -> None:
        """Every SIGINT/SIGTERM of the daemon's life lands here, the first as the rest."""
        async for signum in signals:
            self.signals += 1
            name = signal.Signals(signum).name
            if not self.requested.is_set():
                log.info("signal", signal=name)
                self.request(f"signal {name}")
                continue
            log.warning("already_stopping", signal=name,
                        action="a second signal: exiting now, at a safe point")
            self.force(EXIT_FORCED, f"second signal {name}")

    async def follow(self, shutdown: trio.Event) -> None:
        await shutdown.wait()
        self.request("shutdown event")

    def force(self, code: int, why: str) -> None:
        """Exit now, from the trio thread between tasks: no write on this thread is half
        done; one on a worker thread (a commit, a signing-log append) ends as under
        `kill -9`, which the store and the log recover from by design."""
        log.warning("forced_stop", why=why, exit_code=code)
        try:
            self.resources.abandon()
            log.info("stopped", forced=True)
        finally:
            _flush_logs()
            os._exit(code)

    def finished(self) -> None:
        self._finished.set()

    def _watch_time(self) -> None:
        if self._finished.wait(self.timeout):
            return
        try:
            self._token.run_sync_soon(self.force, EXIT_STOP_TIMEOUT,
                                      f"the stop took longer than {self.timeout} s")
        except trio.RunFinishedError:
            return
        if self._finished.wait(FORCE_WAIT_SECONDS):
            return
        # The event loop is stuck in a synchronous call: nothing can run there. Exit from
        # here, as a kill -9 would (the next start recovers); the log line is written
        # raw because a logging lock may be held by the stuck thread.
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "error",
                "logger": "commune.daemon", "event": "stop_timeout_hard_exit",
                "why": "the event loop did not respond; exiting without cleanup (recovered "
                       "at the next start, as after kill -9)", "exit_code": EXIT_STOP_TIMEOUT}
        try:
            os.write(2, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        finally:
            os._exit(EXIT_STOP_TIMEOUT)


def _flush_logs() -> None:
    for h in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # exiting anyway: a log that cannot flush is lost
            h.flush()


async def _slow_stop_for_tests() -> None:
    spec = os.environ.get(SLOW_STOP_ENV, "")
    if not spec:
        return
    blocking = spec.startswith("block:")
    seconds = float(spec.removeprefix("block:"))
    log.warning("test_slow_stop", seconds=seconds, blocking=blocking)
    if blocking:
        time.sleep(seconds)  # a synchronous call that does not return (fault injection)
    else:
        with trio.CancelScope(shield=True):
            await trio.sleep(seconds)


_early_signals: list[int] = []


def _early_signal(signum: int, frame: Any) -> None:
    """A signal outside `run`'s signal receiver: before it opened (`run` then stops at
    once) or after it closed (everything is stopped already)."""
    _early_signals.append(signum)


async def run(home: Path, key: SigningKey, *, shutdown: trio.Event | None = None,
              task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon of data directory `home` until cancelled, signalled or `shutdown`."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        await _run(home, key, signals, shutdown, task_status)


async def _run(home: Path, key: SigningKey, signals: Any, shutdown: trio.Event | None,
               task_status: Any) -> None:
    paths = Paths(home)
    cfg = load_config(paths)
    from node import net as _net  # noqa: F401  (libp2p reconfigures logging at import)

    logs.setup(cfg.log_level, paths.logs)
    lock = HomeLock(paths.pid)
    lock.acquire()
    resources = Resources(paths, lock)
    stopper = Stopper(float(cfg.stop_timeout), resources)
    if _early_signals:
        stopper.request(f"signal {signal.Signals(_early_signals[-1]).name} during start-up")
    try:
        genesis = load_genesis(paths)
        if key.public not in genesis.founder_ids():
            log.info("not_a_founder", member=id_text(key.public))
        resources.ledger = open_ledger(paths, genesis)
        resources.signing_log, records = open_signing_log(paths)
        node = Node(paths, cfg, key, genesis, resources.ledger, resources.signing_log, records)
        log.info("starting", member=id_text(key.public), height=resources.ledger.height,
                 chain_id=node.chain_id.hex(), signed_records=len(records))
        try:
            # The signal watcher lives outside `_serve`'s nursery, so that it still
            # answers while that nursery unwinds after the stop's cancellation.
            async with trio.open_nursery() as outer:
                outer.start_soon(stopper.watch_signals, signals)
                if shutdown is not None:
                    outer.start_soon(stopper.follow, shutdown)
                try:
                    await _serve(node, paths, cfg, stopper, task_status)
                finally:
                    outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            refusal = _daemon_error_in(group)
            if refusal is None:
                log.exception("crashed")
                raise
            log.error("start_failed", error=refusal.message)
            raise refusal from None
        except Exception:
            log.exception("crashed")
            raise
    finally:
        stopper.finished()
        resources.close()
        log.info("stopped")


async def _serve(node: Node, paths: Paths, cfg: Config, stopper: Stopper,
                 task_status: Any) -> None:
    token = api.ensure_token(paths.token)
    app = api.create_app(node, token, node.metrics)
    stop = stopper.requested
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_when_requested, stopper, nursery.cancel_scope)
        await _listen(nursery, "the peer-to-peer network", ", ".join(cfg.listen),
                      "[network] listen", node.net.run)
        tx_topic, consensus_topic = topics(node.chain_id)
        await nursery.start(node.driver.run, node.net.subscribe(tx_topic),
                            node.net.subscribe(consensus_topic))
        from node import actions

        nursery.start_soon(actions.run, node)
        host, port = await _listen(nursery, "the control API",
                                   f"{cfg.api_host}:{cfg.api_port}",
                                   "[api] port (0 picks a free one)",
                                   api.serve_app, app, cfg.api_host, cfg.api_port, stop)
        if cfg.metrics_enabled:
            await _listen(nursery, "the metrics endpoint",
                          f"{cfg.metrics_host}:{cfg.metrics_port}", "[metrics] port",
                          lambda task_status: api.serve_app(
                              api.metrics_app(node.metrics), cfg.metrics_host,
                              cfg.metrics_port, stop, task_status=task_status,
                              loopback_only=False))
        node.api_url = api.base_url(host, port)
        api.write_endpoint(paths.api_endpoint, host, port)
        log.info("ready", api=node.api_url, peer_id=node.net.peer_id,
                 listen=node.net.listen_addrs)
        task_status.started(Started(node.api_url, node.net.peer_id, node.net.listen_addrs))


BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


async def _listen(nursery: trio.Nursery, what: str, where: str, setting: str,
                  fn: Any, *args: Any) -> Any:
    """`nursery.start(fn, *args)`, with an address that cannot be bound reported as what
    it is (a configuration problem, `DaemonError`), not as a crash."""
    try:
        return await nursery.start(fn, *args)
    except (OSError, BaseExceptionGroup) as exc:
        err = _bind_error(exc)
        if err is None:
            raise
        raise DaemonError(f"cannot listen for {what} on {where}: {err.strerror or err}; "
                          f"another program (another daemon?) may hold it: stop it or change "
                          f"{setting} in the config", "failed") from None


def _bind_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc if exc.errno in BIND_ERRNOS else None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
    return None


def _daemon_error_in(group: BaseExceptionGroup) -> DaemonError | None:
    """The refusal inside a nursery's exception group, if that is all it holds (the
    other tasks' cancellations aside)."""
    matched, rest = group.split(DaemonError)
    if matched is None:
        return None
    if rest is not None and rest.split(trio.Cancelled)[1] is not None:
        return None
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, DaemonError)
    return first


async def _stop_when_requested(stopper: Stopper, scope: trio.CancelScope) -> None:
    await stopper.requested.wait()
    log.info("stopping")
    scope.cancel()
    await _slow_stop_for_tests()  # shielded: holds up the nursery's unwinding (tests only)


def main(home: Path, key: SigningKey) -> None:
    """Blocking entry point for `commune daemon`; raises DaemonError on start-up failure.

    SIGINT/SIGTERM get a recording handler for the instants outside `run`'s signal
    receiver (so trio installs no KeyboardInterrupt handler, and a signal redelivered
    as the receiver closes, after everything stopped, does not kill the process).
    """
    _early_signals.clear()
    previous = {s: signal.signal(s, _early_signal) for s in STOP_SIGNALS}
    try:
        trio.run(run, home, key)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
