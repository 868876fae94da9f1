"""Vitis HLS projects for the kernels: ``mmfree hls synth --board B --out DIR``.

:func:`write_project` writes a self-contained directory::

    DIR/src/            the kernel sources, the test bench and mmfree_spec.h (generated from the spec)
    DIR/vectors/TOP/    inputs and expected outputs of each top, computed by the integer reference
    DIR/TOP.tcl         one Vitis HLS script per top: csim, csynth, cosim, export_design (IP catalog)
    DIR/manifest.json   board, part, clock, buffer limits, the commands to run

The buffer limits (``MMFREE_MAX_D`` / ``MMFREE_MAX_I``) and the m_axi depths co-simulation needs are set
from the model the vectors come from. :func:`run_vitis` runs the scripts when ``vitis_hls`` (or the
2024.2+ ``vitis-run``) is on PATH; otherwise the caller prints :func:`commands`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfree import MmfreeError, __version__
from mmfree.hls import csim as C
from mmfree.hls import spec as SP
from mmfree.pymodel import numerics as N


@dataclass(frozen=True)
class BoardPart:
    name: str
    part: str
    clock_ns: float      # the board's default fabric clock (boards/<name>/board.json clock_mhz)


def _boards() -> dict[str, BoardPart]:
    """The FPGA parts and default clocks of the supported boards, read from boards/*/board.json."""
    from mmfree.boardfile import BOARD_NAMES, load_board

    out = {}
    for name in BOARD_NAMES:
        b = load_board(name)
        out[name] = BoardPart(name, b.part, 1000.0 / b.clock_mhz)
    return out


#: The FPGA parts of the supported boards (data: boards/<name>/board.json).
BOARDS = _boards()
#: Top-level kernels, each one Vitis project and one IP.
TOPS = ("mmfree_ternary_matvec", "mmfree_rmsnorm_quantize", "mmfree_dequantize", "mmfree_mlgru",
        "mmfree_bitlinear", "mmfree_layer")
STEPS = ("csim", "csynth", "cosim", "export")
IP_VENDOR = "mmfree"
GENERATOR = "mmfree hls synth"
IP_VERSION = "1.0"


def board_part(name: str) -> BoardPart:
    """The board by name (case and ``-``/``_`` ignored: ``PYNQ-Z2``, ``pynq_z2``, ``pynqz2``)."""
    key = name.lower().replace("_", "").replace("-", "")
    for b in BOARDS.values():
        if b.name.replace("-", "") == key:
            return b
    raise MmfreeError(f"unknown board {name!r}; choose one of {', '.join(BOARDS)}")


def _tops(tops) -> list[str]:
    tops = list(TOPS if not tops else tops)
    bad = [t for t in tops if t not in TOPS]
    if bad:
        raise MmfreeError(f"unknown top-level kernel(s) {', '.join(bad)}; choose from {', '.join(TOPS)}")
    return tops


def _steps(steps) -> list[str]:
    steps = list(STEPS if not steps else steps)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise MmfreeError(f"unknown step(s) {', '.join(bad)}; choose from {', '.join(STEPS)}")
    return steps


# ======================================================================================================
# test vectors from the integer reference
# ======================================================================================================
def make_vectors(model) -> dict[str, tuple[dict[str, np.ndarray], dict[str, int]]]:
    """Inputs and expected outputs of every top, from ``model`` (an IntModel): the second of two tokens
    through layer 0 (so the recurrent state is not zero) and the lm_head of the last layer's output.
    Returns ``{top: ({array name: typed array}, {scalar name: int})}``."""
    from mmfree.hls.harness import layer_image, sub_image

    V, d, I, L = model.dims.vocab, model.dims.d, model.dims.inter, model.dims.layers
    tokens = [min(1, V - 1), min(2, V - 1)]
    taps: dict = {}
    hs, logits = model.forward(model.initial_state().h, tokens, taps=taps)
    t, p, af = 1, "layers.0.", model.act_frac
    vt = np.dtype(SP.element_dtypes()["vec"])
    gt = np.dtype(SP.element_dtypes()["gate"])
    x_in, h_prev = taps["embed"][t], hs[0, 0]
    out = {}

    # the i_proj BitLinear, step by step
    n, nw = model.vec(p + "attn_norm.n"), model.vec(p + "attn.i_proj.nw")
    codes, P, S, sz = N.quantize(x_in, n, nw)
    P, S, sz = int(P[0]), int(S[0]), int(sz[0])
    out["mmfree_rmsnorm_quantize"] = (
        {"u": x_in.astype(np.int64), "n": n.astype(vt), "nw": nw.astype(vt), "expect_codes": codes.astype(np.int8)},
        {"k": d, "expect_P": P, "expect_S": S, "expect_sz": sz})
    packed = model.tensor(p + "attn.i_proj.w")
    acc = N.unpack_ternary(packed, d).astype(np.int64) @ codes
    out["mmfree_ternary_matvec"] = (
        {"w": np.ascontiguousarray(packed, dtype=np.uint8), "codes": codes.astype(np.int8),
         "expect_acc": acc.astype(np.int32)},
        {"n": d, "k": d})
    c = model.consts[p + "attn.i_proj"]
    M, sh = N.output_multiplier(np.int64(P), np.int64(S), np.int64(sz), c["c_m"], c["c_e"])
    y = N.dequantize(acc, M, sh)
    if not np.array_equal(y, taps[p + "attn.i_proj"][t]):
        raise AssertionError("i_proj recomputed from numerics differs from IntModel's tap")
    out["mmfree_dequantize"] = (
        {"acc": acc.astype(np.int32), "expect_y": y.astype(np.int32)},
        {"n": d, "P": P, "S": S, "sz": sz, "c_m": c["c_m"], "c_e": c["c_e"], "expect_M": int(M),
         "expect_shift": int(sh)})

    # the MLGRU step
    i, f, g = (taps[p + f"attn.{q}_proj"][t] for q in "ifg")
    h_new = taps[p + "attn.h"][t]
    out["mmfree_mlgru"] = (
        {"i": i.astype(np.int32), "f": f.astype(np.int32), "g": g.astype(np.int32),
         "one_minus_lb": model.vec(p + "attn.one_minus_lb").astype(gt), "h": h_prev.astype(np.int32),
         "expect_h": h_new.astype(np.int32), "expect_u": N.mul_act(g, N.silu(h_new, af)).astype(np.int64)},
        {"d": d, "act_frac": af})

    # lm_head as a whole BitLinear
    img, offs = sub_image(model, ["norm.n", "lm_head.nw", "lm_head.w"])
    c = model.consts["lm_head"]
    out["mmfree_bitlinear"] = (
        {"image": img, "u": taps[f"layers.{L - 1}.out"][t].astype(np.int64), "expect_y": logits[t].astype(np.int32)},
        {"k": d, "n": V, "off_n": offs["norm.n"], "off_nw": offs["lm_head.nw"], "off_w": offs["lm_head.w"],
         "c_m": c["c_m"], "c_e": c["c_e"]})

    # the whole layer
    li = layer_image(model, 0)
    tap_vec = np.concatenate([taps[p + name][t] for name, _ in SP.LAYER_TAPS])
    out["mmfree_layer"] = (
        {"image": li.image, "offsets": li.offsets.astype(np.uint32), "consts": li.consts.reshape(-1).astype(np.int32),
         "x": x_in.astype(np.int32), "h": h_prev.astype(np.int32), "expect_x": taps[p + "out"][t].astype(np.int32),
         "expect_h": hs[t, 0].astype(np.int32), "expect_taps": tap_vec.astype(np.int32)},
        {"d": d, "inter": I, "act_frac": af})
    return out


def _depths(top: str, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """m_axi depths (elements of each port's type) that co-simulation of ``top`` needs for its vectors."""
    big = {"mmfree_ternary_matvec": {"MMFREE_DEPTH_W": arrays.get("w", np.zeros(1)).size},
           "mmfree_bitlinear": {"MMFREE_DEPTH_IMAGE": arrays.get("image", np.zeros(1)).size},
           "mmfree_layer": {"MMFREE_DEPTH_IMAGE": arrays.get("image", np.zeros(1)).size,
                            "MMFREE_DEPTH_TAPS": arrays.get("expect_taps", np.zeros(1)).size}}.get(top, {})
    vec = max(a.size for name, a in arrays.items() if name not in ("image", "w", "expect_taps"))
    return {**big, "MMFREE_DEPTH_VEC": int(vec)}


# ======================================================================================================
# the project directory
# ======================================================================================================
def tcl_text(top: str, board: BoardPart, defines: dict[str, int], steps: list[str], clock_ns: float,
             sources: list[str]) -> str:
    """One top's Vitis HLS script from the template (``hls/tcl/hls_project.tcl.in``)."""
    from mmfree.template import render

    return render("mmfree.hls", "tcl/hls_project.tcl.in", {
        "TOP": top, "BOARD": board.name, "BOARD_ID": board.name.replace("-", "_"), "PART": board.part,
        "CLOCK_NS": f"{clock_ns:g}", "STEPS": " ".join(steps), "DEFINES": " ".join(C.define_flags(defines)),
        "SOURCES": " ".join(sources), "TB": C.TB_SOURCE, "VENDOR": IP_VENDOR, "IP_VERSION": IP_VERSION,
    })


def check_out(out, force: bool = True, inputs=()) -> Path:
    """``out`` may be replaced only when it is absent, empty, or (with ``force``) a project this command wrote
    before, and must not hold or sit inside an input (:func:`mmfree.atomic.check_output_dir`)."""
    from mmfree.atomic import check_output_dir

    return check_output_dir(out, GENERATOR.removeprefix("mmfree "), inputs=inputs, force=force)


def vitis_tool() -> list[str] | None:
    """The command prefix that runs a TCL script in Vitis HLS on this machine, or None."""
    if shutil.which("vitis_hls"):
        return [shutil.which("vitis_hls"), "-f"]
    if shutil.which("vitis-run"):
        return [shutil.which("vitis-run"), "--mode", "hls", "--tcl"]
    return None


def commands(out: Path, tops: list[str]) -> list[str]:
    """The shell commands that run every script (for a machine that has Vitis HLS)."""
    return [f"cd {out} && vitis_hls -f {t}.tcl" for t in tops]


def write_project(out, board: str, model, tops=None, steps=None, clock_ns: float | None = None,
                  model_name: str | None = None, force: bool = True) -> dict:
    """Write the Vitis HLS project directory ``out`` atomically. An existing ``out`` is replaced only when it
    is empty or was written by this function (else MmfreeError), Vitis results inside it included; with
    ``force=False`` (the CLI without ``--force``) an earlier project is refused too.

    ``board``: a name of :data:`BOARDS`; ``model``: the IntModel the vectors and buffer sizes come from;
    ``tops``/``steps``: subsets of :data:`TOPS`/:data:`STEPS` (default all); ``clock_ns``: the target
    clock (default: the board's). Returns the summary also written to ``manifest.json``.
    """
    from mmfree.atomic import output_dir

    b = board_part(board)
    tops, steps = _tops(tops), _steps(steps)
    clock = b.clock_ns if clock_ns is None else float(clock_ns)
    if not 0.5 <= clock <= 100:
        raise MmfreeError(f"clock period {clock} ns is outside 0.5 .. 100 ns")
    out = Path(out).resolve()
    if any(ch.isspace() for ch in str(out)):
        raise MmfreeError(f"the output path {out} contains whitespace; the Vitis test bench arguments cannot "
                          "carry it: choose a path without spaces")
    check_out(out, force, inputs=[model.path])
    limits = SP.limit_defines(model.dims.d, model.dims.inter)
    vectors = make_vectors(model)
    sources = list(C.KERNEL_SOURCES)
    summary = {"generator": GENERATOR, "board": b.name, "part": b.part, "clock_ns": clock, "tops": tops, "steps": steps,
               "limits": limits, "model": model_name, "spec_version": N.SPEC_VERSION,
               "dims": {"d": model.dims.d, "inter": model.dims.inter, "vocab": model.dims.vocab},
               "act_frac": model.act_frac, "mmfree": __version__, "sources": sources, "scripts": {},
               "commands": commands(out, tops)}
    with output_dir(out, GENERATOR.removeprefix("mmfree ")) as tmp:
        src = tmp / "src"
        src.mkdir(parents=True)
        for n in C.HEADERS + C.KERNEL_SOURCES + [C.TB_SOURCE]:
            shutil.copyfile(C.SRC_DIR / n, src / n)
        (src / SP.HEADER_NAME).write_text(SP.header_text())
        for top in tops:
            arrays, scalars = vectors[top]
            vdir = tmp / "vectors" / top
            vdir.mkdir(parents=True)
            for name, a in arrays.items():
                (vdir / f"{name}.bin").write_bytes(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
            (vdir / "scalars.txt").write_text("".join(f"{k} {int(v)}\n" for k, v in scalars.items()))
            defines = {**limits, **_depths(top, arrays)}
            (tmp / f"{top}.tcl").write_text(tcl_text(top, b, defines, steps, clock, sources))
            summary["scripts"][top] = {"tcl": f"{top}.tcl", "defines": defines}
        (tmp / "manifest.json").write_text(json.dumps(summary, indent=1) + "\n")
        (tmp / "README.txt").write_text(
            f"Vitis HLS projects for the mmfree kernels on {b.name} ({b.part}), written by `mmfree hls synth`.\n"
            "Run on a machine with Vitis HLS (each script: csim, csynth, cosim, export as IP to ip/):\n\n"
            + "".join(f"  vitis_hls -f {t}.tcl\n" for t in tops)
            + "\nVitis 2024.2 and later: vitis-run --mode hls --tcl TOP.tcl\n"
            "Choose steps with MMFREE_HLS_STEPS, e.g. MMFREE_HLS_STEPS=\"csim csynth\".\n")
    summary["out"] = str(out)
    return summary


def run_vitis(out, tops: list[str], log=print) -> list[dict]:
    """Run each top's script with Vitis HLS in ``out`` (logs in ``out/logs``). Returns one result per top;
    raises MmfreeError when Vitis HLS is not on PATH."""
    tool = vitis_tool()
    if tool is None:
        raise MmfreeError("vitis_hls is not on PATH (`source <Xilinx>/Vitis/<version>/settings64.sh`)")
    out = Path(out)
    (out / "logs").mkdir(exist_ok=True)
    results = []
    for top in tops:
        cmd = tool + [f"{top}.tcl"]
        logf = out / "logs" / f"{top}.log"
        log(f"running {' '.join(cmd)} (log: {logf})")
        with open(logf, "w") as fh:
            rc = subprocess.run(cmd, cwd=out, stdout=fh, stderr=subprocess.STDOUT).returncode
        results.append({"top": top, "command": cmd, "returncode": rc, "log": str(logf)})
        if rc != 0:
            log(f"{top}: Vitis HLS failed (exit {rc}); see {logf}")
    return results

