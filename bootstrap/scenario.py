"""Scenario files (shared/SCENARIOS.md): parse and validate before anything runs.

A scenario is a commune's life written down in advance. This module turns the JSON
into frozen dataclasses and rejects, with the index of the offending step and why,
everything that is malformed or cannot mean anything: wrong types, unknown fields,
a step in a period after the end, a bid on an asset nobody requested, a vote on a
proposal nobody made, a member-only step by a name that can never be a member at that
point, auction windows that do not fit inside a period. What depends on the ledger's
state as the run unfolds (a balance too low, a window already closed, an applicant
not yet admitted, a rent below the guarantee) is left to the ledger: the runner
reports those steps as rejected, exactly as a node would.

Deliberately free of ledger execution; the runner that plays a scenario comes later.
Actor keys are `SigningKey.derive(seed, name)`, so a file always yields the same ids.

Extensions to SCENARIOS.md, all optional: a top-level `description` (text shown with
the summary); `reference` on deposit/withdraw/acquire/acquire_failed/liquidated;
`memo` on transfer; `description`, `enterprise`, `commit_seconds`, `reveal_seconds` on
request; `title`, `voting_seconds` on propose; `lock` on rent_bid (the deposit that backs
the no-reveal forfeit of a rental bid, default 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from protocol.crypto import SigningKey
from protocol.schema import (
    MAX_AMOUNT,
    Amount,
    Bool,
    Field,
    Int,
    List,
    Rate,
    SchemaError,
    Struct,
    Tagged,
    Text,
    check_field,
)
from protocol.transactions import MAX_PERIODS, PARAM_NAMES

__all__ = [
    "MAX_SCENARIO_BYTES",
    "MAX_STEPS",
    "PARAM_BOUNDS",
    "TREASURY",
    "AcquireFailedStep",
    "AcquireStep",
    "ApplyStep",
    "AttestStep",
    "BidStep",
    "BondTransferStep",
    "Change",
    "ClaimStep",
    "Commune",
    "DepositStep",
    "EndRentalStep",
    "ExpelChange",
    "LiquidatedStep",
    "ParamChange",
    "Params",
    "ProposeStep",
    "RentBidStep",
    "RequestStep",
    "ResignStep",
    "Scenario",
    "ScenarioError",
    "Step",
    "TransferStep",
    "Treasury",
    "TreasuryChange",
    "VoteStep",
    "WithdrawStep",
    "load_scenario",
    "parse_scenario",
    "parse_scenario_text",
]

MAX_SCENARIO_BYTES = 64 * 1024 * 1024
MAX_STEPS = 1_000_000
MAX_FOUNDERS = 1000
TREASURY = "treasury"
"""The pseudo-actor of treasury actions; the runner has the treasury signers approve them."""


class ScenarioError(ValueError):
    """A scenario rejected before it runs. `step` is the step's index, None for the header."""

    def __init__(self, step: int | None, reason: str) -> None:
        super().__init__(reason if step is None else f"step {step}: {reason}")
        self.step = step
        self.reason = reason


# ---- parameters ------------------------------------------------------------------------

PARAM_BOUNDS: dict[str, tuple[int, int]] = {
    "period_seconds": (1, 10 * 365 * 86_400),
    "periods_per_year": (1, 10**6),
    "admission_attestations": (1, 1000),
    "grace_periods": (1, MAX_PERIODS),
    "notice_periods": (0, MAX_PERIODS),
    "commit_seconds": (1, 10**8),
    "reveal_seconds": (1, 10**8),
    "no_reveal_fee_bps": (0, 10_000),
    "min_rent": (1, MAX_AMOUNT),
    "empty_block_interval": (1, 86_400),
    "max_clock_drift": (1, 3600),
    "voting_seconds": (1, 10**8),
}
"""Inclusive bounds of every parameter, in scenarios and in parameter proposals.

They match the genesis bounds of the ledger, so a scenario that parses has a valid
genesis; a test keeps the two tables in step once the ledger's genesis module lands.
"""

assert set(PARAM_BOUNDS) == set(PARAM_NAMES)


