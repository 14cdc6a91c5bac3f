"""`commune audit ...` through a real process: export, replay, prove, verify-proof."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cli
from ledger.audit import audit_log, audit_records
from ledger.export import LogWriter
from node.config import Paths
from protocol.block import Block
from protocol.crypto import SigningKey, sha256
from tests.test_audit import Chain, build_chain, edit_block, edit_tx, flip

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "commune"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMMUNE_HOME", "COMMUNE_DEBUG")}
    env["COMMUNE_HOME"] = "/nonexistent/commune-tests-must-pass-home"
    proc = subprocess.run([*COMMAND, *args], cwd=ROOT, env=env, input=stdin or b"",
                          capture_output=True, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Chain, Path]:
    h = tmp_path_factory.mktemp("audit-home")
    chain = build_chain(str(Paths(h).db))
    (h / "genesis.json").write_text(chain.genesis.to_json())
    return chain, h


def test_export_replay_prove_verify(home: tuple[Chain, Path], tmp_path: Path) -> None:
    chain, h = home
    log = tmp_path / "commune.log"
    proc = run("audit", "export", "--home", str(h), "--out", str(log), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blocks"] == len(chain.blocks) and out["chain_id"] == chain.genesis.chain_id.hex()
    assert log.read_bytes() == chain.log()

    again = run("audit", "export", "--home", str(h), "--out", str(log))
    assert again.returncode == 6 and "--force" in error_line(again)

    proc = run("audit", "replay", str(log), "--genesis", str(h / "genesis.json"), "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["ok"] and rep["chain"]["state_root"] == chain.final_root.hex()

    human = run("audit", "replay", "-", stdin=log.read_bytes())
    assert human.returncode == 0, human.stderr
    assert "Members over time" in human.stdout and "OK" in human.stdout

    txid = sha256(Block.decode(chain.blocks[-1][0]).txs[0]).hex()
    proof = tmp_path / "tx.proof"
    proc = run("audit", "prove", "--home", str(h), txid, "--out", str(proof))
    assert proc.returncode == 0, proc.stderr
    proc = run("audit", "verify-proof", str(proof), "--genesis", str(h / "genesis.json"),
               "--json")
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)
    assert v["valid"] and v["txid"] == txid and v["handovers"] == 2

    doc = json.loads(proof.read_text())
    doc["tx"] = flip(bytes.fromhex(doc["tx"]), 20).hex()
    proof.write_text(json.dumps(doc))
    bad = run("audit", "verify-proof", str(proof), "--genesis", str(h / "genesis.json"))
    assert bad.returncode == 1 and "does not verify" in error_line(bad)

    missing = run("audit", "prove", "--home", str(h), "00" * 32)
    assert missing.returncode == 5, missing.stderr
    usage = run("audit", "prove", "--home", str(h), "nothex")
    assert usage.returncode == 2


def test_replay_of_a_tampered_log_fails_with_the_block(home: tuple[Chain, Path],
                                                       tmp_path: Path) -> None:
    chain, _ = home
    k = chain.marks["transfers"]
    blocks = list(chain.blocks)

    def bad(w: dict[str, Any]) -> None:
        w["txs"][3] = edit_tx(w["txs"][3], lambda e: e.update(sig=flip(e["sig"], 0)))

    blocks[k - 1] = (edit_block(blocks[k - 1][0], bad), blocks[k - 1][1])
    log = tmp_path / "bad.log"
    log.write_bytes(chain.log(blocks))
    proc = run("audit", "replay", str(log), "--json")
    assert proc.returncode == 1
    f = json.loads(proc.stdout)["failure"]
    assert (f["check"], f["height"], f["tx_index"]) == ("tx-signature", k, 3)
    assert f"block {k}, transaction 3" in error_line(proc)
    assert run("audit", "replay", str(tmp_path / "none.log")).returncode == 5
    assert run("audit", "replay").returncode == 2


def test_parallel_signature_checks_agree(home: tuple[Chain, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker-pool prefetch gives the same verdicts, in order, as the inline one."""
    chain, _ = home
    monkeypatch.setattr(cli, "AUDIT_POOL_AFTER_BYTES", 0)
    monkeypatch.setattr(cli, "AUDIT_BATCH_BLOCKS", 3)
    ok = audit_log(io.BytesIO(chain.log()), prefetch=cli.audit_parallel_prefetch(2))
    assert ok.ok and ok.auditor is not None
    assert ok.auditor.ledger.state_root == chain.final_root
    k = len(chain.blocks)  # the last block: two transfers
    blocks = list(chain.blocks)

    def bad(w: dict[str, Any]) -> None:
        w["txs"][1] = edit_tx(w["txs"][1], lambda e: e.update(sig=flip(e["sig"], 5)))

    blocks[k - 1] = (edit_block(blocks[k - 1][0], bad), blocks[k - 1][1])
    r = audit_log(io.BytesIO(chain.log(blocks)), prefetch=cli.audit_parallel_prefetch(2))
    assert r.failure is not None
    assert (r.failure.check, r.failure.height, r.failure.tx_index) == ("tx-signature", k, 1)


