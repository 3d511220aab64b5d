"""The server's Prometheus metrics, in a registry of its own (so several servers share no state), and the
ASGI middleware that counts every HTTP response by route and status code."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Instances by task and status code, HTTP responses by route and code, queue depth, batch sizes and
    tasks per batch, and the queue, inference and request latencies."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hyperpelt_requests", "Instances answered, by task and HTTP status code",
                                ["task", "code"], registry=r)
        self.responses = Counter("hyperpelt_responses", "HTTP responses, by route and status code",
                                 ["route", "code"], registry=r)
        self.depth = Gauge("hyperpelt_queue_depth", "Instances waiting for a batch", registry=r)
        self.batch_size = Histogram("hyperpelt_batch_size", "Instances per forward", buckets=SIZE_BUCKETS,
                                    registry=r)
        self.batch_tasks = Histogram("hyperpelt_batch_tasks", "Distinct tasks per forward",
                                     buckets=SIZE_BUCKETS, registry=r)
        self.queue_seconds = Histogram("hyperpelt_queue_seconds", "Time an instance waited for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("hyperpelt_inference_seconds", "Time of one batch's forward",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("hyperpelt_request_seconds", "Time from receipt to answer",
                                         buckets=LATENCY_BUCKETS, registry=r)

    def queue_depth(self, n: int) -> None:
        self.depth.set(n)

    def batch_done(self, arrivals: list[float], start: float, end: float, tasks: int) -> None:
        self.batch_size.observe(len(arrivals))
        self.batch_tasks.observe(tasks)
        self.inference_seconds.observe(end - start)
        for arrived in arrivals:
            self.queue_seconds.observe(start - arrived)

    def answered(self, tasks: list[str], code: int, seconds: float | None = None) -> None:
        for task in tasks:
            self.requests.labels(task=task, code=str(code)).inc()
        if seconds is not None:
            self.request_seconds.observe(seconds)

    def responded(self, route: str, code: int) -> None:
        self.responses.labels(route=route, code=str(code)).inc()

    def watch_weight_cache(self, stats) -> None:
        """Expose the weight cache's counts, read from ``stats()`` (a ``CacheStats``) at each scrape."""
        self.registry.register(WeightCacheCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WeightCacheCollector:
    """The weight cache's hits, misses, evictions, size and generation time, as the inference thread counts
    them (read, never reset, at each scrape)."""

    def __init__(self, stats):
        self.stats = stats

    def collect(self):
        s = self.stats()
        counts = (("hits", s.hits, "Tasks of a batch whose weights were cached"),
                  ("misses", s.misses, "Tasks of a batch whose weights were generated for it"),
                  ("evictions", s.evictions, "Tasks dropped from the cache to fit its budget"))
        for name, value, what in counts:
            yield CounterMetricFamily(f"hyperpelt_weight_cache_{name}", what, value=value)
        yield GaugeMetricFamily("hyperpelt_weight_cache_bytes", "Bytes of generated weights cached",
                                value=s.bytes)
        yield GaugeMetricFamily("hyperpelt_weight_cache_tasks", "Tasks whose weights are cached",
                                value=s.tasks)
        yield SummaryMetricFamily("hyperpelt_weight_generation_seconds", "Time of one hypernetwork call for "
                                  "a batch's missing tasks", count_value=s.generations,
                                  sum_value=s.generation_seconds)


class CountResponses:
    """ASGI middleware: every HTTP response counted in ``metrics.responses``, labelled by its route (one of
    ``paths``, else "other", so that no request can add labels) and status; an exception that passes
    through before a response started counts as the 500 the server answers for it."""

    def __init__(self, app, metrics: ServerMetrics, paths: frozenset[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.paths else "other"
        started = False

        async def counted(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.responded(route, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            if not started:
                self.metrics.responded(route, 500)
            raise
