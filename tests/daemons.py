"""Real member daemons for tests: data directories, a genesis, subprocesses, waiting.

Each daemon is `python -m cli daemon --home DIR` in its own process, listening for
libp2p on a fixed loopback port (written into the genesis as the founder's address,
which is how the others find it) and serving its control API on a free port that
it records in DIR/api.json. Tests talk to it only through `node.client.Client`,
exactly as the CLI does, and wait on conditions with a bounded deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ledger.genesis import Founder, Genesis
from node import keystore
from node.client import Client, ClientError
from node.config import Paths, write_config
from protocol.crypto import SigningKey, id_text

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "daemon-test-passphrase"
CHEAP_SCRYPT = keystore.ScryptParams(n=2**4, r=1, p=1)
FAST_PARAMS = {"empty_block_interval": 1, "max_clock_drift": 10, "period_seconds": 3600,
               "commit_seconds": 60, "reveal_seconds": 60}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (ClientError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


@dataclass
class Daemon:
    name: str
    home: Path
    key: SigningKey
    p2p_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_files: list[Path] = field(default_factory=list)
    _client: Client | None = field(default=None, repr=False)
    _client_stamp: int = field(default=-1, repr=False)

    @property
    def id(self) -> str:
        return id_text(self.key.public)

    @property
    def paths(self) -> Paths:
        return Paths(self.home)

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        out = self.home / f"stderr.{self.starts}.log"
        self.log_files.append(out)
        env = {**os.environ, keystore.PASSPHRASE_ENV: PASSPHRASE, "PYTHONUNBUFFERED": "1",
               **(extra_env or {})}
        env.pop("COMMUNE_HOME", None)
        with open(out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "daemon", "--home", str(self.home)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                start_new_session=True)

    def client(self) -> Client:
        return Client.from_home(self.home, timeout=30.0)

    def call(self, fn: Callable[[Client], T]) -> T:
        """`fn(client)` with a client kept per daemon run (renewed when api.json changes)."""
        try:
            stamp = self.paths.api_endpoint.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = -1
        if self._client is None or stamp != self._client_stamp:
            if self._client is not None:
                self._client.close()
            self._client = None
            self._client = self.client()  # raises DaemonNotRunning without api.json
            self._client_stamp = stamp
        return fn(self._client)

    def status(self) -> dict[str, Any]:
        return self.call(lambda c: c.status())

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     + self.tail())
            if not self.paths.api_endpoint.exists():
                return None
            return self.status()
        return wait_for(f"{self.name} to serve its API", ready, timeout)

    def height(self) -> int:
        return int(self.status()["height"])

    def kill(self) -> None:
        """kill -9: no chance to clean up anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or `sig`) and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        if not self.log_files or not self.log_files[-1].exists():
            return ""
        return "\n".join(self.log_files[-1].read_text(errors="replace").splitlines()[-lines:])


def consensus_messages_sent(d: Daemon) -> float:
    """This node's count of published consensus messages (its rebroadcasts tick it)."""
    text = d.call(lambda c: c.metrics())
    for line in text.splitlines():
        if line.startswith('commune_gossip_sent_total{topic="consensus"}'):
            return float(line.split()[-1])
    return 0.0


def make_member_home(home: Path, key: SigningKey, p2p_port: int,
                     bootstrap: Sequence[str] = (),
                     config: Mapping[str, Any] | None = None) -> None:
    keystore.create_key_file(Paths(home).key, PASSPHRASE, seed=key.seed(),
                             scrypt=CHEAP_SCRYPT)
    write_config(Paths(home).config, {"listen": [f"/ip4/127.0.0.1/tcp/{p2p_port}"],
                                      "bootstrap": list(bootstrap), "log_level": "info",
                                      **(config or {})})


def make_commune(tmp: Path, n: int, params: Mapping[str, int] | None = None,
                 label: str = "daemon-test", config: Mapping[str, Any] | None = None
                 ) -> tuple[list[Daemon], Genesis]:
    """`n` founders, each with a data directory holding its key, config and the genesis."""
    keys = [SigningKey.derive(label, str(i)) for i in range(n)]
    ports = [free_port() for _ in range(n)]
    founders = [Founder(k.public, f"member{i}", f"labour {i}", "",
                        f"/ip4/127.0.0.1/tcp/{ports[i]}") for i, k in enumerate(keys)]
    genesis = Genesis.create(
        name="Test commune", currency="EUR", minor_units=2, founders=founders,
        treasury_signers=[k.public for k in keys[: min(2, n)]],
        treasury_threshold=min(2, n), genesis_time_ms=int(time.time() * 1000) - 1000,
        params={**FAST_PARAMS, **(params or {})})
    daemons = []
    for i, k in enumerate(keys):
        home = tmp / f"member{i}"
        make_member_home(home, k, ports[i], config=config)
        Paths(home).genesis.write_text(genesis.to_json())
        daemons.append(Daemon(f"member{i}", home, k, ports[i]))
    return daemons, genesis


@contextmanager
def running(daemons: Sequence[Daemon]) -> Iterator[Sequence[Daemon]]:
    """Start every daemon, wait for their APIs, and always stop them afterwards."""
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_ready()
        yield daemons
    except BaseException:
        for d in daemons:  # pytest shows this with the failure
            print(f"==== {d.name} (running: {d.running()}) ====\n{d.tail(60)}")
        raise
    finally:
        for d in daemons:
            if d.running():
                try:
                    d.stop(timeout=15)
                except subprocess.TimeoutExpired:
                    d.kill()
