"""Generation over passes on an :class:`~mmfree.host.accel.AccelHost`, on any transport.

:func:`generate`: greedy generation with drafts verified k tokens per pass (prompt lookup by default, or a
:class:`~mmfree.pymodel.drafters.TrigramDrafter` tree); the output always equals plain greedy decoding.
:func:`generate_onchip` (``generate(..., onchip=True)``): the same with the whole draft-verify loop on the
accelerator (``CONTROL.GENERATE``, builds with a draft engine; docs/speculative.md). :func:`generate_streams`:
B independent sequences, every pass one forest over them (:mod:`mmfree.host.streams`). :func:`run_script`:
scripted passes with register overrides (tests)."""

from __future__ import annotations

import numpy as np

from mmfree import MmfreeError
from mmfree.host import layout as LY
from mmfree.host.accel import AccelHost, AccelRunError, PassResult
from mmfree.pymodel.drafters import Drafter, PromptLookupDrafter, TrigramDrafter
from mmfree.pymodel.numerics import act_to_float
from mmfree.pymodel.sampling import sample
from mmfree.pymodel.speculative import accept_walk, choose, greedy_pick
from mmfree.rtl import isa as I
from mmfree.rtl import regmap as RM

#: what the on-chip loop cannot do
ONCHIP_SAMPLING = ("--temperature: the on-chip draft-verify loop (GenLoop) emits each node's argmax and cannot sample; "
                   "drop --onchip to sample on the host from the logits each pass returns, or use --temperature 0")


def program_act_frac(program: bytes) -> int:
    """The logits' fixed-point fraction bits: the ``act_frac`` of the program's SETF (what IntModel.to_float uses)."""
    for ins in I.disassemble(program)[1]:
        if ins.op == "SETF":
            return int(ins.args["act_frac"])
    raise MmfreeError("the compiled program has no SETF instruction, so its logits cannot be turned into "
                      "probabilities: recompile the model with this mmfree")


