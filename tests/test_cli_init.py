"""`commune init` and `commune id` through a real process, as a user or script runs them."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from node.config import Config, load_config
from node.keystore import PASSPHRASE_ENV, load_key, peer_id
from protocol.crypto import parse_id

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "commune"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cli"]


def run(*args: str, env: dict[str, str] | None = None,
        new_session: bool = False) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in (PASSPHRASE_ENV, "COMMUNE_HOME", "COMMUNE_DEBUG")}
    base["COMMUNE_HOME"] = "/nonexistent/commune-tests-must-pass-home"
    return subprocess.run([*COMMAND, *args], cwd=ROOT, env={**base, **(env or {})},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, start_new_session=new_session)


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    f = tmp_path / "passphrase"
    f.write_text("a long enough passphrase\n")
    f.chmod(0o600)
    return f


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_init_then_id(tmp_path: Path, passfile: Path) -> None:
    home = tmp_path / "member"
    proc = run("init", "--home", str(home), "--passphrase-file", str(passfile), "--json")
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    member_id = created["id"]
    public = parse_id(member_id)
    assert created["home"] == str(home) and created["config_created"] is True

    key_file = home / "member.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert load_key(key_file, "a long enough passphrase").public == public
    assert load_config(home / "config.toml") == Config.defaults(home)

    shown = run("id", "--home", str(home), "--json")
    assert shown.returncode == 0, shown.stderr
    pid = peer_id(public)
    assert json.loads(shown.stdout) == {
        "id": member_id, "public_key_hex": public.hex(), "home": str(home), "peer_id": pid,
        "bootstrap_addrs": [f"/ip4/127.0.0.1/tcp/0/p2p/{pid}"], "addrs_from": "config listen",
        "notes": [
            "tcp/0 means a port picked at start: set a fixed port in [network] listen, or "
            "start the daemon and run `commune id` again",
            "loopback only: reachable from this machine alone; to accept other machines "
            "listen on [\"/ip4/0.0.0.0/tcp/4001\"] in [network] listen"]}
    plain = run("id", "--home", str(home))
    assert plain.returncode == 0
    lines = plain.stdout.splitlines()
    assert lines[0] == member_id and f"peer id:   {pid}" in lines
    assert f"bootstrap: /ip4/127.0.0.1/tcp/0/p2p/{pid}" in lines


def test_peer_id_matches_libp2p() -> None:
    from node.net import peer_id_from_public_key
    from protocol.crypto import SigningKey

    for i in range(8):
        public = SigningKey.derive("cli-peer-id", str(i)).public
        assert peer_id(public) == peer_id_from_public_key(public)
    with pytest.raises(ValueError):
        peer_id(b"short")


def test_human_output_shows_the_id(tmp_path: Path, passfile: Path) -> None:
    proc = run("init", "--home", str(tmp_path / "h"), "--passphrase-file", str(passfile))
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"Member id: (z\w+)", proc.stdout)
    assert found, proc.stdout
    assert parse_id(found.group(1))


def test_refuses_to_overwrite_existing_key(tmp_path: Path, passfile: Path) -> None:
    home = tmp_path / "h"
    assert run("init", "--home", str(home), "--passphrase-file", str(passfile)).returncode == 0
    before = (home / "member.key").read_bytes()
    again = run("init", "--home", str(home), "--passphrase-file", str(passfile))
    assert again.returncode == cli.Exit.EXISTS
    assert "refusing to overwrite" in one_error_line(again)
    assert (home / "member.key").read_bytes() == before


def test_environment_passphrase_and_home(tmp_path: Path) -> None:
    home = tmp_path / "via-env"
    env = {PASSPHRASE_ENV: "from the environment", "COMMUNE_HOME": str(home)}
    proc = run("init", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    public = parse_id(json.loads(proc.stdout)["id"])
    assert load_key(home / "member.key", "from the environment").public == public
    assert json.loads(run("id", "--json", env={"COMMUNE_HOME": str(home)}).stdout)["id"] == \
        json.loads(proc.stdout)["id"]


def test_existing_config_is_kept(tmp_path: Path, passfile: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text("[api]\nport = 7123\n")
    proc = run("init", "--home", str(home), "--passphrase-file", str(passfile), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config_created"] is False
    assert load_config(home / "config.toml").api_port == 7123


def test_no_passphrase_source_without_terminal(tmp_path: Path) -> None:
    home = tmp_path / "h"
    proc = run("init", "--home", str(home), new_session=True)
    assert proc.returncode == cli.Exit.USAGE
    line = one_error_line(proc)
    assert "--passphrase-file" in line and PASSPHRASE_ENV in line
    assert not (home / "member.key").exists()


def test_id_without_key(tmp_path: Path) -> None:
    proc = run("id", "--home", str(tmp_path / "empty"))
    assert proc.returncode == cli.Exit.NOT_FOUND
    assert "commune init" in one_error_line(proc)
    assert proc.stdout == ""


def test_id_with_corrupted_key(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "member.key").write_text("{ this is not a key")
    proc = run("id", "--home", str(home), "--json")
    assert proc.returncode == cli.Exit.FAILED
    assert "not valid JSON" in one_error_line(proc)
    assert proc.stdout == ""


def test_usage_errors(tmp_path: Path) -> None:
    proc = run("init", "--home", str(tmp_path / "h"), "--passphrase-file",
               str(tmp_path / "missing"))
    assert proc.returncode == cli.Exit.USAGE
    assert not (tmp_path / "h").exists()
    assert run("id", "--no-such-option").returncode == cli.Exit.USAGE
    assert run("no-such-command").returncode == cli.Exit.USAGE


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "init" in proc.stdout and "id" in proc.stdout


# ---- the shared helpers, in process ------------------------------------------------------


def test_every_exit_code_is_documented() -> None:
    doc = cli.__doc__ or ""
    for code in cli.Exit:
        assert re.search(rf"^\s*{int(code)}\s+{code.name}\s", doc, re.M), code


def test_jsonable_conventions() -> None:
    assert cli.jsonable({"b": b"\x01\xff", "p": Path("/x"), "t": (1, 2), "e": cli.Exit.AUTH,
                         "n": None}) == {"b": "01ff", "p": "/x", "t": [1, 2], "e": 4, "n": None}
    with pytest.raises(TypeError):
        cli.jsonable(object())


def test_emit_json_and_human(capsys: pytest.CaptureFixture[str]) -> None:
    cli.emit({"id": "zabc", "n": 1}, True)
    assert json.loads(capsys.readouterr().out) == {"id": "zabc", "n": 1}
    cli.emit({"id": "zabc"}, False, lambda console, d: console.print(f"id={d['id']}"))
    assert capsys.readouterr().out == "id=zabc\n"


def test_fail_exits_with_its_code(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    @cli.cli.command("test-fail-command")
    def _failing() -> None:
        cli.fail("the daemon is not running; start it with `commune daemon`",
                 cli.Exit.UNREACHABLE)

    try:
        with pytest.raises(SystemExit) as info:
            cli.main(["test-fail-command"])
        assert info.value.code == cli.Exit.UNREACHABLE
        assert capsys.readouterr().err == \
            "error: the daemon is not running; start it with `commune daemon`\n"
    finally:
        cli.cli.commands.pop("test-fail-command")
