"""The `commune` command.

Conventions every command follows (later commands too):

- `--home DIR` picks the data directory (else $COMMUNE_HOME, else the per-user default).
- Commands that print data take `--json`: one JSON document on stdout, stable keys,
  ids in their text form ("z..."), other bytes in hex. Without it, human output (rich).
- Errors are one line on stderr, `error: <what went wrong>; <what to do>`, and a
  stable exit code. Tracebacks are for bugs only (set COMMUNE_DEBUG=1 to see them).

Exit codes (`Exit`):

    0  OK           success
    1  FAILED       the operation failed or was rejected (invalid transaction,
                    verification or audit failure, ...)
    2  USAGE        bad command line: unknown option, missing or malformed argument
    3  UNREACHABLE  the daemon is not running or its control API cannot be reached
    4  AUTH         wrong passphrase, missing or rejected API token, permission denied
    5  NOT_FOUND    no such data directory, key, config, or ledger object
    6  EXISTS       refusing to overwrite something that exists (a key, a genesis)
    7  TIMEOUT      waited too long (e.g. for a transaction to commit)
   70  INTERNAL     a bug: an unexpected exception
  130  INTERRUPTED  stopped by Ctrl-C

Layout of this file: shared helpers first, then one clearly marked section per group
of commands. Add new commands in a new section at the end of the file, using
`home_option`, `json_option`, `emit` and `fail`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from node import config as node_config
from node import keystore
from protocol.crypto import id_text

# =========================================================================================
# Shared helpers: exit codes, errors, output, common options
# =========================================================================================


class Exit(enum.IntEnum):
    """Stable exit codes; scripts may rely on them (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH = 4
    NOT_FOUND = 5
    EXISTS = 6
    TIMEOUT = 7
    INTERNAL = 70
    INTERRUPTED = 130


class CommandError(Exception):
    """Raised (through `fail`) to end a command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: Exit = Exit.FAILED) -> NoReturn:
    """End the command: `message` should say what went wrong and what to do about it."""
    raise CommandError(message, code)


stdout_console = Console(highlight=False, soft_wrap=True)
stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)


def jsonable(value: Any) -> Any:
    """Plain JSON data: bytes as hex, paths as text, enums as values, tuples as lists.

    Ids should be converted with `id_text` by the command before this, since bytes
    alone do not say whether they are an id (text form) or a hash (hex).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # pragma: no cover - only for display values like rates/s
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


T = TypeVar("T")


def emit(data: T, as_json: bool, human: Callable[[Console, T], None] | None = None) -> None:
    """Print a command's result: JSON for scripts, or `human(console, data)` for people."""
    if as_json:
        sys.stdout.write(json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    elif human is not None:
        human(stdout_console, data)
    else:
        stdout_console.print_json(json.dumps(jsonable(data), sort_keys=True))


def warn(message: str) -> None:
    """A non-fatal note for the user, on stderr so it never pollutes `--json` output."""
    stderr_console.print(f"warning: {message}", markup=False)


F = TypeVar("F", bound=Callable[..., Any])


def home_option(f: F) -> F:
    """`--home DIR`: every command that touches a data directory takes it."""
    return click.option(
        "--home", "home", type=click.Path(file_okay=False, path_type=Path), default=None,
        help=f"Data directory (default: ${node_config.HOME_ENV}, else "
             f"{node_config.default_home()}).",
    )(f)


def json_option(f: F) -> F:
    """`--json`: every command that prints data takes it."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON instead of text.")(f)


def passphrase_file_option(f: F) -> F:
    return click.option(
        "--passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"Read the key passphrase from this file (else ${keystore.PASSPHRASE_ENV}, "
             "else ask on the terminal).",
    )(f)


def resolve_paths(home: Path | None) -> node_config.Paths:
    return node_config.Paths(node_config.resolve_home(home))


def require_key(paths: node_config.Paths) -> bytes:
    """The member's public key, or a clear NOT_FOUND error pointing at `commune init`."""
    if not paths.key.exists():
        fail(f"no member key in {paths.home}; create one with `commune init --home "
             f"{paths.home}`", Exit.NOT_FOUND)
    try:
        return keystore.read_public_key(paths.key)
    except keystore.KeystoreError as exc:
        fail(str(exc), Exit.FAILED)


# =========================================================================================
# The root group and the entry point
# =========================================================================================


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="venture-commune", prog_name="commune")
def cli() -> None:
    """A node of a venture commune: a worker-owned fund run by its members' computers.

    Start with `commune init`, then `commune id`. Every command takes --home to choose
    the data directory; commands that print data take --json.
    """


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: runs `cli` and turns every outcome into an exit code."""
    debug = os.environ.get("COMMUNE_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="commune",
                      standalone_mode=False)
    except CommandError as exc:
        stderr_console.print(f"error: {exc.message}", markup=False)
        sys.exit(int(exc.code))
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(int(Exit.USAGE))
    except click.ClickException as exc:
        exc.show()
        sys.exit(int(Exit.FAILED) if exc.exit_code == 1 else exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        stderr_console.print("interrupted", markup=False)
        sys.exit(int(Exit.INTERRUPTED))
    except BrokenPipeError:
        # `commune ... | head`: the reader left; not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(int(Exit.OK))
    except Exception as exc:
        if debug:
            traceback.print_exc()
        stderr_console.print(
            f"error: internal error ({type(exc).__name__}: {exc}); this is a bug, please "
            "report it (set COMMUNE_DEBUG=1 for the traceback)", markup=False)
        sys.exit(int(Exit.INTERNAL))
    sys.exit(rv if isinstance(rv, int) else int(Exit.OK))


# =========================================================================================
# Keys and data directory: init, id
# =========================================================================================


@cli.command()
@home_option
@passphrase_file_option
@json_option
def init(home: Path | None, passphrase_file: Path | None, as_json: bool) -> None:
    """Create the data directory, an encrypted member key and a commented config file.

    Prints the new member id. Never overwrites an existing key; an existing config
    file is kept as it is.
    """
    paths = resolve_paths(home)
    if paths.key.exists() or paths.key.is_symlink():
        try:
            existing = f" (member id {id_text(keystore.read_public_key(paths.key))})"
        except keystore.KeystoreError:
            existing = ""
        fail(f"a member key already exists at {paths.key}{existing}; refusing to overwrite "
             "it. Use another --home for a new member.", Exit.EXISTS)
    if paths.home.exists() and not paths.home.is_dir():
        fail(f"{paths.home} exists and is not a directory; choose another --home", Exit.USAGE)
    try:
        passphrase = keystore.get_passphrase(passphrase_file, confirm=True)
    except keystore.KeystoreError as exc:
        fail(str(exc), Exit.USAGE)
    try:
        node_config.ensure_home(paths.home)
    except (OSError, node_config.ConfigError) as exc:
        fail(f"cannot create the data directory {paths.home}: {exc}", Exit.FAILED)
    try:
        public = keystore.create_key_file(paths.key, passphrase)
    except keystore.KeystoreError as exc:
        code = Exit.EXISTS if "already exists" in str(exc) else Exit.FAILED
        fail(str(exc), code)
    config_created = not paths.config.exists()
    if config_created:
        try:
            node_config.write_config(paths.config)
        except (OSError, node_config.ConfigError) as exc:
            fail(f"the key was created, but writing {paths.config} failed: {exc}; "
                 "run `commune init` again to create the config", Exit.FAILED)
    result = {"id": id_text(public), "home": paths.home, "key_file": paths.key,
              "config_file": paths.config, "config_created": config_created}

    def human(console: Console, r: dict[str, Any]) -> None:
        console.print(f"Created member key [bold]{r['key_file']}[/] (encrypted, mode 600)")
        if r["config_created"]:
            console.print(f"Wrote config {r['config_file']}")
        else:
            console.print(f"Kept existing config {r['config_file']}")
        console.print(f"Member id: [bold green]{r['id']}[/]")

    emit(result, as_json, human)


@cli.command("id")
@home_option
@json_option
def id_command(home: Path | None, as_json: bool) -> None:
    """Print this member's id (the public key; no passphrase needed)."""
    paths = resolve_paths(home)
    public = require_key(paths)
    result = {"id": id_text(public), "public_key_hex": public.hex(), "home": paths.home}
    emit(result, as_json, lambda console, r: console.print(r["id"], markup=False))


# =========================================================================================
# (Later sections: genesis, daemon, transactions, auctions, audit, devnet, ... go below.)
# =========================================================================================


if __name__ == "__main__":
    main()
