"""Encrypted key files: round trip, wrong passphrase, tampering, permissions, passphrases."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.keystore import (
    DEFAULT_SCRYPT,
    PASSPHRASE_ENV,
    KeystoreError,
    ScryptParams,
    create_key_file,
    get_passphrase,
    insecure_permissions,
    load_key,
    read_passphrase_file,
    read_public_key,
    seal,
    unseal,
)
from protocol.crypto import SigningKey, id_text

CHEAP = ScryptParams(n=2**10, r=8, p=1)
"""Cheap KDF cost for tests; the loader reads the cost from the file."""
PASS = "correct horse battery staple"
SEED = bytes(range(32))


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "member.key"
    create_key_file(path, PASS, seed=SEED, scrypt=CHEAP)
    return path


def test_round_trip(key_path: Path) -> None:
    key = load_key(key_path, PASS)
    assert key.seed() == SEED
    assert read_public_key(key_path) == SigningKey(SEED).public == key.public


def test_default_cost_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "member.key"
    public = create_key_file(path, PASS)
    assert json.loads(path.read_text())["kdf"]["n"] == DEFAULT_SCRYPT.n == 2**15
    assert load_key(path, PASS).public == public


def test_random_keys_differ(tmp_path: Path) -> None:
    a = create_key_file(tmp_path / "a.key", PASS, scrypt=CHEAP)
    b = create_key_file(tmp_path / "b.key", PASS, scrypt=CHEAP)
    assert a != b


def test_wrong_passphrase(key_path: Path) -> None:
    for wrong in ["", "correct horse battery stapl", PASS + " ", PASS.upper()]:
        with pytest.raises(KeystoreError, match="wrong passphrase"):
            load_key(key_path, wrong)


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    composed = unicodedata.normalize("NFC", "café crème")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    path = tmp_path / "k"
    create_key_file(path, composed, scrypt=CHEAP)
    load_key(path, decomposed)
    load_key(path, composed.encode("utf-8"))


def test_refuses_to_overwrite(key_path: Path) -> None:
    before = key_path.read_bytes()
    with pytest.raises(KeystoreError, match="already exists"):
        create_key_file(key_path, "another", scrypt=CHEAP)
    assert key_path.read_bytes() == before


def test_refuses_to_overwrite_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    link = tmp_path / "member.key"
    link.symlink_to(target)
    with pytest.raises(KeystoreError, match="already exists"):
        create_key_file(link, PASS, scrypt=CHEAP)
    assert target.read_text() == "precious"


def test_no_temporary_files_left(key_path: Path) -> None:
    assert [p.name for p in key_path.parent.iterdir()] == ["member.key"]


def test_empty_passphrase_refused_at_creation(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="empty"):
        create_key_file(tmp_path / "k", "", scrypt=CHEAP)
    assert not (tmp_path / "k").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="commune init"):
        load_key(tmp_path / "nope", PASS)
    with pytest.raises(KeystoreError, match="commune init"):
        read_public_key(tmp_path / "nope")
    with pytest.raises(KeystoreError, match="directory"):
        read_public_key(tmp_path)


def test_seal_is_deterministic_given_its_randomness() -> None:
    a = seal(SEED, PASS, salt=b"s" * 16, nonce=b"n" * 12, params=CHEAP)
    b = seal(SEED, PASS, salt=b"s" * 16, nonce=b"n" * 12, params=CHEAP)
    assert a == b
    assert unseal(a, PASS).seed() == SEED
    assert a["public_key"] == id_text(SigningKey(SEED).public)


# ---- tampering ------------------------------------------------------------------------


def _doc(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _write(path: Path, doc: Any) -> None:
    path.chmod(0o600)
    path.write_text(json.dumps(doc))


def _flip_hex(text: str, i: int = 0) -> str:
    c = "1" if text[i] != "1" else "2"
    return text[:i] + c + text[i + 1:]


OTHER_ID = id_text(SigningKey.derive("someone else").public)

TAMPERINGS: dict[str, Any] = {
    "ciphertext byte": lambda d: d.update(ciphertext=_flip_hex(d["ciphertext"], 5)),
    "tag byte": lambda d: d.update(ciphertext=_flip_hex(d["ciphertext"], 90)),
    "nonce": lambda d: d["cipher"].update(nonce=_flip_hex(d["cipher"]["nonce"])),
    "salt": lambda d: d["kdf"].update(salt=_flip_hex(d["kdf"]["salt"])),
    "public key swapped": lambda d: d.update(public_key=OTHER_ID),
    "cheaper n": lambda d: d["kdf"].update(n=2**9),
    "different r": lambda d: d["kdf"].update(r=4),
}


@pytest.mark.parametrize("change", list(TAMPERINGS.values()), ids=list(TAMPERINGS))
def test_tampered_file_fails_to_decrypt(key_path: Path, change: Any) -> None:
    doc = _doc(key_path)
    change(doc)
    _write(key_path, doc)
    with pytest.raises(KeystoreError, match="wrong passphrase, or the key file was modified"):
        load_key(key_path, PASS)


MALFORMED: dict[str, Any] = {
    "not json": b"{not json",
    "empty": b"",
    "binary": b"\xff\xfe\x00",
    "json list": b"[]",
    "truncated": None,  # filled in by the test: half of the real file
    "wrong format": lambda d: d.update(format="something-else"),
    "future version": lambda d: d.update(version=2),
    "bool version": lambda d: d.update(version=True),
    "unknown field": lambda d: d.update(extra=1),
    "missing field": lambda d: d.pop("cipher"),
    "bad public key": lambda d: d.update(public_key="not-an-id"),
    "other kdf": lambda d: d["kdf"].update(name="pbkdf2"),
    "other cipher": lambda d: d["cipher"].update(name="aes-gcm"),
    "n not a power of two": lambda d: d["kdf"].update(n=1000),
    "n huge": lambda d: d["kdf"].update(n=2**40),
    "n as text": lambda d: d["kdf"].update(n="32768"),
    "p huge": lambda d: d["kdf"].update(p=10**6),
    "r zero": lambda d: d["kdf"].update(r=0),
    "memory bomb": lambda d: d["kdf"].update(n=2**20, r=32),
    "short salt": lambda d: d["kdf"].update(salt="00"),
    "salt not hex": lambda d: d["kdf"].update(salt="zz" * 16),
    "short ciphertext": lambda d: d.update(ciphertext=d["ciphertext"][:-2]),
    "ciphertext number": lambda d: d.update(ciphertext=7),
    "kdf not a map": lambda d: d.update(kdf="scrypt"),
}


@pytest.mark.parametrize("change", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_file_is_a_clear_error(key_path: Path, change: Any) -> None:
    if change is None:
        key_path.write_bytes(key_path.read_bytes()[:100])
    elif isinstance(change, bytes):
        key_path.write_bytes(change)
    else:
        doc = _doc(key_path)
        change(doc)
        _write(key_path, doc)
    with pytest.raises(KeystoreError):
        load_key(key_path, PASS)


def test_oversized_file_refused(key_path: Path) -> None:
    key_path.write_bytes(b" " * 100_000)
    with pytest.raises(KeystoreError, match="too large"):
        read_public_key(key_path)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_byte_flip_fails_cleanly_or_changes_nothing(key_path: Path,
                                                        data: st.DataObject) -> None:
    original = key_path.read_bytes()
    raw = bytearray(original)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    key_path.write_bytes(bytes(raw))
    try:
        key = load_key(key_path, PASS)
    except KeystoreError:
        pass
    else:  # e.g. a hex digit changed case: same bytes, same key
        assert key.seed() == SEED
    finally:
        key_path.write_bytes(original)


# ---- permissions --------------------------------------------------------------------------


def test_file_and_directory_modes(key_path: Path) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert insecure_permissions(key_path) is None
    key_path.chmod(0o644)
    assert "chmod 600" in (insecure_permissions(key_path) or "")


def test_mode_holds_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "loose" / "member.key"
        create_key_file(path, PASS, scrypt=CHEAP)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    create_key_file(home / "member.key", PASS, scrypt=CHEAP)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory other users can enter, so only the key's own modes protect it."""
    d = Path(tempfile.mkdtemp(prefix="commune-keystore-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _readable_by_nobody(path: Path) -> bool:
    # cat, not Python: the interpreter may live where other users cannot run it.
    cat = shutil.which("cat") or "/bin/cat"
    proc = subprocess.run([cat, str(path)], user=65534, group=65534, extra_groups=[],
                          capture_output=True, timeout=60)
    return proc.returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="switching to another user needs root; modes are checked above")
def test_other_users_cannot_read_the_key(world_traversable_dir: Path) -> None:
    home = world_traversable_dir / "home"
    key = home / "member.key"
    create_key_file(key, PASS, scrypt=CHEAP)
    control = world_traversable_dir / "public.txt"
    control.write_text("anyone may read this")
    control.chmod(0o644)
    assert _readable_by_nobody(control), "the check itself is broken"
    assert not _readable_by_nobody(key)
    home.chmod(0o755)  # even if someone loosens the directory, the file stays private
    assert not _readable_by_nobody(key)


# ---- passphrase sources ---------------------------------------------------------------------


def test_passphrase_file_first_line_without_line_ending(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    for content, expected in [(b"secret\n", "secret"), (b"secret\r\n", "secret"),
                              (b"secret", "secret"), (b"with space \nsecond", "with space ")]:
        f.write_bytes(content)
        assert read_passphrase_file(f) == expected


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"\n", "empty"), (b"\xff\xfe", "UTF-8"), (b"x" * 2000, "longer"),
])
def test_bad_passphrase_files(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "pw"
    f.write_bytes(content)
    with pytest.raises(KeystoreError, match=message):
        read_passphrase_file(f)
    with pytest.raises(KeystoreError, match="cannot read"):
        read_passphrase_file(tmp_path / "missing")


def _no_prompt(text: str) -> str:
    raise AssertionError("must not prompt")


def test_passphrase_sources_in_order(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    env = {PASSPHRASE_ENV: "from-env"}
    configured = tmp_path / "configured"
    configured.write_text("from-config\n")
    assert get_passphrase(f, environ=env, prompt=_no_prompt) == "from-file"
    assert get_passphrase(f, configured_file=configured, environ=env,
                          prompt=_no_prompt) == "from-file"
    assert get_passphrase(None, configured_file=configured, environ=env,
                          prompt=_no_prompt) == "from-env"
    assert get_passphrase(None, configured_file=configured, environ={},
                          prompt=_no_prompt) == "from-config"
    assert get_passphrase(None, environ=env, prompt=_no_prompt) == "from-env"
    assert get_passphrase(None, environ={}, prompt=lambda _: "typed") == "typed"


def test_prompt_asks_twice_on_creation() -> None:
    answers = iter(["one", "one"])
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return next(answers)

    assert get_passphrase(None, confirm=True, environ={}, prompt=prompt) == "one"
    assert len(asked) == 2
    answers = iter(["one", "two"])
    with pytest.raises(KeystoreError, match="differ"):
        get_passphrase(None, confirm=True, environ={}, prompt=lambda _: next(answers))
    with pytest.raises(KeystoreError, match="empty"):
        get_passphrase(None, confirm=False, environ={}, prompt=lambda _: "")


def test_no_source_and_no_terminal_is_a_clear_error() -> None:
    code = ("from node.keystore import get_passphrase, KeystoreError\n"
            "try:\n    get_passphrase(None, environ={})\n"
            "except KeystoreError as e:\n    print(e)\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, start_new_session=True)
    assert "--passphrase-file" in proc.stdout and PASSPHRASE_ENV in proc.stdout, proc


def test_unwritable_location_is_a_keystore_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KeystoreError, match="cannot"):
        create_key_file(blocker / "home" / "member.key", PASS, scrypt=CHEAP)