@dataclass(frozen=True, slots=True)
class Params:
    """Genesis parameters (DESIGN 6.10).

    DESIGN's defaults: admission_attestations 2, grace_periods 2, notice_periods 1,
    no_reveal_fee_bps 1000, min_rent 1. The others default to a fast scenario commune:
    one-minute periods read as months (periods_per_year 12), 10 s commit and reveal
    windows, an empty block at least every second so deadlines fire on time, 5 s of
    tolerated clock drift, and a voting window of two periods (votes cast in the
    proposal's period or the next one count) unless `voting_seconds` is given.
    """

    period_seconds: int = 60
    periods_per_year: int = 12
    admission_attestations: int = 2
    grace_periods: int = 2
    notice_periods: int = 1
    commit_seconds: int = 10
    reveal_seconds: int = 10
    no_reveal_fee_bps: int = 1000
    min_rent: int = 1
    empty_block_interval: int = 1
    max_clock_drift: int = 5
    voting_seconds: int = 120

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _windows_fit(params: Mapping[str, int]) -> str | None:
    """Why the auction windows do not fit inside a period, or None if they do.

    Strictly inside: an auction opened at the start of a period closes before that
    period's close, so a close never has to decide which of the two comes first.
    """
    commit, reveal, period = (params["commit_seconds"], params["reveal_seconds"],
                              params["period_seconds"])
    if commit + reveal >= period:
        return (f"commit_seconds + reveal_seconds = {commit} + {reveal} must be less than "
                f"period_seconds = {period}: auction windows must fit inside a period")
    return None


# ---- the document ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commune:
    name: str
    currency: str
    minor_units: int
    params: Params


@dataclass(frozen=True, slots=True)
class Treasury:
    signers: tuple[str, ...]
    threshold: int


@dataclass(frozen=True, slots=True)
class ParamChange:
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class TreasuryChange:
    signers: tuple[str, ...]
    threshold: int


@dataclass(frozen=True, slots=True)
class ExpelChange:
    member: str


Change = ParamChange | TreasuryChange | ExpelChange


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One line of the plan: runs at the start of `period`, in file order, signed by `by`."""

    do: ClassVar[str] = ""
    index: int
    period: int
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositStep(Step):
    do: ClassVar[str] = "deposit"
    amount: int
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawStep(Step):
    do: ClassVar[str] = "withdraw"
    amount: int
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStep(Step):
    do: ClassVar[str] = "transfer"
    to: str
    amount: int
    memo: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyStep(Step):
    do: ClassVar[str] = "apply"
    enterprise: str = ""
    labour: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestStep(Step):
    do: ClassVar[str] = "attest"
    applicant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ResignStep(Step):
    do: ClassVar[str] = "resign"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestStep(Step):
    """`commit_seconds` / `reveal_seconds` None: the commune's parameters apply."""

    do: ClassVar[str] = "request"
    asset: str
    price: int
    rent: int
    term: int
    maturity: int
    max_rate_bps: int
    description: str = ""
    enterprise: str | None = None
    commit_seconds: int | None = None
    reveal_seconds: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BidStep(Step):
    """`lock` defaults to `amount`; `reveal` False leaves the bid sealed (it forfeits)."""

    do: ClassVar[str] = "bid"
    asset: str
    amount: int
    rate_bps: int
    lock: int
    reveal: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireStep(Step):
    do: ClassVar[str] = "acquire"
    asset: str
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireFailedStep(Step):
    do: ClassVar[str] = "acquire_failed"
    asset: str
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndRentalStep(Step):
    do: ClassVar[str] = "end_rental"
    asset: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RentBidStep(Step):
    do: ClassVar[str] = "rent_bid"
    asset: str
    rent: int
    term: int
    reveal: bool = True
    lock: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LiquidatedStep(Step):
    do: ClassVar[str] = "liquidated"
    asset: str
    proceeds: int
    reference: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimStep(Step):
    do: ClassVar[str] = "claim"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeStep(Step):
    """`title` defaults to `name`; `voting_seconds` None: the commune's parameter."""

    do: ClassVar[str] = "propose"
    name: str
    change: Change
    title: str = ""
    voting_seconds: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteStep(Step):
    do: ClassVar[str] = "vote"
    proposal: str
    yes: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BondTransferStep(Step):
    do: ClassVar[str] = "bond_transfer"
    asset: str
    to: str
    amount: int


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: str
    commune: Commune
    founders: tuple[str, ...]
    treasury: Treasury
    periods: int
    auto_claim: bool
    steps: tuple[Step, ...]
    description: str = ""
    actors: tuple[str, ...] = field(default=())
    """Every actor name, founders first, then in order of first appearance."""
    assets: tuple[str, ...] = field(default=())
    """Every requested asset name, in request order."""

    def key(self, name: str) -> SigningKey:
        """The actor's key: `SigningKey.derive(seed, name)`."""
        if name == TREASURY:
            raise ValueError("the treasury is not a key; its signers act for it")
        return SigningKey.derive(self.seed, name)

    def keys(self) -> dict[str, SigningKey]:
        return {name: self.key(name) for name in self.actors}

    def steps_in(self, period: int) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.period == period)


