"""Block sync, sans I/O: how a node that is behind fetches committed blocks.

A node that is new, restarted or was partitioned learns from peers' status messages that
they have committed further than it has. It asks them for blocks with their commit
certificates by height ranges (a bounded number of requests in flight, one per peer),
and applies them strictly in height order. Before a block is handed to the ledger its
certificate is verified against the validator set of its height -- which the ledger
derives from the blocks before it, so the machine learns it through `on_applied` after
each block, and membership changes are followed height by height. A peer that sends
anything invalid (a wrong height, a broken certificate, a block that does not extend our
chain) or does not answer in time is dropped, its buffered answers discarded, and
another peer asked.

Messages (`SyncStatus`, `SyncRequest`, `SyncResponse`) travel on the node's
request/response protocol; `serve` builds the answer to a request from a store.
Every answer carries each block's *own* certificate (the one the peer committed it
with), not the next block's `last_commit`, so the newest block can be synced too.

Driver contract: call `on_status` for every status a peer sends, `on_response` for
every answer, `on_applied` after *every* commit (whether consensus or sync produced
it), `on_apply_failed` when the ledger rejected an `ApplyBlock`, `on_tick` every so
often (it expires requests), `on_peer_gone` on disconnect. Carry out the effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.block import MAX_BLOCK_BYTES, Block, BlockError
from protocol.crypto import HASH_LEN
from protocol.encoding import DecodeError, EncodeError, decode, encode
from protocol.votes import Certificate, CertificateError, ValidatorSet

MAX_SYNC_BATCH = 64
MAX_SYNC_RESPONSE_BYTES = 4 * MAX_BLOCK_BYTES + 64 * 1024
MAX_HEIGHT = 2**62


class SyncError(ValueError):
    """A malformed sync message."""


# ---- messages ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncStatus:
    """"I have committed up to `height`" (and, for a quick sanity check, its hash)."""

    height: int
    block_hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"height": self.height, "hash": self.block_hash}


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Blocks `start` .. `start + count - 1` with their certificates."""

    request_id: int
    start: int
    count: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.request_id, "start": self.start, "count": self.count}


@dataclass(frozen=True, slots=True)
class SyncResponse:
    """Consecutive blocks from the request's start; fewer than asked if the peer has
    fewer or the answer would be too large; none if it has none."""

    request_id: int
    items: tuple[tuple[Block, Certificate], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.request_id,
                "items": [{"block": b.to_wire(), "cert": c.to_wire()} for b, c in self.items]}


SyncMessage = SyncStatus | SyncRequest | SyncResponse


def encode_sync_message(msg: SyncMessage) -> bytes:
    kind = {SyncStatus: "status", SyncRequest: "request", SyncResponse: "response"}[type(msg)]
    return encode({"type": kind, "msg": msg.to_wire()})


def _int(obj: Any, name: str, lo: int, hi: int) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise SyncError(f"{name} must be an integer in [{lo}, {hi}]")
    return obj


def decode_sync_message(raw: bytes) -> SyncMessage:
    if type(raw) is not bytes or len(raw) > MAX_SYNC_RESPONSE_BYTES:
        raise SyncError("sync message is not bytes or is over the size limit")
    try:
        obj = decode(raw, max_size=MAX_SYNC_RESPONSE_BYTES)
    except (DecodeError, EncodeError) as exc:
        raise SyncError(f"undecodable sync message: {exc}") from None
    if type(obj) is not dict or set(obj) != {"type", "msg"} or type(obj["msg"]) is not dict:
        raise SyncError("sync message must be a map of type, msg")
    kind, m = obj["type"], obj["msg"]
    if kind == "status":
        if set(m) != {"height", "hash"}:
            raise SyncError("status must have height, hash")
        if type(m["hash"]) is not bytes or len(m["hash"]) != HASH_LEN:
            raise SyncError("status hash must be 32 bytes")
        return SyncStatus(_int(m["height"], "status height", 0, MAX_HEIGHT), m["hash"])
    if kind == "request":
        if set(m) != {"id", "start", "count"}:
            raise SyncError("request must have id, start, count")
        return SyncRequest(_int(m["id"], "request id", 0, 2**63 - 1),
                           _int(m["start"], "request start", 1, MAX_HEIGHT),
                           _int(m["count"], "request count", 1, MAX_SYNC_BATCH))
    if kind == "response":
        if set(m) != {"id", "items"} or type(m["items"]) is not list:
            raise SyncError("response must have id, items")
        if len(m["items"]) > MAX_SYNC_BATCH:
            raise SyncError(f"response has more than {MAX_SYNC_BATCH} items")
        items = []
        for it in m["items"]:
            if type(it) is not dict or set(it) != {"block", "cert"}:
                raise SyncError("response item must be a map of block, cert")
            try:
                items.append((Block.from_wire(it["block"]), Certificate.from_wire(it["cert"])))
            except (BlockError, CertificateError) as exc:
                raise SyncError(f"response item: {exc}") from None
        return SyncResponse(_int(m["id"], "response id", 0, 2**63 - 1), tuple(items))
    raise SyncError(f"unknown sync message type {kind!r}")


