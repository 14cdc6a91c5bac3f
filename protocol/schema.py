"""Declarative field schemas and the stateless validator that reads them.

Transaction kinds (and any other structured message) are declared as data -- a
`Struct` of named `Field`s -- so the validator, the CLI, the docs and the tests all
read one source. Validation is stateless: types, ranges, lengths, required and
unknown fields. Whether a transfer is affordable is the ledger's question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.crypto import HASH_LEN, PUBLIC_KEY_LEN

MAX_AMOUNT = 10**15
"""Largest amount in one transaction (minor units); keeps every sum inside SQLite's int64."""

MAX_RATE_BPS = 100_000
"""1000% a year: anything above is a typo, not a bid."""


class SchemaError(ValueError):
    """A message that does not match its declared schema. `path` names the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Field:
    """One field: its type and bounds. `kind` is one of the names in `_CHECKERS`."""

    kind: str
    doc: str = ""
    optional: bool = False
    min: int | None = None
    max: int | None = None
    item: Field | None = None
    struct: Struct | None = None
    tag: str | None = None
    variants: Mapping[str, Struct] | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Struct:
    """An ordered set of named fields; unknown fields are always rejected."""

    fields: Mapping[str, Field] = field(default_factory=dict)
    doc: str = ""

    def validate(self, obj: Any, path: str = "") -> None:
        if type(obj) is not dict:
            raise SchemaError(path, "expected a map")
        unknown = sorted(set(obj) - set(self.fields))
        if unknown:
            raise SchemaError(_join(path, unknown[0]), "unknown field")
        for name, spec in self.fields.items():
            if name not in obj:
                if not spec.optional:
                    raise SchemaError(_join(path, name), "required field missing")
                continue
            check_field(spec, obj[name], _join(path, name))


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


# ---- constructors, so declarations read like a table -------------------------------


def Int(min: int = 0, max: int = 2**63 - 1, doc: str = "", optional: bool = False) -> Field:
    return Field("int", doc=doc, optional=optional, min=min, max=max)


def Amount(doc: str = "", optional: bool = False, allow_zero: bool = False) -> Field:
    return Field("int", doc=doc, optional=optional, min=0 if allow_zero else 1, max=MAX_AMOUNT)


def Rate(doc: str = "", optional: bool = False) -> Field:
    return Field("int", doc=doc or "basis points per year", optional=optional, min=0,
                 max=MAX_RATE_BPS)


def Text(min: int = 0, max: int = 256, doc: str = "", optional: bool = False) -> Field:
    """UTF-8 text; bounds are in bytes of its encoding."""
    return Field("str", doc=doc, optional=optional, min=min, max=max)


def Bytes(min: int = 0, max: int = 1024, doc: str = "", optional: bool = False) -> Field:
    return Field("bytes", doc=doc, optional=optional, min=min, max=max)


def Id(doc: str = "", optional: bool = False) -> Field:
    """A member/account id: a 32-byte Ed25519 public key."""
    return Field("bytes", doc=doc or "account id", optional=optional, min=PUBLIC_KEY_LEN,
                 max=PUBLIC_KEY_LEN)


def Hash(doc: str = "", optional: bool = False) -> Field:
    """A 32-byte hash: a transaction id (assets, proposals, withdrawals), a commitment."""
    return Field("bytes", doc=doc, optional=optional, min=HASH_LEN, max=HASH_LEN)


def Bool(doc: str = "", optional: bool = False) -> Field:
    return Field("bool", doc=doc, optional=optional)


def Choice(*choices: str, doc: str = "", optional: bool = False) -> Field:
    return Field("choice", doc=doc, optional=optional, choices=tuple(choices))


def List(item: Field, min: int = 0, max: int = 100, doc: str = "", optional: bool = False,
         unique: bool = False) -> Field:
    return Field("unique_list" if unique else "list", doc=doc, optional=optional, min=min,
                 max=max, item=item)


def Nested(struct: Struct, doc: str = "", optional: bool = False) -> Field:
    return Field("struct", doc=doc, optional=optional, struct=struct)


def Tagged(tag: str, variants: Mapping[str, Struct], doc: str = "",
           optional: bool = False) -> Field:
    """A map whose `tag` field picks which struct validates the rest."""
    return Field("tagged", doc=doc, optional=optional, tag=tag, variants=variants)


# ---- checking ------------------------------------------------------------------------


def _bounds(spec: Field, n: int, path: str, what: str) -> None:
    if spec.min is not None and n < spec.min:
        raise SchemaError(path, f"{what} {n} is below the minimum {spec.min}")
    if spec.max is not None and n > spec.max:
        raise SchemaError(path, f"{what} {n} is above the maximum {spec.max}")


def check_field(spec: Field, value: Any, path: str) -> None:
    k = spec.kind
    t = type(value)
    if k == "int":
        if t is not int:
            raise SchemaError(path, f"expected an integer, got {t.__name__}")
        _bounds(spec, value, path, "value")
    elif k == "str":
        if t is not str:
            raise SchemaError(path, f"expected text, got {t.__name__}")
        _bounds(spec, len(value.encode("utf-8")), path, "length (bytes)")
    elif k == "bytes":
        if t is not bytes:
            raise SchemaError(path, f"expected bytes, got {t.__name__}")
        if spec.min == spec.max and len(value) != spec.min:
            raise SchemaError(path, f"expected exactly {spec.min} bytes, got {len(value)}")
        _bounds(spec, len(value), path, "length")
    elif k == "bool":
        if t is not bool:
            raise SchemaError(path, f"expected true or false, got {t.__name__}")
    elif k == "choice":
        assert spec.choices is not None
        if t is not str or value not in spec.choices:
            raise SchemaError(path, f"expected one of {', '.join(spec.choices)}")
    elif k in ("list", "unique_list"):
        if t is not list:
            raise SchemaError(path, f"expected a list, got {t.__name__}")
        _bounds(spec, len(value), path, "item count")
        assert spec.item is not None
        for i, v in enumerate(value):
            check_field(spec.item, v, _join(path, i))
        if k == "unique_list":
            seen: set[Any] = set()
            for i, v in enumerate(value):
                if v in seen:
                    raise SchemaError(_join(path, i), "duplicate item")
                seen.add(v)
    elif k == "struct":
        assert spec.struct is not None
        spec.struct.validate(value, path)
    elif k == "tagged":
        assert spec.variants is not None and spec.tag is not None
        if t is not dict:
            raise SchemaError(path, "expected a map")
        tag = value.get(spec.tag)
        if type(tag) is not str or tag not in spec.variants:
            raise SchemaError(_join(path, spec.tag),
                              f"expected one of {', '.join(sorted(spec.variants))}")
        variant = spec.variants[tag]
        rest = {key: v for key, v in value.items() if key != spec.tag}
        variant.validate(rest, path)
    else:  # pragma: no cover - declarations are checked by tests
        raise AssertionError(f"unknown field kind {k}")


def describe(struct: Struct) -> list[dict[str, Any]]:
    """Plain-data description of a struct, for docs, `--help` and the API."""
    out = []
    for name, f in struct.fields.items():
        d: dict[str, Any] = {"name": name, "type": f.kind, "optional": f.optional,
                             "doc": f.doc}
        if f.min is not None:
            d["min"] = f.min
        if f.max is not None:
            d["max"] = f.max
        if f.choices:
            d["choices"] = list(f.choices)
        out.append(d)
    return out
