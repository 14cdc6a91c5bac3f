"""The node's data directory, its file layout, and its TOML config file.

Every command and the daemon find their files through `Paths`, so the layout is
decided once. The config file is declared as data (`SETTINGS`): the commented
template written by `commune init` and the validator that reads the file back both
come from that one table, so they cannot drift apart. Reading is strict: an unknown
key or a value of the wrong type is an error naming the exact key, because a typo
silently ignored in a daemon's config is a misconfigured node nobody notices.

Adding a setting: add a field to `Config` and a `Setting` row naming it; the template,
the validation and the tests follow.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

APP_NAME = "venture-commune"
HOME_ENV = "COMMUNE_HOME"
"""Environment variable naming the data directory when `--home` is not given."""

HOME_MODE = 0o700
"""The data directory holds the encrypted key, the API token and the ledger: owner only."""

# ---- layout of the data directory ------------------------------------------------------

KEY_FILE = "member.key"
"""Encrypted Ed25519 seed (node/keystore.py); its public key is readable without a passphrase."""
CONFIG_FILE = "config.toml"
"""Commented TOML settings (this module)."""
DB_FILE = "ledger.sqlite"
"""Blocks, certificates and state (SQLite, WAL mode)."""
GENESIS_FILE = "genesis.json"
"""The genesis document of the commune this node belongs to."""
SIGN_LOG_FILE = "signed.log"
"""Write-ahead log of everything this node signed in consensus (no double signing)."""
TOKEN_FILE = "api.token"
"""Bearer token of the local control API, mode 0600."""
API_ENDPOINT_FILE = "api.json"
"""Address the running daemon's control API actually bound to (the port may be 0 in config)."""
PID_FILE = "daemon.pid"
"""Process id of the running daemon: one daemon per data directory."""
LOG_DIR = "logs"
"""Structured log files of the daemon."""


