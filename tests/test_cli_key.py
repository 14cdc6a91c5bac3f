"""`commune key passphrase`: re-encrypting the member key, atomically, through the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

import cli
from node import keystore
from node.config import Paths, write_config
from protocol.crypto import SigningKey, id_text
from tests.test_cli_init import one_error_line, run

OLD = "the old passphrase"
NEW = "a brand new passphrase"
CHEAP = keystore.ScryptParams(n=2**4, r=1, p=1)
KEY = SigningKey.derive("cli-key", "member")


def passfile(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_text(text + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "member"
    keystore.create_key_file(Paths(h).key, OLD, seed=KEY.seed(), scrypt=CHEAP)
    return h


def change(home: Path, old: Path, new: Path | None, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = ["key", "passphrase", "--home", str(home), "--passphrase-file", str(old)]
    if new is not None:
        args += ["--new-passphrase-file", str(new)]
    return run(*args, *extra, env=env, new_session=True)


def test_change_then_only_the_new_passphrase_opens_it(home: Path, tmp_path: Path) -> None:
    key_file = Paths(home).key
    proc = change(home, passfile(tmp_path, "old", OLD), passfile(tmp_path, "new", NEW),
                  "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"id": id_text(KEY.public), "key_file": str(key_file), "changed": True}
    assert keystore.load_key(key_file, NEW).public == KEY.public
    with pytest.raises(keystore.KeystoreError, match="wrong passphrase"):
        keystore.load_key(key_file, OLD)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["member.key"]  # no temporary left
    doc = json.loads(key_file.read_text())
    assert doc["kdf"]["n"] == CHEAP.n  # the file's own cost is kept

    human = change(home, passfile(tmp_path, "old2", NEW), passfile(tmp_path, "new2", OLD))
    assert human.returncode == 0
    assert "Changed the passphrase" in human.stdout
    assert keystore.load_key(key_file, OLD).public == KEY.public


def test_refusals_leave_the_file_untouched(home: Path, tmp_path: Path) -> None:
    key_file = Paths(home).key
    before = key_file.read_bytes()
    wrong = change(home, passfile(tmp_path, "wrong", "not it"), passfile(tmp_path, "n", NEW))
    assert wrong.returncode == cli.Exit.AUTH
    line = one_error_line(wrong)
    assert "wrong passphrase" in line and "came from --passphrase-file" in line
    same = change(home, passfile(tmp_path, "o", OLD), passfile(tmp_path, "s", OLD))
    assert same.returncode == cli.Exit.USAGE
    assert "same as the current" in one_error_line(same)
    no_new = change(home, passfile(tmp_path, "o2", OLD), None)
    assert no_new.returncode == cli.Exit.USAGE
    assert "--new-passphrase-file" in one_error_line(no_new)
    missing = change(tmp_path / "nobody", passfile(tmp_path, "o3", OLD),
                     passfile(tmp_path, "n3", NEW))
    assert missing.returncode == cli.Exit.NOT_FOUND
    assert key_file.read_bytes() == before


def test_warns_about_the_configured_passphrase_file(home: Path, tmp_path: Path) -> None:
    configured = passfile(home, "daemon.pass", OLD)
    write_config(Paths(home).config, {"passphrase_file": str(configured)})
    proc = change(home, passfile(tmp_path, "old", OLD), passfile(tmp_path, "new", NEW))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: the daemon reads its passphrase from {configured}" in proc.stderr


def test_interrupted_before_the_rename_keeps_the_old_file(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = Paths(home).key
    before = key_file.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(keystore.KeystoreError, match="old key file is unchanged"):
        keystore.change_passphrase(key_file, OLD, NEW)
    assert key_file.read_bytes() == before
    assert sorted(p.name for p in home.iterdir()) == ["member.key"]
    monkeypatch.undo()
    assert keystore.change_passphrase(key_file, OLD, NEW) == KEY.public
    assert keystore.load_key(key_file, NEW).public == KEY.public


def test_symlinked_key_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    keystore.create_key_file(real, OLD, seed=KEY.seed(), scrypt=CHEAP)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(keystore.KeystoreError, match="symbolic link"):
        keystore.change_passphrase(link, OLD, NEW)
    assert keystore.load_key(real, OLD).public == KEY.public
