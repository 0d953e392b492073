"""Prometheus metrics of one node, read live from the node at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from node import __version__

if TYPE_CHECKING:
    from node.daemon import Node


class NodeCollector(Collector):
    """Builds every metric from the node's live state at scrape time: nothing to keep in sync."""

    def __init__(self, node: Node):
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        status = node.status()
        info = InfoMetricFamily("fedswarm_node", "Node identity and version")
        info.add_metric([], {"version": __version__, "swarm": node.config.swarm, "peer_id": status["peer_id"] or ""})
        yield info
        yield GaugeMetricFamily("fedswarm_peers", "Live swarm members seen through the DHT", value=status["peers"])
        yield GaugeMetricFamily(
            "fedswarm_dht_neighbours", "Peers in the DHT routing table", value=status["dht_neighbours"]
        )
        yield GaugeMetricFamily("fedswarm_uptime_seconds", "Seconds since the node started", value=node.uptime_s())
        if node.learner is None:
            return
        yield GaugeMetricFamily("fedswarm_round", "Training rounds completed", value=status["round"])
        yield GaugeMetricFamily("fedswarm_gossip_weight", "Gossip weight of this node's model", value=status["weight"])
        exchanges = CounterMetricFamily("fedswarm_exchanges", "Gossip exchanges by outcome", labels=["outcome"])
        for outcome, count in status["exchanges"].items():
            exchanges.add_metric([outcome], count)
        yield exchanges
        yield CounterMetricFamily(
            "fedswarm_pulled_mixes",
            "One-sided mixes of pulled models (robust rounds, finished peers)",
            value=status["pulled_mixes"],
        )
        for split, name in (("train", "validation"), ("test", "test")):
            for key in ("loss", "accuracy"):
                value = status[split].get(key)
                if value is not None:
                    yield GaugeMetricFamily(f"fedswarm_{name}_{key}", f"{key} on the {name} split", value=value)


class NodeMetrics:
    """A private registry (not the process-global one), so tests can run several nodes per process."""

    def __init__(self, node: Node):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