# ---- field declarations ----------------------------------------------------------------

_ACTOR = Text(1, 64, "actor name")
_ASSET = Text(1, 64, "asset name")
_REFERENCE = Text(0, 256, "external payment reference", optional=True)
_WINDOW = Int(1, 10**8, "window in seconds", optional=True)

_CHANGE = Tagged("type", {
    "param": Struct({"name": Text(1, 64, "parameter name"), "value": Int(0, 2**62)}),
    "treasury": Struct({"signers": List(_ACTOR, 1, 64, "treasury signers", unique=True),
                        "threshold": Int(1, 64, "approvals needed")}),
    "expel": Struct({"member": _ACTOR}),
}, "what the proposal changes")

_STEP_FIELDS: dict[str, dict[str, Field]] = {
    "deposit": {"amount": Amount(), "reference": _REFERENCE},
    "withdraw": {"amount": Amount(), "reference": _REFERENCE},
    "transfer": {"to": _ACTOR, "amount": Amount(), "memo": Text(0, 256, optional=True)},
    "apply": {"enterprise": Text(0, 128, optional=True),
              "labour": Text(0, 2000, optional=True)},
    "attest": {"applicant": _ACTOR},
    "resign": {},
    "request": {"asset": _ASSET, "price": Amount(), "rent": Amount(),
                "term": Int(1, MAX_PERIODS), "maturity": Int(1, MAX_PERIODS),
                "max_rate_bps": Rate(), "description": Text(1, 500, optional=True),
                "enterprise": Text(0, 128, optional=True),
                "commit_seconds": _WINDOW, "reveal_seconds": _WINDOW},
    "bid": {"asset": _ASSET, "amount": Amount(), "rate_bps": Rate(),
            "lock": Amount(optional=True), "reveal": Bool(optional=True)},
    "acquire": {"asset": _ASSET, "reference": _REFERENCE},
    "acquire_failed": {"asset": _ASSET, "reference": _REFERENCE},
    "end_rental": {"asset": _ASSET},
    "rent_bid": {"asset": _ASSET, "rent": Amount(), "term": Int(1, MAX_PERIODS),
                 "reveal": Bool(optional=True), "lock": Amount(optional=True, allow_zero=True)},
    "liquidated": {"asset": _ASSET, "proceeds": Amount(allow_zero=True),
                   "reference": _REFERENCE},
    "claim": {},
    "propose": {"name": Text(1, 64, "proposal name, for votes"), "change": _CHANGE,
                "title": Text(1, 200, optional=True), "voting_seconds": _WINDOW},
    "vote": {"proposal": Text(1, 64, "name of the proposal"), "yes": Bool()},
    "bond_transfer": {"asset": _ASSET, "to": _ACTOR, "amount": Amount()},
}

_STEP_CLASSES: dict[str, type[Step]] = {cls.do: cls for cls in (
    DepositStep, WithdrawStep, TransferStep, ApplyStep, AttestStep, ResignStep, RequestStep,
    BidStep, AcquireStep, AcquireFailedStep, EndRentalStep, RentBidStep, LiquidatedStep,
    ClaimStep, ProposeStep, VoteStep, BondTransferStep)}
assert set(_STEP_CLASSES) == set(_STEP_FIELDS)

_TREASURY_STEPS = frozenset({"acquire", "acquire_failed", "liquidated"})
_MEMBER_STEPS = frozenset({"attest", "resign", "request", "end_rental", "rent_bid", "claim",
                           "propose", "vote"})
