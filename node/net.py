"""The member daemon's transport: one py-libp2p host (TCP, Noise, Yamux) per member.

`Network` gives the consensus engine, the mempool and block sync three things:
gossip topics guarded by validators, request/response protocols, and a set of
connected peers that heals itself (bootstrap, peer exchange, reconnect with
backoff, bans for misbehaviour). Nothing above it may rely on one gossip
message arriving: gossip is the fast path, request/response the reliable one.

Findings about py-libp2p 0.8.1 (measured on loopback; see tests/test_net.py):

- Bursts drop silently at three places, all sized for the public IPFS swarm:
  per-peer outbound RPC queues of 32 (`rpc_queue.OutBoundQueueSize`, built in
  `Pubsub._handle_new_peer` with no constructor knob), per-topic subscription
  channels of 32 (`pubsub.SUBSCRIPTION_CHANNEL_SIZE`, full -> dropped), and a
  GossipSub "spam protection" of 10 messages per topic per second per
  *forwarder*, which also counts this node's own publishes. Of a burst of
  200 messages from one node, each of 3 neighbours got 10 with the library
  defaults (the rate limit; tests/test_net.py, 4 processes), 32 with only the
  rate limit raised (the outbound queue; 3 nodes in one process), and all 200
  with the limits below (both setups, every run).
  Tuned here: the rate limit through GossipSub's constructor, the inbound RPC
  size through Pubsub's; the outbound queue by resizing each queue as Pubsub
  registers it (`_TunedQueues`), the subscription channel by overriding
  `Pubsub.notify_subscriptions` to feed our own bounded channels. No module
  globals are patched.
- Max message size: 1 MiB both ways by default (`DefaultMaxMessageSize`); a
  larger publish is dropped without error. Raised to `max_message_size`.
  Any length-prefixed frame above ~6.3 MiB fails (see `MAX_FRAME`), and an
  empty request/response frame hangs the reader; both are guarded here.
- `Swarm` keeps a 60 s negative cache of peers whose dial failed: a peer that
  was down when we redialled it is then refused for a minute after it is back.
  We clear that entry (`Swarm.unblock_peer`) before each of our own attempts.
- The swarm's auto-connector dials any peer in the peerstore (banned ones too)
  on its own slow schedule and logs at INFO every 30 s; it is stopped, and our
  dialer owns reconnection. `new_host` offers TLS, secio and plaintext next to
  Noise and takes no `RetryConfig`, so the host is assembled from `new_swarm`.
- Pubsub seqnos start at `int(time.time())` and count up; a node that published
  more than one message per second and restarts reuses seqnos, and peers drop
  its new messages as already seen (and as equivocation). Seqnos start at
  `time.time_ns()` here.
- GossipSub >= 1.2 sends an IDONTWANT control RPC per message per mesh peer,
  doubling queue pressure under bursts; we speak /meshsub/1.1.0 only. Adaptive
  gossip can stretch the heartbeat to 30-60 s; it is off. The default heartbeat
  is 120 s (go uses 1 s); ours is 1 s.
- A message is delivered to local subscribers before it is forwarded; its
  order relative to others is not preserved (each inbound message is handled
  in its own task). GossipSub keeps every validated message of the last
  ~1000 in `equivocation_detection`; we trim it every second.
- Validators run on this node's own publishes too; a validator that raises
  would crash the pubsub task, so ours are wrapped and a raise is a reject.
- Hostile peers (tests/test_net_wire.py probes every layer; each finding is
  fixed here without touching the library): an exception escaping any
  protocol handler stops the swarm, the host and the process (`_Host` guards
  every inbound stream; c93320d found it for gossip). Yamux buffers data past
  the receive window it granted, only logging it (64 MiB into one unread
  stream in seconds), accepts any frame version and type, and retries a dead
  connection every 10 ms when a write fails (`_YamuxWatch`). GossipSub handles
  any number of control entries per RPC and answers a GRAFT for a topic it
  has not joined with a PRUNE and peer records: 20 000 in one 300 KB RPC held
  the event loop 8 s (`_trim_rpc`); it also verifies an RPC's signed peer
  record twice. Pubsub reads any number of inbound streams per peer, a
  message whose key does not parse raises in its task, and nothing bounds
  streams per peer (the resource manager counts them in total only).
  Request/response takes one of a protocol's inbound slots, shared by all
  peers, before reading the request: one peer with 64 half-written requests
  refused everyone's for 30 s (`_RequestResponse`); a bad length varint is
  logged as an unexpected failure with a traceback. Identify push reads with
  no deadline. On cancellation the swarm's teardown stops at its first await:
  the listener went on accepting after `run` returned (`_close_swarm`).
  Not fixed: inbound connection slots (128 established, 64 in handshake)
  have no allowlist, so free identities can fill them and keep other peers
  from dialling in (our own dials still go out, and connections that never
  finish the handshake are dropped after 10 s); a message with a bad
  signature is dropped without a penalty (its cost: one verification).
- Per-message costs (CPU per 400-byte gossip message, both ends of two
  Networks in one process; ~1.9 ms with the library's behaviour): Yamux
  returns receive window after every read that returns data (unless
  PY_YAMUX_RELEASE_ON_READ=0, an environment variable read on each call):
  one more frame and Noise write per message. Credit is batched per stream
  here (`_CreditBatching`): ~1.1 ms. Pubsub attaches this node's signed
  peer record to every RPC and the receiver verifies it (twice for control
  RPCs): sent and verified once per stream here (`_Pubsub.write_msg`,
  `_consume_record`), a few percent. Merging the RPCs waiting in a peer's
  queue into one write was tried and dropped: the receiving py-libp2p
  delivered 348 of 3000 messages.
- Unbounded inside the library, out of our reach: Pubsub spawns one task per
  inbound message before validation. The rate limit is a per-forwarder list
  scanned on every message (cost grows with the limit: ~2000 entries here).
  libp2p logs one WARNING per rate-limited message and a multi-line ERROR for
  every stream that fails protocol negotiation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import secrets
import socket
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import psutil  # a dependency of py-libp2p (its resource manager)
import trio
from libp2p import new_swarm
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ParseError
from libp2p.host.basic_host import BasicHost
from libp2p.io.abc import Reader
from libp2p.io.exceptions import IOException, MessageTooLarge
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.utils import maybe_consume_signed_record
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.rcmgr.manager import ResourceLimits, new_resource_manager
from libp2p.request_response import (
    BytesCodec,
    MessageTooLargeError,
    ProtocolNotSupportedError,
    RequestContext,
    RequestDecodeError,
    RequestResponse,
    RequestResponseConfig,
    RequestResponseError,
    RequestTimeoutError,
)
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE as YAMUX_INITIAL_WINDOW
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE as YAMUX_MAX_WINDOW
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited

from node.net_peers import PeerBook
from protocol.encoding import DecodeError, decode, encode

log = logging.getLogger("node.net")

MiB = 1024 * 1024
# py-libp2p reads a length-prefixed frame with `read_exactly`, which gives up
# after 101 reads of what the stream has buffered (a Yamux frame, <= 64 KiB):
# frames above ~6.3 MiB fail as "incomplete" on a healthy connection. Larger
# payloads must be paged by the caller (block sync asks for byte-bounded ranges).
MAX_FRAME = 6 * MiB
# Room for the pubsub envelope around a payload: protobuf framing, topic, seqno,
# the sender's key and signature, and the signed peer record of the RPC.
RPC_OVERHEAD = 64 * 1024
PEER_EXCHANGE_PROTOCOL = "/venture-commune/peers/1.0.0"
IDENTIFY_PUSH_PROTOCOL = "/ipfs/id/push/1.0.0"
MAX_PEER_EXCHANGE_REPLY = 256 * 1024


@dataclass(frozen=True)
class NetLimits:
    """Every bound of the transport in one place; the defaults suit up to ~20 members."""

    max_message_size: int = 4 * MiB + 256 * 1024  # a full block with its certificate
    max_request_size: int = 1 * MiB
    max_response_size: int = 5 * MiB  # one block with its certificate, or a page of smaller ones
    outbound_queue: int = 4096  # gossip RPCs waiting to be written, per peer
    subscription_queue: int = 8192  # delivered messages not yet consumed, per topic
    max_messages_per_topic_per_second: float = 2000.0  # per forwarding peer
    max_concurrent_requests_per_peer: int = 8  # each way
    max_concurrent_inbound_per_protocol: int = 64
    max_streams_per_peer: int = 64  # inbound, all protocols together
    handler_timeout: float = 30.0  # an inbound request, from first byte to reply
    rpc_read_timeout: float = 60.0  # an inbound gossip RPC, from its first byte to its last
    max_peers: int = 64
    dial_timeout: float = 5.0
    max_concurrent_dials: int = 8
    backoff_initial: float = 0.25
    backoff_max: float = 30.0
    max_failures_discovered: int = 10
    invalid_message_penalty: float = 1.0
    ban_threshold: float = 20.0
    ban_seconds: float = 600.0
    score_decay_per_second: float = 0.05
    peer_exchange_interval: float = 10.0
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_request_size", "max_response_size"):
            size = getattr(self, name)
            if not 0 < size <= MAX_FRAME - RPC_OVERHEAD:
                raise ValueError(f"{name}={size}: frames are limited to {MAX_FRAME - RPC_OVERHEAD}")
        for name, value in vars(self).items():
            if isinstance(value, (int, float)) and value <= 0:
                raise ValueError(f"{name} must be positive")
        if not self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ValueError("gossip degrees must satisfy low <= degree <= high")

    @classmethod
    def py_libp2p_defaults(cls) -> NetLimits:
        """The library's own gossip limits, kept to measure what tuning buys."""
        return cls(
            max_message_size=1 * MiB - RPC_OVERHEAD,
            outbound_queue=32,
            subscription_queue=32,
            max_messages_per_topic_per_second=10.0,
        )


