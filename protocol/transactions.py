"""Every transaction kind of the commune, declared as data (DESIGN.md section 6).

A transaction is a signed envelope in the TX domain whose body is
`{"kind": str, "nonce": int, "args": {...}}`; `args` is checked against the kind's
`Struct` below. Objects created by a transaction (an asset, a proposal, a withdrawal,
a treasury action) are named by that transaction's id, which its author knows before
submitting it.

Deliberately absent: any kind that buys, sells, transfers or inherits membership.
A share is earned by labour and attestation only (DESIGN 6.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.crypto import SigningKey, sha256
from protocol.encoding import DecodeError, decode
from protocol.envelope import Domain, Envelope, EnvelopeError
from protocol.schema import (
    Amount,
    Bool,
    Bytes,
    Hash,
    Id,
    Int,
    List,
    Nested,
    Rate,
    SchemaError,
    Struct,
    Tagged,
    Text,
)

MAX_TX_BYTES = 64 * 1024
"""A transaction on the wire; federation relays (a header and certificate) are the largest."""

MAX_PERIODS = 12_000
"""Bound on terms and maturities in periods (a thousand years of months)."""

NAME = Text(1, 64, "display name")
PARAM_NAMES = (
    "period_seconds", "periods_per_year", "admission_attestations", "grace_periods",
    "notice_periods", "commit_seconds", "reveal_seconds", "no_reveal_fee_bps", "min_rent",
    "empty_block_interval", "max_clock_drift", "voting_seconds",
)

CHANGES = {
    "param": Struct({"name": Text(1, 64, "parameter name (DESIGN 6.10)"),
                     "value": Int(0, 2**62, "new value")}),
    "treasury": Struct({"signers": List(Id(), 1, 64, "treasury signers", unique=True),
                        "threshold": Int(1, 64, "approvals needed")}),
    "expel": Struct({"member": Id("member to expel")}),
    "link": Struct({"genesis": Bytes(1, 48 * 1024, "the other commune's genesis document"),
                    "validators": List(Id(), 1, 1000, "its current validator set", unique=True),
                    "height": Int(0, doc="height at which that validator set holds")}),
    "merge": Struct({"commune": Hash("chain id of the linked commune to merge with"),
                     "params": Bytes(0, 16 * 1024, "canonical map of merged parameters"),
                     "height": Int(1, doc="merge height of this ledger")}),
    "upgrade": Struct({"version": Int(1, 2**31, "protocol version"),
                       "height": Int(1, doc="activation height")}),
}

TX_KINDS: dict[str, Struct] = {
    # 6.2 membership, earned by labour only
    "member.apply": Struct({"name": NAME,
                            "enterprise": Text(0, 128, "enterprise the applicant works in"),
                            "labour": Text(0, 2000, "labour statement")},
                           "apply for membership"),
    "member.attest": Struct({"applicant": Id("the applicant whose labour is attested")},
                            "attest an applicant's labour (not by the applicant)"),
    "member.resign": Struct({}, "give up one's share"),
    "member.node": Struct({"peer_id": Bytes(1, 128, "libp2p peer id voting for the member")},
                          "register or rotate this member's node"),
    # 6.3 accounts and treasury
    "account.transfer": Struct({"to": Id("recipient"), "amount": Amount(),
                                "memo": Text(0, 256, optional=True)}, "move money"),
    "account.withdraw": Struct({"amount": Amount(),
                                "reference": Text(0, 256, "where the treasury pays out")},
                               "request a payout from the treasury"),
    "treasury.deposit": Struct({"account": Id("account credited"), "amount": Amount(),
                                "reference": Text(1, 256, "external payment reference")},
                               "propose crediting an external payment"),
    "treasury.payout": Struct({"withdrawal": Hash("id of the account.withdraw transaction"),
                               "reference": Text(0, 256, optional=True)},
                              "propose settling a withdrawal"),
    "treasury.acquire": Struct({"asset": Hash("asset id"),
                                "reference": Text(0, 256, optional=True)},
                               "propose recording the purchase of a funded asset"),
    "treasury.acquire_failed": Struct({"asset": Hash("asset id"),
                                       "reference": Text(0, 256, optional=True)},
                                      "propose recording a failed purchase"),
    "treasury.liquidated": Struct({"asset": Hash("asset id"), "proceeds": Amount(allow_zero=True),
                                   "reference": Text(0, 256, optional=True)},
                                  "propose recording the sale of an asset"),
    "treasury.approve": Struct({"action": Hash("id of the proposing treasury transaction")},
                               "approve a pending treasury action"),
    # 6.4 assets and bond auctions
    "asset.request": Struct({
        "description": Text(1, 500),
        "enterprise": Text(0, 128, optional=True),
        "price": Amount(doc="purchase price P"),
        "rent": Amount(doc="rent R per period"),
        "term": Int(1, MAX_PERIODS, "rental term T in periods"),
        "maturity": Int(1, MAX_PERIODS, "bond maturity M in periods (M <= T)"),
        "max_rate_bps": Rate("highest bond rate accepted"),
        "commit_seconds": Int(1, 10**8, "commit window (default: parameter)", optional=True),
        "reveal_seconds": Int(1, 10**8, "reveal window (default: parameter)", optional=True),
    }, "request an asset with a rental offer; opens a bond auction"),
    "bond.commit": Struct({"asset": Hash("asset id"),
                           "commitment": Hash("hash(auction, bidder, amount, rate_bps, salt)"),
                           "lock": Amount(doc="escrowed, at least the hidden amount")},
                          "sealed bond bid"),
    "bond.reveal": Struct({"asset": Hash("asset id"), "amount": Amount(), "rate_bps": Rate(),
                           "salt": Bytes(32, 32)}, "open a sealed bond bid"),
    "bond.transfer": Struct({"asset": Hash("asset id of the series"), "to": Id(),
                             "amount": Amount(doc="outstanding face moved")},
                            "transfer bonds (property, unlike shares)"),
    # 6.6 rental re-auctions
    "rent.commit": Struct({"asset": Hash("asset id"),
                           "commitment": Hash("hash(auction, bidder, rent, term, salt)"),
                           "lock": Amount(doc="escrowed deposit", allow_zero=True)},
                          "sealed bid in a rental re-auction"),
    "rent.reveal": Struct({"asset": Hash("asset id"), "rent": Amount(),
                           "term": Int(1, MAX_PERIODS), "salt": Bytes(32, 32)},
                          "open a sealed rental bid"),
    "rental.end": Struct({"asset": Hash("asset id")}, "end one's rental after the notice"),
    # 6.7 dividends
    "dividend.claim": Struct({"periods": List(Int(0, 2**40), 1, 1000, "periods claimed",
                                              unique=True)}, "claim dividends"),
    # 6.8 governance
    "proposal.create": Struct({"title": Text(1, 200),
                               "change": Tagged("type", CHANGES, "what the proposal changes"),
                               "voting_seconds": Int(1, 10**8, "voting window",
                                                     optional=True)},
                              "governance proposal"),
    "proposal.vote": Struct({"proposal": Hash("proposal id"), "yes": Bool()},
                            "one member, one vote"),
    # 6.9 federation
    "federation.relay": Struct({"commune": Hash("chain id of the linked commune"),
                                "header": Bytes(1, 16 * 1024, "its signed header"),
                                "certificate": Bytes(1, 40 * 1024, "its commit certificate")},
                               "relay a linked commune's header (light client)"),
}

BODY = Struct({"kind": Text(1, 64), "nonce": Int(1, 2**62), "args": Nested(Struct({}))})


class TxError(ValueError):
    """A transaction rejected before it reaches the ledger: malformed, unknown, unsigned."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """A verified-shape signed transaction. `id` is the hash of its wire bytes."""

    envelope: Envelope
    raw: bytes
    id: bytes

    @property
    def kind(self) -> str:
        return str(self.envelope.body["kind"])

    @property
    def nonce(self) -> int:
        return int(self.envelope.body["nonce"])

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.envelope.body["args"])

    @property
    def signer(self) -> bytes:
        return self.envelope.signer

    def verify(self, chain_id: bytes) -> bool:
        return self.envelope.verify(Domain.TX, chain_id)


def validate_body(body: Any) -> None:
    """Stateless check of a transaction body; raises `SchemaError` naming the field."""
    if type(body) is not dict:
        raise SchemaError("body", "expected a map")
    kind = body.get("kind")
    if type(kind) is not str or kind not in TX_KINDS:
        raise SchemaError("kind", f"unknown transaction kind {kind!r}")
    if set(body) != {"kind", "nonce", "args"}:
        extra = sorted(set(body) - {"kind", "nonce", "args"})
        raise SchemaError("body", f"unknown fields {extra}" if extra else "missing fields")
    nonce = body["nonce"]
    if type(nonce) is not int or not 1 <= nonce <= 2**62:
        raise SchemaError("nonce", "nonce must be an integer from 1")
    TX_KINDS[kind].validate(body["args"], "args")


def make_tx(key: SigningKey, chain_id: bytes, kind: str, nonce: int,
            args: dict[str, Any]) -> Transaction:
    """Build and sign a transaction; raises `SchemaError` if it would be rejected anyway."""
    body = {"kind": kind, "nonce": nonce, "args": args}
    validate_body(body)
    env = Envelope.create(key, Domain.TX, chain_id, body)
    raw = env.encode()
    if len(raw) > MAX_TX_BYTES:
        raise TxError(f"transaction is {len(raw)} bytes, over {MAX_TX_BYTES}")
    return Transaction(env, raw, sha256(raw))


def decode_tx(raw: bytes, chain_id: bytes | None = None) -> Transaction:
    """Decode and statelessly validate a transaction from the wire.

    With `chain_id`, the signature is checked too (callers that batch-verify, such as
    block replay, pass None and verify later). Raises `TxError` with the reason.
    """
    if len(raw) > MAX_TX_BYTES:
        raise TxError(f"transaction is {len(raw)} bytes, over {MAX_TX_BYTES}")
    try:
        env = Envelope.from_wire(decode(raw, max_size=MAX_TX_BYTES))
        validate_body(env.body)
    except (DecodeError, EnvelopeError, SchemaError) as exc:
        raise TxError(str(exc)) from None
    tx = Transaction(env, bytes(raw), sha256(bytes(raw)))
    if chain_id is not None and not tx.verify(chain_id):
        raise TxError("bad signature (wrong key, tampered body, or signed for another commune)")
    return tx
