"""The summary of a played scenario (SCENARIOS.md "Summary"), and its human rendering.

Built only from reads of the committed state (`Reader`: row/rows/scalar) plus the names
the player gave to keys, assets and rejected steps, so a run on live daemons that reads
the same state produces the same summary. Money in minor units, rates in basis points,
ids in their text form; actors, assets and holders by scenario name (a key the scenario
never named shows as its id).

Beyond the fields SCENARIOS.md requires: per actor `bonds` (outstanding face held) and
`rent_paid`; per asset `id`, `price`, `term`, `maturity`, `requester`, the bond auction's
every `bid`, the series' `level_payment`, `start_period`, `status`, `redeemed_period`,
`interest_paid`, `principal_paid` and write-offs, the current `rental`; per re-auction
its `reserve`, `min_term`, `term` and bids; `treasury.signers`/`threshold`; top-level
`commune`, `description`, `pool` (carried into the open period), `conservation`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bootstrap.player import PlayerState, Reader, actor_name
from bootstrap.scenario import Scenario
from ledger.auction import rental_auction_id
from protocol.crypto import id_text

HOLDERS_LEN = 32


def _holders(packed: bytes) -> list[bytes]:
    return [packed[i:i + HOLDERS_LEN] for i in range(0, len(packed), HOLDERS_LEN)]


def summarize(scenario: Scenario, view: Reader, names: dict[bytes, str], state: PlayerState,
              *, height: int, state_root: bytes,
              conservation: tuple[int, int] | None = None) -> dict[str, Any]:
    def name(who: bytes) -> str:
        return actor_name(names, who)

    bonds_held: dict[bytes, int] = {}
    assets: dict[str, Any] = {}
    for asset_name, asset_id in state.assets.items():
        assets[asset_name] = _asset(view, asset_id, name, bonds_held)
    actors: dict[str, Any] = {}
    for actor in scenario.actors:
        pub = scenario.key(actor).public
        acct = view.row("accounts", pub)
        divs = view.rows("dividends", (pub,))
        actors[actor] = {
            "id": id_text(pub),
            "member": view.row("members", pub) is not None,
            "balance": 0 if acct is None else int(acct["balance"]),
            "arrears": 0 if acct is None else int(acct["arrears"]),
            "dividends_earned": sum(int(r["amount"]) for _, r in divs),
            "dividends_claimed": sum(int(r["amount"]) for _, r in divs if r["claimed_height"]),
            "bonds": bonds_held.get(pub, 0),
        }
    dividends = [{"period": k, "pool": int(r["pool"]), "members": int(r["members"]),
                  "share": int(r["share"]), "carry": int(r["carry"])}
                 for k, r in view.rows("periods")]
    signers = [name(k) for k, _ in view.rows("treasury_signers")]
    out: dict[str, Any] = {
        "commune": scenario.commune.name,
        "description": scenario.description,
        "periods": scenario.periods,
        "height": height,
        "state_root": state_root.hex(),
        "actors": actors,
        "assets": assets,
        "treasury": {"deposits": view.scalar("deposits"), "payouts": view.scalar("payouts"),
                     "acquisitions": view.scalar("acquisitions"),
                     "liquidations": view.scalar("liquidations"),
                     "signers": signers, "threshold": view.scalar("treasury_threshold")},
        "dividends": dividends,
        "pool": view.scalar("pool"),
        "rejected": [{"step": r.step, "do": r.do, "by": r.by, "phase": r.phase,
                      "reason": r.reason}
                     for r in sorted(state.rejected, key=lambda r: (r.step, r.phase != "step"))],
    }
    if conservation is not None:
        out["conservation"] = {"held": conservation[0], "inflow": conservation[1]}
    return out


def _asset(view: Reader, asset_id: bytes, name: Any, bonds_held: dict[bytes, int]
           ) -> dict[str, Any]:
    a = view.row("assets", asset_id)
    assert a is not None
    rental = view.row("rentals", asset_id)
    rented = a["status"] == "rented" and rental is not None and rental["status"] == "active"
    out: dict[str, Any] = {
        "id": asset_id.hex(), "status": a["status"],
        "lessee": name(rental["lessee"]) if rented and rental else None,
        "rent": int(rental["rent"]) if rented and rental else None,
        "owned": bool(a["owned"]), "requester": name(a["requester"]),
        "price": int(a["price"]), "offered_rent": int(a["rent"]), "term": int(a["term"]),
        "maturity": int(a["maturity"]), "max_rate_bps": int(a["max_rate_bps"]),
    }
    if rental is not None:
        out["rental"] = {"lessee": name(rental["lessee"]), "rent": int(rental["rent"]),
                         "start": int(rental["start"]), "last": int(rental["last"]),
                         "status": rental["status"], "paid": int(rental["paid"]),
                         "missed": int(rental["missed_total"])}
    auction = view.row("auctions", asset_id)
    assert auction is not None
    allocations: dict[str, int] = {}
    bids = []
    for (_a, order), bid in view.rows("bond_bids", (asset_id,)):
        who = name(bid["bidder"])
        if bid["allocation"]:
            allocations[who] = allocations.get(who, 0) + int(bid["allocation"])
        bids.append({"bid": order, "by": who, "lock": int(bid["lock"]),
                     "amount": int(bid["amount"]), "rate_bps": int(bid["rate_bps"]),
                     "status": bid["status"], "allocation": int(bid["allocation"]),
                     "forfeit": int(bid["forfeit"])})
    cleared = auction["status"] == "cleared"
    out["auction"] = {"status": auction["status"], "cleared": cleared,
                      "stop_out_bps": int(auction["result"]) if cleared else None,
                      "allocations": allocations, "forfeited": int(auction["forfeited"]),
                      "bids": bids}
    s = view.row("series", asset_id)
    out["series"] = None if s is None else _series(view, asset_id, s, name, bonds_held)
    reauctions = []
    for k in range(int(a["reauctions"])):
        rid = rental_auction_id(asset_id, k)
        r = view.row("auctions", rid)
        assert r is not None
        rbids = []
        winner_bid = None
        for (_a, order), bid in view.rows("rent_bids", (rid,)):
            rbids.append({"bid": order, "by": name(bid["bidder"]), "rent": int(bid["rent"]),
                          "term": int(bid["term"]), "status": bid["status"],
                          "lock": int(bid["lock"]), "forfeit": int(bid["forfeit"])})
            if bid["status"] == "won":
                winner_bid = bid
        reauctions.append({
            "period": int(r["opened_period"]), "status": r["status"],
            "winner": name(r["winner"]) if r["winner"] else None,
            "rent": int(winner_bid["rent"]) if winner_bid else None,
            "price": int(r["result"]) if r["result"] >= 0 else None,
            "term": int(winner_bid["term"]) if winner_bid else None,
            "reserve": int(r["reserve"]), "min_term": int(r["min_term"]), "bids": rbids})
    out["reauctions"] = reauctions
    out["pending"] = int(a["pending"])
    return out


def _series(view: Reader, asset_id: bytes, s: dict[str, Any], name: Any,
            bonds_held: dict[bytes, int]) -> dict[str, Any]:
    holders: dict[str, Any] = {}
    for h in _holders(s["holders"]):
        b = view.row("bonds", (asset_id, h))
        assert b is not None
        bonds_held[h] = bonds_held.get(h, 0) + int(b["outstanding"])
        holders[name(h)] = {"face": int(b["face"]), "outstanding": int(b["outstanding"]),
                            "interest_received": int(b["interest_received"]),
                            "principal_received": int(b["principal_received"]),
                            "transferred": int(b["sent"]), "written_off": int(b["written_off"])}
    return {"rate_bps": int(s["rate_bps"]), "face": int(s["face"]),
            "outstanding": int(s["outstanding"]), "unpaid_interest": int(s["unpaid_interest"]),
            "status": s["status"], "level_payment": int(s["level_payment"]),
            "maturity": int(s["maturity"]), "start_period": int(s["start_period"]),
            "redeemed_period": int(s["redeemed_period"]) if s["redeemed_period"] >= 0 else None,
            "interest_paid": int(s["interest_paid"]), "principal_paid": int(s["principal_paid"]),
            "principal_written_off": int(s["principal_written_off"]),
            "interest_written_off": int(s["interest_written_off"]), "holders": holders}


# ---- human output ------------------------------------------------------------------------


def _money(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def render(console: Console, summary: dict[str, Any]) -> None:
    """Print a summary as tables: actors, assets, bonds, re-auctions, treasury, dividends."""
    console.print(f"[bold]{summary['commune']}[/]: {summary['periods']} periods, "
                  f"height {summary['height']}, state root {summary['state_root'][:16]}…")
    if summary.get("description"):
        console.print(summary["description"], style="dim", markup=False)

    t = Table(title="Actors", title_justify="left")
    for col in ("actor", "member", "balance", "arrears", "bonds", "dividends earned",
                "claimed"):
        t.add_column(col, justify="left" if col in ("actor", "member") else "right")
    for n, a in summary["actors"].items():
        t.add_row(n, "yes" if a["member"] else "", _money(a["balance"]), _money(a["arrears"]),
                  _money(a["bonds"]), _money(a["dividends_earned"]),
                  _money(a["dividends_claimed"]))
    console.print(t)

    if summary["assets"]:
        t = Table(title="Assets", title_justify="left")
        for col in ("asset", "status", "lessee", "rent", "owned", "bond auction",
                    "outstanding"):
            t.add_column(col, justify="right" if col in ("rent", "outstanding") else "left")
        for n, a in summary["assets"].items():
            s = a["series"]
            au = a["auction"]
            auction = f"{au['stop_out_bps']} bps" if au["cleared"] else au["status"]
            t.add_row(n, a["status"], a["lessee"] or "-", _money(a["rent"]),
                      "yes" if a["owned"] else "", auction,
                      _money(s["outstanding"]) if s else "-")
        console.print(t)
        for n, a in summary["assets"].items():
            s = a["series"]
            if s and s["holders"]:
                t = Table(title=f"Bonds of {n}: {s['face']:,} at {s['rate_bps']} bps, "
                                f"{s['status']}, unpaid interest {s['unpaid_interest']:,}",
                          title_justify="left")
                for col in ("holder", "face", "outstanding", "interest received",
                            "principal received", "written off"):
                    t.add_column(col, justify="left" if col == "holder" else "right")
                for h, b in s["holders"].items():
                    t.add_row(h, _money(b["face"]), _money(b["outstanding"]),
                              _money(b["interest_received"]), _money(b["principal_received"]),
                              _money(b["written_off"]))
                console.print(t)
            if a["reauctions"]:
                t = Table(title=f"Rental re-auctions of {n}", title_justify="left")
                for col in ("period", "reserve", "min term", "winner", "bid", "price", "term"):
                    t.add_column(col, justify="left" if col == "winner" else "right")
                for r in a["reauctions"]:
                    t.add_row(str(r["period"]), _money(r["reserve"]), str(r["min_term"]),
                              r["winner"] or "(none: liquidation)", _money(r["rent"]),
                              _money(r["price"]), "-" if r["term"] is None else str(r["term"]))
                console.print(t)

    tr = summary["treasury"]
    t = Table(title="Treasury", title_justify="left")
    for col in ("deposits", "payouts", "acquisitions", "liquidations"):
        t.add_column(col, justify="right")
    t.add_column("signers (threshold)")
    t.add_row(_money(tr["deposits"]), _money(tr["payouts"]), _money(tr["acquisitions"]),
              _money(tr["liquidations"]), f"{', '.join(tr['signers'])} ({tr['threshold']})")
    console.print(t)

    paid = [d for d in summary["dividends"] if d["pool"]]
    if paid:
        t = Table(title="Dividends (periods with common income)", title_justify="left")
        for col in ("period", "pool", "members", "share", "carry"):
            t.add_column(col, justify="right")
        for d in paid:
            t.add_row(str(d["period"]), _money(d["pool"]), str(d["members"]),
                      _money(d["share"]), _money(d["carry"]))
        console.print(t)
    else:
        console.print("No common income: no dividends.")

    if summary["rejected"]:
        t = Table(title="Rejected steps", title_justify="left")
        for col in ("step", "do", "by", "reason"):
            t.add_column(col, justify="right" if col == "step" else "left")
        for r in summary["rejected"]:
            what = r["do"] if r["phase"] == "step" else f"{r['do']} ({r['phase']})"
            t.add_row(str(r["step"]), what, r["by"], r["reason"])
        console.print(t)
    else:
        console.print("No step was rejected.")
