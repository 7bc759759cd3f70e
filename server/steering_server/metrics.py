"""Prometheus metrics: the only module that knows prometheus_client.

Consumes the engine's plain stats (`StepStats`, `EngineSnapshot`) and the front end's per-request
events. Names start with `steering_`; counters end in `_total`, times in `_seconds`; no label
carries a request id, a prompt or a feature index.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from steering.engine.stats import AdmittedRequest, EngineSnapshot, StepStats
from steering.requests import FinishReason

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)
DISCOVERY_RPCS = ("Inspect", "SearchFeatures", "Contrast", "DescribeFeature")

OUTCOMES = (
    "ok",
    "invalid_argument",
    "resource_exhausted",
    "cancelled",
    "deadline_exceeded",
    "unavailable",
    "internal",
    "unauthenticated",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: they double the exposition for nothing
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "steering_requests", "Generate calls, by outcome.", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)  # every outcome exported from the start, at 0
        self.prompt_tokens = Counter(
            "steering_prompt_tokens", "Prompt tokens admitted.", registry=r
        )
        self.generated_tokens = Counter(
            "steering_generated_tokens", "Tokens generated.", registry=r
        )
        self.feature_edits = Counter(
            "steering_feature_edits",
            "Feature edits admitted, by SAE and mode.",
            ["sae", "mode"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "steering_time_to_first_token_seconds",
            "From receiving a Generate call to its first token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "steering_inter_token_latency_seconds",
            "Between consecutive tokens of one request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "steering_request_duration_seconds",
            "Generate calls, start to end.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "steering_step_duration_seconds", "Engine steps.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "steering_batch_size", "Rows in each decode step.", buckets=BATCH_BUCKETS, registry=r
        )
        self.hook_seconds = Counter(
            "steering_hook_seconds", "Time spent inside steering hooks (host time).", registry=r
        )
        self.running = Gauge(
            "steering_requests_running", "Requests in the running batch.", registry=r
        )
        self.waiting = Gauge(
            "steering_requests_waiting", "Requests waiting for a batch row.", registry=r
        )
        self.cuda_graphs = Gauge(
            "steering_cuda_graphs",
            "1 while decode replays CUDA graphs; 0 when off or fallen back to eager.",
            registry=r,
        )
        self.http_requests = Counter(
            "steering_http_requests",
            "HTTP calls, by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self._discovery_and_policies(r)

    def _discovery_and_policies(self, r: CollectorRegistry) -> None:
        """The metrics of Inspect, SearchFeatures, Contrast, watch and rules."""
        self.discovery_requests = Counter(
            "steering_discovery_requests",
            "Inspect, SearchFeatures and Contrast calls, by RPC and outcome.",
            ["rpc", "outcome"],
            registry=r,
        )
        for rpc in DISCOVERY_RPCS:
            for outcome in OUTCOMES:
                self.discovery_requests.labels(rpc, outcome)
        self.discovery_duration = Histogram(
            "steering_discovery_duration_seconds",
            "Inspect, SearchFeatures and Contrast calls, start to end, by RPC.",
            ["rpc"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rules_fired = Counter(
            "steering_rules_fired", "Rules that fired, by action.", ["action"], registry=r
        )
        for action in ("apply", "stop"):
            self.rules_fired.labels(action)
        self.finished = Counter(
            "steering_finish_reasons",
            "Requests the engine finished, by reason (condition: a stop rule fired).",
            ["reason"],
            registry=r,
        )
        for reason in FinishReason:
            self.finished.labels(reason.value)
        self.inspected_tokens = Counter(
            "steering_inspected_tokens", "Tokens reported by Inspect.", registry=r
        )
        self.watched_features = Histogram(
            "steering_watched_features",
            "Features watched per Generate call admitted.",
            buckets=WATCH_BUCKETS,
            registry=r,
        )

    def watch(self, snapshot: Callable[[], EngineSnapshot]) -> None:
        """Read the running and waiting gauges from the engine at each scrape."""
        self.running.set_function(lambda: snapshot().running)
        self.waiting.set_function(lambda: snapshot().waiting)
        self.cuda_graphs.set_function(lambda: float(snapshot().cuda_graphs))

    def on_step(self, stats: StepStats) -> None:
        """Called from the engine thread after each step."""
        self.step_duration.observe(stats.seconds)
        if stats.batch_size:
            self.batch_size.observe(stats.batch_size)
        self.generated_tokens.inc(stats.generated_tokens)
        self.hook_seconds.inc(stats.hook_seconds)
        for action, count in stats.rules_fired.items():
            if count:
                self.rules_fired.labels(action).inc(count)
        for request in stats.finished:
            self.finished.labels(request.finish_reason.value).inc()

    def on_admitted(self, request: AdmittedRequest) -> None:
        """Called by the front end for each request the engine took."""
        self.prompt_tokens.inc(request.prompt_tokens)
        if request.kind == "generate":
            self.watched_features.observe(request.watched)
        for edit in request.edits:
            self.feature_edits.labels(edit.sae, edit.mode.value).inc()

    def on_finished(self, outcome: str, seconds: float) -> None:
        self.requests.labels(outcome).inc()
        self.request_duration.observe(seconds)

    def on_http(self, route: str, status: int) -> None:
        """An HTTP call answered: `route` is the route's template, never a value of the call."""
        self.http_requests.labels(route, str(status)).inc()

    def on_discovery(self, rpc: str, outcome: str, seconds: float) -> None:
        self.discovery_requests.labels(rpc, outcome).inc()
        self.discovery_duration.labels(rpc).observe(seconds)
