"""`commune devnet`: a whole commune of member daemons on this machine, in one command.

What it does, in order:

1. **Nodes.** One daemon per member the scenario will have: its founders, then every
   actor who applies for membership (they start as followers and become validators
   once admitted). That is the default `--nodes`; fewer than the founders is refused
   (a founder without a node is a validator that never votes), fewer than all members
   leaves the last applicants without a node (the devnet then signs for them, and warns:
   once admitted they are validators that never vote), more adds observer nodes that
   follow the chain without being members. Actors who never become members (investors)
   have no node: the devnet signs their transactions with the key the scenario derives
   for them and hands them to any daemon, as a wallet would.
2. **Homes and genesis.** `DIR/NAME` per node: the member's key (the scenario's key for
   that name, so ids match `commune simulate`; encrypted with a cheap scrypt under a
   random passphrase kept beside it in `DIR/NAME/passphrase`, mode 0600: a devnet key
   guards nothing), a config listening on a free loopback port, and one fresh genesis
   whose founders carry those addresses (that is how the daemons find each other). The
   genesis time is a few seconds ahead, so every daemon is up when period 0 starts and
   the scenario's periods fall on the wall clock.
3. **Daemons.** `commune daemon --home DIR/NAME` each, as separate processes in their
   own session (a Ctrl-C in the terminal reaches the devnet, which then stops them in
   order). Without `--keep-running` they also die with the devnet if it is killed.
   Their output goes to `DIR/NAME/daemon.log`. Ready = every control API answers and
   the founders see each other. Daemons up more than `LATE_START_SECONDS` after the
   genesis time (a loaded machine) would leave period 0 short: the devnet then stops
   them and starts over once, with a fresh genesis further ahead.
4. **Play.** The scenario player (`bootstrap/player.py`) over `DaemonBackend`, in real
   time, with a live display.
5. **Check.** The summary is `commune simulate`'s (`bootstrap/summary.py`), read through
   the API. The state root at one height is fetched from every node and must be
   identical; the scenario is also simulated in-process and the figures compared (all
   but heights, state roots and object ids, which depend on the genesis time).
6. **Stop** every daemon (SIGTERM, a clean exit is code 0), unless `--keep-running`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from bootstrap.devnet_backend import (
    ClientPool,
    DaemonBackend,
    DevnetError,
    Endpoint,
    Monitor,
    now_ms,
)
from bootstrap.player import ScenarioPlayer
from bootstrap.scenario import ApplyStep, Scenario, load_scenario, parse_scenario_text
from bootstrap.simulate import scenario_genesis
from bootstrap.summary import summarize
from ledger.genesis import Founder, Genesis
from node import keystore
from node.client import Client, ClientError
from node.config import Paths, ensure_home, write_config
from protocol.crypto import SigningKey, id_text

DEFAULT_SCENARIO = "lifecycle.json"
"""In `bootstrap/scenarios/`: the full life of a commune, with 20-second periods."""
MAX_NODES = 16
DEVNET_SCRYPT = keystore.ScryptParams(n=2**10, r=8, p=1)
"""Cheap on purpose: the passphrase lies next to the key."""
PASSPHRASE_FILE = "passphrase"
DAEMON_LOG = "daemon.log"
TRACE_LOG = "devnet.log"
"""Seconds since genesis, thread, and what the devnet did: for finding where time goes."""
MANIFEST = "devnet.json"
"""What the devnet made, in DIR: nodes, homes, pids; for people and scripts."""
STARTUP_SECONDS_BASE = 4.0
STARTUP_SECONDS_PER_NODE = 1.5
"""The genesis time is this far ahead: daemons import libp2p and bind in a few seconds."""
READY_DEADLINE_SECONDS = 120.0
LATE_START_SECONDS = 1.0
"""Daemons up this long after the genesis time leave the scenario's first period short
(its auctions would run into the next period): the devnet then starts over, once, with a
fresh genesis further ahead (a loaded machine can take twice the usual start-up time)."""
STOP_DEADLINE_SECONDS = 20.0
ROOTS_DEADLINE_SECONDS = 30.0


class DevnetUsageError(ValueError):
    """A devnet that cannot be made as asked (bad --nodes, a used --dir)."""

    def __init__(self, message: str, exists: bool = False) -> None:
        super().__init__(message)
        self.exists = exists


# ---- the scenario and the nodes ------------------------------------------------------------


def load_devnet_scenario(path: Path | None) -> tuple[Scenario, str]:
    """The scenario to play and how to name it; the packaged lifecycle by default."""
    if path is not None:
        return load_scenario(path), str(path)
    text = resources.files("bootstrap.scenarios").joinpath(DEFAULT_SCENARIO).read_text("utf-8")
    return parse_scenario_text(text), f"bootstrap/scenarios/{DEFAULT_SCENARIO}"


@dataclass(frozen=True)
class NodePlan:
    name: str
    key: SigningKey
    role: str
    """"founder", "applicant" (becomes a member if admitted), or "observer"."""


def applicants(scenario: Scenario) -> list[str]:
    out: list[str] = []
    for s in scenario.steps:
        if isinstance(s, ApplyStep) and s.by not in out:
            out.append(s.by)
    return out


def default_nodes(scenario: Scenario) -> int:
    return len(scenario.founders) + len(applicants(scenario))


def plan_nodes(scenario: Scenario, nodes: int | None) -> tuple[list[NodePlan], list[str]]:
    """The nodes to run, and warnings about the choice (see the module docstring)."""
    founders = list(scenario.founders)
    members = founders + applicants(scenario)
    n = len(members) if nodes is None else nodes
    if n < len(founders):
        raise DevnetUsageError(
            f"--nodes {n} is fewer than the scenario's {len(founders)} founders "
            f"({', '.join(founders)}): every founder is a validator from the first block and "
            "needs a node")
    if n > MAX_NODES:
        raise DevnetUsageError(f"--nodes {n}: at most {MAX_NODES} daemons on one machine")
    plans = [NodePlan(name, scenario.key(name), "founder") for name in founders]
    plans += [NodePlan(name, scenario.key(name), "applicant")
              for name in members[len(founders):n]]
    for i in range(n - len(plans)):
        name = f"observer{i + 1}"
        while name in scenario.actors:
            name = "_" + name
        plans.append(NodePlan(name, SigningKey.derive(scenario.seed, "devnet", name),
                              "observer"))
    warnings = []
    left_out = members[n:]
    if left_out:
        warnings.append(
            f"{', '.join(left_out)} will have no node (--nodes {n}): the devnet signs for "
            "them, and once admitted they are validators that never vote, which consensus "
            f"must tolerate (default --nodes {len(members)})")
    return plans, warnings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- one daemon process --------------------------------------------------------------------


PR_SET_PDEATHSIG = 1
_prctl: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the daemon gets SIGTERM if the devnet process dies (even by SIGKILL).

    Runs between fork and exec while other threads of the parent may hold locks, so it
    does nothing but the one system call (the function was looked up beforehand)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class DaemonProcess:
    plan: NodePlan
    home: Path
    p2p_port: int
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    pool: ClientPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ClientPool(self.home)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def log_path(self) -> Path:
        return self.home / DAEMON_LOG

    @property
    def listen(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}"

    def start(self, tie_to_parent: bool) -> None:
        assert self.proc is None
        env = {k: v for k, v in os.environ.items()
               if k not in ("COMMUNE_HOME", keystore.PASSPHRASE_ENV)}
        env["PYTHONUNBUFFERED"] = "1"
        tie = tie_to_parent and _prctl is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "daemon", "--home", str(self.home),
                 "--passphrase-file", str(self.home / PASSPHRASE_FILE)],
                cwd=self.home, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, preexec_fn=_die_with_parent if tie else None)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def gone(self) -> str | None:
        """None while running; else how it ended."""
        if self.proc is None:
            return "was never started"
        code = self.proc.poll()
        if code is None:
            return None
        self.exit_code = code
        return f"exited with code {code}"

    def client(self) -> contextlib.AbstractContextManager[Client]:
        return self.pool.client()

    def status(self) -> dict[str, Any] | None:
        """The daemon's status, or None while its API is not up yet."""
        if not Paths(self.home).api_endpoint.exists():
            return None
        try:
            with self.client() as c:
                status: dict[str, Any] = c.request("GET", "status", timeout=5.0)
                return status
        except ClientError:
            return None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


