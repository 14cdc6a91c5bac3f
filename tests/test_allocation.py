"""Largest-remainder splits and equal dividends: exact sums, never negative, the right units."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.allocation import dividend_split, largest_remainder

SETTINGS = settings(max_examples=300, deadline=None)


def reference_split(total: int, weights: list[int]) -> list[int]:
    """Hamilton's method written the textbook way, with Fractions, for comparison."""
    w = sum(weights)
    quotas = [Fraction(total * x, w) for x in weights]
    out = [int(q) for q in quotas]  # floor: quotas are non-negative
    left = total - sum(out)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - out[i]), i))
    for i in by_remainder[:left]:
        out[i] += 1
    return out


def test_examples() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # tie: earliest position first
    assert largest_remainder(40_000, [40_000, 30_000]) == [22_857, 17_143]
    assert largest_remainder(100, [0, 5, 0, 5]) == [0, 50, 0, 50]
    assert largest_remainder(0, [3, 4]) == [0, 0]
    assert largest_remainder(0, []) == []
    assert largest_remainder(0, [0, 0]) == [0, 0]
    assert largest_remainder(7, [1]) == [7]
    # remainders 2/3, 2/3, 2/3 for one leftover unit: the first position gets it
    assert largest_remainder(2, [1, 1, 1]) == [1, 1, 0]
    # a larger remainder wins over an earlier position
    assert largest_remainder(3, [2, 1, 2]) == [1, 1, 1]  # quotas 1.2, 0.6, 1.2


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        largest_remainder(-1, [1])
    with pytest.raises(ValueError):
        largest_remainder(5, [1, -1])
    with pytest.raises(ValueError):
        largest_remainder(5, [0, 0])
    with pytest.raises(ValueError):
        largest_remainder(5, [])
    with pytest.raises(ValueError):
        largest_remainder(True, [1])  # type: ignore[arg-type]  # bools are not money
    with pytest.raises(ValueError):
        largest_remainder(5, [1.5])  # type: ignore[list-item]


weights_st = st.lists(st.integers(0, 10**9), min_size=1, max_size=30).filter(lambda w: sum(w) > 0)


@SETTINGS
@given(total=st.integers(0, 10**15), weights=weights_st)
def test_split_is_exact_and_matches_reference(total: int, weights: list[int]) -> None:
    out = largest_remainder(total, weights)
    assert sum(out) == total
    assert all(x >= 0 for x in out)
    assert out == reference_split(total, weights)
    w = sum(weights)
    for x, wi in zip(out, weights, strict=True):
        quota = Fraction(total * wi, w)
        assert quota - 1 < x < quota + 1
        if wi == 0:
            assert x == 0


@SETTINGS
@given(weights=weights_st, data=st.data())
def test_never_more_than_weight_when_total_fits(weights: list[int], data: st.DataObject) -> None:
    """Paying back part of what positions hold never overpays one of them."""
    total = data.draw(st.integers(0, sum(weights)))
    for x, wi in zip(largest_remainder(total, weights), weights, strict=True):
        assert x <= wi


def test_dividend_examples() -> None:
    assert dividend_split(2000, 3) == (666, 2)
    assert dividend_split(0, 5) == (0, 0)
    assert dividend_split(9, 3) == (3, 0)
    assert dividend_split(7, 0) == (0, 7)
    with pytest.raises(ValueError):
        dividend_split(-1, 3)
    with pytest.raises(ValueError):
        dividend_split(1, -3)


@SETTINGS
@given(pool=st.integers(0, 10**15), members=st.integers(0, 10_000))
def test_dividend_conserves(pool: int, members: int) -> None:
    share, carry = dividend_split(pool, members)
    assert share >= 0 and carry >= 0
    assert share * members + carry == pool
    if members:
        assert carry < members
