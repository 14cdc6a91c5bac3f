"""A hostile libp2p peer gossips junk at a real daemon: dropped, counted, penalized, banned.

The peer is `tests/net_peer.py` (a bare `node.net.Network` in its own process, driven
over stdin/stdout) joined to the daemon's transaction and consensus topics. It first
gossips one valid transaction batch (which commits: gossip in works from any peer),
then malformed bytes, batches holding transactions that are malformed, signed for
another commune or tampered with, votes with bad signatures and votes well signed by
a key that is not a validator. The daemon's topic
validators drop each before it can spread, nothing reaches the mempool or the ledger,
and the peer's score crosses the ban threshold: the daemon cuts it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

import tests.test_net_wire as wire
from node.driver import encode_tx_batch, sync_protocol, topics
from node.net import Network
from protocol.crypto import SigningKey
from protocol.proposal import encode_message
from protocol.sync import SyncRequest, encode_sync_message
from protocol.transactions import make_tx
from protocol.votes import PREVOTE, Vote
from tests.daemons import ROOT, Daemon, make_commune, running, wait_for

pytestmark = pytest.mark.timeout(180)

PEER_SCRIPT = ROOT / "tests" / "net_peer.py"


class HostilePeer:
    def __init__(self, tmp: Path, bootstrap: str, topic_names: tuple[str, ...]) -> None:
        self.log = tmp / "hostile.log"
        args = [sys.executable, str(PEER_SCRIPT), "--name", "hostile", "--port", "0",
                "--bootstrap", bootstrap, "--no-px"]
        for t in topic_names:
            args += ["--topic", t]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, cwd=ROOT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.info = self._read()
        assert self.info.get("event") == "ready", self.info

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("hostile peer exited:\n" + self.log.read_text()[-3000:])
        return dict(json.loads(line))

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """The peer bounds its own waits by `timeout` and always answers one line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "timeout": timeout, **args}).encode()
                              + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Daemon, HostilePeer, tuple[str, str], bytes]]:
    (d,), genesis = make_commune(tmp_path, 1, label="hostile-test")
    tx_topic, consensus_topic = topics(genesis.chain_id)
    with running([d]):
        status = d.status()
        peer = HostilePeer(tmp_path, status["listen"][0], (tx_topic, consensus_topic))
        try:
            yield d, peer, (tx_topic, consensus_topic), genesis.chain_id
        finally:
            peer.close()


def metric(d: Daemon, prefix: str) -> float:
    for line in d.call(lambda c: c.metrics()).splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_junk_gossip_dropped_and_peer_banned(
        setup: tuple[Daemon, HostilePeer, tuple[str, str], bytes]) -> None:
    d, peer, (tx_topic, consensus_topic), chain_id = setup
    daemon_peer_id = d.status()["peer_id"]
    reply = peer.call("wait_topic_peers", topic=tx_topic, peers=[daemon_peer_id])
    assert reply["ok"], reply

    # Gossip in works from any peer: a valid transaction commits.
    member = d.key
    deposit = make_tx(member, chain_id, "treasury.deposit", 1,
                      {"account": member.public, "amount": 10, "reference": "via gossip"})
    assert peer.call("publish", topic=tx_topic, data=encode_tx_batch([deposit.raw]).hex())["ok"]
    wait_for("the gossiped transaction to commit", lambda: d.call(
        lambda c: c.get(f"tx/{deposit.id.hex()}"))["status"] == "committed")
    height = d.height()

    stranger = SigningKey.derive("hostile-test", "stranger")
    other_chain = make_tx(stranger, b"\x01" * 32, "account.transfer", 1,
                          {"to": member.public, "amount": 5})
    tampered = bytearray(make_tx(stranger, chain_id, "account.transfer", 1,
                                 {"to": member.public, "amount": 5}).raw)
    tampered[-3] ^= 0x40
    forged_vote = Vote(PREVOTE, height + 1, 0, b"\x07" * 32, member.public, b"\x00" * 64)
    outsider_vote = Vote.create(stranger, chain_id, PREVOTE, height + 1, 0, b"\x07" * 32)
    junk = [
        (tx_topic, b"\x00not msgpack at all"),
        (tx_topic, deposit.raw),  # a transaction, but not a batch of them
        (tx_topic, encode_tx_batch([b"\x81\xa4body\xc0"])),
        (tx_topic, encode_tx_batch([other_chain.raw])),
        (tx_topic, encode_tx_batch([bytes(tampered)])),
        (consensus_topic, b"\x92\x01\x02"),
        (consensus_topic, encode_message(forged_vote)),
        (consensus_topic, encode_message(outsider_vote)),  # well signed, not a validator
    ]
    sent = 0
    for _ in range(5):
        for topic, data in junk:
            reply = peer.call("publish", topic=topic, data=data.hex())
            if not reply["ok"]:  # already cut off
                break
            sent += 1
    banned = peer.call("wait_disconnected", peer=daemon_peer_id, timeout=60)
    assert banned["ok"], banned
    assert sent >= 20

    invalid_txs = metric(d, 'commune_gossip_received_total{result="invalid",topic="txs"}')
    invalid_votes = metric(d,
                           'commune_gossip_received_total{result="invalid",topic="consensus"}')
    assert invalid_txs >= 4 and invalid_votes >= 3
    s = d.status()
    assert s["mempool_txs"] == 0 and s["peers"] == 0
    status = d.call(lambda c: c.wait_tx(other_chain.id.hex(), 0))["status"]
    assert status in ("rejected", "unknown"), status
    wait_for("blocks to go on", lambda: d.height() > height + 1)
    assert d.status()["evidence_recorded"] == 0


