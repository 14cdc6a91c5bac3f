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
    """Print this member's id, libp2p peer id and the address others bootstrap from.

    No passphrase needed. The bootstrap address (a multiaddr ending in /p2p/<peer id>)
    is what other members put in their `[network] bootstrap` list or the genesis; it is
    read from the running daemon when there is one (real ports), else from the config.
    """
    paths = resolve_paths(home)
    public = require_key(paths)
    pid = keystore.peer_id(public)
    addrs, source, notes = _bootstrap_addrs(paths, pid)
    result = {"id": id_text(public), "public_key_hex": public.hex(), "home": paths.home,
              "peer_id": pid, "bootstrap_addrs": addrs, "addrs_from": source,
              "notes": notes}

    def human(console: Console, r: dict[str, Any]) -> None:
        console.print(r["id"], markup=False)  # first line alone: `commune id | head -1`
        console.print(f"peer id:   {r['peer_id']}", markup=False)
        for a in r["bootstrap_addrs"]:
            console.print(f"bootstrap: {a}", markup=False)
        for n in r["notes"]:
            console.print(f"note: {n}", markup=False)

    emit(result, as_json, human)


def _bootstrap_addrs(paths: node_config.Paths, pid: str) -> tuple[list[str], str, list[str]]:
    """(addresses others dial, where they came from, notes on their reachability)."""
    from node.client import Client, ClientError

    notes: list[str] = []
    if paths.api_endpoint.exists():
        try:
            with Client.from_home(paths.home, timeout=5.0) as c:
                listen = [str(a) for a in c.status().get("listen", [])]
            if listen:
                addrs = listen
                source = "daemon"
                return addrs, source, _reachability_notes(addrs, notes)
        except ClientError:
            pass  # not running after all: fall back to the config
    try:
        cfg = node_config.load_config(paths.config, paths.home)
    except node_config.ConfigError as exc:
        return [], "none", [f"no addresses: {exc}"]
    announce = tuple(getattr(cfg, "announce", ()) or ())
    source = "config announce" if announce else "config listen"
    addrs = [a if "/p2p/" in a else f"{a}/p2p/{pid}" for a in (announce or cfg.listen)]
    if any(a.split("/p2p/")[0].endswith("/tcp/0") for a in addrs):
        notes.append("tcp/0 means a port picked at start: set a fixed port in [network] "
                     "listen, or start the daemon and run `commune id` again")
    return addrs, source, _reachability_notes(addrs, notes)


