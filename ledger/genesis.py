"""The genesis document: what a commune starts from, and the hash that names it.

`chain_id = sha256(canonical msgpack of the document)`. Every signature in the system
covers the chain id, so the document must have exactly one byte form: founders and
treasury signers are kept sorted by id, every parameter is written out (defaults filled
in when the document is made, so a later change of a default never changes a chain id),
and decoding rejects anything unknown, missing, unsorted or out of range.

Files hold a JSON rendering (ids in their "z..." text form, keys sorted) because people
read and exchange genesis files; the JSON is only a view: the chain id is always computed
from the canonical msgpack, and `from_json` checks an included `chain_id` against it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from protocol.block import PROTOCOL_VERSION
from protocol.crypto import PUBLIC_KEY_LEN, IdError, id_text, parse_id, sha256
from protocol.encoding import DecodeError, EncodeError, decode, encode
from protocol.schema import MAX_AMOUNT
from protocol.transactions import MAX_PERIODS, PARAM_NAMES
from protocol.votes import MAX_VALIDATORS

MAX_GENESIS_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ParamSpec:
    default: int
    min: int
    max: int
    doc: str


DAY = 86_400
PARAMS: Mapping[str, ParamSpec] = MappingProxyType({
    "period_seconds": ParamSpec(30 * DAY, 1, 10 * 365 * DAY, "length of a period"),
    "periods_per_year": ParamSpec(12, 1, 1_000_000, "periods in a year, for interest rates"),
    "admission_attestations": ParamSpec(2, 1, MAX_VALIDATORS,
                                        "attestations that admit an applicant"),
    "grace_periods": ParamSpec(2, 1, MAX_PERIODS, "missed rents before a rental defaults"),
    "notice_periods": ParamSpec(1, 0, MAX_PERIODS, "notice for ending a rental"),
    "commit_seconds": ParamSpec(3 * DAY, 1, 10**8, "default commit window of auctions"),
    "reveal_seconds": ParamSpec(2 * DAY, 1, 10**8, "default reveal window of auctions"),
    "no_reveal_fee_bps": ParamSpec(1000, 0, 10_000, "share of an unrevealed lock forfeited"),
    "min_rent": ParamSpec(1, 1, MAX_AMOUNT, "reserve of a re-auction without bonds"),
    "empty_block_interval": ParamSpec(10, 1, DAY, "longest gap between blocks"),
    "max_clock_drift": ParamSpec(10, 1, 3600, "tolerated proposer clock drift"),
    "voting_seconds": ParamSpec(7 * DAY, 1, 10**8, "default governance voting window"),
})
assert tuple(sorted(PARAMS)) == tuple(sorted(PARAM_NAMES)), "PARAMS and TX_KINDS disagree"


class GenesisError(ValueError):
    """A genesis document that is malformed or breaks a rule; the message says which."""


def check_param(name: str, value: object) -> None:
    """Raise `GenesisError` unless `value` is allowed for parameter `name`."""
    spec = PARAMS.get(name)
    if spec is None:
        raise GenesisError(f"unknown parameter {name!r} (known: {', '.join(sorted(PARAMS))})")
    if type(value) is not int or not spec.min <= value <= spec.max:
        raise GenesisError(f"parameter {name} must be an integer from {spec.min} to "
                           f"{spec.max}, got {value!r}")


def default_params() -> dict[str, int]:
    return {name: spec.default for name, spec in PARAMS.items()}


def _text(obj: Any, what: str, lo: int, hi: int) -> str:
    if type(obj) is not str:
        raise GenesisError(f"{what} must be text")
    n = len(obj.encode("utf-8"))
    if not lo <= n <= hi:
        raise GenesisError(f"{what} must be {lo} to {hi} bytes, got {n}")
    return obj


def _id(obj: Any, what: str) -> bytes:
    if type(obj) is not bytes or len(obj) != PUBLIC_KEY_LEN:
        raise GenesisError(f"{what} must be a {PUBLIC_KEY_LEN}-byte id")
    return obj


def _fields(obj: Any, what: str, required: set[str],
            optional: frozenset[str] = frozenset()) -> None:
    if type(obj) is not dict:
        raise GenesisError(f"{what} must be a map")
    missing = required - set(obj)
    unknown = set(obj) - required - optional
    if missing:
        raise GenesisError(f"{what} is missing {sorted(missing)}")
    if unknown:
        raise GenesisError(f"{what} has unknown fields {sorted(unknown)}")


@dataclass(frozen=True)
class Founder:
    """A founding member: their key, name, labour statement; `address` is a multiaddr
    where their node can be reached (bootstrap information, not a rule)."""

    id: bytes
    name: str
    labour: str = ""
    enterprise: str = ""
    address: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "labour": self.labour,
                "enterprise": self.enterprise, "address": self.address}

    @classmethod
    def from_wire(cls, obj: Any, i: int) -> Founder:
        what = f"founders[{i}]"
        _fields(obj, what, {"id", "name", "labour", "enterprise", "address"})
        return cls(_id(obj["id"], f"{what}.id"), _text(obj["name"], f"{what}.name", 1, 64),
                   _text(obj["labour"], f"{what}.labour", 0, 2000),
                   _text(obj["enterprise"], f"{what}.enterprise", 0, 128),
                   _text(obj["address"], f"{what}.address", 0, 256))


@dataclass(frozen=True)
class Genesis:
    """A validated genesis document. Build one with `Genesis.create` or decode one."""

    name: str
    currency: str
    minor_units: int
    params: Mapping[str, int]
    founders: tuple[Founder, ...]
    treasury_signers: tuple[bytes, ...]
    treasury_threshold: int
    genesis_time_ms: int
    version: int = PROTOCOL_VERSION
    _encoded: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __post_init__(self) -> None:
        # Validate by round-tripping the wire form: one set of rules for both paths.
        wire = self.to_wire()
        _validate(wire)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        try:
            object.__setattr__(self, "_encoded", encode(wire))
        except EncodeError as exc:
            raise GenesisError(str(exc)) from None
        if len(self._encoded) > MAX_GENESIS_BYTES:
            raise GenesisError(f"genesis is {len(self._encoded)} bytes, over {MAX_GENESIS_BYTES}")

    @classmethod
    def create(cls, *, name: str, currency: str, minor_units: int,
               founders: Sequence[Founder], treasury_signers: Sequence[bytes],
               treasury_threshold: int, genesis_time_ms: int,
               params: Mapping[str, int] | None = None) -> Genesis:
        """Fill in default parameters and sort founders and signers into canonical order."""
        full = default_params()
        for k, v in (params or {}).items():
            check_param(k, v)
            full[k] = v
        return cls(name=name, currency=currency, minor_units=minor_units, params=full,
                   founders=tuple(sorted(founders, key=lambda f: f.id)),
                   treasury_signers=tuple(sorted(treasury_signers)),
                   treasury_threshold=treasury_threshold, genesis_time_ms=genesis_time_ms)

    @property
    def chain_id(self) -> bytes:
        return sha256(self._encoded)

    def encode(self) -> bytes:
        return self._encoded

    def founder_ids(self) -> tuple[bytes, ...]:
        return tuple(f.id for f in self.founders)

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version, "name": self.name, "currency": self.currency,
            "minor_units": self.minor_units, "params": dict(self.params),
            "founders": [f.to_wire() for f in self.founders],
            "treasury": {"signers": list(self.treasury_signers),
                         "threshold": self.treasury_threshold},
            "time_ms": self.genesis_time_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Genesis:
        _validate(obj)
        return cls(name=obj["name"], currency=obj["currency"], minor_units=obj["minor_units"],
                   params=dict(obj["params"]),
                   founders=tuple(Founder.from_wire(f, i) for i, f in enumerate(obj["founders"])),
                   treasury_signers=tuple(obj["treasury"]["signers"]),
                   treasury_threshold=obj["treasury"]["threshold"],
                   genesis_time_ms=obj["time_ms"], version=obj["version"])

    @classmethod
    def decode(cls, data: bytes) -> Genesis:
        try:
            return cls.from_wire(decode(data, max_size=MAX_GENESIS_BYTES))
        except DecodeError as exc:
            raise GenesisError(f"undecodable genesis: {exc}") from None

    # ---- the JSON view ---------------------------------------------------------------

    def to_json_obj(self) -> dict[str, Any]:
        wire = self.to_wire()
        for f in wire["founders"]:
            f["id"] = id_text(f["id"])
        wire["treasury"]["signers"] = [id_text(s) for s in wire["treasury"]["signers"]]
        wire["chain_id"] = self.chain_id.hex()
        return wire

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Genesis:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise GenesisError(f"genesis is not valid JSON: {exc}") from None
        if type(obj) is not dict:
            raise GenesisError("genesis JSON must be an object")
        claimed = obj.pop("chain_id", None)
        try:
            for f in obj.get("founders", []) if type(obj.get("founders")) is list else []:
                if type(f) is dict and type(f.get("id")) is str:
                    f["id"] = parse_id(f["id"])
            tr = obj.get("treasury")
            if type(tr) is dict and type(tr.get("signers")) is list:
                tr["signers"] = [parse_id(s) if type(s) is str else s for s in tr["signers"]]
        except IdError as exc:
            raise GenesisError(str(exc)) from None
        g = cls.from_wire(obj)
        if claimed is not None and claimed != g.chain_id.hex():
            raise GenesisError(f"genesis chain_id {claimed!r} does not match its contents "
                               f"({g.chain_id.hex()}): the file was edited")
        return g

    @classmethod
    def load_bytes(cls, data: bytes) -> Genesis:
        """Either form: canonical msgpack, or the JSON view (which starts with '{')."""
        if data.lstrip()[:1] == b"{":
            try:
                return cls.from_json(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise GenesisError("genesis JSON is not UTF-8") from None
        return cls.decode(data)

    @classmethod
    def load(cls, path: str) -> Genesis:
        with open(path, "rb") as f:
            data = f.read(MAX_GENESIS_BYTES * 4 + 1)
        if len(data) > MAX_GENESIS_BYTES * 4:
            raise GenesisError(f"{path} is too large for a genesis file")
        return cls.load_bytes(data)


def _validate(obj: Any) -> None:
    """Every rule of a genesis document, on its wire form."""
    _fields(obj, "genesis", {"version", "name", "currency", "minor_units", "params", "founders",
                             "treasury", "time_ms"})
    if obj["version"] != PROTOCOL_VERSION or type(obj["version"]) is not int:
        raise GenesisError(f"genesis version {obj['version']!r} is not supported "
                           f"(this node speaks {PROTOCOL_VERSION})")
    _text(obj["name"], "name", 1, 128)
    cur = _text(obj["currency"], "currency", 1, 16)
    if not cur.isprintable() or cur.strip() != cur:
        raise GenesisError("currency must be printable without surrounding spaces")
    mu = obj["minor_units"]
    if type(mu) is not int or not 0 <= mu <= 18:
        raise GenesisError("minor_units must be an integer from 0 to 18")
    t = obj["time_ms"]
    if type(t) is not int or not 0 <= t < 2**53:
        raise GenesisError("time_ms must be a non-negative integer (Unix milliseconds)")
    params = obj["params"]
    if type(params) is not dict:
        raise GenesisError("params must be a map")
    missing = sorted(set(PARAMS) - set(params))
    if missing:
        raise GenesisError(f"params is missing {missing} (defaults are filled in when a "
                           "genesis is created)")
    for k, v in params.items():
        check_param(k, v)
    founders = obj["founders"]
    if type(founders) is not list or not 1 <= len(founders) <= MAX_VALIDATORS:
        raise GenesisError(f"founders must be a list of 1 to {MAX_VALIDATORS}")
    ids = [Founder.from_wire(f, i).id for i, f in enumerate(founders)]
    for i in range(1, len(ids)):
        if ids[i] == ids[i - 1]:
            raise GenesisError(f"founder {id_text(ids[i])} is listed twice")
        if ids[i] < ids[i - 1]:
            raise GenesisError("founders must be sorted by id (canonical order)")
    _fields(obj["treasury"], "treasury", {"signers", "threshold"})
    signers = obj["treasury"]["signers"]
    if type(signers) is not list or not 1 <= len(signers) <= 64:
        raise GenesisError("treasury signers must be a list of 1 to 64 founders")
    for i, s in enumerate(signers):
        _id(s, f"treasury.signers[{i}]")
        if s not in ids:
            raise GenesisError(f"treasury signer {id_text(s)} is not a founder")
        if i and s <= signers[i - 1]:
            raise GenesisError("treasury signers must be sorted by id and distinct")
    k = obj["treasury"]["threshold"]
    if type(k) is not int or not 1 <= k <= len(signers):
        raise GenesisError(f"treasury threshold must be from 1 to {len(signers)} "
                           f"(the number of signers), got {k!r}")
