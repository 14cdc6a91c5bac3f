"""Data directory resolution and the config file: template, strict reading, exact errors."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node.config import (
    HOME_ENV,
    SETTINGS,
    Config,
    ConfigError,
    Paths,
    config_fields,
    default_home,
    ensure_home,
    load_config,
    parse_config,
    render_config,
    resolve_home,
    write_config,
    write_new_file,
)


def test_home_resolution_order(tmp_path: Path) -> None:
    env = {HOME_ENV: str(tmp_path / "from-env")}
    assert resolve_home(tmp_path / "flag", env) == tmp_path / "flag"
    assert resolve_home(None, env) == tmp_path / "from-env"
    assert resolve_home(None, {}) == default_home()
    assert "venture-commune" in str(default_home())
    assert resolve_home("relative", {}).is_absolute()
    assert resolve_home("~/x", {}) == Path.home() / "x"


def test_layout_names_are_distinct() -> None:
    p = Paths(Path("/h"))
    files = [p.key, p.config, p.db, p.genesis, p.sign_log, p.token, p.api_endpoint, p.pid,
             p.logs]
    assert len(set(files)) == len(files)
    assert all(f.parent == Path("/h") for f in files)


def test_ensure_home_creates_and_tightens(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b"
    ensure_home(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    home.chmod(0o777)
    ensure_home(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises((ConfigError, FileExistsError)):
        ensure_home(f)


def test_settings_cover_every_config_field() -> None:
    assert {s.attr for s in SETTINGS} == config_fields()
    keys = [(s.section, s.key) for s in SETTINGS]
    assert len(set(keys)) == len(keys)


def test_template_is_valid_commented_toml_with_defaults() -> None:
    text = render_config()
    doc = tomllib.loads(text)
    for s in SETTINGS:
        assert doc[s.section][s.key] == s.default
    assert text.count("#") >= len(SETTINGS)
    assert parse_config(text) == Config.defaults()


def test_defaults_are_safe() -> None:
    c = Config.defaults()
    assert c.api_host == "127.0.0.1"
    assert c.listen == ("/ip4/127.0.0.1/tcp/0",)
    assert c.bootstrap == ()
    assert c.passphrase_file is None
    assert c.auto_claim is True


def test_overrides_are_written_and_validated(tmp_path: Path) -> None:
    text = render_config({"api_port": 7001, "listen": ["/ip4/0.0.0.0/tcp/4001"],
                          "passphrase_file": "secret/pw", "log_level": "debug"})
    c = parse_config(text, home=tmp_path)
    assert c.api_port == 7001
    assert c.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert c.passphrase_file == tmp_path / "secret" / "pw"
    assert c.log_level == "debug"
    with pytest.raises(ConfigError, match=r"\[api\] port"):
        render_config({"api_port": 70000})
    with pytest.raises(ConfigError, match="unknown setting"):
        render_config({"colour": "red"})


def test_absolute_passphrase_file_kept(tmp_path: Path) -> None:
    c = parse_config('[keys]\npassphrase_file = "/etc/pw"\n', home=tmp_path)
    assert c.passphrase_file == Path("/etc/pw")


def test_partial_file_takes_defaults() -> None:
    c = parse_config("[api]\nport = 7650\n")
    assert c.api_port == 7650
    assert c.log_level == Config.defaults().log_level


PEER = "/ip4/192.0.2.10/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_bootstrap_peer_accepted() -> None:
    assert parse_config(f'[network]\nbootstrap = ["{PEER}"]\n').bootstrap == (PEER,)


@pytest.mark.parametrize("text, where", [
    ("[api]\nport = \"7650\"\n", "[api] port"),
    ("[api]\nport = 65536\n", "[api] port"),
    ("[api]\nport = -1\n", "[api] port"),
    ("[api]\nport = true\n", "[api] port"),
    ("[api]\nhost = \"0.0.0.0\"\n", "[api] host"),
    ("[api]\nprot = 1\n", "unknown key [api] prot"),
    ("[apis]\nport = 1\n", "unknown section [apis]"),
    ("api = 1\n", "api must be a [api] table"),
    ("[metrics]\nenabled = \"yes\"\n", "[metrics] enabled"),
    ("[metrics]\nhost = \"bad host!\"\n", "[metrics] host"),
    ("[log]\nlevel = \"loud\"\n", "[log] level"),
    ("[dividends]\nauto_claim = 1\n", "[dividends] auto_claim"),
    ("[keys]\npassphrase_file = 3\n", "[keys] passphrase_file"),
    ("[network]\nlisten = \"/ip4/127.0.0.1/tcp/0\"\n", "[network] listen"),
    ("[network]\nlisten = []\n", "[network] listen"),
    ("[network]\nlisten = [\"127.0.0.1:4001\"]\n", "[network] listen"),
    ("[network]\nlisten = [\"/ip4/300.0.0.1/tcp/1\"]\n", "[network] listen"),
    ("[network]\nbootstrap = [\"/ip4/192.0.2.1/tcp/4001\"]\n", "[network] bootstrap"),
    ("[network]\nbootstrap = [1]\n", "[network] bootstrap"),
    ("[api\nport = 1\n", "not valid TOML"),
])
def test_invalid_config_names_the_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="my.toml")
    assert where in str(info.value)
    assert str(info.value).startswith("my.toml: ")


def test_load_and_write(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError, match="commune init"):
        load_config(path)
    write_config(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path) == Config.defaults(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        write_config(path, {"api_port": 1})
    assert load_config(path).api_port == 0
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_write_new_file_is_exclusive_and_clean(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_new_file(path, b"one", mode=0o640)
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0
    with pytest.raises(FileExistsError):
        write_new_file(path, b"two")
    assert path.read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def _values(c: Config) -> dict[str, Any]:
    return {name: getattr(c, name) for name in config_fields()}


def test_round_trip_of_every_setting_through_the_template(tmp_path: Path) -> None:
    overrides = {"listen": ["/ip4/127.0.0.1/tcp/4100", "/ip6/::1/tcp/4100"],
                 "bootstrap": [PEER], "api_host": "::1", "api_port": 8100,
                 "metrics_enabled": True, "metrics_host": "0.0.0.0", "metrics_port": 9100,
                 "log_level": "warning", "auto_claim": False, "passphrase_file": "/run/pw",
                 "stop_timeout": 42, "announce": ["/ip4/203.0.113.7/tcp/4100"]}
    assert set(overrides) == config_fields()
    c = parse_config(render_config(overrides), home=tmp_path)
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    expected["passphrase_file"] = Path("/run/pw")
    assert _values(c) == expected
