"""Layered node configuration: built-in defaults < TOML file < FEDSWARM_* environment < command-line flags.

Every setting is one flat name (no TOML sections) that appears identically in all layers:
file key ``record_ttl_s``, environment ``FEDSWARM_RECORD_TTL_S``, flag ``--record-ttl-s``.
The ``SETTINGS`` table drives everything: to add a setting, add a field to the right dataclass and
one ``Setting`` entry; nothing else in this module needs to change.

A bad value never gets as far as the network code: it raises ``ConfigError`` naming the setting, the
value, the layer it came from and what to do about it, and the CLI exits with ``ConfigError.exit_code``.
"""

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ENV_PREFIX = "FEDSWARM_"
# FEDSWARM_* variables that are not settings; every other FEDSWARM_* name must be a setting, so that
# a typo such as FEDSWARM_SWRAM fails loudly instead of being silently ignored.
ENV_NOT_SETTINGS = frozenset({"FEDSWARM_CONFIG"})  # path of the config file, read by the CLI


class ConfigError(Exception):
    """An invalid setting; ``str(e)`` is a complete message meant for the operator."""

    exit_code: ClassVar[int] = 3  # documented process exit code for invalid configuration

    def __init__(self, setting: str, message: str, source: str | None = None) -> None:
        # Passing all three to Exception keeps the error picklable (it may cross process boundaries).
        super().__init__(setting, message, source)
        self.setting = setting
        self.message = message
        self.source = source

    def __str__(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        return f"invalid setting {self.setting!r}{where}: {self.message}"


# --------------------------------------------------------------------------------------------------
# The configuration the rest of the node sees. Defaults live here and only here.


@dataclass(frozen=True, kw_only=True)
class P2PConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce: tuple[str, ...] = ()
    join: tuple[str, ...] = ()
    join_file: str = ""  # a file of peer multiaddrs (another node's addrs.txt), waited for at start
    nat_port_map: bool = False
    auto_nat: bool = False
    relay: bool = False
    use_ipfs: bool = False
    join_retry_max_s: float = 30.0  # cap of the exponential backoff when no bootstrap peer answers
    startup_timeout_s: float = 15.0
    rpc_timeout_s: float = 3.0


@dataclass(frozen=True, kw_only=True)
class MembershipConfig:
    record_ttl_s: float = 30.0  # lifetime of a node's DHT membership record

    @property
    def refresh_interval_s(self) -> float:
        # Three refreshes per lifetime: a record survives two lost refreshes before it expires.
        return self.record_ttl_s / 3

    @property
    def poll_interval_s(self) -> float:
        # Polling faster than the refresh notices departures sooner; 5 s caps the lag for long TTLs.
        return min(self.record_ttl_s / 3, 5.0)


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    host: str = "127.0.0.1"
    port: int = 8470


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    task: str = "digits"  # digits | breast_cancer | synthetic | package.module:function
    data: str = ""  # a CSV file of the user's own tabular data ("" = the task's data)
    label_column: str = "label"
    partition: str = "0/1"  # "i/n": this node holds part i of n (testnets); "auto/n": claim one in claim_dir
    claim_dir: str = ""  # a directory shared by replicas that use partition "auto/n"
    alpha: float = 0.0  # Dirichlet label skew of the partition; 0 = IID
    seed: int = 0  # data split and partition
    init_seed: int = 0  # initial parameters (same on every node unless told otherwise)
    train: bool = True  # False: gossip only (consensus experiments)
    rounds: int = 0  # 0 = until stopped
    local_steps: int = 2  # frequent averaging: on non-IID data, drift grows with local steps
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight: float = 1.0  # initial gossip weight
    final_exchanges: int = 3  # gossip-only exchanges after the last round, so no node ends on a local drift
    robust: str = ""  # "" = pairwise gossip mean; median | trimmed_mean | centered_clip: pull k models, combine
    robust_k: int = 4
    gate_factor: float = 0.0  # refuse a peer's model if the mix's val loss is above this x ours (0 = no gate)
    checkpoint_every: int = 10  # rounds
    exchange_timeout_s: float = 30.0
    min_peers: int = 0  # wait for this many live peers before the first round (testnets start together)
    pull_wait_s: float = 10.0  # a newcomer waits this long for a live peer to start from
    torch_threads: int = 1

    @property
    def partition_pair(self) -> tuple[int | None, int]:
        """(index, count); index None for "auto/n" (the node claims a free part at start)."""
        index, count = self.partition.split("/")
        return (None if index == "auto" else int(index)), int(count)


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    data_dir: Path = Path("fedswarm-data")
    swarm: str = "fedswarm"
    log_level: str = "info"  # debug|info|warning|error
    log_format: str = "text"  # text|json
    p2p: P2PConfig = field(default_factory=P2PConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    members: tuple[str, ...] = ()  # peer IDs allowed in the swarm; with members_file: none = open swarm
    members_file: str = ""  # one peer ID (and a label) per line; re-read on SIGHUP

    @property
    def identity_path(self) -> Path:
        return self.data_dir / "identity"


_DEFAULT_CONFIG = NodeConfig()


# --------------------------------------------------------------------------------------------------
# Kinds: how a raw value is read. TOML and click hand over typed values; the environment only text.


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


@dataclass(frozen=True)
class Kind:
    name: str
    from_value: Callable[[Any], Any]  # a value from the TOML file or a click flag
    from_text: Callable[[str], Any]  # the text of an environment variable


def _str_value(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return value


def _path_value(value: object) -> str:
    if isinstance(value, os.PathLike):  # click.Path(path_type=Path) hands over Path objects
        return os.fspath(value)
    return _str_value(value)


def _bool_value(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean (true or false, unquoted), got {_describe(value)}")
    return value


_BOOL_WORDS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


def _bool_text(text: str) -> bool:
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean: use true/false, 1/0, yes/no or on/off") from None


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise ValueError(f"{number!r} is not a finite number")
    return number


def _float_value(value: object) -> float:
    # bool is a subclass of int, but `record_ttl_s = true` is a mistake, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_describe(value)}")
    return _finite(float(value))


def _float_text(text: str) -> float:
    try:
        return _finite(float(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _int_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {_describe(value)}")
    return value


def _int_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _list_value(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # a lone string is accepted as a one-item list
        return (value.strip(),)
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected an array of strings, got {_describe(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected an array of strings, but it holds {_describe(item)}")
    return tuple(item.strip() for item in value)


def _list_text(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


STR = Kind("str", _str_value, str)
PATH = Kind("path", _path_value, str)
BOOL = Kind("bool", _bool_value, _bool_text)
FLOAT = Kind("float", _float_value, _float_text)
INT = Kind("int", _int_value, _int_text)
LIST = Kind("list", _list_value, _list_text)


# --------------------------------------------------------------------------------------------------
# Checks: validate and normalise an already-typed value; raise ValueError with the operator's message.

_SWARM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]+")  # not str.isdigit(): that also accepts non-ASCII digits


def _check_swarm(name: str) -> str:
    if not _SWARM_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid swarm name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_data_dir(text: str) -> Path:
    if not text.strip():
        raise ValueError("the data directory must not be empty")
    return Path(text).expanduser()  # not resolved: a relative path stays relative to the working dir


def _at_least(minimum: float) -> Callable[[float], float]:
    def check(seconds: float) -> float:
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g} seconds, got {seconds:g}")
        return seconds

    return check


def _finite_ge0(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _positive_number(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be more than 0, got {value:g}")
    return value


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, got {seconds:g}")
    return seconds


def _check_partition(text: str) -> str:
    m = re.fullmatch(r"\s*(\d+|auto)\s*/\s*(\d+)\s*", text)
    if m and m.group(1) == "auto" and int(m.group(2)) >= 1:
        return f"auto/{int(m.group(2))}"
    if not m or m.group(1) == "auto" or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(
            f"{text!r} is not i/n with 0 <= i < n (0/4: the first of four parts) or auto/n (claim a free part)"
        )
    return f"{int(m.group(1))}/{int(m.group(2))}"


def _non_negative_int(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _positive_int(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be 1 or more, got {value}")
    return value


def _at_least_two(value: int) -> int:
    if value < 2:  # one other model cannot be outvoted: the median of two models is their mean
        raise ValueError(f"must be 2 or more, got {value}")
    return value


def _parse_port(text: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return port


@dataclass(frozen=True)
class _Multiaddr:
    host: str
    port: int
    peer_id: str | None


def _parse_multiaddr(text: str) -> _Multiaddr:
    """A light local check of the multiaddrs fedswarm uses, so typos fail here and not inside libp2p."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"{text!r} is not a valid multiaddr: {reason}")

    if not text.startswith("/"):
        raise bad("it must start with '/', e.g. /ip4/127.0.0.1/tcp/0")
    parts = text[1:].split("/")

    def part(i: int, what: str) -> str:
        if i >= len(parts) or not parts[i]:
            raise bad(f"{what} is missing after /{parts[i - 1]}")
        return parts[i]

    proto, host = parts[0], part(1, "the address")
    if proto == "ip4" or proto == "ip6":
        try:
            (ipaddress.IPv4Address if proto == "ip4" else ipaddress.IPv6Address)(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv{proto[-1]} address") from None
    elif proto in ("dns", "dns4", "dns6"):
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
            raise bad(f"{host!r} is not a valid DNS name")
    else:
        raise bad(f"it must begin with /ip4/, /ip6/, /dns/, /dns4/ or /dns6/, not /{proto}/")

    if len(parts) < 3:
        raise bad("the transport is missing: add /tcp/<port> or /udp/<port>/quic-v1")
    transport = parts[2]
    if transport not in ("tcp", "udp"):
        raise bad(f"unsupported transport /{transport}: use /tcp/<port> or /udp/<port>/quic-v1")
    try:
        port = _parse_port(part(3, "the port"))
    except ValueError as e:
        raise bad(str(e)) from None
    rest = parts[4:]
    if transport == "udp":
        if not rest or rest[0] not in ("quic", "quic-v1"):
            raise bad("/udp/<port> must be followed by /quic or /quic-v1")
        rest = rest[1:]

    peer_id = None
    if rest:
        if rest[0] != "p2p" or len(rest) != 2:
            raise bad(f"unexpected '/{'/'.join(rest)}': only /p2p/<peer ID> may follow the transport")
        peer_id = rest[1]
        if not (40 <= len(peer_id) <= 60 and set(peer_id) <= _BASE58):
            raise bad(f"{peer_id!r} is not a base58 peer ID (Qm... or 12D3KooW...)")
    return _Multiaddr(host=host, port=port, peer_id=peer_id)


def _each(check: Callable[[str], None]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    def check_all(addrs: tuple[str, ...]) -> tuple[str, ...]:
        for addr in addrs:
            check(addr)
        return addrs

    return check_all


def _check_listen(addr: str) -> None:
    if _parse_multiaddr(addr).peer_id is not None:
        raise ValueError(f"{addr!r}: a listen address must not contain /p2p/ (the node adds its own ID)")


def _check_listen_list(addrs: tuple[str, ...]) -> tuple[str, ...]:
    if not addrs:
        raise ValueError("at least one listen address is needed, e.g. /ip4/0.0.0.0/tcp/4001")
    return _each(_check_listen)(addrs)


def _check_announce(addr: str) -> None:
    parsed = _parse_multiaddr(addr)
    # Other peers dial announce addresses as they are, so "any port" or "any address" cannot work.
    if parsed.port == 0:
        raise ValueError(f"{addr!r}: an announce address needs the real, non-zero port peers should dial")
    if parsed.host in ("0.0.0.0", "::"):
        raise ValueError(f"{addr!r}: an announce address needs the public address peers should dial")


def _check_peer_id(text: str) -> None:
    if not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{40,60}", text):
        raise ValueError(f"{text!r} is not a peer ID (as printed by `fedswarm id`)")


def check_join_address(addr: str) -> None:
    """Raises ValueError unless `addr` is a full peer multiaddr (also used for --join-file contents)."""
    _check_join(addr)


def _check_join(addr: str) -> None:
    parsed = _parse_multiaddr(addr)
    if parsed.peer_id is None:
        raise ValueError(
            f"{addr!r} has no peer ID; a join address needs the peer's ID: .../p2p/Qm..., "
            "as printed by `fedswarm run` or its addrs.txt"
        )
    if parsed.port == 0:
        raise ValueError(f"{addr!r}: a join address needs the peer's real port, not 0")


def _split_control_address(text: str) -> tuple[str, int]:
    text = text.strip()
    example = "e.g. 127.0.0.1:8470 or [::1]:8470"
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not HOST:PORT, {example}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not HOST:PORT, {example}")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 hosts in brackets, {example}")
    port = _parse_port(port_text)

    # The control API has no authentication, so it is local-only by design; refuse anything else
    # rather than let a config typo expose it to the network.
    local_only = "the control API is local-only by design: use 127.0.0.1, [::1] or localhost"
    if host.lower() == "localhost":
        return "localhost", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not an IP address or 'localhost'; {local_only}") from None
    if not ip.is_loopback:
        raise ValueError(f"host {host!r} is not a loopback address; {local_only}")
    return host, port


def parse_control_address(text: str, source: str = "flag --control") -> tuple[str, int]:
    """Parse "HOST:PORT" ("[::1]:8470" for IPv6) of the local control API; port 0 = any free port."""
    try:
        return _split_control_address(text)
    except ValueError as e:
        raise ConfigError("control", str(e), source) from None


def _check_control(text: str) -> ControlConfig:
    host, port = _split_control_address(text)
    return ControlConfig(host=host, port=port)


# --------------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    path: tuple[str, ...]  # attribute path into NodeConfig, e.g. ("p2p", "listen")
    help: str
    check: Callable[[Any], Any] | None = None  # validates/normalises the typed value
    choices: tuple[str, ...] = ()  # allowed values (matched case-insensitively, stored lower-case)

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        # Read from the dataclasses so that defaults have a single source of truth.
        value: Any = _DEFAULT_CONFIG
        for attr in self.path:
            value = getattr(value, attr)
        return value

    @property
    def default_text(self) -> str:
        return format_value(self.default)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        PATH,
        ("data_dir",),
        "Directory for the node's identity key and state.",
        check=_check_data_dir,
    ),
    Setting(
        "swarm",
        STR,
        ("swarm",),
        "Name of the swarm; only nodes with the same name train together.",
        check=_check_swarm,
    ),
    Setting("log_level", STR, ("log_level",), "Log verbosity.", choices=("debug", "info", "warning", "error")),
    Setting("log_format", STR, ("log_format",), "Log line format.", choices=("text", "json")),
    Setting(
        "members",
        LIST,
        ("members",),
        "Peer IDs allowed in the swarm (none and no file: open swarm).",
        check=_each(_check_peer_id),
    ),
    Setting("members_file", STR, ("members_file",), "File of member peer IDs, one per line with a label."),
    Setting(
        "listen",
        LIST,
        ("p2p", "listen"),
        "Multiaddrs to listen on, e.g. /ip4/0.0.0.0/tcp/4001.",
        check=_check_listen_list,
    ),
    Setting(
        "announce",
        LIST,
        ("p2p", "announce"),
        "Multiaddrs other peers should dial (public address, real port); default: the listen ones.",
        check=_each(_check_announce),
    ),
    Setting(
        "join",
        LIST,
        ("p2p", "join"),
        "Multiaddrs of peers to join, each ending in /p2p/<peer ID>; none = start a new swarm.",
        check=_each(_check_join),
    ),
    Setting("nat_port_map", BOOL, ("p2p", "nat_port_map"), "Ask the router for a port mapping (UPnP)."),
    Setting("auto_nat", BOOL, ("p2p", "auto_nat"), "Let peers tell this node whether it is reachable."),
    Setting("relay", BOOL, ("p2p", "relay"), "Allow connections through circuit relays."),
    Setting("use_ipfs", BOOL, ("p2p", "use_ipfs"), "Also use the public IPFS bootstrap network."),
    Setting(
        "join_file",
        STR,
        ("p2p", "join_file"),
        "A file listing peer multiaddrs (another node's addrs.txt) to join; waited for at start.",
    ),
    Setting(
        "join_retry_max_s",
        FLOAT,
        ("p2p", "join_retry_max_s"),
        "Longest wait between attempts while no join peer answers (seconds).",
        check=_at_least(1),
    ),
    Setting(
        "startup_timeout_s",
        FLOAT,
        ("p2p", "startup_timeout_s"),
        "How long the p2p host may take to start (seconds).",
        check=_positive,
    ),
    Setting(
        "rpc_timeout_s",
        FLOAT,
        ("p2p", "rpc_timeout_s"),
        "Timeout of one call to a peer (seconds).",
        check=_positive,
    ),
    Setting(
        "record_ttl_s",
        FLOAT,
        ("membership", "record_ttl_s"),
        "Lifetime of this node's membership record in the DHT (seconds).",
        check=_at_least(2),
    ),
    Setting(
        "control",
        STR,
        ("control",),
        "HOST:PORT of the local control API ([::1]:8470 for IPv6).",
        check=_check_control,
    ),
)

_TRAINING_SETTINGS: tuple[tuple[str, Kind, str, Callable[[Any], Any] | None, tuple[str, ...]], ...] = (
    ("task", STR, "Task: digits, breast_cancer, synthetic, or package.module:function.", None, ()),
    ("data", STR, "CSV file with your own tabular data (needs label_column).", None, ()),
    ("claim_dir", STR, "Directory shared by replicas whose partition is auto/n.", None, ()),
    ("label_column", STR, "Name of the label column in the CSV file.", None, ()),
    ("partition", STR, "i/n: train on part i of n of the task's data (testnets).", _check_partition, ()),
    ("alpha", FLOAT, "Dirichlet label skew of the partition (0 = IID; 0.3 = strongly non-IID).", _finite_ge0, ()),
    ("seed", INT, "Seed of the data split and partition.", None, ()),
    ("init_seed", INT, "Seed of the initial parameters.", None, ()),
    ("train", BOOL, "Train locally (false: gossip averaging only).", None, ()),
    ("rounds", INT, "Rounds of local training + one exchange; 0 = until stopped.", _non_negative_int, ()),
    ("local_steps", INT, "Optimizer steps per round.", _non_negative_int, ()),
    ("batch_size", INT, "Mini-batch size.", _positive_int, ()),
    ("optimizer", STR, "Optimizer.", None, ("sgd", "adam")),
    ("lr", FLOAT, "Learning rate.", _positive_number, ()),
    ("momentum", FLOAT, "SGD momentum (0 = none).", _finite_ge0, ()),
    ("weight", FLOAT, "Initial gossip weight of this node.", _positive_number, ()),
    ("final_exchanges", INT, "Gossip-only exchanges after the last round.", _non_negative_int, ()),
    (
        "robust",
        STR,
        "Robust aggregation instead of the pairwise mean: median, trimmed_mean or centered_clip ('' = off).",
        None,
        ("", "median", "trimmed_mean", "centered_clip"),
    ),
    ("robust_k", INT, "How many peers' models a robust round combines with its own.", _at_least_two, ()),
    (
        "gate_factor",
        FLOAT,
        "Validation gate: refuse a peer's model if mixing it into ours would raise our validation loss above "
        "this many times ours, or above a fresh model's (0 = off).",
        _finite_ge0,
        (),
    ),
    ("checkpoint_every", INT, "Write a checkpoint every this many rounds (and at shutdown).", _positive_int, ()),
    ("exchange_timeout_s", FLOAT, "Deadline of one exchange with a peer (seconds).", _positive, ()),
    ("min_peers", INT, "Wait for this many live peers before the first round.", _non_negative_int, ()),
    (
        "pull_wait_s",
        FLOAT,
        "How long a new node waits for a live peer to copy the model from (seconds).",
        _finite_ge0,
        (),
    ),
    ("torch_threads", INT, "CPU threads for torch.", _positive_int, ()),
)
SETTINGS = SETTINGS + tuple(
    Setting(name, kind, ("training", name), help, check=check, choices=choices)
    for name, kind, help, check, choices in _TRAINING_SETTINGS
)

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
_SETTINGS_BY_ENV: Mapping[str, Setting] = {s.env_var: s for s in SETTINGS}

for _setting in SETTINGS:  # fail at import, not at run time, if a Setting points at no field
    _setting.default  # noqa: B018
del _setting


def format_value(value: object) -> str:
    """The text form of a setting's value, as the environment and flags take it (for help and dumps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(format_value(item) for item in value)
    if isinstance(value, ControlConfig):
        host = f"[{value.host}]" if ":" in value.host else value.host
        return f"{host}:{value.port}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# Loading.


def _unknown(name: str, source: str, render: Callable[[str], str] = str) -> ConfigError:
    """Typo protection: reject the name and suggest the closest setting, shown as ``render`` spells it."""
    known = list(SETTINGS_BY_NAME)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {render(close[0])}?" if close else "known: " + ", ".join(map(render, known))
    return ConfigError(name, f"no such setting; {hint}", source)


def _convert(setting: Setting, raw: object, source: str, *, is_text: bool) -> Any:
    try:
        parse = setting.kind.from_text if is_text else setting.kind.from_value
        value = parse(raw)
        if setting.choices:
            if value.lower() not in setting.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(setting.choices)}")
            value = value.lower()
        if setting.check is not None:
            value = setting.check(value)
    except ValueError as e:
        raise ConfigError(setting.name, str(e), source) from None
    return value


def _read_file(path: Path) -> dict[str, Any]:
    source = f"config file {path}"
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        reason = e.strerror or str(e)
        hint = "check the path given with --config or FEDSWARM_CONFIG"
        raise ConfigError("config", f"cannot read it ({reason}); {hint}", source) from None
    except UnicodeDecodeError:
        raise ConfigError("config", "it is not UTF-8 text, so it cannot be TOML", source) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message names the line and column
        raise ConfigError("config", f"not valid TOML: {e}", source) from None


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> NodeConfig:
    """Merge defaults < config_file < env (os.environ if None) < flags into a validated NodeConfig.

    ``flags`` maps setting names to values as click hands them over; None, or an empty tuple for a
    repeatable flag, means "not given". Every layer is validated, including values a later layer
    overrides, so a broken config file is reported even when a flag happens to mask it.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}  # setting name -> validated value; later layers overwrite

    if config_file is not None:
        source = f"config file {config_file}"
        for key, raw in _read_file(config_file).items():
            setting = SETTINGS_BY_NAME.get(key)
            if setting is None and isinstance(raw, dict):
                message = f"settings are flat keys: put {', '.join(raw)} at the top level, not in [{key}]"
                raise ConfigError(key, message, source)
            if setting is None:
                raise _unknown(key, source)
            values[key] = _convert(setting, raw, source, is_text=False)

    for var in sorted(env):  # sorted: the same environment always reports the same first error
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        source = f"environment {var}"
        setting = _SETTINGS_BY_ENV.get(var)
        if setting is None:
            # Compare without the shared prefix, which would make every name look close to every other.
            raise _unknown(var.removeprefix(ENV_PREFIX).lower(), source, lambda n: ENV_PREFIX + n.upper())
        values[setting.name] = _convert(setting, env[var], source, is_text=True)

    for name, raw in (flags or {}).items():
        if raw is None or (isinstance(raw, tuple | list) and not raw):
            continue
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:  # a wiring bug in the CLI, not an operator mistake
            raise ValueError(f"flags holds {name!r}, which is not a setting")
        values[name] = _convert(setting, raw, f"flag {setting.flag}", is_text=isinstance(raw, str))

    config = _DEFAULT_CONFIG
    for name, value in values.items():
        config = _replace(config, SETTINGS_BY_NAME[name].path, value)
    return config


def _replace(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """dataclasses.replace along an attribute path through the nested frozen configs."""
    head, *rest = path
    new = _replace(getattr(obj, head), tuple(rest), value) if rest else value
    return dataclasses.replace(obj, **{head: new})
