"""Signed envelopes: what a key signs and how anyone checks it.

A signature covers `domain_tag || chain_id || canonical(body)`. The domain tag keeps a
vote from ever being replayed as a transaction (or a header as a proposal), and the
chain id -- the hash of the genesis document -- keeps anything signed for one commune
from being valid in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN, SigningKey, sha256, verify
from protocol.encoding import DecodeError, decode, encode


class Domain(Enum):
    """Domain-separation tags; none is a prefix of another (each ends with a newline)."""

    TX = b"venture-commune/tx/v1\n"
    PROPOSAL = b"venture-commune/proposal/v1\n"
    VOTE = b"venture-commune/vote/v1\n"
    HEADER = b"venture-commune/header/v1\n"


class EnvelopeError(ValueError):
    """A structurally wrong or wrongly signed envelope."""


def signing_bytes(domain: Domain, chain_id: bytes, body: Any) -> bytes:
    if len(chain_id) != HASH_LEN:
        raise ValueError("chain_id is a 32-byte hash")
    return domain.value + chain_id + encode(body)


def sign(key: SigningKey, domain: Domain, chain_id: bytes, body: Any) -> bytes:
    return key.sign(signing_bytes(domain, chain_id, body))


def check_signature(
    domain: Domain, chain_id: bytes, body: Any, signer: bytes, signature: bytes
) -> bool:
    return verify(signer, signature, signing_bytes(domain, chain_id, body))


ENVELOPE_FIELDS = frozenset({"body", "signer", "sig"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """`body` signed by `signer` in one domain. Its id is the hash of its wire bytes."""

    body: dict[str, Any]
    signer: bytes
    sig: bytes

    @classmethod
    def create(
        cls, key: SigningKey, domain: Domain, chain_id: bytes, body: dict[str, Any]
    ) -> Envelope:
        return cls(body=body, signer=key.public, sig=sign(key, domain, chain_id, body))

    def to_wire(self) -> dict[str, Any]:
        return {"body": self.body, "signer": self.signer, "sig": self.sig}

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @property
    def id(self) -> bytes:
        return sha256(self.encode())

    def verify(self, domain: Domain, chain_id: bytes) -> bool:
        return check_signature(domain, chain_id, self.body, self.signer, self.sig)

    @classmethod
    def from_wire(cls, obj: Any) -> Envelope:
        """Structural check only (types and lengths); the signature is checked by `verify`."""
        if type(obj) is not dict:
            raise EnvelopeError("envelope must be a map")
        if set(obj) != ENVELOPE_FIELDS:
            missing = ENVELOPE_FIELDS - set(obj)
            extra = set(obj) - ENVELOPE_FIELDS
            raise EnvelopeError(
                f"envelope fields wrong (missing {sorted(missing)}, unknown {sorted(extra)})"
            )
        body, signer, sig = obj["body"], obj["signer"], obj["sig"]
        if type(body) is not dict:
            raise EnvelopeError("envelope body must be a map")
        if type(signer) is not bytes or len(signer) != PUBLIC_KEY_LEN:
            raise EnvelopeError("signer must be a 32-byte public key")
        if type(sig) is not bytes or len(sig) != SIGNATURE_LEN:
            raise EnvelopeError("sig must be a 64-byte signature")
        return cls(body=body, signer=signer, sig=sig)

    @classmethod
    def decode(cls, data: bytes, max_size: int) -> Envelope:
        try:
            return cls.from_wire(decode(data, max_size=max_size))
        except DecodeError as exc:
            raise EnvelopeError(f"undecodable envelope: {exc}") from None