def serve(request: SyncRequest, height: int,
          block_at: Callable[[int], Block], certificate_at: Callable[[int], Certificate],
          max_bytes: int = MAX_SYNC_RESPONSE_BYTES // 2) -> SyncResponse:
    """Answer a request from a store holding blocks 1..height."""
    items: list[tuple[Block, Certificate]] = []
    size = 0
    end = min(height, request.start + min(request.count, MAX_SYNC_BATCH) - 1)
    for h in range(request.start, end + 1):
        block, cert = block_at(h), certificate_at(h)
        size += len(block.encode()) + 128 * len(cert.signatures) + 64
        if items and size > max_bytes:
            break
        items.append((block, cert))
    return SyncResponse(request.request_id, tuple(items))


# ---- effects -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendSyncRequest:
    peer: str
    request: SyncRequest


@dataclass(frozen=True, slots=True)
class ApplyBlock:
    """Commit `block` with `certificate` (already verified against the validator set of
    its height); then call `on_applied`, or `on_apply_failed` if the ledger refuses."""

    block: Block
    certificate: Certificate
    peer: str


@dataclass(frozen=True, slots=True)
class DropPeer:
    """`peer` sent something invalid or did not answer: penalize or disconnect it. The
    sync machine ignores it until its ban ends."""

    peer: str
    reason: str


SyncEffect = SendSyncRequest | ApplyBlock | DropPeer


@dataclass(frozen=True, slots=True)
class SyncConfig:
    batch: int = 16
    max_in_flight: int = 4
    request_timeout_ms: int = 5_000
    ban_ms: int = 60_000
    lag_grace_ms: int = 2_000
    """A peer just one block ahead is normal (it committed a moment before us and
    consensus will catch up): only sync if that lasts this long."""
    max_peers: int = 256

    def __post_init__(self) -> None:
        assert 1 <= self.batch <= MAX_SYNC_BATCH and self.max_in_flight >= 1


@dataclass(slots=True)
class _Request:
    peer: str
    start: int
    count: int
    sent_ms: int


@dataclass(slots=True)
class _Item:
    block: Block
    certificate: Certificate
    peer: str


@dataclass(slots=True)
class BlockSync:
    """Follows peers' heights and fetches what we lack. `height` is our last committed
    height, `validators` the validator set of `height + 1`, `last_hash` the hash of our
    last block (the chain id before the first)."""

    chain_id: bytes
    height: int
    last_hash: bytes
    validators: ValidatorSet
    config: SyncConfig = field(default_factory=SyncConfig)
    peer_heights: dict[str, int] = field(default_factory=dict)
    banned: dict[str, int] = field(default_factory=dict)
    in_flight: dict[int, _Request] = field(default_factory=dict)
    buffer: dict[int, _Item] = field(default_factory=dict)
    applying: int | None = None
    behind_since: int | None = None
    _next_id: int = 1
    _rotation: int = 0

    # ---- queries ----

    def target(self, now_ms: int) -> int:
        """The highest height a usable peer claims."""
        return max((h for p, h in self.peer_heights.items() if not self._is_banned(p, now_ms)),
                   default=self.height)

    def is_syncing(self, now_ms: int) -> bool:
        return self.target(now_ms) > self.height + 1 or bool(self.in_flight)

    def _is_banned(self, peer: str, now_ms: int) -> bool:
        until = self.banned.get(peer)
        if until is None:
            return False
        if now_ms >= until:
            del self.banned[peer]
            return False
        return True

    # ---- inputs ----

    def on_status(self, now_ms: int, peer: str, status: SyncStatus) -> list[SyncEffect]:
        if self._is_banned(peer, now_ms):
            return []
        if peer in self.peer_heights or len(self.peer_heights) < self.config.max_peers:
            self.peer_heights[peer] = status.height
        return self._schedule(now_ms)

    def on_peer_gone(self, now_ms: int, peer: str) -> list[SyncEffect]:
        self.peer_heights.pop(peer, None)
        self._forget(peer)
        return self._schedule(now_ms)

    def on_tick(self, now_ms: int) -> list[SyncEffect]:
        out: list[SyncEffect] = []
        for rid, req in sorted(self.in_flight.items()):
            if now_ms - req.sent_ms >= self.config.request_timeout_ms:
                del self.in_flight[rid]
                self._drop(now_ms, req.peer, "sync request timed out", out)
        out.extend(self._schedule(now_ms))
        return out

    def on_response(self, now_ms: int, peer: str, resp: SyncResponse) -> list[SyncEffect]:
        req = self.in_flight.get(resp.request_id)
        if req is None or req.peer != peer:
            return []  # late, replayed or unsolicited: ignore
        del self.in_flight[resp.request_id]
        out: list[SyncEffect] = []
        problem = self._check_response(req, resp)
        if problem is not None:
            self._drop(now_ms, peer, problem, out)
        else:
            for block, cert in resp.items:
                if block.height > self.height and block.height not in self.buffer:
                    self.buffer[block.height] = _Item(block, cert, peer)
            self._try_apply(now_ms, out)
        out.extend(self._schedule(now_ms))
        return out

    def on_applied(self, now_ms: int, height: int, block_hash: bytes,
                   next_validators: ValidatorSet) -> list[SyncEffect]:
        """We committed `height` (by consensus or sync); `next_validators` is the
        validator set of `height + 1`."""
        if height < self.height:
            return []
        self.height, self.last_hash, self.validators = height, block_hash, next_validators
        for h in [h for h in self.buffer if h <= height]:
            del self.buffer[h]
        if self.applying is not None and self.applying <= height:
            self.applying = None
        out: list[SyncEffect] = []
        self._try_apply(now_ms, out)
        out.extend(self._schedule(now_ms))
        return out

    def on_apply_failed(self, now_ms: int, height: int, reason: str) -> list[SyncEffect]:
        out: list[SyncEffect] = []
        item = self.buffer.pop(height, None)
        if self.applying == height:
            self.applying = None
        if item is not None:
            self._drop(now_ms, item.peer, f"block {height} rejected by the ledger: {reason}", out)
        out.extend(self._schedule(now_ms))
        return out

    # ---- internals ----

    def _check_response(self, req: _Request, resp: SyncResponse) -> str | None:
        """What we can check before knowing the validator sets: shape and hashes."""
        if not resp.items:
            if self.peer_heights.get(req.peer, 0) >= req.start:
                return "peer claimed blocks it did not send"
            return None
        if len(resp.items) > req.count:
            return "more blocks than requested"
        for i, (block, cert) in enumerate(resp.items):
            want = req.start + i
            if block.height != want:
                return f"block {block.height} where {want} was asked"
            if block.header.chain_id != self.chain_id:
                return "block of another chain"
            if cert.height != want or cert.block_hash != block.hash():
                return f"certificate does not match block {want}"
            try:
                block.check_body()
            except BlockError as exc:
                return f"block {want}: {exc}"
        return None

    def _try_apply(self, now_ms: int, out: list[SyncEffect]) -> None:
        if self.applying is not None:
            return
        item = self.buffer.get(self.height + 1)
        if item is None:
            return
        block, cert = item.block, item.certificate
        problem: str | None = None
        if block.header.prev_hash != self.last_hash:
            problem = "block does not extend our chain"
        elif block.header.validators_hash != self.validators.hash():
            problem = "block names another validator set"
        else:
            try:
                cert.verify(self.chain_id, self.validators, block.hash())
            except CertificateError as exc:
                problem = f"bad certificate: {exc}"
        if problem is not None:
            del self.buffer[block.height]
            self._drop(now_ms, item.peer, f"block {block.height}: {problem}", out)
            return
        self.applying = block.height
        out.append(ApplyBlock(block, cert, item.peer))

    def _drop(self, now_ms: int, peer: str, reason: str, out: list[SyncEffect]) -> None:
        self.banned[peer] = now_ms + self.config.ban_ms
        self.peer_heights.pop(peer, None)
        self._forget(peer)
        out.append(DropPeer(peer, reason))

    def _forget(self, peer: str) -> None:
        for h in [h for h, it in self.buffer.items() if it.peer == peer and h != self.applying]:
            del self.buffer[h]
        for rid in [rid for rid, r in self.in_flight.items() if r.peer == peer]:
            del self.in_flight[rid]

    def _schedule(self, now_ms: int) -> list[SyncEffect]:
        """Ask for the missing heights, up to the window, in ranges, one per free peer."""
        out: list[SyncEffect] = []
        target = self.target(now_ms)
        if target <= self.height:
            self.behind_since = None
            return out
        if target == self.height + 1 and not self.in_flight:
            if self.behind_since is None:
                self.behind_since = now_ms
            if now_ms - self.behind_since < self.config.lag_grace_ms:
                return out
        window_end = min(target, self.height + self.config.batch * self.config.max_in_flight)
        taken = set(self.buffer)
        if self.applying is not None:
            taken.add(self.applying)
        for r in self.in_flight.values():
            taken.update(range(r.start, r.start + r.count))
        busy = {r.peer for r in self.in_flight.values()}
        h = self.height + 1
        while h <= window_end and len(self.in_flight) < self.config.max_in_flight:
            if h in taken:
                h += 1
                continue
            count = 1
            while (count < self.config.batch and h + count <= window_end
                   and h + count not in taken):
                count += 1
            peer = self._pick_peer(now_ms, h, busy)
            if peer is None:
                break
            busy.add(peer)
            rid = self._next_id
            self._next_id += 1
            self.in_flight[rid] = _Request(peer, h, count, now_ms)
            out.append(SendSyncRequest(peer, SyncRequest(rid, h, count)))
            h += count
        return out

    def _pick_peer(self, now_ms: int, start: int, busy: set[str]) -> str | None:
        """Rotate over the usable peers that claim `start`, so load and the chance of
        meeting a liar are spread (deterministically: no randomness in protocol/)."""
        cands = sorted(p for p, ph in self.peer_heights.items()
                       if ph >= start and p not in busy and not self._is_banned(p, now_ms))
        if not cands:
            return None
        self._rotation += 1
        return cands[self._rotation % len(cands)]
