"""A `node.net.Network` in its own process, driven by a test over stdin/stdout.

One JSON object per line each way: the test writes a command, the peer answers
with exactly one line (`{"ok": true, ...}` or `{"ok": false, "error": ...}`).
The first line the peer writes is `{"event": "ready", ...}`. Waiting commands
(`wait_*`) wait on the condition inside the peer, bounded by their `timeout`.
Logs go to stderr. `quit`, SIGTERM and SIGINT shut the network down cleanly.

Gossip used by the tests: burst messages are b"ok:<topic>:<seq>:<padding>";
the validator (`--validate`) accepts only data starting with b"ok:".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libp2p.custom_types import TProtocol  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402

from node.net import NetLimits, Network, NetworkError  # noqa: E402
from protocol.crypto import SigningKey  # noqa: E402
from protocol.encoding import decode, encode  # noqa: E402

MAX_LINE = 1 << 20
FETCH = "/t/fetch/1"


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        limits = NetLimits.py_libp2p_defaults() if args.defaults else NetLimits()
        if args.ban_threshold:
            limits = dataclasses.replace(limits, ban_threshold=args.ban_threshold)
        if args.rpc_read_timeout:
            limits = dataclasses.replace(limits, rpc_read_timeout=args.rpc_read_timeout)
        validators: dict[str, Callable[[str, bytes], bool]] = {}
        if args.validate:
            validators = {t: (lambda _peer, data: data.startswith(b"ok:")) for t in args.topic}
        self.published: dict[str, dict[int, bytes]] = {t: {} for t in args.topic}
        self.received: dict[str, dict[int, bytes]] = {t: {} for t in args.topic}
        self.other: dict[str, list[str]] = {t: [] for t in args.topic}
        self.net = Network(
            SigningKey.derive("net-test", args.name).seed(),
            [f"/ip4/127.0.0.1/tcp/{args.port}"],
            args.bootstrap,
            args.topic,
            validators,
            {
                "/t/echo/1": self.echo,
                "/t/big/1": self.big,
                "/t/silent/1": self.silent,
                FETCH: self.fetch,
            },
            limits=limits,
            peer_exchange=not args.no_px,
        )

    # -- request handlers --

    async def echo(self, peer: str, data: bytes) -> bytes:
        return data

    async def big(self, peer: str, data: bytes) -> bytes:
        return b"x" * int(data)

    async def silent(self, peer: str, data: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def fetch(self, peer: str, data: bytes) -> bytes:
        topic, seqs = decode(data)
        log = self.published.get(topic, {})
        return encode([[s, log[s]] for s in seqs[:100] if s in log])

    # -- gossip --

    async def consume(self, topic: str) -> None:
        async for _origin, data in self.net.subscribe(topic):
            self.store(topic, data)

    def store(self, topic: str, data: bytes) -> None:
        parts = data.split(b":", 3)
        if len(parts) >= 3 and parts[0] == b"ok" and parts[2].isdigit():
            self.received[topic][int(parts[2])] = data
        else:
            self.other[topic].append(data[:64].decode("utf-8", "replace"))

    def info(self) -> dict[str, Any]:
        return {
            "peer_id": self.net.peer_id,
            "addrs": self.net.listen_addrs,
            "peers": [p.peer_id for p in self.net.peers()],
            "scores": {p.peer_id: p.score for p in self.net.peers()},
            "banned": self.net.banned(),
            "stats": self.net.stats(),
            "rss_kib": rss_kib(),
        }

    # -- commands --

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["cmd"]
        timeout = float(cmd.get("timeout", 10.0))
        if name == "info":
            return self.info()
        if name == "wait_peers":
            await self.until(lambda: len(self.net.peers()) >= cmd["n"], timeout)
            return self.info()
        if name == "wait_connected":
            wanted = set(cmd["peers"])
            await self.until(lambda: wanted <= {p.peer_id for p in self.net.peers()}, timeout)
            return self.info()
        if name == "wait_disconnected":
            await self.until(
                lambda: cmd["peer"] not in {p.peer_id for p in self.net.peers()}, timeout
            )
            return self.info()
        if name == "wait_banned":
            await self.until(
                lambda: (
                    cmd["peer"] in self.net.banned()
                    and cmd["peer"] not in {p.peer_id for p in self.net.peers()}
                ),
                timeout,
            )
            return self.info()
        if name == "wait_topic_peers":
            wanted = set(cmd["peers"])
            await self.until(lambda: wanted <= set(self.net.topic_peers(cmd["topic"])), timeout)
            return {"topic_peers": self.net.topic_peers(cmd["topic"])}
        if name == "publish":
            data = bytes.fromhex(cmd["data"])
            await self.net.publish(cmd["topic"], data)
            self.store_published(cmd["topic"], data)
            return {}
        if name == "burst":
            topic, pad = cmd["topic"], b"p" * int(cmd.get("size", 0))
            start = trio.current_time()
            for seq in range(cmd["count"]):
                data = b"ok:%s:%d:" % (topic.encode(), seq) + pad
                self.published[topic][seq] = data
                await self.net.publish(topic, data)
            return {"seconds": trio.current_time() - start}
        if name == "wait_received":
            return await self.wait_received(cmd["topic"], cmd["n"], float(cmd["idle"]), timeout)
        if name == "received":
            return self.received_summary(cmd["topic"])
        if name == "recover":
            return await self.recover(cmd["topic"], cmd["from"], cmd["n"])
        if name == "request":
            try:
                reply = await self.net.request(
                    cmd["peer"],
                    cmd["protocol"],
                    bytes.fromhex(cmd.get("data", "")),
                    timeout=timeout,
                    max_response_size=cmd.get("max_response"),
                )
            except NetworkError as error:
                return {"failed": error.reason, "detail": error.detail}
            return {"length": len(reply), "data": reply[:256].hex()}
        if name == "raw_stream":
            return await self.raw_stream(cmd["peer"], cmd["protocol"], bytes.fromhex(cmd["data"]))
        raise ValueError(f"unknown command {name!r}")

    async def raw_stream(self, peer: str, protocol: str, data: bytes) -> dict[str, Any]:
        """Open a stream of `protocol` to `peer`, write `data` as is, and leave it open.

        This bypasses everything `Network` does to speak a protocol correctly: it is
        how a test plays a peer whose wire bytes are broken.
        """
        host = self.net._host
        if host is None:
            raise ValueError("network not running")
        stream = await host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        await stream.write(data)
        return {}

    def store_published(self, topic: str, data: bytes) -> None:
        parts = data.split(b":", 3)
        if len(parts) >= 3 and parts[2].isdigit():
            self.published[topic][int(parts[2])] = data

    def received_summary(self, topic: str) -> dict[str, Any]:
        return {
            "count": len(self.received[topic]),
            "seqs": sorted(self.received[topic]),
            "other": self.other[topic],
        }

    async def until(self, predicate: Callable[[], bool], timeout: float) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.02)

    async def wait_received(
        self, topic: str, n: int, idle: float, timeout: float
    ) -> dict[str, Any]:
        """Until `n` messages are in, or none came for `idle` seconds (gossip gave up)."""
        with trio.move_on_after(timeout):
            last, since = -1, trio.current_time()
            while len(self.received[topic]) < n:
                count = len(self.received[topic])
                if count != last:
                    last, since = count, trio.current_time()
                elif trio.current_time() - since >= idle:
                    break
                await trio.sleep(0.02)
        return self.received_summary(topic)

    async def recover(self, topic: str, source: str, n: int) -> dict[str, Any]:
        """Fetch what gossip did not bring, the way block sync catches up."""
        missing = [s for s in range(n) if s not in self.received[topic]]
        before = n - len(missing)
        recovered = 0
        for i in range(0, len(missing), 50):
            reply = await self.net.request(
                source, FETCH, encode([topic, missing[i : i + 50]]), timeout=10
            )
            for seq, data in decode(reply):
                assert data == b"ok:%s:%d:" % (topic.encode(), seq) + data.split(b":", 3)[3]
                self.received[topic][seq] = data
                recovered += 1
        return {"before": before, "recovered": recovered, **self.received_summary(topic)}

    # -- plumbing --

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_signals, nursery.cancel_scope)
            await nursery.start(self.net.run)
            for topic in self.published:
                nursery.start_soon(self.consume, topic)
            out = trio.lowlevel.FdStream(os.dup(1))
            await write(out, {"event": "ready", **self.info()})
            stdin = LineReader(trio.lowlevel.FdStream(os.dup(0)))
            while (line := await stdin.readline()) is not None:
                cmd = json.loads(line)
                if cmd["cmd"] == "quit":
                    break
                try:
                    reply = {"ok": True, **await self.command(cmd)}
                except (trio.TooSlowError, NetworkError, ValueError, KeyError) as error:
                    reply = {
                        "ok": False,
                        "error": f"{type(error).__name__}: {error}",
                        **self.info(),
                    }
                await write(out, reply)
            nursery.cancel_scope.cancel()

    async def watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                scope.cancel()
                return


def rss_kib() -> int:
    """Resident memory of this process (Linux), to check that hostile input stays bounded."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def write(out: trio.lowlevel.FdStream, obj: dict[str, Any]) -> None:
    await out.send_all(json.dumps(obj).encode() + b"\n")


class LineReader:
    def __init__(self, stream: trio.lowlevel.FdStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
            assert len(self._buffer) < MAX_LINE, "command line too long"
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--topic", action="append", default=[])
    parser.add_argument("--validate", action="store_true")
    parser.add_argument("--defaults", action="store_true", help="py-libp2p's own gossip limits")
    parser.add_argument("--no-px", action="store_true")
    parser.add_argument("--ban-threshold", type=float, default=0.0)
    parser.add_argument("--rpc-read-timeout", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("node.net").setLevel(logging.DEBUG)
    trio.run(Peer(args).main)


if __name__ == "__main__":
    main()
