"""Playing a scenario (shared/SCENARIOS.md): what the scenario does, apart from how it is run.

`ScenarioPlayer` turns a parsed scenario into signed-transaction *actions* at the right
moments of virtual time and hands them to a `Backend`, which gets them into blocks and
answers reads of the committed state. `commune simulate` runs it on one in-process
ledger (`bootstrap/simulate.py`); `commune devnet --scenario` can run the very same
player on live daemons. Both see the same transactions in the same order and the same
deadlines, so both end with the same figures.

Per period p (starting at `genesis + p * period`):

1. the close of period p - 1: a block at the boundary (the ledger closes the period at
   the start of the first block that reaches it, opening any rental re-auctions);
2. with `auto_claim`, every member's claim of the dividend just closed, then the steps of
   period p in file order, grouped into as few blocks as possible: a step starts a new
   block only when it names an object (asset, proposal) created by a step of the
   current block, since its transaction must carry that object's id;
3. the auctions: at the end of each open commit window, every sealed bid of the
   scenario that is to be revealed is revealed (salts are re-derived from the bidder's
   key seed and the auction, as a node does after a restart); at the end of each reveal
   window a block lets the ledger close the auction;
4. on to the next boundary. After the last period's close, the final claims.

An *action* is the transactions of one step (a deposit is a `treasury.deposit` by one
treasury signer plus `treasury.approve`s by others up to the threshold; a withdrawal is
`account.withdraw` plus a payout the same way). A backend runs an action's transactions
in order and stops at the first one the ledger rejects, reporting its reason: the step
is rejected, nothing after it in the same action is sent, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bootstrap.scenario import (
    AcquireFailedStep,
    AcquireStep,
    ApplyStep,
    AttestStep,
    BidStep,
    BondTransferStep,
    ClaimStep,
    DepositStep,
    EndRentalStep,
    ExpelChange,
    LiquidatedStep,
    ParamChange,
    ProposeStep,
    RentBidStep,
    RequestStep,
    ResignStep,
    Scenario,
    Step,
    TransferStep,
    TreasuryChange,
    VoteStep,
    WithdrawStep,
)
from ledger.auction import bond_commitment, derive_salt, rent_commitment, rental_auction_id
from protocol.crypto import SigningKey, id_text

MAX_CLAIM_PERIODS = 1000
"""Periods in one `dividend.claim` (its schema's bound)."""

Args = dict[str, Any] | Callable[[Sequence[bytes]], dict[str, Any]]
"""Transaction args, or a function of the ids of the action's earlier transactions."""


@dataclass(frozen=True)
class Intent:
    key: SigningKey
    kind: str
    args: Args

    def resolve(self, earlier: Sequence[bytes]) -> dict[str, Any]:
        return self.args(earlier) if callable(self.args) else dict(self.args)


@dataclass(frozen=True)
class Action:
    """The transactions of one step (`step` None: the runner's own, e.g. a claim)."""

    step: int | None
    what: str
    intents: tuple[Intent, ...]


@dataclass(frozen=True)
class Outcome:
    ids: tuple[bytes, ...]
    """Ids of the action's transactions that were committed, in order."""
    reason: str | None
    """Why the next one was rejected; None when all were committed."""


class Reader(Protocol):
    """Reads of the committed state (`ledger.queries.StateView` is one)."""

    def row(self, table: str, key: Any) -> dict[str, Any] | None: ...

    def rows(self, table: str, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, dict[str, Any]]]:
        ...

    def scalar(self, name: str) -> int: ...


class Backend(Protocol):
    """How transactions reach a ledger, and how time moves."""

    @property
    def chain_id(self) -> bytes: ...

    @property
    def genesis_time_ms(self) -> int: ...

    @property
    def view(self) -> Reader: ...

    def last_time_ms(self) -> int:
        """Time of the last committed block (the genesis time before the first)."""
        ...

    def submit(self, actions: Sequence[Action], time_ms: int) -> list[Outcome]:
        """Commit the actions' transactions in order, in blocks at or after `time_ms`."""
        ...

    def advance_to(self, time_ms: int) -> None:
        """Commit a block at `time_ms` unless the last block is already that late."""
        ...


