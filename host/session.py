"""A compiled model on one transport: text or tokens in, greedy tokens out, counters (:class:`AccelSession`).

:func:`open_model` turns what a user names (``"default"``, an export or checkpoint directory, an ``IntModel``, a
``Compiled``) into the compiled program + image; :class:`Generation` is what a generation returns. The PYNQ
constructors live in :class:`mmfree.boards.accelerator.Accelerator` (a subclass)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmfree import MmfreeError
from mmfree.host.accel import AccelHost, PassResult
from mmfree.host.generate import NO_DRAFT_ENGINE, ONCHIP_SAMPLING, generate, onchip_tree_rule
from mmfree.host.layout import check_fits, check_n_tokens
from mmfree.host.streams import StreamBatch, generate_streams
from mmfree.host.transport import as_transport
from mmfree.pymodel.drafters import Drafter, PromptLookupDrafter, TrigramDrafter
from mmfree.rtl.compiler import Compiled, HwConfig


def open_model(model, streams: int = 1) -> tuple[Compiled, object | None, str | None]:
    """(compiled program + image, the IntModel or None, tokenizer directory or None) of ``model``:
    ``"default"``, an export or checkpoint directory, an ``IntModel``, a ``Compiled``, or a directory written
    by :meth:`Compiled.save` (``compiled.json``). ``streams``: the independent streams one pass of the program
    may carry (``compile_model(..., streams=)``; what is already compiled keeps its own)."""
    from mmfree.rtl.compiler import compile_model

    if isinstance(model, tuple) and len(model) == 3 and isinstance(model[0], Compiled):
        return model                      # already opened
    if isinstance(model, Compiled):
        return model, None, None
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if str(model) != "default" and (p / "compiled.json").is_file():
            return Compiled.load(p), None, None
        from mmfree.pymodel.intmodel import open_int_model

        if str(model) != "default" and not p.exists():
            raise MmfreeError(f"model {model!r} not found: give 'default', an `mmfree export` directory or a "
                              "checkpoint directory")
        im, tok_dir = open_int_model(str(model))
        return compile_model(im, streams), im, tok_dir
    if hasattr(model, "dims") and hasattr(model, "forward"):
        path = getattr(model, "path", None)
        return compile_model(model, streams), model, str(path) if path is not None else None
    raise MmfreeError(f"cannot run a {type(model).__name__} on the accelerator: give 'default', a model directory, "
                      "an IntModel or a Compiled")

@dataclass
class Generation:
    """What :meth:`Accelerator.generate` returns."""

    prompt: list[int]
    tokens: list[int]
    text: str | None
    passes: list[dict] = field(repr=False)
    draft: str | None
    k: int
    seconds: float
    tree_rule: str | None = None    # trigram drafts: the tree rule that drafted them (docs/speculative.md)

    @property
    def counters(self) -> dict:
        """Sums over the passes: ``cycles``, ``stalls``, ``rd_bytes``, ``wr_bytes``, ``passes``,
        ``prefill_passes``, ``decode_passes``, ``verify_steps`` (decode passes that carried drafts),
        ``mean_accepted`` (tokens emitted per decode pass; 1.0 without drafts), ``prefill_cycles`` and
        ``decode_cycles`` (``cycles`` split by pass kind).

        With the on-chip loop (:func:`generate_onchip` records) its passes count as decode passes and as
        verification steps (every one carries a tree, as ``speculative_generate`` counts them), its GEN_CYCLES as
        decode cycles, and these are added: ``onchip`` True, ``gen_count``, ``gen_passes``, ``gen_nodes`` (roots
        included), ``gen_cycles``, ``mean_draft_nodes`` (draft nodes per pass, roots not counted) and
        ``partial_counters``: ``stalls``, ``rd_bytes`` and ``wr_bytes`` hold only each GENERATE's last pass."""
        dec = [p for p in self.passes if not p["prefill"]]
        gen = [p for p in dec if p.get("onchip")]
        host_dec = [p for p in dec if not p.get("onchip")]
        gen_passes = sum(p["gen_passes"] for p in gen)
        n_dec = len(host_dec) + gen_passes
        verify = len([p for p in host_dec if len(p["tokens"]) > 1]) + gen_passes
        emitted = sum(p["emitted"] for p in dec)
        out = {"cycles": sum(p["cycles"] for p in self.passes), "stalls": sum(p["stalls"] for p in self.passes),
               "rd_bytes": sum(p["rd_bytes"] for p in self.passes),
               "wr_bytes": sum(p["wr_bytes"] for p in self.passes),
               "passes": len(self.passes) - len(dec) + n_dec, "prefill_passes": len(self.passes) - len(dec),
               "decode_passes": n_dec, "verify_steps": verify, "mean_accepted": emitted / n_dec if n_dec else 0.0,
               "prefill_cycles": sum(p["cycles"] for p in self.passes if p["prefill"]),
               "decode_cycles": sum(p["cycles"] for p in dec)}
        if gen:
            nodes = sum(p["gen_nodes"] for p in gen)
            out.update(onchip=True, gen_count=sum(p["count"] for p in gen), gen_passes=gen_passes, gen_nodes=nodes,
                       gen_cycles=sum(p["gen_cycles"] for p in gen),
                       mean_draft_nodes=(nodes - gen_passes) / gen_passes if gen_passes else 0.0,
                       partial_counters="stalls, rd_bytes and wr_bytes count only the last pass of each on-chip "
                                        "GENERATE (the hardware keeps no sums over the loop)")
        return out

    def as_dict(self) -> dict:
        rule = {"tree_rule": self.tree_rule} if self.tree_rule is not None else {}
        return dict({"prompt_ids": self.prompt, "tokens": self.tokens, "text": self.text, "draft": self.draft,
                     "k": self.k, "wall_s": self.seconds}, **rule, **self.counters)


