"""Bond series arithmetic: level payment, service at a period close, holder splits, liquidation.

Pure functions of integers (DESIGN 6.4-6.6); the ledger state machine calls them and
stores the results. Rates are basis points per year; a period's rate is
`r = bps / 10_000 / periods_per_year` exactly. Nothing here rounds except where DESIGN
says how: the level payment rounds up (the guarantee must never fall short), interest
rounds half to even (no systematic drift in either party's favour), and splits across
holders use the largest-remainder rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from ledger.allocation import largest_remainder

__all__ = [
    "BPS",
    "HolderPayment",
    "Liquidation",
    "Service",
    "covers_level_payment",
    "level_payment",
    "liquidate",
    "period_interest",
    "period_rate",
    "periods_to_redeem",
    "round_half_even",
    "service_period",
    "split_service",
]

BPS = 10_000


def _nonneg(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _positive(name: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def period_rate(rate_bps: int, periods_per_year: int) -> Fraction:
    _nonneg("rate_bps", rate_bps)
    _positive("periods_per_year", periods_per_year)
    return Fraction(rate_bps, BPS * periods_per_year)


def round_half_even(x: Fraction) -> int:
    """Nearest integer, exact halves to the even neighbour (banker's rounding)."""
    q, r = divmod(x.numerator, x.denominator)  # floor and its remainder, denominator > 0
    twice = 2 * r
    if twice > x.denominator or (twice == x.denominator and q % 2 == 1):
        q += 1
    return q


def level_payment(face: int, rate_bps: int, maturity: int, periods_per_year: int) -> int:
    """`A = ceil(F r / (1 - (1 + r)^-M))`, exactly; `ceil(F / M)` when r = 0.

    With `d = 10_000 * periods_per_year` and `n = d + rate_bps`, `1 + r = n / d`, so
    `A = F * rate_bps * n^M / (d * (n^M - d^M))`: one integer ceiling division, no
    Fraction normalisation of the large powers (M can be thousands of periods).
    """
    _nonneg("face", face)
    _nonneg("rate_bps", rate_bps)
    _positive("maturity", maturity)
    _positive("periods_per_year", periods_per_year)
    if rate_bps == 0:
        return -(-face // maturity)
    d = BPS * periods_per_year
    n = d + rate_bps
    n_m = n**maturity
    d_m = d**maturity
    numerator = face * rate_bps * n_m
    denominator = d * (n_m - d_m)
    return -(-numerator // denominator)


def covers_level_payment(rent: int, price: int, max_rate_bps: int, maturity: int,
                         periods_per_year: int) -> bool:
    """The guarantee of an asset request (DESIGN 6.4): rent covers A at the highest rate.

    Whatever rate the auction stops out at (never above `max_rate_bps`), the level
    payment is then no larger, so the rental agreement alone can service the bonds.
    """
    _nonneg("rent", rent)
    return rent >= level_payment(price, max_rate_bps, maturity, periods_per_year)


def period_interest(outstanding: int, rate_bps: int, periods_per_year: int) -> int:
    """`I = round_half_even(B * r)` for one period."""
    _nonneg("outstanding", outstanding)
    return round_half_even(outstanding * period_rate(rate_bps, periods_per_year))


def periods_to_redeem(face: int, rate_bps: int, rent: int, periods_per_year: int,
                      limit: int) -> int | None:
    """Closes a constant `rent` needs to redeem `face` at `rate_bps`; None if over `limit`.

    Why it exists: `rent >= A` does not by itself redeem a series within M periods,
    because interest is rounded half to even every period while A is the exact annuity
    rounded up once. Usually the series is redeemed at M (or M + 1); with long maturities
    at high rates, where the principal part of a payment is a few units, it can take
    several periods more, and when `rent` does not exceed the first period's rounded
    interest the principal never moves at all (None). The result is monotone in the
    rate, so checking at `max_rate_bps` bounds every possible stop-out rate.
    """
    _nonneg("face", face)
    _nonneg("rent", rent)
    _nonneg("limit", limit)
    r = period_rate(rate_bps, periods_per_year)
    outstanding = face
    closes = 0
    while outstanding > 0:
        if closes >= limit:
            return None
        principal = rent - round_half_even(outstanding * r)
        if principal <= 0:
            return None
        outstanding -= min(principal, outstanding)
        closes += 1
    return closes


@dataclass(frozen=True, slots=True)
class Service:
    """What one period close does to a series (DESIGN 6.5).

    `interest_paid` counts the earlier unpaid interest and this period's together, as
    the holders' split does; `unpaid_interest` is the series' new unpaid interest;
    `surplus` is the rent left once the series is fully redeemed: common income.
    """

    interest_due: int
    interest_paid: int
    principal_paid: int
    unpaid_interest: int
    surplus: int

    @property
    def paid(self) -> int:
        return self.interest_paid + self.principal_paid


def service_period(outstanding: int, unpaid_interest: int, rent: int, rate_bps: int,
                   periods_per_year: int) -> Service:
    """Apply one period's rent (0 when missed) to a series with principal `outstanding`.

    Order: unpaid interest from earlier periods, this period's interest, then principal
    up to what is outstanding; whatever is left is surplus. Interest not paid, in whole
    or in part, stays owed as unpaid interest.
    """
    _nonneg("outstanding", outstanding)
    _nonneg("unpaid_interest", unpaid_interest)
    _nonneg("rent", rent)
    due = period_interest(outstanding, rate_bps, periods_per_year)
    left = rent
    old_paid = min(left, unpaid_interest)
    left -= old_paid
    new_paid = min(left, due)
    left -= new_paid
    principal = min(left, outstanding)
    left -= principal
    result = Service(
        interest_due=due,
        interest_paid=old_paid + new_paid,
        principal_paid=principal,
        unpaid_interest=unpaid_interest - old_paid + due - new_paid,
        surplus=left,
    )
    assert result.interest_paid + result.principal_paid + result.surplus == rent
    assert result.principal_paid == 0 or result.unpaid_interest == 0
    return result


@dataclass(frozen=True, slots=True)
class HolderPayment:
    interest: int
    principal: int


def split_service(outstanding_by_holder: Sequence[int], interest_paid: int,
                  principal_paid: int) -> list[HolderPayment]:
    """Split one close's interest and principal across holders (DESIGN 6.5).

    Both are split separately, each pro rata to the holders' outstanding face *before*
    this close's payments, by largest remainder. Positions are in the commit order of
    the bids that created them (the caller's order), which breaks remainder ties. A
    holder never receives more principal than it holds outstanding.
    """
    _nonneg("interest_paid", interest_paid)
    _nonneg("principal_paid", principal_paid)
    total = sum(outstanding_by_holder)
    if principal_paid > total:
        raise ValueError(f"principal paid {principal_paid} exceeds the outstanding {total}")
    interest = largest_remainder(interest_paid, outstanding_by_holder)
    principal = largest_remainder(principal_paid, outstanding_by_holder)
    for p, b in zip(principal, outstanding_by_holder, strict=True):
        assert p <= b
    return [HolderPayment(i, p) for i, p in zip(interest, principal, strict=True)]


@dataclass(frozen=True, slots=True)
class Liquidation:
    """The waterfall of a liquidated asset's sale proceeds (DESIGN 6.6).

    `holders` lists each position's payment; `shortfall` each position's principal that
    is written off (its outstanding face minus the principal it received). After a
    liquidation the series is closed: unpaid interest and outstanding face left unpaid
    are lost to the holders, who bear the shortfall pro rata.
    """

    interest_paid: int
    principal_paid: int
    surplus: int
    interest_written_off: int
    principal_written_off: int
    holders: tuple[HolderPayment, ...]
    shortfall: tuple[int, ...]


def liquidate(proceeds: int, outstanding_by_holder: Sequence[int],
              unpaid_interest: int) -> Liquidation:
    """Pay sale proceeds to the holders, the rest to common income.

    The rule, chosen where DESIGN 6.6 says only "outstanding principal and unpaid
    interest ... pro rata": the proceeds are applied like a final rent payment without
    a current period's interest -- unpaid interest first, then principal up to the
    outstanding face, the rest is surplus (common income). Interest and principal are
    each split pro rata to the holders' outstanding face by largest remainder, exactly
    as at a period close. Because every holder's share of the unpaid interest and of the
    principal is proportional to its outstanding face, each holder's claim (face plus
    its share of unpaid interest) is paid in the same proportion as every other's: the
    shortfall is borne pro rata, whatever the split between interest and principal. The
    interest-first order only decides how a payment is booked (interest received versus
    principal received), and it is the order the series' own service uses.
    """
    _nonneg("proceeds", proceeds)
    _nonneg("unpaid_interest", unpaid_interest)
    outstanding = sum(outstanding_by_holder)
    if unpaid_interest and not outstanding:
        raise ValueError("unpaid interest on a series with nothing outstanding")
    left = proceeds
    interest = min(left, unpaid_interest)
    left -= interest
    principal = min(left, outstanding)
    left -= principal
    holders = split_service(outstanding_by_holder, interest, principal)
    shortfall = tuple(b - h.principal for b, h in zip(outstanding_by_holder, holders,
                                                        strict=True))
    result = Liquidation(
        interest_paid=interest,
        principal_paid=principal,
        surplus=left,
        interest_written_off=unpaid_interest - interest,
        principal_written_off=outstanding - principal,
        holders=tuple(holders),
        shortfall=shortfall,
    )
    assert result.interest_paid + result.principal_paid + result.surplus == proceeds
    assert sum(shortfall) == result.principal_written_off
    return result
