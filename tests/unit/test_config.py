"""Layering and validation of node/config.py.

Every test passes env={} (or its own dict) so the real environment never leaks in.
"""

import pickle
from pathlib import Path

import pytest

from node.config import (
    SETTINGS,
    SETTINGS_BY_NAME,
    ConfigError,
    ControlConfig,
    MembershipConfig,
    NodeConfig,
    P2PConfig,
    format_value,
    load_config,
    parse_control_address,
)

PEER_A = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
PEER_B = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
JOIN_A = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}"
JOIN_B = f"/dns4/node-b.example.org/udp/4001/quic-v1/p2p/{PEER_B}"
JOIN_C = f"/ip6/2001:db8::1/tcp/4001/p2p/{PEER_A}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_equal_dataclass_defaults() -> None:
    config = load_config(env={})
    assert config == NodeConfig(p2p=P2PConfig(), membership=MembershipConfig(), control=ControlConfig())
    assert config.identity_path == Path("fedswarm-data/identity")
    assert config.control == ControlConfig(host="127.0.0.1", port=8470)


# (setting, file TOML value, env text, flag value, attribute path, expected per layer: file, env, flag)
LAYERED = [
    ("swarm", '"from-file"', "from-env", "from-flag", ("swarm",), ("from-file", "from-env", "from-flag")),
    (
        "join",
        f'["{JOIN_A}"]',
        f" {JOIN_B} , ",
        (JOIN_C,),
        ("p2p", "join"),
        ((JOIN_A,), (JOIN_B,), (JOIN_C,)),
    ),
    ("record_ttl_s", "10", "20.5", 40.0, ("membership", "record_ttl_s"), (10.0, 20.5, 40.0)),
]


def get(config: NodeConfig, path: tuple[str, ...]) -> object:
    value: object = config
    for attr in path:
        value = getattr(value, attr)
    return value


@pytest.mark.parametrize(("name", "file_value", "env_text", "flag_value", "path", "expected"), LAYERED)
@pytest.mark.parametrize("layers", ["file", "file+env", "file+env+flag"])
def test_later_layer_wins(
    tmp_path: Path, name: str, file_value, env_text, flag_value, path, expected, layers: str
) -> None:
    config_file = write(tmp_path, f"{name} = {file_value}\n")
    env = {f"FEDSWARM_{name.upper()}": env_text} if "env" in layers else {}
    flags = {name: flag_value} if "flag" in layers else {}
    winner = {"file": 0, "file+env": 1, "file+env+flag": 2}[layers]
    assert get(load_config(config_file, env=env, flags=flags), path) == expected[winner]


def test_flags_not_given_are_skipped(tmp_path: Path) -> None:
    config_file = write(tmp_path, f'swarm = "from-file"\njoin = ["{JOIN_A}"]\n')
    config = load_config(config_file, env={}, flags={"swarm": None, "join": (), "relay": None})
    assert config.swarm == "from-file"
    assert config.p2p.join == (JOIN_A,)
    assert config.p2p.relay is False


def test_env_lists_are_comma_separated_and_trimmed() -> None:
    env = {"FEDSWARM_LISTEN": " /ip4/0.0.0.0/tcp/4001 ,, /ip6/::/udp/4001/quic-v1 ,"}
    assert load_config(env=env).p2p.listen == ("/ip4/0.0.0.0/tcp/4001", "/ip6/::/udp/4001/quic-v1")
    assert load_config(env={"FEDSWARM_ANNOUNCE": ""}).p2p.announce == ()


def test_file_types(tmp_path: Path) -> None:
    config_file = write(
        tmp_path,
        f'join = "{JOIN_A}"\nrelay = true\nrpc_timeout_s = 2\nlog_level = "DEBUG"\ncontrol = "[::1]:0"\n',
    )
    config = load_config(config_file, env={})
    assert config.p2p.join == (JOIN_A,)  # a single string is a one-item list
    assert config.p2p.relay is True
    assert config.p2p.rpc_timeout_s == 2.0
    assert config.log_level == "debug"
    assert config.control == ControlConfig(host="::1", port=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("TRUE", True), ("1", True), ("yes", True), (" On ", True)],
        *[("false", False), ("0", False), ("No", False), ("Off", False)],
    ],
)
def test_env_bools(text: str, expected: bool) -> None:
    assert load_config(env={"FEDSWARM_NAT_PORT_MAP": text}).p2p.nat_port_map is expected


