"""`fedswarm` command line. Heavy imports (hivemind, torch) happen inside the commands that need
them, so `fedswarm status` answers in a fraction of a second."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from node import __version__, exitcodes
from node.config import BOOL, FLOAT, INT, SETTINGS, ConfigError, load_config, parse_control_address

DEFAULT_CONTROL = "127.0.0.1:8470"


def _fail(code: int, message: str) -> None:
    click.echo(f"fedswarm: {message}", err=True)
    sys.exit(code)


def _load(config_file: Path | None, flags: dict):
    try:
        return load_config(config_file, os.environ, flags)
    except ConfigError as e:
        _fail(ConfigError.exit_code, str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fedswarm")
def main() -> None:
    """fedswarm: train one model together, peer to peer, without pooling data."""


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FEDSWARM_CONFIG",
    help="TOML config file (env FEDSWARM_CONFIG). Flags override env, env overrides the file.",
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="Node state: identity, addrs.txt."
)


@main.command("id")
@config_option
@data_dir_option
def id_command(config_file: Path | None, data_dir: Path | None) -> None:
    """Create this node's identity key if missing and print its peer ID."""
    cfg = _load(config_file, {"data_dir": data_dir})
    from p2p.errors import IdentityError
    from p2p.identity import load_or_create_identity

    try:
        identity, created = load_or_create_identity(cfg.identity_path)
    except IdentityError as e:
        _fail(exitcodes.IDENTITY, str(e))
    if created:
        click.echo(f"created identity {cfg.identity_path}", err=True)
    click.echo(identity.peer_id)


def training_options(f):
    """One flag per training setting, generated from the settings table (so they cannot drift apart)."""
    types = {INT: int, FLOAT: float}
    for setting in reversed([s for s in SETTINGS if s.path[0] == "training"]):
        if setting.kind is BOOL:
            f = click.option(f"{setting.flag}/--no-{setting.flag[2:]}", setting.name, default=None, help=setting.help)(
                f
            )
        else:
            f = click.option(setting.flag, setting.name, type=types.get(setting.kind, str), help=setting.help)(f)
    return f


@main.command()
@config_option
@data_dir_option
@training_options
@click.option("--swarm", help="Swarm name: nodes only see members of the same swarm.")
@click.option("--listen", multiple=True, metavar="MULTIADDR", help="Address to listen on (repeatable).")
@click.option("--announce", multiple=True, metavar="MULTIADDR", help="Address to tell peers (repeatable).")
@click.option("--join", multiple=True, metavar="MULTIADDR", help="A peer's full address, /p2p/ID included.")
@click.option(
    "--join-file", metavar="FILE", help="Join the peers listed in FILE (another node's addrs.txt); waits for it."
)
@click.option("--control", metavar="HOST:PORT", help="Control API address (loopback only; port 0 = any).")
@click.option("--members", multiple=True, metavar="PEER_ID", help="A peer ID allowed in the swarm (repeatable).")
@click.option("--members-file", metavar="FILE", help="Member peer IDs, one per line with a label; re-read on SIGHUP.")
@click.option("--record-ttl-s", type=float, help="Lifetime of the membership record, seconds.")
@click.option("--log-level", help="debug, info, warning or error.")
@click.option("--log-format", help="text or json.")
def run(config_file: Path | None, **flags: object) -> None:
    """Run a node until SIGINT/SIGTERM."""
    cfg = _load(config_file, flags)
    from node.logs import setup_logging

    setup_logging(cfg.log_level, cfg.log_format)
    from node.daemon import serve

    sys.exit(serve(cfg))


def _control_address(control: str | None, data_dir: Path | None) -> tuple[str, int]:
    """Flag, then FEDSWARM_CONTROL, then the address a node wrote to its data dir, then the default."""
    try:
        if control:
            return parse_control_address(control, "flag --control")
        if env := os.environ.get("FEDSWARM_CONTROL"):
            return parse_control_address(env, "environment FEDSWARM_CONTROL")
        if data_dir is not None:
            path = data_dir / "control.txt"
            try:
                return parse_control_address(path.read_text().strip(), f"file {path}")
            except FileNotFoundError:
                _fail(exitcodes.NO_NODE, f"no node is running with data dir {data_dir} ({path} is missing)")
        return parse_control_address(DEFAULT_CONTROL, "default")
    except ConfigError as e:
        _fail(ConfigError.exit_code, str(e))


