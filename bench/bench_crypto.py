"""Throughput of the protocol's hot paths, next to raw Ed25519 verification.

Signature verification bounds everything a node does at scale: admitting gossip into
the mempool, checking a block's transactions and votes, replaying a whole ledger in an
audit. This measures our encode/decode/sign/verify path and the raw verify rate of the
two Ed25519 implementations installed (OpenSSL through `cryptography`, libsodium through
PyNaCl), so `protocol.crypto.verify` can be checked to sit on the faster one.

Run: `make bench`, or `.venv/bin/python bench/bench_crypto.py [--seconds S] [--json]`.
Rates are the best of several rounds (least disturbed by other load), single core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.bindings  # noqa: E402
import nacl.signing  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from protocol.crypto import SigningKey, sha256, verify  # noqa: E402
from protocol.encoding import decode, encode  # noqa: E402
from protocol.envelope import Domain  # noqa: E402
from protocol.transactions import decode_tx, make_tx  # noqa: E402

CHAIN = sha256(b"bench chain")


def rate(fn: Callable[[], object], seconds: float, rounds: int = 3) -> float:
    """Calls per second of `fn`: best of `rounds`, each at least `seconds` long."""
    n = 1
    while True:  # find a batch size that takes a measurable time
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            break
        n *= 2
    per_round = max(1, int(n * seconds / elapsed))
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        best = max(best, per_round / (time.perf_counter() - start))
    return best


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        openssl = backend.openssl_version_text()
    except Exception:  # the attribute moved between releases; informational only
        openssl = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "cryptography": metadata.version("cryptography"),
        "openssl": openssl,
        "pynacl": metadata.version("PyNaCl"),
        "msgpack": metadata.version("msgpack"),
    }


def run(seconds: float) -> list[dict[str, Any]]:
    key = SigningKey.derive("bench", "alice")
    recipient = SigningKey.derive("bench", "bob").public
    tx = make_tx(key, CHAIN, "account.transfer", 42,
                 {"to": recipient, "amount": 125_000, "memo": "rent for period 17"})
    wire = tx.envelope.to_wire()
    raw = tx.raw
    env = tx.envelope
    msg = Domain.TX.value + CHAIN + encode(env.body)
    sig = env.sig
    pub = key.public
    assert verify(pub, sig, msg)

    ossl_key = Ed25519PublicKey.from_public_bytes(pub)
    nacl_key = nacl.signing.VerifyKey(pub)
    signed = sig + msg

    def ossl_verify() -> None:
        ossl_key.verify(sig, msg)

    def ossl_verify_with_load() -> None:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)

    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("encode", f"canonical msgpack of a transfer envelope ({len(raw)} B)",
         lambda: encode(wire)),
        ("decode", "canonical decode (decode, re-encode, compare)", lambda: decode(raw)),
        ("sign", "Ed25519 sign (cryptography/OpenSSL)", lambda: key.sign(msg)),
        ("verify", "protocol.crypto.verify (libsodium)", lambda: verify(pub, sig, msg)),
        ("envelope verify", "Envelope.verify: encode body + verify",
         lambda: env.verify(Domain.TX, CHAIN)),
        ("decode_tx", "decode_tx without signature: decode + schema",
         lambda: decode_tx(raw)),
        ("decode_tx + verify", "decode_tx with chain id: decode + schema + signature",
         lambda: decode_tx(raw, CHAIN)),
        ("raw verify, cryptography", "Ed25519PublicKey.verify, key preloaded", ossl_verify),
        ("raw verify, cryptography + key load", "from_public_bytes + verify",
         ossl_verify_with_load),
        ("raw verify, PyNaCl", "VerifyKey.verify, key preloaded",
         lambda: nacl_key.verify(msg, sig)),
        ("raw verify, libsodium binding", "nacl.bindings.crypto_sign_open",
         lambda: nacl.bindings.crypto_sign_open(signed, pub)),
    ]
    results = []
    for name, what, fn in cases:
        r = rate(fn, seconds)
        results.append({"operation": name, "what": what, "per_second": round(r),
                        "microseconds": round(1e6 / r, 2)})
    return results


def print_table(info: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print(f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"{info['os']}")
    print(f"Python {info['python']} ({info['implementation']}), cryptography "
          f"{info['cryptography']} ({info['openssl']}), PyNaCl {info['pynacl']}, "
          f"msgpack {info['msgpack']}")
    print()
    width = max(len(r["operation"]) for r in results)
    print(f"{'operation':<{width}}  {'per second':>11}  {'µs/op':>8}  what")
    print(f"{'-' * width}  {'-' * 11}  {'-' * 8}  ----")
    for r in results:
        print(f"{r['operation']:<{width}}  {r['per_second']:>11,}  {r['microseconds']:>8.2f}"
              f"  {r['what']}")
    by = {r["operation"]: r["per_second"] for r in results}
    fastest = max(("cryptography", by["raw verify, cryptography"]),
                  ("libsodium", by["raw verify, PyNaCl"]), key=lambda kv: kv[1])
    print()
    print(f"Fastest raw verifier here: {fastest[0]} "
          f"({by['raw verify, PyNaCl'] / by['raw verify, cryptography']:.2f}x libsodium vs "
          "cryptography); protocol.crypto.verify uses libsodium.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="minimum duration of each measuring round (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = machine()
    results = run(args.seconds)
    if args.json:
        print(json.dumps({"machine": info, "results": results}, indent=2))
    else:
        print_table(info, results)


if __name__ == "__main__":
    main()
