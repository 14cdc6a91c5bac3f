"""Why a transaction left the mempool uncommitted, against the real ledger.

A transaction that was pending and is then made invalid by a committed block (its
funds spent by another transaction of the same signer, its nonce used) must report
the reason to `tx show` / `tx wait` instead of "unknown"; the record is bounded.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import node.mempool as mempool_module
from ledger.testing import Harness, key
from node import queries
from node.daemon import LedgerAdapter
from node.mempool import Mempool, Rejection

OUTSIDER = key("mempool-rejections", "outsider").public


def funded(amount: int = 100) -> tuple[Harness, Mempool]:
    h = Harness.create(3, signers=1, threshold=1)
    f0, _, f2 = h.founders
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": amount,
                                           "reference": "wire"})])
    return h, Mempool(h.genesis.chain_id, LedgerAdapter(h.ledger))


def status(h: Harness, mp: Mempool, txid: bytes) -> dict[str, object]:
    return queries.tx_status(SimpleNamespace(ledger=h.ledger, mempool=mp), txid)


def test_funds_spent_by_a_committed_transaction_of_the_same_signer() -> None:
    h, mp = funded(100)
    f2 = h.founders[2]
    # Ours waits behind nonce 1 (gapped: admitted on its structure and signature).
    ours = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 60}, nonce=2)
    assert mp.add(ours.raw, now=0).status == "added"
    assert status(h, mp, ours.id)["waiting_for_nonce"] == 1
    # Another node's transaction with nonce 1 spends the funds and commits.
    theirs = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 60}, nonce=1)
    h.block([theirs])
    dropped = mp.block_committed([theirs])
    assert list(dropped) == [ours.id] and ours.id not in mp
    r = mp.rejection(ours.id)
    assert r is not None and r.stage == "recheck" and not r.final
    assert r.reason == dropped[ours.id] and r.reason == h.reason(ours)
    shown = status(h, mp, ours.id)
    assert shown == {"id": ours.id.hex(), "status": "rejected", "reason": r.reason,
                     "stage": "recheck", "final": False}
    assert status(h, mp, theirs.id)["status"] == "committed"
    mp.check_invariants()


def test_nonce_used_by_another_committed_transaction_is_final() -> None:
    h, mp = funded(100)
    f2 = h.founders[2]
    ours = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 10}, nonce=1)
    assert mp.add(ours.raw, now=0).status == "added"
    assert "waiting_for_nonce" not in status(h, mp, ours.id)
    theirs = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 20}, nonce=1)
    h.block([theirs])
    mp.block_committed([theirs])
    assert mp.rejection(ours.id) == Rejection(
        "nonce 1 was used by another committed transaction", "recheck", True)
    assert mp.add(ours.raw, now=1).reason == "nonce 1 was used by another committed transaction"
    assert status(h, mp, ours.id)["status"] == "rejected"


def test_state_refusal_is_reported_and_forgotten_once_admitted() -> None:
    h, mp = funded(10)
    f0, _, f2 = h.founders
    tx = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 50}, nonce=1)
    refused = mp.add(tx.raw, now=0)
    assert refused.status == "rejected" and refused.state_dependent
    r = mp.rejection(tx.id)
    assert r is not None and r.stage == "admission" and not r.final
    assert status(h, mp, tx.id) == {"id": tx.id.hex(), "status": "rejected",
                                    "reason": refused.reason, "stage": "admission",
                                    "final": False}
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 100,
                                           "reference": "wire 2"})])
    assert mp.add(tx.raw, now=1).status == "added"  # not remembered as final
    assert mp.rejection(tx.id) is None and status(h, mp, tx.id)["status"] == "pending"


def test_expired_and_evicted_transactions_say_so() -> None:
    h, _ = funded(1000)
    f2 = h.founders[2]
    mp = Mempool(h.genesis.chain_id, LedgerAdapter(h.ledger), max_txs=1, max_age=60)
    gapped = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 1}, nonce=3)
    ready = h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 1}, nonce=1)
    assert mp.add(gapped.raw, now=0).status == "added"
    result = mp.add(ready.raw, now=1)
    assert result.status == "added" and result.evicted == (gapped.id,)
    evicted = mp.rejection(gapped.id)
    assert evicted is not None and evicted.stage == "evicted" and "full" in evicted.reason
    assert mp.expire(now=100) == [ready.id]
    expired = mp.rejection(ready.id)
    assert expired is not None and expired.stage == "expired" and "again" in expired.reason


def test_the_record_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mempool_module, "REMEMBERED_REJECTIONS", 3)
    h, mp = funded(5)
    f2 = h.founders[2]
    txs = [h.tx(f2, "account.transfer", {"to": OUTSIDER, "amount": 100 + i}, nonce=1)
           for i in range(5)]
    for tx in txs:
        assert mp.add(tx.raw, now=0).status == "rejected"
    assert mp.rejections_remembered() == 3
    assert [mp.rejection(t.id) is not None for t in txs] == [False, False, True, True, True]
    mp.check_invariants()
