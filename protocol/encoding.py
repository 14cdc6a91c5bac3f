"""Canonical msgpack: the one byte form of every value that is hashed or signed.

Two nodes must produce identical bytes for equal values, or hashes and signatures
diverge. So the encoder fixes every choice msgpack leaves open (map key order,
integer width, str vs bin), and the decoder accepts only what the encoder would
produce: it decodes, re-encodes and compares. Anything else -- floats, extension
types, duplicate or non-text map keys, oversized or too deeply nested input -- is
a `DecodeError`, the single exception type callers need to catch.
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Upper bound for any single encoded value (a full block is the largest)."""

MAX_DEPTH = 16
"""Nesting bound: our formats are shallow; deep input is an attack, not data."""

MAX_CONTAINER_LEN = 100_000
"""Bound on items in one array or map, checked before allocation."""

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

Value = None | bool | int | str | bytes | list[Any] | dict[str, Any]


class EncodeError(ValueError):
    """A value that has no canonical form (float, non-str key, int out of range...)."""


class DecodeError(ValueError):
    """Bytes that are not the canonical encoding of an allowed value."""


def _normalize(obj: Any, depth: int) -> Any:
    """Return a structure msgpack packs canonically: dict items sorted by key bytes."""
    if depth > MAX_DEPTH:
        raise EncodeError(f"nesting deeper than {MAX_DEPTH}")
    if obj is None or obj is True or obj is False:
        return obj
    t = type(obj)
    if t is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise EncodeError(f"integer {obj} out of the 64-bit range")
        return obj
    if t is str or t is bytes:
        return obj
    if t is bytearray or t is memoryview:
        return bytes(obj)
    if t is list or t is tuple:
        if len(obj) > MAX_CONTAINER_LEN:
            raise EncodeError("array too long")
        return [_normalize(v, depth + 1) for v in obj]
    if t is dict:
        if len(obj) > MAX_CONTAINER_LEN:
            raise EncodeError("map too large")
        items = []
        for k, v in obj.items():
            if type(k) is not str:
                raise EncodeError(f"map key {k!r} is not text")
            items.append((k.encode("utf-8"), k, _normalize(v, depth + 1)))
        items.sort(key=lambda kv: kv[0])  # msgpack packs a dict in iteration order
        return {k: v for _, k, v in items}
    if isinstance(obj, bool):  # pragma: no cover - bool subclasses are not used
        return bool(obj)
    if isinstance(obj, int):  # IntEnum and friends encode as their value
        return _normalize(int(obj), depth)
    if isinstance(obj, str):
        return str(obj)
    raise EncodeError(f"type {t.__name__} has no canonical encoding")


_packer_options = {"use_bin_type": True, "strict_types": False, "datetime": False}


def encode(obj: Any) -> bytes:
    """Canonical bytes of `obj`. Raises `EncodeError` for values with no canonical form."""
    data = msgpack.packb(_normalize(obj, 0), **_packer_options)
    if len(data) > MAX_MESSAGE_BYTES:
        raise EncodeError(f"encoded value is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    return data


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"extension type {code} is not allowed")


def _check(obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
    t = type(obj)
    if t is float:
        raise DecodeError("floats are not allowed")
    if t is list:
        for v in obj:
            _check(v, depth + 1)
    elif t is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise DecodeError("map keys must be text")
            _check(v, depth + 1)


def decode(data: bytes, max_size: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode canonical bytes; anything non-canonical or out of bounds is a `DecodeError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("input is not bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    if not data:
        raise DecodeError("empty input")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            ext_hook=_reject_ext,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except (
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        ValueError,
        TypeError,
        UnicodeDecodeError,
        RecursionError,
        OverflowError,
    ) as exc:
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    _check(obj, 0)
    try:
        again = encode(obj)
    except EncodeError as exc:
        raise DecodeError(str(exc)) from None
    if again != data:
        raise DecodeError("not canonical (key order, integer width, duplicate keys or str/bin)")
    return obj
