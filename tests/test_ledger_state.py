"""The state tables, the undo log and the state hash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import accounts, core, dividends, governance, membership, money, treasury
from ledger.multiset_hash import MASK, MultisetHash, element
from ledger.rules import Rules
from ledger.state import RowError, State, Table
from ledger.testing import Harness, make_genesis

ACCOUNTS = Table("t", (("id", bytes),), (("balance", int), ("memo", str)))
PAIRS = Table("p", (("a", bytes), ("n", int)), (("x", int),))


def state() -> State:
    return State({"t": ACCOUNTS, "p": PAIRS})


def test_rows_are_typed_exactly() -> None:
    s = state()
    s.put("t", b"k", {"balance": 1, "memo": "m"})
    for key, row in [(b"k", {"balance": True, "memo": "m"}), (b"k", {"balance": 1.0, "memo": ""}),
                     (b"k", {"balance": 1}), (b"k", {"balance": 1, "memo": "m", "x": 1}),
                     (b"k", {"balance": 1, "mem": "m"}), ("k", {"balance": 1, "memo": "m"}),
                     (b"k", [1, "m"])]:
        with pytest.raises(RowError):
            s.put("t", key, row)  # type: ignore[arg-type]
    for key in [(b"a",), (b"a", "1"), [b"a", 1], (b"a", 1, 2)]:
        with pytest.raises(RowError):
            s.put("p", key, {"x": 1})
    s.put("p", (b"a", 1), {"x": 1})


def test_undo_log_rolls_back_and_yields_net_changes() -> None:
    s = state()
    s.put("t", b"a", {"balance": 1, "memo": ""})
    changes = s.changes()
    s.rollback()
    _, h = s.root_after(changes)
    s.apply(changes, h)
    mark = s.mark()
    s.put("t", b"a", {"balance": 2, "memo": ""})
    s.put("t", b"b", {"balance": 3, "memo": ""})
    s.delete("t", b"b")
    s.put("t", b"c", {"balance": 4, "memo": ""})
    inner = s.mark()
    s.delete("t", b"a")
    s.rollback(inner)
    assert s.get("t", b"a") == {"balance": 2, "memo": ""}
    changes = s.changes()
    assert {(c.table, c.key) for c in changes} == {("t", b"a"), ("t", b"c")}
    s.rollback(mark)
    assert s.keys("t") == [b"a"] and s.get("t", b"a") == {"balance": 1, "memo": ""}
    copy = s.get("t", b"a")
    assert copy is not None
    copy["balance"] = 99  # a copy: the state is untouched
    assert s.peek("t", b"a") == {"balance": 1, "memo": ""}


def test_scan_is_sorted_and_prefix_filtered() -> None:
    s = state()
    for a, n in [(b"b", 2), (b"a", 3), (b"b", 1), (b"a", 1)]:
        s.put("p", (a, n), {"x": n})
    assert [k for k, _ in s.scan("p")] == [(b"a", 1), (b"a", 3), (b"b", 1), (b"b", 2)]
    assert [k for k, _ in s.scan("p", (b"b",))] == [(b"b", 1), (b"b", 2)]


ROWS = st.dictionaries(st.binary(min_size=1, max_size=4), st.integers(0, 2**40), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ROWS, ROWS)
def test_hash_depends_only_on_the_final_state(before: dict[bytes, int],
                                              after: dict[bytes, int]) -> None:
    """Whatever path leads to a state, its incremental hash equals a from-scratch one."""
    s = state()
    for k, v in before.items():
        s.put("t", k, {"balance": v, "memo": ""})
    ch = s.changes()
    s.rollback()
    root, h = s.root_after(ch)
    s.apply(ch, h)
    for k in before:
        if k not in after:
            s.delete("t", k)
    for k, v in after.items():
        s.put("t", k, {"balance": v, "memo": ""})
    ch = s.changes()
    s.rollback()
    root2, h2 = s.root_after(ch)
    s.apply(ch, h2)
    fresh = state()
    for k, v in after.items():
        fresh.load_row("t", k, {"balance": v, "memo": ""})
    assert s.recompute_hash() == h2 == fresh.recompute_hash()
    assert s.root() == fresh.recompute_hash().digest()
    assert (root == root2) == (before == after)


def test_multiset_hash_group_laws() -> None:
    a, b = MultisetHash(), MultisetHash()
    a.insert(b"x")
    a.insert(b"y")
    b.insert(b"y")
    b.insert(b"x")
    assert a == b
    a.remove(b"x")
    a.remove(b"y")
    assert a.value == 0
    c = MultisetHash()
    c.remove(b"z")  # negative sums reduce modulo 2**4096
    assert c.value == (-element(b"z")) & MASK
    c.insert(b"z")
    assert c == MultisetHash()
    assert MultisetHash.from_bytes(b.to_bytes()) == b and len(b.digest()) == 32


def core_rules() -> Rules:
    rules = Rules()
    for m in (core, money, membership, accounts, treasury, governance, dividends):
        m.install(rules)
    return rules.freeze()


def test_golden_state_roots() -> None:
    """Fixed inputs, fixed roots: a change to any row encoding or rule shows up here.

    If this fails after a deliberate change of the state format, every existing chain
    is affected; update the constants only together with a protocol version change.
    """
    g, keys = make_genesis(3, params={"period_seconds": 100})
    h = Harness(g, keys, rules=core_rules())
    f0, f1, f2 = h.founders
    genesis_root = h.ledger.state_root
    dep = h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 1234,
                                        "reference": "golden"})
    h.block([dep, h.tx(f1, "treasury.approve", {"action": dep.id}),
             h.tx(f2, "account.transfer", {"to": f1.public, "amount": 34})])
    h.block([h.tx(f2, "account.withdraw", {"amount": 200, "reference": "iban"})],
            dt_ms=100_000)
    assert g.chain_id.hex() == GOLDEN["chain_id"]
    assert genesis_root.hex() == GOLDEN["genesis"]
    assert h.ledger.state_root.hex() == GOLDEN["after"]


GOLDEN = {
    "chain_id": "53d1ee3b37e06d54a919a952dd43ca4fcd265e74139317e2e6926315762e5b4f",
    "genesis": "572470ee9bebda3f2c6059a90624c73fc1d2fb4cc02e44f3337876b59b325018",
    "after": "7f380bb6eca73451e454da6f15ceb8a2f1fe1e4c232386871113faa0ba691a59",
}