def check_sampling(temperature, top_p, seed) -> float:
    """The temperature as a float; MmfreeError naming the option for a temperature that is not a finite number
    >= 0, a top_p outside (0, 1], a seed that is not an integer >= 0."""
    t = float(temperature) if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) \
        else float("nan")
    if not (np.isfinite(t) and t >= 0):
        raise MmfreeError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise MmfreeError(f"--top-p must be in (0, 1], got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MmfreeError(f"--seed must be an integer >= 0, got {seed!r}")
    return t


class Sampler:
    """Host-side token choice from what a pass returns, exactly as the integer reference samples: greedy (the
    accelerator's argmax) at ``temperature == 0``; otherwise the pass's logits as IntModel's floats
    (:func:`program_act_frac`), ``pymodel.sampling.sample`` for a token with no drafts (as ``pymodel.generate``) and
    the multi-candidate rule ``pymodel.speculative.choose`` at drafted nodes (as ``speculative_generate``), one
    ``numpy.random.default_rng(seed)`` for the whole generation. Errors (MmfreeError): temperature not a finite
    number >= 0, top_p outside (0, 1], a seed that is not an integer >= 0, sampling without logits written."""

    def __init__(self, host: AccelHost, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 write_logits: bool = True):
        t = check_sampling(temperature, top_p, seed)
        self.temperature, self.top_p = t, float(top_p)
        self.greedy = t == 0
        if not self.greedy and not write_logits:
            raise MmfreeError("sampling (--temperature > 0) reads every pass's logits: drop --no-logits")
        self.frac = None if self.greedy else program_act_frac(host.c.program)
        self.rng = np.random.default_rng(seed)

    def _floats(self, res: PassResult, i: int) -> np.ndarray:
        return act_to_float(res.logits[i], self.frac)

    def first(self, res: PassResult) -> int:
        """The token after the prompt, from the last prefill pass."""
        if self.greedy:
            return int(res.argmax[-1])
        return sample(self._floats(res, len(res.tokens) - 1), self.temperature, self.top_p, self.rng)

    def pick(self, res: PassResult, drafted: bool):
        """``pick(i, candidates) -> (token, child index or -1)`` for :func:`accept_walk` over ``res``."""
        if self.greedy:
            return lambda i, cands: greedy_pick(res.argmax[i], cands)
        if not drafted:
            return lambda i, cands: (sample(self._floats(res, i), self.temperature, self.top_p, self.rng), -1)
        return lambda i, cands: choose(self._floats(res, i), cands, self.temperature, self.top_p, self.rng)


def _record(res: PassResult, commit: int, prefill: bool, emitted: int, keep_arrays: bool, **extra) -> dict:
    """One pass record: tokens, commit, prefill, emitted, the counters, argmax and, only with ``keep_arrays``,
    ``states`` and ``logits`` (the arrays read back; without them a record stays a few hundred bytes, so host
    memory per generated token is bounded)."""
    rec = {"tokens": res.tokens, "commit": commit, "prefill": prefill, "emitted": emitted, "cycles": res.cycles,
           "stalls": res.stalls, "rd_bytes": res.rd_bytes, "wr_bytes": res.wr_bytes, "argmax": res.argmax}
    if keep_arrays:
        rec.update(states=res.states, logits=res.logits)
    rec.update(extra)
    return rec


def _check_request(host: AccelHost, prompt, n_tokens: int, k: int) -> list[int]:
    """The prompt as ints; MmfreeError for an empty prompt, ``n_tokens < 1`` or k outside the bitstream's
    1..max tokens per pass."""
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise MmfreeError("the prompt is empty; give at least one token")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise MmfreeError(f"n_tokens must be >= 1 (an integer), got {n_tokens!r}")
    if not 1 <= k <= host.hw.max_tokens:
        raise MmfreeError(f"k must be in 1..{host.hw.max_tokens} (this bitstream's tokens per pass), got {k}")
    return prompt


def _prefill(host: AccelHost, prompt: list[int], k: int, write_logits: bool,
             keep_arrays: bool, sampler: Sampler | None = None) -> tuple[list[int], list[dict]]:
    """A new sequence: the prompt in passes of up to k tokens. Returns ([the first token] (the last pass's argmax,
    or ``sampler``'s choice), the pass records, the last one marked as emitting it)."""
    host.reset_state()
    passes: list[dict] = []
    res = None
    for i in range(0, len(prompt), k):
        chunk = prompt[i:i + k]
        res = host.run(chunk, write_logits=write_logits)
        passes.append(_record(res, len(chunk) - 1, True, 0, keep_arrays))
    passes[-1]["emitted"] = 1
    return [sampler.first(res) if sampler is not None else int(res.argmax[-1])], passes


def onchip_tree_rule(host: AccelHost, drafter=None) -> str:
    """The tree rule GENERATE runs for ``drafter`` (GEN_DRAFT.tree): the drafter's rule
    (:attr:`TrigramDrafter.tree_rule`; "template" without one). A drafter that asked for no rule
    (``tree_rule_given`` None) gets "template" when the bitstream's engine lacks its default rule (``host.draft
    ["tree_rules"]``: every :class:`~mmfree.rtl.regmap.TreeRule` from register map 2.3, the template only before);
    :func:`check_onchip_drafter` refuses a rule the engine lacks."""
    rules = (host.draft or {}).get("tree_rules", ("template",))
    rule = getattr(drafter, "tree_rule", None) or "template"
    if rule not in rules and getattr(drafter, "tree_rule_given", None) is None:
        return "template"
    return rule


def _check_engine_rule(host: AccelHost, rule: str) -> None:
    rules = (host.draft or {}).get("tree_rules", ("template",))
    if rule not in rules:
        raise MmfreeError(f"this bitstream's draft engine drafts {' or '.join(rules)} trees, not {rule} (register map "
                          "2.3 has GEN_DRAFT): rebuild it, draft on the host (without --onchip) for that rule, or "
                          "leave the tree rule unset")


def check_onchip_drafter(drafter: TrigramDrafter, host: AccelHost) -> None:
    """Refuse what the on-chip loop cannot do as ``drafter`` would: it always adapts the table and drafts with
    the rule :func:`onchip_tree_rule` gives, which the engine must have; the template rule's tree is
    ``make_template(K - 1, K - 1)`` of the build's K. MmfreeError naming the fix."""
    from mmfree.pymodel import trigram as TG

    K = host.hw.max_tokens
    if not drafter.adapt:
        raise MmfreeError("the on-chip draft-verify loop always adapts the table; draft on the host (without "
                          "--onchip) to keep it fixed")
    rule = onchip_tree_rule(host, drafter)
    _check_engine_rule(host, rule)
    if rule == "template" and drafter.template is not None \
            and tuple(map(tuple, drafter.template)) != TG.make_template(K - 1, K - 1):
        raise MmfreeError(f"the on-chip loop drafts the tree make_template({K - 1}, {K - 1}) of this bitstream "
                          "(K = max tokens per pass); draft on the host (without --onchip) for another template")


def generate(host: AccelHost, prompt: list[int], n_tokens: int, k: int = 1, write_logits: bool = True,
             progress=None, drafter: Drafter | None = None, onchip: bool = False,
             keep_arrays: bool = False, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> tuple[list[int], list[dict]]:
    """Generation on the accelerator: the prompt in passes of up to k tokens, then decode passes; greedy, or with
    ``temperature > 0`` sampled on the host from each pass's logits exactly as the integer reference samples
    (:class:`Sampler`: the same tokens as ``pymodel.generate`` with IntBackend at k = 1, and as
    ``speculative_generate`` with the drafter's template for trigram drafts, for the same ``seed``).

    With ``k == 1`` every decode pass feeds the last token. With ``k > 1`` a pass feeds the last token and
    up to k-1 drafts from ``drafter`` (default :class:`PromptLookupDrafter`: a chain of prompt-lookup
    drafts, :func:`draft_tokens`; a :class:`TrigramDrafter` drafts a tree, run with FLAGS.TREE). From the
    root, the model's own next token (the argmax) is emitted and, when it equals a drafted child, that child
    is accepted and the walk goes on from it; the state after the last accepted node is committed without a
    copy (:meth:`AccelHost.commit`). Greedy, the output equals plain greedy decoding. Returns (tokens, passes); each
    pass record holds tokens, parents (trees), commit, prefill, emitted, counters, argmax and, with
    ``keep_arrays`` only, the ``states`` and ``logits`` read back (host memory per token stays bounded without).

    ``onchip``: the draft-verify loop runs on the accelerator instead (:func:`generate_onchip` with the
    :class:`TrigramDrafter`'s table; the prompt still goes in passes of up to k tokens).
    """
    sampler = Sampler(host, temperature, top_p, seed, write_logits)
    if onchip:
        if not sampler.greedy:
            raise MmfreeError(ONCHIP_SAMPLING)
        if not isinstance(drafter, TrigramDrafter):
            raise MmfreeError("the on-chip loop drafts with the accelerator's trigram engine: give a TrigramDrafter "
                              f"(draft='trigram'), not {type(drafter).__name__ if drafter else 'no drafter'}")
        check_onchip_drafter(drafter, host)
        return generate_onchip(host, prompt, n_tokens, drafter.table, write_logits=write_logits, progress=progress,
                               keep_arrays=keep_arrays, k=k,
                               tree_rule=onchip_tree_rule(host, drafter))
    prompt = _check_request(host, prompt, n_tokens, k)
    drafter = drafter if drafter is not None else PromptLookupDrafter()
    drafter.start(prompt)
    seq = list(prompt)
    out, passes = _prefill(host, prompt, k, write_logits, keep_arrays, sampler)
    drafter.commit(seq, out[-1])
    seq.append(out[-1])
    if progress:
        progress(out[-1])
    while len(out) < n_tokens:
        if k == 1:
            toks, parents = [out[-1]], None
        else:
            toks, parents = drafter.draft(seq, k)
            if not toks or toks[0] != out[-1] or len(toks) > k:
                raise MmfreeError(f"the {drafter.name} drafter returned {toks}: it must start with the last token "
                                  f"{out[-1]} and hold at most {k} tokens")
        res = host.run(toks, parents=parents, write_logits=write_logits, commit_last=False)
        new, node, _ = accept_walk(toks, parents, sampler.pick(res, drafted=k > 1))
        host.commit(res, node)
        new = new[:n_tokens - len(out)]
        for t in new:
            drafter.commit(seq, t)
            seq.append(t)
        out += new
        extra = {"parents": list(parents)} if parents is not None else {}
        passes.append(_record(res, node, False, len(new), keep_arrays, **extra))
        if progress:
            for t in new:
                progress(t)
    return out, passes


NO_DRAFT_ENGINE = ("this bitstream has no draft engine (DRAFT_VOCAB = 0): rebuild with draft_vocab, or draft on the "
                   "host without --onchip")


def check_draft_table(host: AccelHost, table) -> None:
    """Refuse (MmfreeError naming the problem and the fix) a :class:`~mmfree.pymodel.trigram.TrigramTable` the
    bitstream's draft engine cannot run: no engine (:data:`NO_DRAFT_ENGINE`), another geometry or other counter
    rules than DRAFT_CONFIG / DRAFT_COUNTERS (sets_log2, ways, slots, bigram_slots, inc, cmax), a vocabulary
    larger than DRAFT_VOCAB or smaller than the model's (the table must hold every token the model emits)."""
    eng = host.draft
    if eng is None:
        raise MmfreeError(NO_DRAFT_ENGINE)
    fields = ("sets_log2", "ways", "slots", "bigram_slots", "inc", "cmax")
    diff = [f for f in fields if getattr(table.params, f) != eng[f]]
    if diff:
        flags = " ".join(f"--{f.replace('_', '-')} {eng[f]}" for f in fields if f != "cmax")
        raise MmfreeError(f"the table was built with {', '.join(f'{f}={getattr(table.params, f)}' for f in diff)}; "
                          f"this bitstream's draft engine uses {', '.join(f'{f}={eng[f]}' for f in diff)}: rebuild "
                          f"the table with `mmfree trigram build {flags}`"
                          + (f" and cmax={eng['cmax']}" if "cmax" in diff else ""))
    if host.V > eng["vocab"]:
        raise MmfreeError(f"the model has {host.V} tokens, this bitstream's draft engine holds DRAFT_VOCAB = "
                          f"{eng['vocab']}: rebuild it with draft_vocab >= {host.V}, or draft on the host without "
                          "--onchip")
    if table.vocab_size > eng["vocab"]:
        raise MmfreeError(f"the table was built for {table.vocab_size} tokens, this bitstream's draft engine holds "
                          f"DRAFT_VOCAB = {eng['vocab']}: build the table for this model (`mmfree trigram build "
                          "--model MODEL --out FILE`)")
    if table.vocab_size < host.V:
        raise MmfreeError(f"the table was built for {table.vocab_size} tokens, the model has {host.V}: build the "
                          "table for this model (`mmfree trigram build --model MODEL --out FILE`)")


def generate_onchip(host: AccelHost, prompt: list[int], n_tokens: int, table, eos_id: int | None = None,
                    write_logits: bool = False, progress=None, k: int | None = None,
                    keep_arrays: bool = False, tree_rule: str = "template") -> tuple[list[int], list[dict]]:
    """Greedy generation with the draft-verify loop on the accelerator (``CONTROL.GENERATE``, docs/speculative.md
    "The on-chip draft-verify loop").

    The prompt goes in host passes of up to ``k`` tokens (default: the build's max tokens) exactly as
    :func:`generate` does; the first token is the last prefill pass's argmax. ``table`` (a
    :class:`~mmfree.pymodel.trigram.TrigramTable`: the host's copy, updated in place) learns the prompt and the
    first token (``observe(prompt)``, ``update(prev, last, first)``, as ``speculative_generate`` does before its
    first draft), is checked against the engine (:func:`check_draft_table`, before any pass) and copied to DDR
    (the trigram lines as they are, the bigram rows padded to DRAFT_VOCAB); one GENERATE emits the rest (several
    GENERATEs of up to :data:`mmfree.host.layout.GEN_OUT_TOKENS` tokens for longer runs, each from the last one's
    GEN_STATE). Then the table the engine adapted is read back into ``table`` and GEN_STATE becomes the host's
    STATE_IN, so host passes
    or another call go on from there.

    ``tree_rule``: the draft tree rule of every GENERATE (GEN_DRAFT.tree, :class:`~mmfree.rtl.regmap.TreeRule`):
    ``"template"`` (the build's ``make_template(K - 1, K - 1)``) or ``"count-guided"`` (``draft_tree_guided``
    with K - 1 nodes); another name, or a rule the bitstream lacks (register map 2.2 has the template only),
    is refused before anything runs (MmfreeError naming the rules).

    Stops after ``n_tokens`` tokens, or after ``eos_id`` (emitted, GEN_EOS). Returns (tokens, records): the
    prefill passes recorded as :func:`generate` records them, then one record per GENERATE: ``onchip`` True,
    ``tokens`` [] (the host fed nothing), ``emitted_tokens``, ``emitted`` = ``count`` (GEN_COUNT), ``gen_passes``,
    ``gen_nodes`` (tree nodes fed, roots included), ``gen_cycles`` (= ``cycles``), ``state`` (GEN_STATE), and
    ``stalls``/``rd_bytes``/``wr_bytes`` of its last pass only (the hardware keeps no sums over a GENERATE). The
    tokens equal plain greedy decoding; with one GENERATE, ``gen_passes`` equals ``speculative_generate``'s
    ``verify_steps`` (``max_draft = max_nodes = K - 1``) and the table read back its adapted table.

    Errors: MmfreeError for a bitstream without a draft engine or a table it cannot run (before anything runs);
    :class:`AccelRunError` when the accelerator stops with an error (the host's table is then not read back); a
    time-out (``host.timeout_s`` per token asked for) aborts the loop with SOFT_RESET (MmfreeError)."""
    k = host.hw.max_tokens if k is None else k
    rule = RM.TreeRule.of(tree_rule)
    prompt = _check_request(host, prompt, n_tokens, k)
    if eos_id is not None and not 0 <= eos_id < host.V:
        raise MmfreeError(f"eos_id {eos_id} is outside the vocabulary [0, {host.V})")
    check_draft_table(host, table)
    eng, b, addr = host.draft, host.transport, host.addr
    _check_engine_rule(host, rule.rule)
    out, passes = _prefill(host, prompt, k, write_logits, keep_arrays)
    table.observe(prompt)
    table.update(prompt[-2] if len(prompt) >= 2 else None, prompt[-1], out[0])
    if progress:
        progress(out[0])
    if n_tokens == 1 or out[0] == eos_id:
        return out, passes
    bigram = np.zeros((eng["vocab"], eng["bigram_slots"]), dtype="<u4")
    bigram[:table.vocab_size] = table.bigram
    b.write_mem(addr["TABLE_BASE"], table.trig.astype("<u4").tobytes())
    b.write_mem(addr["BIGRAM_BASE"], bigram.tobytes())
    for name in ("TABLE_BASE", "BIGRAM_BASE", "GEN_OUT"):
        host.set_addr(name, addr[name])
    regs = host.regs
    if eos_id is not None:
        regs.write("GEN_EOS", enable=1, token=eos_id)
    else:
        regs.write("GEN_EOS", 0)
    regs.write("STATE_STRIDE", host.c.state_stride)
    regs.write("GEN_DRAFT", tree=rule)
    regs.write("FLAGS", RM.FLAG_WRITE_LOGITS if write_logits else 0)
    seq = prompt + out
    stride, K = host.c.state_stride, host.hw.max_tokens
    positions = {area + j * stride for area in (addr["STATE_A"], addr["STATE_B"]) for j in range(K)}
    while len(out) < n_tokens and out[-1] != eos_id:
        n = min(n_tokens - len(out), LY.GEN_OUT_TOKENS)
        host.set_addr("STATE_IN", host.state_in)
        host.set_addr("STATE_OUT", host.next_out)                     # the first pass's; STATE_IN is not in it
        host.set_addr("STATE_ALT", host.state_area(host.state_in))
        regs.write("GEN_N", n)
        regs.write("GEN_CONTEXT", prev=seq[-2], root=seq[-1])
        host.start_and_wait(RM.CTRL_GENERATE, host.timeout_s * n)
        count, state = regs.read("GEN_COUNT"), regs.read64("GEN_STATE")
        new = [int(t) for t in np.frombuffer(b.read_mem(addr["GEN_OUT"], 4 * count), dtype="<u4")] \
            if 1 <= count <= n else []
        if not new or not (count == n or new[-1] == eos_id) or eos_id in new[:-1] or state not in positions:
            raise MmfreeError(f"GENERATE finished inconsistently: GEN_COUNT {count} for GEN_N {n} (tokens {new[:8]}, "
                              f"EOS {eos_id}), GEN_STATE {state:#x} (a position of STATE_A or STATE_B expected); "
                              "the bitstream does not keep the on-chip loop's contract (docs/speculative.md)")
        host.commit_state(state)
        passes.append({"onchip": True, "tree_rule": rule.rule, "tokens": [], "emitted_tokens": new, "prefill": False,
                       "emitted": count,
                       "count": count, "gen_passes": regs.read("GEN_PASSES"),
                       "gen_nodes": regs.read("GEN_NODES"), "gen_cycles": regs.read64("GEN_CYCLES"),
                       "cycles": host.reg64("GEN_CYCLES"), "stalls": host.reg64("STALLS"),
                       "rd_bytes": host.reg64("RD_BYTES"), "wr_bytes": host.reg64("WR_BYTES"), "state": state})
        out += new
        seq += new
        if progress:
            for t in new:
                progress(t)
    trig = np.frombuffer(b.read_mem(addr["TABLE_BASE"], table.trig.nbytes), dtype="<u4")
    table.trig[...] = trig.reshape(table.trig.shape)
    bigram = np.frombuffer(b.read_mem(addr["BIGRAM_BASE"], bigram.nbytes), dtype="<u4").reshape(bigram.shape)
    table.bigram[...] = bigram[:table.vocab_size]
    return out, passes


def run_script(host: AccelHost, steps: list[dict]) -> list[dict]:
    """Run scripted passes (tests): each step is ``{"tokens", "parents"?, "h0"? (start state [L, d]),
    "commit"? (position, default the last), "write_logits"?, "regs"? (CSR overrides for this step, e.g. a
    bad base address), "num_tokens"? (NUM_TOKENS override), "program"? (hex of a patched program written
    over the real one for this step), "starts"? (B start states [L, d]: a multi-stream forest pass,
    :meth:`AccelHost.run_forest` with the step's ``parents``; nothing committed)}``. A step that makes the
    accelerator report an error records ``{"error": code, "detail": detail, "message": text}``; the overrides
    are undone after every step."""
    out = []
    t = host.transport
    for st in steps:
        if "program" in st:
            t.write_mem(host.addr["PROG_BASE"], bytes.fromhex(st["program"]))
        if "h0" in st:
            host.reset_state(np.asarray(st["h0"], dtype=np.int64))
        saved = {}
        for name, v in st.get("regs", {}).items():
            if name in RM.ADDRESS_REGS:
                saved[name] = host.reg64(name)
                host.set_addr(name, int(v))
            else:
                saved[name] = host.regs.read(name)
                host.regs.write(name, int(v))
        try:
            if "starts" in st:
                res = host.run_forest(st["tokens"], st["parents"], [np.asarray(h) for h in st["starts"]],
                                      write_logits=st.get("write_logits", True))
            else:
                res = host.run(st["tokens"], parents=st.get("parents"), write_logits=st.get("write_logits", True),
                               commit_last=False, num_tokens=st.get("num_tokens"))
        except AccelRunError as exc:
            out.append({"error": exc.code, "detail": exc.detail, "message": str(exc), "tokens": list(st["tokens"])})
        else:
            commit = st.get("commit", len(st["tokens"]) - 1)
            if "starts" not in st:
                host.commit(res, commit)
            out.append(_record(res, commit, False, 0, True, parents=st.get("parents")))
        for name, v in saved.items():
            if name in RM.ADDRESS_REGS:
                host.set_addr(name, v)
            else:
                host.regs.write(name, v)
        if "program" in st:
            t.write_mem(host.addr["PROG_BASE"], host.c.program)
    return out


def generate_streams(host: AccelHost, prompts, n_tokens: int, **kw) -> tuple[list[list[int]], list[dict]]:
    """B independent streams decoded together, every pass one forest: :func:`mmfree.host.streams.generate_streams`
    (kept here under its first name; the multi-stream host lives in :mod:`mmfree.host.streams`)."""
    from mmfree.host.streams import generate_streams as run

    return run(host, prompts, n_tokens, **kw)
