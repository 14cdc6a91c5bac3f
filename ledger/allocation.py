"""Exact splits of integer money: the largest-remainder rule and the equal dividend.

Every pro-rata split in the commune (bond allocations at the stop-out rate, interest and
principal across holders, liquidation proceeds) must hand out exactly the total, in whole
minor units, the same way on every node. The largest-remainder (Hamilton) rule does that:
each position gets the floor of its exact share, and the few units the floors leave over
go one each to the largest fractional remainders, ties to the earlier position
(DESIGN 6.4, 6.5). Integer `divmod` gives the exact floor and remainder of
`total * weight / sum(weights)` without building Fractions: all remainders share the
denominator `sum(weights)`, so comparing their numerators compares the fractions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["dividend_split", "largest_remainder"]


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` across positions pro rata to `weights`; the result sums to `total`.

    Positions keep their order: the caller orders them (by commit order of the bids that
    created them) and ties between equal remainders go to the earlier position. A
    position of weight zero gets nothing. Raises ValueError for a negative total or
    weight, or for a positive total with nothing to weigh it by.
    """
    if type(total) is not int or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    for w in weights:
        if type(w) is not int or w < 0:
            raise ValueError(f"weights must be non-negative integers, got {w!r}")
    denominator = sum(weights)
    if denominator == 0:
        if total:
            raise ValueError(f"cannot split {total} across positions that all weigh zero")
        return [0] * len(weights)
    floors: list[int] = []
    remainders: list[int] = []
    for w in weights:
        q, r = divmod(total * w, denominator)
        floors.append(q)
        remainders.append(r)
    leftover = total - sum(floors)
    # Fractional remainders are each < 1 and sum to `leftover`, so strictly more than
    # `leftover` positions have a non-zero remainder: zero weights never get a unit.
    assert leftover == 0 or 0 < leftover < sum(1 for r in remainders if r)
    if leftover:
        order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
        for i in order[:leftover]:
            assert remainders[i] > 0
            floors[i] += 1
    assert sum(floors) == total
    return floors


def dividend_split(pool: int, members: int) -> tuple[int, int]:
    """Equal dividend of a period (DESIGN 6.7): `(share, carry)`.

    Each member gets `floor(pool / members)`; the remainder carries into the next
    period's pool so no unit is ever lost or invented. With no members at all (a
    commune whose last member resigned) nothing is paid and the whole pool carries.
    """
    if type(pool) is not int or pool < 0:
        raise ValueError(f"pool must be a non-negative integer, got {pool!r}")
    if type(members) is not int or members < 0:
        raise ValueError(f"members must be a non-negative integer, got {members!r}")
    if members == 0:
        return 0, pool
    share, carry = divmod(pool, members)
    return share, carry