_ASSET_STEPS = frozenset({"bid", "acquire", "acquire_failed", "end_rental", "rent_bid",
                          "liquidated", "bond_transfer"})

_TOP = Struct({
    "seed": Text(1, 256, "seed of every actor's key"),
    "description": Text(0, 10_000, optional=True),
    "commune": Field("raw_map"),
    "founders": List(_ACTOR, 1, MAX_FOUNDERS, "founding members", unique=True),
    "treasury": Field("raw_map"),
    "periods": Int(1, MAX_PERIODS, "periods the run lasts"),
    "auto_claim": Bool(optional=True),
    "steps": Field("raw_list"),
})
_COMMUNE = Struct({
    "name": Text(1, 64, "commune name"),
    "currency": Text(1, 16, "currency code"),
    "minor_units": Int(0, 8, "decimal places of the minor unit"),
    "params": Field("raw_map", optional=True),
})
_TREASURY = Struct({
    "signers": List(_ACTOR, 1, 64, "treasury signers", unique=True),
    "threshold": Int(1, 64, "approvals needed"),
})


def _check(struct: Struct, obj: Any, path: str, step: int | None = None) -> None:
    """Validate `obj` against `struct`; `raw_map`/`raw_list` fields are only type-checked."""
    if type(obj) is not dict:
        raise ScenarioError(step, f"{path or 'scenario'}: expected an object")
    unknown = sorted(set(obj) - set(struct.fields))
    if unknown:
        raise ScenarioError(step, f"{_join(path, unknown[0])}: unknown field")
    for name, spec in struct.fields.items():
        where = _join(path, name)
        if name not in obj:
            if not spec.optional:
                raise ScenarioError(step, f"{where}: required field missing")
            continue
        value = obj[name]
        if spec.kind == "raw_map":
            if type(value) is not dict:
                raise ScenarioError(step, f"{where}: expected an object")
        elif spec.kind == "raw_list":
            if type(value) is not list:
                raise ScenarioError(step, f"{where}: expected a list")
        else:
            try:
                check_field(spec, value, where)
            except SchemaError as exc:
                raise ScenarioError(step, str(exc)) from None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _name_ok(name: str, step: int | None, where: str) -> None:
    if name == TREASURY:
        raise ScenarioError(step, f"{where}: '{TREASURY}' is reserved for treasury actions")
    if name != name.strip():
        raise ScenarioError(step, f"{where}: {name!r} has leading or trailing spaces")


# ---- parsing ---------------------------------------------------------------------------


