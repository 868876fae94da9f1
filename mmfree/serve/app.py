"""The HTTP layer: a FastAPI app over an :class:`~mmfree.serve.engine.Engine` (OpenAI completions API subset).

Endpoints:

* ``POST /v1/completions``: ``model`` (the served id), ``prompt`` (text or a list of token ids),
  ``max_tokens`` (default 16), ``temperature`` (default 1; 0 is greedy), ``top_p`` (default 1), ``seed``
  (default 0, as ``mmfree generate``), ``stop`` (a string or up to 4), ``stream`` (Server-Sent Events,
  ``data: {chunk}`` per token then ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk).
  ``n``, ``best_of``, ``echo``, ``logprobs``, ``suffix``, ``logit_bias`` and the penalties are accepted only
  at their defaults. Besides the OpenAI fields each choice carries ``token_ids`` (every generated token, the
  end-of-sequence token and the one that completed a stop string included; text excludes both) and the
  response an ``mmfree`` object (backend, passes, accepted drafts, seconds).
* ``GET /v1/models``, ``GET /health`` (backend, draft, queue, limits, ``streams``: requests decoded together
  (``--max-streams``; 1: one stream at a time), ``batching`` (how), ``running`` / ``running_streams`` and
  ``batch_passes`` (weight passes the multi-stream loop ran)), ``GET /metrics`` (:mod:`mmfree.serve.metrics`).

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad field (``param``
names it), 404 for another model id, 429 with ``Retry-After`` when the queue is full, 503 while shutting down,
504 when the request time-out passed before the completion was done (while streaming: an ``error`` event),
500 when the backend failed (the server goes on).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt

from mmfree.serve.engine import BadRequest, Engine, QueueFull, ShuttingDown
from mmfree.serve.metrics import CONTENT_TYPE_LATEST, Metrics

#: Seconds the HTTP side waits past a request's deadline for the decode loop to report it (a pass in flight).
GRACE_S = 2.0


class CompletionRequest(BaseModel):
    """The request body. Unknown fields are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | list[StrictInt]
    max_tokens: StrictInt | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    stream_options: dict | None = None
    n: StrictInt | None = 1
    best_of: StrictInt | None = None
    echo: StrictBool | None = False
    logprobs: StrictInt | None = None
    suffix: str | None = None
    logit_bias: dict | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    user: str | None = None


