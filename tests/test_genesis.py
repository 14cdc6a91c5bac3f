"""Genesis documents: strict validation, canonical form, files, and the CLI commands."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.genesis import describe, new_genesis, parse_time, read_genesis, write_genesis
from cli import main
from ledger.genesis import PARAMS, Founder, Genesis, GenesisError
from ledger.ledger import Ledger
from ledger.testing import key, make_genesis
from protocol.crypto import id_text
from protocol.encoding import encode

K = [key("genesis", str(i)) for i in range(3)]
IDS = [id_text(k.public) for k in K]


def wire() -> dict[str, Any]:
    g, _ = make_genesis(3)
    return g.to_wire()


def test_chain_id_is_the_hash_of_the_canonical_form() -> None:
    g, _ = make_genesis(3)
    assert Genesis.decode(g.encode()) == g
    assert Genesis.from_json(g.to_json()).chain_id == g.chain_id
    again, _ = make_genesis(3)
    assert again.chain_id == g.chain_id
    other, _ = make_genesis(3, params={"period_seconds": 61})
    assert other.chain_id != g.chain_id
    assert set(g.params) == set(PARAMS)


def test_create_sorts_founders_and_signers() -> None:
    fs = [Founder(k.public, f"f{i}") for i, k in enumerate(K)]
    a = Genesis.create(name="c", currency="EUR", minor_units=2, founders=fs,
                       treasury_signers=[K[2].public, K[0].public], treasury_threshold=1,
                       genesis_time_ms=5)
    b = Genesis.create(name="c", currency="EUR", minor_units=2, founders=fs[::-1],
                       treasury_signers=[K[0].public, K[2].public], treasury_threshold=1,
                       genesis_time_ms=5)
    assert a.chain_id == b.chain_id
    assert list(a.founder_ids()) == sorted(k.public for k in K)


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    w = wire()
    obj: Any = w
    for p in path[:-1]:
        obj = obj[p]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return w


@pytest.mark.parametrize("path,value,reason", [
    (["extra"], 1, "unknown fields"),
    (["name"], KeyError, "missing"),
    (["version"], 2, "version 2 is not supported"),
    (["name"], "", "name must be 1 to 128 bytes"),
    (["minor_units"], 19, "minor_units must be an integer from 0 to 18"),
    (["time_ms"], -1, "time_ms must be a non-negative integer"),
    (["params", "period_seconds"], 0, "parameter period_seconds must be an integer from 1"),
    (["params", "speed"], 3, "unknown parameter 'speed'"),
    (["params", "min_rent"], KeyError, "params is missing ['min_rent']"),
    (["founders"], [], "founders must be a list of 1 to"),
    (["founders", 0, "id"], b"short", "founders[0].id must be a 32-byte id"),
    (["founders", 0, "extra"], "x", "founders[0] has unknown fields"),
    (["treasury", "threshold"], 3, "treasury threshold must be from 1 to 2"),
    (["treasury", "signers"], [b"\x01" * 32], "is not a founder"),
])
def test_strict_validation(path: list[Any], value: Any, reason: str) -> None:
    with pytest.raises(GenesisError, match=reason.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        Genesis.decode(encode(mutate(path, value)))


def test_unsorted_and_duplicate_founders_are_rejected() -> None:
    w = wire()
    w["founders"] = w["founders"][::-1]
    with pytest.raises(GenesisError, match="sorted by id"):
        Genesis.from_wire(w)
    w = wire()
    w["founders"][1] = w["founders"][0]
    with pytest.raises(GenesisError, match="listed twice"):
        Genesis.from_wire(w)
    w = wire()
    w["treasury"]["signers"] = w["treasury"]["signers"][::-1]
    with pytest.raises(GenesisError, match="sorted by id and distinct"):
        Genesis.from_wire(w)


def test_json_chain_id_guards_against_edits() -> None:
    g, _ = make_genesis(2)
    obj = json.loads(g.to_json())
    obj["name"] = "edited"
    with pytest.raises(GenesisError, match="the file was edited"):
        Genesis.from_json(json.dumps(obj))
    del obj["chain_id"]
    assert Genesis.from_json(json.dumps(obj)).name == "edited"
    with pytest.raises(GenesisError, match="not valid JSON"):
        Genesis.load_bytes(b"{not json")
    with pytest.raises(GenesisError, match="undecodable genesis"):
        Genesis.load_bytes(b"\xc1")
    obj["founders"][0]["id"] = "znot-an-id"
    with pytest.raises(GenesisError, match="not valid base58|decodes to"):
        Genesis.from_json(json.dumps(obj))


def test_bootstrap_files_in_both_formats(tmp_path: Path) -> None:
    g = new_genesis(name="Bakery", founders=[f"{IDS[0]}:Ana:bakes", IDS[1]],
                    addresses=[f"{IDS[0]}=/ip4/127.0.0.1/tcp/4001"],
                    params=["period_seconds=60", "min_rent=5"],
                    time_text="2025-01-01T00:00:00Z")
    assert g.genesis_time_ms == 1735689600000
    assert g.treasury_threshold == 2 and len(g.treasury_signers) == 2
    assert g.params["period_seconds"] == 60 and g.params["voting_seconds"] == 7 * 86400
    ana = next(f for f in g.founders if f.name == "Ana")
    assert ana.labour == "bakes" and ana.address == "/ip4/127.0.0.1/tcp/4001"
    for fmt in ("json", "msgpack"):
        path = str(tmp_path / f"g.{fmt}")
        write_genesis(g, path, fmt)
        assert read_genesis(path) == g
        with pytest.raises(FileExistsError):
            write_genesis(g, path, fmt)
    assert describe(g)["genesis_time"] == "2025-01-01T00:00:00Z"
    ledger = Ledger.open(None, read_genesis(str(tmp_path / "g.json")))
    assert ledger.chain_id == g.chain_id and ledger.validators_at(1).size == 2


@pytest.mark.parametrize("kw,reason", [
    ({"founders": []}, "at least one --founder"),
    ({"founders": ["nope"]}, "is not a member id"),
    ({"founders": [IDS[0], IDS[0]]}, "listed twice"),
    ({"founders": [IDS[0]], "params": ["speed=1"]}, "unknown parameter 'speed'"),
    ({"founders": [IDS[0]], "params": ["min_rent=x"]}, "is not an integer"),
    ({"founders": [IDS[0]], "params": ["min_rent"]}, "expected NAME=VALUE"),
    ({"founders": [IDS[0]], "addresses": [f"{IDS[1]}=/ip4/1.2.3.4"]}, "who is not a founder"),
    ({"founders": [IDS[0]], "addresses": [f"{IDS[0]}=1.2.3.4"]}, "starts with '/'"),
    ({"founders": [IDS[0]], "signers": [IDS[1]]}, "is not a founder"),
    ({"founders": [IDS[0]], "threshold": 2}, "threshold must be from 1 to 1"),
    ({"founders": [IDS[0]], "time_text": "yesterday"}, "expected Unix milliseconds"),
])
def test_bootstrap_errors_say_what_to_fix(kw: dict[str, Any], reason: str) -> None:
    with pytest.raises(GenesisError, match=reason.replace("(", r"\(")):
        new_genesis(name="c", **kw)


def test_parse_time() -> None:
    assert parse_time("1700000000000") == 1700000000000
    assert parse_time("2025-01-01T01:00:00+01:00") == 1735689600000
    assert parse_time(None) % 1000 == 0


def commune(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the `commune` entry point in-process: (exit code, stdout + stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out + out.err


def test_cli_genesis_new_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "genesis.json")
    args = ["genesis", "new", "--name", "Co-op", "--founder", f"{IDS[0]}:Ana",
            "--founder", f"{IDS[1]}:Bo", "--param", "period_seconds=120", "--time", "1000",
            "--out", out, "--json"]
    code, text = commune(capsys, *args)
    assert code == 0, text
    chain_id = json.loads(text)["chain_id"]
    code, text = commune(capsys, *args)
    assert code == 6 and "exists; pass --force" in text
    code, text = commune(capsys, "genesis", "show", out, "--json")
    assert code == 0, text
    shown = json.loads(text)
    assert shown["chain_id"] == chain_id and shown["params"]["period_seconds"] == 120
    assert {f["name"] for f in shown["founders"]} == {"Ana", "Bo"}
    code, text = commune(capsys, "genesis", "show", out)
    assert code == 0 and chain_id in text and "Co-op" in text
    code, text = commune(capsys, "genesis", "new", "--name", "x", "--founder", "bad", "--out",
                         str(tmp_path / "x.json"))
    assert code == 2 and "is not a member id" in text
    code, text = commune(capsys, "genesis", "show", str(tmp_path / "missing.json"))
    assert code == 5
    Path(tmp_path / "bad.json").write_text('{"name": "x"}')
    code, text = commune(capsys, "genesis", "show", str(tmp_path / "bad.json"))
    assert code == 1 and "is not a valid genesis" in text


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**54) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "founders", "treasury", "params", "id", "signers",
                         "threshold", "version", "time_ms", "currency", "minor_units",
                         "chain_id", "labour", "x"]), inner, max_size=6),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), JSONISH.map(lambda o: json.dumps(o).encode())))
def test_any_input_is_a_genesis_or_a_genesis_error(data: bytes) -> None:
    with contextlib.suppress(GenesisError):
        Genesis.load_bytes(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_valid_genesis_never_crashes(data: st.DataObject) -> None:
    obj = json.loads(make_genesis(2)[0].to_json())
    obj.pop("chain_id")
    path = data.draw(st.sampled_from([["name"], ["params", "min_rent"], ["founders", 0, "id"],
                                      ["treasury", "signers", 0], ["treasury", "threshold"],
                                      ["founders", 1], ["time_ms"], ["minor_units"]]))
    target: Any = obj
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = data.draw(JSONISH)
    with contextlib.suppress(GenesisError):
        Genesis.from_json(json.dumps(obj))
