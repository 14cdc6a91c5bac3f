"""Canonical msgpack: round trips, and every non-canonical form rejected with DecodeError."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.encoding import (
    INT_MAX,
    INT_MIN,
    MAX_CONTAINER_LEN,
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    DecodeError,
    EncodeError,
    decode,
    encode,
)

FAST = settings(max_examples=300, deadline=None)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


# ---- round trips ------------------------------------------------------------------------


@FAST
@given(values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@FAST
@given(st.dictionaries(st.text(max_size=8), st.integers(0, 5), min_size=2, max_size=10),
       st.randoms(use_true_random=False))
def test_map_encoding_ignores_insertion_order(d: dict[str, int], rnd: random.Random) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert encode(dict(items)) == encode(d)


def test_map_keys_sorted_by_utf8_bytes() -> None:
    data = encode({"b": 1, "a": 2, "é": 3, "Z": 4})
    keys = list(msgpack.unpackb(data, raw=False).keys())
    assert keys == sorted(keys, key=lambda k: k.encode("utf-8"))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                               INT_MAX, -1, -32, -33, -128, -129, -32768, -32769, -(2**31),
                               -(2**31) - 1, INT_MIN])
def test_integers_use_shortest_form(n: int) -> None:
    data = encode(n)
    assert len(data) == len(msgpack.packb(n))
    assert decode(data) == n


def test_bytes_and_text_keep_their_types() -> None:
    assert encode(b"a")[0] == 0xC4  # bin 8
    assert encode("a")[0] == 0xA1  # fixstr
    assert decode(encode({"k": b"v", "t": "v"})) == {"k": b"v", "t": "v"}


def test_tuples_and_bytearrays_encode_as_lists_and_bytes() -> None:
    assert encode((1, 2)) == encode([1, 2])
    assert encode(bytearray(b"xy")) == encode(b"xy")


def test_depth_bound_is_exact() -> None:
    deepest: Any = 1
    for _ in range(MAX_DEPTH):
        deepest = [deepest]
    assert decode(encode(deepest)) == deepest
    with pytest.raises(EncodeError):
        encode([deepest])
    raw = b"\x91" * (MAX_DEPTH + 1) + b"\x01"
    with pytest.raises(DecodeError, match="deeper"):
        decode(raw)


@pytest.mark.parametrize("value", [1.5, float("nan"), {1: 2}, {b"k": 1}, {None: 1},
                                   2**64, INT_MIN - 1, object(), {1, 2}])
def test_values_without_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(EncodeError):
        encode(value)


def test_encode_refuses_oversized_values() -> None:
    with pytest.raises(EncodeError):
        encode(b"x" * MAX_MESSAGE_BYTES)
    with pytest.raises(EncodeError):
        encode([0] * (MAX_CONTAINER_LEN + 1))


# ---- every non-canonical input rejected ------------------------------------------------

NON_CANONICAL = {
    # map key order
    "keys out of order": b"\x82\xa1b\x01\xa1a\x02",
    "duplicate keys": b"\x82\xa1a\x01\xa1a\x02",
    "duplicate keys, same value": b"\x82\xa1a\x01\xa1a\x01",
    # integer width
    "uint8 for a fixint": b"\xcc\x01",
    "uint16 for a uint8": b"\xcd\x00\xc8",
    "uint32 for a fixint": b"\xce\x00\x00\x00\x01",
    "uint64 for a fixint": b"\xcf" + (1).to_bytes(8, "big"),
    "int8 for a positive fixint": b"\xd0\x01",
    "int8 for a negative fixint": b"\xd0\xff",
    "int16 for an int8": b"\xd1\xff\x80",
    "int64 for a negative fixint": b"\xd3" + (-1).to_bytes(8, "big", signed=True),
    "int16 for a positive number": b"\xd1\x01\x00",
    # lengths not shortest
    "str8 for a fixstr": b"\xd9\x01a",
    "str16 for a fixstr": b"\xda\x00\x01a",
    "bin16 for a bin8": b"\xc5\x00\x01a",
    "bin32 for a bin8": b"\xc6\x00\x00\x00\x01a",
    "array16 for a fixarray": b"\xdc\x00\x01\x01",
    "array32 for a fixarray": b"\xdd\x00\x00\x00\x01\x01",
    "map16 for a fixmap": b"\xde\x00\x01\xa1a\x01",
    "map32 for a fixmap": b"\xdf\x00\x00\x00\x01\xa1a\x01",
    # str vs bin
    "bin map key": b"\x81\xc4\x01a\x01",
    "invalid utf-8 in str": b"\xa1\xff",
    "overlong utf-8 in str": b"\xa2\xc0\xaf",
    "utf-8 surrogate in str": b"\xa3\xed\xa0\x80",
    # non-text keys
    "int map key": b"\x81\x01\x01",
    "nil map key": b"\x81\xc0\x01",
    "bool map key": b"\x81\xc3\x01",
    "array map key": b"\x81\x91\x01\x01",
    "map map key": b"\x81\x80\x01",
    "nested int key": b"\x81\xa1a\x81\x01\x01",
    # floats
    "float32": b"\xca\x3f\x80\x00\x00",
    "float64": b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00",
    "float inside a list": b"\x92\x01\xca\x00\x00\x00\x00",
    "float as a map value": b"\x81\xa1a\xcb" + b"\x00" * 8,
    # extension types
    "fixext1": b"\xd4\x01\x00",
    "fixext16": b"\xd8\x05" + b"\x00" * 16,
    "ext8": b"\xc7\x02\x07ab",
    "timestamp32": b"\xd6\xff\x00\x00\x00\x00",
    "timestamp64": b"\xd7\xff" + b"\x00" * 8,
    "ext inside a map": b"\x81\xa1a\xd4\x01\x00",
    # framing
    "trailing byte": b"\x01\x02",
    "trailing garbage after a map": b"\x80\xc0",
    "two values": b"\xa1a\xa1b",
    "truncated array": b"\x92\x01",
    "truncated str": b"\xa5ab",
    "truncated uint32": b"\xce\x00\x00",
    "truncated bin": b"\xc4\x05ab",
    "truncated map": b"\x81\xa1a",
    "empty input": b"",
    "reserved byte 0xc1": b"\xc1",
    # bounds
    "array32 claiming 2**32-1 items": b"\xdd\xff\xff\xff\xff",
    "map32 claiming 2**32-1 items": b"\xdf\xff\xff\xff\xff",
    "str32 claiming 4 GiB": b"\xdb\xff\xff\xff\xff",
    "bin32 claiming 4 GiB": b"\xc6\xff\xff\xff\xff",
    "too deep": b"\x91" * (MAX_DEPTH + 1) + b"\xc0",
    "far too deep": b"\x91" * 100_000 + b"\xc0",
    "too deep through maps": b"\x81\xa1a" * (MAX_DEPTH + 1) + b"\x01",
}


@pytest.mark.parametrize("raw", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
def test_non_canonical_input_rejected(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_canonical_forms_of_the_same_values_are_accepted() -> None:
    """The rejections above are about form: the canonical bytes of each value decode."""
    assert decode(b"\x82\xa1a\x02\xa1b\x01") == {"a": 2, "b": 1}
    assert decode(b"\x01") == 1
    assert decode(b"\xcc\xc8") == 200
    assert decode(b"\xff") == -1
    assert decode(b"\xd0\x80") == -128
    assert decode(b"\xa1a") == "a"
    assert decode(b"\xc4\x01a") == b"a"
    assert decode(b"\x91\x01") == [1]
    assert decode(b"\xcf" + b"\xff" * 8) == INT_MAX
    assert decode(b"\xd3\x80" + b"\x00" * 7) == INT_MIN


def test_oversized_message_rejected_before_parsing() -> None:
    data = encode(b"x" * 1000)
    assert decode(data, max_size=len(data)) == b"x" * 1000
    with pytest.raises(DecodeError, match="exceeds"):
        decode(data, max_size=len(data) - 1)


def test_oversized_inner_string_rejected() -> None:
    data = encode("y" * 500)
    with pytest.raises(DecodeError):
        decode(data, max_size=100)


@pytest.mark.parametrize("value", ["text", None, 1, [1]])
def test_non_bytes_input_rejected(value: Any) -> None:
    with pytest.raises(DecodeError):
        decode(value)


def test_bytes_like_input_accepted() -> None:
    data = encode({"a": [1, b"x"]})
    # decode is typed for bytes but accepts any buffer, as network code hands it views.
    assert decode(bytearray(data)) == {"a": [1, b"x"]}  # type: ignore[arg-type]
    assert decode(memoryview(data)) == {"a": [1, b"x"]}  # type: ignore[arg-type]


# ---- fuzzing: the decoder only ever raises DecodeError ------------------------------


def _decode_or_reject(data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    # Anything accepted is canonical: it re-encodes to exactly the input.
    assert encode(value) == data


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_or_reject(data)


@settings(max_examples=500, deadline=None)
@given(values, st.data())
def test_fuzz_mutated_canonical_bytes(value: Any, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "truncate":
            del raw[pos:]
    _decode_or_reject(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"\x91", b"\x81\xa1a", b"\xdc\x00\x01", b"\xcb", b"\xd4\x01",
                                 b"\xc4\x01", b"\xa1", b"\xc0", b"\x01", b"\xff"]),
                max_size=40))
def test_fuzz_structured_fragments(parts: list[bytes]) -> None:
    _decode_or_reject(b"".join(parts))
