"""Hostile bytes at every layer under a real `Network`: it stays up, bounded, cuts off whom it can.

The victim is `tests/net_peer.py` in its own process, so a crash is an exit, as in
a daemon. The attacker is this test process: raw TCP, a Noise session made with
py-libp2p's own handshake, raw Yamux frames over it, and in-process `Network`s
whose hosts open protocol streams and write whatever the test says. After each
group of probes an honest peer (also in this process, connected before the
probes) must still get answers from the victim, and at the end the victim must
shut down cleanly with no traceback in its log.

What each probe found before it was fixed is in node/net.py (the quirk list and
the docstrings of `_YamuxWatch`, `_trim_rpc`, `_RequestResponse` and `_Host`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.pb import identify_pb2
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.transport.upgrader import TransportUpgrader

from node.net import PEER_EXCHANGE_PROTOCOL, Network, peer_id_from_public_key
from protocol.crypto import SigningKey
from tests.test_net import Cluster, Peer, cluster

TOPIC = "wire"
MESHSUB = "/meshsub/1.1.0"
ECHO = "/t/echo/1"
MiB = 1024 * 1024


# -- wire encodings, written out so that they can be broken --


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def prefixed(data: bytes) -> bytes:
    return varint(len(data)) + data


def multistream_line(text: str) -> bytes:
    return prefixed(text.encode() + b"\n")


def rpc(**fields: Any) -> bytes:
    return prefixed(rpc_pb2.RPC(**fields).SerializeToString())


def yamux_frame(kind: int, flags: int, stream_id: int, length: int, version: int = 0) -> bytes:
    return struct.pack(">BBHII", version, kind, flags, stream_id, length)


DATA, WINDOW_UPDATE, PING = 0, 1, 2
SYN, ACK, RST = 1, 2, 8


def seed(name: str) -> bytes:
    return SigningKey.derive("wire-test", name).seed()


def peer_id_of(name: str) -> str:
    return peer_id_from_public_key(SigningKey.derive("wire-test", name).public)


async def tcp(victim: Peer) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", victim.port)


async def secure(victim: Peer, name: str) -> Any:
    """A Noise session to the victim under the identity `name`, before any muxer."""
    key_pair = create_new_key_pair(seed(name))
    raw = RawConnection(TrioTCPStream(await tcp(victim)), True)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    upgrader = TransportUpgrader({TProtocol(NOISE_PROTOCOL_ID): noise}, {})
    return await upgrader.upgrade_security(raw, True, ID.from_base58(victim.peer_id))


async def yamux(victim: Peer, name: str) -> Any:
    """A Noise session with Yamux agreed on: what follows is raw Yamux frames."""
    conn = await secure(victim, name)
    await MultiselectClient().select_one_of(
        [TProtocol("/yamux/1.0.0")], MultiselectCommunicator(conn), 10
    )
    return conn


async def write_until_cut_off(conn: Any, chunks: list[bytes]) -> int:
    """Write the chunks in order; how many went out before the peer closed the connection."""
    for sent, chunk in enumerate(chunks):
        try:
            await conn.write(chunk)
        except Exception:
            return sent
    return len(chunks)


# -- the cast --


class Scene:
    """The victim process, an honest in-process peer, and in-process attackers."""

    def __init__(self, victim: Peer, honest: Network, nursery: trio.Nursery) -> None:
        self.victim = victim
        self.honest = honest
        self.nursery = nursery

    async def check_alive(self) -> dict[str, Any]:
        """The victim answers its test driver and serves the honest peer's requests."""
        info = await self.victim.call("info")
        assert self.honest.peer_id in info["peers"], info
        reply = await self.honest.request(self.victim.peer_id, ECHO, b"still here", timeout=20)
        assert reply == b"still here"
        return info

    async def wait_banned(self, name: str) -> None:
        await self.victim.call("wait_banned", peer=peer_id_of(name), timeout=20)

    @asynccontextmanager
    async def attacker(self, name: str) -> AsyncIterator[Network]:
        """An in-process `Network` connected to the victim, whose host the probe abuses."""
        net = Network(
            seed(name),
            ["/ip4/127.0.0.1/tcp/0"],
            [self.victim.addr],
            [TOPIC],
            peer_exchange=False,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            with trio.fail_after(20):
                await net.wait_for_peers(1)
            yield net
            nursery.cancel_scope.cancel()

    async def send_raw(
        self, name: str, protocol: str, data: bytes, streams: int = 1, banned: bool = False
    ) -> int:
        """Open `streams` streams of `protocol` as `name` and write `data` on each.

        Returns how many streams opened. The attacker stays connected until the
        victim has banned it (`banned`) or has answered the honest peer after
        the bytes arrived: hanging up at once could spare the victim reading them.
        """
        async with self.attacker(name) as net:
            assert net._host is not None
            host, victim = net._host, ID.from_base58(self.victim.peer_id)
            opened = 0

            async def one() -> None:
                nonlocal opened
                try:
                    stream = await host.new_stream(victim, [TProtocol(protocol)])
                    await stream.write(data)
                    opened += 1
                except Exception:
                    pass  # refused or cut off: what the victim should do to the greedy

            with trio.move_on_after(20):
                async with trio.open_nursery() as nursery:
                    for _ in range(streams):
                        nursery.start_soon(one)
            if banned:
                await self.wait_banned(name)
            else:
                await self.check_alive()
            return opened


@asynccontextmanager
async def scene(tmp_path: Path) -> AsyncIterator[Scene]:
    async with cluster(tmp_path) as c:
        victim = await start_victim(c)
        honest = Network(seed("honest"), ["/ip4/127.0.0.1/tcp/0"], [victim.addr], [TOPIC])
        async with trio.open_nursery() as nursery:
            await nursery.start(honest.run)
            await victim.call("wait_connected", peers=[honest.peer_id])
            s = Scene(victim, honest, nursery)
            await s.check_alive()
            yield s
            await s.check_alive()
            nursery.cancel_scope.cancel()


async def start_victim(c: Cluster) -> Peer:
    return await c.start("victim", "--topic", TOPIC, "--no-px", "--rpc-read-timeout", "2")


Probe = Callable[[], Awaitable[None]]


# -- below any protocol: TCP, multistream-select, Noise, Yamux --


async def test_broken_transport_bytes_cost_their_connection_and_yamux_breakers_are_banned(
    tmp_path: Path,
) -> None:
    async with scene(tmp_path) as s:
        victim = s.victim

        async def raw(data: bytes) -> None:
            sock = await tcp(victim)
            with trio.move_on_after(2):
                await sock.send_all(data)
                await sock.receive_some(4096)  # the victim answers or hangs up
            await sock.aclose()

        await raw(os.urandom(256))
        await raw(b"\xff" * 40)  # a length prefix that never ends
        await raw(multistream_line("/multistream/2.0.0") + multistream_line("/noise"))
        await raw(multistream_line("/multistream/1.0.0") + varint(5) + b"\xff\xfe\xfd\xfc\n")
        await raw(multistream_line("/multistream/1.0.0") + varint(1 << 40) + b"x" * 100)
        await raw(multistream_line("/multistream/1.0.0") + multistream_line("ls"))
        handshake = multistream_line("/multistream/1.0.0") + multistream_line("/noise")
        await raw(handshake + b"\x00\x20" + os.urandom(32) + b"\xff\xff" + os.urandom(3000))
        await raw(handshake + b"\x00\x20" + os.urandom(10))  # a truncated handshake
        await raw(handshake + b"\x00\x00" * 10)

        conn = await secure(victim, "muxer-garbage")
        await conn.write(multistream_line("/multistream/1.0.0") + varint(3) + b"\xff\xff\n")
        await conn.close()
        conn = await secure(victim, "muxer-unknown")
        await conn.write(multistream_line("/multistream/1.0.0") + multistream_line("/mplex/6.7.0"))
        await conn.close()
        await s.check_alive()

        # Frames Yamux allows, however odd: nobody is cut off for them.
        conn = await yamux(victim, "yamux-odd")
        await conn.write(
            yamux_frame(WINDOW_UPDATE, SYN, 1, 0)
            + yamux_frame(WINDOW_UPDATE, 0, 1, 0xFFFFFFFF) * 50  # window overflow
            + yamux_frame(WINDOW_UPDATE, 0, 0, 0xFFFFFFFF)
            + yamux_frame(DATA, ACK, 7, 0)  # ACK for a stream never opened
            + yamux_frame(WINDOW_UPDATE, RST, 9, 0)
            + yamux_frame(PING, 0, 0, 0)
            + yamux_frame(PING, ACK, 0, 0)  # an answer to no ping
            + yamux_frame(PING, SYN, 0, 7) * 200
            + b"".join(yamux_frame(WINDOW_UPDATE, SYN, 11 + 2 * i, 0) for i in range(3000))
        )
        await s.check_alive()
        await conn.close()
        assert peer_id_of("yamux-odd") not in (await victim.call("info"))["banned"]

        # Frames no Yamux peer sends: the session ends and the peer is banned.
        for name, frame in [
            ("yamux-version", yamux_frame(WINDOW_UPDATE, SYN, 1, 0, version=1)),
            ("yamux-type", yamux_frame(9, 0, 1, 0)),
            ("yamux-huge-frame", yamux_frame(DATA, SYN, 1, 0xFFFFFFFF)),
        ]:
            conn = await yamux(victim, name)
            await write_until_cut_off(conn, [frame, b"\x00" * 4096])
            await s.wait_banned(name)

        # A peer that ignores flow control: 64 MiB at a stream nobody reads. Before the
        # fix the victim buffered all of it; now the first frame past the window ends it.
        before = (await victim.call("info"))["rss_kib"]
        conn = await yamux(victim, "yamux-flood")
        chunk = yamux_frame(DATA, 0, 1, 60_000) + b"\x00" * 60_000
        sent = await write_until_cut_off(
            conn, [yamux_frame(WINDOW_UPDATE, SYN, 1, 0)] + [chunk] * 1100
        )
        assert sent < 1100, "the victim read 64 MiB beyond its window"
        await s.wait_banned("yamux-flood")
        grown = (await victim.call("info"))["rss_kib"] - before
        assert grown < 32 * 1024, f"the victim grew by {grown} KiB"

        # Half a frame, then silence: the connection waits, the victim does not.
        conn = await yamux(victim, "yamux-half")
        await conn.write(yamux_frame(WINDOW_UPDATE, SYN, 1, 0) + yamux_frame(DATA, 0, 1, 1000))
        await conn.write(b"x" * 10)
        await s.check_alive()
        await conn.close()


# -- after negotiation: every protocol the victim serves --


async def test_broken_protocol_bytes_cost_the_peer_and_never_the_node(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        banned_for = {
            "mesh-junk": (MESHSUB, b"\x06\xff\xff\xff\xff\xff\xff"),
            "mesh-varint": (MESHSUB, b"\xff" * 11),
            "mesh-oversized": (MESHSUB, varint(100 * MiB) + b"x" * 1000),
            "request-varint": (ECHO, b"\xff" * 12),
        }
        for name, (protocol, data) in banned_for.items():
            await s.send_raw(name, protocol, data, banned=True)

        ids = [os.urandom(20) for _ in range(20_000)]
        control = rpc_pb2.ControlMessage
        penalized = {
            # Each held the event loop for up to 8 s before the RPC was trimmed.
            "graft-unknown": control(
                graft=[rpc_pb2.ControlGraft(topicID=f"x{i}") for i in range(20_000)]
            ),
            "ihave-unknown": control(
                ihave=[
                    rpc_pb2.ControlIHave(topicID=f"x{i}", messageIDs=ids[:5]) for i in range(5000)
                ]
            ),
            "ihave-many": control(ihave=[rpc_pb2.ControlIHave(topicID=TOPIC, messageIDs=ids)]),
            "iwant-many": control(iwant=[rpc_pb2.ControlIWant(messageIDs=ids)]),
        }
        for name, message in penalized.items():
            async with s.attacker(name) as net:
                assert net._host is not None
                stream = await net._host.new_stream(
                    ID.from_base58(s.victim.peer_id), [TProtocol(MESHSUB)]
                )
                await stream.write(rpc(control=message))
                wanted = peer_id_of(name)
                with trio.fail_after(20):
                    info = await s.victim.call("info")
                    while info["scores"].get(wanted, 0) == 0 and wanted not in info["banned"]:
                        info = await s.victim.call("info")
                await s.check_alive()

        # Half an RPC, then silence: the victim frees the stream after rpc_read_timeout
        # (2 s here) and holds it against the peer; the library waited forever.
        async with s.attacker("half-rpc") as net:
            assert net._host is not None
            stream = await net._host.new_stream(
                ID.from_base58(s.victim.peer_id), [TProtocol(MESHSUB)]
            )
            await stream.write(varint(1000) + b"x" * 10)
            wanted = peer_id_of("half-rpc")
            with trio.fail_after(20):
                while (await s.victim.call("info"))["scores"].get(wanted, 0) == 0:
                    await trio.sleep(0.1)
            await s.check_alive()

        harmless = {
            "prune-unknown": (
                MESHSUB,
                rpc(
                    control=control(
                        prune=[
                            rpc_pb2.ControlPrune(topicID=f"x{i}", backoff=2**63) for i in range(50)
                        ]
                    )
                ),
            ),
            "sender-record": (MESHSUB, rpc(senderRecord=os.urandom(300))),
            "bad-publish": (
                MESHSUB,
                rpc(
                    publish=[
                        rpc_pb2.Message(
                            from_id=os.urandom(5),
                            data=b"x",
                            topicIDs=[TOPIC],
                            signature=b"s",
                            key=b"k",
                        )
                    ]
                ),
            ),
            "v13-fields": (
                MESHSUB,
                rpc(
                    control=control(
                        idontwant=[rpc_pb2.ControlIDontWant(messageIDs=ids[:100])],
                        observe=[rpc_pb2.ControlObserve(topicID=TOPIC)] * 10,
                        extensions=rpc_pb2.ControlExtensions(topicObservation=True),
                    )
                ),
            ),
            "id-push-garbage": ("/ipfs/id/push/1.0.0", prefixed(os.urandom(200))),
            "id-push-huge": (
                "/ipfs/id/push/1.0.0",
                prefixed(
                    identify_pb2.Identify(
                        listen_addrs=[os.urandom(30) for _ in range(20_000)],
                        protocols=["p" * 100] * 2000,
                    ).SerializeToString()
                ),
            ),
            "id-garbage": ("/ipfs/id/1.0.0", os.urandom(1000)),
            "ping-short": ("/ipfs/ping/1.0.0", b"x" * 10),
            "ping-big": ("/ipfs/ping/1.0.0", os.urandom(MiB)),
            "request-huge": (ECHO, varint(1 << 40) + b"x"),
            "request-empty": (ECHO, varint(0)),
            "request-unmarked": (ECHO, prefixed(b"\x05hello")),
            "exchange-garbage": (PEER_EXCHANGE_PROTOCOL, prefixed(os.urandom(100))),
        }
        for name, (protocol, data) in harmless.items():
            await s.send_raw(name, protocol, data)
        await s.check_alive()


async def test_one_peer_cannot_hold_the_slots_every_peer_needs(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        # 64 half-written requests took every inbound slot of the protocol for 30 s:
        # every other peer's requests were refused at once (block sync, for a commune).
        opened = await s.send_raw("hoarder", ECHO, varint(50) + b"\x00ab", streams=100)
        assert opened >= 8
        await s.check_alive()
        # Streams of any protocol, and gossip streams, are bounded per peer too.
        refused = (await s.check_alive())["stats"]["streams_refused"]
        await s.send_raw("stream-hoarder", "/ipfs/id/push/1.0.0", varint(100), streams=300)
        stats = (await s.check_alive())["stats"]
        assert stats["streams_refused"] - refused >= 300 - 64, stats
        refused = stats["streams_refused"]
        await s.send_raw("gossip-hoarder", MESHSUB, b"", streams=50)
        stats = (await s.check_alive())["stats"]
        assert stats["streams_refused"] - refused >= 50 - 3, stats

        # Connections that never finish a handshake wait out their timeout; the
        # victim keeps serving the peers it has.
        socks = []
        with trio.move_on_after(10):
            for _ in range(150):
                socks.append(await tcp(s.victim))
        assert len(socks) == 150
        await s.check_alive()
        for sock in socks:
            await sock.aclose()
        info = await s.victim.call("info")
        assert info["banned"] == [], info
