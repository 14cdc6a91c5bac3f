"""The CLI's contract on one real daemon: identity, sync status, waiting on transactions,
and the reason a transaction was refused or dropped, in human form and with --json."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.genesis import Genesis
from node.keystore import peer_id
from protocol.crypto import SigningKey, id_text
from protocol.transactions import make_tx
from tests.daemons import ROOT, Daemon, make_commune, running, wait_for

pytestmark = pytest.mark.timeout(180)

FRIEND = id_text(SigningKey.derive("daemon-cli", "friend").public)


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--home", str(d.home)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def cli_json(d: Daemon, *args: str, code: int = 0) -> Any:
    proc = cli(d, *args, "--json")
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Genesis]]:
    daemons, genesis = make_commune(tmp_path_factory.mktemp("cli"), 1, label="daemon-cli")
    with running(daemons):
        yield daemons[0], genesis


def test_id_shows_the_running_daemons_bootstrap_address(solo: tuple[Daemon, Genesis]) -> None:
    d, _ = solo
    shown = cli_json(d, "id")
    status = d.status()
    assert shown["id"] == d.id and shown["peer_id"] == status["peer_id"] == peer_id(d.key.public)
    assert shown["addrs_from"] == "daemon" and shown["bootstrap_addrs"] == status["listen"]
    assert shown["bootstrap_addrs"] == [f"/ip4/127.0.0.1/tcp/{d.p2p_port}/p2p/{shown['peer_id']}"]
    human = cli(d, "id").stdout.splitlines()
    assert human[0] == d.id and f"bootstrap: {shown['bootstrap_addrs'][0]}" in human


def test_status_shows_sync_progress_and_waits_for_sync(solo: tuple[Daemon, Genesis]) -> None:
    d, _ = solo
    s = cli_json(d, "status", "--wait-sync", "--timeout", "60")
    assert s["behind"] == 0 and s["best_peer_height"] >= s["height"] - 1
    assert "in sync" in cli(d, "status").stdout


def test_rejections_are_explained_by_tx_show_and_tx_wait(solo: tuple[Daemon, Genesis]) -> None:
    d, genesis = solo
    deposit = cli_json(d, "deposit", d.id, "700", "--reference", "cli test")
    assert deposit["status"] == "committed"
    assert cli_json(d, "tx", "wait", deposit["id"])["status"] == "committed"

    # Refused on arrival (balance): the error names the id; `tx show` keeps the reason.
    too_much = cli(d, "transfer", FRIEND, "999999")
    assert too_much.returncode == 1 and "(id " in too_much.stderr, too_much.stderr
    refused_id = too_much.stderr.rsplit("(id ", 1)[1].split(")")[0]
    shown = cli_json(d, "tx", "show", refused_id)
    assert shown["status"] == "rejected" and shown["stage"] == "admission"
    assert shown["final"] is False and shown["reason"]
    human = cli(d, "tx", "show", refused_id)
    assert human.returncode == 0 and "rejected: on arrival; not final" in human.stdout

    # Funds spent by another transaction of the same signer: ours (nonce n+2) waits on a
    # gap, the spender (n+1) arrives, the block builder can apply only the spender.
    n = int(cli_json(d, "balance")["nonce"])
    ours = make_tx(d.key, genesis.chain_id, "account.transfer", n + 2,
                   {"to": SigningKey.derive("daemon-cli", "friend").public, "amount": 600})
    spender = make_tx(d.key, genesis.chain_id, "account.transfer", n + 1,
                      {"to": SigningKey.derive("daemon-cli", "other").public, "amount": 600})
    assert d.call(lambda c: c.submit(ours.raw))["status"] == "pending"
    held = cli(d, "tx", "wait", ours.id.hex(), "--timeout", "0")
    assert held.returncode == 7 and f"nonce {n + 1}" in held.stderr, held.stderr
    assert cli_json(d, "tx", "show", ours.id.hex())["waiting_for_nonce"] == n + 1
    assert d.call(lambda c: c.submit(spender.raw, wait=30))["status"] == "committed"
    waited = cli(d, "tx", "wait", ours.id.hex(), "--timeout", "30", "--json")
    assert waited.returncode == 1, waited.stderr
    doc = json.loads(waited.stdout)
    assert doc["status"] == "rejected" and doc["stage"] in ("block", "recheck")
    assert "rejected" in waited.stderr and doc["reason"] in waited.stderr
    assert cli_json(d, "balance")["balance"] == 100


def test_exit_codes_of_tx_wait_and_resign(solo: tuple[Daemon, Genesis]) -> None:
    d, _ = solo
    unknown = cli(d, "tx", "wait", "ab" * 32, "--timeout", "0")
    assert unknown.returncode == 5 and unknown.stderr.startswith("error: no transaction")
    assert cli(d, "tx", "wait", "not-hex").returncode == 2
    resign = cli(d, "resign")
    assert resign.returncode == 2 and "--yes" in resign.stderr
    wait_for("a block", lambda: d.height() >= 1)


def test_params_and_validators(solo: tuple[Daemon, Genesis]) -> None:
    d, _ = solo
    p = cli_json(d, "params")
    assert p["params"]["empty_block_interval"] == 1 and p["currency"] == "EUR"
    assert "empty_block_interval" in cli(d, "params").stdout
    v = cli_json(d, "validators")
    assert v["validators"] == [d.id] and v["height"] >= 1
    human = cli(d, "validators")
    assert human.returncode == 0 and d.id in human.stdout
