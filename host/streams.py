"""Multi-stream decoding on an :class:`~mmfree.host.accel.AccelHost`, on any transport: several independent
sequences share every weight pass (a forest, :meth:`AccelHost.run_forest`; docs/accelerator.md "Multi-stream
passes").

:class:`StreamBatch` is the stepper: streams join (:meth:`StreamBatch.add`) and leave (done, or
:meth:`StreamBatch.cancel`) at pass boundaries, and each :meth:`StreamBatch.step` runs one pass planned by
:func:`mmfree.pymodel.multistream.plan_pass` (the schedule the integer reference's ``generate_streams`` uses:
prompt chunks first, packed up to the build's max tokens, else one token per decoding stream). Every stream
gets exactly the tokens it would get decoded alone: greedy (the accelerator's argmax) or sampled on the host
with its own seeded generator (:class:`~mmfree.host.generate.Sampler`, as ``pymodel.generate`` with IntBackend
samples). :func:`generate_streams` runs a fixed set of streams to the end (``mmfree sim --streams``, ``mmfree run
--streams``); the server (``mmfree serve --max-streams``) drives a :class:`StreamBatch` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmfree import MmfreeError
from mmfree.host.accel import AccelHost, PassResult
from mmfree.host.generate import Sampler, _check_request, _record
from mmfree.pymodel.intmodel import forest_of
from mmfree.pymodel.multistream import plan_pass

__all__ = ["Stream", "StreamBatch", "StepResult", "generate_streams", "stream_limit"]


def stream_limit(host: AccelHost) -> int:
    """The most streams one pass of ``host`` carries: the compiled program's (``Compiled.streams``) and at most
    the bitstream's tokens per pass (every decoding stream feeds one token)."""
    return min(host.c.streams, host.hw.max_tokens)


@dataclass
class Stream:
    """One sequence of a :class:`StreamBatch`: ``prompt``, the ``n_tokens`` asked for, ``eos_id`` (or None),
    the ``sampler`` that picks its tokens, ``tokens`` emitted so far, ``fed`` prompt tokens fed so far and
    ``state`` (a DDR address written by the last pass, or a host array ``[L, d]``)."""

    sid: int
    prompt: list[int]
    n_tokens: int
    eos_id: int | None
    sampler: Sampler
    state: object
    tokens: list[int] = field(default_factory=list)
    fed: int = 0

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)

    @property
    def done(self) -> bool:
        return len(self.tokens) >= self.n_tokens or (bool(self.tokens) and self.tokens[-1] == self.eos_id)


@dataclass
class StepResult:
    """What one :meth:`StreamBatch.step` did: ``record`` (the pass record, :func:`generate_streams`'s format),
    ``emitted`` (``(stream id, token)`` in forest order) and ``finished`` (the streams that ended with this pass
    and left the batch)."""

    record: dict
    emitted: list[tuple[int, int]]
    finished: list[int]


