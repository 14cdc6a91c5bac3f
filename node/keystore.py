"""The member's Ed25519 seed at rest: a passphrase-encrypted, versioned JSON file.

Format (version 1)::

    {"format": "venture-commune-key", "version": 1,
     "public_key": "z...",                                  # the member id, in clear
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<hex>"},
     "cipher": {"name": "chacha20poly1305", "nonce": "<hex>"},
     "ciphertext": "<hex>"}                                 # seed (32 bytes) + tag (16)

The AEAD's associated data is the canonical msgpack encoding of everything but the
ciphertext, so changing any header field (the public key, the KDF cost, the nonce)
makes decryption fail instead of silently yielding a different key. The public key is
kept in clear so `commune id` works without the passphrase; after decryption it is
checked against the seed as well.

The KDF cost is stored in the file: tests create keys with a cheap `n` and the same
loader reads them. Costs read from a file are bounded, because a crafted key file
must not be able to make the node allocate gigabytes.

Every failure -- missing file, bad JSON, wrong passphrase, tampering -- is a
`KeystoreError` with a message a user can act on; nothing here lets a traceback out.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from node.config import HOME_MODE, fsync_directory, write_new_file, write_temp_beside
from protocol.crypto import PUBLIC_KEY_LEN, SEED_LEN, IdError, SigningKey, id_text, parse_id
from protocol.encoding import encode

FORMAT = "venture-commune-key"
VERSION = 1
KEY_FILE_MODE = 0o600

PASSPHRASE_ENV = "COMMUNE_PASSPHRASE"
"""Environment variable holding the passphrase, for unattended starts."""

MAX_PASSPHRASE_BYTES = 1024
MAX_KEY_FILE_BYTES = 16 * 1024
SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16

_AAD_PREFIX = b"venture-commune/keystore/v1\n"

# Bounds on KDF costs read from a file: generous for real use, small enough that a
# crafted file cannot exhaust memory or CPU.
MIN_SCRYPT_N = 2**4
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY = 1024 * 1024 * 1024
"""128 * n * r bytes; the default costs need 32 MiB."""


class KeystoreError(Exception):
    """A key file or passphrase problem, phrased for the user."""


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost. The default (n=2**15) takes about 0.1 s and 32 MiB per attempt."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def problem(self) -> str | None:
        """Why these costs are refused, or None."""
        for name, value in (("n", self.n), ("r", self.r), ("p", self.p)):
            if type(value) is not int:
                return f"scrypt {name} is not an integer"
        if not MIN_SCRYPT_N <= self.n <= MAX_SCRYPT_N or self.n & (self.n - 1):
            return f"scrypt n={self.n} is not a power of two from {MIN_SCRYPT_N} to {MAX_SCRYPT_N}"
        if not 1 <= self.r <= MAX_SCRYPT_R:
            return f"scrypt r={self.r} is outside 1..{MAX_SCRYPT_R}"
        if not 1 <= self.p <= MAX_SCRYPT_P:
            return f"scrypt p={self.p} is outside 1..{MAX_SCRYPT_P}"
        if 128 * self.n * self.r > MAX_SCRYPT_MEMORY:
            return "scrypt parameters need more memory than allowed"
        return None


DEFAULT_SCRYPT = ScryptParams()


# ---- pure format: build and open a key document --------------------------------------


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    """NFC-normalised UTF-8, so the same passphrase typed on any system opens the file."""
    if isinstance(passphrase, str):
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise KeystoreError(f"passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")
    return passphrase


def _derive(passphrase: bytes, salt: bytes, params: ScryptParams) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
    return kdf.derive(passphrase)


def _header(public_key: bytes, params: ScryptParams, salt: bytes, nonce: bytes) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "public_key": public_key,
        "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": salt},
        "cipher": {"name": "chacha20poly1305", "nonce": nonce},
    }


def _aad(header: dict[str, Any]) -> bytes:
    return _AAD_PREFIX + encode(header)


def seal(seed: bytes, passphrase: str | bytes, salt: bytes, nonce: bytes,
         params: ScryptParams = DEFAULT_SCRYPT) -> dict[str, Any]:
    """The key document for `seed` (JSON-ready). Randomness comes in as arguments."""
    if len(seed) != SEED_LEN:
        raise ValueError("an Ed25519 seed is 32 bytes")
    if len(salt) != SALT_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("salt is 16 bytes and nonce 12")
    problem = params.problem()
    if problem:
        raise ValueError(problem)
    pw = _passphrase_bytes(passphrase)
    if not pw:
        raise KeystoreError("the passphrase is empty; an empty passphrase protects nothing")
    public = SigningKey(seed).public
    header = _header(public, params, salt, nonce)
    ciphertext = ChaCha20Poly1305(_derive(pw, salt, params)).encrypt(nonce, seed, _aad(header))
    return {
        "format": FORMAT,
        "version": VERSION,
        "public_key": id_text(public),
        "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p,
                "salt": salt.hex()},
        "cipher": {"name": "chacha20poly1305", "nonce": nonce.hex()},
        "ciphertext": ciphertext.hex(),
    }


@dataclass(frozen=True)
class _Parsed:
    public_key: bytes
    params: ScryptParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes


def _fields(obj: Any, expected: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise KeystoreError(f"{where} is not an object")
    if set(obj) != expected:
        missing = sorted(expected - set(obj))
        unknown = sorted(set(obj) - expected)
        raise KeystoreError(f"{where} has missing fields {missing} or unknown fields {unknown}")
    return obj


def _hex(value: Any, length: int, where: str) -> bytes:
    if type(value) is not str or len(value) != 2 * length:
        raise KeystoreError(f"{where} must be {length} bytes of hex")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise KeystoreError(f"{where} is not hex") from None


def _parse(doc: Any) -> _Parsed:
    """Structural check of a key document; every problem is a KeystoreError."""
    top = _fields(doc, {"format", "version", "public_key", "kdf", "cipher", "ciphertext"},
                  "the key file")
    if top["format"] != FORMAT:
        raise KeystoreError(f"not a venture-commune key file (format {top['format']!r})")
    if top["version"] != VERSION or type(top["version"]) is not int:
        raise KeystoreError(
            f"key file version {top['version']!r} is not supported (this program reads "
            f"version {VERSION}); use a matching version of commune")
    try:
        public = parse_id(top["public_key"])
    except IdError as exc:
        raise KeystoreError(f"public_key: {exc}") from None
    kdf = _fields(top["kdf"], {"name", "n", "r", "p", "salt"}, "kdf")
    if kdf["name"] != "scrypt":
        raise KeystoreError(f"kdf {kdf['name']!r} is not supported (only scrypt)")
    params = ScryptParams(kdf["n"], kdf["r"], kdf["p"])
    problem = params.problem()
    if problem:
        raise KeystoreError(f"kdf: {problem}")
    cipher = _fields(top["cipher"], {"name", "nonce"}, "cipher")
    if cipher["name"] != "chacha20poly1305":
        raise KeystoreError(f"cipher {cipher['name']!r} is not supported")
    return _Parsed(
        public_key=public,
        params=params,
        salt=_hex(kdf["salt"], SALT_LEN, "kdf.salt"),
        nonce=_hex(cipher["nonce"], NONCE_LEN, "cipher.nonce"),
        ciphertext=_hex(top["ciphertext"], SEED_LEN + TAG_LEN, "ciphertext"),
    )


def unseal(doc: Any, passphrase: str | bytes) -> SigningKey:
    """The signing key in a key document; KeystoreError on a wrong passphrase or tampering."""
    parsed = _parse(doc)
    header = _header(parsed.public_key, parsed.params, parsed.salt, parsed.nonce)
    key = _derive(_passphrase_bytes(passphrase), parsed.salt, parsed.params)
    try:
        seed = ChaCha20Poly1305(key).decrypt(parsed.nonce, parsed.ciphertext, _aad(header))
    except InvalidTag:
        raise KeystoreError("wrong passphrase, or the key file was modified") from None
    signing_key = SigningKey(seed)
    if signing_key.public != parsed.public_key:  # pragma: no cover - the AAD covers it
        raise KeystoreError("the key file is corrupted: its seed does not match its public key")
    return signing_key


# ---- files ---------------------------------------------------------------------------


def _read_doc(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeystoreError(f"no key file at {path}; run `commune init` first") from None
    except IsADirectoryError:
        raise KeystoreError(f"{path} is a directory, not a key file") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeystoreError(f"{path} is too large to be a key file")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise KeystoreError(f"{path} is not a key file (not valid JSON); it may be corrupted") \
            from None


def create_key_file(path: Path, passphrase: str | bytes, *, seed: bytes | None = None,
                    scrypt: ScryptParams = DEFAULT_SCRYPT) -> bytes:
    """Create an encrypted key file (a fresh random key unless `seed` is given).

    Returns the public key. Refuses to overwrite: losing a member key loses the
    member's share, so no code path here replaces one.
    """
    if path.exists() or path.is_symlink():
        raise KeystoreError(f"a key already exists at {path}; refusing to overwrite it")
    try:
        path.parent.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(path.parent.stat().st_mode) != HOME_MODE:
            path.parent.chmod(HOME_MODE)
    except OSError as exc:
        raise KeystoreError(f"cannot prepare {path.parent}: {exc.strerror or exc}") from None
    doc = seal(os.urandom(SEED_LEN) if seed is None else seed, passphrase,
               salt=os.urandom(SALT_LEN), nonce=os.urandom(NONCE_LEN), params=scrypt)
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    try:
        write_new_file(path, data, mode=KEY_FILE_MODE)
    except FileExistsError:
        raise KeystoreError(f"a key already exists at {path}; refusing to overwrite it") \
            from None
    except OSError as exc:
        raise KeystoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    public = parse_id(doc["public_key"])
    assert len(public) == PUBLIC_KEY_LEN
    return public


def change_passphrase(path: Path, old: str | bytes, new: str | bytes) -> bytes:
    """Re-encrypt the key file under `new`; returns the (unchanged) public key.

    The seed is decrypted with `old` (KeystoreError if wrong), sealed again with a fresh
    salt and nonce at the file's own KDF cost, written to a temporary file beside it
    (mode 600, fsynced), checked by decrypting it back, and only then renamed over the
    old file, then the directory is fsynced. The rename is atomic: whenever the process
    stops, the name holds either the old file or the complete new one, never a torn or
    missing key. Symlinks are refused: the rename would replace the link, not its target.
    """
    if path.is_symlink():
        raise KeystoreError(f"{path} is a symbolic link; change the passphrase of the file "
                            "it points to with --home set to that file's directory")
    doc = _read_doc(path)
    parsed = _parse(doc)
    key = unseal(doc, old)
    new_doc = seal(key.seed(), new, salt=os.urandom(SALT_LEN), nonce=os.urandom(NONCE_LEN),
                   params=parsed.params)
    if unseal(new_doc, new).public != parsed.public_key:  # pragma: no cover - seal's bug
        raise KeystoreError("re-encryption did not round-trip; the key file is unchanged")
    data = (json.dumps(new_doc, indent=2) + "\n").encode("utf-8")
    tmp: Path | None = None
    try:
        tmp = write_temp_beside(path, data, KEY_FILE_MODE)
        if unseal(_read_doc(tmp), new).public != parsed.public_key:  # pragma: no cover
            raise KeystoreError("the new key file did not read back; the old one is unchanged")
        os.replace(tmp, path)
    except OSError as exc:
        raise KeystoreError(f"cannot write {path}: {exc.strerror or exc}; the old key file "
                            "is unchanged") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return parsed.public_key


def peer_id(public_key: bytes) -> str:
    """The libp2p peer id of a member's Ed25519 key, as `node.net` derives it.

    An identity multihash of the protobuf-encoded public key (type Ed25519 = 1), in
    base58btc: computed here so `commune id` needs no libp2p import.
    """
    import base58

    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    proto = b"\x08\x01\x12\x20" + bytes(public_key)
    return base58.b58encode(b"\x00" + bytes([len(proto)]) + proto).decode("ascii")


def read_public_key(path: Path) -> bytes:
    """The member id stored in clear in the key file; needs no passphrase."""
    doc = _read_doc(path)
    return _parse(doc).public_key


def load_key(path: Path, passphrase: str | bytes) -> SigningKey:
    """Decrypt the key file. KeystoreError if missing, corrupted, or the passphrase is wrong."""
    return unseal(_read_doc(path), passphrase)


def insecure_permissions(path: Path) -> str | None:
    """Why others could read `path` (group/other bits), or None. For warnings at load."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path} is accessible by other users (mode {mode:o}); run chmod 600 {path}"
    return None


