"""How a real daemon process stops when signals keep coming or the stop hangs.

One daemon, restarted through each way out: a second signal during a (deliberately
slow) graceful stop, a graceful stop that overruns `stop_timeout`, an event loop stuck
in a synchronous call while stopping; then a normal start must find every committed
transaction and go on committing. The slow stops are fault injection
(`COMMUNE_TEST_SLOW_STOP`), not sleeps in the test: the test waits on log lines.
"""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import pytest

from node.daemon import EXIT_FORCED, EXIT_STOP_TIMEOUT, SLOW_STOP_ENV
from tests.daemons import Daemon, make_commune, wait_for

pytestmark = pytest.mark.timeout(180)


def set_stop_timeout(d: Daemon, seconds: int) -> None:
    text = d.paths.config.read_text()
    d.paths.config.write_text(re.sub(r"(?m)^stop_timeout = \d+$",
                                     f"stop_timeout = {seconds}", text))


def log_has(d: Daemon, event: str) -> bool:
    return f'"event":"{event}"' in d.tail(400)


def signal_once_stopping(d: Daemon, first: int) -> None:
    assert d.proc is not None
    d.proc.send_signal(first)
    wait_for("the graceful stop to begin", lambda: log_has(d, "test_slow_stop"))


def test_second_signal_and_overrun_stops_exit_safely(tmp_path: Path) -> None:
    (d,), _ = make_commune(tmp_path, 1, label="daemon-stop")
    try:
        # 1. A second signal during the graceful stop: logged, and an immediate exit
        #    at a safe point that still closes everything.
        d.start(extra_env={SLOW_STOP_ENV: "120"})
        d.wait_ready()
        sent = d.call(lambda c: c.sign("treasury.deposit", {
            "account": d.id, "amount": 700, "reference": "before the stops"}, wait=30))
        assert sent["status"] == "committed"
        signal_once_stopping(d, signal.SIGTERM)
        assert d.running()  # still in its (slow) graceful stop
        assert d.proc is not None
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(timeout=60) == EXIT_FORCED
        assert log_has(d, "already_stopping") and log_has(d, "forced_stop")
        assert not d.paths.api_endpoint.exists() and not d.paths.pid.exists()

        # 2. A graceful stop that overruns stop_timeout ends the same safe way.
        set_stop_timeout(d, 1)
        d.start(extra_env={SLOW_STOP_ENV: "120"})
        d.wait_ready()
        h = d.height()
        signal_once_stopping(d, signal.SIGTERM)
        assert d.proc.wait(timeout=60) == EXIT_STOP_TIMEOUT
        assert log_has(d, "forced_stop") and "longer than 1.0 s" in d.tail(20)
        assert not d.paths.api_endpoint.exists() and not d.paths.pid.exists()

        # 3. The event loop itself stuck while stopping: the watchdog thread exits the
        #    process without cleanup (a kill -9 as far as the files are concerned).
        d.start(extra_env={SLOW_STOP_ENV: "block:120"})
        d.wait_ready()
        signal_once_stopping(d, signal.SIGTERM)
        assert d.proc.wait(timeout=60) == EXIT_STOP_TIMEOUT
        assert log_has(d, "stop_timeout_hard_exit")
        assert d.paths.api_endpoint.exists()  # left behind, as by kill -9

        # 4. Nothing was lost or corrupted: a normal start recovers and goes on.
        set_stop_timeout(d, 15)
        d.start()
        d.wait_ready()
        assert d.height() >= h
        shown = d.call(lambda c: c.get(f"tx/{sent['id']}"))
        assert shown["status"] == "committed"
        assert d.call(lambda c: c.get(f"account/{d.id}"))["balance"] == 700
        wait_for("blocks after the restarts", lambda: d.height() > h + 1)
        assert not log_has(d, "signing_log_tail_dropped") or "checksum" not in d.tail(400)
        assert d.stop() == 0 and log_has(d, "stopped")
    finally:
        if d.running():
            d.kill()


def test_a_taken_api_port_is_a_clear_start_up_error(tmp_path: Path) -> None:
    (d,), _ = make_commune(tmp_path, 1, label="daemon-port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = d.paths.config.read_text()
        d.paths.config.write_text(re.sub(r"(?m)^port = 0$", f"port = {port}", text, count=1))
        d.start()
        try:
            assert d.proc is not None and d.proc.wait(timeout=60) == 1
        finally:
            if d.running():
                d.kill()
    tail = d.tail(5)
    assert f"error: cannot listen for the control API on 127.0.0.1:{port}" in tail
    assert "[api] port" in tail and "internal error" not in tail
    assert not d.paths.api_endpoint.exists() and not d.paths.pid.exists()
