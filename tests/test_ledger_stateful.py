"""Random lives of a commune through real blocks, with the invariants checked after each block.

Hypothesis drives valid and invalid transactions of every core kind, time jumps across
period closes (with a stand-in rent step that produces common income and arrears),
restarts from disk and forged blocks with one bad transaction. After every block:
money is conserved, no balance or debt is negative, members are exactly those the
transaction results admitted and did not remove, each closed period's dividends plus
its carry equal its pool, and the incremental state hash equals a from-scratch one. At
the end, replaying the chain from genesis reproduces every root, and reopening the
store reproduces the last.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from random import Random
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.execute import BlockRejected
from ledger.replay import replay
from ledger.testing import Harness, key, make_genesis, rent_stand_in_rules
from protocol.crypto import SigningKey
from protocol.merkle import merkle_root
from protocol.transactions import Transaction, decode_tx

LESSEE = key("stateful", "lessee")
RENT = 120


RULES = rent_stand_in_rules(LESSEE.public, RENT, "rent", b"")
AMOUNT_CHOICES = [1, 7, 50, 120, 333, 1000, 5000]


class CommuneMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Memory-backed when available: these runs test logic, not fsync (the kill test does).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="ledger-stateful-", dir=shm)
        g, keys = make_genesis(3, signers=3, threshold=2, params={
            "period_seconds": 40, "admission_attestations": 2, "voting_seconds": 100})
        self.h = Harness(g, keys, path=f"{self.dir}/ledger.db", rules=RULES)
        self.people: list[SigningKey] = self.h.founders + [
            key("stateful", str(i)) for i in range(4)] + [LESSEE]
        for p in self.people:
            self.h.add_key(p)
        self.pending: list[Transaction] = []
        self.members = {k.public for k in self.h.founders}
        self.actions: list[bytes] = []
        self.withdrawals: list[bytes] = []
        self.proposals: list[bytes] = []
        self.expels_seen: set[bytes] = set()
        self.roots: list[bytes] = []

    def teardown(self) -> None:
        if os.environ.get("LEDGER_STATS"):
            kinds = self.h.ledger.sql("SELECT kind, count(*) FROM chain_txs GROUP BY kind")
            with open(os.environ["LEDGER_STATS"], "a") as f:
                f.write(f"{self.h.ledger.height} {len(self.members)} "
                        f"{self.h.ledger.state.open_period()} {kinds}\n")
        try:
            if self.h.ledger.height:
                assert replay(self.h.genesis, self.h.ledger.blocks(), RULES) == self.roots
                root = self.h.ledger.state_root
                self.h = self.h.reopen()
                assert self.h.ledger.state_root == root
        finally:
            self.h.ledger.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- transactions ------------------------------------------------------------------

    def _add(self, signer: SigningKey, kind: str, args: dict[str, Any],
             nonce_skew: int = 0) -> None:
        nonce = None
        if nonce_skew:
            nonce = max(1, self.h.ledger.next_nonce(signer.public) + nonce_skew)
        self.pending.append(self.h.tx(signer, kind, args, nonce=nonce))
        if len(self.pending) > 40:
            self.block(1000)

    def _pick(self, rnd: Random, pool: list[bytes], fallback: list[bytes]) -> bytes:
        """Mostly a fitting key (valid transactions), sometimes any key (invalid ones)."""
        if pool and rnd.random() < 0.9:
            return rnd.choice(sorted(pool))
        return rnd.choice(sorted(fallback))

    @initialize()
    def fund(self) -> None:
        f0, f1, _ = self.h.founders
        txs = []
        for p in self.people:
            dep = self.h.tx(f0, "treasury.deposit", {"account": p.public, "amount": 2000,
                                                     "reference": "start"})
            txs += [dep, self.h.tx(f1, "treasury.approve", {"action": dep.id})]
        self.pending = txs
        self.block(1000)

    @rule(rnd=st.randoms(use_true_random=False), n=st.integers(1, 12))
    def transactions(self, rnd: Random, n: int) -> None:
        """A block of n drawn transactions (one seeded Random: long runs, little data)."""
        s = self.h.ledger.state
        everyone = [p.public for p in self.people]
        members = s.members()
        signers = s.treasury()["signers"]
        applicants = [k for k, _ in s.rows("applications")]
        outsiders = [p for p in everyone if p not in members]
        rich = [p for p in everyone if s.balance(p) > 0]
        open_actions = [k for k, r in s.rows("treasury_actions") if r["status"] == "pending"]
        open_props = [k for k, r in s.rows("proposals") if r["status"] == "open"]
        claimants = [p for p in everyone if s.unclaimed_periods(p)]
        keys = {p.public: p for p in self.people}
        for _ in range(n):
            kind = rnd.choice(
                ["deposit", "approve", "transfer", "transfer", "withdraw", "payout", "apply",
                 "attest", "attest", "resign", "node", "claim", "claim", "propose", "vote",
                 "vote"])
            if kind == "deposit":
                who = self._pick(rnd, signers, everyone)
                self._add(keys[who], "treasury.deposit", {
                    "account": rnd.choice(everyone),
                    "amount": rnd.choice(AMOUNT_CHOICES), "reference": "wire"})
                open_actions.append(self.pending[-1].id)
            elif kind == "approve":
                who = self._pick(rnd, signers, everyone)
                action = self._pick(rnd, open_actions, self.actions or [b"\x00" * 32])
                self._add(keys[who], "treasury.approve", {"action": action})
            elif kind in ("transfer", "withdraw"):
                who = self._pick(rnd, rich, everyone)
                amount = rnd.choice([rnd.randint(1, max(1, s.balance(who))),
                                     rnd.choice(AMOUNT_CHOICES)])
                if kind == "transfer":
                    self._add(keys[who], "account.transfer", {
                        "to": rnd.choice(everyone), "amount": amount})
                else:
                    self._add(keys[who], "account.withdraw", {"amount": amount,
                                                              "reference": "iban"})
            elif kind == "payout":
                who = self._pick(rnd, signers, everyone)
                pending = [k for k, r in s.rows("withdrawals") if r["status"] == "pending"]
                wid = self._pick(rnd, pending, self.withdrawals or [b"\x01" * 32])
                self._add(keys[who], "treasury.payout", {"withdrawal": wid})
            elif kind == "apply":
                who = self._pick(rnd, outsiders, everyone)
                self._add(keys[who], "member.apply", {"name": "n", "enterprise": "",
                                                      "labour": "l"})
            elif kind == "attest":
                who = self._pick(rnd, members, everyone)
                self._add(keys[who], "member.attest", {
                    "applicant": self._pick(rnd, applicants, everyone)})
            elif kind == "resign":
                self._add(keys[self._pick(rnd, members, everyone)], "member.resign", {})
            elif kind == "node":
                who = self._pick(rnd, members, everyone)
                self._add(keys[who], "member.node", {"peer_id": rnd.choice(
                    [b"n1", b"n2", who])})
            elif kind == "claim":
                who = self._pick(rnd, claimants, everyone)
                mine = s.unclaimed_periods(who) or [s.open_period()]
                options = sorted(set(mine + [s.open_period() + 1]))
                periods = rnd.sample(options, rnd.randint(1, min(3, len(options))))
                self._add(keys[who], "dividend.claim", {"periods": periods})
            elif kind == "propose":
                who = self._pick(rnd, members, everyone)
                other = rnd.choice(everyone)
                change = rnd.choice([
                    {"type": "expel", "member": other},
                    {"type": "param", "name": "admission_attestations", "value": 1},
                    {"type": "param", "name": "period_seconds", "value": 60},
                    {"type": "treasury", "signers": sorted({who, other}), "threshold": 1},
                    {"type": "upgrade", "version": 2, "height": 10**6},
                ])
                self._add(keys[who], "proposal.create", {"title": "t", "change": change})
                open_props.append(self.pending[-1].id)
            else:
                who = self._pick(rnd, members, everyone)
                pid = self._pick(rnd, open_props, self.proposals or [b"\x02" * 32])
                self._add(keys[who], "proposal.vote", {"proposal": pid,
                                                       "yes": rnd.random() < 0.8})
        self.block(rnd.choice([1000, 1000, 1000, 15_000, 45_000, 130_000]))

    @rule(skew=st.sampled_from([-1, 2]))
    def replayed_or_gapped(self, skew: int) -> None:
        self._add(self.h.founders[0], "member.resign", {}, nonce_skew=skew)

    # ---- blocks ----------------------------------------------------------------------------

    @rule(dt=st.sampled_from([1000, 45_000, 130_000]))
    def block(self, dt: int) -> None:
        block, rejected = self.h.build(self.pending, dt_ms=dt)
        for _txid, reason in rejected:
            assert "internal error" not in reason, reason
        self.h.commit(block)
        self.pending = []
        self.roots.append(self.h.ledger.state_root)
        self._learn(block.txs)
        self._check()

    @rule()
    def forged_block_is_rejected_whole(self) -> None:
        bad = self.h.tx(LESSEE, "account.transfer", {"to": self.people[0].public,
                                                     "amount": 10**15})
        block, _ = self.h.build(self.pending)
        self.h._pending.clear()
        raws = block.txs + (bad.raw,)
        forged = dataclasses.replace(block, txs=raws, header=dataclasses.replace(
            block.header, txs_root=merkle_root(raws)))
        root = self.h.ledger.state_root
        try:
            self.h.ledger.check_block(forged)
        except BlockRejected as exc:
            assert "is invalid" in exc.reason
        else:
            raise AssertionError("forged block accepted")
        assert self.h.ledger.state_root == root
        self.pending = []

    @rule()
    def restart(self) -> None:
        root = self.h.ledger.state_root
        self.h = self.h.reopen()
        assert self.h.ledger.state_root == root
        self.pending = []

    def _learn(self, raws: tuple[bytes, ...]) -> None:
        for raw in raws:
            tx = decode_tx(raw)
            res = self.h.ledger.tx_result(tx.id)
            assert res is not None
            result = res[2] or {}
            if tx.kind.startswith("treasury.") and tx.kind != "treasury.approve":
                self.actions.append(tx.id)
            elif tx.kind == "account.withdraw":
                self.withdrawals.append(tx.id)
            elif tx.kind == "proposal.create":
                self.proposals.append(tx.id)
            elif tx.kind == "member.attest" and result.get("admitted"):
                self.members.add(tx.args["applicant"])
            elif tx.kind == "member.resign":
                self.members.discard(tx.signer)
            for pid in self.proposals:
                p = self.h.ledger.state.proposal(pid)
                if p and p["type"] == "expel" and p["status"] == "passed" \
                        and pid not in self.expels_seen:
                    self.expels_seen.add(pid)
                    for m in list(self.members):
                        d = self.h.ledger.state.row("departures", m)
                        if d and d["reason"] == "expelled" and d["ref"] == pid:
                            self.members.discard(m)

    def _check(self) -> None:
        s = self.h.ledger.state
        total, inflow, _ = self.h.ledger.conservation()
        assert total == inflow
        for _k, row in s.rows("accounts"):
            assert row["balance"] >= 0 and row["arrears"] >= 0
        assert set(s.members()) == self.members
        for k, p in s.rows("periods"):
            shares = [r["amount"] for (m, per), r in s.rows("dividends") if per == k]
            assert len(shares) == (p["members"] if p["share"] else 0)
            assert sum(shares) + p["carry"] == p["pool"]
            assert p["carry"] < max(p["members"], 1) or p["members"] == 0
        for (m, _per), _r in s.rows("dividends"):
            assert len(m) == 32
        state = self.h.ledger._state
        assert state.recompute_hash() == state.hash

    @invariant()
    def validators_are_members_with_nodes(self) -> None:
        v = self.h.ledger.validators_at(self.h.ledger.height + 2)
        assert v.size >= 1
        assert set(v.members) <= self.members | set(
            self.h.ledger.validators_at(self.h.ledger.height + 1).members)


CommuneMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("LEDGER_EXAMPLES", "40")), stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestCommune = CommuneMachine.TestCase
