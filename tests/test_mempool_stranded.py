"""Later-nonce transactions stranded when an earlier one leaves the pool, against the real ledger.

A pending transaction that leaves uncommitted (a recheck, the block builder, eviction,
expiry) while its nonce is unused takes its signer's later-nonce entries with it, each
recorded as "nonce N (tx <id>) was dropped: <reason>" (not final). The rule acts only at
that moment: a nonce refused on arrival strands nothing, and successors submitted after
the cascade wait for the nonce like any gapped entry, so the missing nonce and its
successors can be resubmitted in either order. A property test over the stand-in ledger
of test_mempool.py checks the rule against random sequences of operations.
"""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.testing import Harness, key
from node import queries
from node.daemon import LedgerAdapter
from node.mempool import Mempool, stranded_reason
from protocol.transactions import Transaction
from tests.test_mempool import KEYS, Accounts, transfer
from tests.test_mempool import pool as stand_in_pool

OUTSIDER = key("mempool-stranded", "outsider").public


def funded(amount: int = 100, max_txs: int = 100, max_age: float = 600
           ) -> tuple[Harness, Mempool]:
    h = Harness.create(3, signers=1, threshold=1)
    f0, _, f2 = h.founders
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": amount,
                                           "reference": "wire"})])
    return h, Mempool(h.genesis.chain_id, LedgerAdapter(h.ledger), max_txs=max_txs,
                      max_age=max_age)


def pay(h: Harness, nonce: int, amount: int, memo: str = "") -> Transaction:
    args: dict[str, object] = {"to": OUTSIDER, "amount": amount}
    if memo:
        args["memo"] = memo
    return h.tx(h.founders[2], "account.transfer", args, nonce=nonce)


def status(h: Harness, mp: Mempool, txid: bytes) -> dict[str, object]:
    return queries.tx_status(SimpleNamespace(ledger=h.ledger, mempool=mp), txid)


def assert_stranded(h: Harness, mp: Mempool, txid: bytes, cause: Transaction, why: str,
                    stage: str) -> None:
    assert txid not in mp
    expected = stranded_reason(cause, why)
    assert expected.startswith(f"nonce {cause.nonce} (tx {cause.id.hex()}) was dropped: ")
    assert status(h, mp, txid) == {"id": txid.hex(), "status": "rejected", "reason": expected,
                                   "stage": stage, "final": False}


def test_recheck_failure_drops_the_successors_and_a_new_nonce_lets_resubmissions_in() -> None:
    h, mp = funded(100)
    ours = [pay(h, n, a) for n, a in ((2, 60), (3, 10), (4, 10))]
    for tx in ours:
        assert mp.add(tx.raw, now=0).status == "added"
    assert status(h, mp, ours[2].id)["waiting_for_nonce"] == 1
    theirs = pay(h, 1, 60)  # committed through another node: the 60 are gone
    h.block([theirs])
    why = h.reason(ours[0])
    assert why is not None
    dropped = mp.block_committed([theirs])
    assert dropped == {ours[0].id: why, ours[1].id: stranded_reason(ours[0], why),
                       ours[2].id: stranded_reason(ours[0], why)}
    assert len(mp) == 0
    for tx in ours[1:]:
        assert_stranded(h, mp, tx.id, ours[0], why, "recheck")
    # Not final: the same successor bytes come back once a nonce 2 that fits is pending.
    replacement = pay(h, 2, 5)
    assert mp.add(replacement.raw, now=1).status == "added"
    for tx in ours[1:]:
        assert mp.add(tx.raw, now=1).status == "added"
    assert [t.nonce for t in mp.reap(10, 10**6)] == [2, 3, 4]
    mp.check_invariants()


def test_successors_resubmitted_before_the_missing_nonce_wait_for_it() -> None:
    h, mp = funded(100)
    ours = [pay(h, n, a) for n, a in ((2, 60), (3, 10))]
    for tx in ours:
        mp.add(tx.raw, now=0)
    theirs = pay(h, 1, 60)
    h.block([theirs])
    mp.block_committed([theirs])
    assert len(mp) == 0
    assert mp.add(ours[1].raw, now=1).status == "added"  # first: it waits, gapped
    assert status(h, mp, ours[1].id)["waiting_for_nonce"] == 2
    replacement = pay(h, 2, 5)
    assert mp.add(replacement.raw, now=2).status == "added"
    assert [t.id for t in mp.reap(10, 10**6)] == [replacement.id, ours[1].id]
    mp.check_invariants()


def test_a_nonce_refused_on_arrival_strands_nothing() -> None:
    h, mp = funded(10)
    waiting = pay(h, 2, 1)
    assert mp.add(waiting.raw, now=0).status == "added"
    too_big = pay(h, 1, 50)
    assert mp.add(too_big.raw, now=1).status == "rejected"  # never pending
    assert waiting.id in mp and status(h, mp, waiting.id)["waiting_for_nonce"] == 1
    fits = pay(h, 1, 5)
    assert mp.add(fits.raw, now=2).status == "added"
    assert [t.id for t in mp.reap(10, 10**6)] == [fits.id, waiting.id]


def test_a_nonce_used_on_chain_strands_nothing() -> None:
    h, mp = funded(100)
    ours, after = pay(h, 1, 10, "ours"), pay(h, 2, 10)
    mp.add(ours.raw, now=0)
    mp.add(after.raw, now=0)
    theirs = pay(h, 1, 10, "theirs")
    h.block([theirs])
    assert list(mp.block_committed([theirs])) == [ours.id]
    assert after.id in mp and "waiting_for_nonce" not in status(h, mp, after.id)
    assert [t.id for t in mp.reap(10, 10**6)] == [after.id]