def _reachability_notes(addrs: list[str], notes: list[str]) -> list[str]:
    if any(a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")) for a in addrs):
        notes.append("0.0.0.0 (::) listens on every interface; others dial this machine's "
                     "own address in its place")
    if addrs and all(a.startswith(("/ip4/127.", "/ip6/::1/")) for a in addrs):
        notes.append("loopback only: reachable from this machine alone; to accept other "
                     "machines listen on [\"/ip4/0.0.0.0/tcp/4001\"] in [network] listen")
    return notes


@cli.group("key")
def key_group() -> None:
    """The member key file."""


@key_group.command("passphrase")
@home_option
@passphrase_file_option
@click.option("--new-passphrase-file", type=click.Path(exists=True, dir_okay=False,
                                                       path_type=Path),
              default=None, help="Read the new passphrase from this file (else ask twice "
                                 "on the terminal).")
@json_option
def key_passphrase(home: Path | None, passphrase_file: Path | None,
                   new_passphrase_file: Path | None, as_json: bool) -> None:
    """Change the passphrase that encrypts the member key.

    The file is replaced atomically (a complete new file is written, checked, then
    renamed over the old one): if anything stops it midway the old file, with the old
    passphrase, is still there. A running daemon keeps working (it holds the key
    already); it needs the new passphrase at its next start.
    """
    paths = resolve_paths(home)
    public = require_key(paths)
    try:
        old = keystore.get_passphrase(passphrase_file)
    except keystore.KeystoreError as exc:
        fail(f"{exc} (the current passphrase)", Exit.USAGE)
    if new_passphrase_file is None and not keystore.has_terminal():
        fail("no new passphrase: pass --new-passphrase-file FILE (there is no terminal to "
             "ask on)", Exit.USAGE)
    try:
        keystore.load_key(paths.key, old)
    except keystore.KeystoreError as exc:
        fail(f"{exc} (the current passphrase came from {_passphrase_source(passphrase_file)})"
             "; the key file is unchanged", Exit.AUTH)
    try:
        new = keystore.get_passphrase(new_passphrase_file, confirm=True, environ={})
    except keystore.KeystoreError as exc:
        fail(f"{exc}; the key file is unchanged", Exit.USAGE)
    if new == old:
        fail("the new passphrase is the same as the current one; nothing changed",
             Exit.USAGE)
    try:
        keystore.change_passphrase(paths.key, old, new)
    except keystore.KeystoreError as exc:
        fail(str(exc), Exit.FAILED)
    notes: list[str] = []
    try:
        cfg = node_config.load_config(paths.config, paths.home)
        if cfg.passphrase_file is not None:
            notes.append(f"the daemon reads its passphrase from {cfg.passphrase_file} "
                         "([keys] passphrase_file): put the new one there before its next "
                         "start")
    except node_config.ConfigError:
        pass
    if os.environ.get(keystore.PASSPHRASE_ENV):
        notes.append(f"${keystore.PASSPHRASE_ENV} still holds the old passphrase")
    for n in notes:
        warn(n)
    result = {"id": id_text(public), "key_file": paths.key, "changed": True}
    emit(result, as_json, lambda console, r: console.print(
        f"Changed the passphrase of {r['key_file']} (member id {r['id']})", markup=False))


# =========================================================================================
# (Later sections: genesis, daemon, transactions, auctions, audit, devnet, ... go below.)
# =========================================================================================


# =========================================================================================
# Genesis: `commune genesis new|show` (bootstrap/genesis.py; rules in ledger/genesis.py)
# =========================================================================================


@cli.group()
def genesis() -> None:
    """Create or inspect a commune's genesis document."""


def _genesis_human(console: Console, d: dict[str, Any]) -> None:
    console.print(f"[bold]{d['name']}[/]  chain id {d['chain_id']}")
    console.print(f"currency {d['currency']} ({d['minor_units']} minor units), "
                  f"genesis time {d['genesis_time']}", markup=False)
    console.print(f"founders ({len(d['founders'])}):", markup=False)
    for f in d["founders"]:
        extra = f"  {f['address']}" if f["address"] else ""
        console.print(f"  {f['id']}  {f['name']}{extra}", markup=False)
    tr = d["treasury"]
    console.print(f"treasury: {tr['threshold']} of {len(tr['signers'])} signers", markup=False)
    for s in tr["signers"]:
        console.print(f"  {s}", markup=False)
    console.print("parameters:", markup=False)
    for k, v in d["params"].items():
        console.print(f"  {k:<24} {v}", markup=False)


@genesis.command("new")
@click.option("--name", required=True, help="The commune's name.")
@click.option("--founder", "founders", multiple=True, required=True,
              metavar="ID[:NAME[:LABOUR]]",
              help="A founding member (repeat for each): id, name, labour statement.")
@click.option("--currency", default="EUR", show_default=True, help="Currency code.")
@click.option("--minor-units", type=int, default=2, show_default=True,
              help="Digits of the minor unit (2: amounts are in cents).")
@click.option("--address", "addresses", multiple=True, metavar="ID=MULTIADDR",
              help="Where a founder's node listens (repeatable).")
@click.option("--signer", "signers", multiple=True, metavar="ID",
              help="Treasury signer (repeatable; default: every founder).")
@click.option("--threshold", type=int, default=None,
              help="Treasury approvals needed (default: a majority of the signers).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter (DESIGN 6.10; repeatable); others take their defaults.")
@click.option("--time", "time_text", default=None, metavar="MS|ISO-8601",
              help="Genesis time (default: now).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
@click.option("--format", "fmt", type=click.Choice(["json", "msgpack"]), default="json",
              show_default=True, help="JSON (readable) or the canonical msgpack bytes.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@json_option
def genesis_new(name: str, founders: tuple[str, ...], currency: str, minor_units: int,
                addresses: tuple[str, ...], signers: tuple[str, ...], threshold: int | None,
                params: tuple[str, ...], time_text: str | None, out: str, fmt: str,
                force: bool, as_json: bool) -> None:
    """Write a new genesis document; its hash is the commune's chain id."""
    from bootstrap import genesis as bg
    from ledger.genesis import GenesisError

    try:
        g = bg.new_genesis(name=name, founders=founders, currency=currency,
                           minor_units=minor_units, addresses=addresses, signers=signers,
                           threshold=threshold, params=params, time_text=time_text)
    except GenesisError as exc:
        fail(f"{exc}; see `commune genesis new --help`", Exit.USAGE)
    try:
        bg.write_genesis(g, out, fmt, force)
    except FileExistsError:
        fail(f"{out} exists; pass --force to replace it", Exit.EXISTS)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}", Exit.FAILED)
    result = {"chain_id": g.chain_id.hex(), "file": out, "format": fmt}
    emit(result, as_json, lambda console, r: console.print(
        f"wrote {r['file']} (chain id {r['chain_id']})", markup=False))


@genesis.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def genesis_show(file: str, as_json: bool) -> None:
    """Validate a genesis file (JSON or msgpack) and print it with its chain id."""
    from bootstrap import genesis as bg
    from ledger.genesis import GenesisError

    try:
        g = bg.read_genesis(file)
    except FileNotFoundError:
        fail(f"no such file {file}", Exit.NOT_FOUND)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", Exit.FAILED)
    except GenesisError as exc:
        fail(f"{file} is not a valid genesis: {exc}", Exit.FAILED)
    emit(bg.describe(g), as_json, _genesis_human)


# =========================================================================================
# (end of the genesis section)
# =========================================================================================


# =========================================================================================
# The daemon and the commands that talk to it (node/daemon.py, node/client.py)
#
# Every command below except `daemon` is a client of the running daemon's control API.
# Transaction commands have the daemon sign with the member's key (it holds the
# unlocked key) and by default wait until the transaction commits (`--no-wait` to
# return once it is accepted into the mempool). Amounts are integers in the commune's
# minor unit (cents for a currency with 2 minor units), as everywhere in the ledger.
# =========================================================================================

CLIENT_EXIT = {"unreachable": Exit.UNREACHABLE, "auth": Exit.AUTH, "rejected": Exit.FAILED,
               "not_found": Exit.NOT_FOUND, "usage": Exit.USAGE, "timeout": Exit.TIMEOUT,
               "exists": Exit.EXISTS, "failed": Exit.FAILED, "internal": Exit.INTERNAL}
DEFAULT_WAIT_SECONDS = 60.0


def _client(home: Path | None) -> Any:
    from node.client import Client, ClientError

    paths = resolve_paths(home)
    try:
        return Client.from_home(paths.home)
    except ClientError as exc:
        fail(exc.message, CLIENT_EXIT.get(exc.kind, Exit.FAILED))


def _call(home: Path | None, fn: Callable[[Any], T]) -> T:
    """Run `fn(client)`, turning every client error into its message and exit code."""
    from node.client import ClientError

    client = _client(home)
    try:
        return fn(client)
    except ClientError as exc:
        message = exc.message
        if exc.kind == "rejected":
            txid = exc.details.get("id")
            message = f"transaction rejected: {exc.message}" + (f" (id {txid})" if txid else "")
        elif exc.kind == "usage":  # the daemon refused an argument: say where to look
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                message += f"; see `{ctx.command_path} --help`"
        fail(message, CLIENT_EXIT.get(exc.kind, Exit.FAILED))
    finally:
        client.close()


def _get(home: Path | None, path: str, **params: Any) -> Any:
    return _call(home, lambda c: c.get(path, **params))


def wait_options(f: F) -> F:
    f = click.option("--timeout", "wait_timeout", type=click.FloatRange(0, 600),
                     default=DEFAULT_WAIT_SECONDS, show_default=True,
                     help="Seconds to wait for the commit.")(f)
    return click.option("--wait/--no-wait", default=True, show_default=True,
                        help="Wait until the transaction is committed (or rejected).")(f)


def _fmt_amount(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


REJECTION_STAGES = {"admission": "on arrival", "block": "by the block builder",
                    "recheck": "after a block committed", "evicted": "from a full mempool",
                    "expired": "after waiting too long in the mempool"}
WAIT_SLICE_SECONDS = 60.0
"""Longest single wait request (the API caps one at 120 s); longer waits are repeated."""
UNKNOWN_GRACE_SECONDS = 5.0
"""How long `tx wait` keeps asking about an id the node does not know yet (submitted to
another node, its gossip still on the way) before saying so."""


def _show_progress(as_json: bool) -> bool:
    """Live progress on stderr: for people at a terminal, never in --json runs."""
    return not as_json and stderr_console.is_terminal


def _wait_for_tx(client: Any, txid: str, timeout: float, progress: bool) -> dict[str, Any]:
    """Wait until `txid` is no longer pending or `timeout` passes; a spinner meanwhile."""
    import time

    start = time.monotonic()
    deadline = start + timeout
    slice_seconds = 1.0 if progress else WAIT_SLICE_SECONDS

    def loop(tick: Callable[[], None]) -> dict[str, Any]:
        while True:
            left = max(0.0, deadline - time.monotonic())
            result: dict[str, Any] = client.wait_tx(txid, min(left, slice_seconds))
            status = result.get("status")
            if status == "unknown" and left > 0 and \
                    time.monotonic() - start < UNKNOWN_GRACE_SECONDS:
                time.sleep(min(0.5, left))  # maybe still on its way from another node
            elif status != "pending" or left <= 0:
                return result
            tick()

    try:
        if not progress:
            return loop(lambda: None)
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=stderr_console, transient=True) as bar:
            task = bar.add_task(f"waiting for {txid[:16]}… to commit "
                                f"(up to {timeout:g} s)", total=None)
            return loop(lambda: bar.update(task))
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; transaction {txid} was submitted and may still "
                           f"commit: see `commune tx show {txid}`", Exit.INTERRUPTED) from None


def _finish_tx(result: dict[str, Any], wait: bool, as_json: bool) -> None:
    """Print a transaction's outcome; a rejection, a loss or a timeout is also an error
    (with --json the result document is printed first, so scripts get the reason too)."""
    status = result.get("status")
    txid = result.get("id")
    problem: tuple[str, Exit] | None = None
    if status == "rejected":
        stage = REJECTION_STAGES.get(str(result.get("stage")), "")
        hint = ("; this transaction can never apply: sign a new one" if result.get("final")
                else "; it may apply later if submitted again" if "final" in result else "")
        problem = (f"transaction {txid} rejected{' ' + stage if stage else ''}: "
                   f"{result.get('reason') or 'no reason given'}{hint}", Exit.FAILED)
    elif status == "unknown":
        problem = (f"transaction {txid} is not known to the node any more (not committed, "
                   "and no record of why it left the mempool); submit it again", Exit.FAILED)
    elif wait and status == "pending":
        gap = result.get("waiting_for_nonce")
        why = (f"it waits for its signer's transaction with nonce {gap}, which this node "
               "does not have (dropped, or not received yet)" if gap is not None
               else "still pending")
        problem = (f"transaction {txid} is not committed yet ({why}); check later with "
                   f"`commune tx wait {txid}`", Exit.TIMEOUT)
    if problem is None:
        emit(result, as_json, _show_tx_result)
        return
    if as_json:
        emit(result, True)
    fail(*problem)


def _show_tx_result(console: Console, r: dict[str, Any]) -> None:
    if r.get("status") == "committed":
        console.print(f"Committed [bold]{r.get('kind', 'transaction')}[/] {r['id']} "
                      f"at height {r.get('height')}")
        for k, v in sorted((r.get("result") or {}).items()):
            console.print(f"  {k}: {v}", markup=False)
    else:
        console.print(f"Submitted {r.get('kind', 'transaction')} {r['id']} "
                      f"(status: {r.get('status')})", markup=False)


def _submit(home: Path | None, submit: Callable[[Any], dict[str, Any]], wait: bool,
            timeout: float, as_json: bool) -> None:
    """Submit (no waiting on the daemon's side), then wait here, with progress shown."""

    def run(client: Any) -> dict[str, Any]:
        submitted = submit(client)
        if not wait or "id" not in submitted:
            return submitted
        done = _wait_for_tx(client, str(submitted["id"]), timeout, _show_progress(as_json))
        return {**submitted, **done}

    _finish_tx(_call(home, run), wait, as_json)


def _sign(home: Path | None, kind: str, args: dict[str, Any], wait: bool, timeout: float,
          as_json: bool) -> None:
    _submit(home, lambda c: c.sign(kind, args), wait, timeout, as_json)


def _action(home: Path | None, name: str, body: dict[str, Any], wait: bool, timeout: float,
            as_json: bool) -> None:
    _submit(home, lambda c: c.action(name, body), wait, timeout, as_json)


def _table(console: Console, title: str, rows: Sequence[dict[str, Any]],
           columns: Sequence[tuple[str, str]]) -> None:
    from rich.table import Table

    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for _, header in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key)
            cells.append("" if v is None else _fmt_amount(v) if isinstance(v, int)
                         and not isinstance(v, bool) else "\n".join(map(str, v))
                         if isinstance(v, list) else str(v))
        table.add_row(*cells)
    console.print(table)


def _kv(console: Console, data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    for k in keys or sorted(data):
        if k in data and not isinstance(data[k], list | dict):
            console.print(f"{k:>18}: {data[k]}", markup=False)


@cli.command()
@home_option
@passphrase_file_option
def daemon(home: Path | None, passphrase_file: Path | None) -> None:
    """Run this member's node: consensus, gossip, the ledger and the control API.

    Stops cleanly on Ctrl-C or SIGTERM (exit code 0). A second signal while stopping
    exits at once (130), a stop longer than [daemon] stop_timeout exits too (1); both
    leave the files as kill -9 would, which the next start recovers from. Logs are JSON
    lines on stderr and in HOME/logs/. Other commands talk to it through the API address
    in HOME/api.json with the token in HOME/api.token.
    """
    from node import daemon as node_daemon

    paths = resolve_paths(home)
    require_key(paths)
    try:
        cfg = node_config.load_config(paths.config, paths.home)
    except node_config.ConfigError as exc:
        fail(str(exc), Exit.NOT_FOUND if "no config file" in str(exc) else Exit.USAGE)
    try:
        passphrase = keystore.get_passphrase(passphrase_file,
                                             configured_file=cfg.passphrase_file)
        key = keystore.load_key(paths.key, passphrase)
    except keystore.KeystoreError as exc:
        hint = ""
        if "wrong passphrase" in str(exc):
            hint = (f" (the passphrase came from {_passphrase_source(passphrase_file, cfg)}; "
                    "`commune key passphrase` changes it)")
        fail(f"{exc}{hint}", Exit.AUTH)
    try:
        node_daemon.main(paths.home, key)
    except node_daemon.DaemonError as exc:
        fail(exc.message, CLIENT_EXIT.get(exc.kind, Exit.FAILED))


def _sync_line(s: dict[str, Any]) -> str:
    height = int(s.get("height", 0))
    best = int(s.get("best_peer_height", s.get("sync_target", height)) or height)
    if best <= height:
        state = "syncing" if s.get("syncing") else "in sync"
        return f"height {height:,}, {state} with the best known peer"
    pct = 100 * height // best if best else 100
    return (f"height {height:,} of {best:,} ({pct}%; {best - height:,} blocks behind"
            f"{', syncing' if s.get('syncing') else ''})")


def _synced(s: dict[str, Any]) -> bool:
    """Caught up: not fetching blocks, and either a peer reported a height (so there is
    something to compare with) or this node is the commune's only validator."""
    alone = bool(s.get("is_validator")) and int(s.get("validators", 0)) == 1
    heard = int(s.get("peers", 0)) > 0 and int(s.get("best_peer_height", 0) or 0) > 0
    return not s.get("syncing") and int(s.get("behind", 0)) <= 1 and (heard or alone)


def _passphrase_source(flag: Path | None, cfg: Any = None) -> str:
    """Where `keystore.get_passphrase` took the passphrase from, in its order."""
    if flag is not None:
        return f"--passphrase-file {flag}"
    if os.environ.get(keystore.PASSPHRASE_ENV):
        return f"${keystore.PASSPHRASE_ENV}"
    if cfg is not None and cfg.passphrase_file is not None:
        return f"[keys] passphrase_file ({cfg.passphrase_file})"
    return "the terminal"


@cli.command()
@click.option("--wait-sync", is_flag=True,
              help="Wait until the node has caught up with its peers (progress on stderr).")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(0, 86400), default=600,
              show_default=True, help="Seconds --wait-sync waits at most.")
