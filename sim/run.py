"""The host on the simulated board (RTL under Verilator + cocotb) with its reference check: :func:`run_sim` (what
``mmfree run --board sim`` runs), :func:`greedy_reference`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmfree import MmfreeError
from mmfree.host.errors import check_timeout
from mmfree.host.generate import NO_DRAFT_ENGINE, ONCHIP_SAMPLING, check_sampling
from mmfree.host.layout import check_n_tokens
from mmfree.host.session import open_model
from mmfree.pymodel.drafters import TrigramDrafter
from mmfree.rtl import params as PARAMS
from mmfree.rtl.compiler import HwConfig


def greedy_reference(im, prompt: list[int], n_tokens: int) -> list[int]:
    """Plain greedy decoding on the integer reference (the oracle): prompt in one pass, one token per step."""
    state, logits = im.prefill(im.initial_state(), prompt)
    out = []
    while True:
        out.append(int(np.argmax(logits)))       # lowest id on ties, as the hardware's argmax
        if len(out) >= n_tokens:
            return out
        state, logits = im.step(state, out[-1])


def sampling_reference(im, prompt: list[int], n_tokens: int, temperature: float, top_p: float, seed: int,
                       table=None, k: int = 1, tree_rule: str | None = None) -> list[int]:
    """What the integer reference samples for the same seed: ``pymodel.generate`` with IntBackend (no drafts, k = 1)
    or ``speculative_generate`` from ``table`` (trigram drafts) with the driver's tree: the template
    ``make_template(k - 1, k - 1)``, or ``k - 1`` count-guided nodes under ``tree_rule`` "count-guided"."""
    from mmfree.pymodel import trigram as TG
    from mmfree.pymodel.generate import generate
    from mmfree.pymodel.intmodel import IntBackend
    from mmfree.pymodel.speculative import speculative_generate

    if table is None:
        return generate(IntBackend(im), prompt, n_tokens, temperature, top_p, seed).tokens
    if TG.check_tree_rule(tree_rule) == "count-guided":
        shape = {"tree_rule": "count-guided", "max_draft": k - 1, "max_nodes": k - 1}
    else:
        shape = {"template": TG.make_template(k - 1, k - 1)}
    return speculative_generate(im, prompt, n_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                table=table.copy(), log=lambda m: None, **shape).tokens


def expected_tokens(im, prompt: list[int], n_tokens: int, temperature: float, top_p: float, seed: int,
                    draft: str | None, table=None, k: int = 1, tree_rule: str | None = None):
    """(tokens, what they are) that a run must produce: IntModel greedy decoding, or with ``temperature`` > 0
    :func:`sampling_reference` (``table`` the drafter's start table for trigram drafts). A sampled prompt-lookup
    run has no reference: (None, None)."""
    if not temperature:
        return greedy_reference(im, prompt, n_tokens), "IntModel greedy decoding"
    if draft == "lookup":
        return None, None
    return (sampling_reference(im, prompt, n_tokens, temperature, top_p, seed, table, k, tree_rule),
            f"IntModel sampling (temperature {temperature:g}, top-p {top_p:g}, seed {seed})")


def check_streams(im, prompts: list[list[int]], n_tokens: int, max_tokens: int, tokens: list[list[int]],
                  passes: int, temperature: float = 0.0, top_p: float = 1.0, seeds=None,
                  decode_first: bool = False) -> dict:
    """A multi-stream run against the integer reference: the reference's multi-stream loop
    (:func:`mmfree.pymodel.multistream.generate_streams` with ``max_nodes = max_tokens``) gives the pass count
    and, greedy, the tokens; sampled (``temperature`` > 0), each stream's tokens are ``pymodel.generate`` with
    IntBackend of its prompt alone with its seed (``seeds[s]``, default 0); ``decode_first`` as the run used it (the
    pass count depends on it). Returns ``bit_exact``,
    ``reference_tokens``, ``reference_passes``, ``problems``."""
    from mmfree.pymodel.multistream import generate_streams as reference_streams

    ref = reference_streams(im, prompts, n_tokens, max_nodes=max_tokens, decode_first=decode_first)
    seeds = [0] * len(prompts) if seeds is None else list(seeds)
    expect = ref.tokens if not temperature else [sampling_reference(im, p, n_tokens, temperature, top_p, seed)
                                                 for p, seed in zip(prompts, seeds)]
    what = "IntModel greedy decoding" if not temperature else f"IntModel sampling (temperature {temperature:g})"
    problems = [f"stream {s}: tokens {got} differ from {what} {exp}"
                for s, (got, exp) in enumerate(zip(tokens, expect)) if got != exp]
    if passes != ref.passes:
        problems.append(f"{passes} passes; the reference's multi-stream loop (pymodel.multistream.generate_streams, "
                        f"{max_tokens} tokens per pass) runs {ref.passes}")
    return {"bit_exact": not problems, "reference_tokens": expect, "reference_passes": ref.passes,
            "problems": problems}


def run_sim(model="default", prompt="def ", n_tokens: int = 8, draft: str | None = None, k: int | None = None,
            table=None, inject: list[dict] | None = None, write_logits: bool = True, timeout_s: float = 60.0,
            hw: HwConfig | None = None, progress=None, workdir=None, onchip: bool = False,
            tree_rule: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
            seed: int = 0) -> dict:
    """Run :class:`Accelerator` on the simulated board (one simulator process: :func:`mmfree.sim.accel.run_job`
    with the bench's "run" job) and check it against the integer reference.

    Returns the dict ``mmfree run --board sim --json`` prints: ``tokens``, ``text``, the counters
    (:attr:`Generation.counters`), ``bit_exact`` (every pass's argmax, states and, when written, logits equal
    ``IntModel.forward`` on the same tokens, parents and start state, AND the tokens equal plain greedy decoding
    on IntModel), ``problems``, ``reference_tokens``, ``inject`` (results of the injected steps), ``wall_s``.

    ``temperature`` > 0 (``top_p``, ``seed``): the host samples from each pass's logits as the reference does, and the
    tokens must equal :func:`sampling_reference` (plain or trigram drafts; a lookup-drafted sample is checked for
    bit-exact passes only, its tokens have no seeded reference); refused with ``onchip``.

    ``onchip`` (with ``draft="trigram"``; the build needs ``hw.draft_vocab``): the draft-verify loop runs on the
    accelerator (CONTROL.GENERATE). Its passes are never read back, so only the prefill passes are replayed on
    IntModel (``replayed`` says so); ``bit_exact`` then also needs the tokens, GEN_PASSES and the table read back
    to equal ``speculative_generate(max_draft = max_nodes = K - 1)`` from the same starting table (its tokens,
    ``verify_steps`` -> ``reference_verify_steps``, and its adapted table: the starting table after
    ``observe(prompt + tokens)``, the updates it makes in that order)."""
    import tempfile

    from mmfree.sim.accel import (
        DEFAULT_HW,
        MAX_SIM_POSITIONS,
        check_prompt_ids,
        check_width,
        passes_from_result,
        replay_and_compare,
        run_job,
    )
    from mmfree.sim.runner import stdout_to_stderr

    hw = hw or DEFAULT_HW
    timeout_s = check_timeout(timeout_s, "timeout_s (--timeout)")
    compiled, im, tok_dir = open_model(model)
    if im is None:
        raise MmfreeError("the simulated board compares with the integer reference: give 'default', an export or a "
                          "checkpoint directory (not a compiled directory)")
    acc_tok = None
    if isinstance(prompt, str):
        from mmfree.pymodel.tokenizer import load_tokenizer

        if tok_dir is None:
            raise MmfreeError("the model has no tokenizer: give token ids")
        acc_tok = load_tokenizer(tok_dir)
        ids = list(acc_tok.encode_prompt(prompt))
    else:
        ids = [int(t) for t in prompt]
    check_prompt_ids(ids, compiled.dims.vocab)
    check_n_tokens(n_tokens, name="--tokens")
    if len(ids) + n_tokens > MAX_SIM_POSITIONS:
        raise MmfreeError(f"prompt ({len(ids)} tokens) + --tokens {n_tokens} = {len(ids) + n_tokens} positions; the "
                          f"simulated board runs at most {MAX_SIM_POSITIONS} (every pass is a cycle-accurate run over "
                          "all weights, and every pass's arrays are kept for the comparison): shorten the prompt or "
                          "--tokens")
    if draft not in (None, "none", "lookup", "trigram"):
        raise MmfreeError(f"unknown drafter {draft!r}: choose lookup or trigram")
    draft = None if draft == "none" else draft
    if onchip and draft != "trigram":
        raise MmfreeError("--onchip runs the accelerator's trigram draft engine: give --draft trigram")
    if onchip and not hw.draft_vocab:
        raise MmfreeError(NO_DRAFT_ENGINE)
    temperature = check_sampling(temperature, top_p, seed)
    if onchip and temperature:
        raise MmfreeError(ONCHIP_SAMPLING)
    if onchip and k is not None and k != hw.max_tokens:
        raise MmfreeError(f"--k does not apply to --onchip: the on-chip loop verifies up to the build's "
                          f"{hw.max_tokens} tokens per pass")
    k = k if k is not None else (hw.max_tokens if draft else 1)
    if not 1 <= k <= hw.max_tokens:
        raise MmfreeError(f"--k must be in 1..{hw.max_tokens} (the simulated build's tokens per pass), got {k}")
    check_width(compiled.dims, hw)
    with tempfile.TemporaryDirectory(prefix="mmfree-run-sim-") as td:
        td = Path(td)
        compiled.save(td / "compiled")
        job = {"kind": "run", "compiled": str(td / "compiled"), "prompt": ids, "n_tokens": n_tokens, "k": k,
               "draft": draft, "write_logits": write_logits, "timeout_s": timeout_s,
               # simulated seconds at the modelled clock, capped as SimSession's default: a hang costs minutes
               # (one GENERATE waits for all its passes: the cap grows with the tokens asked for)
               "max_wait_cycles": int(min(timeout_s * PARAMS.SIM_CLOCK_HZ, PARAMS.SIM_MAX_WAIT_CYCLES))
               * (n_tokens if onchip else 1),
               "progress": False, "onchip": onchip, "temperature": temperature, "top_p": top_p, "seed": seed}
        start_table = None
        if draft == "trigram":
            dr = TrigramDrafter.for_model(im, table, tok_dir, tree_rule=tree_rule)
            dr.table.save(td / "trigram.bin")
            job["table"] = str(td / "trigram.bin")
            job["tree_rule"] = tree_rule
            start_table = dr.table
        if inject:
            job["inject"] = inject
        with stdout_to_stderr():        # the simulator prints to fd 1; keep stdout for the JSON
            res = run_job(job, hw=hw, workdir=Path(workdir) if workdir else td / "run", progress=progress)
    passes = passes_from_result(res)
    ok, problems = replay_and_compare(im, [p for p in passes if not p.get("onchip")])
    ref, what = expected_tokens(im, ids, n_tokens, temperature, top_p, seed, draft, start_table, k, tree_rule)
    if ref is None:                     # a sampled prompt-lookup run: no reference to compare with
        ref = res["tokens"]
    if res["tokens"] != ref:
        ok = False
        problems.insert(0, f"tokens {res['tokens']} differ from {what} {ref}")
    onchip_check = {}
    if onchip:
        spec_ok, spec_problems, onchip_check = _check_onchip(im, ids, n_tokens, hw.max_tokens, start_table, res)
        ok = ok and spec_ok
        problems += spec_problems
    text = None
    try:
        if acc_tok is None and tok_dir is not None:
            from mmfree.pymodel.tokenizer import load_tokenizer

            acc_tok = load_tokenizer(tok_dir)
        text = acc_tok.decode(res["tokens"]) if acc_tok is not None else None
    except Exception:
        text = None
    out = {"board": "sim", "tokens": res["tokens"], "text": text, "prompt_ids": ids, "draft": draft, "k": k,
           "onchip": onchip}
    if res.get("tree_rule") is not None:
        out["tree_rule"] = res["tree_rule"]
    out.update(res["counters"])
    out.update(onchip_check)
    out.update({"bit_exact": ok, "problems": problems[:20], "reference_tokens": ref,
                "model": {"d": compiled.dims.d, "inter": compiled.dims.inter, "layers": compiled.dims.layers,
                          "vocab": compiled.dims.vocab},
                "hw": {"bus_bytes": hw.bus_bytes, "max_tokens": hw.max_tokens, "max_width": hw.max_width,
                       "draft_vocab": hw.draft_vocab, "weight_ports": hw.weight_ports,
                       "matvec_engines": hw.matvec_engines},
                "wall_s": res["wall_s"]})
    if "inject" in res:
        out["inject"] = res["inject"]
    return out


def _check_onchip(im, ids: list[int], n_tokens: int, K: int, start_table, res: dict) -> tuple[bool, list[str], dict]:
    """The on-chip loop of a :func:`run_sim` result against ``speculative_generate`` on IntModel from the same
    starting table (template ``make_template(K - 1, K - 1)`` given explicitly: the reference would draft nothing
    from a table that starts empty, the hardware drafts from what the prompt taught it). Returns (ok, problems,
    fields for the JSON)."""
    from mmfree.pymodel import trigram as TG
    from mmfree.pymodel.speculative import speculative_generate

    spec = speculative_generate(im, ids, n_tokens, max_draft=K - 1, max_nodes=K - 1, table=start_table,
                                template=TG.make_template(K - 1, K - 1), log=lambda m: None)
    expect = start_table.copy()
    expect.observe(list(ids) + list(spec.tokens))
    problems = []
    if res["tokens"] != spec.tokens:
        problems.append(f"tokens {res['tokens']} differ from speculative_generate's {spec.tokens}")
    gen_passes = res["counters"].get("gen_passes", 0)          # no GENERATE when the prefill gave every token
    if gen_passes != spec.extra["verify_steps"]:
        problems.append(f"GEN_PASSES {gen_passes} differs from speculative_generate's verify_steps "
                        f"{spec.extra['verify_steps']}")
    arrays = res.get("arrays", {})
    for name, exp in (("trig", expect.trig), ("bigram", expect.bigram)):
        got = arrays.get(f"table_{name}")
        if got is None or got.shape != exp.shape or not np.array_equal(got, exp):
            problems.append(f"the {name} array read back after GENERATE differs from the reference's adapted table"
                            + ("" if got is None or got.shape != exp.shape else
                               f" ({int(np.count_nonzero(got != exp))} words)"))
    fields = {"replayed": "prefill passes only: the on-chip loop's passes are not read back (checked instead: the "
                          "tokens, GEN_PASSES and the adapted table against speculative_generate)",
              "reference_verify_steps": spec.extra["verify_steps"]}
    return not problems, problems, fields
