"""Speculative decoding on the integer reference with trigram draft trees (docs/speculative.md).

One *verification step* feeds the pending token (committed, not yet fed) and a draft tree drafted by
:mod:`mmfree.pymodel.trigram` to :meth:`IntModel.verify` with ``parents``: one weight pass for the
whole tree. Then, starting at the root, the next token is chosen from the node's logits exactly as
plain decoding would choose it; if it equals one of the node's drafted children, that child is
accepted and the walk continues from its logits, otherwise the step ends. Every step emits at least
one token (the chosen token that left the tree), and decoding continues from the state of the last
accepted node, so the model sees exactly the token sequence it would see in plain decoding.

* Greedy (``temperature == 0``): the chosen token is the argmax (lowest id on ties), so the output is
  identical to :func:`mmfree.pymodel.generate.generate` with :class:`IntBackend`, token for token.
* Sampling: the multi-candidate rule for one-hot (deterministic) drafts, as in SpecInfer's
  multi-step speculative sampling and Lookahead decoding: the children ``c_1..c_m`` are tried in rank
  order, ``c_i`` is accepted with probability ``r(c_i) / sum(r)`` where ``r`` is the target
  distribution with the already rejected children removed; if all are rejected the token is drawn
  from ``r``. The emitted token is distributed exactly as ``p`` (temperature and top-p applied by
  :func:`mmfree.pymodel.sampling.probabilities`), so the output distribution is the model's. (ADED's
  own sampling path does not have this property.)

Accounting ("model passes" = weight passes): plain decoding of ``n`` tokens needs ``n`` passes (the
prompt pass yields the first token, then one per token); speculative decoding needs the same prompt
pass plus one pass per verification step.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import trigram as TG
from mmfree.pymodel.generate import GenerationResult, check_prompt
from mmfree.pymodel.sampling import greedy, probabilities, sample


def accept_one_hot(p: np.ndarray, candidates, rng: np.random.Generator) -> tuple[int, int]:
    """One token from distribution ``p`` by the multi-candidate rule for one-hot drafts.

    ``candidates`` are distinct token ids in draft order. Returns ``(token, i)`` with ``i`` the index of
    the accepted candidate, or ``-1`` when every candidate was rejected and the token was drawn from the
    residual. For any candidate list the token is distributed exactly as ``p``: candidate ``c_1`` is
    emitted with probability ``p(c_1)``; after its rejection the residual is ``p`` without ``c_1``,
    renormalised, and so on by induction."""
    r = np.array(p, dtype=np.float64, copy=True)
    for i, c in enumerate(candidates):
        pc = r[c]
        if pc > 0.0:
            if rng.random() * r.sum() < pc:
                return int(c), i
            r[c] = 0.0
    mass = r.sum()
    if not mass > 0.0:
        # Only reachable through float rounding when the candidates held all the mass: the likeliest one.
        i = max(range(len(candidates)), key=lambda j: (p[candidates[j]], -j))
        return int(candidates[i]), i
    return int(rng.choice(len(r), p=r / mass)), -1


def greedy_pick(token: int, candidates) -> tuple[int, int]:
    """Greedy acceptance at one tree node: the model's token (its argmax) and the index of the first drafted
    child that carries it (-1: none)."""
    token = int(token)
    return token, (candidates.index(token) if token in candidates else -1)


def choose(logits_float: np.ndarray, candidates, temperature: float, top_p: float,
           rng: np.random.Generator) -> tuple[int, int]:
    """The next token at a tree node and the index of the matching candidate (-1: none)."""
    if temperature == 0:
        return greedy_pick(greedy(logits_float), candidates)
    return accept_one_hot(probabilities(logits_float, temperature, top_p), candidates, rng)


def accept_walk(toks, parents, pick, emit=None) -> tuple[list[int], int, bool]:
    """The acceptance walk over one verified draft tree: the one copy the reference loop, the host driver
    (:func:`mmfree.host.generate.generate`), the emulator's on-chip loop and the tests use.

    ``toks``: the pass's tokens, ``toks[0]`` the root (the pending token, fed, not drafted); ``parents``: one
    parent index per token (``-1`` for the root, else ``< own index``), or None for a chain. From the root:
    ``pick(node, candidates) -> (token, i)`` gives the token the model emits at ``node`` (from that node's
    logits) and the index ``i`` of the drafted child it accepts among ``candidates`` (the node's children's
    tokens in draft order; -1: none; greedy: :func:`greedy_pick`). ``emit(token) -> bool`` is called with every
    emitted token in order; True ends the walk right after that token (a stop token, enough tokens). The walk
    goes on from an accepted child and ends at the first node with no accepted child.

    Returns ``(tokens, node, stopped)``: the emitted tokens (at least one), the last node walked (the one whose
    state decoding continues from; ``len(tokens) - 1`` drafted nodes were accepted) and whether ``emit`` ended
    the walk."""
    n = len(toks)
    kids: list[list[int]] = [[] for _ in range(n)]
    for j in range(1, n):
        kids[parents[j] if parents is not None else j - 1].append(j)
    node, out = 0, []
    while True:
        tok, i = pick(node, [toks[j] for j in kids[node]])
        out.append(int(tok))
        if emit is not None and emit(int(tok)):
            return out, node, True
        if i < 0:
            return out, node, False
        node = kids[node][i]


# ---- which table ------------------------------------------------------------------------------------------------
def guided_greedy_passes(table: TG.TrigramTable, context: list[int], tokens: list[int], n_nodes: int):
    """The on-chip draft-verify loop with count-guided trees (``GEN_DRAFT.tree = COUNT_GUIDED``), replayed from
    the greedy tokens it must emit: ``context`` ends with ``tokens[0]`` (the token the host emitted before the
    loop) and ``table`` has learned it; every pass drafts ``draft_tree_guided(table, a, b, n_nodes)`` from the
    last two tokens, the walk accepts a drafted child when it is the next of ``tokens``, and the table learns
    each emitted token. Returns ``(log, table)``: every pass's ``(tokens, parents)`` and the adapted copy of
    ``table`` (the argument is not changed)."""
    t, seq, out, log = table.copy(), list(context), list(tokens[:1]), []
    while len(out) < len(tokens):
        toks, parents = TG.draft_tree_guided(t, seq[-2], seq[-1], n_nodes)
        log.append((toks, parents))

        def pick(node, cands):
            tok = tokens[len(out)]
            return tok, cands.index(tok) if tok in cands else -1

        def emit(tok):
            t.update(seq[-2], seq[-1], tok)
            seq.append(tok)
            out.append(tok)
            return len(out) == len(tokens)

        accept_walk(toks, parents, pick, emit)
    return log, t


def _cache_path(vocab: int, tok_sha: str) -> Path:
    from mmfree.config import cache_dir

    key = hashlib.sha256(json.dumps([tok_sha, vocab, TG.FORMAT_VERSION, asdict(TG.TableParams()),
                                     list(sys.version_info[:2])]).encode()).hexdigest()[:16]
    return cache_dir() / "trigram" / f"{key}.bin"


def _model_dirs(model, model_dir=None) -> list[Path]:
    """Where a model's files may sit: ``model_dir``, its export directory, the checkpoint it came from."""
    dirs = [Path(d) for d in (model_dir, getattr(model, "path", None)) if d is not None]
    source = (getattr(model, "manifest", None) or {}).get("source")
    if source:
        from mmfree.pymodel.checkpoint import resolve

        try:
            dirs.append(resolve(source))
        except MmfreeError:
            pass
    return dirs


