"""The runtime's Prometheus metrics, labelled by model. Knative exports no cold-start metric; we do.

Every label has a bounded set of values: `model` is the one model this process serves, `protocol` is
rest or grpc, `outcome` one of a fixed few, `phase` one of the cold start's five, `provider` the one
execution provider the session runs on. The README's table lists them all; the chart's dashboard and
alert rules query them by these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From a warm node's sub-second start to a large model's download on a cold one.
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
COLD_START_PHASES = ("import", "fetch", "load", "warmup", "total")


class RuntimeMetrics:
    """One registry per server, so tests can run several servers in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zeroserve_requests_total",
            "Inference requests by protocol and outcome.",
            ["model", "protocol", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "zeroserve_request_duration_seconds",
            "Inference request latency inside the server.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "zeroserve_queue_duration_seconds",
            "Time a request waited for its batch to run.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "zeroserve_inference_duration_seconds",
            "onnxruntime session.run time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inline = Counter(
            "zeroserve_inline_inferences_total",
            "Requests run in the event loop's thread rather than handed to an inference thread: alone in "
            "the server, on a model whose runs are short.",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "zeroserve_batch_size",
            "Requests merged into one session.run, counted when the batch forms "
            "(a failed batch is rerun one by one).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_rows = Counter(
            "zeroserve_batch_padding_rows_total",
            "Zero rows added to runs so that every batch has --max-batch-size rows (--batch-padding): the "
            "compute spent to keep the session at one shape.",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "zeroserve_inflight_requests",
            "Admitted inference requests, running or queued.",
            ["model"],
            registry=r,
        )
        self.fetch_seconds = Gauge(
            "zeroserve_model_fetch_seconds",
            "Time to fetch (and verify) the model file.",
            ["model"],
            registry=r,
        )
        self.cache_hits = Counter(
            "zeroserve_model_cache_hits_total",
            "Remote model fetches served by a verified copy in the cache directory (0 or 1 per process; "
            "summed over pods, how many cold starts skipped the download).",
            ["model"],
            registry=r,
        )
        self.cache_misses = Counter(
            "zeroserve_model_cache_misses_total",
            "Remote model fetches that downloaded the model: not cached, or a cached copy failed its "
            "SHA-256.",
            ["model"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "zeroserve_model_load_seconds", "Time to create the onnxruntime session.", ["model"], registry=r
        )
        # Info-style (always 1, the value is in the label), so `sum by (provider)` counts the replicas on
        # each: with CPU fallback allowed, which one a replica got is decided by its node.
        self.execution_provider = Gauge(
            "zeroserve_execution_provider",
            "1 for the onnxruntime execution provider this process's session runs on (CUDAExecutionProvider "
            "or CPUExecutionProvider).",
            ["model", "provider"],
            registry=r,
        )
        # A histogram observed once per process, not a gauge: a gauge vanishes with its pod when the
        # revision scales to zero, while buckets sum across pods and revisions into quantiles, and each
        # process's _count of 1 counts cold starts.
        self.cold_start_seconds = Histogram(
            "zeroserve_cold_start_seconds",
            "Process start to ready (phase total), and its phases: import of the server, and fetch, load "
            "and warmup of the model, which run alongside the import. Observed once per process.",
            ["model", "phase"],
            buckets=COLD_START_BUCKETS,
            registry=r,
        )