@dataclass
class StreamsGeneration:
    """What :meth:`AccelSession.generate_streams` returns: per stream its ``prompts``, ``tokens`` and ``texts``
    (None without a tokenizer), the pass records (:func:`mmfree.host.streams.generate_streams`), ``seconds``."""

    prompts: list[list[int]]
    tokens: list[list[int]]
    texts: list[str | None]
    passes: list[dict] = field(repr=False)
    seconds: float

    @property
    def counters(self) -> dict:
        """Sums over the passes: ``passes``, ``prefill_passes`` (passes of prompt chunks), ``decode_passes``
        (one token per decoding stream), ``tokens_per_decode_pass`` (tokens the decode passes emitted, per pass),
        ``cycles``, ``prefill_cycles``, ``decode_cycles``, ``stalls``, ``rd_bytes``, ``wr_bytes``."""
        dec = [p for p in self.passes if not p["prefill"]]
        emitted = sum(p["emitted"] for p in dec)
        out = {"passes": len(self.passes), "prefill_passes": len(self.passes) - len(dec), "decode_passes": len(dec),
               "tokens_per_decode_pass": emitted / len(dec) if dec else 0.0}
        for name in ("cycles", "stalls", "rd_bytes", "wr_bytes"):
            out[name] = sum(p[name] for p in self.passes)
        out["prefill_cycles"] = sum(p["cycles"] for p in self.passes if p["prefill"])
        out["decode_cycles"] = out["cycles"] - out["prefill_cycles"]
        return out

    def as_dict(self) -> dict:
        return dict({"streams": len(self.prompts), "prompt_ids": self.prompts, "tokens": self.tokens,
                     "texts": self.texts, "wall_s": self.seconds}, **self.counters)