def default_home() -> Path:
    """Per-user default data directory (e.g. ~/.local/share/venture-commune on Linux)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def resolve_home(home: str | os.PathLike[str] | None,
                 environ: Mapping[str, str] | None = None) -> Path:
    """`--home` wins, then $COMMUNE_HOME, then the per-user default; always absolute."""
    env = os.environ if environ is None else environ
    if home is not None and str(home) != "":
        chosen = Path(home)
    elif env.get(HOME_ENV):
        chosen = Path(env[HOME_ENV])
    else:
        chosen = default_home()
    return chosen.expanduser().absolute()


@dataclass(frozen=True)
class Paths:
    """Where each file of one data directory lives."""

    home: Path

    @property
    def key(self) -> Path:
        return self.home / KEY_FILE

    @property
    def config(self) -> Path:
        return self.home / CONFIG_FILE

    @property
    def db(self) -> Path:
        return self.home / DB_FILE

    @property
    def genesis(self) -> Path:
        return self.home / GENESIS_FILE

    @property
    def sign_log(self) -> Path:
        return self.home / SIGN_LOG_FILE

    @property
    def token(self) -> Path:
        return self.home / TOKEN_FILE

    @property
    def api_endpoint(self) -> Path:
        return self.home / API_ENDPOINT_FILE

    @property
    def pid(self) -> Path:
        return self.home / PID_FILE

    @property
    def logs(self) -> Path:
        return self.home / LOG_DIR


def ensure_home(home: Path) -> None:
    """Create the data directory owner-only, and tighten it if it already exists.

    Tightening an existing directory is deliberate: it will hold a key and a token,
    so a directory others can list or enter is a leak waiting to happen.
    """
    home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
    if not home.is_dir():
        raise ConfigError(f"{home} exists and is not a directory")
    mode = home.stat().st_mode & 0o777
    if mode != HOME_MODE:
        home.chmod(HOME_MODE)


# ---- settings ----------------------------------------------------------------------------


class ConfigError(ValueError):
    """An unreadable or invalid config file; the message names the file and the key."""


Check = Callable[[Any], str | None]
"""Returns why a value is invalid, or None when it is fine."""


def _is_int(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not int or not lo <= v <= hi:
            return f"expected an integer from {lo} to {hi}"
        return None
    return check


def _is_bool(v: Any) -> str | None:
    return None if type(v) is bool else "expected true or false"


def _is_str(max_len: int = 4096) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not str:
            return "expected a string"
        if len(v) > max_len:
            return f"longer than {max_len} characters"
        return None
    return check


def _is_choice(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not str or v not in choices:
            return "expected one of " + ", ".join(repr(c) for c in choices)
        return None
    return check


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _is_loopback_host(v: Any) -> str | None:
    if type(v) is not str or v not in _LOOPBACK:
        return "expected a loopback address (127.0.0.1, ::1 or localhost)"
    return None


def _is_host(v: Any) -> str | None:
    if type(v) is not str or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]{1,255}", v):
        return "expected a host name or IP address"
    return None


def _multiaddr_problem(text: str, need_peer: bool) -> str | None:
    import multiaddr  # installed with libp2p; imported here to keep CLI start-up fast

    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # the library raises several unrelated types
        return f"{text!r} is not a multiaddr ({exc})"
    names = [p.name for p in addr.protocols()]
    if need_peer and "p2p" not in names:
        return f"{text!r} has no /p2p/<peer id> part"
    return None


def _is_multiaddr_list(need_peer: bool, max_items: int = 64) -> Check:
    def check(v: Any) -> str | None:
        if type(v) is not list or not all(type(x) is str for x in v):
            return "expected a list of multiaddr strings"
        if len(v) > max_items:
            return f"more than {max_items} addresses"
        for text in v:
            problem = _multiaddr_problem(text, need_peer)
            if problem:
                return problem
        return None
    return check


def _is_announce_list(v: Any) -> str | None:
    """[network] announce: what peers dial, so TCP and without a peer id (ours is added)."""
    problem = _is_multiaddr_list(need_peer=False, max_items=16)(v)
    for text in v if problem is None else ():
        if "/tcp/" not in text or "/p2p/" in text:
            return f"{text!r} is not a TCP address without /p2p/<peer id>"
    return problem


def _non_empty(check: Check) -> Check:
    def wrapped(v: Any) -> str | None:
        problem = check(v)
        if problem is None and len(v) == 0:
            return "must not be empty"
        return problem
    return wrapped


@dataclass(frozen=True)
class Setting:
    """One key of the config file: where it lives, its default, its check, its comment."""

    section: str
    key: str
    attr: str
    default: Any
    check: Check
    comment: str


LOG_LEVELS = ("debug", "info", "warning", "error")

SETTINGS: tuple[Setting, ...] = (
    Setting("network", "listen", "listen", ["/ip4/127.0.0.1/tcp/0"],
            _non_empty(_is_multiaddr_list(need_peer=False)),
            "libp2p listen addresses (multiaddrs). tcp/0 picks a free port.\n"
            "To accept peers from other machines: [\"/ip4/0.0.0.0/tcp/4001\"]"),
    Setting("network", "bootstrap", "bootstrap", [],
            _is_multiaddr_list(need_peer=True),
            "Peers dialled at start, each with its peer id, e.g.\n"
            "\"/ip4/192.0.2.10/tcp/4001/p2p/12D3KooW...\""),
    Setting("network", "announce", "announce", [], _is_announce_list,
            "Addresses given to peers instead of the bound ones (TCP, no /p2p part), for\n"
            "a node behind NAT or a proxy, e.g. [\"/ip4/203.0.113.7/tcp/4001\"].\n"
            "Empty: the listen addresses, a wildcard (0.0.0.0) replaced by this machine's."),
    Setting("api", "host", "api_host", "127.0.0.1", _is_loopback_host,
            "Local control API used by the `commune` command. Loopback only:\n"
            "it is authenticated by the token file in the data directory."),
    Setting("api", "port", "api_port", 0, _is_int(0, 65535),
            "0 picks a free port; the daemon records the one it bound in api.json."),
    Setting("metrics", "enabled", "metrics_enabled", False, _is_bool,
            "Prometheus metrics endpoint."),
    Setting("metrics", "host", "metrics_host", "127.0.0.1", _is_host, ""),
    Setting("metrics", "port", "metrics_port", 9464, _is_int(0, 65535), ""),
    Setting("log", "level", "log_level", "info", _is_choice(*LOG_LEVELS),
            "One of: " + ", ".join(LOG_LEVELS) + "."),
    Setting("dividends", "auto_claim", "auto_claim", True, _is_bool,
            "Sign this member's dividend claims automatically at every period close."),
    Setting("keys", "passphrase_file", "passphrase_file", "", _is_str(),
            "File holding the key passphrase, for unattended daemon start (mode 0600).\n"
            "Empty: use $COMMUNE_PASSPHRASE, else ask on the terminal.\n"
            "A relative path is relative to the data directory."),
    Setting("daemon", "stop_timeout", "stop_timeout", 15, _is_int(1, 600),
            "Seconds a graceful stop (SIGINT/SIGTERM) may take before the daemon exits\n"
            "anyway, leaving its files as kill -9 would (the next start recovers).\n"
            "A second signal exits at once, the same way."),
)

SECTION_COMMENTS = {
    "network": "Peer-to-peer network (libp2p over TCP, Noise, Yamux).",
    "api": "",
    "metrics": "",
    "log": "",
    "dividends": "",
    "keys": "",
    "daemon": "",
}


@dataclass(frozen=True)
class Config:
    """Validated settings of one node. Build with `load_config` or `defaults()`."""

    listen: tuple[str, ...]
    bootstrap: tuple[str, ...]
    announce: tuple[str, ...]
    api_host: str
    api_port: int
    metrics_enabled: bool
    metrics_host: str
    metrics_port: int
    log_level: str
    auto_claim: bool
    passphrase_file: Path | None
    stop_timeout: int

    @classmethod
    def defaults(cls, home: Path | None = None) -> Config:
        return _build({s.attr: s.default for s in SETTINGS}, home)


def _build(values: Mapping[str, Any], home: Path | None) -> Config:
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    pf = kwargs.get("passphrase_file", "")
    if pf:
        p = Path(pf).expanduser()
        if not p.is_absolute() and home is not None:
            p = home / p
        kwargs["passphrase_file"] = p
    else:
        kwargs["passphrase_file"] = None
    return Config(**kwargs)


def _setting(section: str, key: str) -> Setting | None:
    for s in SETTINGS:
        if s.section == section and s.key == key:
            return s
    return None


def _toml_value(value: Any) -> str:
    """A value rendered as TOML, via tomli_w so quoting and escapes are right."""
    line = tomli_w.dumps({"v": value})
    assert line.startswith("v = ")
    return line[4:].rstrip("\n")


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()] if text else []


def render_config(overrides: Mapping[str, Any] | None = None) -> str:
    """The commented config file, with `overrides` (by `Config` attribute name) applied.

    Overrides are validated like a file's values, so a launcher (the devnet) cannot
    write a config the daemon would refuse.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {s.attr for s in SETTINGS})
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    out = [
        "# venture-commune node configuration.",
        "# Written by `commune init`; edit freely. Unknown keys are rejected, so a typo",
        "# is reported when the daemon starts instead of being silently ignored.",
    ]
    section = None
    for s in SETTINGS:
        value = overrides.get(s.attr, s.default)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, Path):
            value = str(value)
        if value is None and s.attr == "passphrase_file":
            value = ""
        problem = s.check(value)
        if problem:
            raise ConfigError(f"[{s.section}] {s.key}: {problem}")
        if s.section != section:
            section = s.section
            out.append("")
            out.extend(_comment(SECTION_COMMENTS.get(section, "")))
            out.append(f"[{section}]")
        out.extend(_comment(s.comment))
        out.append(f"{s.key} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def parse_config(text: str, source: str = "config", home: Path | None = None) -> Config:
    """Validate TOML text against `SETTINGS`; missing keys take their defaults."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    values = {s.attr: s.default for s in SETTINGS}
    sections = {s.section for s in SETTINGS}
    for section, table in doc.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section} must be a [{section}] table")
        for key, value in table.items():
            s = _setting(section, key)
            if s is None:
                raise ConfigError(f"{source}: unknown key [{section}] {key}")
            problem = s.check(value)
            if problem:
                raise ConfigError(f"{source}: [{section}] {key}: {problem}, got {value!r}")
            values[s.attr] = value
    return _build(values, home)


def load_config(path: Path, home: Path | None = None) -> Config:
    """Read and validate a config file; `home` anchors relative paths (default: its dir)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}; run `commune init` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, str(path), home if home is not None else path.parent)