control_options = [
    click.option("--control", metavar="HOST:PORT", help=f"The node's control API (default {DEFAULT_CONTROL})."),
    click.option("--data-dir", type=click.Path(path_type=Path), help="Find the control API of the node using DIR."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
]


def _with_control_options(f):
    for option in reversed(control_options):
        f = option(f)
    return f


def _fetch(control: str | None, data_dir: Path | None, path: str, *, action: bool = False):
    from node.control_client import ControlUnavailable, fetch_json

    host, port = _control_address(control, data_dir)
    try:
        return fetch_json(host, port, path, action=action)
    except ControlUnavailable as e:
        _fail(exitcodes.NO_NODE, str(e))


@main.command()
@_with_control_options
def status(control: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Show a running node's status."""
    from node.control_client import format_status

    data = _fetch(control, data_dir, "/status")
    click.echo(json.dumps(data, indent=2) if as_json else format_status(data))


@main.command()
@_with_control_options
def peers(control: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List the live members of a running node's swarm."""
    from node.control_client import format_peers

    data = _fetch(control, data_dir, "/peers")
    click.echo(json.dumps(data, indent=2) if as_json else format_peers(data))


@main.command("reload-members")
@_with_control_options
def reload_members(control: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Make a running node re-read its members file (the same as sending it SIGHUP)."""
    result = _fetch(control, data_dir, "/members/reload", action=True)
    if as_json:
        click.echo(json.dumps(result))
    elif result.get("ok"):
        click.echo("open swarm" if result.get("open") else f"{result.get('members')} members")
    else:
        _fail(exitcodes.CONFIG, f"members not reloaded: {result.get('error')}")


@main.command()
@click.option("--nodes", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--task", default="digits", show_default=True, help="digits, breast_cancer, synthetic or module:function")
@click.option("--rounds", type=click.IntRange(0), default=400, show_default=True, help="0 = until Ctrl-C")
@click.option("--alpha", type=float, default=0.0, show_default=True, help="Dirichlet label skew; 0 = IID")
@click.option("--local-steps", type=click.IntRange(0), default=2, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Keep data dirs and result.json here.")
@click.option("--swarm", default="testnet", show_default=True)
@click.option("--baseline", is_flag=True, help="Also train each node alone and one model on all data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (progress goes to stderr).")
@click.option("--timeout-s", type=float, default=600.0, show_default=True)
def testnet(**options: object) -> None:
    """Start a whole local swarm of real node processes on 127.0.0.1 and train."""
    from node.testnet import TestnetOptions, run_testnet

    sys.exit(run_testnet(TestnetOptions(**options)))


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="DIR...")
@click.option(
    "--out",
    "prefix",
    type=click.Path(path_type=Path),
    metavar="PATH_PREFIX",
    help="Write PATH_PREFIX.png and PATH_PREFIX.html (default: the first DIR/report).",
)
def report(dirs: tuple[Path, ...], prefix: Path | None) -> None:
    """Draw accuracy, loss and who-averaged-with-whom from node data dirs or a testnet --out dir."""
    from node.report import ReportError, build_report

    try:
        paths = build_report(list(dirs), prefix)
    except ReportError as e:
        _fail(ReportError.exit_code, str(e))
    click.echo(paths.png)
    click.echo(paths.html)


@main.command()
def demo() -> None:
    """The built-in demo: 4 nodes train on non-IID digits, beside local-only and centralized baselines."""
    from node.testnet import TestnetOptions, run_testnet

    sys.exit(run_testnet(TestnetOptions(nodes=4, task="digits", rounds=400, alpha=0.3, baseline=True)))