@home_option
@json_option
def status(wait_sync: bool, wait_timeout: float, home: Path | None, as_json: bool) -> None:
    """Height, consensus round, peers and sync state of the running daemon.

    The sync line compares this node's height with the best height its peers report.
    With --wait-sync, waits for the node to catch up first (exit 7 at --timeout).
    """

    def human(console: Console, s: dict[str, Any]) -> None:
        _kv(console, s, ["commune", "member", "peer_id", "height", "round", "step",
                         "is_validator", "validators", "peers", "mempool_txs",
                         "uptime_seconds"])
        console.print(f"{'sync':>18}: {_sync_line(s)}", markup=False)
        last = s.get("last_block")
        if last:
            console.print(f"{'last block':>18}: {last['hash'][:16]}… with {last['txs']} txs",
                          markup=False)

    result = _call(home, lambda c: _wait_sync(c, wait_timeout, _show_progress(as_json))
                   if wait_sync else c.status())
    if wait_sync and not _synced(result):
        if as_json:
            emit(result, True)
        fail(f"not caught up after {wait_timeout:g} s: {_sync_line(result)}, "
             f"{result.get('peers', 0)} peers; see `commune peers`", Exit.TIMEOUT)
    emit(result, as_json, human)


def _wait_sync(client: Any, timeout: float, progress: bool) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    s: dict[str, Any] = client.status()
    if _synced(s) or timeout <= 0:
        return s
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=stderr_console, transient=True) if progress else None
    try:
        with bar if bar is not None else nullcontext():
            task = bar.add_task("syncing", total=None) if bar is not None else None
            while not _synced(s) and time.monotonic() < deadline:
                if bar is not None and task is not None:
                    best = int(s.get("best_peer_height", 0) or 0)
                    bar.update(task, completed=int(s.get("height", 0)),
                               total=best or None,
                               description=f"syncing ({s.get('peers', 0)} peers)")
                time.sleep(0.5)
                s = client.status()
    except KeyboardInterrupt:
        raise CommandError("interrupted while waiting for sync", Exit.INTERRUPTED) from None
    return s


@cli.command()
@home_option
@json_option
def peers(home: Path | None, as_json: bool) -> None:
    """Connected peers with their addresses, scores and last known heights."""
    emit(_get(home, "peers"), as_json, lambda console, rows: _table(
        console, "Peers", rows, [("peer_id", "peer"), ("height", "height"), ("score", "score"),
                                 ("addrs", "addresses")]))


@cli.command()
@home_option
@json_option
def members(home: Path | None, as_json: bool) -> None:
    """Members (one share each) and pending applications."""

    def human(console: Console, d: dict[str, Any]) -> None:
        _table(console, "Members", d["members"], [("name", "name"), ("id", "id"),
                                                  ("enterprise", "enterprise"),
                                                  ("validator", "validator")])
        _table(console, "Applications", d["applications"],
               [("name", "name"), ("applicant", "applicant"),
                ("attestations", "attestations"), ("needed", "needed")])

    emit(_get(home, "members"), as_json, human)


@cli.command()
@click.option("--name", required=True, help="Your name as members will see it.")
@click.option("--enterprise", default="", help="The enterprise you work in.")
@click.option("--labour", default="", help="Your labour statement.")
@home_option
@wait_options
@json_option
def apply(name: str, enterprise: str, labour: str, home: Path | None, wait: bool,
          wait_timeout: float, as_json: bool) -> None:
    """Apply for membership (admitted once enough members attest your labour)."""
    _sign(home, "member.apply", {"name": name, "enterprise": enterprise, "labour": labour},
          wait, wait_timeout, as_json)


@cli.command()
@click.argument("applicant")
@home_option
@wait_options
@json_option
def attest(applicant: str, home: Path | None, wait: bool, wait_timeout: float,
           as_json: bool) -> None:
    """Attest the labour of APPLICANT (a member id)."""
    _sign(home, "member.attest", {"applicant": applicant}, wait, wait_timeout, as_json)


@cli.command()
@click.option("--yes", "confirmed", is_flag=True, help="Do not ask for confirmation.")
@home_option
@wait_options
@json_option
def resign(confirmed: bool, home: Path | None, wait: bool, wait_timeout: float,
           as_json: bool) -> None:
    """Give up your share (claims already earned are kept)."""
    if not confirmed:
        if not sys.stdin.isatty():
            fail("resigning needs confirmation: pass --yes (there is no terminal to ask on)",
                 Exit.USAGE)
        if not click.confirm("Resign from the commune? Your share is not refunded",
                             default=False):
            fail("not resigned", Exit.FAILED)
    _sign(home, "member.resign", {}, wait, wait_timeout, as_json)


@cli.command()
@click.argument("account")
@click.argument("amount", type=click.IntRange(1))
@click.option("--reference", required=True, help="External payment reference.")
@home_option
@wait_options
@json_option
def deposit(account: str, amount: int, reference: str, home: Path | None, wait: bool,
            wait_timeout: float, as_json: bool) -> None:
    """Propose crediting ACCOUNT with AMOUNT received outside (treasury signers)."""
    _sign(home, "treasury.deposit", {"account": account, "amount": amount,
                                     "reference": reference}, wait, wait_timeout, as_json)


@cli.command()
@click.argument("amount", type=click.IntRange(1))
@click.option("--reference", default="", help="Where the treasury should pay you.")
@home_option
@wait_options
@json_option
def withdraw(amount: int, reference: str, home: Path | None, wait: bool, wait_timeout: float,
             as_json: bool) -> None:
    """Ask the treasury to pay out AMOUNT from your balance."""
    _sign(home, "account.withdraw", {"amount": amount, "reference": reference}, wait,
          wait_timeout, as_json)


@cli.command()
@click.argument("action")
@home_option
@wait_options
@json_option
def approve(action: str, home: Path | None, wait: bool, wait_timeout: float,
            as_json: bool) -> None:
    """Approve the pending treasury ACTION (the id of the proposing transaction)."""
    _sign(home, "treasury.approve", {"action": action}, wait, wait_timeout, as_json)


@cli.group()
def treasury() -> None:
    """Treasury actions beyond deposits: payouts, purchases, sales (signers only)."""


@treasury.command("show")
@home_option
@json_option
def treasury_show(home: Path | None, as_json: bool) -> None:
    """Signers, threshold, pending actions and withdrawals."""

    def human(console: Console, d: dict[str, Any]) -> None:
        console.print(f"Signers ({d['threshold']} of {len(d['signers'])}): "
                      + ", ".join(d["signers"]), markup=False)
        _table(console, "Actions", d["actions"], [("id", "id"), ("kind", "kind"),
                                                  ("status", "status"),
                                                  ("approvals", "approvals")])
        _table(console, "Withdrawals", d["withdrawals"],
               [("id", "id"), ("account", "account"), ("amount", "amount"),
                ("status", "status")])

    emit(_get(home, "treasury"), as_json, human)


def _treasury_command(name: str, kind: str, doc: str, *params: click.Parameter) -> None:
    def run(home: Path | None, wait: bool, wait_timeout: float, as_json: bool,
            **args: Any) -> None:
        _sign(home, kind, {k: v for k, v in args.items() if v not in (None, "")}, wait,
              wait_timeout, as_json)

    run.__doc__ = doc
    cmd = json_option(wait_options(home_option(run)))
    command = click.command(name)(cmd)
    command.params[:0] = list(params)
    treasury.add_command(command)


_treasury_command("payout", "treasury.payout", "Propose settling WITHDRAWAL (its id).",
                  click.Argument(["withdrawal"]), click.Option(["--reference"], default=""))
_treasury_command("acquire", "treasury.acquire",
                  "Propose recording that funded ASSET was bought with its escrow.",
                  click.Argument(["asset"]), click.Option(["--reference"], default=""))
_treasury_command("acquire-failed", "treasury.acquire_failed",
                  "Propose recording that the purchase of ASSET fell through.",
                  click.Argument(["asset"]), click.Option(["--reference"], default=""))
_treasury_command("liquidated", "treasury.liquidated",
                  "Propose recording the sale of ASSET for PROCEEDS.",
                  click.Argument(["asset"]), click.Argument(["proceeds"], type=click.IntRange(0)),
                  click.Option(["--reference"], default=""))


