"""Mempool admission, bounds, eviction, block selection and post-commit cleanup.

`Accounts` stands in for the ledger's committed state with the two questions the
mempool asks (last nonce, could this apply); the daemon tests run the mempool
against the real ledger.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import node.mempool as mempool_module
from node.mempool import Mempool
from protocol.crypto import SigningKey
from protocol.transactions import Transaction, make_tx

CHAIN = b"\x07" * 32
OTHER_CHAIN = b"\x08" * 32
KEYS = [SigningKey.derive("mempool-test", str(i)) for i in range(6)]
SINK = SigningKey.derive("mempool-test", "sink").public


class Accounts:
    def __init__(self) -> None:
        self.nonces: dict[bytes, int] = {}
        self.balances: dict[bytes, int] = {}
        self.checks = 0

    def account_nonce(self, account: bytes) -> int:
        return self.nonces.get(account, 0)

    def check_tx(self, tx: Transaction, pending_nonce: int) -> str | None:
        self.checks += 1
        assert pending_nonce == tx.nonce - 1
        if tx.kind == "account.transfer" and self.balances.get(tx.signer, 0) < tx.args["amount"]:
            return "balance too low"
        return None

    def apply(self, txs: list[Transaction]) -> None:
        for tx in txs:
            assert tx.nonce == self.nonces.get(tx.signer, 0) + 1
            self.nonces[tx.signer] = tx.nonce
            if tx.kind == "account.transfer":
                self.balances[tx.signer] -= tx.args["amount"]


def transfer(key: SigningKey, nonce: int, amount: int = 1, memo: str = "",
             chain: bytes = CHAIN) -> Transaction:
    args: dict[str, Any] = {"to": SINK, "amount": amount}
    if memo:
        args["memo"] = memo
    return make_tx(key, chain, "account.transfer", nonce, args)


def pool(**kw: Any) -> tuple[Mempool, Accounts]:
    acc = Accounts()
    for k in KEYS:
        acc.balances[k.public] = 1_000_000
    return Mempool(CHAIN, acc, **kw), acc


def test_admit_and_known() -> None:
    mp, _ = pool()
    tx = transfer(KEYS[0], 1)
    r = mp.add(tx.raw, now=0)
    assert r.status == "added" and r.txid == tx.id and r.ok
    assert mp.add(tx.raw, now=1).status == "known"
    assert len(mp) == 1 and mp.size_bytes == len(tx.raw) and tx.id in mp
    mp.check_invariants()


def test_signature_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = mempool_module.decode_tx

    def counting(raw: bytes, chain_id: bytes | None = None) -> Transaction:
        calls.append(raw)
        return real(raw, chain_id)

    monkeypatch.setattr(mempool_module, "decode_tx", counting)
    mp, _ = pool()
    good = transfer(KEYS[0], 1)
    bad = transfer(KEYS[1], 1, chain=OTHER_CHAIN)  # signed for another commune
    for _ in range(5):
        mp.add(good.raw, now=0)
        r = mp.add(bad.raw, now=0)
        assert r.status == "rejected" and "bad signature" in (r.reason or "")
    assert calls == [good.raw, bad.raw]


def test_malformed_and_oversized_rejected() -> None:
    mp, _ = pool()
    for raw in (b"", b"\x00", b"\xc1", b"\x81\xa1a\x01", b"x" * 70_000):
        r = mp.add(raw, now=0)
        assert r.status == "rejected" and r.reason
    tampered = bytearray(transfer(KEYS[0], 1).raw)
    tampered[-1] ^= 1
    assert mp.add(bytes(tampered), now=0).status == "rejected"
    assert len(mp) == 0
    mp.check_invariants()


def test_nonce_rules() -> None:
    mp, acc = pool()
    acc.nonces[KEYS[0].public] = 3
    r = mp.add(transfer(KEYS[0], 3).raw, now=0)
    assert r.status == "rejected" and "already used" in (r.reason or "")
    assert mp.add(transfer(KEYS[0], 4).raw, now=0).status == "added"
    r = mp.add(transfer(KEYS[0], 4, memo="other").raw, now=0)
    assert r.status == "rejected" and "taken by pending" in (r.reason or "")
    assert mp.pending_nonce(KEYS[0].public) == 4
    far = mp.add(transfer(KEYS[0], 4 + mp.max_nonce_gap).raw, now=0)
    assert far.status == "rejected" and "too far ahead" in (far.reason or "")


def test_ledger_refusal_not_remembered() -> None:
    mp, acc = pool()
    acc.balances[KEYS[0].public] = 0
    tx = transfer(KEYS[0], 1, amount=5)
    assert mp.add(tx.raw, now=0).reason == "balance too low"
    acc.balances[KEYS[0].public] = 5  # a deposit commits; the same bytes now apply
    assert mp.add(tx.raw, now=1).status == "added"


def test_reap_orders_by_nonce_and_skips_gaps() -> None:
    mp, _ = pool()
    a, b = KEYS[0], KEYS[1]
    for tx in (transfer(a, 2), transfer(b, 1), transfer(a, 1), transfer(a, 4),
               transfer(b, 2)):
        assert mp.add(tx.raw, now=0).status == "added"
    got = [(t.signer, t.nonce) for t in mp.reap(100, 10**9)]
    assert got == [(b.public, 1), (a.public, 1), (a.public, 2), (b.public, 2)]
    assert mp.pending_nonce(a.public) == 2  # nonce 4 waits on the gap at 3
    assert [t.nonce for t in mp.reap(2, 10**9)] == [1, 1]
    one = len(transfer(a, 1).raw)
    assert len(mp.reap(100, one * 2 + 1)) == 2


def test_bounded_count_evicts_gapped_first() -> None:
    mp, _ = pool(max_txs=4)
    for n in (1, 2):
        mp.add(transfer(KEYS[0], n).raw, now=0)
    gapped = transfer(KEYS[1], 5)
    mp.add(gapped.raw, now=0)
    mp.add(transfer(KEYS[2], 1).raw, now=0)
    r = mp.add(transfer(KEYS[3], 1).raw, now=1)
    assert r.status == "added" and r.evicted == (gapped.id,)
    assert len(mp) == 4
    mp.check_invariants()


def test_bounded_count_evicts_heaviest_signers_highest_nonce() -> None:
    mp, _ = pool(max_txs=5)
    spam = [transfer(KEYS[0], n) for n in range(1, 5)]
    for tx in spam:
        mp.add(tx.raw, now=0)
    mp.add(transfer(KEYS[1], 1).raw, now=0)
    r = mp.add(transfer(KEYS[2], 1).raw, now=1)
    assert r.status == "added" and r.evicted == (spam[-1].id,)
    # The heaviest signer's own next transaction is refused rather than evicting others.
    r = mp.add(transfer(KEYS[0], 4).raw, now=2)
    assert r.status == "rejected" and r.reason == "mempool full"
    mp.check_invariants()


def test_bounded_bytes() -> None:
    size = len(transfer(KEYS[0], 1).raw)
    mp, _ = pool(max_bytes=max(65536, size * 3))
    mp.max_bytes = size * 3  # below the constructor's floor, to exercise the byte bound
    for i in range(3):
        assert mp.add(transfer(KEYS[i], 1).raw, now=0).status == "added"
    r = mp.add(transfer(KEYS[3], 1).raw, now=0)
    assert r.status == "added" and len(r.evicted) == 1
    assert mp.size_bytes <= size * 3
    mp.check_invariants()


def test_per_signer_bound() -> None:
    mp, _ = pool(max_per_signer=3)
    for n in (1, 2, 3):
        mp.add(transfer(KEYS[0], n).raw, now=0)
    r = mp.add(transfer(KEYS[0], 4).raw, now=0)
    assert r.status == "rejected" and "pending transactions" in (r.reason or "")


def test_block_committed_removes_included_and_drops_invalid() -> None:
    mp, acc = pool()
    a, b = KEYS[0], KEYS[1]
    acc.balances[a.public] = 10
    t1, t2, t3 = transfer(a, 1, 6), transfer(a, 2, 4), transfer(a, 3, 4)
    for tx in (t1, t2, t3):
        assert mp.add(tx.raw, now=0).status == "added"  # each checked on its own
    other = transfer(b, 1)
    mp.add(other.raw, now=0)
    block = [t1, t2]
    acc.apply(block)
    dropped = mp.block_committed(block)
    assert dropped == {t3.id: "balance too low"}
    assert list(mp.get(i) for i in (t1.id, t2.id, t3.id)) == [None, None, None]
    assert mp.get(other.id) is not None and mp.was_committed(t1.id)
    assert mp.add(t1.raw, now=1).reason == "already committed"
    mp.check_invariants()


def test_conflicting_nonce_committed_elsewhere() -> None:
    mp, acc = pool()
    mine = transfer(KEYS[0], 1, memo="mine")
    theirs = transfer(KEYS[0], 1, memo="theirs")  # same key, same nonce, other node
    mp.add(mine.raw, now=0)
    acc.apply([theirs])
    dropped = mp.block_committed([theirs])
    assert mine.id in dropped and len(mp) == 0
    assert mp.add(mine.raw, now=1).status == "rejected"


def test_expire_and_regossip_with_backoff() -> None:
    mp, _ = pool(max_age=600)
    old, new = transfer(KEYS[0], 1), transfer(KEYS[1], 1)
    mp.add(old.raw, now=0)
    mp.add(new.raw, now=50)
    assert mp.due_for_gossip(now=50) == [old.raw, new.raw]  # never gossiped: due at once
    assert mp.due_for_gossip(now=52) == []
    assert mp.due_for_gossip(now=53) == [old.raw, new.raw]  # 3 s later
    assert mp.due_for_gossip(now=58) == []  # then 6 s
    assert mp.due_for_gossip(now=59) == [old.raw, new.raw]
    mp.mark_gossiped(new.id, 59)
    assert mp.due_for_gossip(now=71) == [old.raw]  # 12 s after 59; new backed off to 24 s
    assert mp.expire(now=620) == [old.id]
    assert len(mp) == 1 and mp.get(new.id) is not None


def test_regossip_first_delay_batch_and_ready_first() -> None:
    mp, _ = pool()
    gossiped = transfer(KEYS[0], 1)
    mp.add(gossiped.raw, now=0, source="gossip")
    mp.mark_gossiped(gossiped.id, 0, first_delay=12)
    assert mp.due_for_gossip(now=11) == []
    assert mp.due_for_gossip(now=12) == [gossiped.raw]
    gapped, head = transfer(KEYS[1], 2), transfer(KEYS[2], 1)
    mp.add(gapped.raw, now=13)
    mp.add(head.raw, now=13)
    assert mp.due_for_gossip(now=13, limit=1) == [head.raw]  # ready ones first
    assert mp.due_for_gossip(now=13, limit=5) == [gapped.raw]


def test_drop_remembers_reason() -> None:
    mp, _ = pool()
    tx = transfer(KEYS[0], 1)
    mp.add(tx.raw, now=0)
    assert mp.drop([tx.id], "window closed") == [tx.id]
    assert mp.add(tx.raw, now=1).reason == "window closed"


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "commit", "expire", "reap"]),
                              st.integers(0, 3), st.integers(1, 6)), max_size=40))
def test_random_operations_keep_invariants(ops: list[tuple[str, int, int]]) -> None:
    mp, acc = pool(max_txs=6, max_per_signer=4, max_age=5)
    now = 0.0
    for op, who, n in ops:
        now += 1
        if op == "add":
            mp.add(transfer(KEYS[who], acc.account_nonce(KEYS[who].public) + n).raw, now)
        elif op == "commit":
            block = mp.reap(n, 10**9)
            acc.apply(block)
            mp.block_committed(block, recheck_all=who == 0)
            assert all(t.id not in mp for t in block)
        elif op == "expire":
            mp.expire(now)
        else:
            block = mp.reap(n, 10**9)
            seen: dict[bytes, int] = {}
            for t in block:  # contiguous per signer, from the committed nonce
                expect = seen.get(t.signer, acc.account_nonce(t.signer)) + 1
                assert t.nonce == expect
                seen[t.signer] = t.nonce
        mp.check_invariants()