@pytest.mark.parametrize("frame", [
    b"\x06\xff\xff\xff\xff\xff\xff",  # a length-prefixed frame that is not protobuf
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a length prefix that never ends
], ids=["bad-protobuf", "bad-varint"])
def test_broken_pubsub_wire_bytes_cost_the_peer_not_the_daemon(
        setup: tuple[Daemon, HostilePeer, tuple[str, str], bytes], frame: bytes) -> None:
    """Garbage on the gossipsub stream itself, below any topic validator.

    py-libp2p's reader let a protobuf DecodeError escape into the swarm and the
    daemon exited (found by the node benchmark): any connected peer could stop
    any member. The stream must fail alone and its peer be cut off.
    """
    d, peer, (tx_topic, _), _ = setup
    daemon_peer_id = d.status()["peer_id"]
    assert peer.call("wait_topic_peers", topic=tx_topic, peers=[daemon_peer_id])["ok"]
    height = d.height()
    reply = peer.call("raw_stream", peer=daemon_peer_id, protocol="/meshsub/1.1.0",
                      data=frame.hex())
    assert reply["ok"], reply
    banned = peer.call("wait_disconnected", peer=daemon_peer_id, timeout=60)
    assert banned["ok"], banned
    assert d.running(), "the daemon exited:\n" + d.tail()
    wait_for("blocks to go on", lambda: d.height() > height + 1)
    assert d.status()["peers"] == 0
    log = d.tail(100_000)
    ban = next((line for line in log.splitlines() if "ban " + peer.info["peer_id"] in line), "")
    assert "malformed pubsub" in ban, log[-3000:]


def test_wire_attacks_below_every_validator_leave_the_daemon_committing(
        setup: tuple[Daemon, HostilePeer, tuple[str, str], bytes]) -> None:
    """The worst of tests/test_net_wire.py, against a member daemon rather than a bare Network.

    A Yamux peer that ignores flow control, a GRAFT storm for topics nobody joined,
    a peer hoarding half-written block-sync requests and one breaking the sync
    framing: the daemon must keep committing, cut off the breakers, and still
    serve block sync to the peer that behaved.
    """
    d, peer, (tx_topic, _), chain_id = setup
    status = d.status()
    daemon_peer_id = status["peer_id"]
    port = int(status["listen"][0].split("/tcp/")[1].split("/")[0])
    assert peer.call("wait_topic_peers", topic=tx_topic, peers=[daemon_peer_id])["ok"]
    height = d.height()
    sync = sync_protocol(chain_id)
    target = SimpleNamespace(port=port, peer_id=daemon_peer_id)

    async def attack() -> None:
        conn = await wire.yamux(target, "daemon-yamux-flood")  # type: ignore[arg-type]
        chunk = wire.yamux_frame(wire.DATA, 0, 1, 60_000) + b"\x00" * 60_000
        sent = await wire.write_until_cut_off(
            conn, [wire.yamux_frame(wire.WINDOW_UPDATE, wire.SYN, 1, 0)] + [chunk] * 1100)
        assert sent < 1100
        storm = wire.rpc(control=rpc_pb2.ControlMessage(
            graft=[rpc_pb2.ControlGraft(topicID=f"x{i}") for i in range(20_000)]))
        for name, protocol, data, streams in [
            ("daemon-graft-storm", "/meshsub/1.1.0", storm, 1),
            ("daemon-sync-hoarder", sync, wire.varint(50) + b"\x00ab", 100),
            ("daemon-sync-breaker", sync, b"\xff" * 12, 1),
        ]:
            net = Network(wire.seed(name), ["/ip4/127.0.0.1/tcp/0"], [status["listen"][0]],
                          peer_exchange=False)
            async with trio.open_nursery() as nursery:
                await nursery.start(net.run)
                with trio.fail_after(20):
                    await net.wait_for_peers(1)
                assert net._host is not None
                for _ in range(streams):
                    with contextlib.suppress(Exception):
                        stream = await net._host.new_stream(ID.from_base58(daemon_peer_id),
                                                            [TProtocol(protocol)])
                        await stream.write(data)
                if name == "daemon-sync-breaker":
                    with trio.fail_after(20):
                        while net.peers():
                            await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    trio.run(attack)
    assert d.running(), "the daemon exited:\n" + d.tail()
    wait_for("blocks to go on", lambda: d.height() > height + 2)
    # Block sync still answers the peer that behaved.
    request = encode_sync_message(SyncRequest(1, 1, 1))
    reply = peer.call("request", peer=daemon_peer_id, protocol=sync, data=request.hex(),
                      timeout=10)
    assert reply["ok"] and "failed" not in reply and reply["length"] > 0, reply
    log = d.tail(100_000)
    for name in ("daemon-yamux-flood", "daemon-sync-breaker"):
        banned = "ban " + wire.peer_id_of(name)
        assert any(banned in line for line in log.splitlines()), f"{name}:\n{log[-3000:]}"
