"""Blocks: every header check, certificates, evidence, all-or-nothing, caching, history."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from ledger.execute import BlockRejected
from ledger.ledger import Ledger, LedgerError
from ledger.replay import ReplayError, replay
from ledger.testing import Harness, key
from protocol.block import Block, Header, evidence_hash
from protocol.merkle import merkle_root, verify_inclusion
from protocol.votes import PRECOMMIT, PREVOTE, Certificate, Evidence, Vote

A = key("outsider", "a")


def funded() -> Harness:
    h = Harness.create(3, signers=1, threshold=1)
    f0, _, f2 = h.founders
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 1000,
                                           "reference": "wire"})])
    return h


def rebuild(block: Block, **changes: object) -> Block:
    return dataclasses.replace(block, header=dataclasses.replace(block.header, **changes))


def test_next_block_checks_and_commits_once() -> None:
    h = funded()
    f2 = h.founders[2]
    block, rejected = h.build([h.tx(f2, "account.transfer", {"to": A.public, "amount": 10})])
    assert not rejected
    other = Ledger.open(None, h.genesis)
    for b, c in h.ledger.blocks():
        other.check_block(b)
        other.commit(b, c)
    other.check_block(block)
    other.check_block(block)  # cached: no second execution
    cert = h.commit(block)
    other.commit(block, cert)
    assert other.state_root == h.ledger.state_root == block.header.state_root
    assert other.state.balance(A.public) == 10


@pytest.mark.parametrize("field,value,reason", [
    ("chain_id", b"\x09" * 32, "block of another chain"),
    ("height", 7, "block height 7, expected"),
    ("prev_hash", b"\x09" * 32, "does not follow the last committed block"),
    ("time_ms", 0, "is not after the previous block's"),
    ("proposer", A.public, "the proposer is not a validator"),
    ("validators_hash", b"\x09" * 32, "validators_hash is not"),
    ("next_validators_hash", b"\x09" * 32, "next_validators_hash is not"),
    ("state_root", b"\x09" * 32, "does not match the executed state"),
    ("txs_root", b"\x09" * 32, "transactions root does not match"),
    ("version", 2, "protocol version 2"),
])
def test_header_checks(field: str, value: object, reason: str) -> None:
    h = funded()
    block, _ = h.build([h.tx(h.founders[2], "account.transfer", {"to": A.public, "amount": 1})])
    bad = rebuild(block, **{field: value})
    with pytest.raises(BlockRejected, match=reason):
        h.ledger.check_block(bad)
    h.ledger.check_block(block)


def test_last_commit_must_verify() -> None:
    h = funded()
    block, _ = h.build([])
    assert block.last_commit is not None
    sigs = block.last_commit.signatures
    weak = dataclasses.replace(block.last_commit, signatures=sigs[:1])
    bad = dataclasses.replace(block, last_commit=weak)
    bad = rebuild(bad, last_commit_hash=weak.hash())
    with pytest.raises(BlockRejected, match="signatures, need 3 of 3"):
        h.ledger.check_block(bad)
    forged = dataclasses.replace(block.last_commit, signatures=tuple(
        (v, b"\x00" * 64) for v, _ in sigs))
    bad = rebuild(dataclasses.replace(block, last_commit=forged), last_commit_hash=forged.hash())
    with pytest.raises(BlockRejected, match="bad signature"):
        h.ledger.check_block(bad)


def test_commit_needs_a_valid_certificate() -> None:
    h = funded()
    block, _ = h.build([])
    cert = h.certify(block)
    wrong = dataclasses.replace(cert, block_hash=b"\x05" * 32)
    with pytest.raises(BlockRejected, match="certificate does not commit"):
        h.ledger.commit(block, wrong)
    assert h.ledger.height == 1
    h.commit(block)
    assert h.ledger.height == 2


def test_block_with_one_bad_tx_is_rejected_whole() -> None:
    h = funded()
    f2 = h.founders[2]
    good = h.tx(f2, "account.transfer", {"to": A.public, "amount": 10})
    bad = h.tx(f2, "account.transfer", {"to": A.public, "amount": 10**6})
    block, _ = h.build([good])
    raws = (good.raw, bad.raw)
    forged = rebuild(dataclasses.replace(block, txs=raws), txs_root=merkle_root(raws))
    root, height = h.ledger.state_root, h.ledger.height
    rows = h.ledger.sql("SELECT count(*) FROM chain_txs")
    with pytest.raises(BlockRejected, match="transaction 1 .* is invalid: insufficient balance"):
        h.ledger.check_block(forged)
    with pytest.raises(BlockRejected):
        h.ledger.commit(forged, h.certify(forged))
    assert (h.ledger.state_root, h.ledger.height) == (root, height)
    assert h.ledger.sql("SELECT count(*) FROM chain_txs") == rows
    assert h.ledger.state.balance(A.public) == 0
    h.commit(block)
    assert h.ledger.state.balance(A.public) == 10


def test_malformed_and_badly_signed_transactions() -> None:
    h = funded()
    good = h.tx(h.founders[2], "account.transfer", {"to": A.public, "amount": 10})
    block, _ = h.build([good])
    for raws, reason in [((b"\x00garbage",), "transaction 0 is malformed"),
                         ((good.raw[:-1] + bytes([good.raw[-1] ^ 1]),), "bad signature")]:
        forged = rebuild(dataclasses.replace(block, txs=raws), txs_root=merkle_root(raws))
        with pytest.raises(BlockRejected, match=reason):
            h.ledger.check_block(forged)


def test_build_block_skips_invalid_and_reports() -> None:
    h = funded()
    f2 = h.founders[2]
    t1 = h.tx(f2, "account.transfer", {"to": A.public, "amount": 600})
    t2 = h.tx(f2, "account.transfer", {"to": A.public, "amount": 600})
    t3 = h.tx(f2, "account.transfer", {"to": A.public, "amount": 400}, nonce=t2.nonce)
    block, rejected = h.build([t1, t2, t3])
    assert [r[0] for r in rejected] == [t2.id]
    assert "insufficient balance" in rejected[0][1]
    assert block.txs == (t1.raw, t3.raw)
    h.commit(block)
    assert h.ledger.state.balance(A.public) == 1000
    assert h.ledger.tx_result(t3.id) == (2, 1, None)
    header, index, raw, proof = h.ledger.tx_proof(t3.id)  # type: ignore[misc]
    assert verify_inclusion(raw, index, 2, proof, header.txs_root)


def test_evidence_is_checked_and_recorded_once() -> None:
    h = funded()
    f0, f1, _ = h.founders
    cid = h.genesis.chain_id
    a = Vote.create(f1, cid, PREVOTE, 1, 0, b"\x01" * 32)
    b = Vote.create(f1, cid, PREVOTE, 1, 0, b"\x02" * 32)
    ev = Evidence(a, b)
    block, _ = h.build([], evidence=[ev])
    assert block.evidence == (ev,)
    h.commit(block)
    rows = h.ledger.state.rows("evidence")
    assert len(rows) == 1 and rows[0][1]["validator"] == f1.public
    again, _ = h.build([], evidence=[ev])
    assert again.evidence == ()  # left out by the builder
    bad = rebuild(dataclasses.replace(again, evidence=(ev,)), evidence_hash=block.header
                  .evidence_hash)
    with pytest.raises(BlockRejected, match="already recorded"):
        h.ledger.check_block(bad)
    outsider = Evidence(Vote.create(A, cid, PRECOMMIT, 1, 0, b"\x01" * 32),
                        Vote.create(A, cid, PRECOMMIT, 1, 0, b"\x02" * 32))
    bad = rebuild(dataclasses.replace(again, evidence=(outsider,)),
                  evidence_hash=evidence_hash((outsider,)))
    with pytest.raises(BlockRejected, match="not a validator at height 1"):
        h.ledger.check_block(bad)
    forged = Evidence(a, dataclasses.replace(b, sig=a.sig))
    bad = rebuild(dataclasses.replace(again, evidence=(forged,)),
                  evidence_hash=evidence_hash((forged,)))
    with pytest.raises(BlockRejected, match="bad signature"):
        h.ledger.check_block(bad)


def test_validator_set_changes_two_heights_later() -> None:
    h = Harness.create(3, params={"admission_attestations": 2})
    f0, f1, _ = h.founders
    h.block([h.tx(A, "member.apply", {"name": "A", "enterprise": "", "labour": "x"})])
    h.block([h.tx(f0, "member.attest", {"applicant": A.public}),
             h.tx(f1, "member.attest", {"applicant": A.public})])
    assert h.ledger.state.is_member(A.public)
    assert A.public not in h.ledger.validators_at(h.ledger.height + 2)
    h.block([h.tx(A, "member.node", {"peer_id": b"node-of-a"})])
    H = h.ledger.height
    assert A.public not in h.ledger.validators_at(H + 1)
    assert A.public in h.ledger.validators_at(H + 2)
    with pytest.raises(LedgerError):
        h.ledger.validators_at(H + 3)
    h.block([])
    h.block([])  # height H+2: A signs the certificate too
    assert h.ledger.certificate(H + 2) is not None
    assert len(h.ledger.certificate(H + 2).signatures) == 4  # type: ignore[union-attr]
    h.block([h.tx(f1, "member.resign")])
    H2 = h.ledger.height
    assert f1.public in h.ledger.validators_at(H2 + 1)
    assert f1.public not in h.ledger.validators_at(H2 + 2)
    assert h.ledger.validators_at(1).size == 3


def test_replay_and_reopen(tmp_path: object) -> None:
    path = f"{tmp_path}/ledger.db"
    h = Harness.create(3, path=path, signers=1, threshold=1)
    f0, _, f2 = h.founders
    roots = []
    for i in range(5):
        h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 10 + i,
                                               "reference": f"r{i}"})])
        roots.append(h.ledger.state_root)
    assert replay(h.genesis, h.ledger.blocks()) == roots
    h2 = h.reopen()
    assert h2.ledger.state_root == roots[-1] and h2.ledger.height == 5
    h2.block([h2.tx(f2, "account.transfer", {"to": A.public, "amount": 5})])
    blocks = list(h2.ledger.blocks())
    tampered = rebuild(blocks[2][0], time_ms=blocks[2][0].header.time_ms + 1)
    blocks[2] = (tampered, blocks[2][1])
    with pytest.raises(ReplayError, match="block 3"):
        replay(h.genesis, blocks)
    h2.ledger.close()
    other = Harness.create(2, name="another commune")
    with pytest.raises(LedgerError, match="belongs to chain"):
        Ledger.open(path, other.genesis)


def test_damaged_store_is_refused(tmp_path: object) -> None:
    path = f"{tmp_path}/ledger.db"
    h = Harness.create(3, path=path, signers=1, threshold=1)
    f0, _, f2 = h.founders
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 10,
                                           "reference": "r"})])
    h.ledger.close()
    c = sqlite3.connect(path)
    c.execute("UPDATE accounts SET balance = balance + 1")
    c.commit()
    c.close()
    with pytest.raises(LedgerError, match="do not match the state root"):
        Ledger.open(path, h.genesis)


def test_first_block_rules() -> None:
    h = Harness.create(1)
    with pytest.raises(LedgerError, match="before the genesis time"):
        h.ledger.build_block([], h.genesis.genesis_time_ms - 1, h.founders[0].public, None)
    with pytest.raises(LedgerError, match="not a validator"):
        h.ledger.build_block([], h.genesis.genesis_time_ms, A.public, None)
    block, _ = h.block([])
    assert block.header.prev_hash == h.genesis.chain_id
    assert isinstance(h.ledger.certificate(1), Certificate)
    assert isinstance(h.ledger.block(1), Block) and h.ledger.block(2) is None
    assert isinstance(block.header, Header)


def test_known_transactions_skip_decoding_but_not_checks() -> None:
    h = funded()
    f2 = h.founders[2]
    t1 = h.tx(f2, "account.transfer", {"to": A.public, "amount": 10})
    block, _ = h.build([t1])
    other = Ledger.open(None, h.genesis)
    for b, c in h.ledger.blocks():
        other.check_block(b)
        other.commit(b, c)
    impostor = h.tx(f2, "account.transfer", {"to": A.public, "amount": 11}, nonce=t1.nonce)
    # A wrong entry under the right id is not trusted: the block's own bytes are decoded.
    other.check_block(block, known={t1.id: impostor})
    other.commit(block, h.commit(block))
    assert other.state.balance(A.public) == 10 == h.ledger.state.balance(A.public)


def test_no_transaction_kind_moves_a_share() -> None:
    from protocol.transactions import TX_KINDS, TxError, decode_tx, make_tx

    assert not [k for k in TX_KINDS if k.startswith("member.") and k not in
                ("member.apply", "member.attest", "member.resign", "member.node")]
    h = funded()
    env = make_tx(h.founders[0], h.genesis.chain_id, "member.resign", 1, {})
    forged = env.raw.replace(b"member.resign", b"member.sellit")
    with pytest.raises(TxError, match="unknown transaction kind"):
        decode_tx(forged)
