"""The fedswarm node daemon: CLI, config, lifecycle, control API, testnet launcher."""

__version__ = "0.1.0"
