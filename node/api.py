"""The local control API: a Starlette app served by Hypercorn's trio worker on loopback.

Every `commune` command other than `init`, `genesis` and `daemon` talks to the
running daemon through this API (DESIGN 7). It listens on a loopback address only
and every request must carry the bearer token kept in the data directory's token
file (mode 0600), so only the user who owns the data directory can drive the node:
the loopback bind keeps other machines out, the token keeps other local users out
(a browser page cannot set the Authorization header cross-origin without a CORS
preflight, which this API never grants, and the Host check defeats DNS rebinding).

The API is JSON in and JSON out. Errors always have the body
`{"error": {"code": "<stable code>", "message": "<what went wrong>"}}`, so the CLI can
print the message and pick an exit code from the code. Request bodies are bounded
(`MAX_BODY_BYTES`; `MAX_BATCH_BODY_BYTES` for a batch of transactions) and read
incrementally, so an oversized body is refused without being buffered; the token is
checked before any body is read.

Routes (all under /v1 except /metrics):
  GET  status, peers, members, applications, account/{id}, assets, asset/{id}, bonds,
       dividends?member=, proposals, treasury, block/{height|latest}, tx/{id}, params,
       validators, state/{table}
  POST txs           {"tx": hex, "wait": s} or {"txs": [hex, ...]} (signed elsewhere)
  POST sign          {"kind", "args", "wait"}: the daemon signs with the member's key
  POST actions/{n}   bond_bid, rent_bid, claim (need the key's derived salts)
  GET  txs/{id}/wait?timeout=s
  GET  /metrics      Prometheus text format

The app knows nothing of ledgers or consensus: it routes to a `Backend` (the daemon
implements it) and translates `ApiError`s. That keeps this module testable with real
Hypercorn and real HTTP on a loopback port, independently of the rest of the node.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.client import API_VERSION, MAX_TOKEN_FILE_BYTES, base_url, valid_token
from node.config import write_new_file
from node.logs import get_logger
from node.metrics import CONTENT_TYPE, Metrics

MAX_BODY_BYTES = 256 * 1024
"""Largest request body: a transaction is at most 64 KiB, hex-encoded in JSON twice that."""
MAX_BATCH = 1000
"""Transactions in one `POST /v1/txs` batch (`{"txs": [...]}`)."""
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
TOKEN_BYTES = 32
TOKEN_MODE = 0o600
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

log = get_logger("api")


class ApiError(Exception):
    """A request the API refuses; becomes an HTTP status and a JSON error body."""

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def rejected(reason: str, details: Mapping[str, Any] | None = None) -> ApiError:
    """A transaction the node will not accept (malformed, bad signature, ledger says no)."""
    return ApiError(422, "rejected", reason, details)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message)


class Backend(Protocol):
    """What the API needs from the node. All results are JSON-ready data.

    Ids travel as text ("z..."), hashes and raw bytes as hex; `query` names are the
    read-only questions listed in `QUERIES`.
    """

    async def status(self) -> dict[str, Any]: ...

    async def peers(self) -> list[dict[str, Any]]: ...

    async def query(self, name: str, params: Mapping[str, str]) -> Any: ...

    async def submit(self, raw: bytes) -> dict[str, Any]:
        """Admit a signed transaction to the mempool and gossip it; `rejected` if invalid."""
        ...

    async def submit_batch(self, raws: list[bytes]) -> list[dict[str, Any]]:
        """Admit several signed transactions; one result per transaction, in order:
        `{"id", "status": "pending"}` or `{"id", "status": "rejected", "reason"}`."""
        ...

    async def sign_and_submit(self, kind: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Sign `kind(args)` with the member's key (the node picks the nonce) and submit."""
        ...

    async def action(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Composite member actions that need the node's key material (sealed bids...)."""
        ...

    async def wait_tx(self, txid: bytes, timeout: float) -> dict[str, Any]:
        """The transaction's status once committed (or rejected), else after `timeout`."""
        ...


QUERIES: dict[str, tuple[str, ...]] = {
    # name: path parameters, in order; query-string parameters are passed through.
    "members": (),
    "applications": (),
    "account": ("id",),
    "assets": (),
    "asset": ("id",),
    "bonds": (),
    "dividends": (),
    "proposals": (),
    "treasury": (),
    "block": ("height",),
    "tx": ("id",),
    "params": (),
    "validators": (),
    "state": ("table",),  # raw rows, msgpack hex: see node/queries.state_rows
}

MAX_WAIT_SECONDS = 120.0


# ---- token ------------------------------------------------------------------------------


def ensure_token(path: Path) -> str:
    """The API token: the one in `path` if it is sound, else a fresh one written 0600.

    Kept across restarts so scripts holding the token keep working; replaced when the
    file is missing, malformed, or readable by others (then it may have leaked).
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        existing = None
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            try:
                existing = path.read_text(encoding="ascii")[:MAX_TOKEN_FILE_BYTES].strip()
            except (OSError, UnicodeDecodeError):
                existing = None
        if existing and valid_token(existing):
            return existing
        log.warning("api_token_replaced", path=path,
                    why="not a private regular file with a valid token")
        path.unlink()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    write_new_file(path, (token + "\n").encode("ascii"), mode=TOKEN_MODE)
    return token


def write_endpoint(path: Path, host: str, port: int) -> None:
    """Record where the API listens (the config may say port 0), atomically."""
    doc = {"host": host, "port": port, "pid": os.getpid(), "url": base_url(host, port)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---- request handling ------------------------------------------------------------------


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body, read incrementally and refused past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise bad_request("Content-Length is not a number") from None
        if n > limit:
            raise ApiError(413, "too_large", f"request body of {n} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return {}
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not JSON: {exc}") from None


def _object(value: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object")
    return value


def parse_hex(value: Any, field: str, length: int | None = None,
              max_len: int = MAX_BODY_BYTES) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a hex string")
    if len(value) > 2 * max_len:
        raise ApiError(413, "too_large", f"{field} is longer than {max_len} bytes")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise bad_request(f"{field} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise bad_request(f"{field} must be {length} bytes, got {len(raw)}")
    return raw


Handler = Callable[[Request], Awaitable[Any]]


@dataclass
class _Ctx:
    backend: Backend
    token: str
    metrics: Metrics | None


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def _endpoint(ctx: _Ctx, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wraps a handler: token check, JSON response, error translation, metrics."""

    async def endpoint(request: Request) -> Response:
        status = 200
        try:
            _authorize(request, ctx.token)
            result = await handler(request)
            if isinstance(result, Response):
                response: Response = result
            else:
                response = JSONResponse(result)
            status = response.status_code
            return response
        except ApiError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status,
                                headers={"WWW-Authenticate": "Bearer"} if exc.status == 401
                                else None)
        except Exception as exc:  # a bug: keep serving, say so, log it in full
            status = 500
            log.exception("api_handler_failed", path=request.url.path)
            return JSONResponse(ApiError(500, "internal", f"internal error: "
                                         f"{type(exc).__name__}: {exc}").body(), status_code=500)
        finally:
            if ctx.metrics is not None:
                ctx.metrics.api_requests.labels(_route_name(request), str(status)).inc()

    return endpoint