# ---- the devnet -----------------------------------------------------------------------------


@dataclass
class Devnet:
    """The homes, the genesis and the daemon processes of one devnet."""

    scenario: Scenario
    directory: Path
    plans: list[NodePlan]
    daemons: list[DaemonProcess] = field(default_factory=list)
    genesis: Genesis | None = None
    _trace_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, scenario: Scenario, directory: Path, plans: list[NodePlan],
               genesis_time_ms: int) -> Devnet:
        """Write every home and the genesis; nothing runs yet."""
        net = cls(scenario, directory, plans)
        net.daemons = [DaemonProcess(p, directory / p.name, free_port()) for p in plans]
        addresses = {d.plan.key.public: d.listen for d in net.daemons if d.plan.role == "founder"}
        base = scenario_genesis(scenario, genesis_time_ms)
        founders = [Founder(f.id, f.name, f.labour, f.enterprise, addresses.get(f.id, ""))
                    for f in base.founders]
        net.genesis = Genesis.create(
            name=base.name, currency=base.currency, minor_units=base.minor_units,
            founders=founders, treasury_signers=list(base.treasury_signers),
            treasury_threshold=base.treasury_threshold, genesis_time_ms=genesis_time_ms,
            params=dict(base.params))
        for d in net.daemons:
            _make_home(d, net.genesis, scenario.auto_claim)
        net.write_manifest()
        return net

    @property
    def genesis_time_ms(self) -> int:
        assert self.genesis is not None
        return self.genesis.genesis_time_ms

    def start(self, tie_to_parent: bool) -> None:
        for d in self.daemons:
            d.start(tie_to_parent)
        self.write_manifest()

    def wait_ready(self, progress: Callable[[int, int], None],
                   stopping: threading.Event) -> None:
        """Every API answers and the founders see each other; DevnetError otherwise."""
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        founders = sum(1 for d in self.daemons if d.plan.role == "founder")
        while True:
            ready = 0
            for d in self.daemons:
                gone = d.gone()
                if gone is not None:
                    raise DevnetError(f"{d.name}'s daemon {gone} while starting; "
                                      f"{d.log_path} ends with:\n{d.tail()}")
                s = d.status()
                if s is None:
                    continue
                want = founders - 1 if d.plan.role == "founder" else min(1, founders)
                if int(s.get("peers", 0)) >= want:
                    ready += 1
            progress(ready, len(self.daemons))
            if ready == len(self.daemons):
                return
            if time.monotonic() > deadline:
                raise DevnetError(f"the daemons were not all up and connected after "
                                  f"{READY_DEADLINE_SECONDS:.0f} s; see DIR/NAME/{DAEMON_LOG}")
            if stopping.wait(0.2):
                raise KeyboardInterrupt

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(d.name, d.home, d.plan.key.public, d.pool, d.gone)
                for d in self.daemons]

    def stop(self, on_stopped: Callable[[DaemonProcess], None] | None = None) -> None:
        """SIGTERM to all, wait for clean exits; SIGKILL what is left at the deadline.

        A second Ctrl-C while waiting kills what is left at once.
        """
        for d in self.daemons:
            d.terminate()
        deadline = time.monotonic() + STOP_DEADLINE_SECONDS
        try:
            for d in self.daemons:
                if d.proc is None:
                    continue
                try:
                    d.exit_code = d.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    d.kill()
                    d.exit_code = d.proc.wait()
                if on_stopped is not None:
                    on_stopped(d)
        except KeyboardInterrupt:
            for d in self.daemons:
                d.kill()
            for d in self.daemons:
                if d.proc is not None:
                    d.exit_code = d.proc.wait()
            raise
        finally:
            self.close_clients()
            self.write_manifest()

    def remove_files(self) -> None:
        """Delete what `create` wrote (the daemons must be stopped): to start over."""
        assert not self.running()
        for d in self.daemons:
            shutil.rmtree(d.home, ignore_errors=True)
        for name in (MANIFEST, TRACE_LOG):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()

    def close_clients(self) -> None:
        for d in self.daemons:
            d.pool.close()

    def running(self) -> list[DaemonProcess]:
        return [d for d in self.daemons if d.gone() is None]

    def trace(self, line: str) -> None:
        """One line of DIR/devnet.log: what the devnet sent when, and how long it took."""
        offset = (now_ms() - self.genesis_time_ms) / 1000
        text = f"{offset:9.3f} {threading.current_thread().name:>18} {line}\n"
        with self._trace_lock, open(self.directory / TRACE_LOG, "a", encoding="utf-8") as f:
            f.write(text)

    def stop_command(self) -> str:
        return f"kill $(cat {self.directory}/*/daemon.pid)"

    def nodes_info(self) -> list[dict[str, Any]]:
        return [{"name": d.name, "role": d.plan.role, "id": id_text(d.plan.key.public),
                 "home": str(d.home), "pid": d.pid, "p2p": d.listen,
                 "exit_code": d.exit_code} for d in self.daemons]

    def write_manifest(self) -> None:
        doc = {"scenario_seed": self.scenario.seed, "commune": self.scenario.commune.name,
               "chain_id": self.genesis.chain_id.hex() if self.genesis else None,
               "genesis_time_ms": self.genesis.genesis_time_ms if self.genesis else None,
               "nodes": self.nodes_info(), "stop": self.stop_command()}
        tmp = self.directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.directory / MANIFEST)


