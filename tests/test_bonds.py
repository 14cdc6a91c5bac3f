"""Bond arithmetic (DESIGN 6.4-6.6): level payment, service, holder splits, liquidation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.bonds import (
    covers_level_payment,
    level_payment,
    liquidate,
    period_interest,
    period_rate,
    periods_to_redeem,
    round_half_even,
    service_period,
    split_service,
)

SETTINGS = settings(max_examples=200, deadline=None)


def reference_level_payment(face: int, bps: int, maturity: int, ppy: int) -> int:
    """DESIGN's formula as written, in Fractions."""
    r = Fraction(bps, 10_000 * ppy)
    if r == 0:
        return math.ceil(Fraction(face, maturity))
    return math.ceil(face * r / (1 - (1 + r) ** -maturity))


# ---- rounding and rates ----------------------------------------------------------------


def test_round_half_even() -> None:
    cases = {Fraction(1, 2): 0, Fraction(3, 2): 2, Fraction(5, 2): 2, Fraction(7, 2): 4,
             Fraction(-1, 2): 0, Fraction(-3, 2): -2, Fraction(1, 3): 0, Fraction(2, 3): 1,
             Fraction(650): 650, Fraction(10_001, 2): 5_000, Fraction(10_003, 2): 5_002}
    for x, expected in cases.items():
        assert round_half_even(x) == expected, x
        assert round_half_even(x) == round(x)  # Python's Fraction rounds half to even too


def test_period_rate_and_interest() -> None:
    assert period_rate(900, 12) == Fraction(3, 400)
    assert period_interest(120_000, 650, 12) == 650
    assert period_interest(96_650, 650, 12) == 524  # 523.52 -> 524
    assert period_interest(1, 60_000, 12) == 0  # 0.5 -> 0 (half to even)
    assert period_interest(3, 60_000, 12) == 2  # 1.5 -> 2
    assert period_interest(5, 60_000, 12) == 2  # 2.5 -> 2
    assert period_interest(0, 900, 12) == 0
    with pytest.raises(ValueError):
        period_rate(100, 0)
    with pytest.raises(ValueError):
        period_rate(-1, 12)


# ---- level payment ---------------------------------------------------------------------


def test_level_payment_known_values() -> None:
    # a textbook loan: 100 000 at 1% a month over 12 months pays 8 884.88 -> 8 885
    assert level_payment(100_000, 1200, 12, 12) == 8_885
    assert level_payment(300_000, 900, 30, 12) == 11_205  # SCENARIOS.md's van
    assert level_payment(120_000, 900, 6, 12) == 20_529
    assert level_payment(3_000, 0, 3, 12) == 1_000
    assert level_payment(3_001, 0, 3, 12) == 1_001  # F/M rounded up
    assert level_payment(0, 900, 6, 12) == 0
    assert level_payment(1, 900, 1, 12) == 2  # 1.0075 rounded up
    with pytest.raises(ValueError):
        level_payment(100, 900, 0, 12)


def test_level_payment_long_maturity_is_exact_and_fast() -> None:
    """M in the thousands: integer powers, no Fraction normalisation of huge numbers."""
    a = level_payment(10**15, 100_000, 12_000, 12)
    assert a == math.ceil(Fraction(10**15 * 100_000, 120_000))  # (1+r)^-M is ~ 0 here
    assert level_payment(10**12, 1, 12_000, 10**6) > 0


def test_guarantee_check() -> None:
    assert covers_level_payment(12_000, 300_000, 900, 30, 12)
    assert covers_level_payment(11_205, 300_000, 900, 30, 12)
    assert not covers_level_payment(11_204, 300_000, 900, 30, 12)


@SETTINGS
@given(face=st.integers(0, 10**12), bps=st.integers(0, 5000), maturity=st.integers(1, 60),
       ppy=st.sampled_from([1, 2, 4, 12, 52, 365]))
def test_level_payment_matches_formula(face: int, bps: int, maturity: int, ppy: int) -> None:
    a = level_payment(face, bps, maturity, ppy)
    assert a == reference_level_payment(face, bps, maturity, ppy)
    assert a * maturity >= face
    if bps and face:
        assert a * maturity > face  # interest is owed on top of the face
        assert a >= period_interest(face, bps, ppy)  # an annuity pays more than the interest
    assert a <= face + math.ceil(face * Fraction(bps, 10_000 * ppy)) + 1
    if maturity > 1:
        assert level_payment(face, bps, maturity - 1, ppy) >= a  # shorter: dearer
    assert level_payment(face, bps + 1, maturity, ppy) >= a  # higher rate: dearer


# ---- service at a close ----------------------------------------------------------------


