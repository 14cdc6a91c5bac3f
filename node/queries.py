"""The control API's read-only questions, answered from the ledger as JSON-ready data.

Rows come from the ledger's settled state (`ledger.state`, a `StateView`) and its
history (blocks, transactions). Rendering follows one convention everywhere, the one
the CLI documents: account and member ids in their text form ("z..."), peer ids in
base58, other bytes (hashes, object ids) in hex, money as integers in minor units.
Which bytes are ids is decided by the column name (`ID_COLUMNS`), because a 32-byte
value alone does not say whether it is a key or a hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import base58

from node.api import ApiError, bad_request, not_found
from protocol.crypto import PUBLIC_KEY_LEN, IdError, id_text, parse_id, sha256
from protocol.encoding import DecodeError, decode
from protocol.transactions import TxError, decode_tx

ID_COLUMNS = frozenset({
    "id_member", "member", "applicant", "account", "proposer", "signer", "attester", "holder",
    "lessee", "requester", "bidder", "validator", "to", "winner", "from", "owner",
})
"""Columns holding account/member ids (rendered "z..."); other bytes render as hex."""
PEER_COLUMNS = frozenset({"node", "peer_id"})
MAX_LIST = 1000
"""Rows per list answer; lists are for people and scripts, not bulk export (audit is)."""


def render_value(column: str, value: Any) -> Any:
    if isinstance(value, bytes):
        if column in PEER_COLUMNS:
            return base58.b58encode(value).decode("ascii") if value else ""
        if column in ID_COLUMNS and len(value) == PUBLIC_KEY_LEN:
            return id_text(value)
        return value.hex()
    if isinstance(value, list | tuple):
        return [render_value(column, v) for v in value]
    if isinstance(value, dict):
        return {str(k): render_value(str(k), v) for k, v in value.items()}
    return value


def render_row(row: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    out = {k: render_value(k, v) for k, v in row.items()}
    out.update({k: render_value(k, v) for k, v in extra.items()})
    return out


def _id(params: Mapping[str, str], name: str = "id") -> bytes:
    text = params.get(name)
    if not text:
        raise bad_request(f"{name} is required")
    try:
        return parse_id(text)
    except IdError as exc:
        raise bad_request(str(exc)) from None


def _hash(params: Mapping[str, str], name: str = "id") -> bytes:
    text = params.get(name, "")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise bad_request(f"{name} must be a 64-digit hex id, got {text!r}") from None
    if len(raw) != 32:
        raise bad_request(f"{name} must be 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def _opt_id(params: Mapping[str, str], name: str) -> bytes | None:
    return _id(params, name) if params.get(name) else None


# ---- the queries ------------------------------------------------------------------------


def members(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    s = node.ledger.state
    h = node.ledger.height
    validators = set(node.ledger.validators_at(h + 1).members)
    out = []
    for key, row in s.rows("members")[:MAX_LIST]:
        out.append(render_row(row, id=id_text(key), validator=key in validators))
    return {"members": out, "applications": applications(node, params),
            "count": s.count("members")}


def applications(node: Any, params: Mapping[str, str]) -> list[dict[str, Any]]:
    s = node.ledger.state
    needed = min(s.params().get("admission_attestations", 2), max(1, s.count("members")))
    return [render_row(row, applicant=id_text(key), needed=needed)
            for key, row in s.rows("applications")[:MAX_LIST]]


def account(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    who = _id(params)
    s = node.ledger.state
    row = s.account(who)
    base = {"balance": 0, "nonce": 0, "arrears": 0} if row is None else row
    out = render_row({k: base[k] for k in ("balance", "nonce", "arrears") if k in base},
                     id=id_text(who), member=s.is_member(who), exists=row is not None)
    out["pending_nonce"] = node.mempool.pending_nonce(who)
    return out


def dividends(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    who = _id(params, "member")
    rows = node.ledger.state.dividends(who)
    periods = [{"period": p, "amount": a, "claimed": bool(c), "claimed_height": c or None}
               for p, a, c in rows[:MAX_LIST]]
    return {"member": id_text(who), "periods": periods,
            "earned": sum(a for _p, a, _c in rows),
            "unclaimed": sum(a for _p, a, c in rows if not c),
            "claimed": sum(a for _p, a, c in rows if c)}


def proposals(node: Any, params: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for key, row in node.ledger.state.rows("proposals")[:MAX_LIST]:
        r = dict(row)
        change = r.pop("change", b"")
        try:
            r["change"] = decode(change, max_size=64 * 1024) if change else None
        except DecodeError:
            r["change"] = change
        out.append(render_row(r, id=key.hex()))
    return out


def treasury(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    s = node.ledger.state
    t = s.treasury()
    actions = []
    for key, row in s.rows("treasury_actions")[:MAX_LIST]:
        r = dict(row)
        raw_args = r.pop("args", b"")
        try:
            r["args"] = decode(raw_args, max_size=64 * 1024) if raw_args else {}
        except DecodeError:
            r["args"] = raw_args
        actions.append(render_row(r, id=key.hex()))
    withdrawals = [render_row(row, id=key.hex())
                   for key, row in s.rows("withdrawals")[:MAX_LIST]]
    held, inflow, _per_holder = node.ledger.conservation()
    return {"signers": [id_text(x) for x in t["signers"]], "threshold": t["threshold"],
            "actions": actions, "withdrawals": withdrawals, "flows": s.flows(),
            "pool": s.pool(), "height": node.ledger.height,
            "conservation": {"held": held, "inflow": inflow}}


def params_query(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    s = node.ledger.state
    return {"params": s.params(), "open_period": s.open_period(),
            "period_end_ms": s.scalar("period_end_ms"),
            "currency": node.genesis.currency, "minor_units": node.genesis.minor_units}


def validators(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    h = node.ledger.height
    return {"height": h + 1,
            "validators": [id_text(m) for m in node.ledger.validators_at(h + 1).members],
            "next": [id_text(m) for m in node.ledger.validators_at(h + 2).members]}


BLOCK_TX_DETAIL = ("full", "ids")


def block(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    """A committed block: header fields, certificate signers, and its transactions.

    `txs=full` (the default) describes each transaction (id, kind, signer, nonce), which
    decodes every one of them; `txs=ids` gives only their ids (a hash of the bytes, no
    decoding), for clients that follow the chain to see their transactions commit.
    """
    detail = params.get("txs", "full")
    if detail not in BLOCK_TX_DETAIL:
        raise bad_request(f"txs must be one of {', '.join(BLOCK_TX_DETAIL)}, got {detail!r}")
    text = params.get("height", "latest")
    ledger = node.ledger
    if text == "latest":
        height = ledger.height
    elif text.isdigit():
        height = int(text)
    else:
        raise bad_request("height must be a number or 'latest'")
    if height < 1 or height > ledger.height:
        raise not_found(f"no block at height {height} (committed height {ledger.height})")
    b = ledger.block(height)
    assert b is not None
    hd = b.header
    txs: list[dict[str, Any]] = []
    for raw in b.txs:
        if detail == "ids":
            txs.append({"id": sha256(raw).hex()})
            continue
        try:
            t = decode_tx(raw)
            txs.append({"id": t.id.hex(), "kind": t.kind, "signer": id_text(t.signer),
                        "nonce": t.nonce})
        except TxError:  # pragma: no cover - committed transactions decode
            txs.append({"id": "", "kind": "?", "signer": "", "nonce": 0})
    cert = ledger.certificate(height)
    return {"height": height, "hash": b.hash().hex(), "time_ms": hd.time_ms,
            "proposer": id_text(hd.proposer), "prev_hash": hd.prev_hash.hex(),
            "state_root": hd.state_root.hex(), "txs_root": hd.txs_root.hex(),
            "validators_hash": hd.validators_hash.hex(), "txs": txs,
            "evidence": len(b.evidence),
            "certificate": None if cert is None else {
                "round": cert.round, "signers": [id_text(v) for v, _ in cert.signatures]}}


def tx(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    txid = _hash(params)
    out = tx_status(node, txid)
    if out["status"] == "unknown":
        raise not_found(f"no transaction {txid.hex()} in the ledger or the mempool")
    return out


def tx_status(node: Any, txid: bytes) -> dict[str, Any]:
    """Where a transaction is: committed (with its block and result), pending, refused."""
    ledger = node.ledger
    found = ledger.tx_result(txid)
    if found is not None:
        height, index, result = found
        b = ledger.block(height)
        out: dict[str, Any] = {"id": txid.hex(), "status": "committed", "height": height,
                               "index": index, "result": render_value("result", result)}
        if b is not None:
            out.update(_describe(b.txs[index]))
        return out
    pending = node.mempool.get(txid)
    if pending is not None:
        out = {"id": txid.hex(), "status": "pending", **_describe(pending.raw)}
        ready = node.mempool.pending_nonce(pending.signer) + 1
        if pending.nonce > ready:  # held until its signer's missing nonce arrives
            out["waiting_for_nonce"] = ready
        return out
    rejection = node.mempool.rejection(txid)
    if rejection is not None:  # reason, stage (where it was refused), final (for good?)
        return {"id": txid.hex(), "status": "rejected", **rejection.to_json()}
    return {"id": txid.hex(), "status": "unknown"}


def _describe(raw: bytes) -> dict[str, Any]:
    try:
        t = decode_tx(raw)
    except TxError:  # pragma: no cover
        return {}
    return {"kind": t.kind, "signer": id_text(t.signer), "nonce": t.nonce,
            "args": render_value("args", t.args)}


def _rental(s: Any, aid: bytes) -> dict[str, Any] | None:
    r = s.row("rentals", aid)
    return None if r is None else render_row(r)


def assets(node: Any, params: Mapping[str, str]) -> list[dict[str, Any]]:
    s = node.ledger.state
    out = []
    for key, row in s.rows("assets")[:MAX_LIST]:
        rental = s.row("rentals", key)
        out.append(render_row(row, id=key.hex(),
                              lessee=rental["lessee"] if rental else None,
                              rental_status=rental["status"] if rental else None))
    return out


def asset(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    """An asset with its bond auction, series and holdings, rental, and re-auctions."""
    from ledger.auction import rental_auction_id

    aid = _hash(params)
    s = node.ledger.state
    row = s.row("assets", aid)
    if row is None:
        raise not_found(f"no asset {aid.hex()}")
    out = render_row(row, id=aid.hex())
    auction = s.row("auctions", aid)
    if auction is not None:
        out["auction"] = render_row(auction)
        out["auction"]["bids"] = [render_row(b, bid=k[1])
                                  for k, b in s.rows("bond_bids", (aid,))[:MAX_LIST]]
    series = s.row("series", aid)
    out["series"] = None if series is None else render_row(series)
    if series is not None:
        out["series"]["holders"] = [render_row(b, holder=k[1])
                                    for k, b in s.rows("bonds", (aid,))[:MAX_LIST]]
    out["rental"] = _rental(s, aid)
    reauctions = []
    for k in range(int(row.get("reauctions", 0))):
        rid = rental_auction_id(aid, k)
        r = s.row("auctions", rid)
        if r is not None:
            reauctions.append(render_row(r, id=rid.hex(), bids=[
                render_row(b, bid=key[1]) for key, b in s.rows("rent_bids", (rid,))[:MAX_LIST]]))
    out["reauctions"] = reauctions
    return out


def bonds(node: Any, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Holdings, optionally of one asset's series (`asset`) or one `holder`."""
    s = node.ledger.state
    asset_id = _hash(params, "asset") if params.get("asset") else None
    holder = _opt_id(params, "holder")
    rates: dict[bytes, int] = {}
    out = []
    for (aid, who), row in s.rows("bonds", (asset_id,) if asset_id else ()):
        if holder is not None and who != holder:
            continue
        if aid not in rates:
            series = s.row("series", aid)
            rates[aid] = int(series["rate_bps"]) if series else 0
        out.append(render_row(row, asset=aid.hex(), holder=who, rate_bps=rates[aid]))
        if len(out) >= MAX_LIST:
            break
    return out


