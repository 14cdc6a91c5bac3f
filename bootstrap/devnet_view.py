"""What `commune devnet` shows while it runs, and after.

While it runs: a live panel (rich) with the run's clock and progress through the
periods, every daemon's height, round, peers, mempool and role (polled from its
API twice a second in a background thread), and what is happening now (the steps in
flight, or what the run is waiting for and for how long). Above it, one line per
finished step (green, or red with the ledger's reason when rejected), one per period
close with its dividend, one per auction close with its result. On a terminal the
panel redraws in place; in a pipe or a log only the lines are printed.

After: the summary `commune simulate` prints, then the devnet's own checks (the state
root every node holds at one height; the figures against an in-process simulation),
then how to talk to the daemons if they keep running.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bootstrap.devnet import Devnet, Result
from bootstrap.devnet_backend import DaemonBackend, DevnetError, now_ms
from bootstrap.player import Action, Outcome, ScenarioPlayer
from bootstrap.scenario import Scenario
from bootstrap.summary import render as render_summary
from ledger.auction import rental_auction_id
from node.client import ClientError

POLL_SECONDS = 0.5


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


class LiveView:
    """The devnet's `View`: a live panel plus printed lines (see the module docstring)."""

    def __init__(self, console: Console, scenario: Scenario) -> None:
        self.console = console
        self.scenario = scenario
        self.devnet: Devnet | None = None
        self.backend: DaemonBackend | None = None
        self.player: ScenarioPlayer | None = None
        self._phase = "preparing"
        self._until: int | None = None
        self._active: dict[int, str] = {}
        self._status: dict[str, dict[str, Any] | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._live: Live | None = None
        self.rejected = 0
        self.done = 0
        self._assets: dict[str, dict[str, Any]] = {}
        self._started = time.monotonic()

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> LiveView:
        self._live = Live(console=self.console, get_renderable=self._render,
                          refresh_per_second=4, transient=True, redirect_stdout=False,
                          redirect_stderr=False)
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self._live is not None:
            self._live.stop()

    def attach(self, devnet: Devnet, backend: DaemonBackend | None,
               player: ScenarioPlayer | None = None) -> None:
        self.devnet = devnet
        self.backend = backend
        self.player = player
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="devnet-status",
                                            daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            devnet = self.devnet
            if devnet is not None:
                for d in devnet.daemons:
                    s = None if d.gone() else d.status()
                    with self._lock:
                        self._status[d.name] = s
            self._stop.wait(POLL_SECONDS)

    # ---- the run tells us ------------------------------------------------------------------

    def phase(self, text: str, until_ms: int | None = None) -> None:
        with self._lock:
            self._phase, self._until = text, until_ms

    def _clock(self) -> str:
        return f"[dim]{_duration(time.monotonic() - self._started):>5}[/] "

    def _print(self, markup: str) -> None:
        self.console.print(self._clock() + markup)

    def note(self, text: str, style: str = "") -> None:
        self._print(f"[{style}]{escape(text)}[/]" if style else escape(text))

    def warn(self, text: str) -> None:
        self._print(f"[yellow]warning: {escape(text)}[/]")

    def waiting(self, text: str, until_ms: int | None) -> None:
        self.phase(text, until_ms)

    def action_started(self, action: Action, text: str) -> None:
        with self._lock:
            self._active[id(action)] = text
            self._phase, self._until = "", None

    def action_done(self, action: Action, text: str, outcome: Outcome,
                    height: int | None) -> None:
        with self._lock:
            self._active.pop(id(action), None)
            self.done += 1
        quiet = action.step is None and outcome.reason is None and self.backend is not None \
            and self.backend.by_daemon(action)
        if quiet:  # a daemon's own dividend claim: the period's close line says so
            return
        where = f"  [dim]height {height}[/]" if height is not None else ""
        if outcome.reason is None:
            self._print(f"  [green]✓[/] {escape(text)}{where}")
        else:
            self.rejected += 1
            step = "" if action.step is None else f"step {action.step} "
            self._print(f"  [red]✗ {escape(text)}[/]: {step}rejected: "
                        f"{escape(outcome.reason)}")

    def advanced(self, time_ms: int, height: int) -> None:
        backend = self.backend
        if backend is None:
            return
        try:
            self._report_closes(backend, time_ms, height)
        except ClientError:
            pass  # a report is not worth failing the run for
        except DevnetError:
            raise

    def _report_closes(self, backend: DaemonBackend, time_ms: int, height: int) -> None:
        offset = time_ms - backend.genesis_time_ms
        if offset > 0 and offset % backend.period_ms == 0:
            closed = offset // backend.period_ms - 1
            self._print(f"[bold]period {closed} closed[/] at height {height}")
            for line in self._asset_changes(backend):
                self._print("  " + line)
            row = backend.view.row("periods", closed)
            if row is not None and int(row["pool"]) and int(row["share"]):
                claim = " (their daemons claim it)" if backend.auto_claim else ""
                self._print(f"  common income {int(row['pool']):,}: a dividend of "
                            f"{int(row['share']):,} to each of {int(row['members'])} "
                            f"members{claim}")
            elif row is not None and int(row["pool"]):
                self._print(f"  common income {int(row['pool']):,}: less than a unit per "
                            "member, carried into the next period")
            if closed + 1 < self.scenario.periods:
                self._print(f"[bold cyan]period {closed + 1}[/]")
            return
        for line in self._auction_closes(backend, time_ms):
            self._print(line)

    def _auction_closes(self, backend: DaemonBackend, time_ms: int) -> list[str]:
        player = self.player
        if player is None:
            return []
        out = []
        for name, asset in player.state.assets.items():
            a = backend.view.row("auctions", asset)
            if a is None or int(a["reveal_end_ms"]) != time_ms:
                continue
            if a["status"] == "cleared":
                bids = backend.view.rows("bond_bids", (asset,))
                won = ", ".join(f"{backend.names.get(b['bidder'], '?')} "
                                f"{int(b['allocation']):,}"
                                for _, b in bids if int(b["allocation"]))
                out.append(f"the bond auction of [bold]{escape(name)}[/] cleared at "
                           f"{int(a['result'])} bps: {escape(won)}")
            else:
                out.append(f"the bond auction of [bold]{escape(name)}[/] "
                           f"{escape(str(a['status']))}")
        for name, asset in player.state.assets.items():
            row = backend.view.row("assets", asset)
            if row is None or not int(row["reauctions"]):
                continue
            r = backend.view.row("auctions", rental_auction_id(asset, int(row["reauctions"]) - 1))
            if r is None or int(r["reveal_end_ms"]) != time_ms:
                continue
            if r["winner"]:
                who = backend.names.get(r["winner"], "?")
                out.append(f"the rental auction of [bold]{escape(name)}[/]: {escape(who)} "
                           f"rents it for {int(r['result']):,} a period (second price)")
            else:
                out.append(f"the rental auction of [bold]{escape(name)}[/] had no valid bid: "
                           "the asset is to be sold")
        return out

    def _asset_changes(self, backend: DaemonBackend) -> list[str]:
        """What a period close did to each asset: rent, bond service, returns."""
        player = self.player
        if player is None:
            return []
        out = []
        for name, asset in player.state.assets.items():
            now = {"asset": backend.view.row("assets", asset),
                   "rental": backend.view.row("rentals", asset),
                   "series": backend.view.row("series", asset)}
            before = self._assets.get(name, {})
            self._assets[name] = now
            out += [f"{escape(name)}: {escape(t)}" for t in _asset_lines(before, now, backend)]
        return out
    # ---- drawing -----------------------------------------------------------------------------

    def _render(self) -> RenderableType:
        with self._lock:
            phase, until = self._phase, self._until
            active = list(self._active.values())
            status = dict(self._status)
        parts: list[RenderableType] = []
        parts.append(self._header())
        if self.devnet is not None:
            parts.append(self._nodes(status))
        if active:
            more = f" (+{len(active) - 3} more)" if len(active) > 3 else ""
            parts.append(Text("now: " + " · ".join(active[:3]) + more, style="cyan"))
        elif phase:
            left = f" (in {_duration((until - now_ms()) / 1000)})" \
                if until is not None and until - now_ms() >= 1000 else ""
            parts.append(Text(f"now: {phase}{left}", style="cyan"))
        return Group(*parts)

    def _header(self) -> RenderableType:
        s = self.scenario
        period_ms = s.commune.params.period_seconds * 1000
        total = s.periods * period_ms
        elapsed = f"{_duration(time.monotonic() - self._started)} elapsed"
        if self.devnet is None or self.devnet.genesis is None:
            return Text(f"{s.commune.name} · {elapsed}", style="bold")
        into = now_ms() - self.devnet.genesis_time_ms
        if into < 0:
            line = f"{s.commune.name} · founded in {_duration(-into / 1000)} · {elapsed}"
            return Text(line, style="bold")
        period = min(s.periods - 1, into // period_ms)
        left = max(0, total - into) / 1000
        line = (f"{s.commune.name} · period {period} (of 0–{s.periods - 1}) · {elapsed} · "
                f"about {_duration(left)} left")
        grid = Table.grid()
        grid.add_row(ProgressBar(total=total, completed=min(total, into), width=60))
        return Group(Text(line, style="bold"), grid)

    def _nodes(self, status: dict[str, dict[str, Any] | None]) -> RenderableType:
        assert self.devnet is not None
        period_ms = self.scenario.commune.params.period_seconds * 1000
        t = Table(box=None, padding=(0, 2), header_style="bold dim")
        for col in ("node", "role", "height", "period", "round", "peers", "mempool"):
            t.add_column(col, justify="left" if col in ("node", "role") else "right")
        for d in self.devnet.daemons:
            s = status.get(d.name)
            gone = d.gone()
            if gone is not None:
                t.add_row(d.name, Text(gone, style="red"), "", "", "", "", "")
                continue
            if s is None:
                t.add_row(d.name, Text("starting…", style="dim"), "", "", "", "", "")
                continue
            if s.get("syncing"):
                role = Text("syncing", style="yellow")
            elif s.get("is_validator"):
                role = Text("validator", style="green")
            else:
                role = Text("follower", style="dim")
            last = s.get("last_block") or {}
            period = ""
            if last and self.devnet.genesis is not None:
                period = str((int(last["time_ms"]) - self.devnet.genesis_time_ms) // period_ms)
            t.add_row(d.name, role, str(s.get("height", "")), period, str(s.get("round", "")),
                      str(s.get("peers", "")), str(s.get("mempool_txs", "")))
        return t


def _asset_lines(before: dict[str, Any], now: dict[str, Any],
                 backend: DaemonBackend) -> list[str]:
    def get(snapshot: dict[str, Any], table: str, column: str) -> int:
        row = snapshot.get(table)
        return 0 if not row else int(row[column])

    lines = []
    rental = now.get("rental")
    old_rental = before.get("rental")
    if rental and old_rental and (old_rental["lessee"], old_rental["start"]) != (
            rental["lessee"], rental["start"]):
        before = {**before, "rental": None}  # a new rental (a re-auction's): count afresh
    if rental:
        lessee = backend.names.get(rental["lessee"], "?")
        paid = get(now, "rental", "paid") - get(before, "rental", "paid")
        missed = get(now, "rental", "missed_total") - get(before, "rental", "missed_total")
        if paid:
            lines.append(f"rent {paid:,} paid by {lessee}")
        if missed:
            lines.append(f"{lessee} missed the rent ({missed} period{'s' * (missed > 1)})")
    s = now.get("series")
    if s:
        interest = get(now, "series", "interest_paid") - get(before, "series", "interest_paid")
        principal = get(now, "series", "principal_paid") - get(before, "series",
                                                               "principal_paid")
        if interest or principal:
            lines.append(f"bondholders get interest {interest:,} and principal {principal:,}; "
                         f"{int(s['outstanding']):,} outstanding")
        old = (before.get("series") or {}).get("status")
        if s["status"] != old and s["status"] == "redeemed":
            lines.append("its bonds are redeemed: the commune owns it, its rent is common "
                         "income from now on")
    a, old_a = now.get("asset"), before.get("asset")
    if a and old_a and a["status"] != old_a["status"] and a["status"] in (
            "reauction", "liquidating", "liquidated"):
        lines.append(f"status {old_a['status']} → {a['status']}")
    return lines


# ---- after the run -------------------------------------------------------------------------


def render_result(console: Console, result: Result) -> None:
    """The simulate summary, then the devnet's checks and what to do next."""
    summary = result.summary
    info = summary["devnet"]
    render_summary(console, summary)
    console.print()
    roots = info["state_roots"]
    if roots["agree"]:
        root = next(iter(roots["roots"].values()))
        console.print(f"[green]✓[/] state root at height {roots['height']}: {root[:16]}… on "
                      f"all {len(roots['roots'])} nodes")
    else:
        console.print(f"[red]✗ the nodes hold different state roots at height "
                      f"{roots['height']}:[/]")
        for name, root in roots["roots"].items():
            console.print(f"    {name}: {root}")
    sim = info["simulate"]
    if sim["same_figures"]:
        console.print(f"[green]✓[/] same figures as `commune simulate {info['scenario']}` "
                      "(heights, state roots and ids differ: blocks fall at other times)")
    else:
        console.print(f"[red]✗ the figures differ from `commune simulate "
                      f"{info['scenario']}`:[/]")
        for line in sim["differences"]:
            console.print(f"    {escape(line)}")
    for line in info["late"]:
        console.print(f"[yellow]warning:[/] {escape(line)}")
    console.print(f"{info['transactions']} transactions sent through the daemons' APIs; the "
                  "daemons revealed their members' sealed bids and claimed their dividends by "
                  f"themselves; {info['seconds']:.0f} s in all.")
    if info.get("running"):
        first = info["nodes"][0]["home"]
        console.print()
        console.print(f"[bold]The {len(info['nodes'])} daemons keep running[/] "
                      f"(data in {info['dir']}). Talk to them:")
        for n in info["nodes"]:
            console.print(f"    commune status --home {n['home']}")
        console.print(f"    commune members --home {first}")
        console.print(f"    commune asset list --home {first}")
        console.print(f"    commune block show --home {first}")
        console.print("Stop them (each stops cleanly on SIGTERM):")
        console.print(f"    {info['stop']}")
    else:
        codes = {n["exit_code"] for n in info["nodes"]}
        if codes == {0}:
            console.print(f"Stopped {len(info['nodes'])} daemons cleanly.")
        else:
            console.print(f"[red]The daemons stopped with exit codes "
                          f"{', '.join(str(n['exit_code']) for n in info['nodes'])}[/]; their "
                          f"logs: {info['dir']}/NAME/daemon.log")
        if info["kept"]:
            console.print(f"Their data is kept in {info['dir']}.")
        else:
            console.print(f"Removed {info['dir']} (keep a devnet's data with --dir DIR or "
                          "--keep-running).")
