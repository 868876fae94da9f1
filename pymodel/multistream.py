"""Multi-stream decoding on the integer reference: B independent sequences share every weight pass.

Serving several users is the other way (besides draft trees) to share one read of the weights: each pass
feeds one forest (:func:`mmfree.pymodel.intmodel.forest_of`) to :meth:`IntModel.verify_forest`, one tree
per stream, each tree continuing from its own stream's state. Per stream, the token sequence is exactly
the one plain greedy decoding (:func:`mmfree.pymodel.generate.generate` with :class:`IntBackend`) gives:
streams never see each other's tokens, and a stream that stops (``eos_id``, enough tokens) leaves the
forest while the others go on.

Accounting: the prompts go in one pass (B chains), then one pass per decode step of the streams still
running; with a drafter (``k > 1``) a stream's tree is its pending token plus up to ``k - 1`` drafts, and
its acceptance walk is :func:`mmfree.pymodel.speculative.accept_walk` with the greedy rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmfree.pymodel.generate import check_prompt
from mmfree.pymodel.intmodel import IntState, forest_of
from mmfree.pymodel.sampling import greedy
from mmfree.pymodel.speculative import accept_walk, greedy_pick


@dataclass
class StreamsResult:
    """What :func:`generate_streams` returns: ``tokens[s]`` the tokens emitted for stream ``s``; ``passes``
    the weight passes run (prompt pass included); ``nodes`` the tokens fed in each pass (the forest sizes)."""

    tokens: list[list[int]]
    passes: int
    nodes: list[int] = field(default_factory=list)

    @property
    def tokens_per_pass(self) -> float:
        """Emitted tokens of all streams per weight pass (the aggregate a shared weight read buys)."""
        return sum(map(len, self.tokens)) / self.passes if self.passes else 0.0


def _check_streams(model, prompts, max_new_tokens: int, k: int, drafters) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists, one per stream")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens per stream per pass) must be an integer >= 1, got {k!r}")
    if drafters is not None and len(drafters) != len(prompts):
        raise ValueError(f"give one drafter per stream: {len(prompts)} prompts, {len(drafters)} drafters")
    return [check_prompt(p, model.vocab_size) for p in prompts]


def generate_streams(model, prompts, max_new_tokens: int, k: int = 1, drafters=None,
                     eos_id: int | None = None) -> StreamsResult:
    """Greedy decoding of B = ``len(prompts)`` independent streams on :class:`IntModel` ``model``, every pass
    one forest over all streams still running.

    ``prompts``: one non-empty token-id list per stream; ``max_new_tokens``: tokens per stream (each stops
    earlier right after ``eos_id``); ``k``: tokens per stream per decode pass (1: plain decoding; > 1 with
    ``drafters``, one :class:`~mmfree.pymodel.drafters.Drafter` per stream, each given only its own stream's
    context). ``tokens[s]`` equals plain greedy decoding of ``prompts[s]`` alone. Raises ``ValueError`` for an
    empty prompt list or prompt, ids outside the vocabulary, a negative token count, ``k < 1`` or a drafter
    count that is not B.
    """
    prompts = _check_streams(model, prompts, max_new_tokens, k, drafters)
    B = len(prompts)
    out: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens == 0:
        return StreamsResult(out, 0)
    seqs = [list(p) for p in prompts]
    for s, dr in enumerate(drafters or []):
        dr.start(seqs[s])
    start = model.initial_state()
    toks, parents, offs = forest_of([(p, None) for p in prompts])
    states, logits = model.verify_forest([start] * B, toks, parents)
    cur: list[IntState] = [states[offs[s + 1] - 1] for s in range(B)]
    res = StreamsResult(out, 1, [len(toks)])
    live = [s for s in range(B) if not _emit(s, [greedy(logits[offs[s + 1] - 1])], out, seqs, drafters,
                                             max_new_tokens, eos_id)]
    while live:
        trees = [_tree(seqs[s], k, drafters[s] if drafters else None) for s in live]
        toks, parents, offs = forest_of(trees)
        states, logits = model.verify_forest([cur[s] for s in live], toks, parents)
        res.passes += 1
        res.nodes.append(len(toks))
        still = []
        for i, s in enumerate(live):
            t, p = trees[i]
            o = offs[i]
            new, node, _ = accept_walk(t, p, lambda n, cands, o=o: greedy_pick(greedy(logits[o + n]), cands))
            cur[s] = states[o + node]
            if not _emit(s, new, out, seqs, drafters, max_new_tokens, eos_id):
                still.append(s)
        live = still
    return res


def _tree(seq: list[int], k: int, drafter) -> tuple[list[int], list[int] | None]:
    """One stream's tree for the next pass: its pending token, plus up to ``k - 1`` drafts."""
    if k == 1 or drafter is None:
        return [seq[-1]], None
    toks, parents = drafter.draft(seq, k)
    if not toks or toks[0] != seq[-1] or len(toks) > k:
        raise ValueError(f"the {drafter.name} drafter returned {toks}: it must start with the last token "
                         f"{seq[-1]} and hold at most {k} tokens")
    return toks, parents


def _emit(s: int, new: list[int], out, seqs, drafters, max_new_tokens: int, eos_id) -> bool:
    """Append stream ``s``'s accepted tokens (up to its budget and its stop token); True when it is done."""
    for t in new:
        out[s].append(int(t))
        if drafters:
            drafters[s].commit(seqs[s], int(t))
        seqs[s].append(int(t))
        if len(out[s]) >= max_new_tokens or (eos_id is not None and t == eos_id):
            return True
    return False