@dataclass(frozen=True)
class Rejection:
    step: int
    do: str
    by: str
    reason: str
    phase: str = "step"
    """"step", or "reveal" for the reveal of the step's bid."""


@dataclass
class _Sealed:
    step: int
    actor: str
    kind: str  # "bond.reveal" or "rent.reveal"
    args: dict[str, Any]


@dataclass
class PlayerState:
    """What the player learned while playing: object ids by name, rejected steps."""

    assets: dict[str, bytes] = field(default_factory=dict)
    proposals: dict[str, bytes] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    runner_rejected: list[str] = field(default_factory=list)
    """The runner's own transactions (claims) that failed: never expected."""
    blocks: int = 0


class ScenarioPlayer:
    def __init__(self, scenario: Scenario, backend: Backend) -> None:
        self.scenario = scenario
        self.backend = backend
        self.keys: dict[str, SigningKey] = {n: scenario.key(n) for n in scenario.actors}
        self.names: dict[bytes, str] = {k.public: n for n, k in self.keys.items()}
        self.state = PlayerState()
        self._bids: dict[tuple[bytes, bytes], int] = {}  # (bidder, auction) -> bids so far
        self._sealed: dict[bytes, list[_Sealed]] = {}  # auction -> bids to reveal
        self._request_step: dict[str, int] = {}
        self._proposal_step: dict[str, int] = {}

    # ---- the run -------------------------------------------------------------------------

    def bounds(self) -> tuple[int, int]:
        """(start, end) of the open period, as the ledger has them.

        Read from the state rather than computed, because governance may change
        `period_seconds` (from the next period on).
        """
        view = self.backend.view
        return view.scalar("period_start_ms"), view.scalar("period_end_ms")

    def run(self) -> PlayerState:
        s = self.scenario
        end = self.bounds()[1]
        for p in range(s.periods):
            if p:
                self.backend.advance_to(end)
                assert self.backend.view.scalar("period") == p
            start, end = self.bounds()
            claims = self._claims(p - 1) if p and s.auto_claim else []
            self._play_steps(p, claims, start)
            self._auctions(until=end)
        self.backend.advance_to(end)
        if s.auto_claim:
            self._submit([(None, c) for c in self._claims(s.periods - 1)], end + 1)
        return self.state

    def _play_steps(self, period: int, claims: list[Action], start: int) -> None:
        group: list[Step] = []
        created: set[tuple[str, str]] = set()
        first: list[tuple[Step | None, Action]] = [(None, c) for c in claims]
        for step in self.scenario.steps_in(period):
            if _needs(step) & created:
                self._run_group(group, first, start)
                group, created, first = [], set(), []
            group.append(step)
            created |= _creates(step)
        if group or first:
            self._run_group(group, first, start)

    def _run_group(self, steps: list[Step], before: list[tuple[Step | None, Action]],
                   start: int) -> None:
        items = list(before)
        for step in steps:
            action = self._action(step)
            if action is not None:
                items.append((step, action))
        self._submit(items, start + 1)

    def _submit(self, items: list[tuple[Step | None, Action]], time_ms: int) -> None:
        if not items:
            return
        at = max(time_ms, self.backend.last_time_ms() + 1)
        outcomes = self.backend.submit([a for _, a in items], at)
        self.state.blocks += 1
        for (step, action), outcome in zip(items, outcomes, strict=True):
            if step is not None:
                self._after(step, action, outcome)
            elif outcome.reason is not None:
                self.state.runner_rejected.append(f"{action.what}: {outcome.reason}")

    # ---- steps to actions ------------------------------------------------------------------

    def _key(self, name: str) -> SigningKey:
        return self.keys[name]

    def _reject(self, step: Step, reason: str, phase: str = "step") -> None:
        self.state.rejected.append(Rejection(step.index, step.do, step.by, reason, phase))

    def _reject_index(self, index: int, reason: str, phase: str = "step") -> None:
        step = self.scenario.steps[index]
        self._reject(step, reason, phase)

    def _asset(self, step: Step, name: str) -> bytes | None:
        asset = self.state.assets.get(name)
        if asset is None:
            self._reject(step, f"asset {name!r} does not exist: its request (step "
                               f"{self._request_step.get(name, '?')}) was rejected")
        return asset

    def _action(self, step: Step) -> Action | None:
        """The transactions of a step, or None (the step is rejected before sending)."""
        if isinstance(step, DepositStep):
            who = self._key(step.by).public
            return self._treasury(step, "treasury.deposit", {
                "account": who, "amount": step.amount,
                "reference": step.reference or f"scenario step {step.index}"})
        if isinstance(step, WithdrawStep):
            return self._withdraw(step)
        if isinstance(step, TransferStep):
            args: dict[str, Any] = {"to": self._key(step.to).public, "amount": step.amount}
            if step.memo is not None:
                args["memo"] = step.memo
            return self._single(step, "account.transfer", args)
        if isinstance(step, ApplyStep):
            return self._single(step, "member.apply", {"name": step.by,
                                                       "enterprise": step.enterprise,
                                                       "labour": step.labour})
        if isinstance(step, AttestStep):
            return self._single(step, "member.attest",
                                {"applicant": self._key(step.applicant).public})
        if isinstance(step, ResignStep):
            return self._single(step, "member.resign", {})
        if isinstance(step, RequestStep):
            return self._request(step)
        if isinstance(step, BidStep):
            return self._bond_bid(step)
        if isinstance(step, (AcquireStep, AcquireFailedStep, LiquidatedStep)):
            asset = self._asset(step, step.asset)
            if asset is None:
                return None
            kind = {"acquire": "treasury.acquire", "acquire_failed": "treasury.acquire_failed",
                    "liquidated": "treasury.liquidated"}[step.do]
            args = {"asset": asset}
            if isinstance(step, LiquidatedStep):
                args["proceeds"] = step.proceeds
            if step.reference is not None:
                args["reference"] = step.reference
            return self._treasury(step, kind, args)
        if isinstance(step, EndRentalStep):
            asset = self._asset(step, step.asset)
            return None if asset is None else self._single(step, "rental.end", {"asset": asset})
        if isinstance(step, RentBidStep):
            return self._rent_bid(step)
        if isinstance(step, ClaimStep):
            periods = self._unclaimed(self._key(step.by).public)
            if not periods:
                self._reject(step, "no unclaimed dividends")
                return None
            return self._single(step, "dividend.claim", {"periods": periods[:MAX_CLAIM_PERIODS]})
        if isinstance(step, ProposeStep):
            return self._propose(step)
        if isinstance(step, VoteStep):
            pid = self.state.proposals.get(step.proposal)
            if pid is None:
                self._reject(step, f"proposal {step.proposal!r} does not exist: its step "
                                   f"{self._proposal_step.get(step.proposal, '?')} was rejected")
                return None
            return self._single(step, "proposal.vote", {"proposal": pid, "yes": step.yes})
        if isinstance(step, BondTransferStep):
            asset = self._asset(step, step.asset)
            if asset is None:
                return None
            return self._single(step, "bond.transfer", {
                "asset": asset, "to": self._key(step.to).public, "amount": step.amount})
        raise AssertionError(f"no action for step kind {step.do}")  # pragma: no cover

    def _single(self, step: Step, kind: str, args: Args) -> Action:
        return Action(step.index, step.do, (Intent(self._key(step.by), kind, args),))

    def _signers(self) -> tuple[list[SigningKey], int]:
        """Treasury signers who can act now (members), in id order; and the threshold."""
        view = self.backend.view
        signers = [k for k, _ in view.rows("treasury_signers")
                   if view.row("members", k) is not None]
        return [self._key(self.names[s]) for s in signers if s in self.names], \
            view.scalar("treasury_threshold")

    def _treasury(self, step: Step, kind: str, args: Args,
                  before: tuple[Intent, ...] = ()) -> Action | None:
        """A k-of-n treasury action: proposed by one signer, approved by the next k - 1.

        `before` are transactions the proposal depends on (their ids come first).
        """
        keys, k = self._signers()
        if len(keys) < k:
            self._reject(step, f"the treasury cannot act: {len(keys)} of its signers are "
                               f"members, {k} approvals are needed")
            return None
        intents = list(before)
        intents.append(Intent(keys[0], kind, args))
        approve = _approval(len(before))
        intents += [Intent(signer, "treasury.approve", approve) for signer in keys[1:k]]
        return Action(step.index, step.do, tuple(intents))

    def _withdraw(self, step: WithdrawStep) -> Action | None:
        reference = step.reference or f"scenario step {step.index}"
        request = Intent(self._key(step.by), "account.withdraw",
                         {"amount": step.amount, "reference": reference})
        return self._treasury(step, "treasury.payout", lambda ids: {"withdrawal": ids[0]},
                              before=(request,))

    def _request(self, step: RequestStep) -> Action:
        args: dict[str, Any] = {
            "description": step.description or step.asset, "price": step.price,
            "rent": step.rent, "term": step.term, "maturity": step.maturity,
            "max_rate_bps": step.max_rate_bps}
        if step.enterprise is not None:
            args["enterprise"] = step.enterprise
        if step.commit_seconds is not None:
            args["commit_seconds"] = step.commit_seconds
        if step.reveal_seconds is not None:
            args["reveal_seconds"] = step.reveal_seconds
        self._request_step[step.asset] = step.index
        return self._single(step, "asset.request", args)

    def _salt(self, key: SigningKey, auction: bytes) -> bytes:
        index = self._bids.get((key.public, auction), 0)
        self._bids[(key.public, auction)] = index + 1
        return derive_salt(key.seed(), auction, index)

    def _bond_bid(self, step: BidStep) -> Action | None:
        asset = self._asset(step, step.asset)
        if asset is None:
            return None
        key = self._key(step.by)
        salt = self._salt(key, asset)
        commitment = bond_commitment(asset, key.public, step.amount, step.rate_bps, salt)
        if step.reveal:
            self._seal(asset, _Sealed(step.index, step.by, "bond.reveal", {
                "asset": asset, "amount": step.amount, "rate_bps": step.rate_bps,
                "salt": salt}))
        return self._single(step, "bond.commit", {"asset": asset, "commitment": commitment,
                                                  "lock": step.lock})

    def _rent_bid(self, step: RentBidStep) -> Action | None:
        asset = self._asset(step, step.asset)
        if asset is None:
            return None
        row = self.backend.view.row("assets", asset)
        assert row is not None
        auction = rental_auction_id(asset, int(row["reauction_round"]))
        key = self._key(step.by)
        salt = self._salt(key, auction)
        commitment = rent_commitment(auction, key.public, step.rent, step.term, salt)
        if step.reveal:
            self._seal(auction, _Sealed(step.index, step.by, "rent.reveal", {
                "asset": asset, "rent": step.rent, "term": step.term, "salt": salt}))
        return self._single(step, "rent.commit", {"asset": asset, "commitment": commitment,
                                                  "lock": step.lock})

    def _seal(self, auction: bytes, sealed: _Sealed) -> None:
        self._sealed.setdefault(auction, []).append(sealed)

    def _propose(self, step: ProposeStep) -> Action:
        change: dict[str, Any]
        c = step.change
        if isinstance(c, ParamChange):
            change = {"type": "param", "name": c.name, "value": c.value}
        elif isinstance(c, TreasuryChange):
            change = {"type": "treasury", "signers": [self._key(n).public for n in c.signers],
                      "threshold": c.threshold}
        else:
            assert isinstance(c, ExpelChange)
            change = {"type": "expel", "member": self._key(c.member).public}
        args: dict[str, Any] = {"title": step.title or step.name, "change": change}
        if step.voting_seconds is not None:
            args["voting_seconds"] = step.voting_seconds
        self._proposal_step[step.name] = step.index
        return self._single(step, "proposal.create", args)

    def _after(self, step: Step, action: Action, outcome: Outcome) -> None:
        """Bookkeeping once a step's transactions are committed (or not)."""
        if outcome.reason is not None:
            self._reject(step, outcome.reason)
            if isinstance(step, (BidStep, RentBidStep)) and not outcome.ids:
                self._unseal(step.index)
            return
        if isinstance(step, RequestStep):
            self.state.assets[step.asset] = outcome.ids[0]
        elif isinstance(step, ProposeStep):
            self.state.proposals[step.name] = outcome.ids[0]

    def _unseal(self, index: int) -> None:
        for bids in self._sealed.values():
            bids[:] = [b for b in bids if b.step != index]

    # ---- claims ----------------------------------------------------------------------------

    def _unclaimed(self, who: bytes) -> list[int]:
        return [k[1] for k, row in self.backend.view.rows("dividends", (who,))
                if not row["claimed_height"]]

    def _claims(self, period: int) -> list[Action]:
        """Every member claims the dividend of the period that just closed."""
        view = self.backend.view
        out = []
        for member, _ in view.rows("members"):
            row = view.row("dividends", (member, period))
            if row is None or row["claimed_height"] or member not in self.names:
                continue
            key = self._key(self.names[member])
            out.append(Action(None, "claim", (Intent(key, "dividend.claim",
                                                     {"periods": [period]}),)))
        return out

    # ---- auctions --------------------------------------------------------------------------

    def _open_auctions(self) -> list[tuple[bytes, dict[str, Any]]]:
        view = self.backend.view
        out = []
        for (_end, auction), _ in view.rows("open_auctions"):
            row = view.row("auctions", auction)
            assert row is not None
            out.append((auction, row))
        return out

    def _auctions(self, until: int) -> None:
        """Reveal at the end of each commit window; let each auction close; up to `until`."""
        while True:
            now = self.backend.last_time_ms()
            opened = self._open_auctions()
            open_ids = {a for a, _ in opened}
            for auction in [a for a in self._sealed if a not in open_ids]:
                for bid in self._sealed.pop(auction):
                    self._reject_index(bid.step, "the auction closed before the bid could be "
                                                 "revealed", "reveal")
            times = []
            for auction, row in opened:
                if self._sealed.get(auction):
                    at = max(int(row["commit_end_ms"]), now + 1)
                    if at < int(row["reveal_end_ms"]):
                        times.append(at)
                times.append(int(row["reveal_end_ms"]))
            times = [t for t in times if t < until]
            if not times:
                return
            t = min(times)
            reveals: list[tuple[_Sealed, Action]] = []
            for auction, row in opened:
                if int(row["commit_end_ms"]) <= t < int(row["reveal_end_ms"]):
                    for bid in self._sealed.pop(auction, []):
                        reveals.append((bid, Action(bid.step, "reveal", (
                            Intent(self._key(bid.actor), bid.kind, bid.args),))))
            if not reveals:
                self.backend.advance_to(t)
                continue
            outcomes = self.backend.submit([a for _, a in reveals], t)
            self.state.blocks += 1
            for (bid, _), outcome in zip(reveals, outcomes, strict=True):
                if outcome.reason is not None:
                    self._reject_index(bid.step, outcome.reason, "reveal")


