"""Prometheus metrics of one node, in a registry of its own.

A registry per node (not prometheus-client's process-global one) so that tests and
tools can run several nodes in one process without their counters colliding, and so
that what a scrape returns is exactly this node's metrics. The set of metrics is
declared here, in one place, so dashboards have one file to read.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "commune"
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric the node exports. Attributes are the prometheus-client objects."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = PREFIX
        # chain
        self.height = Gauge(f"{p}_height", "Height of the last committed block", registry=r)
        self.round = Gauge(f"{p}_consensus_round", "Consensus round at the current height",
                           registry=r)
        self.validators = Gauge(f"{p}_validators", "Validators at the next height", registry=r)
        self.is_validator = Gauge(f"{p}_is_validator", "1 if this node votes at the next height",
                                  registry=r)
        self.blocks = Counter(f"{p}_blocks_committed", "Blocks committed by this node",
                              registry=r)
        self.block_txs = Counter(f"{p}_block_txs", "Transactions in committed blocks",
                                 registry=r)
        self.commit_latency = Histogram(
            f"{p}_commit_latency_seconds",
            "From a transaction's admission to this node's mempool to its commit",
            buckets=LATENCY_BUCKETS, registry=r)
        self.block_interval = Histogram(
            f"{p}_block_interval_seconds", "Wall time between consecutive commits here",
            buckets=LATENCY_BUCKETS, registry=r)
        self.synced_blocks = Counter(f"{p}_synced_blocks", "Blocks fetched by block sync",
                                     registry=r)
        # mempool
        self.mempool_txs = Gauge(f"{p}_mempool_txs", "Transactions waiting in the mempool",
                                 registry=r)
        self.mempool_bytes = Gauge(f"{p}_mempool_bytes", "Bytes waiting in the mempool",
                                   registry=r)
        self.mempool_admitted = Counter(f"{p}_mempool_admitted", "Transactions admitted",
                                        ["source"], registry=r)
        self.mempool_rejected = Counter(f"{p}_mempool_rejected",
                                        "Transactions refused by the mempool", ["why"],
                                        registry=r)
        self.mempool_evicted = Counter(f"{p}_mempool_evicted", "Transactions evicted",
                                       ["why"], registry=r)
        # network
        self.peers = Gauge(f"{p}_peers", "Connected libp2p peers", registry=r)
        self.gossip_in = Counter(f"{p}_gossip_received", "Gossip messages received",
                                 ["topic", "result"], registry=r)
        self.gossip_out = Counter(f"{p}_gossip_sent", "Gossip messages published", ["topic"],
                                  registry=r)
        # signing
        self.signed = Counter(f"{p}_signed", "Consensus messages this node signed", ["kind"],
                              registry=r)
        self.sign_log_bytes = Gauge(f"{p}_sign_log_bytes", "Size of the signing log",
                                    registry=r)
        # control API
        self.api_requests = Counter(f"{p}_api_requests", "Control API requests",
                                    ["route", "status"], registry=r)
        # own actions
        self.actions = Counter(f"{p}_own_actions", "Automatic actions signed by this node",
                               ["kind"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)
