"""The control API over real HTTP: Hypercorn's trio worker on a loopback port, httpx.

The backend here is a small in-memory stand-in for the daemon, because what is
under test is the API layer itself: authentication, limits, error bodies, routing,
the token file and the client's error mapping. The daemon tests drive the same
API against real daemons.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node import api, client
from node.config import Paths
from node.metrics import Metrics


class Backend:
    def __init__(self) -> None:
        self.submitted: list[bytes] = []

    async def status(self) -> dict[str, Any]:
        return {"height": 7, "chain_id": "ab" * 32}

    async def peers(self) -> list[dict[str, Any]]:
        return [{"peer_id": "12D3KooW", "addrs": []}]

    async def query(self, name: str, params: Mapping[str, str]) -> Any:
        if name == "account":
            if params["id"] == "zmissing":
                raise api.not_found("no such account")
            return {"id": params["id"], "balance": 5, "params": dict(params)}
        if name == "block" and params["height"] == "boom":
            raise RuntimeError("kaboom")
        return {"query": name, "params": dict(params)}

    async def submit(self, raw: bytes) -> dict[str, Any]:
        if raw == b"bad":
            raise api.rejected("bad signature (wrong key)")
        self.submitted.append(raw)
        return {"id": "00" * 32, "status": "pending"}

    async def submit_batch(self, raws: list[bytes]) -> list[dict[str, Any]]:
        out = []
        for raw in raws:
            if raw == b"bad":
                out.append({"id": "", "status": "rejected", "reason": "bad signature"})
            else:
                self.submitted.append(raw)
                out.append({"id": raw.hex(), "status": "pending"})
        return out

    async def sign_and_submit(self, kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if kind != "account.transfer":
            raise api.bad_request(f"unknown kind {kind}")
        return {"id": "11" * 32, "status": "pending", "args": dict(args)}

    async def action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise api.not_found(f"no action {name}")

    async def wait_tx(self, txid: bytes, timeout: float) -> dict[str, Any]:
        return {"id": txid.hex(), "status": "committed", "height": 3, "waited": timeout}


class Server:
    def __init__(self, home: Path, url: str, token: str, backend: Backend,
                 metrics: Metrics) -> None:
        self.home = home
        self.url = url
        self.token = token
        self.backend = backend
        self.metrics = metrics

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    paths = Paths(tmp_path)
    token = api.ensure_token(paths.token)
    backend = Backend()
    metrics = Metrics()
    app = api.create_app(backend, token, metrics)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(api.serve_app, app, "127.0.0.1", 0)
        api.write_endpoint(paths.api_endpoint, host, port)
        yield Server(tmp_path, api.base_url(host, port), token, backend, metrics)
        nursery.cancel_scope.cancel()


async def test_status_with_token(server: Server) -> None:
    async with server.http() as h:
        r = await h.get("/v1/status")
    assert r.status_code == 200
    assert r.json() == {"height": 7, "chain_id": "ab" * 32}


async def test_missing_and_wrong_token_are_401(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as h:
        r = await h.get("/v1/status")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "missing API token" in r.json()["error"]["message"]
    async with server.http("x" * 43) as h:
        r = await h.get("/v1/status")
    assert r.status_code == 401
    assert "wrong API token" in r.json()["error"]["message"]


async def test_non_loopback_host_header_refused(server: Server) -> None:
    async with server.http() as h:
        r = await h.get("/v1/status", headers={"Host": "evil.example"})
    assert r.status_code == 400


async def test_oversized_body_refused(server: Server) -> None:
    big = {"tx": "00" * (api.MAX_BODY_BYTES // 2 + 10)}
    async with server.http() as h:
        r = await h.post("/v1/txs", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"
    # Without Content-Length (chunked): the server refuses once the limit is passed,
    # without waiting for (or buffering) the rest. A raw socket, since an HTTP client
    # will not read a response before it has sent its whole body.
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (f"POST /v1/txs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{server.token}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    await stream.send_all(head)
    chunk = b"%x\r\n" % 8192 + b" " * 8192 + b"\r\n"
    try:
        for _ in range(api.MAX_BATCH_BODY_BYTES // 8192 + 2):
            await stream.send_all(chunk)
    except trio.BrokenResourceError:
        pass  # the server answered and closed while we were still sending
    reply = b""
    with trio.move_on_after(10):
        while b"\r\n\r\n" not in reply:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            reply += data
    await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert server.backend.submitted == []


async def test_malformed_requests(server: Server) -> None:
    async with server.http() as h:
        r = await h.post("/v1/txs", content=b"{not json")
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = await h.post("/v1/txs", json=[1, 2])
        assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
        r = await h.post("/v1/txs", json={"tx": "zz"})
        assert r.status_code == 400 and "hex" in r.json()["error"]["message"]
        r = await h.post("/v1/txs", json={"tx": 5})
        assert r.status_code == 400
        r = await h.post("/v1/sign", json={"kind": 3})
        assert r.status_code == 400
        r = await h.post("/v1/sign", json={"kind": "account.transfer", "args": []})
        assert r.status_code == 400
        r = await h.post("/v1/sign", json={"kind": "account.transfer", "wait": "soon"})
        assert r.status_code == 400
        r = await h.get("/v1/txs/abcd/wait")
        assert r.status_code == 400
    assert server.backend.submitted == []


async def test_unknown_route_and_method(server: Server) -> None:
    async with server.http() as h:
        r = await h.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await h.delete("/v1/status")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_queries_route_params(server: Server) -> None:
    async with server.http() as h:
        r = await h.get("/v1/account/zabc", params={"extra": "1"})
        assert r.json()["params"] == {"id": "zabc", "extra": "1"}
        r = await h.get("/v1/account/zmissing")
        assert r.status_code == 404 and r.json()["error"]["message"] == "no such account"
        r = await h.get("/v1/block/boom")
        assert r.status_code == 500 and "kaboom" in r.json()["error"]["message"]
        r = await h.get("/v1/status")  # still serving after a handler failure
        assert r.status_code == 200


async def test_submit_and_wait(server: Server) -> None:
    async with server.http() as h:
        r = await h.post("/v1/txs", json={"tx": "abcd"})
        assert r.json()["status"] == "pending"
        r = await h.post("/v1/txs", json={"tx": "abcd", "wait": 5})
        assert r.json()["status"] == "committed"
        r = await h.post("/v1/txs", json={"tx": b"bad".hex()})
        assert r.status_code == 422
        assert r.json()["error"] == {"code": "rejected", "message": "bad signature (wrong key)"}
    assert server.backend.submitted == [b"\xab\xcd", b"\xab\xcd"]


async def test_submit_batch(server: Server) -> None:
    async with server.http() as h:
        r = await h.post("/v1/txs", json={"txs": ["abcd", b"bad".hex(), "01"]})
        assert r.status_code == 200
        assert [x["status"] for x in r.json()["results"]] == ["pending", "rejected", "pending"]
        bodies: list[dict[str, Any]] = [
            {"txs": []}, {"txs": "ab"}, {"txs": ["ab"] * (api.MAX_BATCH + 1)},
            {"txs": ["zz"]}, {"txs": ["ab"], "wait": 3}]
        for body in bodies:
            r = await h.post("/v1/txs", json=body)
            assert r.status_code == 400, body
        big = {"tx": "ab" * (api.MAX_BODY_BYTES // 2 + 1)}  # a single one stays small
        r = await h.post("/v1/txs", json=big)
        assert r.status_code == 413
    assert server.backend.submitted == [b"\xab\xcd", b"\x01"]


async def test_metrics_endpoint(server: Server) -> None:
    async with server.http() as h:
        await h.get("/v1/status")
        r = await h.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'commune_api_requests_total{route="/v1/status",status="200"} 1.0' in r.text
    async with httpx.AsyncClient(base_url=server.url) as h:
        assert (await h.get("/metrics")).status_code == 401  # token required here too


# ---- the synchronous client, run in a thread so the server keeps serving --------------


async def test_client_maps_errors(server: Server) -> None:
    def work() -> None:
        with client.Client.from_home(server.home) as c:
            assert c.status()["height"] == 7
            with pytest.raises(client.Rejected, match="bad signature"):
                c.submit(b"bad")
            with pytest.raises(client.NotFound, match="no such account"):
                c.get("account/zmissing")
            with pytest.raises(client.BadRequest):
                c.sign("nope", {})
            with pytest.raises(client.ServerBug, match="kaboom.*a bug") as bug:
                c.get("block/boom")
            assert bug.value.kind == "internal"
            assert c.sign("account.transfer", {"amount": 1})["args"] == {"amount": 1}
            assert "commune_api_requests_total" in c.metrics()
        bad = client.Client(server.url, "y" * 43, server.home)
        with pytest.raises(client.Unauthorized, match="api.token"):
            bad.status()
        bad.close()

    await trio.to_thread.run_sync(work)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_daemon_not_running(tmp_path: Path) -> None:
    with pytest.raises(client.DaemonNotRunning, match=r"commune daemon --home"):
        client.Client.from_home(tmp_path)
    paths = Paths(tmp_path)
    api.ensure_token(paths.token)
    api.write_endpoint(paths.api_endpoint, "127.0.0.1", _closed_port())
    c = client.Client.from_home(tmp_path)
    with pytest.raises(client.DaemonNotRunning, match=r"daemon not running .*--home"):
        c.status()
    c.close()
    paths.api_endpoint.write_text("{broken")
    with pytest.raises(client.DaemonNotRunning):
        client.Client.from_home(tmp_path)


def test_client_without_token_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    api.write_endpoint(paths.api_endpoint, "127.0.0.1", _closed_port())
    with pytest.raises(client.Unauthorized, match="no API token file"):
        client.Client.from_home(tmp_path)


# ---- token file ---------------------------------------------------------------------------


def test_token_file_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "api.token"
    token = api.ensure_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert client.read_token(path) == token
    assert api.ensure_token(path) == token  # stable across restarts
    path.chmod(0o644)  # readable by others: may have leaked, so replaced
    fresh = api.ensure_token(path)
    assert fresh != token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("short")
    path.chmod(0o600)
    assert api.ensure_token(path) not in ("short", fresh)


def test_token_file_symlink_replaced(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("a" * 43)
    target.chmod(0o600)
    path = tmp_path / "api.token"
    os.symlink(target, path)
    token = api.ensure_token(path)
    assert not path.is_symlink() and token != "a" * 43
    assert target.read_text() == "a" * 43


def test_endpoint_file(tmp_path: Path) -> None:
    path = tmp_path / "api.json"
    api.write_endpoint(path, "::1", 1234)
    doc = json.loads(path.read_text())
    assert doc["url"] == "http://[::1]:1234" and doc["pid"] == os.getpid()


async def test_serve_refuses_non_loopback() -> None:
    app = api.create_app(Backend(), "t" * 43)
    with pytest.raises(ValueError, match="loopback"):
        await api.serve_app(app, "0.0.0.0", 0)


def test_create_app_refuses_weak_token() -> None:
    with pytest.raises(ValueError):
        api.create_app(Backend(), "short")
