"""A newcomer joins a running commune: syncs from genesis, applies, is attested, votes.

Real daemons over libp2p on loopback. The founder decides alone at first (a commune
of one); the newcomer's node finds it through the genesis (founders' addresses),
syncs every block, applies through its own daemon, is admitted on the founder's
attestation, registers its node by itself, and from then on no block commits
without its vote -- which the test checks by stopping it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Paths
from protocol.crypto import SigningKey
from tests.daemons import (
    Daemon,
    consensus_messages_sent,
    free_port,
    make_commune,
    make_member_home,
    running,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)


def test_newcomer_syncs_applies_and_becomes_validator(tmp_path: Path) -> None:
    (founder,), genesis = make_commune(tmp_path, 1, label="join-test")
    key = SigningKey.derive("join-test", "newcomer")
    port = free_port()
    home = tmp_path / "newcomer"
    make_member_home(home, key, port)
    Paths(home).genesis.write_text(genesis.to_json())
    newcomer = Daemon("newcomer", home, key, port)
    with running([founder]):
        wait_for("the founder to commit some blocks", lambda: founder.height() >= 5)
        with running([newcomer]):
            wait_for("the newcomer to sync", lambda: newcomer.height() >= founder.height() - 1
                     and newcomer.height() >= 5)
            assert newcomer.status()["is_validator"] is False
            applied = newcomer.call(lambda c: c.sign(
                "member.apply", {"name": "Newcomer", "enterprise": "bakery",
                                 "labour": "bakes bread"}, wait=30))
            assert applied["status"] == "committed", applied
            wait_for("the founder to see the application", lambda: founder.call(
                lambda c: c.get(f"tx/{applied['id']}"))["status"] == "committed")
            attested = founder.call(lambda c: c.sign(
                "member.attest", {"applicant": newcomer.id}, wait=30))
            assert attested["status"] == "committed", attested
            assert attested["result"]["admitted"] == 1

            def validator_everywhere() -> bool:
                return all(newcomer.id in d.call(lambda c: c.get("validators"))["validators"]
                           for d in (founder, newcomer))
            wait_for("the newcomer's node to register and vote", validator_everywhere, 60)
            wait_for("the newcomer to know it votes",
                     lambda: newcomer.status()["is_validator"] is True)
            h = founder.height()
            wait_for("blocks committed by both", lambda: min(
                founder.height(), newcomer.height()) >= h + 3, 60)
            members = founder.call(lambda c: c.get("members"))["members"]
            assert sorted(m["id"] for m in members) == sorted([founder.id, newcomer.id])
            top = min(founder.height(), newcomer.height())
            for height in range(1, top + 1):
                assert founder.call(lambda c, x=height: c.get(f"block/{x}"))["hash"] == \
                    newcomer.call(lambda c, x=height: c.get(f"block/{x}"))["hash"]
            assert newcomer.stop() == 0
        # With two validators, one alone cannot commit: it waits for a quorum it cannot
        # reach, resending its votes every few seconds.
        wait_for("the founder to stall in a vote step",
                 lambda: founder.status()["step"] in ("prevote", "precommit"), 60)
        stuck = founder.height()
        sent = consensus_messages_sent(founder)
        wait_for("several rebroadcasts without a quorum",
                 lambda: consensus_messages_sent(founder) >= sent + 3, 60)
        assert founder.height() == stuck