def _make_home(d: DaemonProcess, genesis: Genesis, auto_claim: bool) -> None:
    paths = Paths(d.home)
    ensure_home(d.home)
    passphrase = secrets.token_urlsafe(24)
    pw_file = d.home / PASSPHRASE_FILE
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(passphrase + "\n")
    keystore.create_key_file(paths.key, passphrase, seed=d.plan.key.seed(),
                             scrypt=DEVNET_SCRYPT)
    write_config(paths.config, {"listen": [d.listen], "bootstrap": [], "log_level": "info",
                                "auto_claim": auto_claim, "passphrase_file": PASSPHRASE_FILE})
    paths.genesis.write_text(genesis.to_json(), encoding="utf-8")


def prepare_directory(directory: Path | None) -> tuple[Path, bool]:
    """(the devnet's directory, whether we made a temporary one)."""
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="commune-devnet-")), True
    directory = directory.expanduser().absolute()
    if directory.exists():
        if not directory.is_dir():
            raise DevnetUsageError(f"--dir {directory} exists and is not a directory")
        if any(directory.iterdir()):
            raise DevnetUsageError(f"--dir {directory} is not empty; a devnet starts from a "
                                   "fresh genesis in an empty directory", exists=True)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory, False


# ---- comparing figures --------------------------------------------------------------------

