"""The control API's client, used by the `commune` command, the devnet and the tests.

It finds the daemon through the data directory: `api.json` says where the API
listens, `api.token` holds the bearer token. Every failure becomes a `ClientError`
subclass whose message says what to do, so the CLI prints one line and exits with
the code of the subclass's `kind`: the daemon is not running, the token is wrong,
a transaction was rejected (and why), an object does not exist, or the request
itself was bad.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from node.config import Paths

DEFAULT_TIMEOUT = 30.0
API_VERSION = "v1"
MAX_TOKEN_FILE_BYTES = 1024


def valid_token(text: str) -> bool:
    return 32 <= len(text) <= 256 and all(c.isalnum() or c in "-_" for c in text)


def read_token(path: Path) -> str:
    """The API token from its file; OSError/ValueError if absent or malformed.

    Lives here rather than in node/api.py so the CLI does not import the server
    stack (trio, Hypercorn, Starlette) just to read a file.
    """
    text = path.read_text(encoding="ascii")[:MAX_TOKEN_FILE_BYTES].strip()
    if not valid_token(text):
        raise ValueError(f"{path} does not hold an API token")
    return text


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ClientError(Exception):
    """A request that did not succeed. `kind` is stable: the CLI maps it to an exit code."""

    kind = "failed"

    def __init__(self, message: str, code: str = "", status: int = 0,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = dict(details or {})


class DaemonNotRunning(ClientError):
    kind = "unreachable"


class Unauthorized(ClientError):
    kind = "auth"


class Rejected(ClientError):
    """The node refused a transaction; `message` is the reason."""

    kind = "rejected"


class NotFound(ClientError):
    kind = "not_found"


class BadRequest(ClientError):
    kind = "usage"


class Timeout(ClientError):
    kind = "timeout"


class ServerBug(ClientError):
    """The daemon failed on a request (HTTP 500): a bug to report, not a user error."""

    kind = "internal"


def _not_running(home: Path, why: str) -> DaemonNotRunning:
    return DaemonNotRunning(
        f"daemon not running ({why}); start it with `commune daemon --home {home}`")


class Client:
    """A synchronous client of one daemon. Use as a context manager or call `close()`."""

    def __init__(self, base_url: str, token: str, home: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url
        self.home = home
        self._token = token
        self._http = httpx.Client(base_url=base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"},
                                  trust_env=False)

    @classmethod
    def from_home(cls, home: Path, timeout: float = DEFAULT_TIMEOUT) -> Client:
        """A client for the daemon of data directory `home`; DaemonNotRunning if none."""
        paths = Paths(home)
        try:
            endpoint = json.loads(paths.api_endpoint.read_text(encoding="utf-8"))
            url = endpoint["url"]
            if not isinstance(url, str) or not url.startswith("http://"):
                raise ValueError("bad url")
        except FileNotFoundError:
            raise _not_running(home, f"no {paths.api_endpoint.name} in {home}") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise _not_running(home, f"{paths.api_endpoint} is unreadable") from None
        try:
            token = read_token(paths.token)
        except FileNotFoundError:
            raise Unauthorized(f"no API token file {paths.token}; restart the daemon to "
                               "create it") from None
        except PermissionError:
            raise Unauthorized(f"cannot read the API token {paths.token}: permission denied "
                               "(run as the user who owns the data directory)") from None
        except (OSError, ValueError) as exc:
            raise Unauthorized(f"cannot read the API token {paths.token}: {exc}") from None
        return cls(url, token, home, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ----------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        url = path if path.startswith("/metrics") else f"/{API_VERSION}/{path.lstrip('/')}"
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, url, params=dict(params or {}) or None,
                                          json=dict(body) if body is not None else None,
                                          **kwargs)
        except httpx.ConnectError:
            where = self.home if self.home is not None else Path("DIR")
            raise _not_running(where, f"nothing listens at {self.base_url}") from None
        except httpx.TimeoutException:
            raise Timeout(f"the daemon at {self.base_url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ClientError(f"talking to the daemon at {self.base_url} failed: {exc}") \
                from None
        return self._result(response)

    def _result(self, response: httpx.Response) -> Any:
        if response.headers.get("content-type", "").startswith("text/plain; version="):
            return response.text  # the Prometheus exposition
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success:
            return data
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code", ""))
            message = str(err.get("message", "")) or response.reason_phrase
            details = err.get("details") if isinstance(err.get("details"), dict) else None
        else:
            code, message, details = "", f"HTTP {response.status_code} {response.text[:200]}", None
        status = response.status_code
        cls: type[ClientError]
        if status == 401:
            cls = Unauthorized
            message = f"{message}; the token in {self.home or 'the data directory'}" \
                      "/api.token was not accepted"
        elif status == 422 or code == "rejected":
            cls = Rejected
        elif status == 404:
            cls = NotFound
        elif status in (400, 405, 413):
            cls = BadRequest
        elif status == 504 or code == "timeout":
            cls = Timeout
        elif status == 500:
            cls = ServerBug
            message = f"the daemon failed: {message}; this is a bug, please report it with " \
                      f"the daemon's log ({self.home or 'the data directory'}/logs/)"
        else:
            cls = ClientError
        raise cls(message, code, status, details)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Mapping[str, Any], timeout: float | None = None) -> Any:
        return self.request("POST", path, body=body, timeout=timeout)

    # ---- conveniences ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("status")
        return result

    def submit(self, raw: bytes, wait: float = 0) -> dict[str, Any]:
        """Submit a transaction signed elsewhere; with `wait`, until it commits."""
        result: dict[str, Any] = self.post("txs", {"tx": raw.hex(), "wait": wait},
                                           timeout=DEFAULT_TIMEOUT + wait)
        return result

    def submit_batch(self, raws: list[bytes]) -> list[dict[str, Any]]:
        """Submit up to 1000 signed transactions in one request; a result for each."""
        result: dict[str, Any] = self.post("txs", {"txs": [r.hex() for r in raws]})
        return list(result["results"])

    def sign(self, kind: str, args: Mapping[str, Any], wait: float = 0) -> dict[str, Any]:
        """Have the daemon sign `kind(args)` with the member's key and submit it."""
        result: dict[str, Any] = self.post("sign", {"kind": kind, "args": dict(args),
                                                    "wait": wait},
                                           timeout=DEFAULT_TIMEOUT + wait)
        return result

    def action(self, name: str, body: Mapping[str, Any], wait: float = 0) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"actions/{name}", {**body, "wait": wait},
                                           timeout=DEFAULT_TIMEOUT + wait)
        return result

    def wait_tx(self, txid: str, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"txs/{txid}/wait",
                                              params={"timeout": timeout},
                                              timeout=DEFAULT_TIMEOUT + timeout)
        return result

    def metrics(self) -> str:
        text: str = self.request("GET", "/metrics")
        return text