def test_service_examples() -> None:
    s = service_period(120_000, 0, 24_000, 650, 12)
    assert (s.interest_due, s.interest_paid, s.principal_paid, s.unpaid_interest, s.surplus) \
        == (650, 650, 23_350, 0, 0)
    missed = service_period(120_000, 0, 0, 650, 12)
    assert (missed.interest_paid, missed.principal_paid, missed.unpaid_interest) == (0, 0, 650)
    # the next period: old unpaid interest first, then this period's, then principal
    s = service_period(120_000, 650, 24_000, 650, 12)
    assert (s.interest_paid, s.principal_paid, s.unpaid_interest) == (1_300, 22_700, 0)
    # partial: pays part of the old unpaid interest, the rest and all new interest stays owed
    s = service_period(120_000, 650, 400, 650, 12)
    assert (s.interest_paid, s.principal_paid, s.unpaid_interest, s.surplus) == (400, 0, 900, 0)
    # partial into the current interest
    s = service_period(120_000, 100, 500, 650, 12)
    assert (s.interest_paid, s.principal_paid, s.unpaid_interest) == (500, 0, 250)
    # redemption: what is left after principal is surplus
    s = service_period(1_979, 0, 24_000, 650, 12)
    assert (s.interest_paid, s.principal_paid, s.unpaid_interest, s.surplus) \
        == (11, 1_979, 0, 22_010)
    # a redeemed series: every unit is surplus (common income)
    s = service_period(0, 0, 24_000, 650, 12)
    assert (s.interest_paid, s.principal_paid, s.surplus) == (0, 0, 24_000)


@SETTINGS
@given(outstanding=st.integers(0, 10**12), unpaid=st.integers(0, 10**9),
       rent=st.integers(0, 10**12), bps=st.integers(0, 100_000),
       ppy=st.sampled_from([1, 4, 12, 52]))
def test_service_invariants(outstanding: int, unpaid: int, rent: int, bps: int,
                            ppy: int) -> None:
    s = service_period(outstanding, unpaid, rent, bps, ppy)
    due = period_interest(outstanding, bps, ppy)
    assert s.interest_due == due
    assert min(x for x in (s.interest_paid, s.principal_paid, s.unpaid_interest,
                           s.surplus)) >= 0
    assert s.interest_paid + s.principal_paid + s.surplus == rent
    assert s.interest_paid + s.unpaid_interest == unpaid + due  # interest is never lost
    assert s.principal_paid <= outstanding
    if s.principal_paid:
        assert s.unpaid_interest == 0  # principal only after all interest
    if s.surplus:
        assert s.principal_paid == outstanding  # surplus only once fully redeemed
    assert s.paid == s.interest_paid + s.principal_paid


# ---- holder splits ---------------------------------------------------------------------


def test_split_service_examples() -> None:
    holders = split_service([80_000, 22_857, 17_143], 650, 23_350)
    assert sum(h.interest for h in holders) == 650
    assert sum(h.principal for h in holders) == 23_350
    assert [h.interest for h in holders] == [433, 124, 93]
    assert [h.principal for h in holders] == [15_567, 4_447, 3_336]
    # a transferred-out position holds nothing and gets nothing
    holders = split_service([0, 10, 10], 3, 20)
    assert [(h.interest, h.principal) for h in holders] == [(0, 0), (2, 10), (1, 10)]
    with pytest.raises(ValueError):
        split_service([10, 10], 0, 21)  # more principal than outstanding
    with pytest.raises(ValueError):
        split_service([0, 0], 1, 0)  # interest with nobody to pay


face_parts = st.lists(st.integers(1, 10**7), min_size=1, max_size=8)


@SETTINGS
@given(parts=face_parts, bps=st.integers(0, 3000), maturity=st.integers(1, 48),
       ppy=st.sampled_from([1, 4, 12]), data=st.data())
def test_series_life_redeems_face_exactly(parts: list[int], bps: int, maturity: int, ppy: int,
                                          data: st.DataObject) -> None:
    """Rent >= A every period: each holder receives exactly its face as principal."""
    face = sum(parts)
    a = level_payment(face, bps, maturity, ppy)
    # degenerate series whose payment is all rounded interest are covered separately
    assume(a > period_interest(face, bps, ppy))
    extra = data.draw(st.lists(st.integers(0, face), min_size=maturity + 20,
                               max_size=maturity + 20))
    outstanding = list(parts)
    received_principal = [0] * len(parts)
    received_interest = [0] * len(parts)
    unpaid = 0
    total_interest = 0
    closes = 0
    while sum(outstanding) > 0:
        assert closes < maturity + 20, "series not redeemed"
        rent = a + (extra[closes] if data.draw(st.booleans()) else 0)
        s = service_period(sum(outstanding), unpaid, rent, bps, ppy)
        assert s.unpaid_interest == 0  # rent >= A always covers the interest
        paid = split_service(outstanding, s.interest_paid, s.principal_paid)
        for i, h in enumerate(paid):
            assert 0 <= h.principal <= outstanding[i]
            outstanding[i] -= h.principal
            received_principal[i] += h.principal
            received_interest[i] += h.interest
        unpaid = s.unpaid_interest
        total_interest += s.interest_paid
        closes += 1
    assert received_principal == parts
    assert sum(received_interest) == total_interest
    # rent of exactly A redeems at maturity, or a period or two after (see periods_to_redeem)
    k = periods_to_redeem(face, bps, a, ppy, maturity + 20)
    assert k is not None and closes <= k


