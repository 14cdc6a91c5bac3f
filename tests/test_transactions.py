"""Transaction schemas: every declared kind round-trips; every malformed one is rejected.

Examples are generated from the schemas themselves (smallest and largest values of
every field), so a kind added to TX_KINDS is covered without editing this file.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import SigningKey, sha256
from protocol.encoding import encode
from protocol.envelope import Domain, Envelope
from protocol.schema import Field, SchemaError, Struct, describe
from protocol.transactions import (
    BODY,
    MAX_TX_BYTES,
    TX_KINDS,
    Transaction,
    TxError,
    decode_tx,
    make_tx,
    validate_body,
)

CHAIN = sha256(b"test chain")
OTHER_CHAIN = sha256(b"other chain")
KEY = SigningKey.derive("test", "tx-author")
KINDS = sorted(TX_KINDS)


# ---- examples generated from the declarations ------------------------------------------


def example(spec: Field, big: bool, salt: int = 0) -> Any:
    """A valid value for `spec`: its smallest (big=False) or largest (big=True) form."""
    k = spec.kind
    if k == "int":
        assert spec.min is not None and spec.max is not None
        return spec.max if big else spec.min
    if k == "str":
        n = (spec.max if big else spec.min) or 0
        return ("é" * (n // 2) + "x" * (n % 2)) if big else "x" * n
    if k == "bytes":
        n = (spec.max if big else spec.min) or 0
        return bytes([salt % 256]) * n
    if k == "bool":
        return big
    if k == "choice":
        assert spec.choices
        return spec.choices[-1 if big else 0]
    if k in ("list", "unique_list"):
        assert spec.item is not None
        n = spec.min or 0
        if big:
            n = min(spec.max or 0, 3)
        n = max(n, 1) if big else n
        return [example(spec.item, big, salt=i + 1) if spec.item.kind != "int"
                else (spec.item.min or 0) + i for i in range(n)]
    if k == "struct":
        assert spec.struct is not None
        return example_args(spec.struct, big)
    if k == "tagged":
        assert spec.variants is not None and spec.tag is not None
        name = sorted(spec.variants)[-1 if big else 0]
        return {spec.tag: name, **example_args(spec.variants[name], big)}
    raise AssertionError(f"no example for field kind {k}")


def example_args(struct: Struct, big: bool) -> dict[str, Any]:
    """All fields when big; only the required ones otherwise."""
    return {name: example(f, big) for name, f in struct.fields.items() if big or not f.optional}


def tagged_variants(struct: Struct, big: bool = False) -> list[dict[str, Any]]:
    """One example per variant of every tagged field (e.g. each proposal change)."""
    out = []
    for name, f in struct.fields.items():
        if f.kind == "tagged":
            assert f.variants is not None and f.tag is not None
            for tag, variant in sorted(f.variants.items()):
                args = example_args(struct, big)
                args[name] = {f.tag: tag, **example_args(variant, big)}
                out.append(args)
    return out


def fits(args: dict[str, Any], kind: str) -> bool:
    body = {"kind": kind, "nonce": 2**62, "args": args}
    return len(encode({"body": body, "signer": b"\0" * 32, "sig": b"\0" * 64})) <= MAX_TX_BYTES


def signed_raw(body: Any, chain: bytes = CHAIN) -> bytes:
    """Wire bytes of a correctly signed envelope with any body (bypasses make_tx checks)."""
    return Envelope.create(KEY, Domain.TX, chain, body).encode()


# ---- every kind round-trips -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("big", [False, True], ids=["smallest", "largest"])
def test_every_kind_round_trips(kind: str, big: bool) -> None:
    args = example_args(TX_KINDS[kind], big)
    if not fits(args, kind):
        # A field's own bound may exceed what one transaction can carry; then the size
        # limit must reject it cleanly rather than emit an undeliverable transaction.
        with pytest.raises(TxError, match="bytes"):
            make_tx(KEY, CHAIN, kind, 1, args)
        return
    tx = make_tx(KEY, CHAIN, kind, 5, args)
    assert tx.id == sha256(tx.raw)
    again = decode_tx(tx.raw, CHAIN)
    assert (again.kind, again.nonce, again.args, again.signer) == (kind, 5, args, KEY.public)
    assert again.id == tx.id and again.raw == tx.raw
    assert decode_tx(tx.raw).id == tx.id  # without a chain: shape only
    with pytest.raises(TxError, match="signature"):
        decode_tx(tx.raw, OTHER_CHAIN)


@pytest.mark.parametrize("kind", [k for k in KINDS if tagged_variants(TX_KINDS[k])])
@pytest.mark.parametrize("big", [False, True], ids=["smallest", "largest"])
def test_every_variant_of_tagged_fields_round_trips(kind: str, big: bool) -> None:
    for args in tagged_variants(TX_KINDS[kind], big):
        if not fits(args, kind):
            with pytest.raises(TxError, match="bytes"):
                make_tx(KEY, CHAIN, kind, 1, args)
            continue
        tx = make_tx(KEY, CHAIN, kind, 1, args)
        assert decode_tx(tx.raw, CHAIN).args == args


def test_every_kind_is_described() -> None:
    for kind, struct in TX_KINDS.items():
        assert struct.doc, f"{kind} has no description"
        names = [d["name"] for d in describe(struct)]
        assert names == list(struct.fields)


def test_membership_cannot_be_bought_sold_or_transferred() -> None:
    """DESIGN 6.2: a share is earned by labour only; no kind moves one."""
    for kind in TX_KINDS:
        assert "share" not in kind
        assert kind.split(".")[0] != "member" or kind.split(".")[1] in {
            "apply", "attest", "resign", "node"}


def test_ids_differ_by_nonce_and_signer() -> None:
    args = example_args(TX_KINDS["member.resign"], False)
    a = make_tx(KEY, CHAIN, "member.resign", 1, args)
    b = make_tx(KEY, CHAIN, "member.resign", 2, args)
    c = make_tx(SigningKey.derive("test", "someone else"), CHAIN, "member.resign", 1, args)
    assert len({a.id, b.id, c.id}) == 3


def test_args_property_is_a_copy() -> None:
    tx = make_tx(KEY, CHAIN, "account.transfer", 1, {"to": KEY.public, "amount": 5})
    tx.args["amount"] = 10**9
    assert tx.args["amount"] == 5


# ---- rejections name the field ----------------------------------------------------------


def wrong_type_value(spec: Field) -> Any:
    return {
        "int": "1", "str": b"x", "bytes": "x", "bool": 1, "choice": 1, "list": {},
        "unique_list": {}, "struct": [], "tagged": [],
    }[spec.kind]


def bad_field_cases() -> list[tuple[str, str, Any, str]]:
    """(kind, field, bad value, what) for every field of every kind."""
    cases = []
    for kind in KINDS:
        for name, spec in TX_KINDS[kind].fields.items():
            cases.append((kind, name, wrong_type_value(spec), "wrong type"))
            if spec.kind == "int":
                assert spec.min is not None and spec.max is not None
                cases.append((kind, name, spec.min - 1, "below minimum"))
                cases.append((kind, name, spec.max + 1, "above maximum"))
                cases.append((kind, name, True, "bool for int"))
            elif spec.kind == "str":
                assert spec.max is not None
                cases.append((kind, name, "x" * (spec.max + 1), "too long"))
                cases.append((kind, name, "é" * (spec.max // 2 + 1), "too many utf-8 bytes"))
                if spec.min:
                    cases.append((kind, name, "", "too short"))
            elif spec.kind == "bytes":
                assert spec.max is not None
                if spec.max < MAX_TX_BYTES:
                    cases.append((kind, name, b"\1" * (spec.max + 1), "too long"))
                if spec.min:
                    cases.append((kind, name, b"\1" * (spec.min - 1), "too short"))
            elif spec.kind in ("list", "unique_list"):
                assert spec.max is not None and spec.item is not None
                if spec.min:
                    cases.append((kind, name, [], "empty list"))
                cases.append((kind, name, [wrong_type_value(spec.item)], "bad item"))
                if spec.kind == "unique_list":
                    item = example(spec.item, False)
                    cases.append((kind, name, [item, item], "duplicate item"))
    return cases


BAD = bad_field_cases()


@pytest.mark.parametrize("kind, name, value, what", BAD,
                         ids=[f"{k}.{n}-{w}" for k, n, _, w in BAD])
def test_bad_field_rejected_naming_it(kind: str, name: str, value: Any, what: str) -> None:
    args = example_args(TX_KINDS[kind], big=False)
    args[name] = value
    with pytest.raises(SchemaError) as info:
        make_tx(KEY, CHAIN, kind, 1, args)
    assert info.value.path.startswith(f"args.{name}"), info.value
    with pytest.raises(TxError, match=f"args\\.{name}"):
        decode_tx(signed_raw({"kind": kind, "nonce": 1, "args": args}), CHAIN)


def test_negative_amounts_rejected() -> None:
    for kind in KINDS:
        for name, spec in TX_KINDS[kind].fields.items():
            if spec.kind == "int":
                args = example_args(TX_KINDS[kind], big=False)
                args[name] = -1
                with pytest.raises(SchemaError, match=f"args.{name}"):
                    validate_body({"kind": kind, "nonce": 1, "args": args})


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_and_missing_fields_rejected(kind: str) -> None:
    args = example_args(TX_KINDS[kind], big=False)
    with pytest.raises(SchemaError) as info:
        make_tx(KEY, CHAIN, kind, 1, dict(args, surprise=1))
    assert info.value.path == "args.surprise"
    with pytest.raises(TxError, match="args.surprise"):
        decode_tx(signed_raw({"kind": kind, "nonce": 1, "args": dict(args, surprise=1)}))
    for name, spec in TX_KINDS[kind].fields.items():
        if not spec.optional:
            partial = {k: v for k, v in args.items() if k != name}
            with pytest.raises(SchemaError) as info:
                make_tx(KEY, CHAIN, kind, 1, partial)
            assert info.value.path == f"args.{name}"


@pytest.mark.parametrize("body, path", [
    ({"kind": "member.buy", "nonce": 1, "args": {}}, "kind"),
    ({"kind": "share.transfer", "nonce": 1, "args": {}}, "kind"),
    ({"kind": 1, "nonce": 1, "args": {}}, "kind"),
    ({"nonce": 1, "args": {}}, "kind"),
    ({"kind": "member.resign", "args": {}}, "body"),
    ({"kind": "member.resign", "nonce": 1, "args": {}, "fee": 1}, "body"),
    ({"kind": "member.resign", "nonce": 0, "args": {}}, "nonce"),
    ({"kind": "member.resign", "nonce": -1, "args": {}}, "nonce"),
    ({"kind": "member.resign", "nonce": 2**62 + 1, "args": {}}, "nonce"),
    ({"kind": "member.resign", "nonce": True, "args": {}}, "nonce"),
    ({"kind": "member.resign", "nonce": "1", "args": {}}, "nonce"),
    ({"kind": "member.resign", "nonce": 1, "args": []}, "args"),
    ([1], "body"),
], ids=["unknown kind", "share transfer", "kind not text", "no kind", "no nonce",
        "extra body field", "nonce 0", "negative nonce", "nonce too large", "bool nonce",
        "text nonce", "args not a map", "body not a map"])
def test_bad_bodies_rejected(body: Any, path: str) -> None:
    with pytest.raises(SchemaError) as info:
        validate_body(body)
    assert info.value.path == path
    if isinstance(body, dict):
        with pytest.raises(TxError):
            decode_tx(signed_raw(body))


def test_tagged_field_rejects_unknown_variant_and_variant_fields() -> None:
    args = example_args(TX_KINDS["proposal.create"], False)
    change = dict(args["change"])
    with pytest.raises(SchemaError, match="args.change.type"):
        make_tx(KEY, CHAIN, "proposal.create", 1, dict(args, change=dict(change, type="coup")))
    with pytest.raises(SchemaError, match="args.change.bogus"):
        make_tx(KEY, CHAIN, "proposal.create", 1, dict(args, change=dict(change, bogus=1)))


def test_oversized_transaction_rejected() -> None:
    with pytest.raises(TxError, match="over"):
        decode_tx(b"\x80" * (MAX_TX_BYTES + 1))
    relay = example_args(TX_KINDS["federation.relay"], big=True)
    tx = make_tx(KEY, CHAIN, "federation.relay", 1, relay)
    assert len(tx.raw) <= MAX_TX_BYTES


def test_tampered_transaction_rejected_only_when_checked() -> None:
    tx = make_tx(KEY, CHAIN, "account.transfer", 3, {"to": KEY.public, "amount": 5})
    forged = Envelope(body=dict(tx.envelope.body, nonce=4), signer=tx.signer,
                      sig=tx.envelope.sig).encode()
    assert decode_tx(forged).nonce == 4  # shape is fine: callers that batch-verify later
    with pytest.raises(TxError, match="signature"):
        decode_tx(forged, CHAIN)


def test_non_canonical_transaction_rejected() -> None:
    tx = make_tx(KEY, CHAIN, "account.transfer", 3, {"to": KEY.public, "amount": 5})
    assert tx.raw[0] == 0x83  # fixmap of 3: body, sig, signer
    widened = b"\xde\x00\x03" + tx.raw[1:]  # same map as map16
    with pytest.raises(TxError, match="canonical"):
        decode_tx(widened, CHAIN)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decode_tx_only_raises_tx_error(data: bytes) -> None:
    try:
        tx = decode_tx(data, CHAIN)
    except TxError:
        return
    assert isinstance(tx, Transaction)  # pragma: no cover - a forged signature is unlikely


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(KINDS), st.booleans(), st.data())
def test_fuzz_mutated_transactions_only_raise_tx_error(kind: str, big: bool,
                                                       data: st.DataObject) -> None:
    args = example_args(TX_KINDS[kind], big)
    if not fits(args, kind):
        return
    raw = bytearray(make_tx(KEY, CHAIN, kind, 1, args).raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(TxError):
        decode_tx(bytes(raw), CHAIN)


def test_body_schema_is_declared() -> None:
    assert set(BODY.fields) == {"kind", "nonce", "args"}