VOLATILE = ("height", "state_root", "devnet", "description")
"""Summary fields that depend on block times and the genesis, not on the scenario's figures."""


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between `commune simulate` and a devnet on the same file.

    Left out: heights and the state root (blocks fall at other times), object ids (an
    asset is named by its request's transaction id, which covers the chain id), and the
    wording of rejection reasons (it may quote times); which steps were rejected stays.
    """
    out = {k: v for k, v in summary.items() if k not in VOLATILE}
    out["assets"] = {n: {k: v for k, v in a.items() if k != "id"}
                     for n, a in summary.get("assets", {}).items()}
    out["rejected"] = [{k: v for k, v in r.items() if k != "reason"}
                       for r in summary.get("rejected", [])]
    return out


def differences(expected: Any, actual: Any, path: str = "", limit: int = 20) -> list[str]:
    """Where two JSON values differ, as `path: expected != actual` lines."""
    out: list[str] = []

    def walk(a: Any, b: Any, p: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{p}.{k}" if p else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{p}[{i}]")
        elif a != b:
            out.append(f"{p}: simulate {json.dumps(a)} != devnet {json.dumps(b)}")

    walk(expected, actual, path)
    return out


# ---- a whole run -----------------------------------------------------------------------------


class View(Monitor, Protocol):
    """What the run needs from its display (`bootstrap.devnet_view.LiveView`)."""

    def phase(self, text: str, until_ms: int | None = None) -> None: ...

    def note(self, text: str, style: str = "") -> None: ...

    def attach(self, devnet: Devnet, backend: DaemonBackend | None,
               player: ScenarioPlayer | None = None) -> None: ...


@dataclass
class Options:
    scenario: Path | None = None
    nodes: int | None = None
    directory: Path | None = None
    keep_running: bool = False


@dataclass
class Result:
    summary: dict[str, Any]
    roots_agree: bool
    same_figures: bool
    exit_ok: bool
    devnet: Devnet
    kept_directory: bool


def run(opts: Options, view: View, stopping: threading.Event) -> Result:
    """Make, run, check and stop a devnet. DevnetError/KeyboardInterrupt stop every daemon
    (the directory is then kept, for its logs) before they propagate."""
    scenario, label = load_devnet_scenario(opts.scenario)
    plans, warnings = plan_nodes(scenario, opts.nodes)
    directory, temporary = prepare_directory(opts.directory)
    for w in warnings:
        view.warn(w)
    started = time.monotonic()
    lead = STARTUP_SECONDS_BASE + STARTUP_SECONDS_PER_NODE * len(plans)
    genesis_ms = -(-(now_ms() + int(lead * 1000)) // 1000) * 1000  # a whole second
    devnet = Devnet.create(scenario, directory, plans, genesis_ms)
    period_s = scenario.commune.params.period_seconds
    expect = (genesis_ms - now_ms()) / 1000 + scenario.periods * period_s + 5
    eta = f"{expect / 60:.0f} min" if expect >= 90 else f"{expect:.0f} s"
    view.note(f"{scenario.commune.name}: {len(plans)} daemons in {directory}, playing "
              f"{label}: {scenario.periods} periods of {period_s} s, about {eta}", "bold")
    try:
        for attempt in (1, 2):
            began = time.monotonic()
            devnet.start(tie_to_parent=not opts.keep_running)
            view.attach(devnet, None)
            view.phase(f"starting {len(plans)} daemons")
            devnet.wait_ready(lambda k, n: view.phase(f"starting daemons: {k} of {n} up and "
                                                      "connected"), stopping)
            took = time.monotonic() - began
            view.note(f"all {len(plans)} daemons are up and connected ({took:.1f} s)")
            late = (now_ms() - devnet.genesis_time_ms) / 1000
            if late <= LATE_START_SECONDS or attempt == 2:
                break
            lead = 2 * took + 2
            view.warn(f"the daemons came up {late:.1f} s after the genesis time, too late "
                      f"for period 0; starting over with a genesis {lead:.0f} s ahead")
            devnet.stop()
            devnet.remove_files()
            genesis_ms = -(-(now_ms() + int(lead * 1000)) // 1000) * 1000
            devnet = Devnet.create(scenario, directory, plans, genesis_ms)
        if now_ms() < devnet.genesis_time_ms:
            view.phase("the commune is founded at genesis", devnet.genesis_time_ms)
            while now_ms() < devnet.genesis_time_ms:
                if stopping.wait(min(0.25, (devnet.genesis_time_ms - now_ms()) / 1000)):
                    raise KeyboardInterrupt
        assert devnet.genesis is not None
        view.note("period 0", "bold cyan")
        backend = DaemonBackend(scenario, devnet.genesis.chain_id, devnet.genesis_time_ms,
                                devnet.endpoints(), auto_claim=scenario.auto_claim,
                                monitor=view, stopping=stopping)
        backend.trace = devnet.trace
        player = ScenarioPlayer(scenario, backend)
        view.attach(devnet, backend, player)
        state = player.run()
        view.phase("reading the summary and comparing state roots")
        reader = backend.reader
        height = _height(devnet.daemons[0])
        reader.require(height)
        treasury = _get(devnet.daemons[0], "treasury")
        conservation = treasury.get("conservation")
        roots = _roots_at(devnet, height, stopping)
        agree = len(set(roots.values())) == 1
        summary = summarize(scenario, reader, player.names, state, height=height,
                            state_root=bytes.fromhex(roots[devnet.daemons[0].name]),
                            conservation=None if not conservation else
                            (int(conservation["held"]), int(conservation["inflow"])))
        from bootstrap.simulate import simulate

        expected = simulate(scenario)
        diff = differences(figures(expected), figures(summary))
        info: dict[str, Any] = {
            "dir": str(directory), "scenario": label, "chain_id": devnet.genesis.chain_id.hex(),
            "genesis_time_ms": devnet.genesis_time_ms,
            "seconds": round(time.monotonic() - started, 1),
            "state_roots": {"height": height, "agree": agree, "roots": roots},
            "simulate": {"same_figures": not diff, "differences": diff,
                         "state_root": expected["state_root"]},
            "transactions": backend.stats.transactions,
            "daemon_actions": backend.stats.by_daemon,
            "late": backend.stats.late, "warnings": warnings,
            "runner_rejected": state.runner_rejected,
        }
        summary["devnet"] = info
        if opts.keep_running:
            info["running"] = True
            info["stop"] = devnet.stop_command()
            devnet.close_clients()
        else:
            view.phase("stopping the daemons")
            devnet.stop(lambda d: view.note(f"{d.name}'s daemon stopped (exit code "
                                            f"{d.exit_code})", "dim"))
            info["running"] = False
        info["nodes"] = devnet.nodes_info()
        clean = opts.keep_running or all(d.exit_code == 0 for d in devnet.daemons)
        ok = agree and not diff and clean
        kept = opts.keep_running or not temporary or not ok
        if not kept:
            shutil.rmtree(directory, ignore_errors=True)
        info["kept"] = kept
        return Result(summary, agree, not diff, ok, devnet, kept)
    except BaseException:
        stopping.set()
        view.phase("stopping the daemons")
        devnet.stop(lambda d: view.note(f"{d.name}'s daemon stopped (exit code "
                                        f"{d.exit_code})", "dim"))
        raise


def _get(d: DaemonProcess, path: str) -> Any:
    try:
        with d.client() as c:
            return c.get(path)
    except ClientError as exc:
        raise DevnetError(f"{d.name}'s daemon: {exc.message}") from None


def _height(d: DaemonProcess) -> int:
    s = d.status()
    if s is None:
        raise DevnetError(f"{d.name}'s daemon does not answer; see {d.log_path}")
    return int(s["height"])


def _roots_at(devnet: Devnet, height: int, stopping: threading.Event) -> dict[str, str]:
    """Every node's state root at `height` (waiting for laggards, with a deadline)."""
    deadline = time.monotonic() + ROOTS_DEADLINE_SECONDS
    roots: dict[str, str] = {}
    for d in devnet.daemons:
        while True:
            gone = d.gone()
            if gone is not None:
                raise DevnetError(f"{d.name}'s daemon {gone}; see {d.log_path}")
            if _height(d) >= height:
                roots[d.name] = str(_get(d, f"block/{height}")["state_root"])
                break
            if time.monotonic() > deadline:
                raise DevnetError(f"{d.name} did not reach height {height} in "
                                  f"{ROOTS_DEADLINE_SECONDS:.0f} s")
            if stopping.wait(0.1):
                raise KeyboardInterrupt
    return roots


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the devnet like Ctrl-C does (daemons stopped cleanly)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


__all__ = ["Devnet", "DevnetError", "DevnetUsageError", "NodePlan", "Options", "Result",
           "View", "default_nodes", "differences", "figures", "load_devnet_scenario",
           "plan_nodes", "run", "signals_interrupt"]
