"""Ed25519 keys, hashing and the text form of ids.

Verification is the hot path of the whole system (mempool, every block, audit
replay), so it goes through one function, `verify`, backed by libsodium (PyNaCl),
which `bench/bench_crypto.py` measured at about twice the rate of the OpenSSL
binding on this project's machines. Signing is rarer and uses `cryptography`.

Ids are raw 32-byte public keys. Their text form is multibase base58btc: a `z`
followed by base58 of the key, used everywhere a human or JSON sees an id.
"""

from __future__ import annotations

import hashlib

import base58
import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32
HASH_LEN = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True only for a valid Ed25519 signature; never raises on malformed input."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(bytes(signature) + bytes(message), bytes(public_key))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


class SigningKey:
    """An Ed25519 private key held in memory; persisted only through node/keystore."""

    __slots__ = ("_key", "_seed", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.public: bytes = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls, random_bytes: bytes) -> SigningKey:
        """Randomness comes in as an argument so protocol code stays deterministic."""
        return cls(random_bytes[:SEED_LEN])

    @classmethod
    def derive(cls, *parts: bytes | str) -> SigningKey:
        """Deterministic key from labels: scenario actors and tests, never real members."""
        h = hashlib.sha256(b"venture-commune/derive-key")
        for p in parts:
            b = p.encode() if isinstance(p, str) else p
            h.update(len(b).to_bytes(4, "big") + b)
        return cls(h.digest())

    def seed(self) -> bytes:
        return self._seed

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey({id_text(self.public)})"


def id_text(public_key: bytes) -> str:
    """Text form of an id: multibase base58btc (`z...`)."""
    return "z" + base58.b58encode(bytes(public_key)).decode("ascii")


class IdError(ValueError):
    pass


def parse_id(text: str) -> bytes:
    """Inverse of `id_text`; raises `IdError` with what is wrong."""
    if not isinstance(text, str) or not text.startswith("z"):
        raise IdError(f"{text!r} is not a member id (ids start with 'z')")
    try:
        raw = base58.b58decode(text[1:])
    except ValueError:
        raise IdError(f"{text!r} is not valid base58") from None
    if len(raw) != PUBLIC_KEY_LEN:
        raise IdError(f"{text!r} decodes to {len(raw)} bytes, an id has {PUBLIC_KEY_LEN}")
    return raw
