"""Core tables: parameters, scalars, the validator-set schedule and recorded evidence.

The validator set is part of the state because consensus at height h must know who
votes at h, and every node must agree: validators are the members with a registered
node, in canonical (sorted) order, power 1 each. A change made by block H takes effect
at H+2 (DESIGN 5), so after each block the set it produces is scheduled at H+2; the
schedule keeps only the entries still needed (the one in force at H+1 and later ones),
so the state holds no history. Older sets are kept outside the state by the store.
"""

from __future__ import annotations

from ledger.genesis import Genesis
from ledger.rules import Exec, Rules
from ledger.state import State
from protocol.crypto import PUBLIC_KEY_LEN


def install(rules: Rules) -> None:
    rules.table("params", [("name", str)], [("value", int)],
                "governable parameters (DESIGN 6.10)")
    rules.table("scalars", [("name", str)], [("value", int)],
                "single numbers: open period and its bounds, common-income pool, treasury "
                "flows, treasury threshold, sequence counters")
    rules.table("validator_schedule", [("height", int)], [("members", bytes)],
                "validator sets by the height from which they vote (ids concatenated, sorted)")
    rules.table("evidence", [("hash", bytes)],
                [("validator", bytes), ("height", int), ("round", int),
                 ("included_height", int), ("raw", bytes)],
                "equivocation evidence included in blocks, for auditors")
    rules.on_genesis(0, "core", _init)


def _init(ex: Exec, g: Genesis) -> None:
    for name, value in sorted(g.params.items()):
        ex.put("params", name, {"value": value})
    ex.set_scalar("period", 0)
    ex.set_scalar("period_start_ms", g.genesis_time_ms)
    ex.set_scalar("period_end_ms", g.genesis_time_ms + g.params["period_seconds"] * 1000)
    ex.set_scalar("treasury_threshold", g.treasury_threshold)
    ex.put("validator_schedule", 1, {"members": pack_ids(sorted(g.founder_ids()))})


def pack_ids(ids: list[bytes]) -> bytes:
    return b"".join(ids)


def unpack_ids(data: bytes) -> tuple[bytes, ...]:
    assert len(data) % PUBLIC_KEY_LEN == 0
    return tuple(data[i:i + PUBLIC_KEY_LEN] for i in range(0, len(data), PUBLIC_KEY_LEN))


def scheduled_validators(state: State, height: int) -> tuple[bytes, ...] | None:
    """The validator ids voting at `height`, if the schedule still covers it."""
    best = None
    for h in state.data["validator_schedule"]:
        if h <= height and (best is None or h > best):
            best = h
    if best is None:
        return None
    row = state.data["validator_schedule"][best]
    return unpack_ids(row["members"])


def current_validator_ids(state: State) -> list[bytes]:
    """Members with a registered node, sorted: the set the state produces now."""
    return sorted(k for k, row in state.data["members"].items() if row["node"])


def schedule_validators(ex: Exec) -> bytes | None:
    """After block `ex.height`: schedule the produced set at height+2 if it changed.

    Returns the packed new set when one was scheduled (the store keeps the history).
    """
    h = ex.height
    sched = ex.state.data["validator_schedule"]
    latest = max(sched)
    packed = pack_ids(current_validator_ids(ex.state))
    new = None
    if packed != sched[latest]["members"]:
        ex.put("validator_schedule", h + 2, {"members": packed})
        new = packed
    in_force = max(k for k in sched if k <= h + 1)
    for k in sorted(sched):
        if k < in_force:
            ex.delete("validator_schedule", k)
    return new
