"""Structured logs are one JSON object per line; metrics render in Prometheus text format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import logs
from node.metrics import Metrics


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    logs.teardown()
    root.setLevel(level)


def test_json_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    logs.setup("debug", tmp_path / "logs", stream)
    log = logs.get_logger("test")
    log.info("commit", height=5, block=b"\x01\x02", peers=["a", "b"], note="two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", step="x")
    log.debug("detail", n=1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the traceback stays inside its line
    first = json.loads(lines[0])
    assert first["event"] == "commit" and first["level"] == "info"
    assert first["logger"] == "commune.test" and first["ts"].endswith("Z")
    assert first["height"] == 5 and first["block"] == "0102" and first["peers"] == ["a", "b"]
    assert first["note"] == "two\nlines"
    second = json.loads(lines[1])
    assert "ValueError: boom" in second["exc"] and second["step"] == "x"
    on_disk = (tmp_path / "logs" / "daemon.log").read_text().splitlines()
    assert [json.loads(x)["event"] for x in on_disk] == ["commit", "failed", "detail"]


def test_level_and_idempotent_setup() -> None:
    stream = io.StringIO()
    logs.setup("info", None, stream)
    logs.setup("warning", None, stream)  # replaces, never duplicates, our handlers
    log = logs.get_logger("test2")
    log.info("hidden")
    log.warning("shown")
    logging.getLogger("libp2p.something").info("library chatter")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["shown"]


def test_metrics_render() -> None:
    m = Metrics()
    m.height.set(12)
    m.mempool_rejected.labels("bad signature").inc()
    text = m.render().decode()
    assert "commune_height 12.0" in text
    assert 'commune_mempool_rejected_total{why="bad signature"} 1.0' in text
    assert Metrics().render().decode().count("commune_height 0.0") == 1  # own registry
