"""Inclusion proofs: made from a node's store, checked offline with only the genesis."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ledger.export import StoreSnapshot
from ledger.genesis import Genesis
from ledger.proofs import ProofError, dumps, loads, make_proof, verify_proof
from ledger.testing import make_genesis
from protocol.block import Block
from protocol.crypto import SigningKey, id_text, sha256
from protocol.encoding import decode, encode
from protocol.votes import PRECOMMIT, Certificate, Vote
from tests.test_audit import Chain, build_chain


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Chain, Path]:
    db = tmp_path_factory.mktemp("proofs") / "ledger.sqlite"
    return build_chain(str(db)), db


def txid_at(chain: Chain, height: int, index: int) -> bytes:
    return sha256(Block.decode(chain.blocks[height - 1][0]).txs[index])


def prove(db: Path, txid: bytes) -> dict[str, Any]:
    with StoreSnapshot(db) as snap:
        return loads(dumps(make_proof(snap, txid)))


def test_early_transaction_is_certified_by_the_founders(store: tuple[Chain, Path]) -> None:
    chain, db = store
    tid = txid_at(chain, 1, 2)
    proof = prove(db, tid)
    assert proof["validator_chain"] == []
    v = verify_proof(proof, chain.genesis)
    assert (v.txid, v.height, v.index, v.kind) == (tid, 1, 2, "treasury.deposit")
    assert v.handovers == 0 and set(v.validators) == set(chain.genesis.founder_ids())


def test_later_transaction_follows_the_validator_hand_overs(store: tuple[Chain, Path]) -> None:
    chain, db = store
    last = len(chain.blocks)
    tid = txid_at(chain, last, 1)
    proof = prove(db, tid)
    assert [link["from_height"] for link in proof["validator_chain"]] == \
        [chain.marks["node"] + 2, chain.marks["resigned"] + 2]
    v = verify_proof(proof, chain.genesis)
    assert v.height == last and v.handovers == 2 and len(v.validators) == 4
    assert sha256(Block.decode(chain.blocks[last - 1][0]).txs[1]) == v.txid
    middle = prove(db, txid_at(chain, chain.marks["resigned"], 0))
    assert len(middle["validator_chain"]) == 1
    assert verify_proof(middle, chain.genesis).handovers == 1
    assert v.kind == "account.transfer" and v.args["amount"] == 3


def test_unknown_transaction(store: tuple[Chain, Path]) -> None:
    _, db = store
    with pytest.raises(ProofError, match="not in a committed block"):
        prove(db, sha256(b"nothing"))


def tamper(proof: dict[str, Any], fn: Any) -> dict[str, Any]:
    p = copy.deepcopy(proof)
    fn(p)
    return p


def flip_hex(text: str, i: int) -> str:
    b = bytearray(bytes.fromhex(text))
    b[i] ^= 1
    return b.hex()


def test_every_tampering_fails(store: tuple[Chain, Path]) -> None:
    chain, db = store
    last = len(chain.blocks)
    proof = prove(db, txid_at(chain, last, 1))
    g = chain.genesis
    outsider = SigningKey.derive("audit-proof-test", "outsider")

    def forged_handover(p: dict[str, Any]) -> None:
        link = p["validator_chain"][0]
        link["members"] = sorted([id_text(outsider.public)])

    def outsider_cert(p: dict[str, Any]) -> None:
        block_hash = Block.decode(chain.blocks[last - 1][0]).hash()
        cert = Certificate.from_votes([Vote.create(outsider, g.chain_id, PRECOMMIT, last, 0,
                                                   block_hash)])
        p["certificate"] = encode(cert.to_wire()).hex()

    def drop_signature(p: dict[str, Any]) -> None:
        cert = decode(bytes.fromhex(p["certificate"]))
        cert["sigs"] = cert["sigs"][1:]
        p["certificate"] = encode(cert).hex()

    def header_time(p: dict[str, Any]) -> None:
        h = decode(bytes.fromhex(p["header"]))
        h["time_ms"] += 1
        p["header"] = encode(h).hex()

    def path(p: dict[str, Any]) -> None:
        p["path"] = [flip_hex(p["path"][0], 0)] + p["path"][1:]

    cases: dict[str, tuple[str, Any]] = {
        "other transaction bytes": ("do not hash to its id",
                                    lambda p: p.update(tx=flip_hex(p["tx"], 30))),
        "a changed path": ("Merkle path", path),
        "a wrong index": ("Merkle path", lambda p: p.update(index=p["index"] ^ 1)),
        "a changed header": ("another block", header_time),
        "a dropped signature": ("signatures, need", drop_signature),
        "a dropped hand-over": ("names a validator set other than",
                                lambda p: p.update(validator_chain=[])),
        "a forged hand-over": ("does not name this set", forged_handover),
        "a certificate by an outsider": ("not a validator", outsider_cert),
        "a wrong version": ("version", lambda p: p.update(version=2)),
        "an unknown field": ("fields wrong", lambda p: p.update(extra=1)),
    }
    for name, (reason, fn) in cases.items():
        with pytest.raises(ProofError, match=reason):
            verify_proof(tamper(proof, fn), g)
            pytest.fail(f"{name} was accepted")
    other, _ = make_genesis(4, name="Another commune")
    with pytest.raises(ProofError, match="the genesis given"):
        verify_proof(proof, other)
    with pytest.raises(ProofError):
        verify_proof(json.loads("[1, 2]"), g)
    assert isinstance(Genesis.decode(g.encode()), Genesis)