@cli.command()
@click.argument("to")
@click.argument("amount", type=click.IntRange(1))
@click.option("--memo", default=None, help="A note for the recipient.")
@home_option
@wait_options
@json_option
def transfer(to: str, amount: int, memo: str | None, home: Path | None, wait: bool,
             wait_timeout: float, as_json: bool) -> None:
    """Move AMOUNT from your account to TO (an account id)."""
    args: dict[str, Any] = {"to": to, "amount": amount}
    if memo:
        args["memo"] = memo
    _sign(home, "account.transfer", args, wait, wait_timeout, as_json)


@cli.command()
@click.argument("account", required=False)
@home_option
@json_option
def balance(account: str | None, home: Path | None, as_json: bool) -> None:
    """Balance and arrears of ACCOUNT (default: yours)."""
    if account is None:
        account = id_text(require_key(resolve_paths(home)))
    emit(_get(home, f"account/{account}"), as_json, lambda console, d: _kv(
        console, d, ["id", "balance", "arrears", "nonce", "member"]))


@cli.group()
def asset() -> None:
    """Asset requests, their bond auctions and rentals."""


@asset.command("request")
@click.option("--description", required=True)
@click.option("--price", type=click.IntRange(1), required=True, help="Purchase price P.")
@click.option("--rent", type=click.IntRange(1), required=True, help="Rent R per period.")
@click.option("--term", type=click.IntRange(1), required=True, help="Rental term in periods.")
@click.option("--maturity", type=click.IntRange(1), required=True,
              help="Bond maturity in periods (at most the term).")
@click.option("--max-rate-bps", type=click.IntRange(0), required=True,
              help="Highest bond rate you accept, basis points per year.")
@click.option("--enterprise", default=None)
@click.option("--commit-seconds", type=click.IntRange(1), default=None)
@click.option("--reveal-seconds", type=click.IntRange(1), default=None)
@home_option
@wait_options
@json_option
def asset_request(description: str, price: int, rent: int, term: int, maturity: int,
                  max_rate_bps: int, enterprise: str | None, commit_seconds: int | None,
                  reveal_seconds: int | None, home: Path | None, wait: bool,
                  wait_timeout: float, as_json: bool) -> None:
    """Request an asset with a rental offer; opens its sealed-bid bond auction."""
    args: dict[str, Any] = {"description": description, "price": price, "rent": rent,
                            "term": term, "maturity": maturity, "max_rate_bps": max_rate_bps}
    for k, v in (("enterprise", enterprise), ("commit_seconds", commit_seconds),
                 ("reveal_seconds", reveal_seconds)):
        if v is not None:
            args[k] = v
    _sign(home, "asset.request", args, wait, wait_timeout, as_json)


ASSET_COLUMNS = [("id", "id"), ("description", "description"), ("status", "status"),
                 ("price", "price"), ("rent", "rent"), ("lessee", "lessee")]


@asset.command("list")
@home_option
@json_option
def asset_list(home: Path | None, as_json: bool) -> None:
    """Every asset with its status."""
    emit(_get(home, "assets"), as_json,
         lambda console, rows: _table(console, "Assets", rows, ASSET_COLUMNS))


@asset.command("show")
@click.argument("asset_id")
@home_option
@json_option
def asset_show(asset_id: str, home: Path | None, as_json: bool) -> None:
    """One asset: request, auction, bond series, rental."""

    def human(console: Console, d: dict[str, Any]) -> None:
        _kv(console, d)
        for section in ("auction", "series", "rental"):
            if isinstance(d.get(section), dict):
                console.print(f"[bold]{section}[/]")
                _kv(console, d[section])

    emit(_get(home, f"asset/{asset_id}"), as_json, human)


@cli.group()
def bond() -> None:
    """Sealed bids in bond auctions, and bond holdings."""


@bond.command("bid")
@click.argument("asset_id")
@click.option("--amount", type=click.IntRange(1), required=True, help="Face value bid.")
@click.option("--rate-bps", type=click.IntRange(0), required=True,
              help="Rate asked, basis points per year.")
@click.option("--lock", type=click.IntRange(1), default=None,
              help="Escrowed amount, at least --amount (default: the amount).")
@home_option
@wait_options
@json_option
def bond_bid(asset_id: str, amount: int, rate_bps: int, lock: int | None, home: Path | None,
             wait: bool, wait_timeout: float, as_json: bool) -> None:
    """Commit a sealed bid; the daemon reveals it in the reveal window by itself."""
    _action(home, "bond_bid", {"asset": asset_id, "amount": amount, "rate_bps": rate_bps,
                               "lock": lock if lock is not None else amount},
            wait, wait_timeout, as_json)


@bond.command("list")
@click.option("--asset", "asset_id", default=None, help="Only this asset's series.")
@click.option("--holder", default=None, help="Only this holder's bonds.")
@home_option
@json_option
def bond_list(asset_id: str | None, holder: str | None, home: Path | None,
              as_json: bool) -> None:
    """Bond holdings: face, outstanding principal, rate."""
    emit(_get(home, "bonds", asset=asset_id, holder=holder), as_json,
         lambda console, rows: _table(console, "Bonds", rows, [
             ("asset", "asset"), ("holder", "holder"), ("face", "face"),
             ("outstanding", "outstanding"), ("rate_bps", "rate (bps)")]))


@cli.group()
def rent() -> None:
    """Sealed bids in rental re-auctions."""


@rent.command("bid")
@click.argument("asset_id")
@click.option("--rent", "rent_amount", type=click.IntRange(1), required=True,
              help="Rent offered per period.")
@click.option("--term", type=click.IntRange(1), required=True, help="Term in periods.")
@click.option("--lock", type=click.IntRange(0), default=0, show_default=True,
              help="Escrowed deposit.")
@home_option
@wait_options
@json_option
def rent_bid(asset_id: str, rent_amount: int, term: int, lock: int, home: Path | None,
             wait: bool, wait_timeout: float, as_json: bool) -> None:
    """Commit a sealed rental bid; the daemon reveals it in the reveal window."""
    _action(home, "rent_bid", {"asset": asset_id, "rent": rent_amount, "term": term,
                               "lock": lock}, wait, wait_timeout, as_json)


@cli.group()
def rental() -> None:
    """Your rentals."""


@rental.command("end")
@click.argument("asset_id")
@home_option
@wait_options
@json_option
def rental_end(asset_id: str, home: Path | None, wait: bool, wait_timeout: float,
               as_json: bool) -> None:
    """End your rental of ASSET after the notice period."""
    _sign(home, "rental.end", {"asset": asset_id}, wait, wait_timeout, as_json)


@cli.group(invoke_without_command=True)
@click.option("--member", default=None, help="Whose dividends (default: yours).")
@home_option
@json_option
@click.pass_context
def dividends(ctx: click.Context, member: str | None, home: Path | None,
              as_json: bool) -> None:
    """Dividends earned per period, and what is still unclaimed."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"home": home, "as_json": as_json}  # `dividends --home X claim` works too
        return
    who = member or id_text(require_key(resolve_paths(home)))

    def human(console: Console, d: dict[str, Any]) -> None:
        _table(console, f"Dividends of {d['member']}", d["periods"],
               [("period", "period"), ("amount", "amount"), ("claimed", "claimed")])
        console.print(f"Unclaimed: {_fmt_amount(d['unclaimed'])}")

    emit(_get(home, "dividends", member=who), as_json, human)


@dividends.command("claim")
@home_option
@wait_options
@json_option
@click.pass_context
def dividends_claim(ctx: click.Context, home: Path | None, wait: bool, wait_timeout: float,
                    as_json: bool) -> None:
    """Claim every unclaimed dividend now (the daemon also does it by itself)."""
    parent = ctx.obj or {}
    _action(home or parent.get("home"), "claim", {}, wait, wait_timeout,
            as_json or bool(parent.get("as_json")))


@cli.group()
def proposal() -> None:
    """Governance: one member, one vote; passes with more than 2/3 of members."""


@proposal.command("create")
@click.option("--title", required=True)
@click.option("--param", "param", default=None, metavar="NAME=VALUE",
              help="Change a parameter.")
@click.option("--expel", default=None, metavar="MEMBER", help="Expel a member.")
@click.option("--treasury-signers", default=None, metavar="ID,ID,...",
              help="New treasury signers (with --threshold).")
@click.option("--threshold", type=click.IntRange(1), default=None)
@click.option("--change", "change_json", default=None, metavar="JSON",
              help="Any change as JSON, e.g. '{\"type\": \"upgrade\", ...}'.")
@click.option("--voting-seconds", type=click.IntRange(1), default=None)
@home_option
@wait_options
@json_option
def proposal_create(title: str, param: str | None, expel: str | None,
                    treasury_signers: str | None, threshold: int | None,
                    change_json: str | None, voting_seconds: int | None, home: Path | None,
                    wait: bool, wait_timeout: float, as_json: bool) -> None:
    """Propose a change: exactly one of --param, --expel, --treasury-signers, --change."""
    changes: list[dict[str, Any]] = []
    if param is not None:
        name, sep, value = param.partition("=")
        if not sep or not value.strip().isdigit():
            fail("--param takes NAME=VALUE with an integer value", Exit.USAGE)
        changes.append({"type": "param", "name": name.strip(), "value": int(value)})
    if expel is not None:
        changes.append({"type": "expel", "member": expel})
    if treasury_signers is not None:
        if threshold is None:
            fail("--treasury-signers needs --threshold", Exit.USAGE)
        changes.append({"type": "treasury", "threshold": threshold,
                        "signers": [s.strip() for s in treasury_signers.split(",") if s]})
    if change_json is not None:
        try:
            obj = json.loads(change_json)
        except ValueError as exc:
            fail(f"--change is not JSON: {exc}", Exit.USAGE)
        if not isinstance(obj, dict):
            fail("--change must be a JSON object", Exit.USAGE)
        changes.append(obj)
    if len(changes) != 1:
        fail("give exactly one change (--param, --expel, --treasury-signers or --change)",
             Exit.USAGE)
    args: dict[str, Any] = {"title": title, "change": changes[0]}
    if voting_seconds is not None:
        args["voting_seconds"] = voting_seconds
    _sign(home, "proposal.create", args, wait, wait_timeout, as_json)


@proposal.command("vote")
@click.argument("proposal_id")
@click.option("--yes/--no", "yes", required=True, help="Your vote.")
@home_option
@wait_options
@json_option
def proposal_vote(proposal_id: str, yes: bool, home: Path | None, wait: bool,
                  wait_timeout: float, as_json: bool) -> None:
    """Vote on PROPOSAL_ID."""
    _sign(home, "proposal.vote", {"proposal": proposal_id, "yes": yes}, wait, wait_timeout,
          as_json)


@proposal.command("list")
@home_option
@json_option
def proposal_list(home: Path | None, as_json: bool) -> None:
    """Proposals with their tallies and status."""
    emit(_get(home, "proposals"), as_json, lambda console, rows: _table(
        console, "Proposals", rows, [("id", "id"), ("title", "title"), ("type", "type"),
                                     ("status", "status"), ("yes", "yes"), ("no", "no")]))


@cli.command()
@home_option
@json_option
def params(home: Path | None, as_json: bool) -> None:
    """The commune's parameters in force (governance changes them) and the open period."""

    def human(console: Console, d: dict[str, Any]) -> None:
        _kv(console, d.get("params", {}))
        console.print(f"{'open period':>18}: {d.get('open_period')}, ends "
                      f"{_ms(d.get('period_end_ms'))} UTC", markup=False)
        console.print(f"{'currency':>18}: {d.get('currency')} ({d.get('minor_units')} "
                      "minor units; amounts are in minor units)", markup=False)

    emit(_get(home, "params"), as_json, human)