# ---- raw state rows (added for the devnet's scenario player; bootstrap/devnet.py) -------

MAX_STATE_ROWS = 10_000
"""Rows per `state` answer; a larger scan is refused (narrow it with a prefix)."""


def state_rows(node: Any, params: Mapping[str, str]) -> dict[str, Any]:
    """Rows of one state table exactly as the ledger holds them, for programs that need
    the same reads as the in-process ledger (`bootstrap.player.Reader`): `key` (one row)
    or `prefix` (a key prefix; default all rows), each the hex of canonical msgpack.
    Keys and rows come back the same way, with the committed height they were read at,
    so bytes stay bytes and nothing is lost to a text rendering."""
    from protocol.encoding import encode

    s = node.ledger.state
    table = params.get("table", "")
    if table not in s.tables():
        raise not_found(f"no state table {table!r}")

    def arg(name: str) -> Any:
        text = params.get(name, "")
        try:
            return decode(bytes.fromhex(text), max_size=64 * 1024)
        except (ValueError, DecodeError):
            raise bad_request(f"{name} must be the hex of a canonical msgpack value") from None

    def key_of(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    if "key" in params:
        key = key_of(arg("key"))
        try:
            row = s.row(table, key)
        except (TypeError, KeyError):
            row = None
        found = [] if row is None else [(key, row)]
    else:
        prefix = arg("prefix") if "prefix" in params else []
        if not isinstance(prefix, list):
            raise bad_request("prefix must be a msgpack array")
        found = s.rows(table, tuple(prefix))
        if len(found) > MAX_STATE_ROWS:
            raise ApiError(413, "too_large", f"{len(found)} rows in {table}, over "
                                             f"{MAX_STATE_ROWS}; narrow the prefix")
    return {"table": table, "height": node.ledger.height,
            "rows": [[encode(k).hex(), encode(r).hex()] for k, r in found]}


QUERIES: dict[str, Callable[[Any, Mapping[str, str]], Any]] = {
    "members": members,
    "applications": applications,
    "account": account,
    "assets": assets,
    "asset": asset,
    "bonds": bonds,
    "dividends": dividends,
    "proposals": proposals,
    "treasury": treasury,
    "block": block,
    "tx": tx,
    "params": params_query,
    "validators": validators,
    "state": state_rows,
}


def run(node: Any, name: str, params: Mapping[str, str]) -> Any:
    fn = QUERIES.get(name)
    if fn is None:
        raise ApiError(404, "not_found", f"no query {name!r}")
    return fn(node, params)