def test_data_dir_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(env={}, flags={"data_dir": "~/node"})
    assert config.data_dir == tmp_path / "node"
    assert config.identity_path == tmp_path / "node" / "identity"
    assert load_config(env={}, flags={"data_dir": Path("rel/dir")}).data_dir == Path("rel/dir")


def test_fedswarm_config_env_is_not_a_setting() -> None:
    assert load_config(env={"FEDSWARM_CONFIG": "/nowhere.toml", "HOME": "/x"}) == NodeConfig()


def test_membership_intervals_are_derived() -> None:
    assert MembershipConfig(record_ttl_s=9).refresh_interval_s == 3
    assert MembershipConfig(record_ttl_s=9).poll_interval_s == 3
    assert MembershipConfig(record_ttl_s=60).poll_interval_s == 5


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_default_round_trips_through_its_env_var(setting) -> None:
    assert load_config(env={setting.env_var: setting.default_text}) == NodeConfig()


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/0.0.0.0/tcp/0",
        "/ip6/::1/tcp/4001",
        "/dns/example.org/tcp/443",
        "/dns6/host-1.example/udp/9/quic",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
    ],
)
def test_valid_listen_addresses(addr: str) -> None:
    assert load_config(env={}, flags={"listen": (addr,)}).p2p.listen == (addr,)


def test_control_address_parsing() -> None:
    assert parse_control_address("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_control_address("[::1]:0") == ("::1", 0)
    assert parse_control_address("LocalHost:9") == ("localhost", 9)
    with pytest.raises(ConfigError) as info:
        parse_control_address("10.0.0.5:8470", source="flag --control")
    assert "local-only by design" in str(info.value)
    assert format_value(ControlConfig(host="::1", port=1)) == "[::1]:1"


def test_error_message_format_and_exit_code() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"FEDSWARM_CONTROL": "127.0.0.1:70000"})
    assert str(info.value) == (
        "invalid setting 'control' (from environment FEDSWARM_CONTROL): port 70000 is out of range 0-65535"
    )
    assert info.value.exit_code == ConfigError.exit_code == 3
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean record_ttl_s"):
        load_config(write(tmp_path, "record_tll_s = 3\n"), env={})
    with pytest.raises(ConfigError, match="did you mean FEDSWARM_SWARM"):
        load_config(env={"FEDSWARM_SWRAM": "x"})
    with pytest.raises(ConfigError, match="no such setting; known: FEDSWARM_DATA_DIR, ") as info:
        load_config(env={"FEDSWARM_ZZZ": "x"})
    assert info.value.setting == "zzz"


def test_a_bad_file_value_is_reported_even_if_a_flag_overrides_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'swarm = "bad name"\n'), env={}, flags={"swarm": "ok"})
    assert info.value.setting == "swarm"


def test_unknown_flag_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a setting"):
        load_config(env={}, flags={"config": "x.toml"})


def test_registry_names_match_flags_and_env() -> None:
    assert SETTINGS_BY_NAME["nat_port_map"].flag == "--nat-port-map"
    assert SETTINGS_BY_NAME["nat_port_map"].env_var == "FEDSWARM_NAT_PORT_MAP"
    assert SETTINGS_BY_NAME["control"].default_text == "127.0.0.1:8470"