def _authorize(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized",
                       "missing API token (send 'Authorization: Bearer <token from api.token>')")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "wrong API token (is this the right --home?)")


def create_app(backend: Backend, token: str, metrics: Metrics | None = None) -> Starlette:
    """The ASGI app of the control API, routed to `backend`."""
    if not valid_token(token):
        raise ValueError("API token is malformed")
    ctx = _Ctx(backend, token, metrics)
    v = f"/{API_VERSION}"

    async def status(request: Request) -> Any:
        return await backend.status()

    async def peers(request: Request) -> Any:
        return await backend.peers()

    def query(name: str) -> Handler:
        async def handler(request: Request) -> Any:
            params = dict(request.query_params)
            params.update(request.path_params)
            return await backend.query(name, params)
        return handler

    async def submit(request: Request) -> Any:
        body = _object(await read_json(request, MAX_BATCH_BODY_BYTES))
        if "txs" in body:  # a batch: admitted one by one, no waiting
            items = body["txs"]
            if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
                raise bad_request(f"txs must be a list of 1 to {MAX_BATCH} hex transactions")
            if set(body) - {"txs"}:
                raise bad_request("a batch takes only txs (wait for commits with "
                                  "GET /v1/txs/{id}/wait)")
            raws = [parse_hex(x, f"txs[{i}]") for i, x in enumerate(items)]
            return {"results": await backend.submit_batch(raws)}
        if len(json.dumps(body)) > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")
        raw = parse_hex(body.get("tx"), "tx")
        result = await backend.submit(raw)
        return await _maybe_wait(body, result)

    async def sign(request: Request) -> Any:
        body = _object(await read_json(request))
        kind = body.get("kind")
        if not isinstance(kind, str):
            raise bad_request("kind must be a transaction kind, e.g. 'account.transfer'")
        args = _object(body.get("args", {}), "args")
        result = await backend.sign_and_submit(kind, args)
        return await _maybe_wait(body, result)

    async def action(request: Request) -> Any:
        body = _object(await read_json(request))
        result = await backend.action(request.path_params["name"], body)
        return await _maybe_wait(body, result)

    async def _maybe_wait(body: dict[str, Any], result: dict[str, Any]) -> Any:
        wait = body.get("wait", 0)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
            raise bad_request("wait must be a number of seconds")
        if wait and "id" in result:
            timeout = min(float(wait), MAX_WAIT_SECONDS)
            return await backend.wait_tx(bytes.fromhex(result["id"]), timeout)
        return result

    async def wait_tx(request: Request) -> Any:
        txid = parse_hex(request.path_params["id"], "transaction id", 32)
        try:
            timeout = float(request.query_params.get("timeout", "10"))
        except ValueError:
            raise bad_request("timeout must be a number of seconds") from None
        return await backend.wait_tx(txid, max(0.0, min(timeout, MAX_WAIT_SECONDS)))

    async def metrics_route(request: Request) -> Any:
        if metrics is None:
            raise not_found("metrics are not enabled")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    handlers: list[tuple[str, str, Handler]] = [
        ("GET", f"{v}/status", status),
        ("GET", f"{v}/peers", peers),
        ("POST", f"{v}/txs", submit),
        ("POST", f"{v}/sign", sign),
        ("POST", f"{v}/actions/{{name}}", action),
        ("GET", f"{v}/txs/{{id}}/wait", wait_tx),
        ("GET", "/metrics", metrics_route),
    ]
    for name, params in QUERIES.items():
        path = f"{v}/{name}" + "".join(f"/{{{p}}}" for p in params)
        handlers.append(("GET", path, query(name)))

    routes = [Route(path, _endpoint(ctx, h), methods=[method]) for method, path, h in handlers]

    async def not_found_handler(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        if code == 405:
            return JSONResponse(ApiError(405, "method_not_allowed",
                                         f"{request.method} is not allowed on "
                                         f"{request.url.path}").body(), status_code=405)
        return JSONResponse(not_found(f"no such API route {request.url.path}").body(),
                            status_code=404)

    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware,  # type: ignore[arg-type]
                               allowed_hosts=list(LOOPBACK_HOSTS) + ["[::1]"])],
        exception_handlers={404: not_found_handler, 405: not_found_handler},
    )


