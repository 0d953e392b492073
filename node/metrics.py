"""Prometheus metrics of one node, read live from the node at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Info

from node import __version__

if TYPE_CHECKING:
    from node.daemon import Node


class NodeMetrics:
    """A private registry (not the process-global one), so tests can run several nodes per process."""

    def __init__(self, node: Node):
        self.registry = CollectorRegistry(auto_describe=True)
        self._info = Info("fedswarm_node", "Node identity and version", registry=self.registry)
        self._info.info({"version": __version__, "swarm": node.config.swarm, "peer_id": ""})
        Gauge("fedswarm_peers", "Live swarm members seen through the DHT", registry=self.registry).set_function(
            lambda: len(node.membership.peers()) if node.membership else 0
        )
        Gauge("fedswarm_dht_neighbours", "Peers in the DHT routing table", registry=self.registry).set_function(
            lambda: node.host.dht_neighbours() if node.host else 0
        )
        Gauge("fedswarm_uptime_seconds", "Seconds since the node started", registry=self.registry).set_function(
            node.uptime_s
        )

    def set_peer_id(self, peer_id: str, swarm: str) -> None:
        self._info.info({"version": __version__, "swarm": swarm, "peer_id": peer_id})