# ---- passphrases -------------------------------------------------------------------------


def read_passphrase_file(path: Path) -> str:
    """The passphrase in a file: its first line, without the line ending."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSPHRASE_BYTES + 2)
    except OSError as exc:
        raise KeystoreError(f"cannot read passphrase file {path}: {exc.strerror or exc}") \
            from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeystoreError(f"passphrase file {path} is not UTF-8 text") from None
    line = text.split("\n", 1)[0].removesuffix("\r")
    if len(line.encode("utf-8")) > MAX_PASSPHRASE_BYTES:
        raise KeystoreError(f"passphrase in {path} is longer than {MAX_PASSPHRASE_BYTES} bytes")
    if not line:
        raise KeystoreError(f"passphrase file {path} is empty")
    return line


def has_terminal() -> bool:
    """Whether getpass can ask someone: a controlling terminal, or stdin is one."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
    os.close(fd)
    return True


def _prompt(text: str) -> str:
    try:
        return getpass.getpass(text, stream=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        raise KeystoreError("no passphrase entered") from None


def get_passphrase(passphrase_file: Path | None = None, *, confirm: bool = False,
                   configured_file: Path | None = None,
                   environ: Mapping[str, str] | None = None,
                   prompt: Callable[[str], str] | None = None) -> str:
    """The passphrase from, in order: `passphrase_file` (a command-line flag),
    $COMMUNE_PASSPHRASE, `configured_file` (the config's `[keys] passphrase_file`),
    then the terminal.

    An explicit flag or variable beats the config file, so a one-off run can override
    it. With `confirm` (key creation) the terminal asks twice. Without any source and
    no terminal, the error says how to provide one instead of hanging.
    """
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    env = os.environ if environ is None else environ
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV]
    if configured_file is not None:
        return read_passphrase_file(configured_file)
    if prompt is None:
        if not has_terminal():
            raise KeystoreError(
                "no passphrase: pass --passphrase-file FILE or set "
                f"{PASSPHRASE_ENV} (there is no terminal to ask on)")
        prompt = _prompt
    first = prompt("New key passphrase: " if confirm else "Key passphrase: ")
    if not first:
        raise KeystoreError("the passphrase is empty")
    if confirm and prompt("Repeat passphrase: ") != first:
        raise KeystoreError("the two passphrases differ; nothing was created")
    return first
