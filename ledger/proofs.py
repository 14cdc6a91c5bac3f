"""Inclusion proofs: one committed transaction, checkable offline with only the genesis.

A proof holds the signed transaction, its RFC 6962 Merkle path to the transactions root
of its block's header, that header, and the commit certificate the block was committed
with. A certificate is only as good as the validator set it is checked against, and a
prover could invent a set; so the proof also carries the **validator chain**: for every
change of the validator set between the genesis and the transaction's height, the
header of the block just before the new set takes over, with its certificate and the
new set's members. That header is certified by the set in force (starting from the
founders named in the genesis) and commits to the next set by hash
(`next_validators_hash`), so each set is handed over by the one before it.

What a verified proof means, and what it trusts: the verifier trusts the genesis it is
given and nothing the prover says. It then knows that the block containing the
transaction was committed by more than 2/3 of the validator set of its height, reached
from the genesis through certified hand-overs. That is the BFT assumption consensus
itself rests on: each validator set along the way had fewer than 1/3 faulty members
(a colluding 2/3 of some set could certify anything, including a fake hand-over). A
committed block only contains transactions that executed, so under that assumption the
transaction took effect at that height. `commune audit replay` of the full log removes
the assumption: it re-executes everything and checks every state root itself. For a
transaction early in a commune's life (before any change of validators) the chain is
empty and the certificate is checked directly against the genesis founders.

The file is JSON (bytes in hex, ids in their text form) so people can read and pass it
around; every hashed or signed part is carried as its exact canonical bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.genesis import Genesis
from protocol.block import Block, BlockError, Header
from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN, IdError, id_text, parse_id, sha256
from protocol.encoding import DecodeError, decode
from protocol.merkle import inclusion_proof, verify_inclusion
from protocol.transactions import TxError, decode_tx
from protocol.votes import MAX_VALIDATORS, Certificate, CertificateError, ValidatorSet

FORMAT = "venture-commune/tx-proof"
VERSION = 1
MAX_PROOF_BYTES = 64 * 1024 * 1024
MAX_CHAIN_LINKS = 100_000
MAX_PATH = 64


class ProofError(ValueError):
    """A proof that cannot be made (unknown transaction) or does not verify (why)."""


class ProofSource(Protocol):
    """What a prover reads: a node's store (`ledger.export.StoreSnapshot`) provides it."""

    chain_id: bytes

    def tx_location(self, txid: bytes) -> tuple[int, int] | None: ...

    def block_raw(self, height: int) -> bytes | None: ...

    def certificate_raw(self, height: int) -> bytes | None: ...

    def validator_history(self) -> list[tuple[int, bytes]]: ...


def _unpack(packed: bytes) -> list[bytes]:
    assert len(packed) % PUBLIC_KEY_LEN == 0
    return [packed[i:i + PUBLIC_KEY_LEN] for i in range(0, len(packed), PUBLIC_KEY_LEN)]


def _need(value: bytes | None, what: str) -> bytes:
    if value is None:
        raise ProofError(f"the store has no {what}; it is damaged or still being written")
    return value


def make_proof(src: ProofSource, txid: bytes) -> dict[str, Any]:
    """The proof document for committed transaction `txid` (raises `ProofError` if unknown)."""
    loc = src.tx_location(txid)
    if loc is None:
        raise ProofError(f"transaction {txid.hex()} is not in a committed block of this ledger")
    height, index = loc
    block = Block.decode(_need(src.block_raw(height), f"block {height}"))
    if not 0 <= index < len(block.txs) or sha256(block.txs[index]) != txid:
        raise ProofError(f"the store's index of transaction {txid.hex()} does not match "
                         f"block {height}; the store is damaged")
    cert = _need(src.certificate_raw(height), f"certificate of block {height}")
    links = []
    for from_height, packed in src.validator_history()[1:]:
        if from_height > height:
            break
        h = from_height - 1
        hb = Block.decode(_need(src.block_raw(h), f"block {h}"))
        links.append({"from_height": from_height,
                      "members": [id_text(m) for m in _unpack(packed)],
                      "header": hb.header.encode().hex(),
                      "certificate": _need(src.certificate_raw(h),
                                           f"certificate of block {h}").hex()})
    return {
        "format": FORMAT, "version": VERSION, "chain_id": src.chain_id.hex(),
        "txid": txid.hex(), "tx": block.txs[index].hex(), "height": height, "index": index,
        "tx_count": len(block.txs),
        "path": [p.hex() for p in inclusion_proof(block.txs, index)],
        "header": block.header.encode().hex(), "certificate": cert.hex(),
        "validator_chain": links,
    }


