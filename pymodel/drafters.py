"""Drafters: what the host proposes for one verification pass (docs/speculative.md).

:class:`Drafter` is the contract; :class:`PromptLookupDrafter` (the default, :func:`draft_tokens`) drafts a
chain, :class:`TrigramDrafter` a tree from the trigram table (:mod:`mmfree.pymodel.trigram`), adapting a
private copy of it exactly as :func:`mmfree.pymodel.speculative.speculative_generate` does."""

from __future__ import annotations

import sys

from mmfree import MmfreeError


def draft_tokens(context: list[int], n: int) -> list[int]:
    """Prompt-lookup drafts: the ``n`` tokens that followed the most recent earlier occurrence of the last
    token of ``context`` (padded by repeating the last token). Deterministic and model-free."""
    last = context[-1]
    for i in range(len(context) - 2, -1, -1):
        if context[i] == last:
            follow = context[i + 1:i + 1 + n]
            return (follow + [last] * n)[:n]
    return [last] * n


class Drafter:
    """Proposes the tokens of one verification pass. ``draft(context, k)`` returns ``(tokens, parents)``:
    ``tokens[0] == context[-1]`` (the last committed token, not yet fed), at most k tokens, ``parents``
    None for a chain or one parent index per token (``-1`` for the root, else ``< own index``).
    ``start(prompt)`` and ``commit(context, token)`` let an adaptive drafter learn what is committed."""

    name = "drafter"

    def start(self, prompt: list[int]) -> None:
        pass

    def draft(self, context: list[int], k: int) -> tuple[list[int], list[int] | None]:
        raise NotImplementedError

    def commit(self, context: list[int], token: int) -> None:
        pass


class PromptLookupDrafter(Drafter):
    """The default: the last token plus the k-1 tokens that followed its previous occurrence
    (:func:`draft_tokens`), a chain."""

    name = "lookup"

    def draft(self, context, k):
        return [context[-1]] + draft_tokens(context, k - 1), None


class TrigramDrafter(Drafter):
    """Draft trees from the trigram drafter :mod:`mmfree.pymodel.trigram` (docs/speculative.md), ``k - 1``
    draft nodes per pass. ``tree_rule`` "count-guided": :func:`~mmfree.pymodel.trigram.draft_tree_guided`;
    "template": the tree template of ``k - 1`` nodes and depth ``k - 1`` (or ``template``) expanded from the
    table; None: :data:`~mmfree.pymodel.trigram.DEFAULT_TREE_RULE` ("template" when ``template`` is given).
    With ``adapt`` (default) a private copy of the table learns the prompt and every committed token, exactly
    as :func:`mmfree.pymodel.speculative.speculative_generate` does. ``tree_rule_given`` keeps what was
    asked (None: the default), so the on-chip loop can run its engine's rule instead. ``lookup`` (count-guided
    only; a host option the draft engine does not run): prompt-lookup matches of the committed tokens merged
    into every expansion (:func:`~mmfree.pymodel.trigram.draft_tree_guided`'s ``history``)."""

    name = "trigram"

    def __init__(self, table, adapt: bool = True, template=None, tree_rule: str | None = None,
                 lookup: bool = False):
        from mmfree.pymodel import trigram as TG

        self.tree_rule = TG.check_tree_rule(tree_rule, template)
        if lookup and self.tree_rule != "count-guided":
            raise MmfreeError("lookup (prompt-lookup matches merged into the tree) needs tree_rule 'count-guided'")
        self.lookup = bool(lookup)
        self.tree_rule_given = tree_rule
        if not isinstance(table, TG.TrigramTable):
            table = TG.TrigramTable.load(table)
        self.TG, self.table, self.adapt, self.template = TG, table.copy(), adapt, template
        self._templates: dict[int, tuple] = {}

    @classmethod
    def for_model(cls, model, table=None, model_dir=None, log=None, **kw) -> TrigramDrafter:
        """The model's own table (:func:`mmfree.pymodel.speculative.resolve_table`; built and cached on first
        use) or ``table`` (a TrigramTable or file), checked against the model's vocabulary and tokenizer."""
        from mmfree.pymodel.speculative import resolve_table

        t, _, notices = resolve_table(model, table, model_dir, log=log)
        for n in notices:
            (log or (lambda m: print(f"mmfree: {m}", file=sys.stderr)))(n)
        return cls(t, **kw)

    def start(self, prompt):
        if self.adapt:
            self.table.observe(list(prompt))

    def draft(self, context, k):
        if self.table.is_empty or k <= 1:
            return [context[-1]], None
        prev = context[-2] if len(context) >= 2 else None
        if self.tree_rule == "count-guided":
            toks, parents = self.TG.draft_tree_guided(self.table, prev, context[-1], k - 1,
                                                      history=list(context) if self.lookup else None)
            return toks, (None if parents == list(range(-1, len(toks) - 1)) else parents)
        template = self.template
        if template is None:
            template = self._templates.get(k) or self._templates.setdefault(k, self.TG.make_template(k - 1, k - 1))
        toks, parents = self.TG.draft_tree(self.table, prev, context[-1], template)
        toks, parents = toks[:k], parents[:k]
        return toks, (None if parents == list(range(-1, len(toks) - 1)) else parents)

    def commit(self, context, token):
        if self.adapt:
            self.table.update(context[-2] if len(context) >= 2 else None, context[-1], token)


def replay(drafter: Drafter, prompt: list[int], output: list[int], k: int) -> dict:
    """Tokens per verification step of ``drafter`` at ``k`` tokens per pass, measured against a known ``output``
    (the tokens decoding emits after ``prompt``) without running the model: the drafter learns the prompt and the
    first token, then each step drafts from the committed tokens and walks its tree along ``output`` (a child is
    accepted when its token is the next output token, the first such child in draft order), committing every
    emitted token, exactly as :func:`mmfree.host.generate.generate` and
    :func:`mmfree.pymodel.speculative.speculative_generate` do.

    Exact for greedy decoding, whose output does not depend on the drafts. For sampling with the multi-candidate
    rule it has the same distribution as the real loop when ``output`` is a plain sample of the model: a node's
    emitted token is distributed as ``p`` and a drafted child is accepted exactly when the emitted token is one
    of the children (the rule's losslessness argument), so (output, acceptances) has the same law either way.
    Returns ``{"verify_steps", "emitted" (tokens after the first), "histogram" (steps by tokens emitted - 1, as
    ``speculative_generate``'s ``accepted_depth_histogram``)}``."""
    if k < 1 or not output:
        raise MmfreeError(f"replay needs k >= 1 and a non-empty output, got k={k}, {len(output)} output tokens")
    seq = [int(t) for t in prompt]
    drafter.start(seq)
    drafter.commit(seq, int(output[0]))
    seq.append(int(output[0]))
    i, steps, hist = 1, 0, [0] * k
    while i < len(output):
        toks, parents = drafter.draft(seq, k) if k > 1 else ([seq[-1]], None)
        parents = parents if parents is not None else list(range(-1, len(toks) - 1))
        node, first = 0, i
        steps += 1
        while i < len(output):
            t = int(output[i])
            drafter.commit(seq, t)
            seq.append(t)
            i += 1
            node = next((c for c in range(1, len(toks)) if parents[c] == node and toks[c] == t), -1)
            if node < 0:
                break
        hist[i - first - 1] += 1                # emitted - 1 (the last step may end with the output, mid-tree)
    return {"verify_steps": steps, "emitted": len(output) - 1, "histogram": hist}
