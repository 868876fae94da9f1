"""Modeled FPGA power and energy per token (labeled "modeled"; docs/energy.md lists every coefficient).

    P = P_static(part) + P_ps(board) + P_dynamic(PL) + P_ddr
    P_dynamic = clock_MHz x sum_r count_r x c_r x activity_r      (r: LUT, FF, BRAM36, URAM, DSP)
    P_ddr     = DDR bytes per second x e_ddr (J/byte)

* counts: :func:`mmfree.sim.perf.estimate_resources` (Yosys unit estimates composed for the build);
* tokens/s and DDR bytes/s: :func:`mmfree.sim.perf.predict`;
* coefficients ``c_r`` (microwatts per MHz per resource at activity 1) and ``e_ddr``: :data:`COEFFS`, per
  family, **assumptions** of Xilinx-Power-Estimator order (XPE was not run here);
* activity: the toggle rate of the data the datapath really sees, measured on the default model's packed
  weights and activation codes (:func:`measure_activity`, recorded in boards/data/activity.json with the
  command), times each unit's duty cycle from the performance model (the share of the pass it works);
* static, PS and board idle power: the board file's ``power`` section (``pl_static_w``, ``ps_w``,
  ``board_idle_w`` with their sources).

``joules_per_token`` is the whole boundary (board idle + PL dynamic + DDR traffic energy) where the board
file gives ``board_idle_w``, else chip-level (PL static + PS + dynamic + DDR); ``joules_per_token_above_idle``
counts the dynamic PL and DDR energy only.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from mmfree import MmfreeError

ROOT = Path(str(resources.files("mmfree.boards")))
ACTIVITY_FILE = ROOT / "data" / "activity.json"

#: Dynamic-power coefficients: microwatts per MHz per resource at activity 1.0 (every output toggling every
#: cycle; routing included in LUT/FF), and DDR energy per byte moved. Assumptions, see docs/energy.md.
COEFFS = {
    "xcup": {"lut": 0.8, "ff": 0.16, "bram36": 6.0, "uram": 10.0, "dsp": 4.0, "ddr_j_per_byte": 160e-12,
             "source": "assumption: XPE-order 16 nm UltraScale+ values (LUT+routing ~0.1 uW/MHz at 12.5 % "
                       "toggle); DDR4 ~20 pJ/bit with PHY and controller"},
    "xc7": {"lut": 1.3, "ff": 0.26, "bram36": 10.0, "uram": 0.0, "dsp": 6.5, "ddr_j_per_byte": 240e-12,
            "source": "assumption: XPE-order 28 nm 7-series values (~1.6x UltraScale+); DDR3 ~30 pJ/bit"},
}


def measure_activity(model: str = "default") -> dict:
    """Toggle rates of the datapath's inputs, measured on a real model's data:

    * ``weight_bus``: fraction of the 128 bus bits that flip between consecutive beats of the packed
      weight stream (every BitLinear of the model, in image order) - the toggle rate of the weight queues,
      the trit decoders' inputs and the AXI read data path;
    * ``nonzero_trits``: fraction of non-zero weights (the add/subtract lanes that switch; zero trits skip);
    * ``codes``: fraction of bits that flip between consecutive int8 activation codes of a token vector
      (the code memories and the lanes' operand inputs), from the integer reference on the first layer's
      i-projection input of a short prompt.
    """
    from mmfree.pymodel import numerics as N
    from mmfree.pymodel.intmodel import open_int_model

    im, _ = open_int_model(model)
    flips = bits = 0
    nz = total = 0
    for spec in im.bitlinear_specs.values():
        raw = np.ascontiguousarray(im.tensor(spec.w)).view(np.uint8)
        beats = raw.reshape(-1, 16)
        x = np.bitwise_xor(beats[1:], beats[:-1])
        flips += int(np.unpackbits(x).sum())
        bits += x.size * 8
        t = N.unpack_ternary(np.asarray(im.tensor(spec.w)), spec.K)
        nz += int(np.count_nonzero(t))
        total += t.size
    # activation codes: the integer reference's input codes of one BitLinear on a few tokens
    rng = np.random.default_rng(0)
    d = im.dims.d
    code_flips = code_bits = 0
    for tok in rng.integers(0, im.dims.vocab, 16):
        x = im.embed(np.array([tok]))[0]
        u = np.abs(x).max() or 1
        codes = np.clip(np.round(x.astype(np.float64) / u * 127), -127, 127).astype(np.int8)
        xx = np.bitwise_xor(codes[1:].view(np.uint8), codes[:-1].view(np.uint8))
        code_flips += int(np.unpackbits(xx).sum())
        code_bits += xx.size * 8
    return {"weight_bus": flips / bits, "nonzero_trits": nz / total, "codes": code_flips / max(1, code_bits),
            "model": model, "dims": {"d": d, "inter": im.dims.inter, "layers": im.dims.layers, "vocab": im.dims.vocab}}


def load_activity() -> dict:
    try:
        return json.loads(ACTIVITY_FILE.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MmfreeError(f"{ACTIVITY_FILE} is missing or unreadable ({exc}); regenerate it with "
                          "`python -m mmfree.boards.power_model --record`") from None


_SAIF_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}
_SAIF_SKIP = ("clk", "clock", "rst", "reset", "aclk", "aresetn", "rst_n")


def saif_activity(path, clock_mhz: float) -> dict:
    """Mean toggles per net bit per clock cycle from a SAIF file (Vivado ``write_saif`` / ``report_power``
    input, or any simulator's backward SAIF): ``sum(TC) / (nets x DURATION x TIMESCALE x f_clk)``, clock and
    reset nets left out (as bench/rtl_toggles.py does). Raises MmfreeError naming what is missing."""
    import re

    p = Path(path)
    if not p.is_file():
        raise MmfreeError(f"--activity {path}: no such file (a SAIF file from Vivado or a simulator)")
    text = p.read_text(errors="replace")
    ts = re.search(r"\(TIMESCALE\s+(\d+)\s*([a-z]+)\s*\)", text)
    du = re.search(r"\(DURATION\s+(\d+)\s*\)", text)
    if ts is None or du is None or ts.group(2) not in _SAIF_UNITS:
        raise MmfreeError(f"--activity {path}: no (TIMESCALE n unit) / (DURATION n): not a SAIF file")
    seconds = int(du.group(1)) * int(ts.group(1)) * _SAIF_UNITS[ts.group(2)]
    nets = toggles = 0
    for name, attrs in re.findall(r"\(\s*([^\s()]+)\s+((?:\(\s*[A-Z][A-Z0-9]\s+\d+\s*\)\s*)+)\)", text):
        tc = re.search(r"\(\s*TC\s+(\d+)\s*\)", attrs)
        leaf = name.replace("\\", "").split("/")[-1].split("[")[0].lower()
        if tc is None or leaf in _SAIF_SKIP:
            continue
        nets += 1
        toggles += int(tc.group(1))
    cycles = seconds * clock_mhz * 1e6
    if nets == 0 or cycles <= 0:
        raise MmfreeError(f"--activity {path}: no nets with a TC count, or a zero DURATION")
    return {"mean_toggles_per_bit_per_cycle": toggles / (nets * cycles), "nets": nets, "cycles": cycles,
            "source": f"SAIF {p.name} ({nets} nets, {cycles:.0f} cycles at {clock_mhz:g} MHz)"}


def dynamic_watts(resources: dict, clock_mhz: float, family: str, activity: dict, duty: dict) -> dict:
    """Dynamic PL power by resource class (watts). ``activity``: toggle rates (:func:`measure_activity`);
    ``duty``: fraction of time the matvec engines (``matvec``) and the vector units (``vector``) work."""
    c = COEFFS[family]
    if "rtl_toggle" in activity:
        # simulated: mean toggles per signal bit per busy cycle of the whole RTL (Verilator --coverage-toggle on
        # the default model, bench/rtl_toggles.py); assumed to carry over to bigger models
        a_logic = activity["rtl_toggle"]["mean_toggles_per_bit_per_cycle"]
    else:
        # fallback: the ternary engines toggle with the weight stream while they run
        a_logic = activity["weight_bus"] * duty["matvec"] + activity["codes"] * duty["vector"] * 0.5
    a_mem = 0.5 * max(duty["matvec"], duty["vector"])         # a port enabled about every other cycle
    w = {
        "lut": resources["lut"] * c["lut"] * a_logic * clock_mhz * 1e-6,
        "ff": resources["ff"] * c["ff"] * a_logic * clock_mhz * 1e-6,
        "dsp": resources["dsp"] * c["dsp"] * activity["codes"] * duty["vector"] * clock_mhz * 1e-6,
        "bram36": resources.get("bram36", resources.get("bram36_if_all_bram", 0)) * c["bram36"] * a_mem * clock_mhz * 1e-6,
        "uram": resources.get("uram", 0) * c["uram"] * a_mem * clock_mhz * 1e-6,
    }
    return w


def model_energy(dims, board, clock_mhz: float | None = None, k: int = 1, accept_len: float | None = None,
                 saif: str | None = None) -> dict:
    """One modeled row for ``mmfree energy``: tokens/s, watts, J/token (gross and above idle) of the
    accelerator on ``board`` (a name or Board) for a model shape (anything :func:`mmfree.sim.perf.dims_for`
    takes). ``saif``: a SAIF file whose measured toggle rate replaces the simulated RTL activity of the logic."""
    from mmfree.boardfile import Board, load_board
    from mmfree.sim.perf import predict

    b = board if isinstance(board, Board) else load_board(str(board))
    p = predict(dims, b, clock_mhz, k=k, accept_len=accept_len)
    pw = b.raw.get("power", {})
    for key in ("pl_static_w", "ps_w"):
        if not isinstance(pw.get(key), (int, float)):
            raise MmfreeError(f"board file of {b.name}: field 'power.{key}' is needed for the power model")
    act = load_activity()
    if saif is not None:
        act = {**act, "rtl_toggle": saif_activity(saif, p["clock_mhz"])}
    total = p["cycles_per_pass"]
    ph = p["phases"]
    duty = {"matvec": (ph["weight_stream"] + ph["lm_head"]) / total, "vector": ph["vector"] / total}
    dyn = dynamic_watts(p["resources"], p["clock_mhz"], b.family, act, duty)
    ddr_w = p["ddr_bytes_per_s"] * COEFFS[b.family]["ddr_j_per_byte"]
    above = sum(dyn.values()) + ddr_w
    idle = pw.get("board_idle_w")
    if isinstance(idle, (int, float)):
        gross, boundary = idle + above, "board (modeled: board idle from the board file + PL dynamic + DDR traffic)"
    else:
        gross = pw["pl_static_w"] + pw["ps_w"] + above
        boundary = "chip (modeled: PL static + PS + PL dynamic + DDR traffic; no board idle figure)"
    tps = p["tokens_per_s"]
    return {"backend": "fpga-model", "device": f"{b.name} ({b.part}) at {p['clock_mhz']:g} MHz",
            "tokens_per_s": tps, "watts": gross, "joules_per_token": gross / tps,
            "joules_per_token_above_idle": above / tps, "boundary": boundary,
            "method": "modeled: mmfree.sim.perf + boards/power_model.py (docs/energy.md)"
                      + (f"; logic activity from {act['rtl_toggle']['source']}" if saif else ""), "available": True,
            "reason": "", "label": "modeled",
            "breakdown_w": {**{k: round(v, 4) for k, v in dyn.items()}, "ddr": ddr_w,
                            "pl_static": pw["pl_static_w"], "ps": pw["ps_w"], "board_idle": idle},
            "activity": {**{k: act[k] for k in ("weight_bus", "nonzero_trits", "codes")},
                         "rtl_toggle": act.get("rtl_toggle", {}).get("mean_toggles_per_bit_per_cycle")}, "duty": duty,
            "fits": p["fits"], "problems": p["problems"]}


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m mmfree.boards.power_model",
                                 description="measure the toggle rates of the default model's data (boards/data/activity.json)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--record", action="store_true", help="write boards/data/activity.json")
    args = ap.parse_args(argv)
    a = measure_activity(args.model)
    a["command"] = "python -m mmfree.boards.power_model " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps(a, indent=1))
    if args.record:
        from mmfree.atomic import write_text

        if ACTIVITY_FILE.exists() and "rtl_toggle" in (prev := json.loads(ACTIVITY_FILE.read_text())):
            a["rtl_toggle"] = prev["rtl_toggle"]          # written by bench/rtl_toggles.py --record
        write_text(ACTIVITY_FILE, json.dumps(a, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