def write_config(path: Path, overrides: Mapping[str, Any] | None = None) -> None:
    """Write a fresh commented config; refuses to replace an existing one."""
    try:
        write_new_file(path, render_config(overrides).encode("utf-8"), mode=0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not overwriting it") from None


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `data` atomically and durably; FileExistsError if it exists.

    The data goes to a temporary file in the same directory (created with `mode`, so it
    is never readable by others, not even for an instant), is fsynced, then hard-linked
    to its name: unlike rename, a link never replaces an existing file, so two
    concurrent writers cannot clobber each other. The directory is fsynced last so the
    new name survives a crash.
    """
    tmp = write_temp_beside(path, data, mode)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: check, then rename
            if path.exists():
                raise FileExistsError(path) from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_temp_beside(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a fresh temporary file next to `path` (created with `mode`), fsynced.

    The caller links or renames it into place and removes it in any case; the file is
    never readable by others, not even for an instant (the umask may remove bits from
    `mode`, never add them, and fchmod restores the ones it removed).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def fsync_directory(directory: Path) -> None:
    """Make a name created or replaced in `directory` survive a crash."""
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def config_fields() -> set[str]:
    """Attribute names of `Config`, for the test that keeps `SETTINGS` complete."""
    return {f.name for f in fields(Config)}