@SETTINGS
@given(face=st.integers(1, 10**9), bps=st.integers(0, 3000), maturity=st.integers(1, 60),
       ppy=st.sampled_from([1, 4, 12]))
def test_periods_to_redeem_matches_service(face: int, bps: int, maturity: int,
                                           ppy: int) -> None:
    a = level_payment(face, bps, maturity, ppy)
    k = periods_to_redeem(face, bps, a, ppy, 10 * maturity + 10)
    outstanding, unpaid, closes = face, 0, 0
    while outstanding and closes < 10 * maturity + 10:
        s = service_period(outstanding, unpaid, a, bps, ppy)
        if s.principal_paid == 0:
            break
        outstanding -= s.principal_paid
        unpaid = s.unpaid_interest
        closes += 1
    assert k == (closes if outstanding == 0 else None)
    if k is not None and bps:
        lower = periods_to_redeem(face, bps - 1, a, ppy, 10 * maturity + 10)
        assert lower is not None and lower <= k  # monotone in the rate


def test_level_payment_can_outlive_maturity() -> None:
    """Interest rounds every period, A once: paying exactly A may need more than M closes."""
    assert level_payment(29, 1123, 19, 4) == 2
    assert periods_to_redeem(29, 1123, 2, 4, 100) == 21
    # degenerate: A equals the first period's rounded interest; principal never moves
    a = level_payment(142_276, 2296, 57, 1)
    assert a == 32_667 == period_interest(142_276, 2296, 1)
    assert periods_to_redeem(142_276, 2296, a, 1, 10_000) is None
    assert periods_to_redeem(142_276, 2296, a + 1, 1, 10_000) is not None
    assert periods_to_redeem(0, 900, 0, 12, 0) == 0
    assert periods_to_redeem(10, 0, 5, 12, 1) is None  # over the limit


# ---- liquidation -----------------------------------------------------------------------


def test_liquidation_examples() -> None:
    # proceeds cover everything: unpaid interest, then the face, the rest is common income
    liq = liquidate(100_000, [60_000, 30_000], 900)
    assert (liq.interest_paid, liq.principal_paid, liq.surplus) == (900, 90_000, 9_100)
    assert [(h.interest, h.principal) for h in liq.holders] == [(600, 60_000), (300, 30_000)]
    assert liq.shortfall == (0, 0)
    assert (liq.interest_written_off, liq.principal_written_off) == (0, 0)
    # shortfall: borne pro rata
    liq = liquidate(45_900, [60_000, 30_000], 900)
    assert (liq.interest_paid, liq.principal_paid, liq.surplus) == (900, 45_000, 0)
    assert [(h.interest, h.principal) for h in liq.holders] == [(600, 30_000), (300, 15_000)]
    assert liq.shortfall == (30_000, 15_000)
    assert liq.principal_written_off == 45_000
    # not even the unpaid interest
    liq = liquidate(500, [60_000, 30_000], 900)
    assert [(h.interest, h.principal) for h in liq.holders] == [(333, 0), (167, 0)]
    assert liq.interest_written_off == 400 and liq.principal_written_off == 90_000
    # nothing sold
    liq = liquidate(0, [1, 2], 0)
    assert liq.surplus == 0 and liq.shortfall == (1, 2)
    with pytest.raises(ValueError):
        liquidate(10, [0, 0], 5)


@SETTINGS
@given(proceeds=st.integers(0, 10**10), parts=st.lists(st.integers(0, 10**8), min_size=1,
                                                       max_size=10),
       unpaid=st.integers(0, 10**6))
def test_liquidation_is_pro_rata_and_exact(proceeds: int, parts: list[int],
                                           unpaid: int) -> None:
    outstanding = sum(parts)
    assume(outstanding > 0 or unpaid == 0)
    liq = liquidate(proceeds, parts, unpaid)
    assert liq.interest_paid + liq.principal_paid + liq.surplus == proceeds
    assert sum(h.interest for h in liq.holders) == liq.interest_paid
    assert sum(h.principal for h in liq.holders) == liq.principal_paid
    assert liq.interest_paid + liq.interest_written_off == unpaid
    assert liq.principal_paid + liq.principal_written_off == outstanding
    assert liq.surplus == max(0, proceeds - outstanding - unpaid)
    for h, b, short in zip(liq.holders, parts, liq.shortfall, strict=True):
        assert h.interest >= 0 and 0 <= h.principal <= b and short == b - h.principal
        if outstanding:
            # each holder's total is within two units (two splits) of its exact pro-rata share
            exact = Fraction((liq.interest_paid + liq.principal_paid) * b, outstanding)
            assert abs(h.interest + h.principal - exact) < 2
