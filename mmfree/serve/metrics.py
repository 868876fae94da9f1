"""Prometheus metrics of one server (``GET /metrics``, text exposition format, ``prometheus_client``).

Each :class:`Metrics` has its own registry (several apps in one process, as in the tests, do not share
counters). Names (all prefixed ``mmfree_``):

* ``requests_total{outcome}``: finished requests by outcome: ``length``, ``stop``, ``timeout``,
  ``cancelled``, ``error`` (the engine's finish reasons), ``rejected`` (429, queue full), ``invalid`` (400).
* ``prompt_tokens_total``, ``completion_tokens_total``: tokens read and generated.
* ``tokens_per_second``: generated tokens per second of busy decoding time over the last ``window_s`` seconds:
  the tokens of the completed requests that finished in the window over the union of their [start, end]
  decoding intervals (so N requests decoded together count their passes' wall time once: the aggregate rate;
  0 when none).
* ``queue_depth``: requests waiting; ``requests_running``: requests being decoded (0 or 1 with one stream at a
  time, up to ``--max-streams``).
* ``passes_total{kind}``: weight passes of the model each request took part in, ``prefill`` (prompt) and ``decode``
  (with ``--max-streams`` > 1 a shared pass counts once per request in it).
* ``batch_passes``: weight passes the multi-stream batch loop ran (each shared by the requests in it; 0 with one
  stream at a time).
* ``accepted_drafts_total``: tokens emitted beyond one per decode pass (trigram drafts the model accepted).
* ``request_seconds``: histogram of arrival-to-last-token time of completed requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the app)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

OUTCOMES = ("length", "stop", "timeout", "cancelled", "error", "rejected", "invalid")


class Metrics:
    """The server's counters. ``engine`` (set later with :meth:`bind`) supplies the live gauges."""

    def __init__(self, window_s: float = 60.0):
        self.registry = r = CollectorRegistry()
        self.window_s = window_s
        self.requests = Counter("mmfree_requests", "finished requests by outcome", ["outcome"], registry=r)
        for o in OUTCOMES:
            self.requests.labels(o)
        self.prompt_tokens = Counter("mmfree_prompt_tokens", "prompt tokens read", registry=r)
        self.completion_tokens = Counter("mmfree_completion_tokens", "tokens generated", registry=r)
        self.passes = Counter("mmfree_passes", "weight passes of the model", ["kind"], registry=r)
        for k in ("prefill", "decode"):
            self.passes.labels(k)
        self.accepted = Counter("mmfree_accepted_drafts", "tokens emitted beyond one per decode pass (accepted "
                                                          "drafts)", registry=r)
        self.latency = Histogram("mmfree_request_seconds", "arrival to last token, completed requests",
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.tps = Gauge("mmfree_tokens_per_second", "generated tokens per second of decoding, recent window",
                         registry=r)
        self.tps.set_function(self.tokens_per_second)
        self.depth = Gauge("mmfree_queue_depth", "requests waiting for the decode loop", registry=r)
        self.running = Gauge("mmfree_requests_running", "requests being decoded (at most --max-streams)", registry=r)
        self.batch_passes = Gauge("mmfree_batch_passes", "weight passes run by the multi-stream batch loop",
                                  registry=r)
        self._recent: deque[tuple[float, int, float]] = deque()      # (finished at, tokens, started at)
        self._lock = threading.Lock()

    def bind(self, engine) -> None:
        self.depth.set_function(lambda: engine.queue_depth)
        self.running.set_function(lambda: len(engine.active))
        self.batch_passes.set_function(lambda: engine.passes)

    def rejected(self, outcome: str) -> None:
        """A request refused before it reached the engine (``rejected`` or ``invalid``)."""
        self.requests.labels(outcome).inc()

    def job_done(self, job) -> None:
        """Called by the engine once per finished job."""
        s = job.stats
        self.requests.labels(job.finish_reason).inc()
        self.prompt_tokens.inc(s["prompt_tokens"])
        self.completion_tokens.inc(s["completion_tokens"])
        self.passes.labels("prefill").inc(s["prefill_passes"])
        self.passes.labels("decode").inc(s["decode_passes"])
        self.accepted.inc(s["accepted_drafts"])
        if job.finish_reason in ("length", "stop"):
            self.latency.observe(s["queue_s"] + s["decode_s"])
            with self._lock:
                now = time.monotonic()
                self._recent.append((now, s["completion_tokens"], now - s["decode_s"]))

    def tokens_per_second(self) -> float:
        with self._lock:
            cut = time.monotonic() - self.window_s
            while self._recent and self._recent[0][0] < cut:
                self._recent.popleft()
            toks = sum(r[1] for r in self._recent)
            secs = busy_seconds([(r[2], r[0]) for r in self._recent])
        return toks / secs if secs > 0 else 0.0

    def text(self) -> bytes:
        return generate_latest(self.registry)


def busy_seconds(intervals) -> float:
    """The length in seconds of the union of ``intervals`` ((start, end) pairs, seconds; end < start counts as
    empty): overlapping requests' decoding time counted once."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((s, e) for s, e in intervals if e > s):
        if cur_e is None or s > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0.0 if cur_e is None else cur_e - cur_s)
