"""Making, writing and reading genesis files (`commune genesis new|show`).

The ledger validates a genesis document (`ledger/genesis.py`); this module turns
command-line text into one and moves it to and from files. The file is the JSON view
by default (people read and exchange it; the chain id is computed from the canonical
msgpack either way), or the canonical msgpack bytes with `fmt="msgpack"`; reading
accepts both. Writes are atomic (temporary file, fsync, rename), so a crash never
leaves half a genesis behind.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ledger.genesis import PARAMS, Founder, Genesis, GenesisError
from protocol.crypto import IdError, id_text, parse_id

FORMATS = ("json", "msgpack")


def parse_founder(text: str) -> Founder:
    """`ID[:NAME[:LABOUR STATEMENT]]`; the name defaults to the id's first characters."""
    parts = text.split(":", 2)
    try:
        fid = parse_id(parts[0].strip())
    except IdError as exc:
        raise GenesisError(f"--founder {text!r}: {exc}") from None
    name = parts[1].strip() if len(parts) > 1 and parts[1].strip() else id_text(fid)[:12]
    labour = parts[2].strip() if len(parts) > 2 else ""
    return Founder(fid, name, labour)


def parse_address(text: str) -> tuple[bytes, str]:
    """`ID=MULTIADDR`: where a founder's node listens (bootstrap information)."""
    if "=" not in text:
        raise GenesisError(f"--address {text!r}: expected ID=MULTIADDR")
    who, addr = text.split("=", 1)
    try:
        fid = parse_id(who.strip())
    except IdError as exc:
        raise GenesisError(f"--address {text!r}: {exc}") from None
    addr = addr.strip()
    if not addr.startswith("/"):
        raise GenesisError(f"--address {text!r}: a multiaddr starts with '/' "
                           "(e.g. /ip4/192.0.2.1/tcp/4001)")
    return fid, addr


def parse_param(text: str) -> tuple[str, int]:
    """`NAME=INTEGER`, a parameter of DESIGN 6.10."""
    if "=" not in text:
        raise GenesisError(f"--param {text!r}: expected NAME=VALUE "
                           f"(names: {', '.join(sorted(PARAMS))})")
    name, value = (s.strip() for s in text.split("=", 1))
    if name not in PARAMS:
        raise GenesisError(f"--param {text!r}: unknown parameter {name!r} "
                           f"(names: {', '.join(sorted(PARAMS))})")
    try:
        return name, int(value.replace("_", ""))
    except ValueError:
        raise GenesisError(f"--param {text!r}: {value!r} is not an integer") from None


def parse_time(text: str | None) -> int:
    """Unix milliseconds, or an ISO-8601 date/time (UTC unless it says otherwise);
    None means now, rounded down to the second."""
    if text is None:
        return int(time.time()) * 1000
    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        d = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise GenesisError(f"--time {text!r}: expected Unix milliseconds or an ISO-8601 "
                           "time such as 2025-01-01T00:00:00Z") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp() * 1000)


def new_genesis(*, name: str, founders: Sequence[str], currency: str = "EUR",
                minor_units: int = 2, addresses: Sequence[str] = (),
                signers: Sequence[str] = (), threshold: int | None = None,
                params: Sequence[str] = (), time_text: str | None = None) -> Genesis:
    """A genesis from command-line text; `GenesisError` says what to fix.

    Treasury signers default to every founder; the threshold to a majority of signers.
    """
    if not founders:
        raise GenesisError("at least one --founder is needed")
    fs = [parse_founder(f) for f in founders]
    ids = [f.id for f in fs]
    if len(set(ids)) != len(ids):
        raise GenesisError("a founder is listed twice")
    addr: dict[bytes, str] = {}
    for a in addresses:
        fid, ma = parse_address(a)
        if fid not in ids:
            raise GenesisError(f"--address for {id_text(fid)}, who is not a founder")
        addr[fid] = ma
    fs = [Founder(f.id, f.name, f.labour, f.enterprise, addr.get(f.id, "")) for f in fs]
    try:
        signer_ids = [parse_id(s.strip()) for s in signers] if signers else ids
    except IdError as exc:
        raise GenesisError(f"--signer: {exc}") from None
    if len(set(signer_ids)) != len(signer_ids):
        raise GenesisError("a treasury signer is listed twice")
    k = threshold if threshold is not None else len(signer_ids) // 2 + 1
    values: dict[str, int] = {}
    for p in params:
        n, v = parse_param(p)
        values[n] = v
    return Genesis.create(name=name, currency=currency, minor_units=minor_units, founders=fs,
                          treasury_signers=signer_ids, treasury_threshold=k,
                          genesis_time_ms=parse_time(time_text), params=values)


def render(g: Genesis, fmt: str = "json") -> bytes:
    if fmt == "json":
        return g.to_json().encode("utf-8")
    if fmt == "msgpack":
        return g.encode()
    raise GenesisError(f"unknown format {fmt!r} (choose {', '.join(FORMATS)})")


def write_genesis(g: Genesis, path: str, fmt: str = "json", force: bool = False) -> None:
    """Write atomically; refuses to replace an existing file unless `force`."""
    data = render(g, fmt)
    if os.path.exists(path) and not force:
        raise FileExistsError(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".genesis-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_genesis(path: str) -> Genesis:
    return Genesis.load(path)


def describe(g: Genesis) -> dict[str, Any]:
    """A summary for people and scripts: ids in text form, times in ISO-8601 too."""
    when = dt.datetime.fromtimestamp(g.genesis_time_ms / 1000, tz=dt.UTC)
    return {
        "chain_id": g.chain_id.hex(),
        "name": g.name,
        "currency": g.currency,
        "minor_units": g.minor_units,
        "version": g.version,
        "genesis_time_ms": g.genesis_time_ms,
        "genesis_time": when.isoformat().replace("+00:00", "Z"),
        "founders": [{"id": id_text(f.id), "name": f.name, "labour": f.labour,
                      "enterprise": f.enterprise, "address": f.address} for f in g.founders],
        "treasury": {"signers": [id_text(s) for s in g.treasury_signers],
                     "threshold": g.treasury_threshold},
        "params": dict(sorted(g.params.items())),
    }
