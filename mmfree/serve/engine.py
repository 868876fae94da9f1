"""The serving engine: backends behind one interface, and one decode loop fed by a bounded request queue.

Backends (:func:`open_backend`) decode with the project's own generation code, so a served completion is
the completion ``mmfree generate`` prints, token for token, greedy or sampled with the same seed:

* ``float``: the PyTorch model (:class:`mmfree.pymodel.generate.TorchBackend`) through
  :func:`mmfree.pymodel.generate.generate`.
* ``int``: the bit-exact integer reference (:class:`~mmfree.pymodel.intmodel.IntModel`), through
  :func:`~mmfree.pymodel.speculative.speculative_generate` with the trigram drafter (default) or
  :func:`~mmfree.pymodel.generate.generate` (``draft="none"``).
* ``board``: the accelerator through its driver, on the simulated board (``"sim"``: the ISA emulator
  :class:`mmfree.sim.emulator.EmulatedBoard`, bit-exact with IntModel) or a PYNQ board. :class:`BoardModel`
  presents the accelerator as an IntModel-shaped object (one weight pass per ``prefill`` chunk / ``verify``
  call, the logits read back from DDR), so the same two decoding functions drive it: greedy and seeded
  sampling give the integer reference's tokens exactly. Draft trees are cut to the build's tokens per pass
  (``max_draft = max_nodes = K - 1`` at most). The driver is imported in ONE place, :func:`open_accelerator`.

:class:`Engine`: :meth:`Engine.submit` puts a :class:`Job` in a queue of at most ``limits.max_queue`` waiting
jobs (:class:`QueueFull` beyond, with a Retry-After estimate); one thread takes jobs in order and decodes one
stream at a time, or with a :class:`StreamsBackend` (``--max-streams N`` > 1 on the accelerator) up to N jobs
together: continuous batching at pass boundaries (:meth:`Engine._batch_loop`). Each job reports events to
its ``sink`` from that thread: ``("delta", text, token)`` per token, then one ``("done", finish_reason,
stats)``. Finish reasons: ``length``, ``stop`` (end-of-sequence token or a stop string), ``timeout`` (the
request's deadline passed), ``cancelled`` (:meth:`Job.cancel`, e.g. the client went away), ``error`` (the
backend raised; the engine goes on with the next job).
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mmfree import MmfreeError

BACKENDS = ("float", "int", "board")
#: Finish reasons of a job (the OpenAI ones, length and stop, and the server's own).
FINISH_REASONS = ("length", "stop", "timeout", "cancelled", "error")


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how much the server holds.

    ``max_tokens``: completion tokens per request (1..); ``max_prompt_tokens``: prompt tokens per request;
    ``max_queue``: requests waiting behind the running one (0..; beyond: HTTP 429); ``request_timeout_s``:
    seconds from arrival to the last token (queue wait included; beyond: finish reason ``timeout``)."""

    max_tokens: int = 256
    max_prompt_tokens: int = 2048
    max_queue: int = 16
    request_timeout_s: float = 120.0

    def check(self) -> None:
        """MmfreeError naming the flag for a limit out of range."""
        if self.max_tokens < 1:
            raise MmfreeError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.max_prompt_tokens < 1:
            raise MmfreeError(f"--max-prompt-tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.max_queue < 0:
            raise MmfreeError(f"--max-queue must be >= 0, got {self.max_queue}")
        if not self.request_timeout_s > 0 or not math.isfinite(self.request_timeout_s):
            raise MmfreeError(f"--request-timeout must be a positive number of seconds, got {self.request_timeout_s}")


class BadRequest(MmfreeError):
    """A request field is out of range: ``param`` names the field (HTTP 400)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class QueueFull(MmfreeError):
    """The queue holds ``limits.max_queue`` waiting requests (HTTP 429); ``retry_after`` in whole seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the server is busy: {depth} requests are waiting (the --max-queue limit); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(MmfreeError):
    """The server is draining for shutdown and takes no new requests (HTTP 503)."""


class _Stop(Exception):
    """Raised from the token callback to end a decode early (the decoding functions let it through)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- text: incremental detokenisation with stop strings ----------------------------------------------------------
class TextStream:
    """Turns tokens into text deltas: a delta never ends inside a UTF-8 character (a trailing U+FFFD is held
    back) nor inside a possible stop string; after a stop string ``stopped`` is true and the text ends before
    it. ``text`` is everything emitted so far; :meth:`flush` releases what was held back at the end."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tok, self.stops = tokenizer, [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False

    def _full(self) -> str:
        return self.tok.decode(self.ids) if self.tok is not None else ""

    def push(self, token: int) -> str:
        """Add one token; the new text that is safe to send (may be empty)."""
        self.ids.append(int(token))
        full = self._full()
        cut = min((i for i in (full.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._emit(full[:cut])
        safe = full.rstrip("\ufffd")
        hold = max((n for s in self.stops for n in range(1, len(s)) if safe.endswith(s[:n])), default=0)
        return self._emit(safe[:len(safe) - hold])

    def flush(self) -> str:
        """The held-back rest (at the end of generation; nothing after a stop string)."""
        return "" if self.stopped else self._emit(self._full())

    def _emit(self, upto: str) -> str:
        if len(upto) <= len(self.text) or not upto.startswith(self.text):
            return ""
        delta, self.text = upto[len(self.text):], upto
        return delta


# ---- backends ---------------------------------------------------------------------------------------------------
class _Counted:
    """An IntModel (or :class:`BoardModel`) with its weight passes counted into ``passes``: ``[0]`` prompt
    passes (the first ``prefill`` after ``initial_state``), ``[1]`` decode passes (``verify``, and ``prefill``
    of the next token as plain decoding feeds it). Every other attribute is the model's."""

    def __init__(self, model, passes: list[int]):
        self._m, self.passes = model, passes
        self._fresh = False

    def __getattr__(self, name):
        return getattr(self._m, name)

    def initial_state(self):
        self._fresh = True
        return self._m.initial_state()

    def prefill(self, state, tokens):
        self.passes[0 if self._fresh else 1] += getattr(self._m, "passes_for", lambda k: 1)(len(tokens))
        self._fresh = False
        return self._m.prefill(state, tokens)

    def verify(self, state, tokens, parents=None):
        self.passes[1] += 1
        return self._m.verify(state, tokens, parents)


class BoardModel:
    """The accelerator as an IntModel-shaped object for the decoding functions of :mod:`mmfree.pymodel`.

    A state is the DDR address of a state vector (the driver keeps two areas used in turn; only the latest
    state is ever continued from). ``prefill`` feeds the prompt in passes of up to ``k`` tokens (the build's
    tokens per pass), ``verify`` one pass of a chain or tree of at most ``k`` tokens; both return the logits
    the accelerator wrote (int, Q(act_frac)); ``to_float`` and the tokenizer/table lookups are the IntModel's."""

    def __init__(self, accelerator, intmodel):
        self.acc, self.host, self.im = accelerator, accelerator.host, intmodel
        self.k = self.host.hw.max_tokens
        self.vocab_size = intmodel.vocab_size
        self.path, self.manifest = getattr(intmodel, "path", None), getattr(intmodel, "manifest", None)

    def close(self) -> None:
        """Release the accelerator (a PYNQ board's DDR buffer)."""
        self.acc.close()

    def passes_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.k)

    def to_float(self, values, kind: str = "act"):
        return self.im.to_float(values, kind)

    def initial_state(self) -> int:
        self.host.reset_state()
        return self.host.state_in

    def prefill(self, state: int, tokens):
        self.host.commit_state(state)
        tokens = [int(t) for t in tokens]
        res = None
        for i in range(0, len(tokens), self.k):
            res = self.host.run(tokens[i:i + self.k], write_logits=True)
        return res.state_addrs[-1], res.logits[-1]

    def verify(self, state: int, tokens, parents=None):
        self.host.commit_state(state)
        res = self.host.run([int(t) for t in tokens], parents=parents, write_logits=True, commit_last=False)
        return list(res.state_addrs), res.logits


@dataclass
class Sampling:
    """One request's decoding parameters (validated by :meth:`Engine.prepare`)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


class Backend:
    """One model on one backend. ``name`` (float/int/board), ``model_id``, ``vocab_size``, ``eos_id`` (or
    None), ``tokenizer`` (or None: token ids only), ``draft`` ("trigram" or None) and :meth:`decode`."""

    name = "backend"
    draft: str | None = None
    #: The longest one pass may take (seconds): the accelerator's pass time-out on a board backend; None on the
    #: CPU backends, whose passes always end. :meth:`Engine.close` waits this long for a pass in flight.
    pass_timeout_s: float | None = None

    def __init__(self, model_id: str, vocab_size: int, eos_id, tokenizer):
        self.model_id, self.vocab_size, self.eos_id, self.tokenizer = model_id, vocab_size, eos_id, tokenizer

    def decode(self, ids: list[int], s: Sampling, emit: Callable[[int], None], passes: list[int]) -> None:
        """Decode up to ``s.max_tokens`` tokens after ``ids``, calling ``emit(token)`` for each (it may raise to
        stop early); stops after the end-of-sequence token. ``passes`` ([prompt, decode] weight passes) is
        counted up as the passes run, so it is right also when ``emit`` stops the decode."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "draft": self.draft or "none"}

    def close(self) -> None:
        """Release what the backend holds (the accelerator); it decodes no more afterwards."""
        close = getattr(getattr(self, "model", None), "close", None)
        if close is not None:
            close()


class FloatBackend(Backend):
    """The PyTorch float model (``mmfree generate --backend float``)."""

    name = "float"

    def __init__(self, model: str, model_id: str):
        from mmfree.pymodel.checkpoint import load_model
        from mmfree.pymodel.generate import TorchBackend

        m = load_model(model)
        self.tb = TorchBackend(m)
        super().__init__(model_id, self.tb.vocab_size, getattr(m.config, "eos_token_id", None), _tokenizer(model))

    def decode(self, ids, s, emit, passes):
        from mmfree.pymodel.generate import generate

        generate(_CountedFeed(self.tb, passes), ids, s.max_tokens, s.temperature, s.top_p, s.seed, self.eos_id,
                 progress=emit)


class _CountedFeed:
    """A ``generate`` backend with its weight passes counted into ``passes`` (the first feed after ``reset`` is
    the prompt's pass, the others decode passes)."""

    def __init__(self, backend, passes: list[int]):
        self.b, self.vocab_size, self.passes, self._fresh = backend, backend.vocab_size, passes, False

    def reset(self):
        self._fresh = True
        self.b.reset()

    def feed(self, ids):
        self.passes[0 if self._fresh else 1] += 1
        self._fresh = False
        return self.b.feed(ids)


class ReferenceBackend(Backend):
    """An IntModel-shaped model (the integer reference, or :class:`BoardModel`) decoded by
    ``speculative_generate`` with trigram drafts (``table`` given) or by ``generate`` (``table`` None), as
    ``mmfree generate --backend int [--draft trigram]`` does."""

    def __init__(self, name: str, model, model_id: str, tok_dir, table=None, max_draft: int = 4,
                 max_nodes: int | None = None, extra: dict | None = None, tree_rule: str | None = None):
        self.name, self.model, self.tok_dir, self.table = name, model, tok_dir, table
        self.draft = "trigram" if table is not None else None
        self.tree_rule = tree_rule
        self.max_draft, self.max_nodes, self.extra = max_draft, max_nodes, extra or {}
        eos = ((getattr(model, "manifest", None) or {}).get("config") or {}).get("eos_token_id")
        super().__init__(model_id, model.vocab_size, eos, _tokenizer(tok_dir))

    def decode(self, ids, s, emit, passes):
        m = _Counted(self.model, passes)
        if self.table is not None:
            from mmfree.pymodel import trigram as TG
            from mmfree.pymodel.speculative import speculative_generate

            nodes = TG.DEFAULT_MAX_NODES if self.max_nodes is None else self.max_nodes
            speculative_generate(m, ids, s.max_tokens, max_draft=self.max_draft, max_nodes=nodes,
                                 temperature=s.temperature, top_p=s.top_p, seed=s.seed, table=self.table,
                                 model_dir=self.tok_dir, eos_id=self.eos_id, progress=emit, log=lambda msg: None,
                                 tree_rule=self.tree_rule)
        else:
            from mmfree.pymodel.generate import generate
            from mmfree.pymodel.intmodel import IntBackend

            generate(IntBackend(m), ids, s.max_tokens, s.temperature, s.top_p, s.seed, self.eos_id, progress=emit)

    def describe(self) -> dict:
        d = dict(super().describe(), **self.extra)
        if self.draft:
            from mmfree.pymodel import trigram as TG

            d.update(max_draft=self.max_draft, draft_nodes=self.max_nodes,
                     tree_rule=TG.check_tree_rule(self.tree_rule))
        return d


class StreamsBackend(Backend):
    """The accelerator decoding up to ``max_streams`` requests together (``mmfree serve --max-streams N``, N > 1):
    the engine's batch loop (:meth:`Engine._batch_loop`) runs one :meth:`new_batch` and adds each request as a
    stream at a pass boundary. Every decode pass carries one token per request (no draft trees), so a request's
    tokens are those of ``mmfree generate --backend int --draft none`` for its prompt, greedy or sampled with its
    own seeded generator (:class:`mmfree.host.streams.StreamBatch`). It has no one-request :meth:`decode`: an
    engine with ``max_streams`` > 1 decodes through :meth:`new_batch` only."""

    name = "board"

    def __init__(self, accelerator, intmodel, model_id: str, tok_dir, max_streams: int, extra: dict | None = None):
        self.acc, self.max_streams, self.extra = accelerator, max_streams, extra or {}
        eos = ((getattr(intmodel, "manifest", None) or {}).get("config") or {}).get("eos_token_id")
        super().__init__(model_id, intmodel.vocab_size, eos, _tokenizer(tok_dir))

    def new_batch(self):
        """An empty batch of up to ``max_streams`` streams on the accelerator; decoding requests go first in every
        pass (``decode_first``: a request joining with a long prompt does not stall the others)."""
        return self.acc.stream_batch(self.max_streams, decode_first=True)

    def describe(self) -> dict:
        return dict(super().describe(), **self.extra)

    def close(self) -> None:
        self.acc.close()


def _tokenizer(source):
    """The tokenizer of ``source`` (checkpoint/export directory or "default"), or None when it has none."""
    if source is None:
        return None
    from mmfree.pymodel.tokenizer import load_tokenizer

    try:
        return load_tokenizer(source)
    except MmfreeError:
        return None


def open_accelerator(board: str, model, bitstream=None, pass_timeout_s: float = 60.0, streams: int = 1):
    """THE one place the serving layer reaches the accelerator driver: an ``Accelerator`` with ``model``
    (anything ``open_model`` takes, compiled for ``streams`` streams per pass) loaded, on ``board``: ``"sim"``
    (the ISA emulator with the default simulated build, :data:`mmfree.sim.accel.DEFAULT_HW`) or a PYNQ board name
    / ``custom:PATH.json`` with ``bitstream`` (X.bit with X.hwh). Returns (accelerator, IntModel, tokenizer
    directory)."""
    from mmfree.boards.accelerator import Accelerator
    from mmfree.host.session import open_model
    from mmfree.rtl.isa import MAX_STREAMS

    if streams > MAX_STREAMS:
        raise MmfreeError(f"--max-streams {streams}: a program carries at most {MAX_STREAMS} streams per pass "
                          "(and a bitstream at most its tokens per pass)")
    opened = open_model(model, streams=streams)
    compiled, im, tok_dir = opened
    if im is None:
        raise MmfreeError("the board backend samples from the logits with the integer reference's scale: give "
                          "'default', an export or a checkpoint directory (not a compiled directory)")
    if board == "sim":
        from mmfree.sim.accel import DEFAULT_HW, check_width
        from mmfree.sim.emulator import EmulatedBoard

        check_width(compiled.dims, DEFAULT_HW)
        acc = Accelerator(EmulatedBoard(DEFAULT_HW), opened, timeout_s=pass_timeout_s, write_logits=True)
    else:
        if bitstream is None:
            raise MmfreeError(f"--board {board} needs --bitstream X.bit (with X.hwh beside it)")
        acc = Accelerator.from_bitstream(bitstream, opened, board=board, timeout_s=pass_timeout_s)
    return acc, im, tok_dir


def open_backend(backend: str, model: str = "default", board: str | None = None, draft: str = "auto",
                 max_draft: int = 4, draft_nodes: int | None = None, trigram_table=None, bitstream=None,
                 model_id: str | None = None, pass_timeout_s: float = 60.0, tree_rule: str | None = None,
                 max_streams: int = 1) -> Backend:
    """Load ``model`` on ``backend`` (see the module docstring). ``draft``: "auto" (trigram on int and board,
    none on float), "trigram" or "none"; ``max_draft``/``draft_nodes``: the draft tree (``mmfree generate``'s
    --max-draft/--draft-nodes; on a board at most the build's tokens per pass minus one); ``tree_rule``: the
    draft tree shape (``mmfree generate --tree-rule``; None: the default); ``max_streams`` > 1: requests decoded
    together on the accelerator (:func:`open_streams_backend`). MmfreeError naming the flag for a bad
    combination."""
    if max_streams != 1:
        return open_streams_backend(backend, model, board, draft, trigram_table, bitstream, model_id, pass_timeout_s,
                                    max_streams, tree_rule, draft_nodes)
    if backend not in BACKENDS:
        raise MmfreeError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if draft not in ("auto", "trigram", "none"):
        raise MmfreeError(f"--draft must be auto, trigram or none, got {draft!r}")
    if (backend == "board") != (board is not None):
        raise MmfreeError("--board goes with --backend board (and --backend board needs --board sim or a board name)")
    if tree_rule is not None:
        from mmfree.pymodel import trigram as TG

        TG.check_tree_rule(tree_rule)
        if draft == "none" or backend == "float":
            raise MmfreeError("--tree-rule chooses the shape of trigram draft trees: it needs trigram drafts "
                              "(--backend int or board, --draft auto or trigram)")
    if draft != "none" and (max_draft < 1 or (draft_nodes is not None and draft_nodes < 1)):
        raise MmfreeError("--max-draft and --draft-nodes must be >= 1 (use --draft none for no drafts)")
    model_id = model_id or _model_id(model)
    if backend == "float":
        if draft == "trigram" or trigram_table is not None or draft_nodes is not None:
            raise MmfreeError("trigram drafts (--draft trigram, --trigram-table, --draft-nodes) run on --backend int "
                              "and --backend board, not on the float model")
        return FloatBackend(model, model_id)
    if backend == "int":
        from mmfree.pymodel.intmodel import open_int_model

        im, tok_dir = open_int_model(model)
        extra, k = {}, None
    else:
        acc, im0, tok_dir = open_accelerator(board, model, bitstream, pass_timeout_s)
        k = acc.host.hw.max_tokens
        im = BoardModel(acc, im0)
        extra = {"board": board, "tokens_per_pass": k}
    table = None
    if draft != "none":
        from mmfree.pymodel.speculative import resolve_table

        table, _, _ = resolve_table(im, trigram_table, tok_dir, log=lambda m: print(f"mmfree serve: {m}",
                                                                                   file=sys.stderr))
        if table.is_empty or (k is not None and k < 2):
            table = None
    if k is not None:
        from mmfree.pymodel import trigram as TG

        max_draft = min(max_draft, k - 1)
        draft_nodes = min(draft_nodes or TG.DEFAULT_MAX_NODES, k - 1)
    out = ReferenceBackend(backend, im, model_id, tok_dir, table, max_draft, draft_nodes, extra, tree_rule)
    if backend == "board":
        out.pass_timeout_s = pass_timeout_s
    return out


def check_max_streams(max_streams, backend: str, draft: str = "auto", trigram_table=None, tree_rule=None,
                      draft_nodes=None) -> int:
    """``--max-streams`` as an int; MmfreeError for a value that is not an integer >= 1, or > 1 with another
    backend than board or with trigram drafts (a multi-stream pass carries one token per request)."""
    if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
        raise MmfreeError(f"--max-streams must be an integer >= 1 (1: one stream at a time), got {max_streams!r}")
    if max_streams > 1 and backend != "board":
        raise MmfreeError(f"--max-streams {max_streams} decodes several requests in one accelerator pass: it needs "
                          "--backend board (the float and int backends decode one stream at a time)")
    if max_streams > 1 and (draft == "trigram" or trigram_table is not None or tree_rule is not None
                            or draft_nodes is not None):
        raise MmfreeError(f"--max-streams {max_streams}: a multi-stream pass carries one token per request, no draft "
                          "trees; leave out --draft trigram, --trigram-table, --tree-rule and --draft-nodes "
                          "(--draft auto turns drafts off)")
    return max_streams


def open_streams_backend(backend: str, model, board, draft: str, trigram_table, bitstream, model_id, pass_timeout_s,
                         max_streams: int, tree_rule=None, draft_nodes=None) -> StreamsBackend:
    """The accelerator serving up to ``max_streams`` requests per pass (:class:`StreamsBackend`), the model compiled
    for that many streams. MmfreeError (:func:`check_max_streams`) for a bad combination, and for more streams
    than the bitstream's tokens per pass (every decoding request feeds one token)."""
    check_max_streams(max_streams, backend, draft, trigram_table, tree_rule, draft_nodes)
    if board is None:
        raise MmfreeError("--backend board needs --board sim or a board name")
    if draft not in ("auto", "none"):
        raise MmfreeError(f"--draft must be auto, trigram or none, got {draft!r}")
    acc, im, tok_dir = open_accelerator(board, model, bitstream, pass_timeout_s, streams=max_streams)
    K = acc.hw.max_tokens
    if max_streams > K:
        acc.close()
        raise MmfreeError(f"--max-streams {max_streams}: the accelerator verifies {K} tokens per pass, so a pass "
                          f"carries at most {K} requests; give --max-streams 1..{K}")
    extra = {"board": board, "tokens_per_pass": K}
    out = StreamsBackend(acc, im, model_id or _model_id(model), tok_dir, max_streams, extra)
    out.pass_timeout_s = pass_timeout_s
    return out


def _gone(job, now: float) -> str | None:
    """Why a job being decoded leaves without finishing: "timeout" past its deadline, "cancelled", else None."""
    if now > job.deadline:
        return "timeout"
    return "cancelled" if job.cancelled else None


def _model_id(model: str) -> str:
    from pathlib import Path

    return "mmfree-default" if str(model) == "default" else Path(str(model)).resolve().name


# ---- jobs and the engine ------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One request in the engine. ``sink(event)`` is called from the decode thread (see the module docstring);
    ``deadline`` is a ``time.monotonic()`` value."""

    prompt_ids: list[int]
    sampling: Sampling
    stops: list[str]
    deadline: float
    sink: Callable[[tuple], None] = lambda event: None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    stats: dict = field(default_factory=dict)
    arrived: float = field(default_factory=time.monotonic)
    next_disconnect_check: float = 0.0          # the HTTP side's next look at the client (monotonic seconds)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _done: bool = False                         # the done event was sent (exactly once per job)

    def cancel(self) -> None:
        """Stop this job at its next token (or drop it from the queue when it has not started)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


@dataclass
class _Live:
    """A job of the batch loop while it is in the batch: its text stream, start time and [prompt, decode] passes."""

    job: Job
    text: TextStream
    t0: float
    passes: list[int] = field(default_factory=lambda: [0, 0])


class Engine:
    """A bounded queue of :class:`Job` and one decode thread (see the module docstring). ``metrics``: an
    object with ``job_done(job)`` (e.g. :class:`mmfree.serve.metrics.Metrics`), called once per job."""

    def __init__(self, backend: Backend, limits: Limits = Limits(), metrics=None):
        limits.check()
        self.backend, self.limits, self.metrics = backend, limits, metrics
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self.running: Job | None = None                 # the oldest job being decoded
        self.active: list[Job] = []                     # every job being decoded (one, or up to max_streams)
        self.streams = getattr(backend, "max_streams", 1)
        self.passes = 0                                 # weight passes run by the batch loop
        self.closing = False
        self._stop = False
        self._service_s = 1.0                           # running mean of seconds per job, for Retry-After
        #   (a job's own decoding time: with N streams N jobs are served in that time, so the wait is / N)
        loop = self._batch_loop if self.streams > 1 else self._loop
        self._thread = threading.Thread(target=loop, name="mmfree-decode", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def batching(self) -> str:
        """How requests share the accelerator (for /health)."""
        if self.streams > 1:
            return (f"continuous batching: up to {self.streams} requests share every weight pass (a request joins "
                    "at the next pass boundary and leaves when done; one token per request per decode pass)")
        return "one stream at a time (--max-streams N > 1 with --backend board: N requests per weight pass)"

    # ---- requests in ----------------------------------------------------------------------------------------
    def prepare(self, prompt, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                stop=None) -> Job:
        """A :class:`Job` from request fields, or :class:`BadRequest` naming the field that is out of range.
        ``prompt``: text (needs the model's tokenizer) or a list of token ids; ``stop``: None, a string or up to
        4 strings."""
        lim = self.limits
        ids = self._prompt_ids(prompt)
        if not 1 <= max_tokens <= lim.max_tokens:
            raise BadRequest("max_tokens", f"max_tokens must be in 1..{lim.max_tokens} (this server's --max-tokens), "
                                           f"got {max_tokens}")
        if not (0 <= temperature <= 2 and math.isfinite(temperature)):
            raise BadRequest("temperature", f"temperature must be in [0, 2] (0: greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise BadRequest("top_p", f"top_p must be in (0, 1], got {top_p}")
        if not 0 <= seed < 2**63:
            raise BadRequest("seed", f"seed must be in [0, 2**63), got {seed}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not isinstance(s, str) or not s for s in stops):
            raise BadRequest("stop", "stop must be a non-empty string or a list of up to 4 non-empty strings")
        if stops and self.backend.tokenizer is None:
            raise BadRequest("stop", "this model has no tokenizer, so stop strings cannot be matched")
        return Job(ids, Sampling(max_tokens, float(temperature), float(top_p), int(seed)), stops,
                   time.monotonic() + lim.request_timeout_s)

    def _prompt_ids(self, prompt) -> list[int]:
        b, lim = self.backend, self.limits
        if isinstance(prompt, str):
            if b.tokenizer is None:
                raise BadRequest("prompt", "this model has no tokenizer: give the prompt as a list of token ids")
            ids = list(b.tokenizer.encode_prompt(prompt))
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise BadRequest("prompt", "the prompt is empty (or encodes to no tokens); give text or token ids")
        if len(ids) > lim.max_prompt_tokens:
            raise BadRequest("prompt", f"the prompt is {len(ids)} tokens; this server takes at most "
                                       f"{lim.max_prompt_tokens} (--max-prompt-tokens)")
        bad = sorted({t for t in ids if not 0 <= t < b.vocab_size})
        if bad:
            raise BadRequest("prompt", f"prompt token ids {bad[:8]} are outside the vocabulary [0, {b.vocab_size})")
        return ids

    def submit(self, job: Job) -> Job:
        """Queue ``job``; :class:`QueueFull` when ``max_queue`` jobs wait, :class:`ShuttingDown` while draining."""
        with self._cv:
            if self.closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            depth = len(self._waiting)
            if depth >= self.limits.max_queue and (depth or len(self.active) >= self.streams):
                raise QueueFull(depth, max(1, math.ceil(self._service_s * (depth + 1) / self.streams)))
            self._waiting.append(job)
            self._cv.notify_all()
        return job

    # ---- the decode loop ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stop:
                    self._cv.wait()
                if not self._waiting:
                    return
                job = self.running = self._waiting.popleft()
                self.active = [job]
            try:
                self._run(job)
            except Exception as exc:                   # a bug of ours: report it, keep the loop alive
                traceback.print_exc(file=sys.stderr)
                job.finish_reason, job.error = "error", f"{type(exc).__name__}: {exc}"
                if not job._done:
                    self._send_done(job, {"error": job.error})
            finally:
                with self._cv:
                    self.running = None
                    self.active = []
                    self._cv.notify_all()

    # ---- the batch loop (max_streams > 1) ----------------------------------------------------------------------
    def _batch_loop(self) -> None:
        """Decode up to ``self.streams`` jobs together, one weight pass per step of the backend's batch
        (:class:`StreamsBackend`): waiting jobs join at every pass boundary while there is room, a job leaves when
        it is done, stopped, cancelled or past its deadline; a pass that fails ends every job in it with ``error``
        and the loop goes on with a fresh batch. A job whose sink raises ends alone with ``error``; any other
        unexpected exception (a bug of ours) ends every job being decoded with ``error`` and the loop goes on
        with a fresh batch: the decode thread never dies while the engine is open."""
        batch, live = None, {}                          # stream id -> _Live
        while True:
            with self._cv:
                while not self._waiting and not live and not self._stop:
                    self._cv.wait()
                if not self._waiting and not live:
                    return
                fresh = []
                while self._waiting and len(live) + len(fresh) < self.streams:
                    fresh.append(self._waiting.popleft())
                self._set_active(list(self.active) + fresh)
            try:
                batch = batch if batch is not None else self.backend.new_batch()
                batch = self._batch_round(batch, live, fresh)
            except Exception as exc:                   # a bug of ours: end every job being decoded, go on
                traceback.print_exc(file=sys.stderr)
                self._abort_active(f"{type(exc).__name__}: {exc}")
                batch, live = None, {}

    def _batch_round(self, batch, live: dict, fresh: list[Job]):
        """Add the ``fresh`` jobs to ``batch`` and run one pass; the batch to go on with (a new one when the pass
        failed: its jobs end with ``error``)."""
        for job in fresh:
            self._join(batch, live, job)
        now = time.monotonic()
        for sid, lv in list(live.items()):       # cancelled or late since the last pass: leave before this one
            reason = _gone(lv.job, now)
            if reason:
                batch.cancel(sid)
                self._leave(live.pop(sid), reason)
        if not live:
            return batch
        try:
            step = batch.step()
        except Exception as exc:                   # the pass failed: every job in the batch ends with it
            known = isinstance(exc, (MmfreeError, ValueError))
            if not known:
                traceback.print_exc(file=sys.stderr)
            for lv in list(live.values()):
                lv.job.error = str(exc) if known else f"{type(exc).__name__}: {exc}"
                self._leave(lv, "error")
            live.clear()
            return self.backend.new_batch()
        self.passes += 1
        self._advance(batch, live, step)
        return batch

    def _abort_active(self, error: str) -> None:
        """End every job being decoded that has not had its done event with ``error`` (after an unexpected
        exception in the batch loop). Never raises: a failing metrics object or sink is reported on stderr."""
        with self._cv:
            jobs = list(self.active)
        for job in jobs:
            if not job._done:
                job.finish_reason, job.error = "error", job.error or error
                job.stats = job.stats or {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.tokens)}
                self._send_done(job, {"error": job.error})
        with self._cv:
            self._set_active([j for j in self.active if j not in jobs])

    def _set_active(self, jobs: list[Job]) -> None:
        """(With the lock held.) The jobs being decoded; ``running`` is the oldest."""
        self.active = jobs
        self.running = jobs[0] if jobs else None
        self._cv.notify_all()

    def _join(self, batch, live: dict, job: Job) -> None:
        """Add ``job`` to ``batch`` as a stream, or end it at once (past its deadline, cancelled, refused)."""
        lv = _Live(job, TextStream(self.backend.tokenizer, job.stops), time.monotonic())
        if lv.t0 > job.deadline or job.cancelled:
            return self._leave(lv, "timeout" if lv.t0 > job.deadline else "cancelled")
        s = job.sampling
        try:
            live[batch.add(job.prompt_ids, s.max_tokens, self.backend.eos_id, s.temperature, s.top_p, s.seed)] = lv
        except (MmfreeError, ValueError) as exc:
            job.error = str(exc)
            self._leave(lv, "error")

    def _advance(self, batch, live: dict, step) -> None:
        """Hand each job its token of this pass; jobs that are done, stopped, cancelled or late leave."""
        rec = step.record
        for i, sid in enumerate(rec["streams"]):          # a pass may feed prompt chunks and decode (decode_first)
            live[sid].passes[0 if i < rec.get("chunks", len(rec["streams"]) * rec["prefill"]) else 1] += 1
        reasons = {}
        for sid, tok in step.emitted:
            try:
                self._emit(live[sid].job, live[sid].text, tok)
            except _Stop as stop:
                reasons[sid] = stop.reason
            except Exception as exc:                   # the job's sink failed: that job ends, the others go on
                traceback.print_exc(file=sys.stderr)
                live[sid].job.error = f"the response sink failed: {type(exc).__name__}: {exc}"
                reasons[sid] = "error"
        now = time.monotonic()
        for sid, lv in live.items():
            if sid in reasons:
                continue
            if sid in step.finished:
                reasons[sid] = "stop" if lv.job.tokens[-1] == self.backend.eos_id else "length"
            elif reason := _gone(lv.job, now):
                reasons[sid] = reason
        for sid, reason in reasons.items():
            batch.cancel(sid)
            self._leave(live.pop(sid), reason)

    def _leave(self, lv: _Live, reason: str) -> None:
        """End a job of the batch loop: its finish reason, the text held back, the stats and the done event."""
        lv.job.finish_reason = reason
        tail = lv.text.flush() if reason in ("length", "stop") else ""
        lv.job.text = lv.text.text
        self._finish(lv.job, tail, lv.passes, time.monotonic() - lv.t0)
        with self._cv:
            self._set_active([j for j in self.active if j is not lv.job])

    def _run(self, job: Job) -> None:
        t0 = time.monotonic()
        text = TextStream(self.backend.tokenizer, job.stops)
        passes = [0, 0]
        if t0 > job.deadline:
            job.finish_reason = "timeout"
        elif job.cancelled:
            job.finish_reason = "cancelled"
        else:
            try:
                self.backend.decode(job.prompt_ids, job.sampling, lambda tok: self._emit(job, text, tok), passes)
                job.finish_reason = "stop" if job.tokens and job.tokens[-1] == self.backend.eos_id else "length"
            except _Stop as s:
                job.finish_reason = s.reason
            except Exception as exc:                   # one bad request never stops the loop
                job.finish_reason = "error"
                job.error = str(exc) if isinstance(exc, (MmfreeError, ValueError)) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, (MmfreeError, ValueError)):
                    traceback.print_exc(file=sys.stderr)
        tail = text.flush() if job.finish_reason in ("length", "stop") else ""
        job.text = text.text
        self._finish(job, tail, passes, time.monotonic() - t0)

    def _emit(self, job: Job, text: TextStream, tok: int) -> None:
        job.tokens.append(tok)
        delta = "" if tok == self.backend.eos_id else text.push(tok)
        job.sink(("delta", delta, tok))
        if text.stopped:
            raise _Stop("stop")
        if time.monotonic() > job.deadline:           # first: past the deadline the HTTP side gives up too
            raise _Stop("timeout")
        if job.cancelled:
            raise _Stop("cancelled")

    def _finish(self, job: Job, tail: str, passes: list[int], seconds: float) -> None:
        n = len(job.tokens)
        job.stats = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": n, "decode_s": seconds,
                     "queue_s": max(0.0, time.monotonic() - job.arrived - seconds),
                     "prefill_passes": passes[0], "decode_passes": passes[1],
                     "accepted_drafts": max(0, n - 1 - passes[1]) if passes[1] or passes[0] else 0}
        if job.finish_reason in ("length", "stop"):
            self._service_s = 0.8 * self._service_s + 0.2 * seconds
        if self.metrics is not None:
            self.metrics.job_done(job)
        self._send_done(job, dict(job.stats, tail=tail, error=job.error))

    @staticmethod
    def _send_done(job: Job, info: dict) -> None:
        """The job's done event, once; a sink that raises is reported on stderr (the job is over either way)."""
        job._done = True
        try:
            job.sink(("done", job.finish_reason, info))
        except Exception:
            traceback.print_exc(file=sys.stderr)

    # ---- shutdown --------------------------------------------------------------------------------------------------
    def close(self, timeout_s: float | None = None) -> bool:
        """Take no new jobs, finish the queued and running ones (at most ``timeout_s``; then the rest are
        cancelled), and stop the decode thread: a cancelled job still ends the pass it is in, so the thread is
        given ``timeout_s`` plus the backend's ``pass_timeout_s`` (+ 5 s) to stop (no bound on a CPU backend).
        Should the decode thread be gone, the jobs left end with ``error``. Returns whether the decode thread
        stopped: only then may the caller close the backend (a pass may still be using it otherwise)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            self.closing = True
            while (self._waiting or self.running is not None) and self._thread.is_alive():
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    for j in list(self._waiting) + list(self.active):
                        j.cancel()
                    break
                self._cv.wait(timeout=1.0 if left is None else min(left, 1.0))
            self._stop = True
            self._cv.notify_all()
            orphans = [] if self._thread.is_alive() else list(self._waiting) + list(self.active)
            self._waiting.clear()
        for job in orphans:
            if not job._done:
                job.finish_reason, job.error = "error", "the decode thread stopped before this request finished"
                self._send_done(job, {"error": job.error})
        bound = self.backend.pass_timeout_s
        self._thread.join(timeout=None if end is None or bound is None
                          else max(0.0, end - time.monotonic()) + bound + 5.0)
        return not self._thread.is_alive()
