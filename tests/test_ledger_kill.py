"""A process killed at any instant leaves the store at a block boundary, with no loss.

A child process commits blocks of transfers in a loop and prints each height once
`commit` has returned; the parent SIGKILLs it at a random moment, reopens the store
(which verifies the state tables against the last block's state root), checks that
every height the child reported is there, and starts the child again on the same
store. At the end the whole chain replays from genesis to the same roots.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ledger.ledger import Ledger
from ledger.replay import replay
from ledger.testing import make_genesis

CHILD = r"""
import random, sys
from ledger.testing import Harness, key, make_genesis
g, keys = make_genesis(3, signers=1, threshold=1)
h = Harness(g, keys, path=sys.argv[1])
people = [key("kill", str(i)) for i in range(30)]
if h.ledger.height == 0:
    h.block([h.tx(h.founders[0], "treasury.deposit",
                  {"account": p.public, "amount": 10**9, "reference": "start"})
             for p in people])
    print(h.ledger.height, flush=True)
while True:
    rnd = random.Random(h.ledger.height)
    txs = [h.tx(p, "account.transfer", {"to": rnd.choice(people).public,
                                        "amount": rnd.randint(1, 1000)})
           for p in rnd.sample(people, 20)]
    h.block([t for t in txs if t.args["to"] != t.signer])
    print(h.ledger.height, flush=True)
"""


def test_sigkill_never_leaves_a_half_applied_block(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    g, _ = make_genesis(3, signers=1, threshold=1)
    rnd = random.Random(20240601)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    reported = 0
    for _round in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE,
                                 env=env, text=True)
        assert child.stdout is not None
        want = reported + rnd.randint(1, 4)
        while reported < want:  # wait on the condition: the child has committed more
            line = child.stdout.readline()
            assert line, f"child exited early with {child.wait()}"
            reported = int(line)
        time.sleep(rnd.uniform(0, 0.03))  # a random instant, most likely mid-block
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        ledger = Ledger.open(path, g)  # verifies the tables against the last state root
        try:
            assert ledger.height >= reported
            held, inflow, _ = ledger.conservation()
            assert held == inflow
            reported = ledger.height
        finally:
            ledger.close()
    ledger = Ledger.open(path, g)
    try:
        blocks = list(ledger.blocks())
        assert [b.height for b, _ in blocks] == list(range(1, ledger.height + 1))
        assert replay(g, blocks) == [b.header.state_root for b, _ in blocks]
    finally:
        ledger.close()