class NetworkError(Exception):
    """A request or publish that could not be carried out; `reason` says why.

    Reasons: "closed" (network not running), "unreachable" (no connection could
    be made), "reset" (the stream failed midway, e.g. the handler failed or the
    peer left), "timeout", "too_large", "unsupported" (peer does not speak the
    protocol), "banned", "bad_peer_id", "unknown_topic".
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str
    addrs: tuple[str, ...]
    score: float


Validator = Callable[[str, bytes], bool]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (base58) of a member whose Ed25519 public key is given."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key))).to_base58()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of `peer_id_from_public_key`; ValueError for anything but an Ed25519 peer id."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except ValueError as error:
        raise ValueError(f"{peer_id!r} is not a peer id") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{peer_id!r} does not embed an Ed25519 key")
    return key.to_bytes()


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """'/ip4/../tcp/../p2p/<id>' -> (peer id, transport address without /p2p)."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        peer_id = maddr.value_for_protocol("p2p")
    except Exception as error:
        raise ValueError(f"{addr!r} is not a multiaddr with /p2p/<peer id>") from error
    if not peer_id:
        raise ValueError(f"{addr!r} has no /p2p/<peer id>")
    ID.from_base58(str(peer_id))
    transport = str(maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}")))
    return str(peer_id), transport


# What an honest /meshsub/1.1.0 peer of this commune sends in one RPC, at most.
MAX_PUBLISH_PER_RPC = 1024
MAX_CONTROL_IDS = 5000  # IHAVE and IWANT message ids (go-libp2p's MaxIHaveLength)
MAX_PRUNE_PEERS = 16  # peer exchange records in one PRUNE (go-libp2p's PrunePeers)
MAX_UNKNOWN_TOPIC_ENTRIES = 64
MAX_PUBSUB_STREAMS_PER_PEER = 3
RECORD_REFRESH = 600.0  # seconds before an unchanged signed peer record is verified again
BAN = float("inf")  # a violation weight: cut the peer off at once


def _trim_rpc(rpc: rpc_pb2.RPC, topics: frozenset[str], max_subscriptions: int) -> str:
    """Cut an inbound RPC down to what /meshsub/1.1.0 needs here; say what was over a bound.

    GossipSub handles each control entry on its own, however many come in one
    RPC, and answers a GRAFT for a topic this node has not joined with a PRUNE
    carrying signed peer records: one 300 KB RPC of 20 000 such GRAFTs held the
    event loop for 8 s (a 4 MiB one would hold it for minutes); 5 000 IHAVEs for
    unknown topics, 0.9 s. Entries for topics not joined are dropped (go-libp2p
    ignores them too), counts are capped, and the v1.2/v1.3 fields (IDONTWANT,
    extensions, topic observation) are dropped since this node speaks v1.1.
    Dropping is silent unless a bound was exceeded: then the caller penalizes.
    """
    excess: list[str] = []
    if len(rpc.publish) > MAX_PUBLISH_PER_RPC:
        excess.append(f"{len(rpc.publish)} messages")
        del rpc.publish[MAX_PUBLISH_PER_RPC:]
    if len(rpc.subscriptions) > max_subscriptions:
        excess.append(f"{len(rpc.subscriptions)} subscriptions")
        del rpc.subscriptions[:]
    if not rpc.HasField("control"):
        return ", ".join(excess)
    control = rpc.control
    kept = rpc_pb2.ControlMessage()
    unknown = 0
    budget = MAX_CONTROL_IDS
    for ihave in control.ihave:
        if ihave.topicID not in topics:
            unknown += 1
            continue
        ids = list(ihave.messageIDs[:budget])
        budget -= len(ids)
        if ids:
            kept.ihave.add(topicID=ihave.topicID, messageIDs=ids)
    wanted = sum(len(iwant.messageIDs) for iwant in control.iwant)
    if control.iwant:
        ids = [i for iwant in control.iwant for i in iwant.messageIDs[:MAX_CONTROL_IDS]]
        kept.iwant.add(messageIDs=ids[:MAX_CONTROL_IDS])
    seen: set[str] = set()
    for graft in control.graft:
        if graft.topicID not in topics:
            unknown += 1
        elif graft.topicID not in seen:
            seen.add(graft.topicID)
            kept.graft.add(topicID=graft.topicID)
    seen.clear()
    for prune in control.prune:
        if prune.topicID not in topics:
            unknown += 1
        elif prune.topicID not in seen:
            seen.add(prune.topicID)
            kept.prune.add(
                topicID=prune.topicID, peers=prune.peers[:MAX_PRUNE_PEERS], backoff=prune.backoff
            )
    offered = sum(len(ihave.messageIDs) for ihave in control.ihave)
    if offered > MAX_CONTROL_IDS:
        excess.append(f"IHAVE of {offered} ids")
    if wanted > MAX_CONTROL_IDS:
        excess.append(f"IWANT of {wanted} ids")
    if len(control.graft) + len(control.prune) > 2 * len(topics) + MAX_UNKNOWN_TOPIC_ENTRIES:
        excess.append(f"{len(control.graft)} GRAFT, {len(control.prune)} PRUNE")
    if unknown > MAX_UNKNOWN_TOPIC_ENTRIES:
        excess.append(f"{unknown} control entries for unknown topics")
    if any(len(prune.peers) > MAX_PRUNE_PEERS for prune in control.prune):
        excess.append("PRUNE with too many peers")
    rpc.control.CopyFrom(kept)
    return ", ".join(excess)


class _Pushback(Reader):
    """A stream with one byte already read put back in front."""

    def __init__(self, first: bytes, stream: INetStream) -> None:
        self._first = first
        self._stream = stream

    async def read(self, n: int | None = None) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await self._stream.read(n)


class _TunedQueues(dict[ID, RpcQueue]):
    """Pubsub's per-peer outbound queues, resized as Pubsub registers each one.

    Pubsub builds `RpcQueue()` with its module defaults (32 RPCs, 1 MiB) and no
    parameter reaches it; this mapping adjusts each queue on insertion, before
    anything is queued on it.
    """

    def __init__(self, max_rpcs: int, max_rpc_size: int) -> None:
        super().__init__()
        self._max_rpcs = max_rpcs
        self._max_rpc_size = max_rpc_size

    def __setitem__(self, peer_id: ID, queue: RpcQueue) -> None:
        queue.max_message_size = self._max_rpc_size
        queue._queue.max_size = self._max_rpcs
        super().__setitem__(peer_id, queue)