async def test_replay_fetches_from_a_peer_over_block_sync(home: tuple[Chain, Path]) -> None:
    """`--peer`: the chain comes over the real sync protocol from a libp2p node that
    serves a ledger (as the daemon does), into a log the replay then checks."""
    import trio

    from ledger.ledger import Ledger
    from node.driver import sync_protocol
    from node.net import Network
    from protocol.sync import (
        SyncRequest,
        SyncResponse,
        SyncStatus,
        decode_sync_message,
        encode_sync_message,
        serve,
    )

    chain, h = home
    ledger = Ledger.open(str(Paths(h).db), chain.genesis)
    lie: dict[str, int] = {}
    forged: dict[int, Block] = {}

    async def handler(peer_id: str, data: bytes) -> bytes:
        msg = decode_sync_message(data)
        if isinstance(msg, SyncStatus):
            return encode_sync_message(SyncStatus(ledger.height + lie.get("extra", 0),
                                                  ledger.last_block_hash))
        assert isinstance(msg, SyncRequest)
        if msg.start > ledger.height:
            return encode_sync_message(SyncResponse(msg.request_id, ()))

        def block_at(x: int) -> Block:
            if x in forged:
                return forged[x]
            b = ledger.block(x)
            assert b is not None
            return b

        def cert_at(x: int) -> Any:
            return ledger.certificate(x)

        return encode_sync_message(serve(msg, ledger.height, block_at, cert_at))

    server = Network(SigningKey.derive("audit-test", "server").seed(), ["/ip4/127.0.0.1/tcp/0"],
                     request_handlers={sync_protocol(chain.genesis.chain_id): handler})
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            addr = server.listen_addrs[0]
            assert addr.endswith(f"/p2p/{server.peer_id}")
            out = io.BytesIO()
            writer = LogWriter(out, chain.genesis.encode(), chain.genesis.chain_id)
            height, last = await cli.audit_fetch(addr, chain.genesis, writer.block)
            writer.finish()
            assert (height, last) == (len(chain.blocks), ledger.last_block_hash)
            assert out.getvalue() == chain.log()
            r = audit_log(io.BytesIO(out.getvalue()), expected_genesis=chain.genesis)
            assert r.ok and r.auditor is not None
            assert r.auditor.ledger.state_root == chain.final_root

            # What `commune audit replay --peer` runs: the fetch in its own thread, the
            # replay consuming blocks as they arrive (here in a thread too, so that this
            # test's event loop keeps serving).
            saved = io.BytesIO()
            source = cli._PeerSource(addr, chain.genesis, saved)
            try:
                r = await trio.to_thread.run_sync(
                    lambda: audit_records(chain.genesis, source.records()))
            finally:
                await trio.to_thread.run_sync(source.close)
            assert r.ok and saved.getvalue() == chain.log()

            k = chain.marks["transfers"]  # a peer serving a tampered block is stopped there
            good = Block.decode(chain.blocks[k - 1][0])
            forged[k] = Block.decode(edit_block(good.encode(), lambda w: w["txs"].__setitem__(
                0, edit_tx(w["txs"][0], lambda e: e.update(sig=flip(e["sig"], 1))))))
            source = cli._PeerSource(addr, chain.genesis, None)
            try:
                r = await trio.to_thread.run_sync(
                    lambda: audit_records(chain.genesis, source.records()))
            finally:
                await trio.to_thread.run_sync(source.close)
            assert r.failure is not None
            assert (r.failure.check, r.failure.height, r.failure.tx_index) == \
                ("tx-signature", k, 0)
            forged.clear()

            lie["extra"] = 5  # claims more than it serves
            with pytest.raises(cli.CommandError, match="serves nothing from block"):
                await cli.audit_fetch(addr, chain.genesis, lambda *a: None)
            nursery.cancel_scope.cancel()
    finally:
        ledger.close()
