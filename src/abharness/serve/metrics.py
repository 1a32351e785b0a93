"""The gateway's Prometheus metrics, on a registry of its own (not the process-global
one, so two gateways in one process, or the tests, do not share counters). Labels are
few and bounded: the endpoint, the arm, the assignment, the status, the error type;
never a user, a key or a prompt."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..store.records import CallRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "abharness_serve_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "abharness_serve_request_seconds",
            "Time from a request's arrival to its response (the gateway's and the model's)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.calls = Counter(
            "abharness_serve_calls",
            "Calls made for live requests",
            ["arm", "assignment", "status"],
            registry=r,
        )
        self.errors = Counter(
            "abharness_serve_call_errors", "Failed calls by type", ["arm", "error_type"], registry=r
        )
        self.latency = Histogram(
            "abharness_serve_call_latency_seconds",
            "A call's latency at its model (the last attempt)",
            ["arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "abharness_serve_call_ttft_seconds",
            "A streamed call's time to its first token",
            ["arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "abharness_serve_tokens", "Tokens the providers reported", ["arm", "kind"], registry=r
        )
        self.cost = Counter("abharness_serve_cost_usd", "Cost of the calls", ["arm"], registry=r)
        self.feedback = Counter(
            "abharness_serve_feedback", "Feedback scores recorded", ["status"], registry=r
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def of(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once (the labels are few and bounded;
        prometheus-client takes a lock and builds a key each time)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def call(self, record: CallRecord, assignment: str) -> None:
        arm, of = record.arm_id, self.of
        of(self.calls, arm, assignment, record.status).inc()
        if not record.ok:
            of(self.errors, arm, record.error_type or "other").inc()
        if record.latency_ms is not None:
            of(self.latency, arm).observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            of(self.ttft, arm).observe(record.ttft_ms / 1000)
        if record.usage.input_tokens:
            of(self.tokens, arm, "input").inc(record.usage.input_tokens)
        if record.usage.output_tokens:
            of(self.tokens, arm, "output").inc(record.usage.output_tokens)
        if record.cost_usd:
            of(self.cost, arm).inc(record.cost_usd)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
