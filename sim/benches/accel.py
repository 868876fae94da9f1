"""cocotb bench of the whole accelerator: the reference host (:mod:`mmfree.host`) drives the RTL through
the simulated board (:class:`mmfree.sim.accel.SimSession`) as a PYNQ driver would drive the real one.

The job comes from the JSON file named by ``MMFREE_ACCEL_JOB`` (written by :func:`mmfree.sim.accel.run_job`):

* ``compiled``: a directory written by :meth:`mmfree.rtl.compiler.Compiled.save`;
* ``kind``: ``"generate"`` (``prompt``, ``n_tokens``, ``k``, ``write_logits``: `mmfree.host.generate.generate`
  on :class:`~mmfree.host.accel.AccelHost`), ``"onchip"`` (``prompt``, ``n_tokens``, ``table`` a trigram table
  file, ``tree_rule`` the draft tree rule: :func:`mmfree.host.generate.generate_onchip`, logits not written; the
  adapted table comes back as ``table_trig`` / ``table_bigram``), ``"script"`` (``steps``, see
  :func:`mmfree.host.generate.run_script`), ``"streams"`` (``prompts``, ``n_tokens``:
  `mmfree.host.streams.generate_streams`, B streams in forest passes; the compiled program serves B streams) or
  ``"run"``: the host session
  :class:`mmfree.host.session.AccelSession` (what the board's ``Accelerator`` is without its PYNQ constructors)
  over a :class:`~mmfree.host.transport.BoardTransport` around the simulated board, exactly as
  ``mmfree run --board B`` drives a PYNQ board
  (``prompt``, ``n_tokens``, ``k``, ``draft``: null, ``"lookup"`` or ``"trigram"`` with
  ``table`` a trigram table file, ``write_logits``, ``timeout_s``, ``onchip``: the draft-verify loop on the
  accelerator (``Accelerator.generate(..., onchip=True)``; the table it adapted comes back as the arrays
  ``table_trig`` and ``table_bigram``), and ``inject``: scripted steps run after the generation, e.g. a bad
  base address or a token id outside the vocabulary, each recorded as its error code, detail and message or
  its argmax);
* ``memory`` ("hdl" or "python"), ``pause_seed`` (random AXI pauses with the Python memory), ``workdir``.

Results go to ``job_result.json`` (tokens, per-pass counters, errors) and ``job_arrays.npz`` (logits,
argmax and states of every pass) in ``workdir``; the comparison with IntModel happens outside.
"""

import json
import os
import traceback
from pathlib import Path

import cocotb
import numpy as np
from cocotb.task import bridge

from mmfree.host.accel import AccelHost
from mmfree.host.generate import generate, generate_onchip, run_script
from mmfree.host.session import AccelSession
from mmfree.host.streams import generate_streams
from mmfree.host.transport import BoardTransport
from mmfree.pymodel.drafters import PromptLookupDrafter, TrigramDrafter
from mmfree.pymodel.trigram import TrigramTable
from mmfree.rtl import params as PARAMS
from mmfree.rtl.compiler import Compiled
from mmfree.sim.accel import SIM_MEM_BYTES, SimSession, SyncBoard


def _run_job(board, job, compiled, progress):
    """The "run" kind: the high-level driver, as on a board."""
    acc = AccelSession(BoardTransport(board, kind="sim"), compiled, timeout_s=job.get("timeout_s", 60.0),
                      write_logits=job.get("write_logits", True))
    draft = job.get("draft")
    if draft == "trigram":
        drafter = TrigramDrafter(job["table"], adapt=job.get("adapt", True), tree_rule=job.get("tree_rule"))
    elif draft == "lookup":
        drafter = PromptLookupDrafter()
    else:
        drafter = None
    onchip = bool(job.get("onchip"))
    if onchip and drafter is None:
        raise ValueError("an onchip job drafts with the trigram engine: it needs draft 'trigram' and a table file")
    g = acc.generate(job["prompt"], job["n_tokens"], draft=drafter, k=job.get("k"), progress=progress, onchip=onchip,
                     keep_arrays=True, temperature=job.get("temperature", 0.0), top_p=job.get("top_p", 1.0),
                     seed=job.get("seed", 0))
    out = {"tokens": g.tokens, "passes": g.passes, "counters": g.counters, "k": g.k, "draft": g.draft,
           "onchip": onchip, "tree_rule": g.tree_rule}
    if onchip:
        out["arrays"] = {"table_trig": drafter.table.trig, "table_bigram": drafter.table.bigram}
    if job.get("inject"):
        inject = []
        for rec in run_script(acc.host, job["inject"]):
            inject.append({key: (v.tolist() if key == "argmax" else v) for key, v in rec.items()
                           if key in ("error", "detail", "message", "tokens", "argmax", "cycles")})
        out["inject"] = inject
    return out


