"""`mmfree serve --max-streams N` on the accelerator (the simulated board: the driver on the ISA emulator):
concurrent requests are decoded together, joining the forest at the next pass and leaving when done, in fewer
weight passes than decoding them one after another, and every request's tokens equal decoding it alone (greedy,
and sampled with its own seed); the limits and bad flags get one clear error."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from mmfree import MmfreeError
from mmfree.cli import main
from tests.serve.helpers import generate_cli, live

MODEL = "mmfree-default"
#: (prompt, max_tokens, sampling) of the concurrent requests
REQUESTS = [("def ", 12, {"temperature": 0}), ("class Foo", 10, {"temperature": 0.8, "top_p": 0.95, "seed": 3}),
            ("import os\n", 6, {"temperature": 0})]


@pytest.fixture(scope="module")
def backend():
    from mmfree.serve.engine import open_backend

    b = open_backend("board", board="sim", max_streams=2)
    yield b
    b.close()


def _reference(prompt, n, sampling) -> list[int]:
    """`mmfree generate --backend int --draft none` (the integer reference decoding the request alone)."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sampling.items()]
    return generate_cli("--backend", "int", "--prompt", prompt, "--max-new-tokens", str(n), "--stop-at-eos",
                        "--draft", "none", *flags)["tokens"]


def _post(url, prompt, n, sampling, out, key, barrier=None):
    if barrier is not None:
        barrier.wait()
    r = httpx.post(url + "/v1/completions", timeout=120,
                   json=dict(model=MODEL, prompt=prompt, max_tokens=n, **sampling)).json()
    out[key] = r