def dumps(proof: dict[str, Any]) -> str:
    return json.dumps(proof, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class VerifiedProof:
    """What a verified proof establishes."""

    txid: bytes
    kind: str
    signer: bytes
    nonce: int
    args: dict[str, Any]
    height: int
    index: int
    block_hash: bytes
    time_ms: int
    validators: tuple[bytes, ...]
    """The set that certified the block."""
    handovers: int
    """Validator-set changes followed from the genesis (0: the founders certified it)."""
    signatures: int


def _hex(obj: Any, what: str, size: int | None = None, limit: int = MAX_PROOF_BYTES) -> bytes:
    if type(obj) is not str or len(obj) > 2 * limit:
        raise ProofError(f"{what} must be hex text")
    try:
        data = bytes.fromhex(obj)
    except ValueError:
        raise ProofError(f"{what} is not valid hex") from None
    if size is not None and len(data) != size:
        raise ProofError(f"{what} must be {size} bytes")
    return data


def _int(obj: Any, what: str, lo: int, hi: int) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise ProofError(f"{what} must be an integer from {lo} to {hi}")
    return obj


def _header(obj: Any, what: str) -> Header:
    try:
        return Header.from_wire(decode(_hex(obj, what, limit=64 * 1024)))
    except (DecodeError, BlockError) as exc:
        raise ProofError(f"{what} does not decode: {exc}") from None


def _cert(obj: Any, what: str) -> Certificate:
    try:
        return Certificate.from_wire(decode(_hex(obj, what, limit=1024 * 1024)))
    except (DecodeError, CertificateError) as exc:
        raise ProofError(f"{what} does not decode: {exc}") from None


def _certified(header: Header, cert: Certificate, trusted: ValidatorSet, chain_id: bytes,
               what: str) -> None:
    if header.chain_id != chain_id:
        raise ProofError(f"{what} belongs to another commune")
    if header.validators_hash != trusted.hash():
        raise ProofError(f"{what} (height {header.height}) names a validator set other than "
                         "the one in force there")
    if cert.height != header.height:
        raise ProofError(f"the certificate of {what} is for height {cert.height}")
    try:
        cert.verify(chain_id, trusted, header.hash())
    except CertificateError as exc:
        raise ProofError(f"the certificate of {what} does not hold: {exc}") from None


def verify_proof(proof: Any, genesis: Genesis) -> VerifiedProof:
    """Check a proof document against a genesis; raise `ProofError` saying what fails."""
    if type(proof) is not dict:
        raise ProofError("a proof is a JSON object")
    if proof.get("format") != FORMAT:
        raise ProofError(f"not a transaction proof (format {proof.get('format')!r})")
    if proof.get("version") != VERSION:
        raise ProofError(f"proof version {proof.get('version')!r} is not supported "
                         f"(this verifier reads version {VERSION})")
    want = {"format", "version", "chain_id", "txid", "tx", "height", "index", "tx_count",
            "path", "header", "certificate", "validator_chain"}
    if set(proof) != want:
        raise ProofError(f"proof fields wrong (missing {sorted(want - set(proof))}, unknown "
                         f"{sorted(set(proof) - want)})")
    cid = genesis.chain_id
    if _hex(proof["chain_id"], "chain_id", HASH_LEN) != cid:
        raise ProofError(f"the proof is for commune {proof['chain_id']}, the genesis given is "
                         f"{genesis.name!r} ({cid.hex()})")
    height = _int(proof["height"], "height", 1, 2**62)
    index = _int(proof["index"], "index", 0, 10**6)
    count = _int(proof["tx_count"], "tx_count", index + 1, 10**6)
    raw = _hex(proof["tx"], "tx", limit=1024 * 1024)
    txid = _hex(proof["txid"], "txid", HASH_LEN)
    if sha256(raw) != txid:
        raise ProofError("the transaction's bytes do not hash to its id")
    try:
        tx = decode_tx(raw)
    except TxError as exc:
        raise ProofError(f"the transaction does not decode: {exc}") from None
    if not tx.verify(cid):
        raise ProofError("the transaction's signature is invalid for this commune")
    path = proof["path"]
    if type(path) is not list or len(path) > MAX_PATH:
        raise ProofError("path must be a list of hashes")
    hashes = [_hex(p, "path entry", HASH_LEN) for p in path]
    header = _header(proof["header"], "the block header")
    if header.height != height:
        raise ProofError(f"the header is of height {header.height}, the proof says {height}")
    if not verify_inclusion(raw, index, count, hashes, header.txs_root):
        raise ProofError("the Merkle path does not lead from the transaction to the header's "
                         "transactions root")

    trusted = ValidatorSet(tuple(sorted(genesis.founder_ids())))
    since = 1
    links = proof["validator_chain"]
    if type(links) is not list or len(links) > MAX_CHAIN_LINKS:
        raise ProofError("validator_chain must be a list")
    for n, link in enumerate(links):
        what = f"validator hand-over {n + 1}"
        if type(link) is not dict or set(link) != {"from_height", "members", "header",
                                                   "certificate"}:
            raise ProofError(f"{what} is malformed")
        start = _int(link["from_height"], f"{what} from_height", since + 1, height)
        members = link["members"]
        if type(members) is not list or not 1 <= len(members) <= MAX_VALIDATORS:
            raise ProofError(f"{what} members must be a list of 1 to {MAX_VALIDATORS} ids")
        try:
            ids = [parse_id(m) for m in members]
        except IdError as exc:
            raise ProofError(f"{what}: {exc}") from None
        if ids != sorted(set(ids)):
            raise ProofError(f"{what} members must be sorted and distinct")
        new = ValidatorSet(tuple(ids))
        h = _header(link["header"], f"the header of {what}")
        if h.height != start - 1 or h.height < since:
            raise ProofError(f"{what} must carry the header of height {start - 1}")
        _certified(h, _cert(link["certificate"], what), trusted, cid, what)
        if h.next_validators_hash != new.hash():
            raise ProofError(f"{what}: the certified header does not name this set as the "
                             "next one")
        trusted, since = new, start
    cert = _cert(proof["certificate"], "the block certificate")
    _certified(header, cert, trusted, cid, "the block")
    return VerifiedProof(txid, tx.kind, tx.signer, tx.nonce, tx.args, height, index,
                         header.hash(), header.time_ms, trusted.members, len(links),
                         len(cert.signatures))


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ProofError(f"the proof is not valid JSON: {exc}") from None