def _host_job(board, job, compiled):
    step = [0]

    def progress(tok):
        step[0] += 1
        if job.get("progress"):         # the parent process polls this for its progress bar
            (Path(job["workdir"]) / "progress.txt").write_text(str(step[0]))

    if job["kind"] == "run":
        return _run_job(board, job, compiled, progress)
    host = AccelHost(board, compiled, timeout_s=job.get("timeout_s", 60.0))
    if job["kind"] == "generate":
        tokens, passes = generate(host, job["prompt"], job["n_tokens"], k=job.get("k", 1),
                                  write_logits=job.get("write_logits", True), progress=progress, keep_arrays=True)
        return {"tokens": tokens, "passes": passes}
    if job["kind"] == "onchip":
        table = TrigramTable.load(job["table"])
        tokens, passes = generate_onchip(host, job["prompt"], job["n_tokens"], table,
                                         tree_rule=job.get("tree_rule", "template"), progress=progress,
                                         keep_arrays=True)
        return {"tokens": tokens, "passes": passes, "arrays": {"table_trig": table.trig, "table_bigram": table.bigram}}
    if job["kind"] == "script":
        return {"tokens": [], "passes": run_script(host, job["steps"])}
    if job["kind"] == "streams":
        tokens, passes = generate_streams(host, job["prompts"], job["n_tokens"],
                                          write_logits=job.get("write_logits", True), keep_arrays=True,
                                          decode_first=job.get("decode_first", False),
                                          progress=lambda s, tok: progress(tok))
        return {"tokens": tokens, "passes": passes}
    raise ValueError(f"unknown job kind {job['kind']!r}")


@cocotb.test()
async def accel_job(dut):
    job = json.loads(Path(os.environ["MMFREE_ACCEL_JOB"]).read_text())
    wd = Path(job["workdir"])
    session = SimSession(dut, memory=job["memory"], workdir=wd, pause_seed=job.get("pause_seed"),
                         bus_bytes=job["bus_bytes"], mem_bytes=job.get("mem_bytes", SIM_MEM_BYTES),
                         max_wait_cycles=job.get("max_wait_cycles", PARAMS.SIM_MAX_WAIT_CYCLES), ddr=job.get("ddr"))
    await session.start()
    board = SyncBoard(session)
    compiled = Compiled.load(job["compiled"])
    try:
        res = await bridge(_host_job)(board, job, compiled)
    except Exception as exc:
        (wd / "job_result.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                                                        "traceback": traceback.format_exc()}))
        raise
    save_result(wd, res)


def save_result(wd: Path, res: dict) -> None:
    """Write a job's result as :func:`mmfree.sim.accel.load_job_result` reads it: ``job_arrays.npz`` (every
    ndarray of the pass records as ``{key}{i}``, plus the result's own ``arrays``) and ``job_result.json``
    (the rest)."""
    arrays = dict(res.get("arrays", {}))
    meta = []
    for i, p in enumerate(res["passes"]):
        q = {}
        for key, v in p.items():
            if isinstance(v, np.ndarray):
                arrays[f"{key}{i}"] = v
            elif v is None and key == "logits":
                continue
            else:
                q[key] = v
        meta.append(q)
    np.savez(wd / "job_arrays.npz", **arrays)
    extra = {key: res[key] for key in ("counters", "inject", "k", "draft", "onchip", "tree_rule") if key in res}
    (wd / "job_result.json").write_text(json.dumps(dict({"tokens": res["tokens"], "passes": meta}, **extra),
                                                   default=int))