@cli.command()
@home_option
@json_option
def validators(home: Path | None, as_json: bool) -> None:
    """The validators of the next block, and of the one after (a change takes a block)."""

    def human(console: Console, d: dict[str, Any]) -> None:
        console.print(f"Validators at height {d['height']} ({len(d['validators'])}):",
                      markup=False)
        for v in d["validators"]:
            console.print(f"  {v}", markup=False)
        if d.get("next") != d["validators"]:
            console.print(f"From height {d['height'] + 1} ({len(d['next'])}):", markup=False)
            for v in d["next"]:
                console.print(f"  {v}", markup=False)

    emit(_get(home, "validators"), as_json, human)


@cli.group()
def block() -> None:
    """Committed blocks."""


@block.command("show")
@click.argument("height", default="latest")
@home_option
@json_option
def block_show(height: str, home: Path | None, as_json: bool) -> None:
    """Block HEIGHT (default: the latest) with its transactions."""
    if height != "latest" and not height.isdigit():
        fail("HEIGHT is a block number or 'latest'", Exit.USAGE)

    def human(console: Console, d: dict[str, Any]) -> None:
        _kv(console, d, ["height", "hash", "time_ms", "proposer", "state_root", "prev_hash"])
        _table(console, "Transactions", d["txs"], [("id", "id"), ("kind", "kind"),
                                                   ("signer", "signer")])

    emit(_get(home, f"block/{height}"), as_json, human)


@cli.group()
def tx() -> None:
    """Transactions."""


@tx.command("show")
@click.argument("txid")
@home_option
@json_option
def tx_show(txid: str, home: Path | None, as_json: bool) -> None:
    """A transaction: its status (pending, committed, rejected), block and result."""

    emit(_get(home, f"tx/{txid}"), as_json, _show_tx)


def _show_tx(console: Console, d: dict[str, Any]) -> None:
    _kv(console, d, ["id", "status", "kind", "signer", "nonce", "waiting_for_nonce", "height",
                     "index", "reason"])
    if d.get("status") == "rejected" and "stage" in d:
        where = REJECTION_STAGES.get(str(d["stage"]), str(d["stage"]))
        console.print(f"{'rejected':>18}: {where}; "
                      + ("final (sign a new transaction)" if d.get("final") else
                         "not final (the same transaction may apply if submitted again)"),
                      markup=False)
    for k, v in sorted((d.get("args") or {}).items()):
        console.print(f"{'args.' + k:>18}: {v}", markup=False)
    for k, v in sorted((d.get("result") or {}).items()):
        console.print(f"{'result.' + k:>18}: {v}", markup=False)


@tx.command("wait")
@click.argument("txid")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(0, 3600),
              default=DEFAULT_WAIT_SECONDS, show_default=True,
              help="Seconds to wait for the commit.")
@home_option
@json_option
def tx_wait(txid: str, wait_timeout: float, home: Path | None, as_json: bool) -> None:
    """Wait until transaction TXID commits; exit 1 if it was rejected (and why), 7 if it
    is still pending at --timeout, 5 if the node does not know it."""
    tid = _parse_txid(txid).hex()
    result = _call(home, lambda c: _wait_for_tx(c, tid, wait_timeout, _show_progress(as_json)))
    if result.get("status") == "unknown":
        fail(f"no transaction {tid} in the ledger or the mempool of this node (never "
             "submitted here, or forgotten); submit it again", Exit.NOT_FOUND)
    _finish_tx(result, True, as_json)


# =========================================================================================
# Audit: export the signed log, replay it trusting no one, prove single transactions
# (ledger/export.py, ledger/audit.py, ledger/proofs.py)
#
# These commands never talk to the daemon: `export` and `prove` read the node's SQLite
# store directly (read-only, one consistent snapshot, daemon running or not); `replay`
# and `verify-proof` need nothing but the file (and, to pin the commune, its genesis).
# =========================================================================================

AUDIT_POOL_AFTER_BYTES = 2 * 1024 * 1024
"""Replays smaller than this verify signatures in-process (a worker pool costs a second)."""
AUDIT_BATCH_BYTES = 256 * 1024
AUDIT_BATCH_BLOCKS = 256


def audit_parallel_prefetch(workers: int) -> Any:
    """A `ledger.audit.Prefetch` that verifies signatures in `workers` processes, ahead of
    execution, in order; small logs are verified in-process.

    When the oldest batch is not verified yet, this process does not wait idle: it takes
    the newest batch no worker has started and verifies it itself (work stealing), so the
    replay runs at the pace of all cores together, not of the slower side.
    """
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    from ledger.audit import check_signatures, check_signatures_batch

    def prefetch(chain_id: bytes, records: Any) -> Any:
        pool: ProcessPoolExecutor | None = None
        pending: deque[list[Any]] = deque()
        """[records, Future or verdicts] per batch, oldest first."""
        batch: list[Any] = []
        size = seen = 0
        window = 4 * workers + 2

        def submit() -> None:
            nonlocal batch, size
            assert pool is not None
            pending.append([batch, pool.submit(check_signatures_batch, chain_id,
                                               [r.block for r in batch])])
            batch, size = [], 0

        def steal() -> bool:
            for entry in reversed(pending):
                if isinstance(entry[1], Future) and entry[1].cancel():
                    entry[1] = [check_signatures(chain_id, r.block) for r in entry[0]]
                    return True
            return False

        def oldest() -> Any:
            entry = pending[0]
            while isinstance(entry[1], Future) and not entry[1].done() and steal():
                pass
            pending.popleft()
            verdicts = entry[1].result() if isinstance(entry[1], Future) else entry[1]
            return zip(entry[0], verdicts, strict=True)

        finished = False
        try:
            for rec in records:
                if pool is None:
                    if workers < 1 or seen < AUDIT_POOL_AFTER_BYTES:
                        seen += len(rec.block)
                        yield rec, None  # verified by the auditor, from its decoded block
                        continue
                    pool = ProcessPoolExecutor(
                        workers, mp_context=multiprocessing.get_context("spawn"))
                batch.append(rec)
                size += len(rec.block)
                if size >= AUDIT_BATCH_BYTES or len(batch) >= AUDIT_BATCH_BLOCKS:
                    submit()
                    while len(pending) > window:
                        yield from oldest()
            if batch:
                submit()
            while pending:
                yield from oldest()
            finished = True
        finally:
            if pool is not None:  # at a failure, stop at once; at the end, reap the workers
                pool.shutdown(wait=finished, cancel_futures=not finished)

    return prefetch


AUDIT_FETCH_BATCH = 16
AUDIT_FETCH_TIMEOUT = 60.0


