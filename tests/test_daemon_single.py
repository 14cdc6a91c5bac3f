"""One real daemon (a one-member commune decides alone) driven through the `commune` CLI.

Covers the daemon's lifecycle (start, lock, SIGTERM, restart, kill -9) and the CLI's
contract with scripts: --json output, exit codes for a stopped daemon, a wrong token,
a rejected transaction, a missing object.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemons import ROOT, Daemon, free_port, make_commune, running, wait_for

pytestmark = pytest.mark.timeout(180)


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--home", str(d.home)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def cli_json(d: Daemon, *args: str) -> Any:
    proc = cli(d, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemons, _ = make_commune(tmp_path_factory.mktemp("solo"), 1)
    with running(daemons):
        yield daemons[0]


def test_decides_alone_and_serves_status(solo: Daemon) -> None:
    wait_for("two blocks", lambda: solo.height() >= 2)
    s = cli_json(solo, "status")
    assert s["is_validator"] is True and s["validators"] == 1 and s["member"] == solo.id
    assert s["last_block"]["height"] >= 2


def test_transactions_through_the_cli(solo: Daemon) -> None:
    deposit = cli_json(solo, "deposit", solo.id, "5000", "--reference", "bank transfer 1")
    assert deposit["status"] == "committed" and deposit["kind"] == "treasury.deposit"
    assert cli_json(solo, "balance")["balance"] == 5000

    other = "z" + "2" * 43
    proc = cli(solo, "transfer", other, "10")
    assert proc.returncode == 2 and "an id has 32" in proc.stderr  # malformed id: usage
    from protocol.crypto import SigningKey, id_text

    friend = id_text(SigningKey.derive("daemon-test", "friend").public)
    sent = cli_json(solo, "transfer", friend, "1200", "--memo", "rent")
    assert sent["status"] == "committed"
    assert cli_json(solo, "balance", friend)["balance"] == 1200
    assert cli_json(solo, "balance")["balance"] == 3800

    too_much = cli(solo, "transfer", friend, "999999")
    assert too_much.returncode == 1
    assert too_much.stderr.startswith("error: transaction rejected:") or \
        "balance" in too_much.stderr, too_much.stderr
    assert cli_json(solo, "balance")["balance"] == 3800

    shown = cli_json(solo, "tx", "show", sent["id"])
    assert shown["status"] == "committed" and shown["args"]["amount"] == 1200
    assert shown["args"]["to"] == friend
    block = cli_json(solo, "block", "show", str(shown["height"]))
    assert sent["id"] in [t["id"] for t in block["txs"]]
    assert cli(solo, "tx", "show", "ab" * 32).returncode == 5  # not found
    assert cli(solo, "block", "show", "99999999").returncode == 5


def test_queries(solo: Daemon) -> None:
    members = cli_json(solo, "members")
    assert [m["id"] for m in members["members"]] == [solo.id]
    assert members["members"][0]["validator"] is True
    assert cli_json(solo, "peers") == []
    treasury = cli_json(solo, "treasury", "show")
    assert treasury["signers"] == [solo.id] and treasury["threshold"] == 1
    assert cli_json(solo, "dividends")["member"] == solo.id
    human = cli(solo, "status")
    assert human.returncode == 0 and "is_validator: True" in human.stdout


def test_wrong_token_is_an_auth_error(solo: Daemon) -> None:
    token = solo.paths.token
    original = token.read_text()
    try:
        token.write_text("w" * 43 + "\n")
        proc = cli(solo, "status")
        assert proc.returncode == 4 and "token" in proc.stderr
    finally:
        token.write_text(original)
    assert cli(solo, "status").returncode == 0


def test_second_daemon_on_same_home_refused(solo: Daemon) -> None:
    twin = Daemon("twin", solo.home, solo.key, solo.p2p_port)
    twin.start()
    assert twin.proc is not None
    assert twin.proc.wait(timeout=60) == 6  # EXISTS
    assert "already running" in twin.tail()
    assert solo.status()["height"] >= 1  # the first one is untouched


def test_stop_restart_and_kill(tmp_path: Path) -> None:
    metrics_port = free_port()
    (d,), _ = make_commune(tmp_path, 1, label="daemon-restart",
                           config={"metrics_enabled": True, "metrics_port": metrics_port})
    with running([d]):
        friend = "zCr5vdNV8gjqX551fGyqdAcNrmjGYYgu4T2kKxjNrWn9i"
        cli_json(d, "deposit", d.id, "100", "--reference", "r1")
        sent = cli_json(d, "transfer", friend, "7")
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")  # no token here
        assert scrape.status_code == 200 and "commune_blocks_committed_total" in scrape.text
        h = d.height()
        assert d.stop(sig=signal.SIGINT) == 0  # Ctrl-C: clean exit
        assert not d.paths.api_endpoint.exists() and not d.paths.pid.exists()
        down = cli(d, "status")
        assert down.returncode == 3 and "commune daemon --home" in down.stderr

        d.start(extra_env={"COMMUNE_PASSPHRASE": "not the passphrase"})
        assert d.proc is not None and d.proc.wait(timeout=60) == 4  # AUTH
        assert "passphrase" in d.tail()
        d.start()
        d.wait_ready()
        assert d.height() >= h
        assert cli_json(d, "tx", "show", sent["id"])["status"] == "committed"
        wait_for("a block after the restart", lambda: d.height() > h)

        h = d.height()
        d.kill()  # kill -9 leaves its api.json and pid file behind
        assert d.paths.api_endpoint.exists()
        assert cli(d, "status").returncode == 3
        d.start()
        d.wait_ready()
        assert cli_json(d, "balance")["balance"] == 93
        assert cli_json(d, "tx", "show", sent["id"])["status"] == "committed"
        wait_for("blocks after kill -9", lambda: d.height() > h + 1)
        assert d.status()["evidence_recorded"] == 0


def test_asset_lifecycle_with_automatic_reveal_and_claims(tmp_path: Path) -> None:
    """Request, sealed bid, the daemon's own reveal, clearing, purchase, rent service,
    redemption, common income, and the daemon's own dividend claim -- in real time."""
    (d,), _ = make_commune(tmp_path, 1, label="daemon-lifecycle",
                           params={"period_seconds": 6, "commit_seconds": 2,
                                   "reveal_seconds": 2})
    with running([d]):
        def sign(kind: str, args: dict[str, Any]) -> dict[str, Any]:
            r = d.call(lambda c: c.sign(kind, args, wait=30))
            assert r["status"] == "committed", r
            return r

        sign("treasury.deposit", {"account": d.id, "amount": 100_000, "reference": "seed"})
        req = sign("asset.request", {"description": "van", "price": 6_000, "rent": 3_500,
                                     "term": 10, "maturity": 2, "max_rate_bps": 900})
        asset = req["id"]
        bid = d.call(lambda c: c.action("bond_bid", {"asset": asset, "amount": 6_000,
                                                     "rate_bps": 500}, wait=30))
        assert bid["status"] == "committed"
        funded = wait_for("the auction to clear", lambda: (
            a := d.call(lambda c: c.get(f"asset/{asset}")))["status"] != "auction" and a, 30)
        assert funded["status"] == "funded" and funded["auction"]["result"] == 500
        assert funded["auction"]["bids"][0]["status"] == "won"  # revealed by the daemon
        sign("treasury.acquire", {"asset": asset})
        claimed = wait_for("a dividend claimed by the daemon itself", lambda: (
            v := d.call(lambda c: c.get("dividends", member=d.id)))["claimed"] > 0 and v, 90)
        assert claimed["unclaimed"] == 0
        a = d.call(lambda c: c.get(f"asset/{asset}"))
        assert a["owned"] == 1 and a["series"]["status"] == "redeemed"
        assert a["series"]["principal_paid"] == 6_000