def model_table_path(model, model_dir=None, build: bool = True, log=None) -> Path:
    """The model's own table: ``trigram.bin`` in ``model_dir``, in the export directory, or in the
    checkpoint the export came from; otherwise the cached table built from the default corpus (the
    training split of the Python-stdlib corpus), built now when missing and ``build`` is true."""
    dirs = _model_dirs(model, model_dir)
    for d in dirs:
        if (d / TG.TABLE_FILE).is_file():
            return d / TG.TABLE_FILE
    tok_dir = next((d for d in dirs if (d / "tokenizer.json").is_file()), None)
    if tok_dir is None:
        raise MmfreeError("the model has no tokenizer.json, so its trigram table cannot be built from text; "
                          "pass a table (--trigram-table FILE) built with `mmfree trigram build`")
    path = _cache_path(model.vocab_size, TG.tokenizer_sha256(tok_dir))
    if not path.is_file():
        if not build:
            raise MmfreeError(f"no trigram table for this model yet ({path})")
        (log or (lambda m: print(m, file=sys.stderr)))(
            f"building the trigram table of this model from the Python-stdlib corpus (once; cached in {path})")
        TG.build_for_tokenizer(tok_dir / "tokenizer.json", model.vocab_size).save(path)
    return path


def resolve_table(model, table=None, model_dir=None, log=None) -> tuple[TG.TrigramTable, str, list[str]]:
    """(a private copy of the table to draft from, where it came from, notices).

    ``table``: a :class:`TrigramTable`, a file path, or None for the model's own table
    (:func:`model_table_path`). Refuses (MmfreeError) a table built for another vocabulary or tokenizer."""
    notices: list[str] = []
    tok_sha = next((s for s in map(TG.tokenizer_sha256, _model_dirs(model, model_dir)) if s is not None), None)
    if isinstance(table, TG.TrigramTable):
        t, where = table.copy(), "given table"
    else:
        path = Path(table) if table is not None else model_table_path(model, model_dir, log=log)
        where = str(path)
        if path.is_file() and path.stat().st_size == 0:
            notices.append(f"trigram table {path} is an empty file; decoding without drafts")
            return TG.TrigramTable.empty(model.vocab_size, TG.TableParams(), tok_sha), where, notices
        t = TG.TrigramTable.load(path)
    t.check_compatible(model.vocab_size, tok_sha, f"trigram table {where}")
    if t.is_empty:
        notices.append(f"trigram table {where} is empty; decoding without drafts")
    return t, where, notices


