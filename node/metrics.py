"""What a node tells Prometheus at ``/metrics``.

Each node has its own registry (tests run several nodes in one process), and
the names are part of the operator's interface: ``docs/operations.md`` lists
what to alert on.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_accepted = Counter(
            "mrx_seal_events_accepted", "Seal events stored as signed records, by lock sequence order", ["order"],
            registry=r,
        )
        self.events_rejected = Counter(
            "mrx_seal_events_rejected", "Seal events rejected, by problem code", ["reason"], registry=r
        )
        self.events_duplicate = Counter(
            "mrx_seal_events_duplicate", "Seal events received again (answered with the first outcome)", registry=r
        )
        self.control_results = Counter(
            "mrx_control_results", "Control results received, by outcome", ["outcome"], registry=r
        )
        self.requests = Histogram(
            "mrx_http_request_duration_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.commit_ops = Histogram(
            "mrx_store_commit_operations", "Operations grouped into one database commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000), registry=r,
        )
        self.commit_seconds = Histogram(
            "mrx_store_commit_seconds", "Time to apply and commit one group of writes",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.signing_key_info = Gauge(
            "mrx_signing_key_info", "The key the node signs with (value 1)", ["kid", "alg"], registry=r
        )

        # Exchange with partners (docs/protocol.md)
        self.exchange_sent = Counter(
            "mrx_exchange_sent", "Records sent to partners, by outcome (delivered, failed, retry)",
            ["partner", "outcome"], registry=r,
        )
        self.exchange_received = Counter(
            "mrx_exchange_received", "Messages received from partners, by status", ["partner", "status"], registry=r
        )
        self.exchange_pulled = Counter(
            "mrx_exchange_pulled", "Messages fetched from partners by catch-up", ["partner"], registry=r
        )
        self.exchange_batch_seconds = Histogram(
            "mrx_exchange_batch_seconds", "Time from sending a batch to a partner to its answer",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.outbox_messages = Gauge(
            "mrx_outbox_messages", "Outbox rows not delivered yet, by partner and state (queued, in-flight, failed)",
            ["partner", "state"],
            registry=r,
        )
        self.partner_backoff = Gauge(
            "mrx_partner_backoff_seconds", "Current backoff before the next send to a partner (0: none)", ["partner"],
            registry=r,
        )
        self.partner_key_sequence = Gauge(
            "mrx_partner_key_statement_sequence", "Sequence of the partner's last trusted key-set statement",
            ["partner"], registry=r,
        )
        self.partner_key_refresh = Counter(
            "mrx_partner_key_refresh", "Fetches of partners' key statements, by outcome (ok, unreachable, keyset-*)",
            ["partner", "outcome"], registry=r,
        )
        self.itineraries = Gauge("mrx_itineraries", "Itineraries the router holds", registry=r)
        # Recognition (docs/recognition.md)
        self.decisions = Counter(
            "mrx_decisions", "Recognition decisions taken, by outcome and whether issued (false: unchanged)",
            ["outcome", "issued"], registry=r,
        )
        self.decision_seconds = Histogram(
            "mrx_decision_seconds", "Time to take, sign and store a decision", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.alarms = Counter("mrx_alarms", "Alarms this node raised, by type", ["type"], registry=r)
        self.recognition_errors = Counter(
            "mrx_recognition_errors", "Background recognition work that failed (see the log)", registry=r
        )
        self.unseal_authorizations = Counter(
            "mrx_unseal_authorizations", "Unseal authorisations issued", registry=r
        )
        # National-system adapters (mrx.node.outbound)
        self.adapter_deliveries = Counter(
            "mrx_adapter_deliveries", "Records offered to national-system adapters, by outcome (delivered, "
            "failed: retried later, refused: skipped for good, logged and kept in the adapter_failures table)",
            ["adapter", "outcome"], registry=r,
        )
        self.adapter_backlog = Gauge(
            "mrx_adapter_backlog", "Records waiting for a national-system adapter", ["adapter"], registry=r
        )
        self.adapter_inbound = Counter(
            "mrx_adapter_inbound", "Items national-system adapters brought in, by outcome (accepted, rejected)",
            ["adapter", "outcome"], registry=r,
        )
        # The MQTT lock listener (mrx.adapters.mqtt)
        self.mqtt_connected = Gauge(
            "mrx_mqtt_connected", "1 while the MQTT listener is connected to its broker and subscribed", registry=r
        )
        self.mqtt_messages = Counter(
            "mrx_mqtt_messages", "MQTT event messages by outcome (stored, refused: a problem was published, "
            "retry: not acknowledged, the broker sends it again)", ["outcome"], registry=r,
        )
        self.mqtt_instructions = Counter(
            "mrx_mqtt_instructions", "Unseal authorisations pushed to gateways over MQTT, by outcome "
            "(published, no-gateway)", ["outcome"], registry=r,
        )
        # Background jobs (APScheduler)
        self.log_checkpoint_size = Gauge(
            "mrx_log_checkpoint_size", "Leaves in the audit log's latest signed checkpoint", registry=r
        )
        self.witness_requests = Counter(
            "mrx_witness_requests", "add-checkpoint requests this node answered as a witness, by log and outcome",
            ["origin", "outcome"], registry=r,
        )
        self.witness_evidence = Counter(
            "mrx_witness_evidence", "Checkpoints a partner log signed that contradict one this node cosigned",
            ["origin"], registry=r,
        )
        self.cosignatures = Counter(
            "mrx_log_cosignatures", "Requests to witnesses to cosign this node's checkpoints, by outcome",
            ["witness", "outcome"], registry=r,
        )
        self.job_runs = Counter("mrx_job_runs", "Background job runs, by outcome", ["job", "outcome"], registry=r)
        self.job_last_success = Gauge(
            "mrx_job_last_success_timestamp_seconds", "When each background job last succeeded", ["job"], registry=r
        )
        self.job_seconds = Histogram(
            "mrx_job_seconds", "Background job run time", ["job"], buckets=_LATENCY_BUCKETS, registry=r
        )

    def observe_commit(self, operations: int, seconds: float) -> None:
        self.commit_ops.observe(operations)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