def test_auction_governance_and_treasury_commands(solo: Daemon) -> None:
    """The remaining command groups, as a script would use them (--json, exit codes)."""
    req = cli_json(solo, "asset", "request", "--description", "a kiln", "--price", "2000",
                   "--rent", "300", "--term", "12", "--maturity", "10", "--max-rate-bps",
                   "800", "--commit-seconds", "3600", "--reveal-seconds", "3600")
    asset = req["id"]
    assert req["status"] == "committed" and req["result"]["level_payment"] > 0
    listed = cli_json(solo, "asset", "list")
    assert asset in [a["id"] for a in listed]
    if cli_json(solo, "balance")["balance"] < 1000:
        cli_json(solo, "deposit", solo.id, "5000", "--reference", "for the bid")
    bid = cli_json(solo, "bond", "bid", asset, "--amount", "1000", "--rate-bps", "400")
    assert bid["status"] == "committed" and bid["kind"] == "bond.commit"
    shown = cli_json(solo, "asset", "show", asset)
    assert shown["status"] == "auction" and len(shown["auction"]["bids"]) == 1
    assert shown["auction"]["bids"][0]["amount"] == 0  # sealed until the reveal window
    assert (solo.home / "bids.jsonl").exists()
    assert cli_json(solo, "bond", "list") == []  # no series before the auction clears
    human = cli(solo, "asset", "show", asset)
    assert human.returncode == 0 and "a kiln" in human.stdout

    not_yet = cli(solo, "rent", "bid", asset, "--rent", "300", "--term", "12")
    assert not_yet.returncode == 1 and "error:" in not_yet.stderr
    no_rental = cli(solo, "rental", "end", asset)
    assert no_rental.returncode == 1 and no_rental.stderr.startswith("error: transaction "
                                                                     "rejected:")
    nothing = cli(solo, "dividends", "claim")
    assert nothing.returncode == 1 and "no unclaimed dividends" in nothing.stderr

    prop = cli_json(solo, "proposal", "create", "--title", "longer votes",
                    "--param", "voting_seconds=3600")
    assert prop["status"] == "committed"
    vote = cli_json(solo, "proposal", "vote", prop["id"], "--yes")
    assert vote["status"] == "committed"
    proposals = {p["id"]: p for p in cli_json(solo, "proposal", "list")}
    assert proposals[prop["id"]]["status"] == "passed"  # one member: 1 of 1 > 2/3
    assert cli(solo, "proposal", "create", "--title", "x").returncode == 2  # no change

    wd = cli_json(solo, "withdraw", "100", "--reference", "IBAN XY")
    assert wd["status"] == "committed"
    paid = cli_json(solo, "treasury", "payout", wd["id"])
    assert paid["status"] == "committed" and paid["result"]["executed"] == 1
    treasury = cli_json(solo, "treasury", "show")
    assert [w["status"] for w in treasury["withdrawals"] if w["id"] == wd["id"]] == ["paid"]
    again = cli(solo, "approve", paid["id"])
    assert again.returncode == 1 and "error: transaction rejected" in again.stderr
    from protocol.crypto import SigningKey, id_text

    payee = id_text(SigningKey.derive("daemon-test", "payee").public)
    queued = cli_json(solo, "transfer", payee, "1", "--no-wait")
    assert queued["status"] == "pending"
    wait_for("the queued transfer", lambda: solo.call(
        lambda c: c.get(f"tx/{queued['id']}"))["status"] == "committed")