def _concurrently(url, requests) -> dict:
    out, barrier = {}, threading.Barrier(len(requests))
    threads = [threading.Thread(target=_post, args=(url, p, n, s, out, i, barrier))
               for i, (p, n, s) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_concurrent_requests_share_passes_and_equal_their_solo_output(backend):
    """Two requests at once: each equals its solo output on the same server (and the integer reference's plain
    decoding), and together they take fewer weight passes than one after the other."""
    with live(backend) as (server, engine):
        solo = {}
        for i, (p, n, s) in enumerate(REQUESTS[:2]):
            _post(server.url, p, n, s, solo, i)
        solo_passes = engine.passes
        both = _concurrently(server.url, REQUESTS[:2])
        shared = engine.passes - solo_passes
        health = httpx.get(server.url + "/health").json()
    for i, (p, n, s) in enumerate(REQUESTS[:2]):
        ids = both[i]["choices"][0]["token_ids"]
        assert ids == solo[i]["choices"][0]["token_ids"] == _reference(p, n, s), i
        m = both[i]["mmfree"]
        assert m["decode_passes"] == n - 1 and m["accepted_drafts"] == 0
    assert solo_passes == sum(n for _, n, _ in REQUESTS[:2])      # alone: 1 prompt pass + n - 1 decode passes
    assert shared < solo_passes, (shared, solo_passes)
    assert health["streams"] == 2 and health["draft"] == "none" and health["tokens_per_pass"] == 4
    assert "continuous batching" in health["batching"] and health["running_streams"] == 0


def test_a_waiting_request_joins_when_one_leaves(backend):
    """Three requests, two streams: the third waits in the queue and joins the batch at the pass boundary after
    the shortest one leaves; all three equal their reference decoding, streamed or not."""
    with live(backend) as (server, engine):
        got = _concurrently(server.url, REQUESTS)
        streamed = [t for ch in server.client().completions.create(model=MODEL, prompt="def ", max_tokens=5,
                                                                      stream=True, temperature=0)
                    for t in ch.choices[0].model_extra["token_ids"]]
    for i, (p, n, s) in enumerate(REQUESTS):
        assert got[i]["choices"][0]["token_ids"] == _reference(p, n, s), i
        assert got[i]["choices"][0]["finish_reason"] == "length"
    assert streamed == _reference("def ", 5, {"temperature": 0})


def test_async_clients_through_the_asgi_app(backend):
    """httpx.AsyncClient on the FastAPI app itself (ASGI transport, one event loop): two requests in flight at
    once, both exact, and a stop string ends one while the other goes on."""
    from mmfree.serve.app import create_app
    from mmfree.serve.engine import Engine, Limits

    engine = Engine(backend, Limits())
    app = create_app(engine)

    async def both():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            body = dict(model=MODEL, temperature=0)
            return await asyncio.gather(c.post("/v1/completions", json=dict(body, prompt="def ", max_tokens=10)),
                                        c.post("/v1/completions", json=dict(body, prompt="import os\n", max_tokens=8,
                                                                            stop="\n")))
    try:
        a, b = [r.json() for r in asyncio.run(both())]
        passes = engine.passes
    finally:
        engine.close(timeout_s=30)
    assert a["choices"][0]["token_ids"] == _reference("def ", 10, {"temperature": 0})
    ref_b = _reference("import os\n", 8, {"temperature": 0})
    ids_b = b["choices"][0]["token_ids"]
    assert ids_b == ref_b[:len(ids_b)] and "\n" not in b["choices"][0]["text"]
    assert passes < 10 + len(ids_b)


def test_engine_cancel_leaves_the_other_request_exact(backend):
    """Engine API: one of two jobs cancelled after its first token; the other finishes with its solo tokens."""
    from mmfree.serve.engine import Engine, Limits

    engine = Engine(backend, Limits())
    done = {k: threading.Event() for k in "ab"}
    try:
        ids = backend.tokenizer.encode_prompt("def ")
        a, b = engine.prepare(ids, 12, temperature=0), engine.prepare(ids, 12, temperature=0)
        a.sink = lambda ev: (a.cancel() if ev[0] == "delta" else done["a"].set())
        b.sink = lambda ev: ev[0] == "done" and done["b"].set()
        engine.submit(a)
        engine.submit(b)
        assert done["a"].wait(120) and done["b"].wait(120)
    finally:
        engine.close(timeout_s=30)
    assert a.finish_reason == "cancelled" and len(a.tokens) < 12
    assert b.finish_reason == "length" and b.tokens == _reference("def ", 12, {"temperature": 0})


@pytest.mark.parametrize("argv, msg", [
    (["--max-streams", "0"], "--max-streams must be an integer >= 1"),
    (["--max-streams", "-2"], "--max-streams must be an integer >= 1"),
    (["--max-streams", "2"], "it needs --backend board"),
    (["--max-streams", "2", "--backend", "float"], "it needs --backend board"),
    (["--max-streams", "5", "--backend", "board", "--board", "sim"], "verifies 4 tokens per pass"),
    (["--max-streams", "17", "--backend", "board", "--board", "sim"], "at most 16 streams"),
    (["--max-streams", "2", "--backend", "board", "--board", "sim", "--draft", "trigram"], "no draft trees"),
    (["--max-streams", "2", "--backend", "board", "--board", "sim", "--tree-rule", "template"], "no draft trees"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_max_streams_is_one_clear_error(capsys, argv, msg):
    assert main(["serve", "--port", "0", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmfree serve: error: ") and msg in err[0], err


def test_max_streams_not_an_integer_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--max-streams", "two"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "mmfree serve: error: argument --max-streams: invalid int value: 'two'" in err


def test_streams_backend_refuses_bad_combinations():
    from mmfree.serve.engine import check_max_streams, open_backend

    with pytest.raises(MmfreeError, match="--max-streams must be an integer >= 1"):
        check_max_streams(True, "board")
    with pytest.raises(MmfreeError, match="--max-streams must be an integer >= 1"):
        open_backend("board", board="sim", max_streams=1.5)
    with pytest.raises(MmfreeError, match="needs --board"):
        open_backend("board", max_streams=2)


def test_serve_command_reports_its_streams():
    """The `mmfree serve` process with --max-streams 2 on the simulated board: its first line and /health say so,
    SIGTERM stops it (exit 0)."""
    import signal

    from tests.serve.test_serve_cli import _start

    proc, port = _start("--backend", "board", "--board", "sim", "--max-streams", "2")
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=60).json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert health["streams"] == 2 and health["backend"] == "board" and health["draft"] == "none"


def test_a_failed_pass_ends_its_requests_and_the_server_goes_on():
    """A simulated board that swallows the second START (the shared decode pass never finishes): both requests in
    it end with an error naming the time-out, and the next request runs in a fresh batch with its exact tokens."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.rtl import regmap as RM
    from mmfree.serve.engine import Engine, Limits, StreamsBackend
    from mmfree.sim.accel import DEFAULT_HW
    from mmfree.sim.emulator import EmulatedBoard

    class StuckOnce(EmulatedBoard):
        starts = 0

        def write32(self, offset, value):
            if offset == RM.OFFSET["CONTROL"] and value & RM.CTRL_START:
                self.starts += 1
                if self.starts == 2:
                    return
            super().write32(offset, value)

    opened = open_model("default", streams=2)
    acc = Accelerator(StuckOnce(DEFAULT_HW), opened, timeout_s=0.05)
    backend = StreamsBackend(acc, opened[1], MODEL, opened[2], 2)
    engine = Engine(backend, Limits())
    ids = backend.tokenizer.encode_prompt("def ")
    jobs = [engine.prepare(ids, 6, temperature=0) for _ in range(3)]
    done = [threading.Event() for _ in jobs]
    for job, ev in zip(jobs, done):
        job.sink = lambda e, ev=ev: e[0] == "done" and ev.set()
    try:
        with engine._cv:                       # both queued before the loop looks: they share the first pass
            engine.submit(jobs[0])
            engine.submit(jobs[1])
        assert done[0].wait(60) and done[1].wait(60)
        engine.submit(jobs[2])
        assert done[2].wait(60)
    finally:
        engine.close(timeout_s=30)
        backend.close()
    assert [j.finish_reason for j in jobs] == ["error", "error", "length"]
    assert "did not finish" in jobs[0].error and jobs[0].stats["prefill_passes"] == 1
    assert jobs[2].tokens == _reference("def ", 6, {"temperature": 0})


def _run_jobs(engine, jobs, together=True, wait_s=60) -> list[bool]:
    """Submit ``jobs`` (all before the batch loop looks when ``together``) and wait for each one's done event."""
    done = [threading.Event() for _ in jobs]
    for job, ev in zip(jobs, done):
        inner = job.sink
        job.sink = lambda e, ev=ev, inner=inner: (e[0] == "done" and ev.set(), inner(e))
    if together:
        with engine._cv:
            for job in jobs:
                engine.submit(job)
    else:
        for job in jobs:
            engine.submit(job)
    return [ev.wait(wait_s) for ev in done]


def _close_returns(engine, within_s=30.0) -> bool:
    t = threading.Thread(target=engine.close, daemon=True)
    t.start()
    t.join(within_s)
    return not t.is_alive()


def test_a_raising_sink_ends_only_its_request_and_the_loop_goes_on(backend):
    """A client sink that raises on every event: that request ends with ``error`` naming the sink, the request
    sharing its passes finishes with its exact tokens, the decode thread lives, the next request completes and
    close() returns."""
    from mmfree.serve.engine import Engine, Limits

    engine = Engine(backend, Limits(request_timeout_s=60))
    ids = backend.tokenizer.encode_prompt("def ")
    bad, good, later = (engine.prepare(ids, n, temperature=0) for n in (4, 6, 5))

    def raising(ev):
        raise RuntimeError("client sink blew up")

    bad.sink = raising
    try:
        assert _run_jobs(engine, [bad, good]) == [True, True]
        assert engine._thread.is_alive()
        assert _run_jobs(engine, [later]) == [True]
    finally:
        assert _close_returns(engine)
    assert bad.finish_reason == "error" and "sink failed: RuntimeError: client sink blew up" in bad.error
    assert good.finish_reason == "length" and good.tokens == _reference("def ", 6, {"temperature": 0})
    assert later.finish_reason == "length" and later.tokens == _reference("def ", 5, {"temperature": 0})


def test_an_unexpected_error_ends_every_live_request_and_the_loop_goes_on(backend):
    """A bug outside the pass (here the metrics object raising once when a job leaves): every request being
    decoded ends with ``error`` and a clear message (no hang), then the loop serves the next request."""
    from mmfree.serve.engine import Engine, Limits

    class BrokenOnce:
        calls = 0

        def job_done(self, job):
            self.calls += 1
            if self.calls == 1:
                raise KeyError("metrics bug")

    engine = Engine(backend, Limits(request_timeout_s=60), BrokenOnce())
    ids = backend.tokenizer.encode_prompt("def ")
    short, long_, later = (engine.prepare(ids, n, temperature=0) for n in (2, 8, 3))
    try:
        assert _run_jobs(engine, [short, long_]) == [True, True]
        assert engine._thread.is_alive() and engine.active == []
        assert _run_jobs(engine, [later]) == [True]
    finally:
        assert _close_returns(engine)
    assert [j.finish_reason for j in (short, long_)] == ["error", "error"]
    assert "KeyError" in short.error and "metrics bug" in long_.error
    assert later.finish_reason == "length" and later.tokens == _reference("def ", 3, {"temperature": 0})


def test_close_returns_when_the_decode_thread_is_gone(backend):
    """Should the decode thread be dead (the failure mode before the batch loop caught everything), close()
    still returns and the queued request ends with ``error`` instead of hanging."""
    from mmfree.serve.engine import Engine, Limits

    engine = Engine(backend, Limits(request_timeout_s=60))
    with engine._cv:
        engine._stop = True
        engine._cv.notify_all()
    engine._thread.join(10)
    engine._stop = False
    job = engine.prepare(backend.tokenizer.encode_prompt("def "), 3, temperature=0)
    got = []
    job.sink = got.append
    engine.submit(job)
    assert _close_returns(engine, 10)
    assert job.finish_reason == "error" and "decode thread stopped" in job.error and got[-1][0] == "done"


def test_busy_seconds_counts_overlapping_intervals_once():
    from mmfree.serve.metrics import busy_seconds

    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0, 2), (0, 2), (0, 2), (0, 2)]) == 2.0          # four streams decoded together
    assert busy_seconds([(0, 2), (1, 3), (5, 6), (5.5, 5.7), (7, 6)]) == 4.0  # merged, disjoint, nested, empty
    assert busy_seconds([(3, 4), (0, 1)]) == 2.0


def test_tokens_per_second_is_the_aggregate_rate_of_overlapping_requests(monkeypatch):
    """Four requests of 10 tokens decoded together over the same 2 s: 40 tokens / 2 s of busy time = 20 tok/s
    (summing per-request seconds reported one stream's 5 tok/s)."""
    from types import SimpleNamespace

    from mmfree.serve import metrics as M

    m, clock = M.Metrics(window_s=60), [100.0]
    monkeypatch.setattr(M.time, "monotonic", lambda: clock[0])
    stats = dict(prompt_tokens=3, completion_tokens=10, decode_s=2.0, queue_s=0.0, prefill_passes=1,
                 decode_passes=9, accepted_drafts=0)
    for _ in range(4):
        m.job_done(SimpleNamespace(stats=stats, finish_reason="length"))
    assert m.tokens_per_second() == 20.0
    clock[0] = 103.0                                       # one more alone, 1 s later: 50 tokens / 3 s busy
    m.job_done(SimpleNamespace(stats=dict(stats, decode_s=2.0), finish_reason="length"))
    assert m.tokens_per_second() == 50 / 4.0


def test_tokens_per_second_through_the_engine_is_the_aggregate_rate(backend):
    """Two requests decoded together through the engine: the metric is their tokens over the wall time they
    took together (the overlap counted once), not one request's rate."""
    import time

    from mmfree.serve.engine import Engine, Limits
    from mmfree.serve.metrics import Metrics

    metrics = Metrics()
    engine = Engine(backend, Limits(), metrics)
    metrics.bind(engine)
    ids = backend.tokenizer.encode_prompt("def ")
    jobs = [engine.prepare(ids, 12, temperature=0) for _ in range(2)]
    t0 = time.monotonic()
    try:
        assert _run_jobs(engine, jobs) == [True, True]
        wall = time.monotonic() - t0
    finally:
        engine.close(timeout_s=30)
    n = sum(len(j.tokens) for j in jobs)
    one = max(len(j.tokens) / j.stats["decode_s"] for j in jobs)
    assert n == 24 and n / wall <= metrics.tokens_per_second() and metrics.tokens_per_second() > 1.5 * one


def test_retry_after_divides_the_wait_by_the_streams(backend):
    """429's Retry-After with N streams: the queued jobs are served N at a time."""
    from mmfree.serve.engine import Engine, Limits, QueueFull

    engine = Engine(backend, Limits(max_queue=1))
    engine._service_s = 10.0
    ids = backend.tokenizer.encode_prompt("def ")
    try:
        with engine._cv:                                   # the loop cannot take them while we hold the lock
            engine.submit(engine.prepare(ids, 2, temperature=0))
            with pytest.raises(QueueFull) as e:
                engine.submit(engine.prepare(ids, 2, temperature=0))
    finally:
        engine.close(timeout_s=30)
    assert e.value.retry_after == 10                           # 10 s x 2 waiting / 2 streams


def test_a_long_prompt_joining_does_not_stall_a_decoding_request(backend):
    """Request a decodes; b joins after a's second token with a 40-token prompt (10 passes of chunks at 4 tokens
    per pass, that a sat out before): a still gets a token in every batch pass (the server's batches put decoding
    requests first), and both get their solo tokens."""
    from mmfree.serve.engine import Engine, Limits

    engine = Engine(backend, Limits(request_timeout_s=120))
    ids = backend.tokenizer.encode_prompt("def ")
    long_ids = [(7 * i) % 4000 + 1 for i in range(40)]
    a, b = engine.prepare(ids, 12, temperature=0), engine.prepare(long_ids, 3, temperature=0)
    at = []

    def sink_a(ev):
        if ev[0] == "delta":
            at.append(engine.passes)
            if len(at) == 2:
                engine.submit(b)

    a.sink, done = sink_a, threading.Event()
    b.sink = lambda ev: ev[0] == "done" and done.set()
    try:
        assert _run_jobs(engine, [a], wait_s=120) == [True]
        assert done.wait(120)
    finally:
        engine.close(timeout_s=30)
    assert a.finish_reason == "length" and a.tokens == _reference("def ", 12, {"temperature": 0})
    assert b.finish_reason == "length" and b.stats["prefill_passes"] == 13     # 10 x 3 beside a, then 4 + 4 + 2
    assert [y - x for x, y in zip(at, at[1:])] == [1] * 11, at
    assert a.stats["decode_passes"] == 11 and a.stats["prefill_passes"] == 1