class AccelSession:
    """The accelerator with a model loaded: text or tokens in, greedy tokens out, counters.

    ``transport``: a :class:`Transport` (or any board of that shape); ``model``: see :func:`open_model`;
    ``board``: a board name or :class:`~mmfree.boardfile.Board`, whose DDR the model must fit;
    ``timeout_s``: the longest one pass may take; ``write_logits``: also write every pass's logits to DDR
    (for comparisons; the argmax is always written). ``tokenizer``: a directory with ``tokenizer.json`` (by
    default the model's). On a PYNQ board use :meth:`from_bitstream` (or ``overlay.mmfree_accel_0.accelerator()``).
    """

    def __init__(self, transport, model="default", board=None, timeout_s: float = 60.0, write_logits: bool = False,
                 tokenizer=None):
        self.compiled, self.model, tok_dir = open_model(model)
        if board is not None:
            from mmfree.boardfile import load_board

            self.board = load_board(board) if isinstance(board, str) else board
            check_fits(self.compiled, self.board)
        else:
            self.board = None
        self.transport = as_transport(transport)
        self.host = AccelHost(self.transport, self.compiled, timeout_s=timeout_s)
        self.write_logits = write_logits
        self.tokenizer_dir = tokenizer if tokenizer is not None else tok_dir
        self._tok = None
        self.last: Generation | None = None

    def close(self) -> None:
        """Release the transport's buffers; a pass still running is aborted first (SOFT_RESET, wait for IDLE), so
        the accelerator never writes into freed memory."""
        try:
            if self.host.busy():
                self.host.abort()
        except Exception:           # the mapping is gone: nothing more can be stopped from here
            pass
        finally:
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- tokens and text ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.compiled.dims.vocab

    @property
    def tokenizer(self):
        if self._tok is None:
            if self.tokenizer_dir is None:
                raise MmfreeError("this model has no tokenizer: give token ids")
            from mmfree.pymodel.tokenizer import load_tokenizer

            try:
                self._tok = load_tokenizer(self.tokenizer_dir)
            except Exception as exc:
                raise MmfreeError(f"the model has no usable tokenizer ({exc}); give token ids") from None
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Prompt ids of ``text`` with the special tokens the model's tokenizer config adds (BOS for the official
        checkpoints), as every ``mmfree`` command encodes a prompt."""
        return list(self.tokenizer.encode_prompt(text))

    def decode_text(self, ids) -> str | None:
        try:
            return self.tokenizer.decode(list(ids))
        except MmfreeError:
            return None

    def check_prompt(self, prompt) -> list[int]:
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise MmfreeError("the prompt is empty (or encodes to no tokens); give text or at least one token id")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise MmfreeError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    # ---- running ----------------------------------------------------------------------------------------------
    def prefill(self, prompt) -> int:
        """Start a new sequence with ``prompt`` (text or ids), k tokens per pass; returns the first greedy token.
        The state after the prompt is committed: :meth:`step` continues from it."""
        ids = self.check_prompt(prompt)
        self.host.reset_state()
        k = self.host.hw.max_tokens
        res = None
        for i in range(0, len(ids), k):
            res = self.host.run(ids[i:i + k], write_logits=self.write_logits)
        return int(res.argmax[-1])

    def step(self, token: int) -> int:
        """Feed one token (a plain decode pass); returns the next greedy token."""
        if not 0 <= int(token) < self.vocab_size:
            raise MmfreeError(f"token {token} is outside the vocabulary [0, {self.vocab_size})")
        return int(self.host.run([int(token)], write_logits=self.write_logits).argmax[0])

    def verify(self, tokens, parents=None) -> PassResult:
        """One speculative verification pass of a chain or tree (``parents``) of up to ``max_tokens`` tokens from
        the committed state, nothing committed; :meth:`commit` a node afterwards."""
        toks = [int(t) for t in tokens]
        bad = [t for t in toks if not 0 <= t < self.vocab_size]
        if bad:
            raise MmfreeError(f"token ids {bad[:8]} are outside the vocabulary [0, {self.vocab_size})")
        return self.host.run(toks, parents=parents, write_logits=self.write_logits, commit_last=False)

    def commit(self, result: PassResult, node: int) -> None:
        self.host.commit(result, node)

    def drafter(self, draft: str | None, table=None, tree_rule: str | None = None) -> Drafter | None:
        """A drafter by name: None (no drafts), "lookup" (prompt lookup), "trigram" (the model's table, or
        ``table``; ``tree_rule`` as :class:`TrigramDrafter`'s, refused with another drafter)."""
        if tree_rule is not None and draft != "trigram":
            raise MmfreeError("a tree rule (--tree-rule) chooses the shape of trigram draft trees: use --draft trigram")
        if draft in (None, "none"):
            return None
        if draft == "lookup":
            return PromptLookupDrafter()
        if draft == "trigram":
            if table is not None and self.model is None:
                return TrigramDrafter(table, tree_rule=tree_rule)
            if self.model is None:
                raise MmfreeError("trigram drafts need the model (its vocabulary and tokenizer) or a table file")
            return TrigramDrafter.for_model(self.model, table, self.tokenizer_dir, tree_rule=tree_rule)
        raise MmfreeError(f"unknown drafter {draft!r}: choose lookup or trigram")

    def generate(self, prompt, n_tokens: int, draft: str | Drafter | None = None, k: int | None = None,
                 table=None, progress=None, onchip: bool = False, keep_arrays: bool = False,
                 tree_rule: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> Generation:
        """Generate ``n_tokens`` greedily after ``prompt`` (text or ids). ``draft``: None (one token per decode
        pass), "lookup" or "trigram" (or a :class:`Drafter`), verified ``k`` tokens per pass (default: the
        bitstream's max with drafts, else 1). The tokens are those of plain greedy decoding either way.
        ``tree_rule``: the trigram drafter's ("count-guided" or "template"; None: its default, or on chip the
        engine's); :attr:`Generation.tree_rule` says which drafted.

        ``onchip``: the accelerator runs the draft-verify loop itself (:func:`generate_onchip`; a bitstream with
        a draft engine; ``draft`` "trigram" or None, or a :class:`TrigramDrafter`, whose table it adapts); ``k``
        then only sizes the prefill passes, the loop's passes hold up to the build's max tokens.

        ``keep_arrays``: keep every pass's states and logits in :attr:`Generation.passes` (for comparisons);
        without it host memory per generated token is bounded (:func:`~mmfree.host.layout.host_bytes_per_token`),
        and with a ``board`` ``n_tokens`` is limited to what its memory holds
        (:func:`~mmfree.host.layout.max_generation_tokens`).

        ``temperature`` > 0 (with ``top_p``, ``seed``): the host samples from each pass's logits exactly as the integer
        reference does (:class:`~mmfree.host.generate.Sampler`; every pass then writes its logits); refused with
        ``onchip``."""
        check_n_tokens(n_tokens, self.compiled, self.board, self.host.hw.max_tokens, keep_arrays)
        ids = self.check_prompt(prompt)
        if onchip and temperature:                          # before any table is built
            raise MmfreeError(ONCHIP_SAMPLING)
        if onchip and draft is None:
            draft = "trigram"
        if onchip and self.host.draft is None:             # before the table is built or loaded
            raise MmfreeError(NO_DRAFT_ENGINE)
        if isinstance(draft, Drafter) and tree_rule is not None:
            raise MmfreeError("give the tree rule to the TrigramDrafter itself (TrigramDrafter(..., tree_rule=...)), "
                              "not beside a drafter object")
        dr = draft if isinstance(draft, Drafter) else self.drafter(draft, table, tree_rule)
        if k is None:
            k = self.host.hw.max_tokens if dr is not None else 1
        if dr is None and k > 1:
            dr = PromptLookupDrafter()
        t0 = time.perf_counter()
        logits = self.write_logits or bool(temperature)       # sampling reads every pass's logits
        toks, passes = generate(self.host, ids, n_tokens, k=k, write_logits=logits, progress=progress,
                                drafter=dr, onchip=onchip, keep_arrays=keep_arrays, temperature=temperature,
                                top_p=top_p, seed=seed)
        text = self.decode_text(toks) if self.tokenizer_dir is not None else None
        rule = None
        if isinstance(dr, TrigramDrafter):
            rule = onchip_tree_rule(self.host, dr) if onchip else dr.tree_rule
        self.last = Generation(ids, toks, text, passes, dr.name if dr is not None else None, k,
                               time.perf_counter() - t0, rule)
        return self.last

    def generate_streams(self, prompts, n_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seeds=None,
                         eos_id: int | None = None, keep_arrays: bool = False, progress=None,
                         decode_first: bool = False) -> StreamsGeneration:
        """Decode B = ``len(prompts)`` independent streams (text or ids each) together, every pass one forest
        (:func:`mmfree.host.streams.generate_streams`): per stream the tokens of decoding its prompt alone, greedy
        or with ``temperature`` > 0 sampled with its own generator (``seeds[s]``, default 0 each), stopping after
        ``n_tokens`` or ``eos_id``. The model must be compiled for B streams (``open_model(model, streams=B)``)
        and B at most the bitstream's tokens per pass. ``progress(s, token)`` for every token. MmfreeError for a
        bad prompt, too many streams, ``n_tokens`` < 1 or more than the board's memory holds for B streams.
        ``decode_first``: decoding streams advance in every pass and prompt chunks fill the room left (the
        server's schedule, :class:`~mmfree.host.streams.StreamBatch`); the tokens are the same either way."""
        ids = [self.check_prompt(p) for p in (prompts or [])]
        if ids:
            check_n_tokens(n_tokens, self.compiled, self.board, self.host.hw.max_tokens, keep_arrays)
            check_n_tokens(n_tokens * len(ids), self.compiled, self.board, self.host.hw.max_tokens, keep_arrays,
                           name=f"--tokens x {len(ids)} streams")
        t0 = time.perf_counter()
        toks, passes = generate_streams(self.host, ids, n_tokens, write_logits=self.write_logits,
                                        keep_arrays=keep_arrays, progress=progress, eos_id=eos_id,
                                        temperature=temperature, top_p=top_p, seeds=seeds,
                                        decode_first=decode_first)
        texts = [self.decode_text(t) if self.tokenizer_dir is not None else None for t in toks]
        return StreamsGeneration(ids, toks, texts, passes, time.perf_counter() - t0)

    def stream_batch(self, max_streams: int | None = None, decode_first: bool = False) -> StreamBatch:
        """A :class:`~mmfree.host.streams.StreamBatch` on this accelerator: streams that join and leave at pass
        boundaries (the server's continuous batching), at most ``max_streams`` at once (default: as many as the
        compiled program and the bitstream's tokens per pass allow). Pass logits are written when
        :attr:`write_logits` is set or a stream samples. ``decode_first``: decoding streams advance in every
        pass, prompt chunks fill the room left (:class:`~mmfree.host.streams.StreamBatch`)."""
        return StreamBatch(self.host, max_streams, write_logits=self.write_logits, decode_first=decode_first)

    @property
    def hw(self) -> HwConfig:
        return self.host.hw
