"""Signed envelopes: domain and chain separation, and tamper evidence of every wire byte."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import (
    IdError,
    SigningKey,
    id_text,
    parse_id,
    sha256,
    verify,
)
from protocol.encoding import decode, encode
from protocol.envelope import Domain, Envelope, EnvelopeError, check_signature, signing_bytes

CHAIN_A = sha256(b"genesis of commune A")
CHAIN_B = sha256(b"genesis of commune B")
ALICE = SigningKey.derive("test", "alice")
BOB = SigningKey.derive("test", "bob")
BODY = {"kind": "account.transfer", "nonce": 7,
        "args": {"to": BOB.public, "amount": 1250, "memo": "rent for march"}}
MAX = 64 * 1024


def test_round_trip_and_verify() -> None:
    env = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY)
    raw = env.encode()
    again = Envelope.decode(raw, max_size=MAX)
    assert again == env
    assert again.verify(Domain.TX, CHAIN_A)
    assert env.id == sha256(raw)
    assert again.encode() == raw


@pytest.mark.parametrize("signed_in, checked_in",
                         [(a, b) for a, b in itertools.product(Domain, Domain) if a != b])
def test_signature_for_one_domain_fails_in_another(signed_in: Domain, checked_in: Domain) -> None:
    env = Envelope.create(ALICE, signed_in, CHAIN_A, BODY)
    assert env.verify(signed_in, CHAIN_A)
    assert not env.verify(checked_in, CHAIN_A)


@pytest.mark.parametrize("domain", list(Domain))
def test_signature_for_one_chain_fails_in_another(domain: Domain) -> None:
    env = Envelope.create(ALICE, domain, CHAIN_A, BODY)
    assert env.verify(domain, CHAIN_A)
    assert not env.verify(domain, CHAIN_B)


def test_domain_tags_are_distinct_and_prefix_free() -> None:
    tags = [d.value for d in Domain]
    assert len(set(tags)) == len(tags)
    for a, b in itertools.permutations(tags, 2):
        assert not b.startswith(a)


def test_signing_bytes_layout() -> None:
    assert signing_bytes(Domain.VOTE, CHAIN_A, BODY) == Domain.VOTE.value + CHAIN_A + encode(BODY)
    with pytest.raises(ValueError):
        signing_bytes(Domain.TX, CHAIN_A[:31], BODY)


def test_signature_bound_to_signer() -> None:
    env = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY)
    forged = Envelope(body=env.body, signer=BOB.public, sig=env.sig)
    assert not forged.verify(Domain.TX, CHAIN_A)


def test_changed_body_fails() -> None:
    env = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY)
    args = dict(BODY["args"], amount=1251)  # type: ignore[call-overload]
    changed = Envelope(body=dict(BODY, args=args), signer=env.signer, sig=env.sig)
    assert not changed.verify(Domain.TX, CHAIN_A)


def _tampered_fails(raw: bytes) -> bool:
    try:
        env = Envelope.decode(raw, max_size=MAX)
    except EnvelopeError:
        return True
    return not env.verify(Domain.TX, CHAIN_A)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_fails(mask: int) -> None:
    raw = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY).encode()
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= mask
        assert _tampered_fails(bytes(tampered)), f"byte {i} flipped with {mask:#x} still verifies"


def test_truncating_or_extending_fails() -> None:
    raw = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY).encode()
    for n in range(len(raw)):
        assert _tampered_fails(raw[:n])
    assert _tampered_fails(raw + b"\x00")


bodies = st.fixed_dictionaries({
    "kind": st.text(min_size=1, max_size=20),
    "nonce": st.integers(1, 2**62),
    "args": st.dictionaries(st.text(max_size=8),
                            st.integers(0, 2**40) | st.binary(max_size=40) | st.text(max_size=20),
                            max_size=5),
})


@settings(max_examples=60, deadline=None)
@given(bodies, st.sampled_from(list(Domain)), st.data())
def test_random_envelopes_verify_and_resist_single_byte_changes(
        body: dict[str, Any], domain: Domain, data: st.DataObject) -> None:
    env = Envelope.create(ALICE, domain, CHAIN_A, body)
    raw = env.encode()
    assert Envelope.decode(raw, max_size=MAX).verify(domain, CHAIN_A)
    i = data.draw(st.integers(0, len(raw) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(raw)
    tampered[i] ^= mask
    try:
        bad = Envelope.decode(bytes(tampered), max_size=MAX)
    except EnvelopeError:
        return
    assert not bad.verify(domain, CHAIN_A)


# ---- structural checks ------------------------------------------------------------------

GOOD_WIRE = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY).to_wire()


@pytest.mark.parametrize("wire", [
    [],
    {"body": BODY, "signer": ALICE.public},
    dict(GOOD_WIRE, extra=1),
    dict(GOOD_WIRE, body=[1]),
    dict(GOOD_WIRE, signer=ALICE.public[:31]),
    dict(GOOD_WIRE, signer=id_text(ALICE.public)),
    dict(GOOD_WIRE, sig=GOOD_WIRE["sig"] + b"\x00"),
    dict(GOOD_WIRE, sig=GOOD_WIRE["sig"].hex()),
], ids=["list", "missing sig", "unknown field", "body not a map", "short signer",
        "signer as text", "long sig", "sig as text"])
def test_malformed_envelopes_rejected(wire: Any) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_wire(wire)
    with pytest.raises(EnvelopeError):
        Envelope.decode(encode(wire), max_size=MAX)


def test_oversized_envelope_rejected() -> None:
    raw = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY).encode()
    with pytest.raises(EnvelopeError):
        Envelope.decode(raw, max_size=len(raw) - 1)


def test_undecodable_envelope_is_an_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="undecodable"):
        Envelope.decode(b"\xc1", max_size=MAX)


# ---- crypto primitives under the envelope ---------------------------------------------


def test_verify_never_raises_on_malformed_input() -> None:
    msg = b"message"
    sig = ALICE.sign(msg)
    assert verify(ALICE.public, sig, msg)
    assert not verify(ALICE.public[:31], sig, msg)
    assert not verify(ALICE.public, sig[:63], msg)
    assert not verify(b"\x00" * 32, sig, msg)
    assert not verify(b"\xff" * 32, b"\xff" * 64, msg)
    assert not verify(ALICE.public, b"\x00" * 64, msg)


def test_check_signature_matches_envelope_verify() -> None:
    env = Envelope.create(ALICE, Domain.PROPOSAL, CHAIN_B, BODY)
    assert check_signature(Domain.PROPOSAL, CHAIN_B, BODY, ALICE.public, env.sig)
    assert not check_signature(Domain.HEADER, CHAIN_B, BODY, ALICE.public, env.sig)


def test_derived_keys_are_deterministic_and_distinct() -> None:
    assert SigningKey.derive("test", "alice").public == ALICE.public
    assert SigningKey.derive("test", "alic", "e").public != ALICE.public
    assert SigningKey(ALICE.seed()).public == ALICE.public


def test_id_text_round_trip_and_errors() -> None:
    text = id_text(ALICE.public)
    assert text.startswith("z")
    assert parse_id(text) == ALICE.public
    for bad in ["", "x" + text[1:], text[:-3], "z0OIl", text + "1"]:
        with pytest.raises(IdError):
            parse_id(bad)


def test_wire_form_is_a_canonical_map() -> None:
    raw = Envelope.create(ALICE, Domain.TX, CHAIN_A, BODY).encode()
    assert set(decode(raw)) == {"body", "signer", "sig"}