class StreamBatch:
    """Streams decoded together on ``host``, one forest pass per :meth:`step` (module docstring).

    ``max_streams``: how many streams may be in the batch at once (default and upper bound: :func:`stream_limit`);
    ``write_logits``: every pass writes its logits (a sampling stream turns them on for the passes it is in);
    ``keep_arrays``: records keep ``starts``, ``states`` and ``logits`` (for the replay against IntModel);
    ``decode_first``: every pass carries one token per decoding stream first and prompt chunks in the room left
    (:func:`~mmfree.pymodel.multistream.plan_pass`; the server's batches: a long prompt joining does not stall
    the streams decoding), else prompt chunks only while any prompt has tokens left. MmfreeError for ``max_streams``
    outside ``1..stream_limit(host)``."""

    def __init__(self, host: AccelHost, max_streams: int | None = None, write_logits: bool = False,
                 keep_arrays: bool = False, decode_first: bool = False):
        limit = stream_limit(host)
        max_streams = limit if max_streams is None else max_streams
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or not 1 <= max_streams <= limit:
            raise MmfreeError(f"{max_streams!r} streams: this accelerator carries 1..{limit} per pass (the compiled "
                              f"program serves {host.c.streams}: compile with streams=B; the bitstream verifies "
                              f"{host.hw.max_tokens} tokens per pass)")
        self.host, self.max_streams = host, max_streams
        self.write_logits, self.keep_arrays, self.decode_first = write_logits, keep_arrays, decode_first
        self.streams: dict[int, Stream] = {}          # join order
        self.passes = 0
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def full(self) -> bool:
        return len(self.streams) >= self.max_streams

    def add(self, prompt, n_tokens: int, eos_id: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
            seed: int = 0) -> int:
        """Add a stream (its prompt goes into the next pass); returns its id. ``temperature`` > 0: sampled on the
        host from its logits with ``numpy.random.default_rng(seed)`` of its own. MmfreeError for a full batch, an
        empty prompt, ids outside the vocabulary, ``n_tokens < 1``, an ``eos_id`` outside the vocabulary or
        sampling parameters out of range."""
        if self.full:
            raise MmfreeError(f"the batch holds {self.max_streams} streams already: wait for one to finish")
        prompt = _check_request(self.host, prompt, n_tokens, 1)
        bad = [t for t in prompt if not 0 <= t < self.host.V]
        if bad:
            raise MmfreeError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {self.host.V})")
        if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer))
                                   or not 0 <= eos_id < self.host.V):
            raise MmfreeError(f"eos_id {eos_id!r} must be a token id in [0, {self.host.V}) or None")
        sampler = Sampler(self.host, temperature, top_p, seed, write_logits=True)
        sid, self._next_id = self._next_id, self._next_id + 1
        zero = np.zeros((self.host.L, self.host.d), dtype=np.int64)
        self.streams[sid] = Stream(sid, prompt, int(n_tokens), eos_id, sampler, zero)
        return sid

    def cancel(self, sid: int) -> None:
        """Drop stream ``sid`` (it takes no part in later passes); unknown ids are ignored."""
        self.streams.pop(sid, None)

    def step(self) -> StepResult:
        """Run one pass over the batch: prompt chunks (while any stream has prompt tokens left) or one token per
        decoding stream (:func:`~mmfree.pymodel.multistream.plan_pass` with the build's max tokens). Streams that
        are done leave the batch. MmfreeError for an empty batch; a pass error (AccelRunError, time-out)
        propagates, and the batch cannot go on after it (the pass may have moved its streams' states): start a
        new one."""
        if not self.streams:
            raise MmfreeError("the batch has no stream to run: add one first")
        host, live = self.host, self.streams
        chunks, roots = plan_pass([(s, len(st.prompt) - st.fed) for s, st in live.items()],
                                  [s for s, st in live.items() if not st.prefilling], host.hw.max_tokens,
                                  self.decode_first)
        members = [s for s, _ in chunks] + roots
        for s, st in live.items():             # a stream sitting out keeps its state on the host: the pass
            if s not in members and not isinstance(st.state, np.ndarray):    # overwrites both state areas
                st.state = host.read_state(int(st.state))
        trees = [(live[s].prompt[live[s].fed:live[s].fed + n], None) for s, n in chunks]
        trees += [([live[s].tokens[-1]], None) for s in roots]
        toks, parents, offs = forest_of(trees)
        starts = [live[s].state for s in members]
        kept = _start_arrays(host, starts) if self.keep_arrays else None      # before the pass moves them
        logits = self.write_logits or any(not live[s].sampler.greedy for s in members)
        res = host.run_forest(toks, parents, starts, logits)
        self.passes += 1
        emitted = self._collect(res, members, chunks, offs)
        finished = [s for s in members if live[s].done]
        for s in finished:
            del live[s]
        rec = _stream_record(res, kept, members, parents, bool(chunks), len(emitted), len(chunks))
        return StepResult(rec, emitted, finished)

    def _collect(self, res: PassResult, members, chunks, offs) -> list[tuple[int, int]]:
        """Advance every member past this pass: its state, and its next token where the pass gave one."""
        emitted = []
        for i, s in enumerate(members):
            st, last = self.streams[s], offs[i + 1] - 1
            st.state = res.state_addrs[last]
            if i < len(chunks):
                st.fed += chunks[i][1]
                if st.prefilling:
                    continue
            tok = int(st.sampler.pick(res, drafted=False)(last, [])[0])
            st.tokens.append(tok)
            emitted.append((s, tok))
        return emitted


