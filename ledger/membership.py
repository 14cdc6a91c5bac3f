"""Membership, earned by labour only (DESIGN 6.2).

A share is a row in `members`: one key, one row, no amount, so it cannot grow, and no
transaction kind moves it. It is gained by applying and being attested by members
other than oneself (admitted at `min(admission_attestations, members)` attestations),
and lost by resigning or by a governance expulsion.

Choices where DESIGN is silent:
- A resigned member may apply again (and needs attesting again); an expelled key may
  not: re-admitting it by attestation would undo a vote of the whole commune.
- The last validator cannot leave: an empty validator set would halt the ledger for
  good, with nobody left to vote anyone in.
- Founders are validators from genesis; their node is their own key's libp2p peer id
  until they register another with `member.node`.
"""

from __future__ import annotations

from ledger.genesis import Genesis
from ledger.rules import Call, Exec, Result, Rules, TxRejected
from ledger.state import Row
from protocol.crypto import PUBLIC_KEY_LEN, id_text

ED25519_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"
"""Identity multihash of a protobuf Ed25519 public key: how libp2p names an Ed25519 peer."""

LEFT_RESIGNED = "resigned"
LEFT_EXPELLED = "expelled"


def default_peer_id(member: bytes) -> bytes:
    assert len(member) == PUBLIC_KEY_LEN
    return ED25519_PEER_ID_PREFIX + member


def install(rules: Rules) -> None:
    rules.table("members", [("id", bytes)],
                [("name", str), ("enterprise", str), ("labour", str), ("node", bytes),
                 ("admitted_height", int), ("admitted_ms", int), ("application", bytes)],
                "current members, one share each; node = peer id voting for them")
    rules.table("applications", [("applicant", bytes)],
                [("id", bytes), ("name", str), ("enterprise", str), ("labour", str),
                 ("attestations", int), ("height", int), ("time_ms", int)],
                "pending applications (id = the member.apply transaction)")
    rules.table("attestations", [("application", bytes), ("attester", bytes)],
                [("height", int), ("time_ms", int)], "labour attestations")
    rules.table("departures", [("id", bytes)],
                [("reason", str), ("height", int), ("time_ms", int), ("ref", bytes)],
                "keys that left: resigned, or expelled by proposal `ref`")
    rules.on_genesis(10, "founders", _init)
    rules.on_tx("member.apply", apply)
    rules.on_tx("member.attest", attest)
    rules.on_tx("member.resign", resign)
    rules.on_tx("member.node", node)


def _init(ex: Exec, g: Genesis) -> None:
    for f in g.founders:
        ex.put("members", f.id, {"name": f.name, "enterprise": f.enterprise,
                                 "labour": f.labour, "node": default_peer_id(f.id),
                                 "admitted_height": 0, "admitted_ms": g.genesis_time_ms,
                                 "application": b""})


def is_member(ex: Exec, who: bytes) -> bool:
    return ex.has("members", who)


def require_member(ex: Exec, who: bytes, doing: str) -> Row:
    row = ex.peek("members", who)
    if row is None:
        raise TxRejected(f"only members can {doing}: {id_text(who)} is not a member")
    return row


def apply(ex: Exec, tx: Call) -> Result:
    who = tx.signer
    if is_member(ex, who):
        raise TxRejected(f"{id_text(who)} is already a member")
    left = ex.peek("departures", who)
    if left is not None and left["reason"] == LEFT_EXPELLED:
        raise TxRejected(f"{id_text(who)} was expelled by proposal "
                         f"{left['ref'].hex()} and cannot apply again")
    pending = ex.peek("applications", who)
    if pending is not None:
        raise TxRejected(f"{id_text(who)} already has a pending application "
                         f"{pending['id'].hex()}")
    a = tx.args
    ex.put("applications", who, {"id": tx.id, "name": a["name"], "enterprise": a["enterprise"],
                                 "labour": a["labour"], "attestations": 0,
                                 "height": ex.height, "time_ms": ex.time_ms})
    return {"application": tx.id.hex()}


def admission_threshold(ex: Exec) -> int:
    return min(ex.param("admission_attestations"), ex.count("members"))


def attest(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "attest labour")
    applicant: bytes = tx.args["applicant"]
    if applicant == tx.signer:
        raise TxRejected("an applicant cannot attest their own labour")
    app = ex.get("applications", applicant)
    if app is None:
        if is_member(ex, applicant):
            raise TxRejected(f"{id_text(applicant)} is already a member")
        raise TxRejected(f"{id_text(applicant)} has no pending application")
    app_id: bytes = app["id"]
    if ex.has("attestations", (app_id, tx.signer)):
        raise TxRejected(f"{id_text(tx.signer)} already attested {id_text(applicant)}")
    ex.put("attestations", (app_id, tx.signer), {"height": ex.height, "time_ms": ex.time_ms})
    count = int(app["attestations"]) + 1
    if count >= admission_threshold(ex):
        admit(ex, applicant, app)
        return {"attestations": count, "admitted": 1}
    app["attestations"] = count
    ex.put("applications", applicant, app)
    return {"attestations": count, "admitted": 0}


def admit(ex: Exec, who: bytes, app: Row) -> None:
    ex.delete("applications", who)
    ex.delete("departures", who)
    ex.put("members", who, {"name": app["name"], "enterprise": app["enterprise"],
                            "labour": app["labour"], "node": b"", "admitted_height": ex.height,
                            "admitted_ms": ex.time_ms, "application": app["id"]})


def validator_count(ex: Exec) -> int:
    return sum(1 for row in ex.state.data["members"].values() if row["node"])


def remove_member(ex: Exec, who: bytes, reason: str, ref: bytes = b"") -> None:
    """The one way a share ends. Raises `TxRejected` if it would empty the validator set."""
    row = ex.peek("members", who)
    assert row is not None
    if row["node"] and validator_count(ex) == 1:
        raise TxRejected(f"{id_text(who)} is the last validator; without validators the "
                         "ledger halts for good")
    ex.delete("members", who)
    ex.put("departures", who, {"reason": reason, "height": ex.height, "time_ms": ex.time_ms,
                               "ref": ref})
    for _order, _name, hook in ex.rules.leave_hooks:
        hook(ex, who)


def resign(ex: Exec, tx: Call) -> Result:
    require_member(ex, tx.signer, "resign")
    remove_member(ex, tx.signer, LEFT_RESIGNED)
    return None


def node(ex: Exec, tx: Call) -> Result:
    row = ex.get("members", tx.signer)
    if row is None:
        raise TxRejected(f"only members can register a node: {id_text(tx.signer)} is not a "
                         "member")
    peer: bytes = tx.args["peer_id"]
    if row["node"] == peer:
        raise TxRejected("this node is already registered for this member")
    for other, orow in ex.state.data["members"].items():
        if orow["node"] == peer and other != tx.signer:
            raise TxRejected(f"peer id already votes for member {id_text(other)}; one node "
                             "votes for one member")
    row["node"] = peer
    ex.put("members", tx.signer, row)
    return None