#: Fields the server takes only at these values.
_ONLY = {"n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None,), "suffix": (None, ""),
         "logit_bias": (None, {}), "presence_penalty": (None, 0.0), "frequency_penalty": (None, 0.0)}


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def create_app(engine: Engine, metrics: Metrics | None = None, drain_timeout_s: float | None = None) -> FastAPI:
    """The app serving ``engine``. ``metrics``: the engine's :class:`Metrics` (a fresh one otherwise). On the
    app's shutdown the engine finishes its queued and running requests (at most ``drain_timeout_s``, default:
    the request time-out plus :data:`GRACE_S`) and stops."""
    metrics = metrics or engine.metrics or Metrics()
    metrics.bind(engine)
    b, lim = engine.backend, engine.limits
    drain = drain_timeout_s if drain_timeout_s is not None else lim.request_timeout_s + GRACE_S

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, lambda: engine.close(timeout_s=drain))

    app = FastAPI(title="mmfree serve", lifespan=lifespan)

    _error_handlers(app, metrics)

    @app.get("/health")
    async def health():
        return {"status": "draining" if engine.closing else "ok", "model": b.model_id, **b.describe(),
                "streams": engine.streams, "batching": engine.batching, "queue_depth": engine.queue_depth,
                "running": engine.running is not None, "running_streams": len(engine.active),
                "batch_passes": engine.passes, "max_queue": lim.max_queue, "max_tokens": lim.max_tokens,
                "max_prompt_tokens": lim.max_prompt_tokens, "request_timeout_s": lim.request_timeout_s}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": b.model_id, "object": "model", "created": 0, "owned_by": "mmfree"}]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        for name, allowed in _ONLY.items():
            if getattr(req, name) not in allowed:
                raise BadRequest(name, f"{name} is not supported by this server; leave it at its default")
        if req.model != b.model_id:
            metrics.rejected("invalid")
            return _error(404, f"the model {req.model!r} is not served here; this server serves {b.model_id!r}",
                          "invalid_request_error", "model", "model_not_found")
        job = engine.prepare(req.prompt, 16 if req.max_tokens is None else req.max_tokens,
                             1.0 if req.temperature is None else req.temperature,
                             1.0 if req.top_p is None else req.top_p, 0 if req.seed is None else req.seed, req.stop)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:                       # the event loop is gone (server stopped)
                job.cancel()

        job.sink = sink
        engine.submit(job)
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": b.model_id}
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(job, events, meta, usage, b.name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _complete(job, events, meta, request, b.name)

    return app


def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """OpenAI-shaped errors for bad bodies and fields (400), a full queue (429) and shutdown (503)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        metrics.rejected("invalid")
        err = exc.errors()[0] if exc.errors() else {}
        if err.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})",
                          "invalid_request_error")
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = loc[0] if loc else None
        what = "unknown field" if err.get("type") == "extra_forbidden" else "invalid value"
        msg = f"{what} {param}: {err.get('msg', 'invalid')}" if param else f"invalid body: {err.get('msg', '')}"
        return _error(400, msg, "invalid_request_error", param)

    @app.exception_handler(BadRequest)
    async def _bad(request, exc: BadRequest):
        metrics.rejected("invalid")
        return _error(400, str(exc), "invalid_request_error", exc.param)

    @app.exception_handler(QueueFull)
    async def _full(request, exc: QueueFull):
        metrics.rejected("rejected")
        return _error(429, str(exc), "rate_limit_error", None, "queue_full", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ShuttingDown)
    async def _closing(request, exc: ShuttingDown):
        return _error(503, str(exc), "server_error", None, "shutting_down")


#: How often a waiting request looks at its client's connection (seconds).
DISCONNECT_CHECK_S = 0.5


async def _next(job, events: asyncio.Queue, request: Request | None = None) -> tuple:
    """The job's next event; ``("done", "timeout")`` when the decode loop has not answered by the deadline plus
    GRACE_S, ``("done", "cancelled")`` when ``request``'s client went away (both cancel the job)."""
    while True:
        left = job.deadline + GRACE_S - time.monotonic()
        if left <= 0:
            job.cancel()
            return ("done", "timeout", {})
        # the client is checked every DISCONNECT_CHECK_S also while events keep coming (a fast backend emits
        # a token more often than that, and a plain request's events are not seen by its client)
        if request is not None and time.monotonic() >= job.next_disconnect_check:
            job.next_disconnect_check = time.monotonic() + DISCONNECT_CHECK_S
            if await request.is_disconnected():
                job.cancel()
                return ("done", "cancelled", {})
        try:
            return await asyncio.wait_for(events.get(), timeout=min(left, DISCONNECT_CHECK_S))
        except asyncio.TimeoutError:
            continue


def _usage(tokens: list[int], prompt_n: int) -> dict:
    n = len(tokens)
    return {"prompt_tokens": prompt_n, "completion_tokens": n, "total_tokens": prompt_n + n}


def _mmfree(stats: dict, backend: str) -> dict:
    keys = ("prefill_passes", "decode_passes", "accepted_drafts", "decode_s", "queue_s")
    return dict({"backend": backend}, **{k: stats[k] for k in keys if k in stats})


def _failure(reason: str, stats: dict, timeout_s: float) -> tuple[int, str, str]:
    if reason == "timeout":
        return 504, f"the request did not finish within the server's time-out ({timeout_s:g} s)", "timeout"
    if reason == "cancelled":
        return 499, "the request was cancelled", "cancelled"
    return 500, f"the backend failed on this request: {stats.get('error') or 'unknown error'}", "server_error"


async def _complete(job, events, meta: dict, request: Request, backend: str):
    text, tokens = [], []
    while True:
        ev = await _next(job, events, request)
        if ev[0] == "delta":
            text.append(ev[1])
            tokens.append(ev[2])
            continue
        reason, stats = ev[1], ev[2]
        if reason not in ("length", "stop"):
            status, msg, code = _failure(reason, stats, job.deadline - job.arrived)
            return _error(status, msg, "server_error" if status == 500 else code, None, code)
        text.append(stats.get("tail", ""))
        choice = {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": reason, "token_ids": tokens}
        return dict(meta, choices=[choice], usage=_usage(tokens, len(job.prompt_ids)),
                    system_fingerprint=None, mmfree=_mmfree(stats, backend))


def _chunk(meta: dict, text: str, tokens: list[int], finish_reason=None) -> str:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "token_ids": tokens}
    return f"data: {json.dumps(dict(meta, choices=[choice]))}\n\n"


async def _sse(job, events, meta: dict, include_usage: bool, backend: str):
    """The SSE body; leaving it early (the client went away: Starlette cancels the response) cancels the job."""
    tokens = []
    try:
        while True:
            ev = await _next(job, events)
            if ev[0] == "delta":
                tokens.append(ev[2])
                yield _chunk(meta, ev[1], [ev[2]])
                continue
            reason, stats = ev[1], ev[2]
            if reason in ("length", "stop"):
                yield _chunk(meta, stats.get("tail", ""), [], reason)
                if include_usage:
                    usage = dict(meta, choices=[], usage=_usage(tokens, len(job.prompt_ids)),
                                 mmfree=_mmfree(stats, backend))
                    yield f"data: {json.dumps(usage)}\n\n"
            else:
                _, msg, code = _failure(reason, stats, job.deadline - job.arrived)
                yield f"data: {json.dumps({'error': {'message': msg, 'type': code, 'param': None, 'code': code}})}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancel()