# ---- the decoding loop -------------------------------------------------------------------------------------------
def speculative_generate(model, prompt_ids, max_new_tokens: int, max_draft: int = 4, temperature: float = 0.0,
                         top_p: float = 1.0, seed: int = 0, table=None, model_dir=None, eos_id: int | None = None,
                         max_nodes: int = TG.DEFAULT_MAX_NODES, adapt: bool = True, template=None,
                         progress=None, log=None, tree_rule: str | None = None) -> GenerationResult:
    """Decode up to ``max_new_tokens`` tokens after ``prompt_ids`` with trigram draft trees.

    ``model`` is an :class:`IntModel` (logits become floats through ``model.to_float``, as in
    :class:`IntBackend`). ``max_draft`` is the tree depth (draft tokens per path, 0: no
    drafts), ``max_nodes`` the number of draft nodes per step (the tree is ``make_template(max_draft,
    max_nodes)`` unless ``template`` is given) under ``tree_rule`` "template"; under "count-guided"
    (:func:`~mmfree.pymodel.trigram.draft_tree_guided`) the ``max_nodes`` most likely nodes, any depth
    (``max_draft`` 0 still means no drafts); None: :data:`~mmfree.pymodel.trigram.DEFAULT_TREE_RULE`.
    ``table``: see :func:`resolve_table`; it is copied, and
    with ``adapt`` the copy learns the prompt's and the committed tokens' trigrams. ``eos_id``: stop
    after that token. ``log``: where notices go (default: stderr). Returns a GenerationResult with the
    same tokens as plain greedy decoding (temperature 0) or tokens from the model's own distribution
    (temperature > 0); ``extra`` holds ``verify_steps``, ``mean_accepted`` (tokens emitted per
    verification step), ``model_passes``, ``plain_passes``, ``speedup_passes``, ``tree_rule`` and the notices."""
    ids = check_prompt(prompt_ids, model.vocab_size)
    rule = TG.check_tree_rule(tree_rule, template)
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if max_draft < 0:
        raise ValueError(f"max_draft must be >= 0, got {max_draft}")
    if max_nodes < 0:
        raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    say = log or (lambda m: print(f"mmfree: {m}", file=sys.stderr))
    tbl, where, notices = resolve_table(model, table, model_dir, log=say)
    for n in notices:
        say(n)
    draft, n_draft, depth = _tree_drafter(rule, tbl, max_draft, max_nodes, template)

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    state, logits = model.prefill(model.initial_state(), ids)
    passes, steps, nodes, drafted_accepted = 1, 0, 0, 0
    hist = [0] * (1 + max(max_draft, depth))
    out: list[int] = []
    seq = list(ids)                     # everything committed: prompt + output
    if adapt:
        tbl.observe(ids)

    def commit(tok: int) -> bool:
        if adapt:
            tbl.update(seq[-2] if len(seq) >= 2 else None, seq[-1], tok)
        seq.append(tok)
        out.append(tok)
        if progress is not None:
            progress(tok)
        return (eos_id is not None and tok == eos_id) or len(out) >= max_new_tokens

    done = max_new_tokens == 0
    if not done:
        tok = sample(model.to_float(logits), temperature, top_p, rng)
        done = commit(tok)
    while not done:
        root = seq[-1]
        toks, parents = draft(seq[-2] if len(seq) >= 2 else None, root)
        states, logits = model.verify(state, toks, parents)
        passes += 1
        steps += 1
        nodes += len(toks) - 1
        emitted, node, done = accept_walk(
            toks, parents, lambda i, cands: choose(model.to_float(logits[i]), cands, temperature, top_p, rng), commit)
        depth = len(emitted) - 1
        hist[depth] += 1
        drafted_accepted += depth
        state = states[node]

    seconds = time.perf_counter() - t0
    emitted_in_steps = len(out) - 1 if out else 0
    plain = max(1, len(out))
    extra = {
        "draft": "trigram", "tree_rule": rule, "table": where, "max_draft": max_draft, "max_nodes": n_draft,
        "adapt": adapt, "verify_steps": steps,
        "mean_accepted": emitted_in_steps / steps if steps else 0.0,
        "mean_accepted_drafts": drafted_accepted / steps if steps else 0.0,
        "mean_draft_nodes": nodes / steps if steps else 0.0,
        "accepted_depth_histogram": hist,
        "model_passes": passes, "plain_passes": plain, "speedup_passes": plain / passes,
        "table_contexts": tbl.n_contexts,
    }
    if notices:
        extra["notice"] = "; ".join(notices)
    return GenerationResult(ids, out, seconds, extra)