def _no_float(text: str) -> Any:
    raise ValueError(f"number {text} is not an integer: money and rates are whole minor "
                     "units and basis points")


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_scenario_text(text: str | bytes) -> Scenario:
    """Parse the JSON text of a scenario: no floats, no NaN, no duplicate keys."""
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError(None, f"scenario is {len(text)} bytes, over {MAX_SCENARIO_BYTES}")
    try:
        obj = json.loads(text, parse_float=_no_float, parse_constant=_no_constant,
                         object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ScenarioError(None, f"not valid JSON: line {exc.lineno} column {exc.colno}: "
                                  f"{exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise ScenarioError(None, f"not a valid scenario: {exc}") from None
    return parse_scenario(obj)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise ScenarioError(None, f"{p} is {size} bytes, over {MAX_SCENARIO_BYTES}")
        data = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(None, f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_scenario_text(data)


def _params(raw: dict[str, Any]) -> Params:
    values = Params().as_dict()
    for name in sorted(raw):
        where = f"commune.params.{name}"
        if name not in PARAM_BOUNDS:
            raise ScenarioError(None, f"{where}: unknown parameter")
        lo, hi = PARAM_BOUNDS[name]
        try:
            check_field(Int(lo, hi), raw[name], where)
        except SchemaError as exc:
            raise ScenarioError(None, str(exc)) from None
        values[name] = raw[name]
    if "voting_seconds" not in raw:
        values["voting_seconds"] = min(2 * values["period_seconds"],
                                       PARAM_BOUNDS["voting_seconds"][1])
    why = _windows_fit(values)
    if why:
        raise ScenarioError(None, f"commune.params: {why}")
    return Params(**values)


def parse_scenario(obj: Any) -> Scenario:
    """Validate a decoded scenario document; raises `ScenarioError` for the first problem."""
    _check(_TOP, obj, "")
    _check(_COMMUNE, obj["commune"], "commune")
    params = _params(obj["commune"].get("params", {}))
    commune = Commune(obj["commune"]["name"], obj["commune"]["currency"],
                      obj["commune"]["minor_units"], params)
    founders = tuple(obj["founders"])
    for i, name in enumerate(founders):
        _name_ok(name, None, f"founders[{i}]")
    _check(_TREASURY, obj["treasury"], "treasury")
    signers = tuple(obj["treasury"]["signers"])
    for i, name in enumerate(signers):
        if name not in founders:
            raise ScenarioError(None, f"treasury.signers[{i}]: {name!r} is not a founder")
    threshold = obj["treasury"]["threshold"]
    if threshold > len(signers):
        raise ScenarioError(None, f"treasury.threshold: {threshold} approvals needed but "
                                  f"only {len(signers)} signers")
    periods = obj["periods"]
    raw_steps = obj["steps"]
    if len(raw_steps) > MAX_STEPS:
        raise ScenarioError(None, f"steps: {len(raw_steps)} steps, over {MAX_STEPS}")
    checker = _References(founders, periods, params)
    steps = tuple(checker.step(i, raw) for i, raw in enumerate(raw_steps))
    return Scenario(
        seed=obj["seed"],
        commune=commune,
        founders=founders,
        treasury=Treasury(signers, threshold),
        periods=periods,
        auto_claim=obj.get("auto_claim", True),
        steps=steps,
        description=obj.get("description", ""),
        actors=tuple(checker.actors),
        assets=tuple(checker.assets),
    )


class _References:
    """Walks the steps in order, tracking what each later step may refer to."""

    def __init__(self, founders: tuple[str, ...], periods: int, params: Params) -> None:
        self.periods = periods
        self.params = params
        self.last_period = 0
        self.actors: dict[str, None] = dict.fromkeys(founders)  # ordered set
        self.can_be_member: set[str] = set(founders)
        self.founders = frozenset(founders)
        self.applicants: set[str] = set()
        self.assets: dict[str, int] = {}  # name -> index of its request
        self.holders: dict[str, set[str]] = {}  # asset -> names that may hold its bonds
        self.proposals: dict[str, int] = {}  # name -> index of its propose step
        self._checks: dict[str, Callable[[int, str, dict[str, Any]], None]] = {
            "transfer": self._transfer, "apply": self._apply, "attest": self._attest,
            "request": self._request, "bid": self._bid, "propose": self._propose,
            "vote": self._vote, "bond_transfer": self._bond_transfer,
        }

    def _actor(self, name: str) -> None:
        self.actors.setdefault(name)

    def step(self, i: int, raw: Any) -> Step:
        if type(raw) is not dict:
            raise ScenarioError(i, "a step is an object with period, by and do")
        do = raw.get("do")
        if "do" not in raw:
            raise ScenarioError(i, "do: required field missing")
        if type(do) is not str or do not in _STEP_FIELDS:
            raise ScenarioError(i, f"do: unknown step {do!r} (one of "
                                   f"{', '.join(sorted(_STEP_FIELDS))})")
        spec = Struct({"period": Int(0, MAX_PERIODS), "by": _ACTOR, "do": Text(1, 32),
                       **_STEP_FIELDS[do]})
        _check(spec, raw, "", i)
        period, by = raw["period"], raw["by"]
        if period >= self.periods:
            raise ScenarioError(i, f"period: {period} is not before the end of the run "
                                   f"(periods = {self.periods})")
        if period < self.last_period:
            raise ScenarioError(i, f"period: {period} comes after a step of period "
                                   f"{self.last_period}; steps must be in period order")
        self.last_period = period
        if do in _TREASURY_STEPS:
            if by != TREASURY:
                raise ScenarioError(i, f"by: {do} is a treasury action: by must be "
                                       f"'{TREASURY}'")
        else:
            _name_ok(by, i, "by")
            if do in _MEMBER_STEPS and by not in self.can_be_member:
                raise ScenarioError(i, f"by: {by!r} cannot be a member here: not a founder "
                                       "and no earlier apply step")
            self._actor(by)
        args = {k: v for k, v in raw.items() if k not in ("period", "by", "do")}
        if do in _ASSET_STEPS and args["asset"] not in self.assets:
            raise ScenarioError(i, f"asset: no earlier step requests an asset named "
                                   f"{args['asset']!r}")
        check = self._checks.get(do)
        if check is not None:
            check(i, by, args)
        return _STEP_CLASSES[do](index=i, period=period, by=by, **args)

    # -- per-kind reference checks; each may complete `args` with defaults ---------------

    def _transfer(self, i: int, by: str, args: dict[str, Any]) -> None:
        _name_ok(args["to"], i, "to")
        self._actor(args["to"])

    def _apply(self, i: int, by: str, args: dict[str, Any]) -> None:
        if by in self.founders:
            raise ScenarioError(i, f"by: {by!r} is a founder, already a member")
        self.applicants.add(by)
        self.can_be_member.add(by)

    def _attest(self, i: int, by: str, args: dict[str, Any]) -> None:
        if args["applicant"] not in self.applicants:
            raise ScenarioError(i, f"applicant: no earlier apply step by "
                                   f"{args['applicant']!r}")

    def _request(self, i: int, by: str, args: dict[str, Any]) -> None:
        name = args["asset"]
        if name in self.assets:
            raise ScenarioError(i, f"asset: {name!r} is already requested at step "
                                   f"{self.assets[name]}")
        windows = self.params.as_dict()
        for w in ("commit_seconds", "reveal_seconds"):
            if w in args:
                windows[w] = args[w]
        why = _windows_fit(windows)
        if why:
            raise ScenarioError(i, why)
        self.assets[name] = i
        self.holders[name] = set()
        args.setdefault("description", name)

    def _bid(self, i: int, by: str, args: dict[str, Any]) -> None:
        args.setdefault("lock", args["amount"])
        self.holders[args["asset"]].add(by)

    def _propose(self, i: int, by: str, args: dict[str, Any]) -> None:
        name = args["name"]
        if name in self.proposals:
            raise ScenarioError(i, f"name: a proposal named {name!r} exists already "
                                   f"(step {self.proposals[name]})")
        raw = args["change"]
        kind = raw["type"]
        change: Change
        if kind == "param":
            pname, value = raw["name"], raw["value"]
            if pname not in PARAM_BOUNDS:
                raise ScenarioError(i, f"change.name: unknown parameter {pname!r}")
            lo, hi = PARAM_BOUNDS[pname]
            if not lo <= value <= hi:
                raise ScenarioError(i, f"change.value: {pname} must be from {lo} to {hi}")
            after = {**self.params.as_dict(), pname: value}
            why = _windows_fit(after)
            if why:
                raise ScenarioError(i, f"change: {why}")
            change = ParamChange(pname, value)
        elif kind == "treasury":
            signers = tuple(raw["signers"])
            for j, s in enumerate(signers):
                if s not in self.can_be_member:
                    raise ScenarioError(i, f"change.signers[{j}]: {s!r} cannot be a member "
                                           "here: not a founder and no earlier apply step")
            if raw["threshold"] > len(signers):
                raise ScenarioError(i, f"change.threshold: {raw['threshold']} approvals "
                                       f"needed but only {len(signers)} signers")
            change = TreasuryChange(signers, raw["threshold"])
        else:
            member = raw["member"]
            if member not in self.can_be_member:
                raise ScenarioError(i, f"change.member: {member!r} cannot be a member here: "
                                       "not a founder and no earlier apply step")
            change = ExpelChange(member)
        args["change"] = change
        args.setdefault("title", name)
        self.proposals[name] = i

    def _vote(self, i: int, by: str, args: dict[str, Any]) -> None:
        if args["proposal"] not in self.proposals:
            raise ScenarioError(i, f"proposal: no earlier propose step named "
                                   f"{args['proposal']!r}")

    def _bond_transfer(self, i: int, by: str, args: dict[str, Any]) -> None:
        asset, to = args["asset"], args["to"]
        _name_ok(to, i, "to")
        if by not in self.holders[asset]:
            raise ScenarioError(i, f"by: {by!r} can hold no bonds of {asset!r}: no earlier "
                                   "bid on it or bond transfer to them")
        self.holders[asset].add(to)
        self._actor(to)
