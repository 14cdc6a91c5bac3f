"""The auditor's replay: a real log replays cleanly; every tampering is caught where it is.

Logs are built by driving the ledger directly (`ledger.testing.Harness`, in memory or
on a file store, keys from `SigningKey.derive`), with certificates carrying exactly a
quorum of precommits, so that dropping one signature breaks them. Tampering is done
on the decoded records and the file is then re-sealed with a fresh end record and
digest, as a forger would: what must catch it is the replay, not the file checksum.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.audit import Auditor, AuditResult, audit_log, check_signatures
from ledger.export import (
    MAGIC,
    LogReader,
    export_store,
    write_log,
)
from ledger.genesis import Genesis
from ledger.testing import Harness, make_genesis
from ledger.testing import key as derive_test_key
from protocol.block import Block
from protocol.crypto import SigningKey, id_text, sha256
from protocol.encoding import decode, encode
from protocol.votes import PRECOMMIT, Certificate, Evidence, Vote

# ---- building logs -----------------------------------------------------------------------


class QuorumHarness(Harness):
    """Certificates with exactly a quorum of signatures (the first validators in order)."""

    def certify(self, block: Block) -> Certificate:
        vs = self.ledger.validators_at(block.height)
        signers = [v for v in vs.members if v in self.keys][:vs.quorum()]
        assert len(signers) == vs.quorum()
        return Certificate.from_votes(
            Vote.create(self.keys[v], self.genesis.chain_id, PRECOMMIT, block.height, 0,
                        block.hash()) for v in signers)


@dataclasses.dataclass
class Chain:
    genesis: Genesis
    keys: dict[bytes, SigningKey]
    blocks: list[tuple[bytes, bytes]]
    """(raw block, raw certificate) for heights 1..n."""
    roots: list[bytes]
    marks: dict[str, int]
    """Heights of notable blocks: "transfers" (several txs), "admitted", "evidence", ..."""
    final_root: bytes

    def log(self, blocks: list[tuple[bytes, bytes]] | None = None) -> bytes:
        out = io.BytesIO()
        bl = self.blocks if blocks is None else blocks
        write_log(out, self.genesis.encode(),
                  [(b, c, Block.decode(b).hash()) for b, c in bl])
        return out.getvalue()


def build_chain(path: str | None = None, name: str = "Test commune") -> Chain:
    """A short but varied history: deposits with k-of-n approval, transfers, a member
    admitted by attestation who registers a node (the validator set changes), a
    withdrawal paid out, a governance vote, period closes, equivocation evidence, and a
    resignation."""
    g, keys = make_genesis(4, signers=2, threshold=2, params={"period_seconds": 60},
                           name=name)
    h = QuorumHarness(g, keys, path)
    f = h.founders
    marks: dict[str, int] = {}
    dep = [h.tx(f[0], "treasury.deposit", {"account": k.public, "amount": 10_000,
                                          "reference": f"wire {i}"}) for i, k in enumerate(f)]
    h.block(dep)
    h.block([h.tx(f[1], "treasury.approve", {"action": t.id}) for t in dep])
    newcomer = h.add_key(SigningKey.derive("audit-test", name, "newcomer"))
    h.block([h.tx(f[0], "account.transfer", {"to": f[1].public, "amount": 150}),
             h.tx(f[1], "account.transfer", {"to": f[2].public, "amount": 75}),
             h.tx(f[2], "account.transfer", {"to": newcomer.public, "amount": 500,
                                             "memo": "welcome"}),
             h.tx(f[3], "account.transfer", {"to": f[0].public, "amount": 1}),
             h.tx(newcomer, "member.apply", {"name": "Newcomer", "enterprise": "Bakery",
                                             "labour": "bakes bread"})])
    marks["transfers"] = h.ledger.height
    h.block([h.tx(f[0], "member.attest", {"applicant": newcomer.public}),
             h.tx(f[1], "member.attest", {"applicant": newcomer.public})])
    marks["admitted"] = h.ledger.height
    h.block([h.tx(newcomer, "member.node", {"peer_id": b"\x00\x24" + newcomer.public})])
    marks["node"] = h.ledger.height
    w = h.tx(f[2], "account.withdraw", {"amount": 300, "reference": "IBAN X"})
    h.block([w])
    pay = h.tx(f[0], "treasury.payout", {"withdrawal": w.id})
    h.block([pay], dt_ms=61_000)
    h.block([h.tx(f[1], "treasury.approve", {"action": pay.id})])
    marks["new-validators"] = h.ledger.height
    assert h.ledger.validators_at(h.ledger.height).size == 5
    prop = h.tx(f[0], "proposal.create", {"title": "shorter notice", "change": {
        "type": "param", "name": "notice_periods", "value": 2}})
    h.block([prop])
    h.block([h.tx(k, "proposal.vote", {"proposal": prop.id, "yes": True}) for k in f])
    cid = g.chain_id
    a = Vote.create(f[3], cid, PRECOMMIT, 2, 0, sha256(b"one block"))
    b = Vote.create(f[3], cid, PRECOMMIT, 2, 0, sha256(b"another block"))
    h.block([], evidence=[Evidence(a, b)], dt_ms=61_000)
    marks["evidence"] = h.ledger.height
    h.block([h.tx(f[3], "member.resign")])
    marks["resigned"] = h.ledger.height
    h.block([])
    h.block([])  # the validator set without the resigned founder votes from here on
    h.block([h.tx(f[0], "account.transfer", {"to": newcomer.public, "amount": 2}),
             h.tx(newcomer, "account.transfer", {"to": f[1].public, "amount": 3})],
            dt_ms=5_000)
    blocks = [(b.encode(), encode(c.to_wire())) for b, c in h.ledger.blocks()]
    roots = [Block.decode(b).header.state_root for b, _ in blocks]
    final = h.ledger.state_root
    h.ledger.close()
    return Chain(g, h.keys, blocks, roots, marks, final)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return build_chain()


def replay(data: bytes, **kw: Any) -> AuditResult:
    return audit_log(io.BytesIO(data), **kw)


# ---- tampering helpers -------------------------------------------------------------------


def edit_block(raw: bytes, fn: Callable[[dict[str, Any]], None]) -> bytes:
    wire = decode(raw)
    fn(wire)
    return encode(wire)


def edit_tx(raw_tx: bytes, fn: Callable[[dict[str, Any]], None]) -> bytes:
    env = decode(raw_tx)
    fn(env)
    return encode(env)


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]


def resign_cert(chain: Chain, block_raw: bytes, height: int,
                signers: list[bytes] | None = None) -> bytes:
    """A certificate for this block by validators whose keys the test holds (collusion)."""
    block = Block.decode(block_raw)
    members = signers if signers is not None else sorted(
        v for v, _ in Certificate.from_wire(decode(chain.blocks[height - 1][1])).signatures)
    votes = [Vote.create(chain.keys[v], chain.genesis.chain_id, PRECOMMIT, height, 0,
                         block.hash()) for v in members]
    return encode(Certificate.from_votes(votes).to_wire())


def expect(result: AuditResult, check: str, height: int | None, contains: str = "",
           tx_index: int | None = None) -> None:
    assert not result.ok, "the tampered log replayed cleanly"
    f = result.failure
    assert f is not None
    assert (f.check, f.height) == (check, height), f.describe()
    assert contains in f.reason, f.describe()
    if tx_index is not None:
        assert f.tx_index == tx_index, f.describe()


# ---- a valid log -------------------------------------------------------------------------


def test_valid_log_replays_with_every_state_root(chain: Chain) -> None:
    seen: list[bytes] = []
    result = replay(chain.log(), expected_genesis=chain.genesis,
                    on_block=lambda p: seen.append(p.state_root))
    assert result.ok, result.failure and result.failure.describe()
    assert seen == chain.roots
    assert result.auditor is not None and result.auditor.ledger.state_root == chain.final_root
    rep = result.report()
    assert rep["ok"] and rep["failure"] is None
    assert rep["chain"]["blocks"] == len(chain.blocks)
    assert rep["chain"]["state_root"] == chain.final_root.hex()
    assert rep["chain"]["transactions"] == sum(len(Block.decode(b).txs) for b, _ in chain.blocks)
    assert rep["checks"]["certificates"] == 2 * len(chain.blocks) - 1


def test_report_tells_the_economic_history(chain: Chain) -> None:
    rep = replay(chain.log()).report()
    events = [(e["height"], e["event"], e["name"]) for e in rep["members"]["events"]]
    assert sorted(events[:4]) == [(0, "joined", f"founder {i}") for i in range(4)]
    assert (chain.marks["admitted"], "joined", "Newcomer") in events
    assert (chain.marks["resigned"], "left", "founder 3") in events
    left = [e for e in rep["members"]["events"] if e["event"] == "left"]
    assert left[0]["how"] == "resigned"
    assert [c["members"] for c in rep["members"]["counts"]] == [4, 5, 4]
    sizes = [(v["from_height"], len(v["members"])) for v in rep["validators"]]
    assert sizes[0] == (1, 4) and (chain.marks["node"] + 2, 5) in sizes
    tr = rep["treasury"]
    assert tr["flows"]["deposits"] == 40_000 and tr["flows"]["payouts"] == 300
    assert tr["held"] == tr["net_inflow"] == 39_700
    assert [a["kind"] for a in tr["actions"]].count("treasury.deposit") == 4
    assert all(a["status"] == "executed" and a["approvals"] == 2 for a in tr["actions"])
    assert tr["withdrawals"][0]["status"] == "paid"
    assert rep["governance"][0]["status"] == "passed"
    assert [p["period"] for p in rep["dividends"]] == [0, 1]
    ev = rep["evidence"]
    assert len(ev) == 1 and ev[0]["included_height"] == chain.marks["evidence"]
    assert ev[0]["validator"] == id_text(derive_test_key("founder", "3").public)
    assert (ev[0]["height"], ev[0]["round"]) == (2, 0)


def test_export_from_a_file_store_matches(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    c = build_chain(str(db))
    out = io.BytesIO()
    chain_id, end = export_store(db, out)
    assert chain_id == c.genesis.chain_id and end.blocks == len(c.blocks)
    data = out.getvalue()
    assert data.startswith(MAGIC)
    assert data == c.log()  # the export is a pure function of the chain
    reader = LogReader(io.BytesIO(data))
    assert [(r.block, r.certificate) for r in reader.blocks()] == c.blocks
    assert replay(data).ok


# ---- tampering ---------------------------------------------------------------------------


def test_flipped_byte_in_a_transaction_signature(chain: Chain) -> None:
    k = chain.marks["transfers"]
    blocks = list(chain.blocks)

    def bad_sig(w: dict[str, Any]) -> None:
        w["txs"][2] = edit_tx(w["txs"][2], lambda e: e.update(sig=flip(e["sig"], 10)))

    blocks[k - 1] = (edit_block(blocks[k - 1][0], bad_sig), blocks[k - 1][1])
    r = replay(chain.log(blocks))
    expect(r, "tx-signature", k, "bad signature", tx_index=2)
    assert r.failure is not None
    assert r.failure.tx_id == sha256(Block.decode(blocks[k - 1][0]).txs[2])


def test_changed_amount(chain: Chain) -> None:
    k = chain.marks["transfers"]
    blocks = list(chain.blocks)

    def more(w: dict[str, Any]) -> None:
        def bump(e: dict[str, Any]) -> None:
            e["body"]["args"]["amount"] += 1
        w["txs"][1] = edit_tx(w["txs"][1], bump)

    blocks[k - 1] = (edit_block(blocks[k - 1][0], more), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "tx-signature", k, "account.transfer", tx_index=1)


def test_flipped_byte_in_a_header(chain: Chain) -> None:
    k = chain.marks["admitted"]
    blocks = list(chain.blocks)
    blocks[k - 1] = (edit_block(blocks[k - 1][0], lambda w: w["header"].update(
        time_ms=w["header"]["time_ms"] ^ 1)), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "certificate", k, "another block")


def test_header_pointing_elsewhere_breaks_the_chain(chain: Chain) -> None:
    k = chain.marks["admitted"]
    blocks = list(chain.blocks)
    blocks[k - 1] = (edit_block(blocks[k - 1][0], lambda w: w["header"].update(
        prev_hash=flip(w["header"]["prev_hash"], 0))), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "chain", k, "hash chain broken")


def test_reordered_transactions(chain: Chain) -> None:
    k = chain.marks["transfers"]
    blocks = list(chain.blocks)
    blocks[k - 1] = (edit_block(blocks[k - 1][0], lambda w: w["txs"].reverse()),
                     blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "block-body", k, "transactions root")


def test_reordered_transactions_with_a_matching_root(chain: Chain) -> None:
    """Re-rooting the reordered transactions changes the header, so no certificate holds."""
    from protocol.merkle import merkle_root

    k = chain.marks["transfers"]
    blocks = list(chain.blocks)

    def reorder(w: dict[str, Any]) -> None:
        w["txs"].reverse()
        w["header"]["txs_root"] = merkle_root(w["txs"])

    blocks[k - 1] = (edit_block(blocks[k - 1][0], reorder), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "certificate", k, "another block")


def test_reordered_and_recertified_by_colluding_validators(chain: Chain) -> None:
    """Even a colluding supermajority cannot certify an order that does not execute:
    block 2 holds four approvals by one signer, nonces 1..4; reversed, the first fails."""
    from protocol.merkle import merkle_root

    k = 2
    blocks = list(chain.blocks[:k])

    def reorder(w: dict[str, Any]) -> None:
        w["txs"].reverse()
        w["header"]["txs_root"] = merkle_root(w["txs"])

    raw = edit_block(blocks[k - 1][0], reorder)
    blocks[k - 1] = (raw, resign_cert(chain, raw, k))
    r = replay(chain.log(blocks))
    expect(r, "transaction", k, "nonce", tx_index=0)
    assert r.failure is not None and r.failure.tx_id == sha256(Block.decode(raw).txs[0])


def test_dropped_certificate_signature(chain: Chain) -> None:
    k = chain.marks["evidence"]
    blocks = list(chain.blocks)
    cert = decode(blocks[k - 1][1])
    cert["sigs"] = cert["sigs"][1:]
    blocks[k - 1] = (blocks[k - 1][0], encode(cert))
    expect(replay(chain.log(blocks)), "certificate", k, "signatures, need")


def test_dropped_signature_in_the_last_commit(chain: Chain) -> None:
    k = chain.marks["evidence"]
    blocks = list(chain.blocks)

    def drop(w: dict[str, Any]) -> None:
        w["last_commit"]["sigs"] = w["last_commit"]["sigs"][1:]

    blocks[k - 1] = (edit_block(blocks[k - 1][0], drop), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "block-body", k, "last commit hash")


def test_certificate_signed_by_a_non_member(chain: Chain) -> None:
    k = chain.marks["transfers"]
    blocks = list(chain.blocks)
    outsider = SigningKey.derive("audit-test", "outsider")
    chain.keys[outsider.public] = outsider
    members = sorted(v for v, _ in Certificate.from_wire(decode(blocks[k - 1][1])).signatures)
    raw = resign_cert(chain, blocks[k - 1][0], k, sorted(members[1:] + [outsider.public]))
    blocks[k - 1] = (blocks[k - 1][0], raw)
    expect(replay(chain.log(blocks)), "certificate", k, "is not a validator at this height")


def test_certificate_of_a_validator_set_that_was_not_yet_in_force(chain: Chain) -> None:
    """The newcomer votes from `node`+2: a certificate relying on them earlier fails."""
    k = chain.marks["node"] + 1
    blocks = list(chain.blocks)
    newcomer = SigningKey.derive("audit-test", "Test commune", "newcomer").public
    members = sorted(v for v, _ in Certificate.from_wire(decode(blocks[k - 1][1])).signatures)
    raw = resign_cert(chain, blocks[k - 1][0], k, sorted(members[1:] + [newcomer]))
    blocks[k - 1] = (blocks[k - 1][0], raw)
    expect(replay(chain.log(blocks[:k])), "certificate", k, "not a validator")


def test_forged_state_root_certified_by_colluding_validators(chain: Chain) -> None:
    k = chain.marks["transfers"]
    blocks = list(chain.blocks[:k])
    forged = sha256(b"whatever the forger wants")
    raw = edit_block(blocks[k - 1][0], lambda w: w["header"].update(state_root=forged))
    blocks[k - 1] = (raw, resign_cert(chain, raw, k))
    expect(replay(chain.log(blocks)), "state-root", k, "does not match the executed state")


def test_truncated_file(chain: Chain) -> None:
    data = chain.log()
    reader = LogReader(io.BytesIO(data))
    offsets = [r.offset for r in reader.blocks()]
    k = 5
    cut = data[:offsets[k - 1] + 40]  # inside the record of block k
    expect(replay(cut), "format", k, "truncated")
    at_boundary = data[:offsets[k - 1]]  # blocks 1..k-1 intact, no end record
    expect(replay(at_boundary), "format", k, "without an end record")
    r = replay(data[:-3])  # the end record cut short
    assert r.failure is not None and r.failure.check == "format"
    assert "truncated" in r.failure.reason


def test_log_of_another_commune_spliced_in(chain: Chain) -> None:
    other = build_chain(name="Other commune")
    k = 4
    spliced = chain.blocks[:k - 1] + other.blocks[k - 1:]
    expect(replay(chain.log(spliced)), "chain", k, "another commune")
    r = replay(other.log(), expected_genesis=chain.genesis)
    expect(r, "genesis", None, "not of the given genesis")


def test_raw_byte_flips_anywhere_never_pass(chain: Chain) -> None:
    """Without re-sealing: every flipped byte is caught (by a check or by the digest)."""
    data = chain.log()
    step = max(1, len(data) // 29)
    for i in range(0, len(data), step):
        r = replay(flip(data, i))
        assert not r.ok, f"flipping byte {i} went unnoticed"


def test_signature_verdicts_are_a_pure_function_of_the_block(chain: Chain) -> None:
    k = chain.marks["transfers"]
    v = check_signatures(chain.genesis.chain_id, chain.blocks[k - 1][0])
    assert v.checked == 5 and v.check is None
    other = sha256(b"other chain")
    v2 = check_signatures(other, chain.blocks[k - 1][0])
    assert v2.check == "tx-signature" and v2.bad_index == 0


def test_auditor_rejects_out_of_order_records(chain: Chain) -> None:
    from ledger.audit import AuditFailure
    from ledger.export import BlockRecord

    a = Auditor(chain.genesis)
    b, c = chain.blocks[1]
    with pytest.raises(AuditFailure) as info:
        a.apply(BlockRecord(2, b, c, -1))
    assert info.value.failure.check == "chain" and info.value.failure.height == 1



# ---- the economy in the report, and invariants --------------------------------------------


def scenario_log(name: str) -> tuple[bytes, bytes, Any]:
    """Play a bundled scenario on the real ledger; (log, final state root, ledger)."""
    from bootstrap.scenario import load_scenario
    from bootstrap.simulate import run_scenario

    root = Path(__file__).resolve().parent.parent / "bootstrap" / "scenarios"
    run = run_scenario(load_scenario(root / f"{name}.json"))
    led = run.backend.ledger
    out = io.BytesIO()
    write_log(out, led.genesis.encode(),
              [(b.encode(), encode(c.to_wire()), b.hash()) for b, c in led.blocks()])
    return out.getvalue(), led.state_root, led


def test_report_of_assets_bonds_rents_and_dividends() -> None:
    data, root, led = scenario_log("default_reauction")
    r = replay(data)
    assert r.ok, r.failure and r.failure.describe()
    assert r.auditor is not None and r.auditor.ledger.state_root == root
    rep = r.report()
    (asset,) = rep["assets"]
    series = led.state.row("series", bytes.fromhex(asset["id"]))
    assert series is not None
    assert asset["series"]["rate_bps"] == series["rate_bps"]
    bond_auction = next(u for u in asset["auctions"] if u["kind"] == "bond")
    assert bond_auction["result"] == series["rate_bps"]  # the stop-out rate
    assert asset["series"]["status"] == "redeemed"
    assert sum(h["principal_received"] for h in asset["series"]["holders"]) == \
        series["principal_paid"] == series["face"]
    rent_auction = next(u for u in asset["auctions"] if u["kind"] == "rent")
    assert rent_auction["status"] == "cleared" and len(rent_auction["bid_list"]) == 3
    closes = rep["closes"]
    assert sum(c["interest_paid"] for c in closes) == series["interest_paid"]
    assert sum(c["rents_missed"] for c in closes) == 2  # the first lessee defaulted
    assert sum(c["rent_paid"] for c in closes) == 2 * 10_000 + asset["rental"]["paid"]
    assert rep["dividends"][-1]["share"] > 0
    for d in rep["dividends"]:
        assert d["share"] * d["members"] + d["carry"] == d["pool"]
    led.close()


def test_liquidation_with_a_shortfall_is_reported() -> None:
    data, root, led = scenario_log("liquidation_shortfall")
    r = replay(data)
    assert r.ok and r.auditor is not None and r.auditor.ledger.state_root == root
    (asset,) = r.report()["assets"]
    s = asset["series"]
    assert s["status"] == "liquidated" and s["principal_written_off"] > 0
    assert s["principal_paid"] + s["principal_written_off"] + s["outstanding"] == s["face"]
    led.close()


@pytest.mark.parametrize(("table", "update", "reason"), [
    ("bonds", "UPDATE bonds SET outstanding = outstanding + 1", "add up to"),
    ("series", "UPDATE series SET principal_paid = principal_paid - 5", "is not outstanding"),
    ("periods", "UPDATE periods SET carry = carry + 1 WHERE period = 3", "does not add up"),
    ("assets", "UPDATE assets SET escrow = 7", "escrow 7"),
    ("accounts", "UPDATE accounts SET balance = -1 WHERE id = (SELECT min(id) FROM accounts)",
     "never negative"),
])
def test_invariant_checks_see_a_broken_state(table: str, update: str, reason: str) -> None:
    """Each invariant query catches the breach it is for (the state is broken behind the
    ledger's back, since a correct ledger never produces one)."""
    from ledger.audit import AuditFailure

    data, _root, led = scenario_log("default_reauction")
    led.close()
    r = replay(data)
    assert r.ok and r.auditor is not None
    a = r.auditor
    conn = a.ledger._store.conn  # the in-memory mirror the checks read
    conn.execute(update)
    with pytest.raises(AuditFailure) as info:
        a._check_invariants(a.height)
    assert info.value.failure.check == "invariant" and reason in info.value.failure.reason


def test_money_from_nowhere_breaks_conservation_at_its_block() -> None:
    """A ledger whose transfer credits without debiting (a bug) is caught by the auditor
    running the same rules: money held no longer equals the treasury's net inflow."""
    from ledger import accounts, modules
    from ledger.money import credit
    from ledger.rules import Call, Exec, Result, Rules

    def buggy(ex: Exec, tx: Call) -> Result:
        credit(ex, tx.args["to"], tx.args["amount"])
        return None

    def rules() -> Rules:
        r = Rules()
        for m in modules.MODULES:
            m.install(r)
        assert r.handlers["account.transfer"] is accounts.transfer
        r.handlers["account.transfer"] = buggy
        return r.freeze()

    g, keys = make_genesis(4, signers=1, threshold=1)
    h = QuorumHarness(g, keys, rules=rules())
    f = h.founders
    h.block([h.tx(f[0], "treasury.deposit", {"account": f[1].public, "amount": 100,
                                             "reference": "x"})])
    h.block([h.tx(f[1], "account.transfer", {"to": f[2].public, "amount": 40})])
    blocks = [(b.encode(), encode(c.to_wire())) for b, c in h.ledger.blocks()]
    log = Chain(g, h.keys, blocks, [], {}, h.ledger.state_root).log()
    r = audit_log(io.BytesIO(log), rules=rules())
    expect(r, "invariant", 2, "money is not conserved")


def test_non_canonical_transaction_is_a_format_failure(chain: Chain) -> None:
    """A transaction re-encoded non-canonically (same content, a wider integer) keeps a
    valid signature over its canonical body but is not a valid transaction."""
    import msgpack

    k = chain.marks["transfers"]
    blocks = list(chain.blocks)

    def widen(w: dict[str, Any]) -> None:
        env = decode(w["txs"][0])
        packer = msgpack.Packer(use_bin_type=True)
        body = env["body"]
        raw = (b"\x83" + packer.pack("body") + b"\x83" + packer.pack("args")
               + packer.pack(body["args"]) + packer.pack("kind") + packer.pack(body["kind"])
               + packer.pack("nonce") + b"\xcf" + body["nonce"].to_bytes(8, "big")
               + packer.pack("sig") + packer.pack(env["sig"]) + packer.pack("signer")
               + packer.pack(env["signer"]))
        w["txs"][0] = raw

    blocks[k - 1] = (edit_block(blocks[k - 1][0], widen), blocks[k - 1][1])
    expect(replay(chain.log(blocks)), "tx-format", k, "canonical", tx_index=0)