def metrics_app(metrics: Metrics) -> Starlette:
    """A token-less app serving only /metrics, for a Prometheus scraper on its own port."""

    async def render(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", render, methods=["GET"])])


# ---- serving ----------------------------------------------------------------------------


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    cfg.graceful_timeout = 2.0
    cfg.keep_alive_timeout = 30.0
    cfg.h11_max_incomplete_size = 16 * 1024  # request line and headers
    cfg.wsgi_max_body_size = MAX_BODY_BYTES
    cfg.backlog = 128
    return cfg


async def serve_app(app: Starlette, host: str, port: int,
                    shutdown: trio.Event | None = None, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED,
                    loopback_only: bool = True) -> None:
    """Serve `app` until `shutdown` is set (or the task is cancelled).

    Reports the bound (host, port) through `task_status`: port 0 in the config means
    "pick one", and the caller records the real one for clients.
    """
    if loopback_only and host not in LOOPBACK_HOSTS:
        raise ValueError(f"the control API binds loopback only, not {host!r}")
    cfg = hypercorn_config(host, port)

    async def trigger() -> None:
        if shutdown is None:
            await trio.sleep_forever()
        else:
            await shutdown.wait()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, cfg, shutdown_trigger=trigger, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        bound = binds[0].removeprefix("http://")
        bhost, _, bport = bound.rpartition(":")
        task_status.started((bhost.strip("[]"), int(bport)))
