"""An audit of real daemons: four members over libp2p on loopback commit a few
transactions; the log exported from one node's store (while it runs, and after it
stopped) and the chain fetched from another over block sync both replay cleanly, ending
in the very state root every node holds at that height."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.export import MAGIC
from node.config import Paths
from protocol.crypto import SigningKey, id_text
from tests.daemons import Daemon, make_commune, running, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent


def commune(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMUNE_HOME", "COMMUNE_DEBUG")}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    daemons, _ = make_commune(tmp_path_factory.mktemp("audit-devnet"), 4,
                              label="audit-devnet")
    with running(daemons):
        wait_for("everyone connected", lambda: all(d.status()["peers"] >= 3 for d in daemons))
        yield daemons


def state_root_at(d: Daemon, height: int) -> str:
    return str(d.call(lambda c: c.get(f"block/{height}"))["state_root"])


def test_devnet_log_replays_to_every_nodes_root(cluster: list[Daemon], tmp_path: Path) -> None:
    a, b = cluster[0], cluster[1]

    def sign(d: Daemon, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        """Commit a transaction through `d`, then wait until every node has its block (a
        node checks the next transaction against the state it has committed)."""
        out = d.call(lambda c: c.sign(kind, args, wait=60))
        assert out["status"] == "committed", out
        wait_for("every node at the block", lambda: all(
            x.height() >= out["height"] for x in cluster))
        return out

    proposed = sign(a, "treasury.deposit", {"account": cluster[2].id, "amount": 5_000,
                                            "reference": "audit"})
    sign(b, "treasury.approve", {"action": proposed["id"]})
    friend = id_text(SigningKey.derive("audit-devnet", "friend").public)
    sign(cluster[2], "account.transfer", {"to": friend, "amount": 1234})

    # Exported while the daemon runs: a consistent snapshot at some height.
    log = tmp_path / "live.log"
    proc = commune("audit", "export", "--home", str(cluster[3].home), "--out", str(log),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(proc.stdout)
    height = exported["blocks"]
    assert height >= 3
    proc = commune("audit", "replay", str(log), "--genesis", str(Paths(a.home).genesis),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["chain"]["blocks"] == height
    wait_for("every node at the exported height", lambda: all(
        d.height() >= height for d in cluster))
    roots = {state_root_at(d, height) for d in cluster}
    assert roots == {report["chain"]["state_root"]}
    kinds = report["chain"]["tx_kinds"]
    assert kinds["treasury.deposit"] == 1 and kinds["account.transfer"] == 1
    assert report["treasury"]["flows"]["deposits"] == 5_000

    # Fetched over block sync from another running node, trusting nothing it says.
    saved = tmp_path / "fetched.log"
    proc = commune("audit", "replay", "--peer", cluster[1].status()["listen"][0],
                   "--genesis", str(Paths(a.home).genesis), "--save", str(saved), "--json")
    assert proc.returncode == 0, proc.stderr
    fetched = json.loads(proc.stdout)
    assert saved.read_bytes().startswith(MAGIC)
    assert fetched["ok"] and fetched["chain"]["blocks"] >= height
    top = fetched["chain"]["blocks"]
    assert state_root_at(cluster[1], top) == fetched["chain"]["state_root"]

    # And from a stopped node's store: everything it committed, to its last root.
    d = cluster[3]
    assert d.stop() == 0
    last = tmp_path / "stopped.log"
    proc = commune("audit", "export", "--home", str(d.home), "--out", str(last), "--json")
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout)["blocks"]
    proc = commune("audit", "replay", str(last), "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["chain"]["state_root"] == state_root_at(cluster[0], final)
