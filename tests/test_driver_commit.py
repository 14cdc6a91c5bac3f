"""The commit path: the ledger's three-step commit, its store write off the event loop,
transactions reused instead of decoded again, and the recent-blocks cache.

Real ledgers on real SQLite files; the driver test runs a real single-validator engine,
mempool, signing log and ledger (a one-member commune needs no peers, so the network
is a loopback that has none).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger.execute import BlockRejected
from ledger.ledger import Ledger, LedgerError
from ledger.testing import Harness, key, make_genesis
from node.daemon import LedgerAdapter
from node.driver import Driver, MempoolTxs
from node.mempool import Mempool
from node.queries import block as block_query
from node.signing_log import SigningLog
from protocol.consensus_types import EngineConfig
from protocol.transactions import decode_tx, make_tx

A = key("driver-commit", "a")
B = key("driver-commit", "b")


def funded(path: Path | None) -> Harness:
    h = Harness.create(3, path=None if path is None else str(path), signers=1, threshold=1)
    f0, _, f2 = h.founders
    h.block([h.tx(f0, "treasury.deposit", {"account": f2.public, "amount": 10_000,
                                           "reference": "wire"})])
    return h


def transfers(h: Harness, n: int) -> list[Any]:
    f2 = h.founders[2]
    return [h.tx(f2, "account.transfer", {"to": A.public, "amount": 1 + i}) for i in range(n)]


def test_only_file_stores_write_off_thread(tmp_path: Path) -> None:
    assert not Harness.create(3).ledger.concurrent_commit_writes
    assert Harness.create(3, path=str(tmp_path / "l.sqlite")).ledger.concurrent_commit_writes


def test_split_commit_holds_the_ledger_at_the_last_block_until_finished(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    h = funded(db)
    ledger = h.ledger
    before = (ledger.height, ledger.state_root, ledger.last_block_hash)
    block, rejected = h.build(transfers(h, 20))
    assert not rejected
    cert = h.certify(block)
    pending = ledger.prepare_commit(block, cert)

    # Nothing else that executes may start while a commit is in flight ...
    with pytest.raises(LedgerError, match="being committed"):
        ledger.prepare_commit(block, cert)
    with pytest.raises(LedgerError, match="being committed"):
        ledger.check_block(block)
    with pytest.raises(LedgerError, match="being committed"):
        h.build(transfers(h, 1))
    # ... but admission checks and reads go on, against the last committed block.
    late = h.tx(B, "account.transfer", {"to": A.public, "amount": 1})
    assert "balance" in (h.reason(late) or "")
    assert ledger.block(block.height) is None

    writer = threading.Thread(target=pending.write)
    writer.start()
    writer.join()
    assert pending.written
    assert (ledger.height, ledger.state_root, ledger.last_block_hash) == before
    with sqlite3.connect(db) as other:  # durable: another process's view has it
        assert other.execute("SELECT hash FROM chain_blocks WHERE height = ?",
                             (block.height,)).fetchone()[0] == block.hash()

    txs = ledger.finish_commit(pending)
    assert [t.raw for t in txs] == list(block.txs)
    assert [t.id for t in txs] == [decode_tx(raw).id for raw in block.txs]
    assert (ledger.height, ledger.state_root) == (block.height, block.header.state_root)
    assert ledger.block(block.height) is block  # the recent-blocks cache
    assert ledger.certificate(block.height) is cert
    h.last_commit, h.time_ms = cert, block.header.time_ms

    h2 = h.reopen()  # a restart reads the same chain back
    assert (h2.ledger.height, h2.ledger.state_root) == (block.height, block.header.state_root)
    stored = h2.ledger.block(block.height)
    assert stored is not None and stored.encode() == block.encode()
    h2.ledger.close()


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_aborted_commit_leaves_the_ledger_usable(tmp_path: Path, on_disk: bool) -> None:
    h = funded(tmp_path / "l.sqlite" if on_disk else None)
    block, _ = h.build(transfers(h, 3))
    cert = h.certify(block)
    pending = h.ledger.prepare_commit(block, cert)
    h.ledger.abort_commit(pending)  # the staged rows are undone
    assert h.ledger.height == block.height - 1
    assert h.ledger.sql("SELECT COUNT(*) FROM chain_blocks WHERE height = ?",
                        (block.height,)) == [(0,)]
    h.commit(block)
    assert h.ledger.height == block.height
    assert h.ledger.state.balance(A.public) == 1 + 2 + 3
    if on_disk:
        h2 = h.reopen()
        assert (h2.ledger.height, h2.ledger.state_root) == (block.height,
                                                            block.header.state_root)
        h2.ledger.close()


def test_prepare_refuses_a_certificate_for_another_block() -> None:
    h = funded(None)
    block, _ = h.build(transfers(h, 1))
    other, _ = h.build(transfers(h, 2), dt_ms=2000)
    with pytest.raises(BlockRejected, match="certificate"):
        h.ledger.prepare_commit(block, h.certify(other))
    h.commit(block)  # nothing was left pending


def test_reads_during_an_off_thread_write_see_whole_blocks_only(tmp_path: Path) -> None:
    """Whatever a reader on the owner's thread sees while the worker writes is a whole
    committed block or none of it (WAL snapshots on a separate connection)."""
    h = funded(tmp_path / "l.sqlite")
    for _ in range(3):
        block, _ = h.build(transfers(h, 200))
        cert = h.certify(block)
        pending = h.ledger.prepare_commit(block, cert)
        writer = threading.Thread(target=pending.write)
        writer.start()
        seen = set()
        while True:
            alive = writer.is_alive()
            (blocks, txs), = h.ledger.sql(  # one statement: one snapshot
                "SELECT (SELECT COUNT(*) FROM chain_blocks WHERE height = ?), "
                "(SELECT COUNT(*) FROM chain_txs WHERE height = ?)",
                (block.height, block.height))
            assert (blocks, txs) in ((0, 0), (1, len(block.txs)))
            seen.add(blocks)
            if not alive:
                break
        writer.join()
        assert 1 in seen
        h.ledger.finish_commit(pending)
        h.last_commit, h.time_ms = cert, block.header.time_ms
    h.ledger.close()


def test_the_block_query_gives_ids_without_decoding_when_asked() -> None:
    h = funded(None)
    block, _ = h.block(transfers(h, 5))

    class Node:
        ledger = h.ledger

    full = block_query(Node, {"height": str(block.height)})
    ids = block_query(Node, {"height": str(block.height), "txs": "ids"})
    assert [t["id"] for t in ids["txs"]] == [t["id"] for t in full["txs"]]
    assert all(set(t) == {"id"} for t in ids["txs"])
    assert {k: v for k, v in ids.items() if k != "txs"} == \
        {k: v for k, v in full.items() if k != "txs"}
    with pytest.raises(Exception, match="txs must be one of"):
        block_query(Node, {"height": "latest", "txs": "bodies"})


def test_mempool_transactions_as_a_mapping() -> None:
    h = funded(None)
    mempool = Mempool(h.genesis.chain_id, LedgerAdapter(h.ledger))
    txs = transfers(h, 3)
    for t in txs:
        assert mempool.add(t.raw, 0.0).status == "added"
    known = MempoolTxs(mempool)
    assert len(known) == 3 and set(known) == {t.id for t in txs}
    assert known[txs[0].id] is mempool.get(txs[0].id)
    assert known.get(b"\0" * 32) is None and b"\0" * 32 not in known
    with pytest.raises(KeyError):
        known[b"\0" * 32]


class LoopbackNet:
    """The network of a one-member commune: no peers, nothing to deliver."""

    peer_id = "loopback"

    def peers(self) -> list[Any]:
        return []

    async def publish(self, topic: str, data: bytes) -> None:
        pass

    async def request(self, peer_id: str, protocol_id: str, data: bytes,
                      timeout: float = 10.0, max_response_size: int | None = None) -> bytes:
        raise ConnectionError("no peers")

    def penalize(self, peer_id: str, reason: str, weight: float = 1.0) -> None:
        pass


@pytest.mark.parametrize("on_disk", [True, False])
async def test_a_single_validator_commits_and_reads_back(tmp_path: Path, on_disk: bool) -> None:
    """On disk the store write runs on a worker thread; in memory on the loop's."""
    genesis, keys = make_genesis(1, signers=1, threshold=1)
    me = keys[0]
    db = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(str(db) if on_disk else None, genesis)
    assert ledger.concurrent_commit_writes == on_disk
    signing_log, recovery = SigningLog.open(tmp_path / "signing.log")
    assert not recovery.records
    mempool = Mempool(genesis.chain_id, LedgerAdapter(ledger))
    params = genesis.params
    driver = Driver(key=me, ledger=ledger, mempool=mempool, net=LoopbackNet(),
                    signing_log=signing_log, records=[],
                    engine_config=EngineConfig(
                        chain_id=genesis.chain_id,
                        empty_block_interval_ms=int(params["empty_block_interval"]) * 1000,
                        max_clock_drift_ms=int(params["max_clock_drift"]) * 1000),
                    genesis_time_ms=genesis.genesis_time_ms)
    committed: list[int] = []
    driver.hooks.committed.append(lambda b: committed.append(b.height))
    deposit = Harness(genesis, keys).tx(me, "treasury.deposit", {
        "account": me.public, "amount": 1_000_000, "reference": "wire"})
    sends = [deposit] + [make_tx(me, genesis.chain_id, "account.transfer", 2 + i,
                                 {"to": A.public, "amount": 1}) for i in range(30)]
    _tx_send, tx_recv = trio.open_memory_channel[tuple[str, bytes]](0)
    _c_send, c_recv = trio.open_memory_channel[tuple[str, bytes]](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, tx_recv, c_recv)
        for t in sends:
            assert (await driver.submit_and_gossip(t.raw)).status == "added"
        while ledger.tx_result(sends[-1].id) is None:
            await driver.commit_happened()
        nursery.cancel_scope.cancel()
    assert driver.fatal is None
    assert len(mempool) == 0
    assert committed == list(range(1, ledger.height + 1))
    assert ledger.state.balance(A.public) == 30
    assert all(ledger.tx_result(t.id) is not None for t in sends)
    for h in range(1, ledger.height + 1):  # what the recent-blocks cache serves is stored
        b, c = ledger.block(h), ledger.certificate(h)
        assert b is not None and c is not None
        assert ledger.sql("SELECT raw FROM chain_blocks WHERE height = ?", (h,)) == \
            [(b.encode(),)]
    height, root = ledger.height, ledger.state_root
    ledger.close()
    signing_log.close()
    if on_disk:
        again = Ledger.open(str(db), genesis)  # the store holds everything the driver saw
        assert (again.height, again.state_root) == (height, root)
        again.close()