def generate_streams(host: AccelHost, prompts, n_tokens: int, write_logits: bool = True, keep_arrays: bool = False,
                     progress=None, eos_id: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                     seeds=None, decode_first: bool = False) -> tuple[list[list[int]], list[dict]]:
    """Decode B = ``len(prompts)`` independent streams together on the accelerator (a :class:`StreamBatch` run to
    the end): the passes of :func:`mmfree.pymodel.multistream.generate_streams` with ``max_nodes`` = the
    bitstream's max tokens and the same ``decode_first`` (the same number of passes), and per stream the tokens of
    plain decoding of its prompt alone: greedy, or with ``temperature`` > 0 sampled with seed ``seeds[s]`` (default 0 for each) as
    ``pymodel.generate`` with IntBackend samples. Each stream stops after ``n_tokens`` or right after ``eos_id``.

    Returns (tokens per stream, pass records): each record as :func:`mmfree.host.generate.generate` writes it
    (``prefill`` True for a pass of prompt chunks, ``emitted`` the tokens it gave) plus ``streams`` (the stream of
    each tree, in forest order), ``parents`` and, with ``keep_arrays``, ``starts`` (the start states, int64
    ``[members, L, d]``: every pass replays on its own). ``progress(s, token)`` is called for every token.
    MmfreeError for no prompts, more streams than :func:`stream_limit`, an empty prompt, ``n_tokens < 1`` or a
    seed list that is not one per stream."""
    prompts = list(prompts or [])
    B, limit = len(prompts), stream_limit(host)
    if not 1 <= B <= limit:
        raise MmfreeError(f"{B} streams: the compiled program serves {host.c.streams} (compile with streams=B) and "
                          f"this bitstream verifies {host.hw.max_tokens} tokens per pass; give 1..{limit} prompts")
    seeds = [0] * B if seeds is None else list(seeds)
    if len(seeds) != B:
        raise MmfreeError(f"give one seed per stream: {B} prompts, {len(seeds)} seeds")
    batch = StreamBatch(host, B, write_logits, keep_arrays, decode_first)
    ids = [batch.add(p, n_tokens, eos_id, temperature, top_p, seed) for p, seed in zip(prompts, seeds)]
    out = {s: batch.streams[s].tokens for s in ids}
    passes = []
    while len(batch):
        step = batch.step()
        passes.append(step.record)
        if progress:
            for s, tok in step.emitted:
                progress(s, tok)
    return [out[s] for s in ids], passes


def _start_arrays(host: AccelHost, starts) -> np.ndarray:
    """The start states (arrays, or addresses read now) as int64 ``[B, L, d]``."""
    return np.stack([host.read_state(int(a)) if isinstance(a, (int, np.integer)) else np.asarray(a, dtype=np.int64)
                     for a in starts])


def _stream_record(res: PassResult, starts, streams, parents, prefill: bool, emitted: int, chunks: int) -> dict:
    """A multi-stream pass record (:func:`~mmfree.host.generate._record` plus ``streams``, ``parents``,
    ``chunks`` (the first ``chunks`` of ``streams`` were fed prompt chunks, the rest decoded one token each; a
    ``decode_first`` pass may hold both, and is ``prefill`` when it holds a chunk) and, when kept, ``starts``, the
    arrays read back with it)."""
    rec = _record(res, len(res.tokens) - 1, prefill, emitted, starts is not None, streams=list(streams),
                  parents=list(parents), chunks=chunks)
    if starts is not None:
        rec["starts"] = starts
    return rec
