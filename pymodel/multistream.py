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

A pass of the accelerator holds at most its build's max tokens: ``max_nodes`` gives the reference the same
budget, and :func:`plan_pass` (the one schedule, which the host's :class:`mmfree.host.streams.StreamBatch` uses
too) decides what each pass carries: while any stream has prompt tokens left the pass carries prompt chunks
only (streams in join order, each chunk as long as the budget left allows), otherwise one tree per decoding
stream. With every prompt fitting one pass this is the unbudgeted schedule above. ``decode_first`` (what the
server uses) puts the decoding streams' trees in first and packs prompt chunks into the budget left, so a
request joining with a long prompt no longer stalls the requests already decoding (each still advances one
step per pass); per stream the tokens are the same either way, only the passes differ.
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


def _check_streams(model, prompts, max_new_tokens: int, k: int, drafters, max_nodes=None) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists, one per stream")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens per stream per pass) must be an integer >= 1, got {k!r}")
    if drafters is not None and len(drafters) != len(prompts):
        raise ValueError(f"give one drafter per stream: {len(prompts)} prompts, {len(drafters)} drafters")
    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int)
                                  or max_nodes < k * len(prompts)):
        raise ValueError(f"max_nodes (tokens per pass) must be an integer >= k x streams = {k * len(prompts)} "
                         f"(every decode pass carries one tree of up to k tokens per stream), got {max_nodes!r}")
    return [check_prompt(p, model.vocab_size) for p in prompts]


def plan_pass(prompt_left, decoding, max_nodes: int | None = None, decode_first: bool = False,
              root_nodes: int = 1) -> tuple[list[tuple[int, int]], list[int]]:
    """What the next pass carries (the schedule of every multi-stream loop, reference and host alike).

    ``prompt_left``: ``(stream, prompt tokens not fed yet)`` in join order (streams with 0 left may be listed);
    ``decoding``: the streams whose prompt is in, in order; ``max_nodes``: tokens one pass holds (None: no
    limit). Returns ``(chunks, roots)``: while any prompt has tokens left, ``chunks`` = ``(stream, n)`` prompt
    chunks packed in join order up to ``max_nodes`` and ``roots`` = [] (prefill first: a stream reaches the
    shared decode passes soonest, and every decode pass is one tree per decoding stream); otherwise ``chunks``
    = [] and ``roots`` = ``decoding``. With ``decode_first``: ``roots`` = ``decoding`` always (each tree up to
    ``root_nodes`` tokens, taken from the budget first) and ``chunks`` packed in join order into the budget left
    (none when it is spent), so every decoding stream advances in every pass. ``ValueError`` for
    ``max_nodes < 1``, ``root_nodes < 1``, or ``decode_first`` with a budget the roots alone use up while a
    prompt waits (no pass could ever feed it)."""
    if max_nodes is not None and max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    if root_nodes < 1:
        raise ValueError(f"root_nodes must be >= 1, got {root_nodes}")
    budget = max_nodes if max_nodes is not None else float("inf")
    if decode_first:
        roots = list(decoding)
        budget -= root_nodes * len(roots)
        if budget < 0 or (budget == 0 and any(left > 0 for _, left in prompt_left)):
            raise ValueError(f"max_nodes {max_nodes} leaves no room for a prompt chunk beside {len(roots)} "
                             f"decoding trees of {root_nodes} tokens")
        return _pack(prompt_left, budget), roots
    chunks = _pack(prompt_left, budget)
    return (chunks, []) if chunks else ([], list(decoding))


def _pack(prompt_left, budget) -> list[tuple[int, int]]:
    """Prompt chunks ``(stream, n)`` in join order, as long as ``budget`` tokens allow."""
    chunks = []
    for s, left in prompt_left:
        if left > 0 and budget > 0:
            n = int(min(left, budget))
            chunks.append((s, n))
            budget -= n
    return chunks


def generate_streams(model, prompts, max_new_tokens: int, k: int = 1, drafters=None,
                     eos_id: int | None = None, max_nodes: int | None = None,
                     decode_first: bool = False) -> StreamsResult:
    """Greedy decoding of B = ``len(prompts)`` independent streams on :class:`IntModel` ``model``, every pass
    one forest over the streams still running.

    ``prompts``: one non-empty token-id list per stream; ``max_new_tokens``: tokens per stream (each stops
    earlier right after ``eos_id``); ``k``: tokens per stream per decode pass (1: plain decoding; > 1 with
    ``drafters``, one :class:`~mmfree.pymodel.drafters.Drafter` per stream, each given only its own stream's
    context); ``max_nodes``: tokens one pass holds (the accelerator build's max tokens; None: no limit), the
    passes planned by :func:`plan_pass` (``decode_first``: decoding streams' trees first, prompt chunks in the
    room left, as :class:`mmfree.host.streams.StreamBatch` with the same flag). ``tokens[s]`` equals plain greedy
    decoding of ``prompts[s]`` alone.
    Raises ``ValueError`` for an empty prompt list or prompt, ids outside the vocabulary, a negative token
    count, ``k < 1``, a drafter count that is not B or ``max_nodes`` below ``k x B``.
    """
    prompts = _check_streams(model, prompts, max_new_tokens, k, drafters, max_nodes)
    B = len(prompts)
    out: list[list[int]] = [[] for _ in range(B)]
    res = StreamsResult(out, 0)
    if max_new_tokens == 0:
        return res
    seqs = [list(p) for p in prompts]
    for s, dr in enumerate(drafters or []):
        dr.start(seqs[s])
    cur: list[IntState] = [model.initial_state()] * B
    fed = [0] * B
    live = list(range(B))
    while live:
        chunks, roots = plan_pass([(s, len(prompts[s]) - fed[s]) for s in live],
                                  [s for s in live if fed[s] == len(prompts[s])], max_nodes, decode_first, k)
        trees = [(prompts[s][fed[s]:fed[s] + n], None) for s, n in chunks]
        trees += [_tree(seqs[s], k, drafters[s] if drafters else None) for s in roots]
        members = [s for s, _ in chunks] + roots
        toks, parents, offs = forest_of(trees)
        states, logits = model.verify_forest([cur[s] for s in members], toks, parents)
        res.passes += 1
        res.nodes.append(len(toks))
        done = set()
        for i, s in enumerate(members):
            o, last = offs[i], offs[i + 1] - 1
            if i < len(chunks):                          # a prompt chunk: the first token after its last one
                fed[s] += chunks[i][1]
                cur[s] = states[last]
                new = [greedy(logits[last])] if fed[s] == len(prompts[s]) else []
            else:
                t, p = trees[i]
                new, node, _ = accept_walk(t, p, lambda n, cands, o=o: greedy_pick(greedy(logits[o + n]), cands))
                cur[s] = states[o + node]
            if new and _emit(s, new, out, seqs, drafters, max_new_tokens, eos_id):
                done.add(s)
        live = [s for s in live if s not in done]
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
