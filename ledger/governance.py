"""Governance: one member, one vote (DESIGN 6.8).

A proposal passes when the yes votes of current members are more than 2/3 of the
current members. It is decided at the first moment that holds: at the vote that brings
yes above 2/3 (so a clear decision takes effect at once, not days later), or, when its
window ends without that, it is rejected at the first block at or past the end. Votes
of members who leave are withdrawn from the tallies of open proposals, so a tally
always counts current members only.

What a passed proposal does: `param` sets a parameter (period lengths take effect from
the next period); `treasury` replaces the signers and threshold; `expel` ends a share.
`link`, `merge` and `upgrade` are recorded as passed for the federation and upgrade
issues to act on. A passed change that can no longer apply (the member to expel has
already left) is recorded as `failed` with the reason; the vote itself stands.
"""

from __future__ import annotations

from typing import Any

from ledger.genesis import GenesisError, check_param
from ledger.membership import LEFT_EXPELLED, remove_member, require_member
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.treasury import set_treasury
from protocol.crypto import id_text
from protocol.encoding import decode, encode

OPEN = "open"
PASSED = "passed"
REJECTED = "rejected"
FAILED = "failed"


def install(rules: Rules) -> None:
    rules.table("proposals", [("id", bytes)],
                [("proposer", bytes), ("title", str), ("type", str), ("change", bytes),
                 ("created_ms", int), ("ends_ms", int), ("yes", int), ("no", int),
                 ("status", str), ("decided_height", int), ("outcome", str)],
                "governance proposals (id = the proposal.create transaction); change is "
                "the canonical encoding of the change")
    rules.table("open_proposals", [("ends_ms", int), ("id", bytes)], [],
                "index of open proposals by the end of their window")
    rules.table("votes", [("proposal", bytes), ("member", bytes)],
                [("yes", int), ("height", int)], "one vote per member per proposal")
    rules.on_tx("proposal.create", create)
    rules.on_tx("proposal.vote", vote)
    rules.on_block_start(500, "proposal windows", close_expired)
    rules.on_member_leave(500, "withdraw votes", _withdraw_votes)


def _check_change(ex: Exec, change: dict[str, Any]) -> None:
    """Reject a change that could not be applied now (also re-checked when it passes)."""
    t = change["type"]
    if t == "param":
        try:
            check_param(change["name"], change["value"])
        except GenesisError as exc:
            raise TxRejected(str(exc)) from None
    elif t == "treasury":
        for s in change["signers"]:
            if not ex.has("members", s):
                raise TxRejected(f"treasury signer {id_text(s)} is not a member")
        if change["threshold"] > len(change["signers"]):
            raise TxRejected(f"treasury threshold {change['threshold']} is more than the "
                             f"{len(change['signers'])} signers")
    elif t == "expel" and not ex.has("members", change["member"]):
        raise TxRejected(f"{id_text(change['member'])} is not a member")


def create(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "make proposals")
    change = tx.args["change"]
    _check_change(ex, change)
    seconds = tx.args.get("voting_seconds", ex.param("voting_seconds"))
    ends = ex.time_ms + seconds * 1000
    ex.put("proposals", tx.id, {"proposer": tx.signer, "title": tx.args["title"],
                                "type": change["type"], "change": encode(change),
                                "created_ms": ex.time_ms, "ends_ms": ends, "yes": 0, "no": 0,
                                "status": OPEN, "decided_height": 0, "outcome": ""})
    ex.put("open_proposals", (ends, tx.id), {})
    return {"proposal": tx.id.hex(), "ends_ms": ends}


def vote(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "vote")
    pid: bytes = tx.args["proposal"]
    p = ex.get("proposals", pid)
    if p is None:
        raise TxRejected(f"no proposal {pid.hex()}")
    if p["status"] != OPEN:
        raise TxRejected(f"proposal {pid.hex()} is already {p['status']}")
    if ex.time_ms >= int(p["ends_ms"]):
        raise TxRejected(f"voting on proposal {pid.hex()} closed at {p['ends_ms']} ms")
    if ex.has("votes", (pid, tx.signer)):
        raise TxRejected(f"{id_text(tx.signer)} already voted on proposal {pid.hex()}")
    yes = bool(tx.args["yes"])
    ex.put("votes", (pid, tx.signer), {"yes": int(yes), "height": ex.height})
    p["yes" if yes else "no"] = int(p["yes" if yes else "no"]) + 1
    if _passes(ex, p):
        _decide(ex, pid, p, PASSED)
    else:
        ex.put("proposals", pid, p)
    return {"yes": p["yes"], "no": p["no"], "status": p["status"]}


def _passes(ex: Exec, p: dict[str, Any]) -> bool:
    return 3 * int(p["yes"]) > 2 * ex.count("members")


def _decide(ex: Exec, pid: bytes, p: dict[str, Any], status: str) -> None:
    ex.delete("open_proposals", (int(p["ends_ms"]), pid))
    p["status"] = status
    p["decided_height"] = ex.height
    if status == PASSED:
        change = decode(p["change"])
        mark = ex.state.mark()
        try:
            _check_change(ex, change)
            p["outcome"] = _apply(ex, pid, change)
        except TxRejected as exc:
            ex.state.rollback(mark)
            p["status"] = FAILED
            p["outcome"] = exc.reason
    ex.put("proposals", pid, p)


def _apply(ex: Exec, pid: bytes, change: dict[str, Any]) -> str:
    t = change["type"]
    if t == "param":
        ex.put("params", change["name"], {"value": change["value"]})
        return f"{change['name']} = {change['value']}"
    if t == "treasury":
        set_treasury(ex, sorted(change["signers"]), change["threshold"])
        return f"treasury: {len(change['signers'])} signers, threshold {change['threshold']}"
    if t == "expel":
        remove_member(ex, change["member"], LEFT_EXPELLED, pid)
        return f"expelled {id_text(change['member'])}"
    return f"{t} recorded"


def close_expired(ex: Exec) -> None:
    for (ends, pid), _ in list(ex.scan("open_proposals")):
        if ends > ex.time_ms:
            break
        p = ex.get("proposals", pid)
        assert p is not None and p["status"] == OPEN
        _decide(ex, pid, p, PASSED if _passes(ex, p) else REJECTED)


def _withdraw_votes(ex: Exec, member: bytes) -> None:
    for (_ends, pid), _ in list(ex.scan("open_proposals")):
        v = ex.peek("votes", (pid, member))
        if v is None:
            continue
        p = ex.get("proposals", pid)
        assert p is not None
        col = "yes" if v["yes"] else "no"
        p[col] = int(p[col]) - 1
        ex.put("proposals", pid, p)
