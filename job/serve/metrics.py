"""The Prometheus metrics of `job serve` (GET /metrics), kept in the app's own registry (prometheus-client).

    metrics = ServeMetrics()
    app = MetricsMiddleware(app, metrics)          # counts and times every request, by route template and status
    metrics.batch_sizes.observe(n)                 # images per model call (job/serve/batcher.py)
    metrics.queue_seconds.observe(s)               # per request: queued before its model call
    body, content_type = metrics.exposition()

Routes are labelled by their template (`/v2/models/{name}/infer`), never the raw path, and unknown paths as "other",
so a scanner cannot grow the label set.
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("job_serve_requests", "HTTP requests answered, by route and status code",
                                ["route", "code"], registry=r)
        self.latency = Histogram("job_serve_request_seconds", "time from a request's arrival to its answer, by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("job_serve_images", "images classified", registry=r)
        self.batch_sizes = Histogram("job_serve_batch_size", "images per model call (dynamic batching gathers the "
                                                             "images of concurrent requests)",
                                     buckets=_BATCH_BUCKETS, registry=r)
        self.queue_seconds = Histogram("job_serve_queue_seconds", "per request: time its images waited before their "
                                                                  "model call started", buckets=_QUEUE_BUCKETS,
                                       registry=r)
        self.ready = Gauge("job_serve_model_ready", "1 once the model is loaded", registry=r)

    def observe_batch(self, images: int) -> None:
        self.batch_sizes.observe(images)
        self.images.inc(images)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware: each HTTP request's status and duration, labelled by the route that matched."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - began)