async def audit_fetch(peer: str, genesis: Any,
                      sink: Callable[[int, bytes, bytes, bytes], None],
                      stopped: Callable[[], bool] = lambda: False,
                      claimed: Callable[[int, bytes], None] | None = None
                      ) -> tuple[int, bytes]:
    """Fetch a node's whole chain over the block-sync protocol, block by block.

    `sink(height, block, certificate, block hash)` gets each block as it arrives (in
    height order); nothing the peer says is trusted: the replay checks every block.
    The peer's claimed height (passed to `claimed` as soon as known) only says when to
    stop asking; a peer that stops short is reported. `stopped()` is polled between
    requests (the replay failed: stop fetching). Returns the (height, block hash) the
    peer claimed.
    """
    import secrets

    import trio

    from node.driver import sync_protocol
    from node.net import Network, NetworkError, split_p2p_addr
    from protocol.encoding import encode
    from protocol.sync import (
        SyncError,
        SyncRequest,
        SyncResponse,
        SyncStatus,
        decode_sync_message,
        encode_sync_message,
    )

    try:
        peer_id, _ = split_p2p_addr(peer)
    except ValueError as exc:
        fail(f"--peer: {exc}", Exit.USAGE)
    chain_id = genesis.chain_id
    proto = sync_protocol(chain_id)
    net = Network(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"], bootstrap=[peer],
                  peer_exchange=False)

    async def ask(msg: Any) -> Any:
        try:
            reply = await net.request(peer_id, proto, encode_sync_message(msg),
                                      timeout=AUDIT_FETCH_TIMEOUT)
            return decode_sync_message(reply)
        except SyncError as exc:
            fail(f"the peer answered with a malformed sync message: {exc}", Exit.FAILED)

    async def fetch_all() -> SyncStatus:
        # Let the network's own dialer connect first: a request racing it can lose its
        # stream when the two connections to the same peer are deduplicated.
        with trio.move_on_after(AUDIT_FETCH_TIMEOUT / 2):
            await net.wait_for_peers(1)
        status = await ask(SyncStatus(0, chain_id))
        if not isinstance(status, SyncStatus):
            fail("the peer did not answer the status request with its status", Exit.FAILED)
        if claimed is not None:
            claimed(status.height, status.block_hash)
        h, count, rid = 1, AUDIT_FETCH_BATCH, 1
        while h <= status.height and not stopped():
            try:
                resp = await ask(SyncRequest(rid, h, count))
            except NetworkError as exc:
                if exc.reason == "too_large" and count > 1:
                    count = max(1, count // 2)
                    continue
                raise
            if not isinstance(resp, SyncResponse) or resp.request_id != rid:
                fail("the peer answered a block request with something else", Exit.FAILED)
            if not resp.items:
                fail(f"the peer claims height {status.height} but serves nothing from "
                     f"block {h}", Exit.FAILED)
            for block, cert in resp.items:
                sink(h, block.encode(), encode(cert.to_wire()), block.hash())
                h += 1
            rid += 1
        return status

    # Errors are carried out of the nursery by hand: trio would wrap them in a group.
    outcome: list[SyncStatus | CommandError | NetworkError] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        try:
            outcome.append(await fetch_all())
        except (CommandError, NetworkError) as exc:
            outcome.append(exc)
        finally:
            nursery.cancel_scope.cancel()
    status = outcome[0]
    if isinstance(status, CommandError):
        raise status
    if isinstance(status, NetworkError):
        fail(f"cannot fetch from {peer}: {status}", Exit.UNREACHABLE)
    return status.height, status.block_hash


class _PeerSource:
    """Blocks fetched from a peer in a background thread (the network runs on trio there),
    handed to the replay in order as they arrive: a peer serving garbage is stopped at
    its first bad block, not after it filled a disk."""

    QUEUE = 64

    def __init__(self, peer: str, genesis: Any, save: Any) -> None:
        import queue
        import threading

        from ledger.export import LogWriter

        self.peer, self.genesis = peer, genesis
        self.queue: queue.Queue[Any] = queue.Queue(self.QUEUE)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.claimed: tuple[int, bytes] | None = None
        self.writer = None if save is None else LogWriter(save, genesis.encode(),
                                                          genesis.chain_id)
        self.thread = threading.Thread(target=self._run, name="audit-fetch", daemon=True)

    _END = object()

    def _put(self, item: Any) -> None:
        import queue

        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _sink(self, h: int, block: bytes, cert: bytes, bhash: bytes) -> None:
        from ledger.export import BlockRecord

        if self.writer is not None:
            self.writer.block(h, block, cert, bhash)
        self._put(BlockRecord(h, block, cert, -1))

    def _run(self) -> None:
        import trio

        def claimed(h: int, bhash: bytes) -> None:
            self.claimed = (h, bhash)

        try:
            trio.run(audit_fetch, self.peer, self.genesis, self._sink, self.stop.is_set,
                     claimed)
            if self.writer is not None and not self.stop.is_set():
                self.writer.finish()
        except BaseException as exc:  # handed to the replay's thread, raised there
            self.error = exc
        finally:
            self._put(self._END)

    def records(self) -> Any:
        self.thread.start()
        while (item := self.queue.get()) is not self._END:
            yield item
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():  # it stops between requests; a daemon thread otherwise
            self.thread.join(timeout=5)


def _audit_workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min((n or 1) - 1, 4)  # this process takes a core too (it executes, and steals)


def _audit_progress(enabled: bool, total: int | None, what: str) -> Any:
    """A rich progress bar on stderr, or a stand-in that does nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    class _Off:
        def __enter__(self) -> _Off:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, completed: int, description: str = "",
                   total: int | None = None) -> None:
            return None

    if not enabled:
        return _Off()

    class _On:
        def __init__(self) -> None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=stderr_console, transient=True)
            self.task = self.progress.add_task(what, total=total)

        def __enter__(self) -> _On:
            self.progress.start()
            return self

        def __exit__(self, *exc: object) -> None:
            self.progress.stop()

        def update(self, completed: int, description: str = "",
                   total: int | None = None) -> None:
            if total is not None:
                self.progress.update(self.task, total=total)
            self.progress.update(self.task, completed=completed,
                                 description=description or what)

    return _On()


def _audit_table(console: Console, title: str, rows: Sequence[Sequence[Any]],
                 headers: Sequence[str], limit: int = 200) -> None:
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title, title_justify="left", title_style="bold")
    for h in headers:  # a leading "#" marks a numeric column: right-aligned
        table.add_column(h.removeprefix("#"), overflow="fold",
                         justify="right" if h.startswith("#") else "left")
    for row in rows[:limit]:
        table.add_row(*("" if v is None else f"{v:,}" if isinstance(v, int)
                        and not isinstance(v, bool) else str(v) for v in row))
    console.print(table)
    if len(rows) > limit:
        console.print(f"({len(rows) - limit} more rows; use --json for all)")


def _ms(ms: int | None) -> str:
    import datetime

    if ms is None:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, n: int = 14) -> str:
    return text if len(text) <= n + 1 else text[:n] + "…"


def _show_audit_report(console: Console, r: dict[str, Any]) -> None:
    if r.get("failure") is not None:
        if "chain" in r:
            ch = r["chain"]
            console.print(f"{r['commune']['name']}: blocks 1 to {ch['blocks']:,} "
                          f"({ch['transactions']:,} transactions) checked out before the "
                          "failure", markup=False)
        return  # the failure itself is the error line on stderr
    if "commune" in r:
        c, ch, k = r["commune"], r["chain"], r["checks"]
        console.print(f"[bold]{c['name']}[/] ({c['currency']}, {c['minor_units']} minor units)"
                      f"  chain id {c['chain_id']}")
        console.print(f"{ch['blocks']:,} blocks, {ch['transactions']:,} transactions, "
                      f"{_ms(ch['first_time_ms'])} .. {_ms(ch['last_time_ms'])} UTC")
        console.print(f"final block {ch['last_block_hash']}\nfinal state root "
                      f"{ch['state_root']}")
        console.print(f"verified: {k['transaction_signatures']:,} transaction signatures, "
                      f"{k['certificates']:,} certificates, {k['state_roots']:,} state roots, "
                      f"{k['invariant_checks']:,} invariant checks\n")
        m = r["members"]
        _audit_table(console, "Members over time", [
            (e["height"], _ms(e["time_ms"]), e["event"], _short(e["member"]), e["name"],
             e["how"])
            for e in m["events"]], ["#height", "time", "event", "member", "name", "how"])
        _audit_table(console, "Validator sets", [
            (v["from_height"], len(v["members"]), ", ".join(_short(x) for x in v["members"]))
            for v in r["validators"]], ["#from height", "#size", "members"])
        t = r["treasury"]
        _audit_table(console, "Treasury flows", [
            *[(k2, v) for k2, v in t["flows"].items()], ("net inflow", t["net_inflow"]),
            *[(f"held: {k2}", v) for k2, v in t["held_by"].items()]], ["flow", "#amount"])
        _audit_table(console, "Treasury actions", [
            (a["height"], a["kind"], _short(a["id"]), a["status"], a["approvals"],
             a["executed_height"] or "",
             ", ".join(f"{k2}={_short(str(v))}" for k2, v in sorted(a["args"].items())))
            for a in t["actions"]],
            ["#height", "kind", "id", "status", "#approvals", "#executed", "args"])
        _audit_table(console, "Withdrawals", [
            (w["height"], _short(w["account"]), w["amount"], w["status"], w["paid_height"] or "")
            for w in t["withdrawals"]], ["#height", "account", "#amount", "status", "#paid at"])
        _audit_table(console, "Period closes: rent charged and bond service paid (since the "
                     "previous close, liquidations included)", [
            (c["height"], c["periods"][0] if c["periods"][0] == c["periods"][1]
             else f"{c['periods'][0]}..{c['periods'][1]}", c["rent_paid"], c["rents_missed"],
             c["interest_paid"], c["principal_paid"], c["written_off"])
            for c in r.get("closes", [])],
            ["#closed at", "#period", "#rent paid", "#rents missed", "#interest paid",
             "#principal paid", "#written off"])
        _audit_table(console, "Dividends per period", [
            (p["period"], p["closed_height"], p["pool"], p["members"], p["share"], p["carry"],
             p["claimed"], p["unclaimed"]) for p in r["dividends"]],
            ["#period", "#closed at", "#pool", "#members", "#share", "#carry", "#claimed",
             "#unclaimed"])
        _audit_table(console, "Governance", [
            (_short(p["id"]), p["title"], p["type"], p["status"], p["yes"], p["no"],
             p["decided_height"] or "", p["outcome"]) for p in r["governance"]],
            ["id", "title", "type", "status", "#yes", "#no", "#decided", "outcome"])
        _show_audit_assets(console, r.get("assets", []))
        for name, tab in r.get("other_tables", {}).items():
            if tab["count"]:
                _audit_table(console, f"{name} ({tab['count']:,}): {tab['doc']}",
                             [[_short(str(v), 24) for v in row] for row in tab["rows"]],
                             tab["columns"])
        if r["evidence"]:
            _audit_table(console, "Evidence of misbehaviour (double signing)", [
                (e["included_height"], _short(e["validator"]), e["height"], e["round"])
                for e in r["evidence"]], ["#recorded at", "validator", "#height", "#round"])
        else:
            console.print("Evidence of misbehaviour: none recorded")
    console.print("\n[bold green]OK[/]: every signature, certificate, state root and "
                  "invariant checks out.")


def _bps(rate: int) -> str:
    return f"{rate / 100:.2f}%" if rate >= 0 else ""


def _show_audit_assets(console: Console, assets: list[dict[str, Any]]) -> None:
    _audit_table(console, "Assets", [
        (a["seq"], _short(a["id"]), a["description"], _short(a["requester"]), a["price"],
         a["rent"], a["term"], a["maturity"], _bps(a["max_rate_bps"]), a["status"],
         "yes" if a["owned"] else "no") for a in assets],
        ["#", "asset", "description", "requester", "#price", "#rent", "#term", "#maturity",
         "max rate", "status", "owned"])
    _audit_table(console, "Bond series", [
        (_short(a["id"]), s["face"], _bps(s["rate_bps"]), s["maturity"], s["level_payment"],
         s["start_period"], s["interest_paid"], s["principal_paid"], s["outstanding"],
         s["unpaid_interest"], s["principal_written_off"], s["status"],
         s["redeemed_period"] if s["status"] == "redeemed" else "")
        for a in assets if (s := a["series"]) is not None],
        ["asset", "#face", "stop-out", "#maturity", "#level payment", "#from period",
         "#interest paid", "#principal paid", "#outstanding", "#unpaid interest",
         "#written off", "status", "#redeemed in"])
    _audit_table(console, "Bond holdings", [
        (_short(a["id"]), _short(b["holder"]), b["face"], b["outstanding"],
         b["interest_received"], b["principal_received"], b["written_off"])
        for a in assets if a["series"] is not None for b in a["series"]["holders"]],
        ["asset", "holder", "#face", "#outstanding", "#interest", "#principal",
         "#written off"])
    _audit_table(console, "Auctions", [
        (_short(a["id"]), u["kind"], u["round"], u["opened_period"], u["bids"], u["revealed"],
         _bps(u["reserve"]) if u["kind"] == "bond" else u["reserve"],
         (_bps(u["result"]) if u["kind"] == "bond" else u["result"]) if u["result"] >= 0
         else "none", _short(u["winner"]) if u["winner"] else "", u["forfeited"], u["status"])
        for a in assets for u in a["auctions"]],
        ["asset", "kind", "#round", "#opened", "#bids", "#revealed", "reserve",
         "stop-out / price", "winner", "#forfeited", "status"])
    _audit_table(console, "Rentals and rents", [
        (_short(a["id"]), t["number"], _short(t["lessee"]), t["rent"], t["term"],
         f"{t['start']}..{t['last']}", t["paid"], t["missed_total"], t["status"])
        for a in assets if (t := a["rental"]) is not None],
        ["asset", "#rental", "lessee", "#rent", "#term", "periods", "#paid", "#missed",
         "status"])


def _audit_failure_text(f: dict[str, Any]) -> str:
    where = (f"at block {f['height']}" if f["height"] is not None
             else "at the genesis" if f["check"] == "genesis" else "in the log file")
    if f["tx_index"] is not None:
        where += f", transaction {f['tx_index']}"
        if f["tx_id"]:
            where += f" ({f['tx_id']})"
    return f"{where}: {f['what']} ({f['check']}): {f['reason']}"


def _parse_txid(text: str) -> bytes:
    t = text.strip().lower()
    if len(t) != 64:
        fail(f"{text!r} is not a transaction id (64 hex digits)", Exit.USAGE)
    try:
        return bytes.fromhex(t)
    except ValueError:
        fail(f"{text!r} is not a transaction id (64 hex digits)", Exit.USAGE)


def _load_genesis_file(path: Path) -> Any:
    from ledger.genesis import Genesis, GenesisError

    try:
        return Genesis.load(str(path))
    except OSError as exc:
        fail(f"cannot read the genesis {path}: {exc}", Exit.NOT_FOUND)
    except GenesisError as exc:
        fail(f"{path} is not a valid genesis: {exc}", Exit.USAGE)


@cli.group()
def audit() -> None:
    """Check a commune without trusting any node: export its log, replay it, prove
    single transactions."""


@audit.command("export")
@home_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write ('-' for standard output).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@json_option
def audit_export(home: Path | None, out: Path, force: bool, as_json: bool) -> None:
    """Write this node's whole signed log (genesis, blocks, certificates) to one file.

    Reads the store directly and read-only, whether or not the daemon runs; the log
    ends at the last block committed when the export started. Check it anywhere with
    `commune audit replay FILE`.
    """
    from ledger.export import ExportError, export_store

    paths = resolve_paths(home)
    if not paths.db.exists():
        fail(f"no ledger store at {paths.db}; is --home the data directory of a node that "
             "has run?", Exit.NOT_FOUND)
    to_stdout = str(out) == "-"
    if not to_stdout and out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it", Exit.EXISTS)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    show = not as_json and stderr_console.is_terminal
    try:
        with _audit_progress(show, None, "exporting") as bar:
            def progress(h: int, last: int) -> None:
                if h % 64 == 0 or h == last:
                    bar.update(h, total=last)

            if to_stdout:
                chain_id, end = export_store(paths.db, sys.stdout.buffer, progress=progress)
                sys.stdout.buffer.flush()
            else:
                with open(tmp, "wb") as f:
                    chain_id, end = export_store(paths.db, f, progress=progress)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, out)
    except ExportError as exc:
        fail(f"cannot export: {exc}", Exit.FAILED)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}", Exit.FAILED)
    finally:
        if tmp.exists():
            tmp.unlink()
    result = {"file": "-" if to_stdout else str(out), "chain_id": chain_id.hex(),
              "blocks": end.blocks, "last_block_hash": end.last_hash.hex(),
              "bytes": None if to_stdout else out.stat().st_size}
    if to_stdout:
        stderr_console.print(f"exported {end.blocks:,} blocks", markup=False)
        return
    emit(result, as_json, lambda console, r: console.print(
        f"Exported {r['blocks']:,} blocks ({r['bytes']:,} bytes) to {r['file']}\n"
        f"chain id {r['chain_id']}\nlast block {r['last_block_hash']}", markup=False))


@audit.command("replay")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--genesis", "genesis_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The commune's genesis: the log must be of this commune.")
@click.option("--peer", default=None, metavar="MULTIADDR",
              help="Fetch the chain from this node (/ip4/../tcp/../p2p/<id>) over block sync "
                   "instead of reading a file; needs --genesis.")
@click.option("--save", "save", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --peer: also keep the fetched log in this file.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Processes verifying signatures ahead of execution (default: one per "
                   "core beside this one's, 0 on one core).")
@json_option
def audit_replay(file: Path | None, genesis_path: Path | None, peer: str | None,
                 save: Path | None, workers: int | None, as_json: bool) -> None:
    """Check a whole log (FILE, or - for standard input), trusting nothing in it, and
    print the commune's history.

    Checks the hash chain, every transaction signature, every certificate against the
    validator set of its height (followed from the log itself), re-executes every block
    into a fresh in-memory ledger comparing every state root, and checks that money is
    conserved and nothing is negative after every block. On the first failure: the
    block, the transaction, what failed; exit code 1.
    """
    import stat
    from typing import BinaryIO

    from ledger.audit import audit_log, audit_records

    if (file is None) == (peer is None):
        fail("give either a log FILE or --peer MULTIADDR", Exit.USAGE)
    if save is not None and peer is None:
        fail("--save keeps a log fetched with --peer; a FILE is already saved", Exit.USAGE)
    expected = _load_genesis_file(genesis_path) if genesis_path is not None else None
    show = not as_json and stderr_console.is_terminal
    prefetch = audit_parallel_prefetch(_audit_workers(workers))
    txs = 0
    claimed: tuple[int, bytes] | None = None
    if peer is not None:
        if expected is None:
            fail("--peer needs the commune's --genesis: it is the one thing the audit trusts",
                 Exit.USAGE)
        if save is not None and save.exists():
            fail(f"{save} exists; choose another --save file", Exit.EXISTS)
        try:
            saved = None if save is None else open(save, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            fail(f"cannot write {save}: {exc}", Exit.FAILED)
        source = _PeerSource(peer, expected, saved)
        try:
            with _audit_progress(show, None, "fetching and replaying") as bar:
                def on_peer_block(p: Any) -> None:
                    nonlocal txs
                    txs += p.txs
                    if p.height % 16 == 0:
                        top = source.claimed[0] if source.claimed else None
                        bar.update(p.height, f"block {p.height:,}, {txs:,} txs", total=top)

                result = audit_records(expected, source.records(), prefetch=prefetch,
                                       on_block=on_peer_block)
        finally:
            source.close()
            if saved is not None:
                saved.close()
        claimed = source.claimed
    else:
        assert file is not None
        stream: BinaryIO
        try:
            stream = (sys.stdin.buffer if str(file) == "-"
                      else open(file, "rb"))  # noqa: SIM115 - closed below
        except FileNotFoundError:
            fail(f"no such file {file}", Exit.NOT_FOUND)
        except OSError as exc:
            fail(f"cannot read {file}: {exc}", Exit.FAILED)
        st = os.fstat(stream.fileno())
        total = st.st_size if stat.S_ISREG(st.st_mode) else None
        with stream, _audit_progress(show, total, "replaying") as bar:
            def on_block(p: Any) -> None:
                nonlocal txs
                txs += p.txs
                if p.height % 32 == 0 and p.offset is not None:
                    bar.update(p.offset, f"block {p.height:,}, {txs:,} txs")

            result = audit_log(stream, expected_genesis=expected, prefetch=prefetch,
                               on_block=on_block)
    report = result.report()
    if result.auditor is not None:
        result.auditor.close()
    if claimed is not None:
        report["peer"] = {"address": peer, "claimed_height": claimed[0],
                          "claimed_hash": claimed[1].hex()}
        if result.ok and result.auditor is not None and (
                result.auditor.last_hash != claimed[1] and result.auditor.height == claimed[0]):
            warn(f"the peer's status named block hash {claimed[1].hex()} for height "
                 f"{claimed[0]}, but it served a chain ending in "
                 f"{result.auditor.last_hash.hex()}")
    emit(report, as_json, _show_audit_report)
    if result.failure is not None:
        fail(f"audit failed {_audit_failure_text(report['failure'])}", Exit.FAILED)


@audit.command("prove")
@click.argument("txid")
@home_option
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the proof to this file (else print it).")
@json_option
def audit_prove(txid: str, home: Path | None, out: Path | None, as_json: bool) -> None:
    """An inclusion proof of committed transaction TXID, checkable offline.

    The proof carries the transaction, its Merkle path, its block's header and commit
    certificate, and the hand-overs of the validator set since the genesis, so that
    `commune audit verify-proof FILE --genesis G` needs nothing else. Reads the store
    directly (daemon running or not).
    """
    from ledger.export import ExportError, StoreSnapshot
    from ledger.proofs import ProofError, dumps, make_proof

    tid = _parse_txid(txid)
    paths = resolve_paths(home)
    if not paths.db.exists():
        fail(f"no ledger store at {paths.db}; is --home the data directory of a node?",
             Exit.NOT_FOUND)
    try:
        with StoreSnapshot(paths.db) as snap:
            proof = make_proof(snap, tid)
    except ExportError as exc:
        fail(f"cannot read the store: {exc}", Exit.FAILED)
    except ProofError as exc:
        code = Exit.NOT_FOUND if "not in a committed block" in str(exc) else Exit.FAILED
        fail(str(exc), code)
    text = dumps(proof)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}", Exit.FAILED)
    summary = {"file": str(out), "txid": proof["txid"], "height": proof["height"],
               "index": proof["index"], "handovers": len(proof["validator_chain"])}
    emit(summary, as_json, lambda console, r: console.print(
        f"Wrote the proof of transaction {r['txid']} (block {r['height']}, index "
        f"{r['index']}, {r['handovers']} validator hand-overs) to {r['file']}", markup=False))


@audit.command("verify-proof")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--genesis", "genesis_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The commune's genesis file: the only thing the check trusts.")
@json_option
def audit_verify_proof(file: Path, genesis_path: Path, as_json: bool) -> None:
    """Check an inclusion proof offline against the commune's genesis.

    Trusts the genesis and the BFT assumption (each validator set along the way had
    fewer than 1/3 faulty members); nothing the prover says. Exit code 1 if it fails.
    """
    from ledger.proofs import MAX_PROOF_BYTES, ProofError, loads, verify_proof

    genesis = _load_genesis_file(genesis_path)
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_PROOF_BYTES + 1)
    except FileNotFoundError:
        fail(f"no such file {file}", Exit.NOT_FOUND)
    except OSError as exc:
        fail(f"cannot read {file}: {exc}", Exit.FAILED)
    try:
        if len(data) > MAX_PROOF_BYTES:
            raise ProofError(f"the proof is over {MAX_PROOF_BYTES} bytes")
        v = verify_proof(loads(data.decode("utf-8", errors="replace")), genesis)
    except ProofError as exc:
        if as_json:
            emit({"valid": False, "reason": str(exc)}, True)
        fail(f"the proof does not verify: {exc}", Exit.FAILED)
    result = {"valid": True, "txid": v.txid.hex(), "kind": v.kind, "signer": id_text(v.signer),
              "nonce": v.nonce, "args": {k: (id_text(a) if isinstance(a, bytes) and len(a) == 32
                                             and k in ("to", "account", "applicant", "member")
                                             else a) for k, a in v.args.items()},
              "height": v.height, "index": v.index, "block_hash": v.block_hash.hex(),
              "time_ms": v.time_ms, "certified_by": [id_text(m) for m in v.validators],
              "signatures": v.signatures, "handovers": v.handovers,
              "trust": "genesis founders" if v.handovers == 0 else
              f"genesis founders and {v.handovers} certified validator hand-overs"}

    def human(console: Console, r: dict[str, Any]) -> None:
        console.print(f"[bold green]valid[/]: transaction {r['txid']}")
        console.print(f"  {r['kind']} by {r['signer']} (nonce {r['nonce']})", markup=False)
        console.print(f"  in block {r['height']} at index {r['index']} ({_ms(r['time_ms'])} "
                      f"UTC), block hash {r['block_hash']}", markup=False)
        console.print(f"  certified by {r['signatures']} of {len(r['certified_by'])} "
                      f"validators; trust: {r['trust']}", markup=False)

    emit(result, as_json, human)



# =========================================================================================
# Scenarios: `commune simulate FILE` (bootstrap/scenario.py, player.py, simulate.py,
# summary.py; shared/SCENARIOS.md)
#
# No daemon and no data directory: the scenario is played on an in-memory ledger with
# virtual time, so years of periods take seconds and the same file always ends with the
# same state root. Rejected steps are part of the result (exit 0); a scenario that is
# malformed or impossible is refused before anything runs (exit 1).
# =========================================================================================


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True,
              help="Verify money conservation and the bond series' books after every block "
                   "(slower; a failure is a bug in the ledger).")
@json_option
def simulate(file: Path, check: bool, as_json: bool) -> None:
    """Play a scenario FILE on the ledger state machine and summarize what happened.

    Prints every actor's balance, arrears and dividends, every asset's auction, bonds,
    rent and re-auctions, the treasury flows, the dividends of each period, and the
    steps the ledger rejected with its reason. Example scenarios are in
    bootstrap/scenarios/.
    """
    from bootstrap.scenario import ScenarioError, load_scenario
    from bootstrap.simulate import InvariantError
    from bootstrap.simulate import simulate as run_simulation
    from bootstrap.summary import render

    if not file.exists():
        fail(f"no scenario file {file}; example scenarios are in bootstrap/scenarios/",
             Exit.NOT_FOUND)
    try:
        scenario = load_scenario(file)
    except ScenarioError as exc:
        fail(f"{file} is not a valid scenario: {exc}; see shared/SCENARIOS.md for the format",
             Exit.FAILED)
    try:
        summary = run_simulation(scenario, check=check)
    except InvariantError as exc:
        fail(f"ledger invariant broken while playing {file}: {exc}; this is a bug, please "
             "report it with the scenario", Exit.INTERNAL)
    emit(summary, as_json, render)

# =========================================================================================
# (end of the scenarios section)
# =========================================================================================

# =========================================================================================
# Devnet: `commune devnet` (bootstrap/devnet.py, devnet_backend.py, devnet_view.py)
#
# A whole commune on this machine: N member daemons as separate processes on loopback,
# a fresh genesis, a scenario played through their control APIs in real time, the
# `simulate` summary, checks (same state root everywhere, same figures as simulate).
# =========================================================================================


@cli.command()
@click.option("--nodes", type=click.IntRange(1), default=None,
              help="Daemons to run (default: one per member the scenario will have: its "
                   "founders and applicants; more adds observer nodes).")
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Scenario file (default: the lifecycle example, "
                                 "bootstrap/scenarios/lifecycle.json, 20 s periods).")
@click.option("--keep-running", is_flag=True,
              help="Leave the daemons running at the end and say how to reach them.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Empty or new directory for the nodes' homes (default: a "
                                 "temporary one, removed after a clean run).")
@json_option
def devnet(nodes: int | None, scenario_file: Path | None, keep_running: bool,
           directory: Path | None, as_json: bool) -> None:
    """Found a commune of member daemons on this machine and play a scenario on it, live.

    Creates one home per node and a fresh genesis, starts the daemons as separate
    processes on 127.0.0.1, plays the scenario through their control APIs in real time
    with a live display, prints the same summary as `commune simulate` on the same file,
    checks that every node holds the same state root and that the figures equal the
    simulation's, then stops the daemons (unless --keep-running). Ctrl-C stops everything
    cleanly. Exit code 0 when every check passes, 1 otherwise.
    """
    import threading

    from bootstrap import devnet as dn
    from bootstrap.devnet_view import LiveView, render_result
    from bootstrap.scenario import ScenarioError

    if scenario_file is not None and not scenario_file.exists():
        fail(f"no scenario file {scenario_file}; example scenarios are in "
             "bootstrap/scenarios/", Exit.NOT_FOUND)
    try:
        scenario, _label = dn.load_devnet_scenario(scenario_file)
    except ScenarioError as exc:
        fail(f"{scenario_file} is not a valid scenario: {exc}; see shared/SCENARIOS.md for "
             "the format", Exit.FAILED)
    console = stderr_console if as_json else stdout_console
    stopping = threading.Event()
    opts = dn.Options(scenario_file, nodes, directory, keep_running)
    view = LiveView(console, scenario)
    try:
        with dn.signals_interrupt(), view:
            try:
                result = dn.run(opts, view, stopping)
            except KeyboardInterrupt:
                stopping.set()
                raise
    except dn.DevnetUsageError as exc:
        fail(str(exc), Exit.EXISTS if exc.exists else Exit.USAGE)
    except dn.DevnetError as exc:
        fail(f"the devnet stopped: {exc}", Exit.FAILED)
    except KeyboardInterrupt:
        where = f"; their data is in {view.devnet.directory}" if view.devnet else ""
        stderr_console.print(f"interrupted: every daemon was stopped{where}", markup=False)
        sys.exit(int(Exit.INTERRUPTED))
    if as_json:
        emit(result.summary, True)
    else:
        render_result(console, result)
    if not result.exit_ok:
        fail("the devnet's checks failed (see above)", Exit.FAILED)


if __name__ == "__main__":
    main()