def _tree_drafter(rule: str, tbl: TG.TrigramTable, max_draft: int, max_nodes: int, template):
    """(draft(prev, root) -> (tokens, parents), draft nodes per step, deepest possible path) of a tree rule."""
    if rule == "count-guided":
        if max_nodes > TG.GUIDED_MAX_NODES:
            raise ValueError(f"max_nodes (draft nodes per step) must be <= {TG.GUIDED_MAX_NODES} with the "
                             f"count-guided tree rule, got {max_nodes}")
        n = TG.check_guided_nodes(max_nodes if max_draft > 0 and not tbl.is_empty else 0)
        return (lambda prev, root: TG.draft_tree_guided(tbl, prev, root, n)), n, n
    if template is None:
        template = TG.make_template(max_draft, max_nodes) if not tbl.is_empty else ()
    template = tuple((int(a), int(b)) for a, b in template)
    if any(not 0 <= a <= i for i, (a, _) in enumerate(template)) or any(b < 0 for _, b in template) \
            or len(set(template)) != len(template):
        raise ValueError("template entries must be distinct (parent, rank) pairs with 0 <= parent <= own index "
                         "and rank >= 0")
    return (lambda prev, root: TG.draft_tree(tbl, prev, root, template)), len(template), _depth(template)


def _depth(template) -> int:
    depth = [0]
    for parent, _ in template:
        depth.append(depth[parent] + 1)
    return max(depth)