def _approval(n: int) -> Callable[[Sequence[bytes]], dict[str, Any]]:
    """Args of a `treasury.approve` of the action's n-th transaction."""
    return lambda ids: {"action": ids[n]}


def _needs(step: Step) -> set[tuple[str, str]]:
    """Objects a step refers to by id."""
    asset = getattr(step, "asset", None)
    if asset is not None and not isinstance(step, RequestStep):
        return {("asset", asset)}
    if isinstance(step, VoteStep):
        return {("proposal", step.proposal)}
    return set()


def _creates(step: Step) -> set[tuple[str, str]]:
    if isinstance(step, RequestStep):
        return {("asset", step.asset)}
    if isinstance(step, ProposeStep):
        return {("proposal", step.name)}
    return set()


def actor_name(names: dict[bytes, str], who: bytes) -> str:
    """An actor's scenario name, or the id's text form for a key the scenario never named."""
    return names.get(who) or id_text(who)


def play(scenario: Scenario, backend: Backend) -> tuple[ScenarioPlayer, PlayerState]:
    player = ScenarioPlayer(scenario, backend)
    return player, player.run()


__all__ = ["Action", "Backend", "Intent", "Outcome", "PlayerState", "Reader", "Rejection",
           "ScenarioPlayer", "actor_name", "play"]