Violation = Callable[[str, str, float], None]  # (peer id, reason, penalty)

# Yamux frame header: version, type, flags, stream id, length (big endian).
_YAMUX_HEADER = struct.Struct(">BBHII")
_YAMUX_DATA, _YAMUX_GO_AWAY = 0, 3
_YAMUX_SYN = 0x1


class _YamuxWireError(RawConnError):
    """A peer broke the Yamux wire rules; the session reading its frames ends."""


class _YamuxWatch:
    """The secured connection under one Yamux session, holding the peer to the Yamux rules.

    py-libp2p's Yamux buffers whatever a peer sends on a stream, past the receive
    window it granted (it logs "peer exceeded receive window" and carries on):
    a peer that ignores flow control fills this process's memory through any
    stream nobody reads yet (64 MiB in a few seconds was measured). It also
    accepts frames of any version and type. This proxy sees every byte the
    session's reader consumes, in order, and checks each frame header before
    the session acts on it: a DATA frame larger than the stream's remaining
    window, a version other than 0 or an unknown type ends the session (as
    go-yamux does) and the peer is reported. Writes that fail with the
    library's IOException are raised as RawConnError, which the session treats
    as fatal; otherwise its reader logged and retried a dead connection every
    10 ms (a peer that flooded pings and stopped reading caused minutes of it).
    """

    def __init__(self, conn: Any, peer_id: ID, on_violation: Violation) -> None:
        self._conn = conn
        self._peer_id = peer_id
        self._on_violation = on_violation
        self.muxer: Yamux | None = None
        self._header = bytearray()
        self._body_left = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def read(self, n: int | None = None) -> bytes:
        data = await self._conn.read(n)
        self._scan(data)
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self._conn.write(data)
        except RawConnError:
            raise
        except IOException as error:
            raise RawConnError(f"write failed: {error}") from error

    def _scan(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._body_left:
                take = min(self._body_left, end - pos)
                self._body_left -= take
                pos += take
                continue
            need = _YAMUX_HEADER.size - len(self._header)
            chunk = data[pos : pos + need]
            self._header += chunk
            pos += len(chunk)
            if len(self._header) == _YAMUX_HEADER.size:
                version, kind, flags, stream_id, length = _YAMUX_HEADER.unpack(self._header)
                self._header.clear()
                problem = self._check(version, kind, flags, stream_id, length)
                if problem:
                    self._on_violation(self._peer_id.to_base58(), f"yamux: {problem}", BAN)
                    raise _YamuxWireError(problem)
                if kind == _YAMUX_DATA:
                    self._body_left = length

    def _check(self, version: int, kind: int, flags: int, stream_id: int, length: int) -> str:
        if version != 0:
            return f"frame version {version}"
        if kind > _YAMUX_GO_AWAY:
            return f"frame type {kind}"
        if kind != _YAMUX_DATA:
            return ""
        if length > YAMUX_MAX_WINDOW:
            return f"DATA frame of {length} bytes"
        stream = self.muxer.streams.get(stream_id) if self.muxer is not None else None
        if stream is None:
            # A new stream starts with the initial window; data for a stream that is
            # gone is read and dropped by the session.
            window = YAMUX_INITIAL_WINDOW if flags & _YAMUX_SYN else length
        else:
            window = stream.recv_window
        if length > window:
            return f"{length} bytes on stream {stream_id} with a window of {window}"
        return ""


class _MuxerMultistream(MuxerMultistream):
    """Yamux only, each session reading through a `_YamuxWatch`.

    The library builds `Yamux` itself for the Yamux protocol id (whatever class
    is registered for it), so the session is built here instead.
    """

    def __init__(self, on_violation: Violation, negotiate_timeout: int) -> None:
        super().__init__({TProtocol(YAMUX_PROTOCOL_ID): Yamux}, negotiate_timeout)
        self._on_violation = on_violation

    async def new_conn(self, conn: Any, peer_id: ID) -> Any:
        protocol, _ = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        watch = _YamuxWatch(conn, peer_id, self._on_violation)

        async def on_close() -> None:
            return None

        muxed = Yamux(
            watch,  # type: ignore[arg-type]  # a proxy: ISecureConn by delegation
            peer_id,
            is_initiator=conn.is_initiator,
            on_close=on_close,
        )
        watch.muxer = muxed
        muxed.streams = _CreditBatching(muxed.streams)
        return self._annotate_connection(muxed, conn, protocol)


class _CreditBatching(dict[int, Any]):
    """A Yamux session's streams, each returning receive window to the peer in batches.

    py-libp2p's Yamux sends a WINDOW_UPDATE after every read that returns data
    ("release on read", on unless PY_YAMUX_RELEASE_ON_READ=0, an environment
    variable read on each call): one more small frame, Noise encryption and
    write per gossip message. Rather than set the variable for the whole
    process (which measured -20 to -28 % CPU per gossip message), each stream's credit goes
    through its "pending release" counter, as with the variable off: the
    library then returns credit once half a window is read or the peer is
    down to less than half a window (so a blocked sender is always answered),
    instead of after every read. Measured: -40 % CPU per gossip message (two
    Networks), daemon CPU per transaction -25 % on a 7-node devnet.
    """

    def __setitem__(self, stream_id: int, stream: Any) -> None:
        if "_auto_tune_and_send_window_update" not in vars(stream):
            original = stream._auto_tune_and_send_window_update

            async def batched(*, bytes_read: int = 0) -> None:
                stream._pending_recv_release += bytes_read
                await original(bytes_read=0)

            stream._auto_tune_and_send_window_update = batched
        super().__setitem__(stream_id, stream)


class _Host(BasicHost):
    """A host whose inbound streams cannot take the process down or hoard its resources.

    Every inbound stream runs its protocol handler inside the swarm's nursery;
    py-libp2p lets an unexpected exception from any handler escape there, which
    stops the swarm, the host and the daemon (a garbage gossip frame did, see
    `_Pubsub.stream_handler`). Here any handler failure costs that stream only.
    Each peer may also hold only `max_streams_per_peer` inbound streams at once
    (the library bounds streams per connection and in total, not per peer), and
    protocols in `deadlines` are cut off after so many seconds (identify push
    waits for its message with no deadline: 255 streams held half-written
    requests for as long as the connection lived).
    """

    def __init__(
        self,
        *args: Any,
        max_streams_per_peer: int,
        deadlines: Mapping[str, float],
        on_violation: Violation,
        on_stream_refused: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_violation = on_violation
        self._streams_in = _StreamQuota(max_streams_per_peer, on_stream_refused)
        for protocol, seconds in deadlines.items():
            handler = self.multiselect.handlers.get(TProtocol(protocol))
            if handler is not None:
                self.set_stream_handler(TProtocol(protocol), _with_deadline(handler, seconds))

    async def _swarm_stream_handler(self, net_stream: INetStream) -> None:
        peer_id = net_stream.muxed_conn.peer_id
        with self._streams_in.slot(peer_id) as admitted:
            if not admitted:
                log.debug("%s opened more than %d streams: reset", peer_id, self._streams_in.limit)
                await _reset_quietly(net_stream)
                return
            try:
                await super()._swarm_stream_handler(net_stream)
            except Exception as error:
                log.warning(
                    "%s stream from %s failed: %r", net_stream.get_protocol(), peer_id, error
                )
                await _reset_quietly(net_stream)
                self._on_violation(peer_id.to_base58(), f"stream handler failed: {error!r}", 5.0)


async def _reset_quietly(stream: INetStream) -> None:
    """Reset a stream we are giving up on; it may already be gone, which is fine."""
    with contextlib.suppress(Exception):
        await stream.reset()


class _StreamQuota:
    """How many inbound streams each peer (or peer and protocol) holds open; at most `limit`."""

    def __init__(self, limit: int, on_refused: Callable[[], None]) -> None:
        assert limit > 0
        self.limit = limit
        self._on_refused = on_refused
        self._open: dict[Hashable, int] = {}

    @contextlib.contextmanager
    def slot(self, peer_id: Hashable) -> Iterator[bool]:
        """Yields whether the peer got a slot; a slot is held until the block ends."""
        active = self._open.get(peer_id, 0)
        if active >= self.limit:
            self._on_refused()
            yield False
            return
        self._open[peer_id] = active + 1
        try:
            yield True
        finally:
            left = self._open[peer_id] - 1
            if left:
                self._open[peer_id] = left
            else:
                del self._open[peer_id]


def _with_deadline(
    handler: Callable[[INetStream], Awaitable[None]], seconds: float
) -> Callable[[INetStream], Awaitable[None]]:
    async def bounded(stream: INetStream) -> None:
        with trio.move_on_after(seconds) as scope:
            await handler(stream)
        if scope.cancelled_caught:
            log.debug("%s stream over its %ss deadline: reset", stream.get_protocol(), seconds)
            await _reset_quietly(stream)

    return bounded


class _GuardedTasks:
    """A service manager whose `run_task` logs a failing task instead of failing the service."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run_task(
        self,
        async_fn: Callable[..., Awaitable[Any]],
        *args: Any,
        daemon: bool = False,
        name: str | None = None,
    ) -> None:
        label = name or getattr(async_fn, "__qualname__", repr(async_fn))

        async def guarded(*call_args: Any) -> None:
            try:
                await async_fn(*call_args)
            except Exception as error:
                log.warning("pubsub task %s failed: %r", label, error)

        self.inner.run_task(guarded, *args, daemon=daemon, name=label)


class _RequestResponse(RequestResponse):
    """Request/response in which one peer cannot hold a protocol's inbound slots.

    The library takes one of `max_concurrent_inbound` slots of a protocol (shared
    by all peers) for each inbound stream before reading its request, and holds
    it up to the handler timeout: one peer that opened 64 streams and sent
    nothing made every other peer's request on that protocol fail at once, for
    30 s at a time (block sync for the whole commune, from one connection).
    Here a peer's streams on one protocol beyond `per_peer` are reset before
    they take a slot.
    """

    def __init__(
        self,
        host: Any,
        per_peer: int,
        on_refused: Callable[[], None],
        on_violation: Violation,
    ) -> None:
        super().__init__(host)
        self._on_violation = on_violation
        self._streams_in = _StreamQuota(per_peer, on_refused)

    def _build_stream_handler(
        self, protocol_id: TProtocol
    ) -> Callable[[INetStream], Awaitable[None]]:
        inner = super()._build_stream_handler(protocol_id)

        async def handler(stream: INetStream) -> None:
            with self._streams_in.slot((stream.muxed_conn.peer_id, str(protocol_id))) as admitted:
                if not admitted:
                    await _reset_quietly(stream)
                    return
                await inner(stream)

        return handler

    async def _read_message(self, stream: INetStream, max_msg_size: int) -> bytes:
        """A length prefix that is not a varint broke the framing: the peer is cut off.

        The library logs it as an unexpected handler failure, with a traceback.
        """
        try:
            return await super()._read_message(stream, max_msg_size)
        except ParseError as error:
            peer_id = stream.muxed_conn.peer_id.to_base58()
            self._on_violation(peer_id, f"malformed request/response frame: {error}", BAN)
            raise RequestDecodeError(f"malformed frame: {error}") from None


class _Pubsub(Pubsub):
    """Pubsub that hands delivered messages to `deliver` instead of 32-slot channels."""

    def __init__(
        self,
        host: Any,
        router: GossipSub,
        *,
        deliver: Callable[[rpc_pb2.Message], None],
        on_malformed: Violation,
        on_stream_refused: Callable[[], None],
        outbound_queue: int,
        max_rpc_size: int,
        topics: Sequence[str],
        rpc_read_timeout: float,
    ) -> None:
        super().__init__(
            host,
            router,
            strict_signing=True,
            max_inbound_rpc_size=max_rpc_size,
            allowed_topics=frozenset(topics),
        )
        self._joined = frozenset(topics)
        self._rpc_read_timeout = rpc_read_timeout
        self._streams_in = _StreamQuota(MAX_PUBSUB_STREAMS_PER_PEER, on_stream_refused)
        self.peer_queues = _TunedQueues(outbound_queue, max_rpc_size)
        self.counter = time.time_ns()  # seqnos never repeat across restarts
        self._deliver = deliver
        self._on_malformed = on_malformed
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._records_sent: weakref.WeakKeyDictionary[INetStream, bytes] = (
            weakref.WeakKeyDictionary()
        )
        self._records_seen: weakref.WeakKeyDictionary[INetStream, tuple[bytes, float]] = (
            weakref.WeakKeyDictionary()
        )

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._deliver(publish_message)

    @property
    def manager(self) -> Any:
        """The service manager, with every short-lived task it starts guarded.

        Pubsub spawns a task per inbound message, per subscription and per peer
        event; one that raises fails the whole service, and with it the host
        and the daemon (a ban racing a dead stream did: `_teardown_if_connected`
        raised KeyError). Such tasks are per-event work: a failure is logged and
        costs that event only. Long-lived daemon tasks stay unguarded.
        """
        inner = self._manager
        guard = self.__dict__.get("_guard")
        if guard is None or guard.inner is not inner:
            guard = self.__dict__["_guard"] = _GuardedTasks(inner)
        return guard

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """The library raises on a message whose key or sender id does not parse; a penalty here."""
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as error:
            reason = f"malformed pubsub message: {error!r}"
            self._on_malformed(msg_forwarder.to_base58(), reason, 1.0)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        """The library's version deletes the peer after an await, racing `_handle_dead_peer`."""
        stream = self.peers.get(peer_id)
        if stream is not None:
            await _reset_quietly(stream)
            self._handle_dead_peer(peer_id)
        self._forget_all_subscriptions(peer_id)

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """The library's read loop, with each RPC trimmed to what /meshsub/1.1.0 needs.

        As in py-libp2p 0.8.1, less its metrics events; differences: a length
        prefix that is not a varint and an RPC above the size limit cost the peer
        its connection (`on_malformed`), and every RPC goes through
        `_trim_rpc` before anything acts on it; an RPC must arrive whole within
        `rpc_read_timeout` of its first byte (the library waits for the rest
        for as long as the stream lives, holding what came so far).
        """
        peer_id = stream.muxed_conn.peer_id
        try:
            while self.manager.is_running:
                first = await stream.read(1)  # peers may be idle between RPCs
                if not first:
                    return
                with trio.fail_after(self._rpc_read_timeout):
                    incoming = await read_varint_prefixed_bytes_limited(
                        _Pushback(first, stream), self.max_inbound_rpc_size
                    )
                rpc = rpc_pb2.RPC()
                rpc.ParseFromString(incoming)
                if rpc.HasField("senderRecord"):
                    if not self._consume_record(stream, rpc):
                        log.debug("invalid signed peer record from %s: RPC ignored", peer_id)
                        continue
                    rpc.ClearField("senderRecord")  # GossipSub would verify it again
                excess = _trim_rpc(rpc, self._joined, self.max_subscriptions_per_rpc)
                if excess:
                    self._on_malformed(peer_id.to_base58(), f"oversized pubsub RPC: {excess}", 5.0)
                for msg in rpc.publish:
                    if self._is_subscribed_to_msg(msg) and self.manager.is_running:
                        self.manager.run_task(self.push_msg, peer_id, msg)
                for sub in rpc.subscriptions:
                    self.handle_subscription(peer_id, sub)
                if rpc.HasField("control"):
                    await self.router.handle_rpc(rpc, peer_id)
        except ParseError as error:
            self._on_malformed(peer_id.to_base58(), f"malformed pubsub frame: {error}", BAN)
            raise
        except trio.TooSlowError:
            # Half an RPC, then silence: the stream's reader and buffer are freed.
            self._on_malformed(peer_id.to_base58(), "pubsub RPC stalled midway", 1.0)
            await _reset_quietly(stream)
            self._handle_dead_peer(peer_id)
        except MessageTooLarge as error:
            self._on_malformed(peer_id.to_base58(), f"oversized pubsub frame: {error}", BAN)
            await _reset_quietly(stream)
            self._handle_dead_peer(peer_id)
        except (StreamEOF, StreamError, IOException, RawConnError) as error:
            log.debug("pubsub stream from %s ended: %r", peer_id, error)

    def _consume_record(self, stream: INetStream, rpc: rpc_pb2.RPC) -> bool:
        """Verify and store the sender's signed peer record, unless this stream just did.

        The same record is re-verified after `RECORD_REFRESH` seconds, which
        keeps its entry in the peerstore (2 h TTL) alive.
        """
        record = rpc.senderRecord
        now = time.monotonic()
        seen = self._records_seen.get(stream)
        if seen is not None and seen[0] == record and now - seen[1] < RECORD_REFRESH:
            return True
        if not maybe_consume_signed_record(rpc, self.host, stream.muxed_conn.peer_id):
            return False
        self._records_seen[stream] = (record, now)
        return True

    async def stream_handler(self, stream: INetStream) -> None:
        """Read one peer's pubsub stream; whatever it sends, only that stream fails.

        The library's reader lets a protobuf DecodeError (and anything else it
        does not expect) escape into the swarm's nursery, which takes the whole
        host down: six bytes of garbage from any connected peer would stop the
        daemon. Here such a stream is reset and its peer reported.
        """
        peer_id = stream.muxed_conn.peer_id
        with self._streams_in.slot(peer_id) as admitted:
            if not admitted:
                # A peer needs one; a few more only while a reconnect overlaps.
                await _reset_quietly(stream)
                return
            try:
                await super().stream_handler(stream)
            except Exception as error:
                log.warning("pubsub stream from %s dropped: %r", peer_id, error)
                await _reset_quietly(stream)
                self._handle_dead_peer(peer_id)
                self._on_malformed(
                    peer_id.to_base58(), f"malformed pubsub stream: {error!r}", BAN
                )

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Write one RPC whole, or reset the stream; its signed peer record once per stream.

        py-libp2p attaches this node's signed peer record to every RPC it sends
        (~200 bytes, and an Ed25519 verification plus a peerstore update at the
        receiver, twice per control RPC): here a stream carries it on its first
        RPC and again only if it changes. Receivers keep it per stream (see
        `continuously_read_stream`).

        Two writers share each peer's stream: the per-peer send queue and
        GossipSub's direct writes (flushing pending and recent messages). Yamux
        serializes frames of at most 64 KiB, not messages, so two large RPCs
        could interleave and the reader would see garbage; a per-stream lock
        keeps each message contiguous. A write that fails midway (Yamux gives
        up after 5 s without window) leaves part of a message on the stream, so
        the stream is reset rather than reused.
        """
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            try:
                record = rpc_msg.senderRecord if rpc_msg.HasField("senderRecord") else b""
                if record and self._records_sent.get(stream) == record:
                    # Sent on this stream already: the peer keeps it for the stream's life.
                    # Cleared and restored with no await between (RPCs are shared by peers).
                    rpc_msg.ClearField("senderRecord")
                    try:
                        data = rpc_msg.SerializeToString()
                    finally:
                        rpc_msg.senderRecord = record
                else:
                    data = rpc_msg.SerializeToString()
                await stream.write(encode_uvarint(len(data)) + data)
                if record:
                    self._records_sent[stream] = record
                return True
            except (StreamClosed, StreamReset):
                self._handle_dead_peer(stream.muxed_conn.peer_id)
                return False
            except BaseException as error:
                peer_id = stream.muxed_conn.peer_id
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(1.0),
                    contextlib.suppress(Exception),
                ):
                    await stream.reset()
                self._handle_dead_peer(peer_id)
                if not isinstance(error, Exception):
                    raise  # cancellation goes on
                log.debug("write to %s failed, stream reset: %r", peer_id, error)
                return False


class _Notifee(INotifee):
    def __init__(self, net: Network) -> None:
        self._net = net

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._net._on_connected(conn.muxed_conn.peer_id.to_base58())

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._net._on_disconnected(conn.muxed_conn.peer_id.to_base58())

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class _FramedCodec(BytesCodec):
    """Prefixes every request and reply with one marker byte.

    py-libp2p's framing hangs on an empty frame (`read_exactly(stream, 0)` waits
    for data that never comes), so no frame we send may be empty.
    """

    def encode_request(self, request: bytes) -> bytes:
        return FRAME_MARKER + bytes(request)

    def decode_request(self, payload: bytes) -> bytes:
        return _unframe(payload)

    def encode_response(self, response: bytes) -> bytes:
        return FRAME_MARKER + bytes(response)

    def decode_response(self, payload: bytes) -> bytes:
        return _unframe(payload)


FRAME_MARKER = b"\x00"


def _unframe(payload: bytes) -> bytes:
    if payload[:1] != FRAME_MARKER:
        raise ValueError("frame without marker")
    return bytes(payload[1:])


class _Refused(RequestResponseError):
    """Raised inside an inbound handler to reset the stream without a traceback."""


class Network:
    """One libp2p host for one member: gossip topics, request/response, peer management.

    Construct, then `await nursery.start(net.run)`; `run` returns only when
    cancelled, after closing every connection. Subscribe to topics (before or
    after starting) with `subscribe`; publish with `publish`; call peers with
    `request`. Messages this node publishes are not delivered back to it.

    A topic validator is called with (origin peer id, data) before a message is
    delivered or forwarded; when it returns False (or raises), the message goes
    no further and the peer that forwarded it is penalized
    (`limits.invalid_message_penalty`; banned at `limits.ban_threshold`).
    Request handlers get (requesting peer id, request) and return the reply;
    an exception resets the stream, which the caller sees as "reset".

    The addresses this node gives peers (identify, its signed peer record, peer
    exchange, `listen_addrs`) are `announce` when given (for a node behind NAT
    or a proxy: the addresses others can reach), else the bound addresses with
    a wildcard host (0.0.0.0, ::) replaced by each address of the machine's
    interfaces that are up: a wildcard is where to listen, never where to dial.
    Addresses peers say they observed for us are not advertised.
    """

    def __init__(
        self,
        seed: bytes,
        listen: Sequence[str],
        bootstrap: Sequence[str] = (),
        topics: Sequence[str] = (),
        validators: Mapping[str, Validator] | None = None,
        request_handlers: Mapping[str, RequestHandler] | None = None,
        *,
        limits: NetLimits | None = None,
        peer_exchange: bool = True,
        rng: random.Random | None = None,
        announce: Sequence[str] = (),
    ) -> None:
        if len(seed) != 32:
            raise ValueError("the member seed is 32 bytes")
        self.limits = limits or NetLimits()
        self._key_pair = create_new_key_pair(bytes(seed))
        self._peer_id = ID.from_pubkey(self._key_pair.public_key)
        try:
            self._listen = [multiaddr.Multiaddr(a) for a in listen]
        except Exception as error:
            raise ValueError(f"bad listen address in {list(listen)}: {error}") from None
        self._announce = [_announce_addr(a, self.peer_id) for a in announce]
        self._topics = list(dict.fromkeys(topics))
        self._validators = dict(validators or {})
        unknown = set(self._validators) - set(self._topics)
        if unknown:
            raise ValueError(f"validators for topics not joined: {sorted(unknown)}")
        self._handlers = dict(request_handlers or {})
        if PEER_EXCHANGE_PROTOCOL in self._handlers:
            raise ValueError(f"{PEER_EXCHANGE_PROTOCOL} is reserved")
        self._peer_exchange = peer_exchange
        self._book = PeerBook(
            max_targets=self.limits.max_peers,
            backoff_initial=self.limits.backoff_initial,
            backoff_max=self.limits.backoff_max,
            ban_threshold=self.limits.ban_threshold,
            ban_seconds=self.limits.ban_seconds,
            score_decay_per_second=self.limits.score_decay_per_second,
            max_failures_discovered=self.limits.max_failures_discovered,
            rng=rng or random.Random(secrets.randbits(64)),
        )
        self._bootstrap: list[tuple[str, str]] = []
        for addr in bootstrap:
            peer_id, transport = split_p2p_addr(addr)
            if peer_id != self.peer_id:
                self._bootstrap.append((peer_id, transport))
        self._channels: dict[
            str,
            tuple[
                trio.MemorySendChannel[tuple[str, bytes]],
                trio.MemoryReceiveChannel[tuple[str, bytes]],
            ],
        ] = {
            t: trio.open_memory_channel[tuple[str, bytes]](self.limits.subscription_queue)
            for t in self._topics
        }
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "published",
                "delivered",
                "dropped_subscriber_slow",
                "rejected_invalid",
                "requests_served",
                "requests_refused",
                "dials_failed",
                "bans",
                "streams_refused",
            ),
            0,
        )
        self._host: BasicHost | None = None
        self._pubsub: _Pubsub | None = None
        self._router: GossipSub | None = None
        self._rr: RequestResponse | None = None
        self._nursery: trio.Nursery | None = None
        self._wake_dialer = trio.Event()
        self._changed = trio.Event()
        self._inbound: dict[str, int] = {}
        self._outbound: dict[str, trio.Semaphore] = {}
        self._listen_addrs: list[str] = []
        self._swarm: Any = None

    # -- identity and state --

    @property
    def peer_id(self) -> str:
        return self._peer_id.to_base58()

    @property
    def listen_addrs(self) -> list[str]:
        """Advertised addresses with /p2p/<peer id>, known once `run` has started."""
        return list(self._listen_addrs)

    @property
    def bound_addrs(self) -> list[str]:
        """Addresses the listener bound (a wildcard stays a wildcard), known once running."""
        if self._swarm is None:
            return []
        return [str(a) for listener in self._swarm.listeners.values() for a in listener.get_addrs()]

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def peers(self) -> list[PeerInfo]:
        """Peers with at least one open connection, sorted by peer id."""
        if self._host is None:
            return []
        now = trio.current_time()
        out = []
        for peer_id in sorted(self._connected()):
            out.append(
                PeerInfo(peer_id, tuple(self._known_addrs(peer_id)), self._book.score(peer_id, now))
            )
        return out

    def banned(self) -> list[str]:
        return self._book.banned(trio.current_time()) if self.running else []

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to `topic`."""
        if self._pubsub is None:
            return []
        return sorted(p.to_base58() for p in self._pubsub.peer_topics.get(topic, set()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers this node forwards `topic` messages to directly."""
        if self._router is None:
            return []
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, set()))

    async def wait_for_peers(self, count: int) -> None:
        """Return once at least `count` peers are connected; callers bound it with a timeout."""
        while len(self._connected()) < count:
            await self._changed.wait()

    # -- gossip --

    def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[tuple[str, bytes]]:
        """(origin peer id, data) of every valid message on `topic`, for one consumer.

        The channel holds `limits.subscription_queue` messages; past that, new
        messages are dropped and counted in `stats()["dropped_subscriber_slow"]`.
        """
        if topic not in self._channels:
            raise NetworkError("unknown_topic", topic)
        return self._channels[topic][1]

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic`; best effort, but never silently oversized or invalid."""
        if topic not in self._channels:
            raise NetworkError("unknown_topic", topic)
        if len(data) > self.limits.max_message_size:
            raise NetworkError("too_large", f"{len(data)} > {self.limits.max_message_size} bytes")
        validator = self._validators.get(topic)
        if validator is not None and not _safe_validate(validator, self.peer_id, data):
            raise ValueError(f"own message rejected by the {topic!r} validator")
        if self._pubsub is None:
            raise NetworkError("closed")
        await self._pubsub.publish(topic, bytes(data))
        self._stats["published"] += 1

    # -- request / response --

    async def request(
        self,
        peer_id: str,
        protocol_id: str,
        data: bytes,
        timeout: float = 10.0,
        max_response_size: int | None = None,
    ) -> bytes:
        """Send one request on a fresh stream and return the reply; `NetworkError` otherwise.

        Dials the peer if it is not connected and its address is known. At most
        `limits.max_concurrent_requests_per_peer` requests to one peer run at once;
        more wait their turn (inside `timeout`).
        """
        if self._rr is None:
            raise NetworkError("closed")
        try:
            pid = ID.from_base58(peer_id)
        except ValueError:
            raise NetworkError("bad_peer_id", repr(peer_id)) from None
        if self._book.is_banned(peer_id, trio.current_time()):
            raise NetworkError("banned", peer_id)
        if len(data) > self.limits.max_request_size:
            raise NetworkError("too_large", f"request of {len(data)} bytes")
        limit = max_response_size or self.limits.max_response_size
        config = RequestResponseConfig(
            timeout=timeout,
            max_request_size=self.limits.max_request_size + len(FRAME_MARKER),
            max_response_size=min(limit, self.limits.max_response_size) + len(FRAME_MARKER),
        )
        was_connected = peer_id in self._connected()
        semaphore = self._outbound.setdefault(
            peer_id, trio.Semaphore(self.limits.max_concurrent_requests_per_peer)
        )
        try:
            with trio.fail_after(timeout):
                async with semaphore:
                    return await self._rr.send_request(
                        pid, [TProtocol(protocol_id)], bytes(data), _FramedCodec(), config
                    )
        except (trio.TooSlowError, RequestTimeoutError):
            raise NetworkError("timeout", f"{protocol_id} to {peer_id} after {timeout}s") from None
        except MessageTooLargeError as error:
            raise NetworkError("too_large", str(error)) from None
        except ProtocolNotSupportedError:
            raise NetworkError("unsupported", f"{peer_id} does not speak {protocol_id}") from None
        except RequestResponseError as error:
            reason = "reset" if was_connected or peer_id in self._connected() else "unreachable"
            raise NetworkError(reason, f"{protocol_id} to {peer_id}: {error}") from None

    # -- peers --

    def add_peer(self, addr: str) -> None:
        """Keep a connection to the peer at '/.../p2p/<id>' (reconnecting as needed)."""
        peer_id, transport = split_p2p_addr(addr)
        if peer_id == self.peer_id:
            return
        if not self.running:
            self._bootstrap.append((peer_id, transport))
            return
        self._book.add_target(peer_id, [transport], persistent=True, now=self._now())
        self._wake_dialer.set()

    def penalize(self, peer_id: str, reason: str, weight: float = 1.0) -> None:
        """Count misbehaviour; past `limits.ban_threshold` the peer is cut off and refused."""
        if peer_id == self.peer_id or not self.running:
            return
        log.info("penalize %s (%s, +%s)", peer_id, reason, weight)
        if self._book.penalize(peer_id, weight, reason, trio.current_time()):
            self._ban(peer_id)

    def _ban(self, peer_id: str) -> None:
        self._stats["bans"] += 1
        log.warning(
            "ban %s for %ss: %s", peer_id, self.limits.ban_seconds, self._book.reasons(peer_id)
        )
        pid = ID.from_base58(peer_id)
        if self._pubsub is not None:
            self._pubsub.add_to_blacklist(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, pid: ID) -> None:
        if self._host is not None:
            try:
                await self._host.disconnect(pid)
            except Exception as error:  # the connection may already be gone
                log.debug("disconnect %s: %s", pid, error)
        self._signal_change()

    # -- running --

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join topics, dial bootstrap peers; return only when cancelled."""
        if self._nursery is not None:
            raise RuntimeError("Network.run is already running")
        host = self._build_host()
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=self.limits.gossip_degree,
            degree_low=self.limits.gossip_degree_low,
            degree_high=self.limits.gossip_degree_high,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=1,
            gossip_window=3,
            gossip_history=5,
            adaptive_gossip_enabled=False,
            eclipse_protection_enabled=False,  # IP diversity means nothing on a devnet
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=self.limits.max_messages_per_topic_per_second,
            max_pending_messages_per_peer=min(self.limits.outbound_queue, 1024),
        )
        pubsub = _Pubsub(
            host,
            router,
            deliver=self._deliver,
            on_malformed=self._on_violation,
            on_stream_refused=self._on_stream_refused,
            outbound_queue=self.limits.outbound_queue,
            max_rpc_size=self.limits.max_message_size + RPC_OVERHEAD,
            topics=self._topics,
            rpc_read_timeout=self.limits.rpc_read_timeout,
        )
        rr = _RequestResponse(
            host,
            self.limits.max_concurrent_requests_per_peer,
            self._count_refused,
            self._on_violation,
        )
        for protocol_id, handler in self._handlers.items():
            rr.set_handler(
                TProtocol(protocol_id),
                self._wrap_handler(handler),
                _FramedCodec(),
                self._inbound_config(),
            )
        rr.set_handler(
            TProtocol(PEER_EXCHANGE_PROTOCOL),
            self._wrap_handler(self._serve_peer_exchange),
            _FramedCodec(),
            self._inbound_config(),
        )
        for topic, validator in self._validators.items():
            pubsub.set_topic_validator(topic, self._wrap_validator(topic, validator), False)
        host.get_network().register_notifee(_Notifee(self))
        try:
            async with host.run(listen_addrs=self._listen):
                # Our dialer owns reconnection (see the module docstring).
                await host.get_network().auto_connector.stop()  # type: ignore[attr-defined]
                self._listen_addrs = [str(a) for a in host.get_addrs()]
                async with background_trio_service(pubsub), background_trio_service(router):
                    await pubsub.wait_until_ready()
                    for topic in self._topics:
                        await pubsub.subscribe(topic)
                    async with trio.open_nursery() as nursery:
                        self._host, self._pubsub, self._router, self._rr = host, pubsub, router, rr
                        self._nursery = nursery
                        now = self._now()
                        for peer_id, addr in self._bootstrap:
                            self._book.add_target(peer_id, [addr], persistent=True, now=now)
                        nursery.start_soon(self._dialer)
                        nursery.start_soon(self._maintenance)
                        log.info("network up: %s", " ".join(self._listen_addrs))
                        task_status.started()
                        await trio.sleep_forever()
        finally:
            self._nursery = None
            self._host = self._pubsub = self._router = self._rr = None
            self._signal_change()
            with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                await _close_swarm(host.get_network())

    def _build_host(self) -> BasicHost:
        limits = self.limits
        swarm = self._swarm = new_swarm(
            key_pair=self._key_pair,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    self._key_pair, noise_privkey=create_new_x25519_key_pair().private_key
                )
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=self._listen,
            retry_config=RetryConfig(max_retries=0),
            connection_config=ConnectionConfig(
                max_connections=4 * limits.max_peers,
                min_connections=0,
                low_watermark=2 * limits.max_peers,
                high_watermark=4 * limits.max_peers,
                dial_timeout=limits.dial_timeout,
            ),
            resource_manager=new_resource_manager(
                limits=ResourceLimits(
                    max_connections=4 * limits.max_peers,
                    max_streams=limits.max_peers
                    * (limits.max_concurrent_inbound_per_protocol + 16),
                ),
                connection_limits=ConnectionLimits(
                    max_pending_inbound=limits.max_peers,
                    max_pending_outbound=limits.max_peers,
                    max_established_inbound=2 * limits.max_peers,
                    max_established_outbound=2 * limits.max_peers,
                    max_established_per_peer=4,
                    max_established_total=4 * limits.max_peers,
                ),
            ),
        )
        upgrader = swarm.upgrader  # type: ignore[attr-defined]
        upgrader.muxer_multistream = _MuxerMultistream(
            self._on_violation, upgrader.muxer_multistream.negotiate_timeout
        )
        return _Host(
            network=swarm,
            negotiate_timeout=10,
            max_streams_per_peer=limits.max_streams_per_peer,
            deadlines={IDENTIFY_PUSH_PROTOCOL: limits.handler_timeout},
            on_violation=self._on_violation,
            on_stream_refused=self._on_stream_refused,
            addrs_factory=self._advertised,
        )

    def _on_stream_refused(self) -> None:
        """A peer opened a stream past its quota; it was reset (a reconnect may overlap)."""
        self._stats["streams_refused"] += 1

    def _advertised(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        """`announce`, else the bound addresses made concrete (see the class docstring).

        `candidates` (bound plus observed addresses) is ignored: the bound ones
        are read from the listeners, and observed ones are not ours to trust.
        """
        if self._announce:
            return list(self._announce)
        out: dict[str, multiaddr.Multiaddr] = {}
        for text in self.bound_addrs:
            for addr in _concrete_addrs(text):
                out.setdefault(addr, multiaddr.Multiaddr(addr))
        return list(out.values())

    def _count_refused(self) -> None:
        self._stats["requests_refused"] += 1

    def _inbound_config(self) -> RequestResponseConfig:
        return RequestResponseConfig(
            timeout=self.limits.handler_timeout,
            max_request_size=self.limits.max_request_size + len(FRAME_MARKER),
            max_response_size=self.limits.max_response_size + len(FRAME_MARKER),
            max_concurrent_inbound=self.limits.max_concurrent_inbound_per_protocol,
        )

    # -- callbacks from libp2p --

    def _deliver(self, msg: rpc_pb2.Message) -> None:
        origin = ID(msg.from_id)
        if origin == self._peer_id:
            return
        item = (origin.to_base58(), bytes(msg.data))
        for topic in msg.topicIDs:
            pair = self._channels.get(topic)
            if pair is None:
                continue
            try:
                pair[0].send_nowait(item)
                self._stats["delivered"] += 1
            except trio.WouldBlock:
                self._stats["dropped_subscriber_slow"] += 1
                if self._stats["dropped_subscriber_slow"] % 1000 == 1:
                    log.warning("subscriber of %s too slow: messages dropped", topic)
            except trio.BrokenResourceError:
                pass  # the consumer closed its channel

    def _on_violation(self, peer_id: str, reason: str, weight: float) -> None:
        """A peer broke the wire rules below any validator; `BAN` cuts it off at once.

        Breaking the framing of Yamux or pubsub is never an honest peer's doing
        (this is one codebase); an oversized but well-formed RPC costs less.
        """
        self.penalize(peer_id, reason, self.limits.ban_threshold if weight == BAN else weight)

    def _wrap_validator(
        self, topic: str, validator: Validator
    ) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if _safe_validate(validator, ID(msg.from_id).to_base58(), bytes(msg.data)):
                return True
            self._stats["rejected_invalid"] += 1
            if forwarder != self._peer_id:
                self.penalize(
                    forwarder.to_base58(),
                    f"invalid message on {topic}",
                    self.limits.invalid_message_penalty,
                )
            return False

        return validate

    def _wrap_handler(
        self, handler: RequestHandler
    ) -> Callable[[bytes, RequestContext], Awaitable[bytes]]:
        async def handle(request: bytes, context: RequestContext) -> bytes:
            peer_id = context.peer_id.to_base58()
            if self._book.is_banned(peer_id, trio.current_time()):
                self._stats["requests_refused"] += 1
                raise _Refused(f"{peer_id} is banned")
            active = self._inbound.get(peer_id, 0)
            if active >= self.limits.max_concurrent_requests_per_peer:
                self._stats["requests_refused"] += 1
                raise _Refused(f"{peer_id} has {active} requests in flight")
            self._inbound[peer_id] = active + 1
            try:
                reply = await handler(peer_id, request)
            except RequestResponseError:
                raise
            except Exception as error:
                log.warning("handler %s failed for %s: %r", context.protocol_id, peer_id, error)
                raise _Refused(f"handler failed: {error!r}") from None
            finally:
                left = self._inbound[peer_id] - 1
                if left:
                    self._inbound[peer_id] = left
                else:
                    del self._inbound[peer_id]
            self._stats["requests_served"] += 1
            return reply

        return handle

    def _on_connected(self, peer_id: str) -> None:
        self._signal_change()
        now = self._now()
        target = self._book.targets.get(peer_id)
        if target is not None and not target.dialing:
            self._book.dial_succeeded(peer_id)  # it dialled us: its backoff starts afresh
        if self._book.is_banned(peer_id, now) and self._nursery is not None:
            self._nursery.start_soon(self._disconnect, ID.from_base58(peer_id))
        elif self._peer_exchange and self._nursery is not None:
            self._nursery.start_soon(self._exchange_peers, peer_id)

    def _on_disconnected(self, peer_id: str) -> None:
        self._signal_change()
        # Harmless if another connection survives: the dialer skips connected peers.
        self._book.disconnected(peer_id, self._now())
        self._wake_dialer.set()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- background tasks --

    async def _dialer(self) -> None:
        limiter = trio.CapacityLimiter(self.limits.max_concurrent_dials)
        async with trio.open_nursery() as nursery:
            while True:
                now = self._now()
                connected = self._connected()
                for peer_id in self._book.due(now, connected):
                    nursery.start_soon(self._dial, peer_id, limiter)
                wakeup = self._book.next_wakeup(now, connected)
                delay = 5.0 if wakeup is None else min(5.0, max(0.0, wakeup - now))
                with trio.move_on_after(delay):
                    await self._wake_dialer.wait()
                self._wake_dialer = trio.Event()

    async def _dial(self, peer_id: str, limiter: trio.CapacityLimiter) -> None:
        assert self._host is not None
        host = self._host
        ok = False
        try:
            async with limiter:
                pid = ID.from_base58(peer_id)
                addr = multiaddr.Multiaddr(self._book.addr_for_attempt(peer_id))
                swarm = host.get_network()
                swarm.unblock_peer(pid)  # type: ignore[attr-defined]
                host.get_peerstore().clear_addrs(pid)
                with trio.fail_after(self.limits.dial_timeout):
                    await host.connect(Libp2pPeerInfo(pid, [addr]))
                ok = True
        except Exception as error:  # any failure to connect is retried with backoff
            log.debug("dial %s failed: %r", peer_id, error)
            self._stats["dials_failed"] += 1
        finally:
            if ok:
                self._book.dial_succeeded(peer_id)
            else:
                self._book.dial_failed(peer_id, self._now())
            self._wake_dialer.set()

    async def _maintenance(self) -> None:
        next_exchange = self._now() + self.limits.peer_exchange_interval
        while True:
            await trio.sleep(1.0)
            now = self._now()
            for peer_id in self._book.expire(now):
                log.info("ban on %s lifted", peer_id)
                if self._pubsub is not None:
                    self._pubsub.remove_from_blacklist(ID.from_base58(peer_id))
                self._wake_dialer.set()
            if self._router is not None:
                seen = self._router.equivocation_detection
                for key in list(seen)[: max(0, len(seen) - 256)]:
                    del seen[key]
            connected = self._connected()
            for peer_id in connected - self._book.targets.keys():
                # Peers that dialled us become targets too, so that we redial them if
                # the link drops, whichever side it was that dialled first.
                addrs = [a for a in self._known_addrs(peer_id) if "/tcp/" in a]
                self._book.add_target(peer_id, addrs, persistent=False, now=now)
            for peer_id in [p for p, s in self._outbound.items() if p not in connected]:
                if self._outbound[peer_id].value == self.limits.max_concurrent_requests_per_peer:
                    del self._outbound[peer_id]
            if self._peer_exchange and connected and now >= next_exchange:
                next_exchange = now + self.limits.peer_exchange_interval
                peer_id = sorted(connected)[int(now) % len(connected)]
                assert self._nursery is not None
                self._nursery.start_soon(self._exchange_peers, peer_id)

    async def _serve_peer_exchange(self, requester: str, request: bytes) -> bytes:
        """This node's own addresses first, then its connected peers' (not the requester's)."""
        own = [a.rsplit("/p2p/", 1)[0] for a in self._listen_addrs if "/tcp/" in a]
        entries = [[self.peer_id, own[:4]]]
        for peer_id in sorted(self._connected()):
            if peer_id == requester or self._book.is_banned(peer_id, trio.current_time()):
                continue
            addrs = [
                a for a in self._known_addrs(peer_id) if "/tcp/" in a and "p2p-circuit" not in a
            ]
            if addrs:
                entries.append([peer_id, addrs[:4]])
        return encode(entries[: self.limits.max_peers])

    async def _exchange_peers(self, peer_id: str) -> None:
        try:
            reply = await self.request(
                peer_id,
                PEER_EXCHANGE_PROTOCOL,
                b"",
                timeout=5.0,
                max_response_size=MAX_PEER_EXCHANGE_REPLY,
            )
            entries = decode(reply, MAX_PEER_EXCHANGE_REPLY)
            if not isinstance(entries, list):
                raise DecodeError("peer list is not a list")
            added = 0
            now = self._now()
            for entry in entries[: self.limits.max_peers]:
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                    raise DecodeError("malformed peer entry")
                other, addrs = entry
                if other == self.peer_id or not isinstance(addrs, list):
                    continue
                ID.from_base58(other)
                good = [str(multiaddr.Multiaddr(a)) for a in addrs[:4] if isinstance(a, str)]
                added += self._book.add_target(other, good, persistent=False, now=now)
            if added:
                self._wake_dialer.set()
        except NetworkError as error:
            log.debug("peer exchange with %s: %s", peer_id, error)
        except (DecodeError, ValueError) as error:
            self.penalize(peer_id, f"malformed peer exchange reply: {error}")

    # -- helpers --

    def _now(self) -> float:
        return trio.current_time()

    def _connected(self) -> set[str]:
        if self._host is None:
            return set()
        swarm = self._host.get_network()
        return {
            p.to_base58()
            for p, conns in swarm.connections.items()  # type: ignore[attr-defined]
            if any(not c.is_closed for c in conns)
        }

    def _known_addrs(self, peer_id: str) -> list[str]:
        if self._host is None:
            return []
        try:
            return [str(a) for a in self._host.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # unknown or expired in the peerstore
            return []


def _announce_addr(text: str, peer_id: str) -> multiaddr.Multiaddr:
    """An address to advertise: TCP, without /p2p or with this node's own id."""
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
    except Exception as error:
        raise ValueError(f"bad announce address {text!r}: {error}") from None
    if "tcp" not in names:
        raise ValueError(f"announce address {text!r} has no /tcp/<port>")
    if "p2p" in names:
        if addr.value_for_protocol("p2p") != peer_id:
            raise ValueError(f"announce address {text!r} names another peer id")
        addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}"))
    return addr


_WILDCARDS = {"/ip4/0.0.0.0/": socket.AF_INET, "/ip6/::/": socket.AF_INET6}


def _concrete_addrs(text: str) -> list[str]:
    """`text` with a wildcard host replaced by each address of the interfaces that are up.

    Loopback last, link-local never (not dialable without a zone). Nothing when
    the machine has no such address: advertising the wildcard would send peers
    to themselves.
    """
    prefix = next((w for w in _WILDCARDS if text.startswith(w)), None)
    if prefix is None:
        return [text]
    family, rest = _WILDCARDS[prefix], text[len(prefix) :]
    stats = psutil.net_if_stats()
    found: list[tuple[bool, str]] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for addr in addrs:
            ip = addr.address.split("%", 1)[0]
            if addr.family != family or ip.startswith(("169.254.", "fe80:")):
                continue
            found.append((ipaddress.ip_address(ip).is_loopback, ip))
    proto = "ip4" if family == socket.AF_INET else "ip6"
    return [f"/{proto}/{ip}/{rest}" for _, ip in sorted(set(found))]


async def _close_swarm(swarm: Any) -> None:
    """Close what the swarm's own shutdown skips when it is cancelled.

    Its teardown awaits inside a cancelled scope, so the first await raises and
    the rest is skipped: after `run` returned, the TCP listener went on
    accepting connections and answering multistream-select (the listener lives
    in a system task), and connections stayed open until collected.
    """
    for conns in list(swarm.connections.values()):
        for conn in list(conns):
            with contextlib.suppress(Exception):
                await conn.muxed_conn.secured_conn.close()
    for listener in list(swarm.listeners.values()):
        with contextlib.suppress(Exception):
            await listener.close()


def _safe_validate(validator: Validator, peer_id: str, data: bytes) -> bool:
    try:
        return validator(peer_id, data) is True
    except Exception as error:
        log.warning("validator raised %r: message rejected", error)
        return False
