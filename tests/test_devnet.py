"""`commune devnet`: real daemons in real processes, a scenario played in real time.

The slow tests run the command itself (`python -m cli devnet`) on a tiny scenario of
six 8-second periods (three founders; an investor; an applicant who is admitted and
whose node becomes a validator; a bond auction with one rejected bid, revealed by a
daemon and by the devnet; a purchase; a default; a rental re-auction whose sealed bids
the members' daemons reveal; rent that redeems the bonds and pays a dividend the
daemons claim; a transfer; a withdrawal) and check:

- the summary has the same figures as `commune simulate` on the same file (all but
  heights, state roots and object ids, which depend on the genesis time), rejection
  reasons included;
- every node holds the same state root at the summary's height (asked here, not only
  taken from the devnet's own report);
- with --keep-running the daemons answer `commune status` afterwards and stop cleanly
  on SIGTERM; Ctrl-C on the devnet stops every daemon cleanly and exits 130.

The fast tests cover node planning, the ordering of a group's actions (bids on one
asset are sent in order, each once the earlier ones are ready everywhere, without
waiting for their commits), the figure comparison and the usage errors, without daemons.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.devnet import (
    DevnetUsageError,
    default_nodes,
    differences,
    figures,
    load_devnet_scenario,
    plan_nodes,
)
from bootstrap.devnet_backend import ClientPool, DaemonBackend, Endpoint, dependencies, plan
from bootstrap.player import Action, Intent, Outcome
from bootstrap.scenario import Scenario, load_scenario, parse_scenario
from bootstrap.simulate import simulate
from node.client import Client
from protocol.crypto import id_text

ROOT = Path(__file__).resolve().parent.parent

TINY: dict[str, Any] = {
    "seed": "devnet test: tiny",
    "description": "A bike funded by bonds and bought; alice defaults; bob wins the rental "
                   "re-auction and his rent redeems the bonds and pays a dividend; dave joins.",
    "commune": {"name": "Tiny commune", "currency": "EUR", "minor_units": 2,
                "params": {"period_seconds": 8, "periods_per_year": 12, "commit_seconds": 3,
                           "reveal_seconds": 2, "grace_periods": 2}},
    "founders": ["alice", "bob", "carol"],
    "treasury": {"signers": ["alice", "bob"], "threshold": 2},
    "periods": 6,
    "auto_claim": True,
    "steps": [
        {"period": 0, "by": "alice", "do": "request", "asset": "bike", "price": 60000,
         "rent": 40000, "term": 6, "maturity": 2, "max_rate_bps": 900},
        {"period": 0, "by": "ivan", "do": "deposit", "amount": 50000},
        {"period": 0, "by": "bob", "do": "deposit", "amount": 90000},
        {"period": 0, "by": "ivan", "do": "bid", "asset": "bike", "amount": 40000,
         "rate_bps": 500},
        {"period": 0, "by": "bob", "do": "bid", "asset": "bike", "amount": 20000,
         "rate_bps": 600},
        {"period": 0, "by": "carol", "do": "bid", "asset": "bike", "amount": 10000,
         "rate_bps": 600},
        {"period": 1, "by": "treasury", "do": "acquire", "asset": "bike"},
        {"period": 1, "by": "dave", "do": "apply", "enterprise": "Bike workshop"},
        {"period": 1, "by": "alice", "do": "attest", "applicant": "dave"},
        {"period": 1, "by": "bob", "do": "attest", "applicant": "dave"},
        {"period": 2, "by": "ivan", "do": "transfer", "to": "carol", "amount": 1000},
        {"period": 4, "by": "bob", "do": "rent_bid", "asset": "bike", "rent": 70000,
         "term": 4},
        {"period": 4, "by": "carol", "do": "rent_bid", "asset": "bike", "rent": 65000,
         "term": 4},
        {"period": 5, "by": "ivan", "do": "withdraw", "amount": 5000},
    ],
}

DEVNET_TIMEOUT = 240


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """The test's own normalization: only what depends on block times is left out."""
    out = {k: v for k, v in summary.items() if k not in ("height", "state_root", "devnet")}
    out["assets"] = {n: {k: v for k, v in a.items() if k != "id"}
                     for n, a in summary["assets"].items()}
    return out


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("COMMUNE_HOME", "COMMUNE_PASSPHRASE")}
    e["PYTHONUNBUFFERED"] = "1"
    return e


