"""The member's own automatic actions: revealing sealed bids, claiming dividends.

Sealed bids (DESIGN 6.4, 6.6): a bid is committed as a hash of (auction, bidder,
amount, rate or rent and term, salt) and must be opened inside the reveal window, or
part of its lock is forfeited. The member's daemon does the opening: the salt is
derived from the member's key seed and the auction (`ledger.auction.derive_salt`),
so nothing secret is stored, and the bid's terms are kept in `bids.jsonl` in the
data directory, appended and fsynced *before* the commitment is submitted -- so a
daemon killed at any moment and restarted still knows every bid it may have sent.

When is a reveal due? The ledger is the judge: after every commit (and every few
seconds) the daemon asks the ledger whether the reveal would execute now (its
`check_tx` at the current time) and submits it when it would. That needs no copy of
the auction rules here and cannot drift from them.

Dividends (DESIGN 6.7): with `auto_claim` on (the default), every unclaimed period
is claimed as soon as it appears.

Node registration (DESIGN 6.2, `member.node`): validators are members with a
registered node. Founders are registered by the genesis; a member admitted later has
its daemon register the node's peer id (derived from the member key, which is the
node's libp2p identity) as soon as the admission commits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from node import api
from node.logs import get_logger
from protocol.transactions import Transaction, make_tx

log = get_logger("actions")

BIDS_FILE = "bids.jsonl"
MAX_BIDS_FILE_BYTES = 16 * 1024 * 1024
TICK_SECONDS = 1.0
MAX_CLAIM_PERIODS = 1000


@dataclass(frozen=True)
class Bid:
    """One sealed bid of this member, as recorded before its commitment was sent."""

    kind: str  # "bond" or "rent"
    asset: str  # hex
    auction: str  # hex: the asset id for a bond auction, the rental auction id otherwise
    index: int
    lock: int
    amount: int = 0
    rate_bps: int = 0
    rent: int = 0
    term: int = 0


class BidBook:
    """`bids.jsonl`: one JSON object per line, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bids: list[Bid] = []
        self._load()

    def _load(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size > MAX_BIDS_FILE_BYTES:
            raise OSError(f"{self.path} is larger than {MAX_BIDS_FILE_BYTES} bytes")
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                self.bids.append(Bid(**json.loads(line)))
            except (ValueError, TypeError):
                # A line torn by a crash mid-append: its commitment was never sent.
                log.warning("bid_line_unreadable", file=self.path, line=n + 1)

    def next_index(self, auction: bytes) -> int:
        return sum(1 for b in self.bids if b.auction == auction.hex())

    def add(self, bid: Bid) -> None:
        line = (json.dumps(asdict(bid), sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.bids.append(bid)


def _hash_arg(body: Mapping[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise api.bad_request(f"{name} must be a hex id")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise api.bad_request(f"{name} is not hex") from None
    if len(raw) != 32:
        raise api.bad_request(f"{name} must be 32 bytes")
    return raw


def _int_arg(body: Mapping[str, Any], name: str, minimum: int,
             default: int | None = None) -> int:
    value = body.get(name, default)
    if type(value) is not int or value < minimum:
        raise api.bad_request(f"{name} must be an integer >= {minimum}")
    return value


class Actions:
    """The automatic actions of one node, and the composite API actions behind them."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.book = BidBook(node.paths.home / BIDS_FILE)
        self._pending: dict[tuple[str, str, int], bytes] = {}
        """(kind, auction, index) or ("claim", "", 0) -> id of our submitted transaction."""

    # ---- API actions ---------------------------------------------------------------------

    async def bond_bid(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from ledger.auction import bond_commitment, derive_salt

        asset = _hash_arg(body, "asset")
        amount = _int_arg(body, "amount", 1)
        rate = _int_arg(body, "rate_bps", 0)
        lock = _int_arg(body, "lock", amount, amount)
        me = self.node.key.public
        index = self.book.next_index(asset)
        salt = derive_salt(self.node.key.seed(), asset, index)
        commitment = bond_commitment(asset, me, amount, rate, salt)
        self.book.add(Bid("bond", asset.hex(), asset.hex(), index, lock, amount=amount,
                          rate_bps=rate))
        out: dict[str, Any] = await self.node.sign_args(
            "bond.commit", {"asset": asset, "commitment": commitment, "lock": lock})
        out["bid_index"] = index
        return out

    async def rent_bid(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from ledger.auction import derive_salt, rent_commitment

        asset = _hash_arg(body, "asset")
        rent = _int_arg(body, "rent", 1)
        term = _int_arg(body, "term", 1)
        lock = _int_arg(body, "lock", 0, 0)
        auction = self._rental_auction(asset, body)
        me = self.node.key.public
        index = self.book.next_index(auction)
        salt = derive_salt(self.node.key.seed(), auction, index)
        commitment = rent_commitment(auction, me, rent, term, salt)
        self.book.add(Bid("rent", asset.hex(), auction.hex(), index, lock, rent=rent,
                          term=term))
        out: dict[str, Any] = await self.node.sign_args(
            "rent.commit", {"asset": asset, "commitment": commitment, "lock": lock})
        out["bid_index"] = index
        out["auction"] = auction.hex()
        return out

    def _rental_auction(self, asset: bytes, body: Mapping[str, Any]) -> bytes:
        """The id of the asset's open rental re-auction (the ledger numbers its rounds)."""
        from ledger.auction import rental_auction_id

        if "auction" in body:
            return _hash_arg(body, "auction")
        s = self.node.ledger.state
        row = s.row("assets", asset) if "assets" in s.tables() else None
        if row is None:
            raise api.not_found(f"no asset {asset.hex()}")
        for column in ("reauction_round", "rental_round", "auction_round"):
            if column in row:
                return rental_auction_id(asset, int(row[column]))
        for column in ("rental_auction", "auction"):
            if isinstance(row.get(column), bytes) and len(row[column]) == 32:
                return bytes(row[column])
        raise api.bad_request("cannot tell which rental auction of this asset is open")

    async def claim(self, body: Mapping[str, Any]) -> dict[str, Any]:
        periods = self.node.ledger.state.unclaimed_periods(self.node.key.public)
        if not periods:
            raise api.rejected("no unclaimed dividends")
        return await self._claim(periods)

    async def _claim(self, periods: list[int]) -> dict[str, Any]:
        chosen = sorted(periods)[:MAX_CLAIM_PERIODS]
        out: dict[str, Any] = await self.node.sign_args("dividend.claim", {"periods": chosen})
        self._pending[("claim", "", 0)] = bytes.fromhex(out["id"])
        return out

    # ---- automatic actions ---------------------------------------------------------------

    def _is_pending(self, key: tuple[str, str, int]) -> bool:
        txid = self._pending.get(key)
        return txid is not None and txid in self.node.mempool

    def _reveal_tx(self, bid: Bid, nonce: int) -> Transaction:
        from ledger.auction import derive_salt

        salt = derive_salt(self.node.key.seed(), bytes.fromhex(bid.auction), bid.index)
        if bid.kind == "bond":
            kind = "bond.reveal"
            args: dict[str, Any] = {"asset": bytes.fromhex(bid.asset), "amount": bid.amount,
                                    "rate_bps": bid.rate_bps, "salt": salt}
        else:
            kind = "rent.reveal"
            args = {"asset": bytes.fromhex(bid.asset), "rent": bid.rent, "term": bid.term,
                    "salt": salt}
        return make_tx(self.node.key, self.node.chain_id, kind, nonce, args)

    def _would_apply(self, tx: Transaction) -> bool:
        from node.driver import now_ms

        ledger = self.node.ledger
        time_ms = max(now_ms(), ledger.last_time_ms + 1)
        return ledger.check_tx(tx, time_ms=time_ms, signature_checked=True) is None

    async def _register_node(self) -> None:
        """A member's node votes once registered (`member.node`); a newly admitted member's
        daemon registers itself, so admission is all it takes to become a validator."""
        from ledger.membership import default_peer_id

        me = self.node.key.public
        row = self.node.ledger.state.member(me)
        if row is None or row["node"] or self._is_pending(("node", "", 0)):
            return
        peer = default_peer_id(me)
        probe = make_tx(self.node.key, self.node.chain_id, "member.node",
                        self.node.ledger.next_nonce(me), {"peer_id": peer})
        if not self._would_apply(probe):
            return
        try:
            out = await self.node.sign_args("member.node", {"peer_id": peer})
        except api.ApiError as exc:
            log.warning("node_registration_refused", reason=exc.message)
            return
        self._pending[("node", "", 0)] = bytes.fromhex(out["id"])
        self.node.metrics.actions.labels("member.node").inc()
        log.info("node_registered", tx=out["id"])

    async def tick(self) -> None:
        """Submit every reveal that would execute now, and claims when due."""
        ledger = self.node.ledger
        me = self.node.key.public
        for bid in self.book.bids:
            key = (bid.kind, bid.auction, bid.index)
            if self._is_pending(key):
                continue
            probe = self._reveal_tx(bid, ledger.next_nonce(me))
            if not self._would_apply(probe):
                continue
            nonce = self.node.mempool.pending_nonce(me) + 1
            tx = probe if nonce == probe.nonce else self._reveal_tx(bid, nonce)
            try:
                result = await self.node.submit(tx.raw)
            except api.ApiError as exc:
                log.warning("reveal_refused", asset=bid.asset, index=bid.index,
                            reason=exc.message)
                continue
            self._pending[key] = tx.id
            self.node.metrics.actions.labels(tx.kind).inc()
            log.info("revealed", kind=bid.kind, asset=bid.asset, index=bid.index,
                     tx=result["id"])
        await self._register_node()
        if self.node.config.auto_claim and not self._is_pending(("claim", "", 0)):
            periods = ledger.state.unclaimed_periods(me)
            if periods:
                probe = make_tx(self.node.key, self.node.chain_id, "dividend.claim",
                                ledger.next_nonce(me),
                                {"periods": sorted(periods)[:MAX_CLAIM_PERIODS]})
                if self._would_apply(probe):
                    try:
                        out = await self._claim(periods)
                    except api.ApiError as exc:
                        log.warning("claim_refused", reason=exc.message)
                    else:
                        self.node.metrics.actions.labels("dividend.claim").inc()
                        log.info("claimed", periods=len(periods), tx=out["id"])


async def run(node: Any) -> None:
    """The background task: act after every commit, and at least every second."""
    actions = node.actions
    while True:
        with trio.move_on_after(TICK_SECONDS):
            await node.driver.commit_happened()
        try:
            await actions.tick()
        except Exception:  # an action must never take the node down
            log.exception("actions_failed")


async def run_action(node: Any, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    actions: Actions = node.actions
    if name == "bond_bid":
        return await actions.bond_bid(body)
    if name == "rent_bid":
        return await actions.rent_bid(body)
    if name == "claim":
        return await actions.claim(body)
    raise api.not_found(f"no action {name!r} (bond_bid, rent_bid, claim)")
