"""The transport, tested with real processes speaking real libp2p on 127.0.0.1.

Each peer is `tests/net_peer.py` in its own process, commanded over stdin and
stdout. Every wait is on a condition with a bound; nothing sleeps to
synchronise. Every peer still running at the end of a test must shut down on
request with exit code 0 and no traceback in its log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from node.config import ConfigError, parse_config
from node.net import (
    PEER_EXCHANGE_PROTOCOL,
    NetLimits,
    Network,
    NetworkError,
    peer_id_from_public_key,
    public_key_from_peer_id,
    split_p2p_addr,
)
from node.net_peers import PeerBook
from protocol.crypto import SigningKey
from protocol.encoding import decode

PEER_SCRIPT = Path(__file__).with_name("net_peer.py")
ROOT = PEER_SCRIPT.parent.parent
TOPIC = "burst"
BURST = 200


class Peer:
    """One `net_peer.py` process and its command channel."""

    def __init__(self, name: str, proc: trio.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.info: dict[str, Any] = {}
        self._buffer = b""

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.info["addrs"][0])

    @property
    def port(self) -> int:
        return int(self.addr.split("/tcp/")[1].split("/")[0])

    async def _readline(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"{self.name} exited:\n{self.log()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    async def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send a command; the peer bounds its own waits by `timeout`, we add a margin."""
        assert self.proc.stdin is not None
        line = json.dumps({"cmd": cmd, "timeout": timeout, **args}).encode() + b"\n"
        with trio.fail_after(timeout + 10):
            await self.proc.stdin.send_all(line)
            reply = await self._readline()
        assert reply.pop("ok"), f"{self.name} {cmd}: {reply}\n{self.log()}"
        return reply

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.peers: list[Peer] = []
        self.killed: set[str] = set()
        self._runs = 0

    async def start(self, name: str, *args: str, port: int = 0) -> Peer:
        self._runs += 1
        log_path = self.tmp_path / f"{name}.{self._runs}.log"
        command = [sys.executable, str(PEER_SCRIPT), "--name", name, "--port", str(port), *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log_path.open("wb") as log_file:
            proc = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        peer = Peer(name, proc, log_path)
        self.peers.append(peer)
        with trio.fail_after(60):
            ready = await peer._readline()
        assert ready.pop("event") == "ready"
        peer.info = ready
        return peer

    async def start_all(self, specs: list[tuple[str, list[str]]]) -> list[Peer]:
        """Start several peers concurrently (each process takes ~1 s to import libp2p)."""
        out: dict[str, Peer] = {}

        async def one(name: str, args: list[str]) -> None:
            out[name] = await self.start(name, *args)

        async with trio.open_nursery() as nursery:
            for name, args in specs:
                nursery.start_soon(one, name, args)
        return [out[name] for name, _ in specs]

    def kill(self, peer: Peer) -> None:
        peer.proc.send_signal(signal.SIGKILL)
        self.killed.add(peer.log_path.name)

    async def stop_all(self) -> None:
        """Quit every live peer and check it left cleanly."""
        failures = []
        for peer in self.peers:
            if peer.log_path.name in self.killed:
                await peer.proc.wait()
                continue
            assert peer.proc.stdin is not None
            try:
                with trio.fail_after(30):
                    await peer.proc.stdin.send_all(b'{"cmd": "quit"}\n')
                    code = await peer.proc.wait()
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                peer.proc.kill()
                code = await peer.proc.wait()
            log = peer.log_path.read_text(errors="replace")
            if code != 0 or "Traceback" in log:
                failures.append(f"{peer.name} exit {code}:\n{log[-3000:]}")
        assert not failures, "\n".join(failures)


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    except BaseException:
        for peer in c.peers:
            if peer.proc.returncode is None:
                peer.proc.kill()
        raise
    await c.stop_all()


# -- gossip bursts, discovery and recovery --


@pytest.mark.parametrize("limits", ["tuned", "py-libp2p-defaults"])
async def test_four_nodes_discover_each_other_and_recover_every_burst_message(
    tmp_path: Path, limits: str
) -> None:
    extra = ["--topic", TOPIC, "--validate"] + (["--defaults"] if limits != "tuned" else [])
    async with cluster(tmp_path) as c:
        hub = await c.start("hub", *extra)
        # The others know only the hub; peer exchange must introduce them to each other.
        others = await c.start_all([(f"n{i}", ["--bootstrap", hub.addr, *extra]) for i in range(3)])
        nodes = [hub, *others]
        ids = {p.peer_id for p in nodes}
        for node in nodes:
            await node.call("wait_connected", peers=sorted(ids - {node.peer_id}), timeout=45)
        publisher, receivers = others[0], [hub, *others[1:]]
        receiver_ids = sorted(r.peer_id for r in receivers)
        await publisher.call("wait_topic_peers", topic=TOPIC, peers=receiver_ids, timeout=45)
        for receiver in receivers:
            await receiver.call(
                "wait_topic_peers", topic=TOPIC, peers=[publisher.peer_id], timeout=45
            )

        await publisher.call("burst", topic=TOPIC, count=BURST, size=512)

        by_gossip = {}
        for receiver in receivers:
            got = await receiver.call("wait_received", topic=TOPIC, n=BURST, idle=2.0, timeout=45)
            by_gossip[receiver.name] = got["count"]
        print(f"\n{limits}: of {BURST} burst messages, gossip delivered {by_gossip}")

        # Whatever gossip dropped, request/response recovers, as block sync will.
        for receiver in receivers:
            source: dict[str, Any] = {"from": publisher.peer_id}  # a keyword in Python
            got = await receiver.call("recover", topic=TOPIC, n=BURST, **source)
            assert got["seqs"] == list(range(BURST)), receiver.name
            assert got["before"] >= by_gossip[receiver.name]  # late gossip may still land
            assert got["recovered"] == BURST - got["before"]
            assert got["other"] == []


# -- request / response --


async def test_request_response_round_trip_limits_and_errors(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        server = await c.start("server", "--no-px")
        client = await c.start("client", "--no-px", "--bootstrap", server.addr)
        await client.call("wait_connected", peers=[server.peer_id])

        async def request(protocol: str, data: bytes, **args: Any) -> dict[str, Any]:
            return await client.call(
                "request", peer=server.peer_id, protocol=protocol, data=data.hex(), **args
            )

        assert await request("/t/echo/1", b"hello") == {"length": 5, "data": b"hello".hex()}
        assert await request("/t/echo/1", b"") == {"length": 0, "data": ""}

        one_mib = 1024 * 1024
        assert (await request("/t/big/1", str(one_mib).encode()))["length"] == one_mib
        # Over the caller's limit: refused as it arrives.
        too_big = await request("/t/big/1", str(one_mib).encode(), max_response=64 * 1024)
        assert too_big["failed"] == "too_large"
        # Over the server's own limit (5 MiB): it refuses to send, the stream is reset.
        over = await request("/t/big/1", str(6 * one_mib).encode(), timeout=45)
        assert over["failed"] == "reset"

        silent = await request("/t/silent/1", b"anyone?", timeout=1.0)
        assert silent["failed"] == "timeout"
        assert (await request("/t/nope/1", b"x"))["failed"] == "unsupported"
        stranger = peer_id_from_public_key(SigningKey.derive("net-test", "nobody").public)
        unreachable = await client.call(
            "request", peer=stranger, protocol="/t/echo/1", data="00", timeout=30
        )
        assert unreachable["failed"] == "unreachable"

        # The connection survived all of it.
        assert await request("/t/echo/1", b"still here") == {
            "length": 10,
            "data": b"still here".hex(),
        }
        served = (await server.call("info"))["stats"]
        assert served["requests_served"] >= 4


# -- validation and penalties --


async def test_invalid_gossip_stops_at_the_first_hop_and_its_sender_is_banned(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        # A line: bad -- middle -- far; no peer exchange, so bad never meets far.
        middle = await c.start(
            "middle", "--no-px", "--topic", TOPIC, "--validate", "--ban-threshold", "3"
        )
        bad, far = await c.start_all(
            [
                ("bad", ["--no-px", "--topic", TOPIC, "--bootstrap", middle.addr]),
                ("far", ["--no-px", "--topic", TOPIC, "--validate", "--bootstrap", middle.addr]),
            ]
        )
        await middle.call("wait_connected", peers=[bad.peer_id, far.peer_id])
        await bad.call("wait_topic_peers", topic=TOPIC, peers=[middle.peer_id])
        await middle.call("wait_topic_peers", topic=TOPIC, peers=[bad.peer_id, far.peer_id])
        await far.call("wait_topic_peers", topic=TOPIC, peers=[middle.peer_id])

        # A valid message from bad crosses middle to far: the path works.
        await bad.call("publish", topic=TOPIC, data=b"ok:burst:0:".hex())
        got = await far.call("wait_received", topic=TOPIC, n=1, idle=30.0, timeout=45)
        assert got["seqs"] == [0]

        for i in range(5):
            await bad.call("publish", topic=TOPIC, data=f"junk {i}".encode().hex())
        banned = await middle.call("wait_banned", peer=bad.peer_id)
        assert banned["stats"]["rejected_invalid"] >= 3
        assert banned["stats"]["bans"] == 1

        # Nothing invalid reached far, and far still hears middle.
        await middle.call("publish", topic=TOPIC, data=b"ok:burst:1:".hex())
        got = await far.call("wait_received", topic=TOPIC, n=2, idle=30.0, timeout=45)
        assert got["seqs"] == [0, 1]
        assert got["other"] == []
        assert (await far.call("info"))["stats"]["rejected_invalid"] == 0


# -- crash and reconnect --


async def test_killed_node_is_reconnected_by_the_others_and_gossip_resumes(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        a = await c.start("a", "--topic", TOPIC, "--validate")
        b, victim = await c.start_all(
            [
                ("b", ["--topic", TOPIC, "--validate", "--bootstrap", a.addr]),
                ("victim", ["--topic", TOPIC, "--validate", "--bootstrap", a.addr]),
            ]
        )
        survivors = [a, b]
        for node in (a, b, victim):
            others = {a.peer_id, b.peer_id, victim.peer_id} - {node.peer_id}
            await node.call("wait_connected", peers=sorted(others), timeout=45)

        c.kill(victim)
        for node in survivors:
            await node.call("wait_disconnected", peer=victim.peer_id)

        # Same key, same port, and no bootstrap list: only the survivors' redialling
        # (with backoff) can bring it back into the network.
        reborn = await c.start("victim", "--topic", TOPIC, "--validate", port=victim.port)
        assert reborn.peer_id == victim.peer_id
        await reborn.call("wait_connected", peers=[a.peer_id, b.peer_id], timeout=45)
        for node in survivors:
            await node.call("wait_connected", peers=[reborn.peer_id], timeout=45)
            await node.call("wait_topic_peers", topic=TOPIC, peers=[reborn.peer_id], timeout=45)
        await reborn.call("wait_topic_peers", topic=TOPIC, peers=[a.peer_id, b.peer_id])

        await a.call("publish", topic=TOPIC, data=b"ok:burst:0:after restart".hex())
        await reborn.call("publish", topic=TOPIC, data=b"ok:burst:1:from the reborn".hex())
        got = await reborn.call("wait_received", topic=TOPIC, n=1, idle=30.0, timeout=45)
        assert got["seqs"] == [0]
        for node in survivors:
            want = [1] if node is a else [0, 1]
            got = await node.call("wait_received", topic=TOPIC, n=len(want), idle=30.0, timeout=45)
            assert got["seqs"] == want


async def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        a = await c.start("a", "--topic", TOPIC)
        b = await c.start("b", "--topic", TOPIC, "--bootstrap", a.addr)
        await b.call("wait_connected", peers=[a.peer_id])
        b.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await b.proc.wait() == 0
        assert "Traceback" not in b.log_path.read_text()
        c.peers.remove(b)
        await a.call("wait_disconnected", peer=b.peer_id)


# -- in-process units: identities, addresses, limits, the peer book --


def test_peer_id_is_derived_from_the_member_key_and_back() -> None:
    key = SigningKey.derive("net-test", "a")
    peer_id = peer_id_from_public_key(key.public)
    assert peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(peer_id) == key.public
    net = Network(key.seed(), ["/ip4/127.0.0.1/tcp/0"])
    assert net.peer_id == peer_id
    with pytest.raises(ValueError):
        peer_id_from_public_key(b"short")
    with pytest.raises(ValueError):
        public_key_from_peer_id("not a peer id")


def test_addresses_and_configuration_are_checked() -> None:
    key = SigningKey.derive("net-test", "b")
    peer_id = peer_id_from_public_key(key.public)
    assert split_p2p_addr(f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}") == (
        peer_id,
        "/ip4/127.0.0.1/tcp/4001",
    )
    for bad in ("/ip4/127.0.0.1/tcp/4001", "nonsense", "/ip4/127.0.0.1/tcp/1/p2p/xyz"):
        with pytest.raises(ValueError):
            split_p2p_addr(bad)
    with pytest.raises(ValueError):
        NetLimits(max_message_size=64 * 1024 * 1024)  # beyond what py-libp2p can frame
    with pytest.raises(ValueError):
        NetLimits(outbound_queue=0)
    with pytest.raises(ValueError):
        Network(key.seed(), [], topics=["a"], validators={"b": lambda p, d: True})
    with pytest.raises(ValueError):
        Network(b"short", [])
    with pytest.raises(ValueError):
        Network(key.seed(), ["not a multiaddr"])
    net = Network(key.seed(), ["/ip4/127.0.0.1/tcp/0"])
    other = peer_id_from_public_key(SigningKey.derive("net-test", "other").public)
    net.add_peer(f"/ip4/127.0.0.1/tcp/4001/p2p/{other}")
    net.add_peer(f"/ip4/127.0.0.1/tcp/4002/p2p/{net.peer_id}")  # itself: ignored
    assert len(net._bootstrap) == 1
    with pytest.raises(ValueError):
        net.add_peer("/ip4/127.0.0.1/tcp/4001")


async def test_publish_and_request_refuse_before_running_and_bad_input() -> None:
    key = SigningKey.derive("net-test", "c")
    net = Network(
        key.seed(),
        ["/ip4/127.0.0.1/tcp/0"],
        topics=["t"],
        validators={"t": lambda p, d: d == b"ok"},
    )
    with pytest.raises(NetworkError) as error:
        await net.publish("t", b"ok")
    assert error.value.reason == "closed"
    with pytest.raises(NetworkError) as error:
        await net.publish("other", b"ok")
    assert error.value.reason == "unknown_topic"
    with pytest.raises(NetworkError) as error:
        await net.publish("t", b"x" * (net.limits.max_message_size + 1))
    assert error.value.reason == "too_large"
    with pytest.raises(ValueError):
        await net.publish("t", b"not ok")
    with pytest.raises(NetworkError) as error:
        await net.request(net.peer_id, "/x/1", b"")
    assert error.value.reason == "closed"


def make_book(**overrides: Any) -> PeerBook:
    params: dict[str, Any] = dict(
        max_targets=4,
        backoff_initial=1.0,
        backoff_max=8.0,
        ban_threshold=3.0,
        ban_seconds=100.0,
        score_decay_per_second=0.1,
        max_failures_discovered=3,
        rng=random.Random(7),
    )
    params.update(overrides)
    return PeerBook(**params)


def test_backoff_doubles_up_to_a_cap_with_jitter_and_resets_on_success() -> None:
    book = make_book()
    book.add_target("p", ["/a1", "/a2"], persistent=True, now=0.0)
    assert book.due(0.0, connected=set()) == ["p"]
    assert book.due(0.0, connected=set()) == []  # being dialled
    now, delays = 0.0, []
    for failures in range(1, 7):
        book.dial_failed("p", now)
        target = book.targets["p"]
        delay = target.next_attempt - now
        base = min(8.0, 2.0**failures)
        assert base * 0.5 <= delay < base, (failures, delay)
        delays.append(delay)
        assert book.due(now, set()) == []
        assert book.next_wakeup(now, set()) == target.next_attempt
        now = target.next_attempt
        assert book.due(now, set()) == ["p"]
    assert book.addr_for_attempt("p") in {"/a1", "/a2"}
    book.dial_succeeded("p")
    assert book.targets["p"].failures == 0
    book.disconnected("p", now)
    assert 0.5 <= book.targets["p"].next_attempt - now < 1.0
    assert book.due(now + 5, connected={"p"}) == []  # connected peers are not dialled


def test_addresses_rotate_and_discovered_peers_are_forgotten() -> None:
    book = make_book()
    book.add_target("p", ["/a1", "/a2"], persistent=False, now=0.0)
    seen = []
    for _ in range(2):
        book.due(1e9, set())
        seen.append(book.addr_for_attempt("p"))
        book.dial_failed("p", 0.0)
    assert sorted(seen) == ["/a1", "/a2"]
    book.due(1e9, set())
    book.dial_failed("p", 0.0)
    assert "p" not in book.targets
    for i in range(4):
        assert book.add_target(f"q{i}", ["/x"], persistent=True, now=0.0)
    assert not book.add_target("full", ["/x"], persistent=True, now=0.0)


def test_penalties_decay_ban_past_the_threshold_and_bans_expire() -> None:
    book = make_book()
    assert not book.penalize("p", 1.0, "junk", now=0.0)
    assert not book.penalize("p", 1.0, "junk", now=10.0)  # first penalty decayed to 0
    assert book.score("p", 10.0) == pytest.approx(1.0)
    assert not book.penalize("p", 1.0, "junk", now=10.0)
    assert book.penalize("p", 1.0, "junk", now=10.0)
    assert book.is_banned("p", 50.0) and book.banned(50.0) == ["p"]
    assert book.reasons("p") == ["junk"] * 4
    book.add_target("p", ["/a"], persistent=True, now=0.0)
    assert book.due(50.0, set()) == []
    assert book.next_wakeup(50.0, set()) == 110.0
    assert book.expire(109.0) == []
    assert book.expire(110.0) == ["p"]
    assert not book.is_banned("p", 110.0) and book.score("p", 110.0) == 0.0
    assert book.due(110.0, set()) == ["p"]


# -- advertised addresses --


async def test_announced_addresses_replace_the_bound_ones_everywhere_peers_learn_them() -> None:
    """identify, peer exchange and `listen_addrs` give peers `announce`, not the bound address."""
    key = SigningKey.derive("net-test", "announcer")
    announce = ["/ip4/203.0.113.7/tcp/4001", "/dns4/node.example/tcp/4001"]
    announcer = Network(key.seed(), ["/ip4/127.0.0.1/tcp/0"], announce=announce)
    async with trio.open_nursery() as nursery:
        await nursery.start(announcer.run)
        assert announcer.listen_addrs == [f"{a}/p2p/{announcer.peer_id}" for a in announce]
        (bound,) = announcer.bound_addrs
        assert bound.startswith("/ip4/127.0.0.1/tcp/")
        asker = Network(
            SigningKey.derive("net-test", "asker").seed(),
            ["/ip4/127.0.0.1/tcp/0"],
            [f"{bound}/p2p/{announcer.peer_id}"],
            peer_exchange=False,
        )
        await nursery.start(asker.run)
        with trio.fail_after(20):
            await asker.wait_for_peers(1)
            # identify: the announced addresses reach the peer's address book.
            while {f"{a}/p2p/{announcer.peer_id}" for a in announce} != set(
                asker._known_addrs(announcer.peer_id)
            ):
                await trio.sleep(0.02)
        reply = await asker.request(announcer.peer_id, PEER_EXCHANGE_PROTOCOL, b"")
        assert decode(reply)[0] == [announcer.peer_id, announce]
        nursery.cancel_scope.cancel()


async def test_a_wildcard_listen_address_is_advertised_as_this_machines_addresses() -> None:
    key = SigningKey.derive("net-test", "wildcard")
    net = Network(key.seed(), ["/ip4/0.0.0.0/tcp/0"])
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        (bound,) = net.bound_addrs
        port = bound.split("/tcp/")[1]
        assert bound == f"/ip4/0.0.0.0/tcp/{port}"
        advertised = net.listen_addrs
        assert advertised and not any("0.0.0.0" in a for a in advertised)
        assert advertised[-1] == f"/ip4/127.0.0.1/tcp/{port}/p2p/{net.peer_id}"  # loopback last
        nursery.cancel_scope.cancel()


def test_announce_addresses_are_checked_in_the_config_and_by_the_network() -> None:
    key = SigningKey.derive("net-test", "d")
    me = peer_id_from_public_key(key.public)
    other = peer_id_from_public_key(SigningKey.derive("net-test", "e").public)
    for bad in ("/ip4/203.0.113.7/udp/4001", f"/ip4/203.0.113.7/tcp/1/p2p/{other}", "nonsense"):
        with pytest.raises(ValueError):
            Network(key.seed(), ["/ip4/127.0.0.1/tcp/0"], announce=[bad])
    own = Network(key.seed(), [], announce=[f"/ip4/203.0.113.7/tcp/1/p2p/{me}"])
    assert [str(a) for a in own._announce] == ["/ip4/203.0.113.7/tcp/1"]

    cfg = parse_config('[network]\nannounce = ["/ip4/203.0.113.7/tcp/4001"]\n')
    assert cfg.announce == ("/ip4/203.0.113.7/tcp/4001",)
    assert parse_config("").announce == ()
    for bad in (
        '"/ip4/1.2.3.4/tcp/1"',
        '["/ip4/1.2.3.4/udp/1"]',
        f'["/ip4/1.2.3.4/tcp/1/p2p/{me}"]',
    ):
        with pytest.raises(ConfigError, match="announce"):
            parse_config(f"[network]\nannounce = {bad}\n")