def commune(*args: str, timeout: float = DEVNET_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (a reparented daemon may wait for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def stopped_cleanly(home: Path) -> bool:
    """The daemon removed its API endpoint and pid file and logged its stop."""
    log = (home / "daemon.log").read_text(errors="replace")
    return (not (home / "api.json").exists() and not (home / "daemon.pid").exists()
            and '"stopped"' in log)


def stop_daemons(homes: list[Path]) -> None:
    pids = {}
    for h in homes:
        try:
            pids[h] = int((h / "daemon.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            continue
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        wait_for("the daemons to stop", lambda: not any(running(p) for p in pids.values()))
    finally:
        for pid in pids.values():
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# ---- without daemons -------------------------------------------------------------------------


@pytest.fixture
def tiny() -> Scenario:
    return parse_scenario(json.loads(json.dumps(TINY)))


def test_default_nodes_are_founders_then_applicants(tiny: Scenario) -> None:
    assert default_nodes(tiny) == 4
    plans, warnings = plan_nodes(tiny, None)
    assert [(p.name, p.role) for p in plans] == [
        ("alice", "founder"), ("bob", "founder"), ("carol", "founder"), ("dave", "applicant")]
    assert [p.key.public for p in plans] == [tiny.key(n).public for n in
                                             ("alice", "bob", "carol", "dave")]
    assert warnings == []


def test_more_nodes_are_observers_fewer_leave_applicants_out(tiny: Scenario) -> None:
    plans, warnings = plan_nodes(tiny, 6)
    assert [p.role for p in plans][4:] == ["observer", "observer"]
    assert len({p.key.public for p in plans}) == 6
    assert warnings == []
    plans, warnings = plan_nodes(tiny, 3)
    assert [p.name for p in plans] == ["alice", "bob", "carol"]
    assert len(warnings) == 1 and "dave" in warnings[0]
    with pytest.raises(DevnetUsageError, match="fewer than the scenario's 3 founders"):
        plan_nodes(tiny, 2)
    with pytest.raises(DevnetUsageError, match="at most"):
        plan_nodes(tiny, 17)


def test_default_scenario_is_the_packaged_lifecycle() -> None:
    scenario, label = load_devnet_scenario(None)
    assert label == "bootstrap/scenarios/lifecycle.json"
    assert scenario == load_scenario(ROOT / "bootstrap" / "scenarios" / "lifecycle.json")
    assert default_nodes(scenario) == 4  # alice, bob, carol and dave


def _action(scenario: Scenario, index: int) -> Action:
    step = scenario.steps[index]
    return Action(index, step.do, (Intent(scenario.key("alice"), "x", {}),))


def test_group_ordering(tiny: Scenario) -> None:
    name = {tiny.key(n).public: n for n in tiny.actors}.__getitem__
    # request, two deposits: independent deposits run at once, the request goes last.
    deps = dependencies(tiny, [_action(tiny, i) for i in (0, 1, 2)], name)
    assert deps == [{1, 2}, set(), set()]
    # bids on one asset keep their order (the commit order numbers them and decides
    # ties), but only their sending is ordered: none waits for another's commit.
    deps = dependencies(tiny, [_action(tiny, i) for i in (3, 4, 5)], name)
    assert deps == [set(), {0}, {0, 1}]
    assert plan(tiny, [_action(tiny, i) for i in (3, 4, 5)], name) == (
        [set(), set(), set()], [set(), {0}, {0, 1}])
    # the same bidder's bids share an account (the lock): the second waits for the commit.
    again = parse_scenario(json.loads(json.dumps(
        {**TINY, "steps": [*TINY["steps"][:6], {"period": 0, "by": "bob", "do": "bid",
                                                "asset": "bike", "amount": 500,
                                                "rate_bps": 700}]})))
    assert plan(again, [_action(again, i) for i in (4, 5, 6)], name) == (
        [set(), set(), {0}], [set(), {0}, {1}])
    # apply, then attestations of that applicant, in order; the purchase waits for nothing.
    deps = dependencies(tiny, [_action(tiny, i) for i in (7, 8, 9, 6)], name)
    assert deps == [set(), {0}, {0, 1}, set()]
    # rent bids on one asset keep their order too; a purchase of the asset is waited for.
    assert plan(tiny, [_action(tiny, i) for i in (11, 12)], name) == (
        [set(), set()], [set(), {0}])
    assert plan(tiny, [_action(tiny, i) for i in (6, 11, 12)], name) == (
        [set(), {0}, {0}], [set(), set(), {1}])
    # the runner's claims credit the claimant: a transfer by the claimant waits.
    claim = Action(None, "claim", (Intent(tiny.key("ivan"), "dividend.claim",
                                          {"periods": [1]}),))
    deps = dependencies(tiny, [claim, _action(tiny, 10), _action(tiny, 13)], name)
    assert deps == [set(), {0}, {0, 1}]


class _Quiet:
    """A monitor that shows nothing (the scheduling test runs no display)."""

    def action_started(self, action: Action, text: str) -> None: ...

    def action_done(self, action: Action, text: str, outcome: Outcome,
                    height: int | None) -> None: ...

    def waiting(self, text: str, until_ms: int | None) -> None: ...

    def warn(self, text: str) -> None: ...

    def advanced(self, time_ms: int, height: int) -> None: ...


class _Scripted(DaemonBackend):
    """The real scheduler; each action, instead of reaching daemons, follows a script:
    whether it reports itself sent (ready everywhere) before it finishes."""

    def __init__(self, scenario: Scenario, tmp: Path, announces: set[int]) -> None:
        alice = scenario.key("alice").public
        endpoint = Endpoint("alice", tmp, alice, ClientPool(tmp))
        super().__init__(scenario, b"\x01" * 32, 0, [endpoint], auto_claim=False,
                         monitor=_Quiet(), stopping=threading.Event())
        self.announces = announces
        self.events: list[str] = []
        self._events_lock = threading.Lock()
        self.release: dict[int, threading.Event] = {}

    def _validator_endpoints(self) -> list[Endpoint]:
        return list(self.endpoints)

    def note(self, event: str) -> None:
        with self._events_lock:
            self.events.append(event)

    def _run_action(self, action: Action, on_sent: Callable[[], None] | None = None
                    ) -> Outcome:
        step = action.step
        assert step is not None
        self.note(f"start {step}")
        if step in self.announces:
            assert on_sent is not None
            self.note(f"sent {step}")
            on_sent()
        # Finish only once released: the next bid must be able to start meanwhile.
        assert self.release.setdefault(step, threading.Event()).wait(60), step
        self.note(f"end {step}")
        return Outcome((), None)


def test_sequenced_bids_start_once_the_earlier_is_sent_not_committed(
        tiny: Scenario, tmp_path: Path) -> None:
    actions = [_action(tiny, i) for i in (3, 4, 5)]
    backend = _Scripted(tiny, tmp_path, announces={3, 4})
    for i in (3, 4, 5):
        backend.release[i] = threading.Event()

    def finish_when_all_started() -> None:
        while not all(f"start {i}" in backend.events for i in (3, 4, 5)):
            time.sleep(0.01)
        for i in (3, 4, 5):
            backend.release[i].set()

    releaser = threading.Thread(target=finish_when_all_started, daemon=True)
    releaser.start()
    assert backend._run_group(actions) == [Outcome((), None)] * 3
    releaser.join()
    ev = backend.events
    assert ev.index("sent 3") < ev.index("start 4") < ev.index("sent 4") < ev.index("start 5")
    assert max(ev.index(f"start {i}") for i in (3, 4, 5)) < min(
        ev.index(f"end {i}") for i in (3, 4, 5))


def test_a_bid_never_sent_holds_the_next_until_it_is_done(
        tiny: Scenario, tmp_path: Path) -> None:
    actions = [_action(tiny, i) for i in (3, 4)]
    backend = _Scripted(tiny, tmp_path, announces=set())  # e.g. not ready in time
    for i in (3, 4):
        backend.release[i] = threading.Event()
        backend.release[i].set()
    assert backend._run_group(actions) == [Outcome((), None)] * 2
    assert backend.events == ["start 3", "end 3", "start 4", "end 4"]


def test_figures_ignore_only_what_block_times_change() -> None:
    a = {"height": 5, "state_root": "aa", "periods": 2, "description": "x",
         "actors": {"alice": {"balance": 3}}, "assets": {"van": {"id": "01", "rent": 7}},
         "rejected": [{"step": 1, "do": "bid", "by": "bob", "phase": "step",
                       "reason": "window closed at 123"}]}
    b = json.loads(json.dumps(a))
    b.update(height=9, state_root="bb", devnet={"dir": "/tmp"})
    b["assets"]["van"]["id"] = "02"
    b["rejected"][0]["reason"] = "window closed at 456"
    assert figures(a) == figures(b) and differences(figures(a), figures(b)) == []
    b["actors"]["alice"]["balance"] = 4
    assert differences(figures(a), figures(b)) == ["actors.alice.balance: simulate 3 != devnet 4"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(args))
    code = exit_info.value.code
    return int(code) if isinstance(code, int) else 1, capsys.readouterr().err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "devnet", "--nodes", "2")
    assert code == 2, err
    assert "fewer than the scenario's 3 founders" in err
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    code, err = run_cli(capsys, "devnet", "--dir", str(used))
    assert code == 6, err
    assert "not empty" in err and sorted(os.listdir(used)) == ["something"]
    code, err = run_cli(capsys, "devnet", "--scenario", str(tmp_path / "missing.json"))
    assert code == 5, err
    bad = tmp_path / "bad.json"
    bad.write_text('{"seed": "x"}')
    code, err = run_cli(capsys, "devnet", "--scenario", str(bad))
    assert code == 1 and "not a valid scenario" in err, err


# ---- with daemons ------------------------------------------------------------------------------


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture
def kept(tmp_path: Path, tiny_file: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """A finished devnet run with --keep-running; its daemons are stopped afterwards."""
    net = tmp_path / "net"
    try:
        r = commune("devnet", "--scenario", str(tiny_file), "--dir", str(net),
                    "--keep-running", "--json")
        assert r.returncode == 0, r.stderr[-4000:]
        yield json.loads(r.stdout), net
    finally:
        if net.exists():
            stop_daemons([h for h in net.iterdir() if h.is_dir()])


@pytest.mark.slow
@pytest.mark.timeout(DEVNET_TIMEOUT + 60)
def test_devnet_ends_like_simulate_and_keeps_running(
        kept: tuple[dict[str, Any], Path], tiny_file: Path) -> None:
    summary, net = kept
    expected = simulate(load_scenario(tiny_file))
    assert comparable(summary) == comparable(expected)
    assert [r["step"] for r in summary["rejected"]] == [5]  # carol bids without money
    bike = summary["assets"]["bike"]
    assert bike["owned"] and bike["lessee"] == "bob" and bike["reauctions"][0]["winner"] == "bob"
    assert summary["dividends"][-1]["share"] > 0 and summary["actors"]["dave"]["member"]

    info = summary["devnet"]
    assert info["simulate"]["same_figures"] and info["state_roots"]["agree"]
    assert info["running"] and info["kept"] and info["dir"] == str(net)
    homes = [Path(n["home"]) for n in info["nodes"]]
    assert [h.name for h in homes] == ["alice", "bob", "carol", "dave"]

    # Every node, asked here, holds the summary's state root at the summary's height.
    height = summary["height"]
    for home in homes:
        with Client.from_home(home) as c:
            assert c.get(f"block/{height}")["state_root"] == summary["state_root"], home.name

    # The daemons still run and answer `commune status`; dave's node, started as a
    # follower, votes since dave was admitted.
    for home in homes:
        if home.name in ("alice", "dave"):
            r = commune("status", "--home", str(home), "--json", timeout=60)
            assert r.returncode == 0, r.stderr
            status = json.loads(r.stdout)
        else:
            with Client.from_home(home) as c:
                status = c.status()
        assert status["height"] >= height
        assert status["member"] == id_text(load_scenario(tiny_file).key(home.name).public)
        assert status["is_validator"], home.name

    stop_daemons(homes)
    for home in homes:
        assert stopped_cleanly(home), home.name


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_stops_every_daemon(tmp_path: Path, tiny_file: Path) -> None:
    net = tmp_path / "net"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "devnet", "--scenario",
                             str(tiny_file), "--dir", str(net)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def up() -> bool:
            homes = [net / n for n in ("alice", "bob", "carol", "dave")]
            return all((h / "api.json").exists() for h in homes)
        wait_for("the devnet's daemons to serve their APIs", up, timeout=90)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    manifest = json.loads((net / "devnet.json").read_text())
    assert [n["exit_code"] for n in manifest["nodes"]] == [0, 0, 0, 0]
    for n in manifest["nodes"]:
        assert not running(n["pid"])
        assert stopped_cleanly(Path(n["home"])), n["name"]