# (id, config file text or None, env, flags, expected setting, fragments of str(e))
ERRORS = [
    ("listen-bad-ip4", None, {}, {"listen": ("/ip4/1.2.3/tcp/1",)}, "listen",
     ["flag --listen", "'/ip4/1.2.3/tcp/1' is not a valid multiaddr: '1.2.3' is not an IPv4 address"]),
    ("listen-bad-transport", 'listen = ["/ip4/1.2.3.4/sctp/1"]', {}, {}, "listen",
     ["config file", "unsupported transport"]),
    ("listen-with-p2p", None, {"FEDSWARM_LISTEN": JOIN_A}, {}, "listen",
     ["environment FEDSWARM_LISTEN", "must not contain /p2p/"]),
    ("listen-bad-peer-id", None, {}, {"listen": ("/ip4/1.2.3.4/tcp/1/p2p/0OIl",)}, "listen",
     ["not a base58 peer ID"]),
    ("join-without-p2p", 'join = ["/ip4/10.0.0.1/tcp/4001"]', {}, {}, "join",
     ["config file", "join address needs the peer's ID", "addrs.txt"]),
    ("announce-port-0", None, {"FEDSWARM_ANNOUNCE": "/ip4/1.2.3.4/tcp/0"}, {}, "announce",
     ["environment FEDSWARM_ANNOUNCE", "non-zero port"]),
    ("control-port-file", 'control = "127.0.0.1:70000"', {}, {}, "control",
     ["config file", "port 70000 is out of range 0-65535"]),
    ("control-port-env", None, {"FEDSWARM_CONTROL": "127.0.0.1:99999"}, {}, "control",
     ["environment FEDSWARM_CONTROL", "out of range"]),
    ("control-port-flag", None, {}, {"control": "[::1]:65536"}, "control",
     ["flag --control", "out of range"]),
    ("control-not-loopback", None, {}, {"control": "0.0.0.0:8470"}, "control",
     ["flag --control", "not a loopback address", "local-only by design"]),
    ("control-no-port", None, {"FEDSWARM_CONTROL": "localhost"}, {}, "control", ["HOST:PORT"]),
    ("unknown-file-key", 'swarn = "x"', {}, {}, "swarn", ["config file", "did you mean swarm"]),
    ("file-section", '[p2p]\nrelay = true', {}, {}, "p2p",
     ["config file", "flat keys", "put relay at the top"]),
    ("unknown-env-var", None, {"FEDSWARM_RELAYS": "1"}, {}, "relays",
     ["environment FEDSWARM_RELAYS", "FEDSWARM_RELAY"]),
    ("bad-bool-env", None, {"FEDSWARM_RELAY": "maybe"}, {}, "relay",
     ["environment FEDSWARM_RELAY", "'maybe' is not a boolean"]),
    ("quoted-bool-file", 'use_ipfs = "true"', {}, {}, "use_ipfs", ["config file", "expected a boolean"]),
    ("negative-ttl", None, {}, {"record_ttl_s": -1.0}, "record_ttl_s",
     ["flag --record-ttl-s", "at least 2 seconds"]),
    ("bool-is-not-a-number", "record_ttl_s = true", {}, {}, "record_ttl_s", ["expected a number"]),
    ("nan-timeout", None, {"FEDSWARM_RPC_TIMEOUT_S": "nan"}, {}, "rpc_timeout_s", ["not a number"]),
    ("zero-startup-timeout", "startup_timeout_s = 0", {}, {}, "startup_timeout_s", ["more than 0"]),
    ("retry-below-1", None, {"FEDSWARM_JOIN_RETRY_MAX_S": "0.5"}, {}, "join_retry_max_s", ["at least 1"]),
    ("bad-swarm", 'swarm = "my swarm"', {}, {}, "swarm", ["config file", "not a valid swarm name"]),
    ("bad-log-level", None, {"FEDSWARM_LOG_LEVEL": "verbose"}, {}, "log_level",
     ["environment FEDSWARM_LOG_LEVEL", "debug, info, warning, error"]),
    ("bad-log-format", None, {}, {"log_format": "xml"}, "log_format", ["flag --log-format"]),
    ("robust-k-one", None, {}, {"robust_k": 1}, "robust_k", ["flag --robust-k", "must be 2 or more"]),
    ("toml-syntax", 'swarm = "a"\nrelay = = true\n', {}, {}, "config",
     ["config file", "not valid TOML", "line 2"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file_text", "env", "flags", "setting", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in ERRORS],
)
def test_validation_error_names_setting_and_source(
    tmp_path: Path, file_text: str | None, env: dict, flags: dict, setting: str, fragments: list[str]
) -> None:
    config_file = write(tmp_path, file_text) if file_text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(config_file, env=env, flags=flags)
    error = info.value
    assert error.setting == setting
    assert f"'{setting}'" in str(error)
    assert error.source is not None and error.source in str(error)
    if config_file is not None:
        assert str(config_file) in str(error)
    for fragment in fragments:
        assert fragment in str(error)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert info.value.setting == "config"
    assert f"config file {missing}" in str(info.value)
    assert "No such file" in str(info.value)