def test_the_block_builder_skipping_one_drops_its_successors_not_for_their_nonce() -> None:
    h, mp = funded(100)
    txs = [pay(h, 1, 60), pay(h, 2, 60), pay(h, 3, 10)]
    for tx in txs:  # each fits on its own (admission checks it as if alone)
        assert mp.add(tx.raw, now=0).status == "added"
    reaped = mp.reap(10, 10**6)
    block, skipped = h.build(reaped)
    assert [txid for txid, _ in skipped] == [txs[1].id, txs[2].id]
    for txid, reason in skipped:  # as the driver does
        mp.drop([txid], reason)
    why = skipped[0][1]
    first = mp.rejection(txs[1].id)
    assert first is not None and first.reason == why and first.final
    assert_stranded(h, mp, txs[2].id, txs[1], why, "block")
    assert txs[0].id in mp
    h.commit(block)
    assert list(block.txs) == [txs[0].raw]
    mp.block_committed([txs[0]])
    assert len(mp) == 0
    # The stranded one was not refused for good: after a new nonce 2 it is admitted.
    assert mp.add(pay(h, 2, 5).raw, now=1).status == "added"
    assert mp.add(txs[2].raw, now=1).status == "added"
    mp.check_invariants()


def test_eviction_of_a_gapped_entry_drops_its_successors() -> None:
    h, mp = funded(100, max_txs=3)
    f0, f2 = h.founders[0], h.founders[2]
    # All wait for nonce 1; nonce 3 arrived first, so it is the first gapped entry evicted.
    third, second, fourth = pay(h, 3, 1), pay(h, 2, 1), pay(h, 4, 1)
    for tx in (third, second, fourth):
        assert mp.add(tx.raw, now=0).status == "added"
    ready = h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 1,
                                          "reference": "wire 2"})
    result = mp.add(ready.raw, now=1)
    assert result.status == "added" and result.evicted == (third.id, fourth.id)
    evicted = mp.rejection(third.id)
    assert evicted is not None and evicted.stage == "evicted"
    assert_stranded(h, mp, fourth.id, third, evicted.reason, "evicted")
    assert second.id in mp and status(h, mp, second.id)["waiting_for_nonce"] == 1
    mp.check_invariants()


def test_expiry_drops_the_younger_successors() -> None:
    h, mp = funded(100, max_age=60)
    gapped, later, last = pay(h, 2, 1), pay(h, 3, 1), pay(h, 4, 1)
    mp.add(gapped.raw, now=0)
    mp.add(later.raw, now=50)
    mp.add(last.raw, now=50)
    assert mp.expire(now=70) == [gapped.id, later.id, last.id]
    expired = mp.rejection(gapped.id)
    assert expired is not None and expired.stage == "expired"
    for tx in (later, last):
        assert_stranded(h, mp, tx.id, gapped, expired.reason, "expired")
    assert len(mp) == 0
    mp.check_invariants()


# ---- a property, over the stand-in ledger of test_mempool.py ---------------------------------


def build(acc: Accounts, txs: list[Transaction]
          ) -> tuple[list[Transaction], list[tuple[bytes, str]]]:
    """What a block builder makes of `txs`: in order, skipping what fails, with reasons."""
    nonces: dict[bytes, int] = {}
    spent: dict[bytes, int] = {}
    included: list[Transaction] = []
    skipped: list[tuple[bytes, str]] = []
    for tx in txs:
        s = tx.signer
        expected = nonces.get(s, acc.account_nonce(s)) + 1
        amount = tx.args["amount"]
        if tx.nonce != expected:
            skipped.append((tx.id, f"nonce {tx.nonce}, expected {expected}"))
        elif acc.balances.get(s, 0) - spent.get(s, 0) < amount:
            skipped.append((tx.id, "balance too low"))
        else:
            included.append(tx)
            nonces[s] = tx.nonce
            spent[s] = spent.get(s, 0) + amount
    return included, skipped


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "add", "add", "commit", "expire",
                                               "balance"]),
                              st.integers(0, 1), st.integers(1, 3)), max_size=40))
def test_nothing_pending_waits_on_a_nonce_that_left(ops: list[tuple[str, int, int]]) -> None:
    mp, acc = stand_in_pool(max_txs=6, max_per_signer=4, max_age=6)
    for k in KEYS[:3]:
        acc.balances[k.public] = 6
    now = 0.0
    for op, who, n in ops:
        now += 1
        key_ = KEYS[who]
        before = {txid: t for txid in list(mp.verified_ids()) if (t := mp.get(txid))}
        if op == "add":
            nonce = acc.account_nonce(key_.public) + n
            mp.add(transfer(key_, nonce, amount=2, memo=f"{now}").raw, now)
        elif op == "commit":
            included, skipped = build(acc, mp.reap(n, 10**9))
            for txid, reason in skipped:  # as the driver does
                mp.drop([txid], reason)
            acc.apply(included)
            mp.block_committed(included, recheck_all=not included)
        elif op == "expire":
            mp.expire(now)
        else:  # the balance changes (as a committed block would)
            acc.balances[key_.public] = 2 * (n - 1)
            mp.block_committed([], recheck_all=True)
        mp.check_invariants()
        left = [t for txid, t in before.items() if txid not in mp and not mp.was_committed(txid)]
        for gone in left:
            r = mp.rejection(gone.id)
            assert r is not None, "left without a reason"
            if gone.nonce <= acc.account_nonce(gone.signer):
                continue  # its nonce is used: the chain goes on
            if mp.pending_nonce(gone.signer) >= gone.nonce:
                continue  # the nonce is pending again
            for t in before.values():
                if t.signer == gone.signer and t.nonce > gone.nonce:
                    assert t.id not in mp, f"nonce {t.nonce} left waiting on {gone.nonce}"
                    shown = mp.rejection(t.id)
                    assert shown is not None and not shown.final, shown
