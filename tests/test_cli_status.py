"""The sync line of `commune status` and its --wait-sync loop, in process.

The loop is driven by a scripted series of status documents (the shape the daemon's
API returns); the real daemon's side is covered in tests/test_daemon_cli.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

import cli


def status(height: int, best: int, peers: int = 2, syncing: bool | None = None,
           **extra: Any) -> dict[str, Any]:
    return {"height": height, "best_peer_height": best, "behind": max(0, best - height),
            "peers": peers, "syncing": best > height + 1 if syncing is None else syncing,
            "is_validator": False, "validators": 4, **extra}


def test_sync_line() -> None:
    assert cli._sync_line(status(250, 1000)) == \
        "height 250 of 1,000 (25%; 750 blocks behind, syncing)"
    assert cli._sync_line(status(7, 7)) == "height 7, in sync with the best known peer"
    assert cli._sync_line({"height": 3, "sync_target": 3}) == \
        "height 3, in sync with the best known peer"  # a daemon without best_peer_height


def test_synced_needs_a_peer_unless_alone() -> None:
    assert cli._synced(status(10, 10)) and cli._synced(status(10, 11))
    assert not cli._synced(status(10, 40))
    assert not cli._synced(status(10, 10, peers=0))  # nobody confirmed the height yet
    assert not cli._synced(status(0, 0))  # peers, but none has reported its height
    assert cli._synced(status(10, 10, peers=0, is_validator=True, validators=1))


class Scripted:
    """Answers `status()` from a list, repeating the last one."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.calls = 0

    def status(self) -> dict[str, Any]:
        self.calls += 1
        return self.docs[min(self.calls, len(self.docs)) - 1]


@pytest.mark.parametrize("progress", [False, True])
def test_wait_sync_returns_once_caught_up(progress: bool, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "stderr_console", Console(file=out, force_terminal=True))
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = Scripted([status(0, 90), status(40, 90), status(89, 90)])
    assert cli._wait_sync(client, 60, progress) == status(89, 90)
    assert client.calls == 3
    assert (out.getvalue() != "") == progress  # the bar is drawn only when asked


def test_wait_sync_gives_up_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = Scripted([status(0, 90)])
    assert cli._wait_sync(client, 0, False) == status(0, 90)
