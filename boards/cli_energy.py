"""Command-line glue for ``mmfree energy``: joules per token across backends, each row labeled with what was
measured and where the boundary is (readers: :mod:`mmfree.boards.power`; model: :mod:`mmfree.boards.power_model`)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_board, add_json, add_model

BACKENDS = ("cpu", "gpu", "fpga-model", "board")
ROW_KEYS = ("backend", "device", "tokens_per_s", "watts", "joules_per_token", "joules_per_token_above_idle",
            "boundary", "method", "available", "reason")
COMPARE_KEYS = ("backend", "device", "model", "weights", "tokens_per_s", "watts", "joules_per_token",
                "joules_per_token_above_idle", "idle_watts", "idle_source", "boundary", "method", "reason", "detail",
                "source")
METHODS = ("measured", "modeled", "published", "unavailable")
PUBLISHED_FILE = Path(__file__).resolve().parent / "data" / "published.json"
DEFAULT_PROMPTS = ["def ", "import os\n", "class Node:\n    def __init__(self", "for i in range("]


def register(sub) -> None:
    """Add ``mmfree energy`` to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "energy", _energy, "energy per token across CPU, GPU and FPGA (measured where possible, else modeled)",
        "Generates --tokens tokens after each prompt on every backend asked for and reports tokens/s, average\n"
        "watts and joules per token (gross and above idle), with the measurement boundary and method:\n\n"
        "  cpu         the fast CPU decode (mmfree.hls.fastcpu: the integer reference in C++, 2-bit weights,\n"
        "              exact); energy from --meter, else RAPL (/sys/class/powercap, package + dram, wraps\n"
        "              and resets told apart) when readable and trusted, else 'unavailable' with the reason\n"
        "              (tokens/s is still measured); a shape (370M/1.3B/2.7B) runs random weights\n"
        "  gpu         the float model on CUDA; energy from NVML's total-energy counter (nvidia-ml-py)\n"
        "  fpga-model  the accelerator on --board, modeled: mmfree.sim.perf + boards/power_model.py\n"
        "              (--model may be 370M/1.3B/2.7B here: no weights needed)\n"
        "  board       the accelerator on a PYNQ board: KV260 INA260 (hwmon) or ZCU104 PYNQ rails\n\n"
        "A backend that cannot run gives one row with available=false and the reason; the others still run.\n"
        "Output: a table, --json a list of rows (keys: " + ", ".join(ROW_KEYS) + "), --plot a bar chart PNG.\n\n"
        "--compare: one row per backend and board (keys: " + ", ".join(COMPARE_KEYS) + "); a reading that\n"
        "cannot be trusted (frozen or reset RAPL counters, a sensor failing mid-run, a meter log not covering\n"
        "the run) gives method 'unavailable' with the reason, never a number. For a shape (370M/1.3B/2.7B)\n"
        "the CPU/GPU rows run random weights of that shape and say so.",
    )
    add_model(p, kinds=("default", "export", "checkpoint", "preset"), note="presets: fpga-model only")
    p.add_argument("--backends", default="cpu,gpu,fpga-model,board", help="comma-separated from " + ",".join(BACKENDS))
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: 4 short code prompts)")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate per prompt")
    add_board(p, default="kv260", note="the board of the fpga-model and board rows")
    p.add_argument("--clock-mhz", type=float, default=None, help="fabric clock for fpga-model (default: the board's)")
    p.add_argument("--k", type=int, default=1,
                   help="fpga-model: tokens per pass of the modeled build (speculative verification; default 1)")
    p.add_argument("--accept-len", type=float, default=None,
                   help="fpga-model: tokens emitted per pass, 1..k (measured by bench/speculative.py; default 1)")
    add_json(p, "a JSON list of rows")
    p.add_argument("--plot", default=None, help="write a bar chart of J/token to this PNG")
    p.add_argument("--compare", action="store_true",
                   help="one table over CPU (fast decode), GPU, every board in --boards (modeled and on-board) and the "
                        "published anchors; method is measured | modeled | published | unavailable")
    p.add_argument("--boards", default="kv260,zcu104,pynq-z2", help="--compare: boards for the FPGA rows")
    p.add_argument("--meter", default=None,
                   help="CSV of timestamp,watts (Unix seconds or ISO 8601 with zone) logged by a wall meter or an INA "
                        "sensor during the run: the CPU row's energy is integrated over exactly its time window")
    p.add_argument("--meter-offset", type=float, default=0.0, help="seconds added to the meter log's timestamps")
    p.add_argument("--idle-s", type=float, default=2.0,
                   help="seconds of idle measured with the same source before each measured run (0: not measured)")
    p.add_argument("--idle-w", type=float, default=None, help="state the idle watts instead of measuring them")
    p.add_argument("--activity", default=None, metavar="SAIF",
                   help="fpga-model: a SAIF file (Vivado write_saif, or a simulator's) whose toggle rate replaces the "
                        "simulated RTL activity of the logic in the power model")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of the fast CPU decode (default 1: on a shared machine more threads spin)")


def unavailable(backend: str, device: str, reason: str, method: str = "", boundary: str = "") -> dict:
    return {"backend": backend, "device": device, "tokens_per_s": None, "watts": None, "joules_per_token": None,
            "joules_per_token_above_idle": None, "boundary": boundary, "method": method, "available": False,
            "reason": reason}


def read_prompts(path, tokenizer) -> list[list[int]]:
    texts = DEFAULT_PROMPTS
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MmfreeError(f"--prompts {path}: no such file (one prompt per line)")
        texts = [line.rstrip("\n").replace("\\n", "\n") for line in p.read_text().splitlines() if line.strip()]
        if not texts:
            raise MmfreeError(f"--prompts {path} holds no prompts (one per line)")
    ids = [tokenizer.encode(t) for t in texts]
    if any(not i for i in ids):
        raise MmfreeError("a prompt encodes to no tokens")
    return ids


def _cpu_device() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def compare_row(backend: str, device: str, **kw) -> dict:
    """A row of the --compare table with every key (missing values None / "")."""
    row = {k: None for k in COMPARE_KEYS}
    row.update(backend=backend, device=device, boundary="", method="unavailable", reason="", detail="", source="")
    row.update(kw)
    return row


def open_image(model: str, prompts_file):
    """(IntModel, prompts as token ids, what the weights are) for a checkpoint/export, or random weights of a
    shape (370M / 1.3B / 2.7B) with random prompt ids."""
    import numpy as np

    from mmfree.hls.fastcpu import random_image
    from mmfree.pymodel import layout as LY
    from mmfree.pymodel.config import PRESETS, MMFreeConfig
    from mmfree.pymodel.intmodel import IntModel, open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer

    if model in PRESETS:
        im = IntModel(*random_image(LY.Dims.of(MMFreeConfig.preset(model))))
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, im.vocab_size, 4).tolist() for _ in range(len(DEFAULT_PROMPTS))]
        return im, prompts, f"random weights of the {model} shape (tokens/s only; no checkpoint of that size is here)"
    im, tok_dir = open_int_model(model)
    return im, read_prompts(prompts_file, load_tokenizer(tok_dir)), "checkpoint"


def measure_fields(work, measure, why_not: str, idle_s: float, idle_w) -> dict:
    """Run ``work() -> tokens`` under ``measure`` (a :mod:`mmfree.boards.power` ``measure_*`` bound to its
    reader, or None with ``why_not``): tokens/s always; energy, idle and above-idle J/token when trusted."""
    from mmfree.boards import power as PW

    rec = {}

    def fn():
        t0 = time.perf_counter()
        rec["n"] = work()
        rec["secs"] = time.perf_counter() - t0

    if measure is None:
        fn()
        return {"tokens_per_s": rec["n"] / rec["secs"], "method": "unavailable", "reason": why_not}
    try:
        idle, idle_src = idle_w, "stated (--idle-w)"
        if idle is None and idle_s > 0:
            idle, idle_src = PW.measure_idle(measure, idle_s), f"measured, {idle_s:g} s of sleep before the run"
        _, m = measure(fn)
    except PW.Untrusted as exc:
        if "n" not in rec:
            fn()
        return {"tokens_per_s": rec["n"] / rec["secs"], "method": "unavailable",
                "reason": f"energy reading not trusted: {exc}"}
    n = rec["n"]
    above = None if idle is None else (m.total_joules - idle * m.seconds) / n
    return {"tokens_per_s": n / m.seconds, "watts": m.watts, "joules_per_token": m.total_joules / n,
            "joules_per_token_above_idle": above, "idle_watts": idle,
            "idle_source": idle_src if idle is not None else "not measured (--idle-s 0)", "method": "measured"}


def cpu_source(meter, meter_offset: float, rapl_root="/sys/class/powercap"):
    """(measure function or None, boundary, reason when None): the meter log when given, else RAPL."""
    from mmfree.boards import power as PW

    if meter is not None:
        m = PW.Meter(meter, meter_offset)
        return m.measure, "what the meter measures (wall socket or sensor rail, stated by its user)", ""
    rapl = PW.Rapl(rapl_root)
    ok, reason = rapl.available()
    if not ok:
        return None, "CPU package + DRAM (RAPL)", f"energy unavailable: {reason}; give --meter FILE for a wall meter"
    return (lambda fn: PW.measure_rapl(fn, rapl)), "CPU package + DRAM (RAPL: " + ", ".join(rapl.domains()) + ")", ""


def cpu_fast_row(model: str, prompts_file, n_tokens: int, threads: int = 1, meter=None, meter_offset: float = 0.0,
                 idle_s: float = 2.0, idle_w=None, rapl_root="/sys/class/powercap") -> dict:
    """The fast CPU decode (:mod:`mmfree.hls.fastcpu`, exact integer reference) on this CPU: tokens/s
    measured; energy from --meter or RAPL when trusted, else unavailable with the reason."""
    from mmfree.hls.fastcpu import FastBackend, FastIntModel
    from mmfree.pymodel.generate import generate

    im, prompts, weights = open_image(model, prompts_file)
    fast = FastIntModel(im, threads=threads)
    fast.step(fast.initial_state(), prompts[0][0])                        # warm-up (first touch of the weights)
    backend = FastBackend(fast)

    def work():
        return sum(len(generate(backend, ids, n_tokens).tokens) for ids in prompts)

    measure, boundary, why_not = cpu_source(meter, meter_offset, rapl_root)
    fields = measure_fields(work, measure, why_not, idle_s, idle_w)
    simd = "AVX2" if fast.lib.simd else "portable loop"
    return compare_row("cpu", f"CPU: {_cpu_device()}", model=model, weights=weights, boundary=boundary,
                       detail=f"fast CPU decode (mmfree.hls.fastcpu: 2-bit ternary GEMV, {simd}, {threads} thread(s); "
                              f"exact integer reference), {len(prompts)} prompts x {n_tokens} tokens, greedy", **fields)


def cpu_row(model: str, prompts_file, n_tokens: int, rapl_root="/sys/class/powercap", threads: int = 1) -> dict:
    """The classic ``mmfree energy`` cpu row (free-text method), now from the fast CPU decode."""
    r = cpu_fast_row(model, prompts_file, n_tokens, threads, idle_s=0.0, rapl_root=rapl_root)
    out = unavailable("cpu", r["device"], r["reason"], r["detail"], r["boundary"])
    out.update({k: r[k] for k in ("tokens_per_s", "watts", "joules_per_token", "joules_per_token_above_idle")})
    out["available"] = r["method"] == "measured"
    if r["weights"] != "checkpoint":
        out["reason"] = (out["reason"] + "; " if out["reason"] else "") + r["weights"]
    return out


def gpu_row(model: str, prompts_file, n_tokens: int, counter=None) -> dict:
    """Float model on CUDA with NVML energy (counter injectable for tests)."""
    from mmfree.boards.power import Nvml, measure_nvml

    nv = Nvml(counter)
    ok, reason = nv.available()
    method = "float model (mmfree.pymodel, torch CUDA); energy: NVML total-energy counter"
    if not ok:
        return unavailable("gpu", "GPU", reason, method, "GPU board (NVML)")
    try:
        import torch
    except ImportError:
        return unavailable("gpu", nv.device, "torch is not installed", method, "GPU board (NVML)")
    if counter is None and not torch.cuda.is_available():
        return unavailable("gpu", nv.device, "torch has no CUDA device", method, "GPU board (NVML)")
    from mmfree.pymodel.checkpoint import load_model, resolve
    from mmfree.pymodel.generate import TorchBackend, generate
    from mmfree.pymodel.tokenizer import load_tokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = load_model(model, device=dev)
    prompts = read_prompts(prompts_file, load_tokenizer(resolve(model)))
    backend = TorchBackend(m)

    def work():
        return sum(len(generate(backend, ids, n_tokens).tokens) for ids in prompts)

    try:
        n, meas = measure_nvml(work, nv)
    except MmfreeError as exc:
        return unavailable("gpu", nv.device, str(exc), method, "GPU board (NVML)")
    return {"backend": "gpu", "device": f"GPU: {nv.device}", "tokens_per_s": n / meas.seconds, "watts": meas.watts,
            "joules_per_token": meas.total_joules / n, "joules_per_token_above_idle": None,
            "boundary": "GPU board (NVML)", "method": method, "available": True,
            "reason": "above-idle needs an idle baseline (not taken)"}


def fpga_model_row(model: str, board: str, clock_mhz, k: int = 1, accept_len: float | None = None,
                   saif: str | None = None) -> dict:
    from mmfree.boards.power_model import model_energy
    from mmfree.sim.perf import dims_for

    row = model_energy(dims_for(model), board, clock_mhz, k=k, accept_len=accept_len, saif=saif)
    if k > 1:
        row["method"] += f"; k = {k} speculative passes, {accept_len or 1:g} tokens emitted per pass (assumed)"
    if not row["fits"]:
        row["reason"] = "modeled, but the model does not fit: " + "; ".join(row["problems"])
    return row


def board_row(board_name: str, hwmon_root="/sys/class/hwmon") -> dict:
    from mmfree.boardfile import load_board
    from mmfree.boards.power import Hwmon, PynqRails

    b = load_board(board_name)
    method = b.raw.get("power", {}).get("method", "none")
    boundary = "whole board"
    if method == "hwmon":
        ok, reason = Hwmon(hwmon_root).available()
    elif method == "pynq_rails":
        ok, reason = PynqRails().available()
    else:
        ok, reason = False, f"{b.name} has no on-board power sensor (board file: power.method = none)"
    if ok:
        reason = "the sensor is readable, but no accelerator bitstream is loaded on this machine (run on the board " \
                 "with `mmfree run`)"
    return unavailable("board", f"{b.name} ({b.part})", reason, f"{method} sensor", boundary)


def gpu_fast_row(model: str, prompts_file, n_tokens: int, counter=None, device: str | None = None) -> dict:
    """The GPU decode path (:class:`mmfree.pymodel.fastgpu.TorchIntModel`: ternary weights cached on the
    device, the step in one CUDA graph) with NVML energy; unavailable with the reason where there is no GPU.
    ``counter``/``device`` are for tests (an NVML counter function, a torch device other than cuda)."""
    from mmfree.boards import power as PW

    nv = PW.Nvml(counter)
    ok, reason = nv.available()
    boundary = "GPU board (NVML total-energy counter)"
    if not ok:
        return compare_row("gpu", "GPU", model=model, boundary=boundary, reason=reason,
                           detail="GPU decode path: mmfree.pymodel.fastgpu (not run: no GPU here)")
    import torch

    dev = device or "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        return compare_row("gpu", f"GPU: {nv.device}", model=model, boundary=boundary,
                           reason="torch has no CUDA device (a CPU-only torch build?)")
    from mmfree.pymodel.fastgpu import TorchIntBackend, TorchIntModel
    from mmfree.pymodel.generate import generate

    im, prompts, weights = open_image(model, prompts_file)
    tm = TorchIntModel(im, device=dev)
    tm.step(tm.initial_state(), prompts[0][0])                          # warm-up, captures the CUDA graph
    backend = TorchIntBackend(tm)

    def work():
        return sum(len(generate(backend, ids, n_tokens).tokens) for ids in prompts)

    fields = measure_fields(work, lambda fn: PW.measure_nvml(fn, nv), "", 0.0, None)
    return compare_row("gpu", f"GPU: {nv.device}", model=model, weights=weights, boundary=boundary,
                       detail=f"GPU decode path (mmfree.pymodel.fastgpu on {dev}: float32 ternary cache, exact; CUDA "
                              f"graph: {tm.graphs}), {len(prompts)} prompts x {n_tokens} tokens", **fields)


def fpga_compare_row(model: str, board: str, clock_mhz=None, k: int = 1, accept_len=None, saif=None) -> dict:
    """A modeled FPGA row of --compare (perf model + power model)."""
    r = fpga_model_row(model, board, clock_mhz, k, accept_len, saif)
    keep = ("tokens_per_s", "watts", "joules_per_token", "joules_per_token_above_idle", "boundary")
    return compare_row("fpga-model", r["device"], model=model, weights="none needed (modeled)", method="modeled",
                       reason=r["reason"], detail=r["method"], idle_watts=r["breakdown_w"]["board_idle"],
                       idle_source="board file power.board_idle_w" if r["breakdown_w"]["board_idle"] else "",
                       **{k2: r[k2] for k2 in keep})


def board_compare_row(model: str, board: str) -> dict:
    r = board_row(board)
    return compare_row("board", r["device"], model=model, boundary=r["boundary"], reason=r["reason"],
                       detail=f"measured on the board ({r['method']}; run `mmfree doctor` / `mmfree run` there)")


def published_rows() -> list[dict]:
    """The published anchors (boards/data/published.json), method 'published', each with its source."""
    data = json.loads(PUBLISHED_FILE.read_text())
    return [compare_row(r["backend"], r["device"], method="published", weights="n/a (published figure)",
                        **{k: v for k, v in r.items() if k not in ("backend", "device")}) for r in data["rows"]]


def _guarded(backend: str, fn, model: str) -> dict:
    try:
        return fn()
    except MmfreeError as exc:
        return compare_row(backend, backend, model=model, reason=str(exc))


def compare(args) -> list[dict]:
    """Every row of ``mmfree energy --compare``."""
    boards = [b.strip() for b in args.boards.split(",") if b.strip()]
    if not boards:
        raise MmfreeError("--boards is empty; name at least one board (kv260,zcu104,pynq-z2)")
    m = args.model
    rows = [_guarded("cpu", lambda: cpu_fast_row(m, args.prompts, args.tokens, args.threads, args.meter,
                                                 args.meter_offset, args.idle_s, args.idle_w), m),
            _guarded("gpu", lambda: gpu_fast_row(m, args.prompts, args.tokens), m)]
    rows += [_guarded("fpga-model", lambda b=b: fpga_compare_row(m, b, args.clock_mhz, args.k, args.accept_len,
                                                                    args.activity), m)
             for b in boards]
    rows += [_guarded("board", lambda b=b: board_compare_row(m, b), m) for b in boards]
    return rows + published_rows()


def check_args(args) -> None:
    """The numeric flags, checked before any work (one clear error each)."""
    import math

    if args.tokens < 1:
        raise MmfreeError("--tokens must be >= 1")
    if not isinstance(args.threads, int) or args.threads < 1:
        raise MmfreeError(f"--threads must be >= 1, got {args.threads}")
    if args.clock_mhz is not None and not (math.isfinite(args.clock_mhz) and args.clock_mhz > 0):
        raise MmfreeError(f"--clock-mhz must be a finite clock in MHz > 0, got {args.clock_mhz}")
    if args.k < 1:
        raise MmfreeError(f"--k must be >= 1 tokens per pass, got {args.k}")
    if args.accept_len is not None and not (math.isfinite(args.accept_len) and 1 <= args.accept_len <= args.k):
        raise MmfreeError(f"--accept-len must be in 1..--k ({args.k}), got {args.accept_len}")
    if not (math.isfinite(args.idle_s) and args.idle_s >= 0):
        raise MmfreeError(f"--idle-s must be a finite number of seconds >= 0, got {args.idle_s}")
    if args.idle_w is not None and not (math.isfinite(args.idle_w) and args.idle_w >= 0):
        raise MmfreeError(f"--idle-w must be finite watts >= 0, got {args.idle_w}")
    if not math.isfinite(args.meter_offset):
        raise MmfreeError(f"--meter-offset must be finite seconds, got {args.meter_offset}")
    if args.activity is not None and not Path(args.activity).is_file():
        raise MmfreeError(f"--activity {args.activity}: no such file (a SAIF file from Vivado or a simulator)")
    if args.meter is not None:
        from mmfree.boards.power import Meter

        Meter(args.meter, args.meter_offset).read()          # a malformed log is an error before any work


def run(args) -> list[dict]:
    check_args(args)
    if args.compare:
        return compare(args)
    wanted = [x.strip() for x in args.backends.split(",") if x.strip()]
    bad = [x for x in wanted if x not in BACKENDS]
    if bad:
        raise MmfreeError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    from mmfree.pymodel.config import PRESETS

    rows = []
    for be in wanted:
        try:
            if be == "gpu" and args.model in PRESETS:
                rows.append(unavailable(be, be.upper(), f"--model {args.model} is a shape, not weights: the classic gpu "
                                        "row needs a checkpoint (mmfree energy --compare runs random weights)"))
            elif be == "cpu":
                rows.append(cpu_row(args.model, args.prompts, args.tokens, threads=args.threads))
            elif be == "gpu":
                rows.append(gpu_row(args.model, args.prompts, args.tokens))
            elif be == "fpga-model":
                rows.append(fpga_model_row(args.model, args.board, args.clock_mhz, args.k, args.accept_len,
                                           args.activity))
            else:
                rows.append(board_row(args.board))
        except MmfreeError as exc:
            rows.append(unavailable(be, be, str(exc)))
    return rows


def render_compare(rows: list[dict]) -> str:
    """The --compare table as text: one line per row, the reason / source under it."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'backend':<15}{'device':<40}{'tok/s':>9}{'W':>8}{'J/token':>10}{'J/tok>idle':>11}  "
             f"{'method':<12}boundary"]
    for r in rows:
        lines.append(f"{r['backend']:<15}{r['device'][:39]:<40}{f(r['tokens_per_s'], '.2f'):>9}{f(r['watts'], '.2f'):>8}"
                     f"{f(r['joules_per_token'], '.4f'):>10}{f(r['joules_per_token_above_idle'], '.4f'):>11}  "
                     f"{r['method']:<12}{r['boundary']}")
        shown = [("reason", "reason"), ("source", "source")]
        shown += [("weights", "weights")] if r["backend"] in ("cpu", "gpu") and r["weights"] != "checkpoint" else []
        shown += [("model", "model")] if r["method"] == "published" else []
        for key, label in shown:
            if r.get(key):
                lines.append(f"{'':<15}{label}: {r[key]}")
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'backend':<11}{'device':<34}{'tok/s':>9}{'W':>8}{'J/token':>10}{'J/tok>idle':>11}  boundary / method"]
    for r in rows:
        lines.append(f"{r['backend']:<11}{r['device'][:33]:<34}{f(r['tokens_per_s'], '.2f'):>9}{f(r['watts'], '.2f'):>8}"
                     f"{f(r['joules_per_token'], '.4f'):>10}{f(r['joules_per_token_above_idle'], '.4f'):>11}  "
                     f"{r['boundary']}; {r['method']}")
        if r["reason"]:
            lines.append(f"{'':<11}{'unavailable: ' if not r['available'] else 'note: '}{r['reason']}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MmfreeError("--plot needs matplotlib: pip install 'mmfree[plot]'") from None
    from mmfree.atomic import atomic_path

    have = [r for r in rows if r["joules_per_token"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = [f"{r['backend']}\n{r['device'][:24]}" for r in have]
    ax.bar(range(len(have)), [r["joules_per_token"] for r in have], color="tab:blue", label="gross")
    ax.bar(range(len(have)), [r["joules_per_token_above_idle"] or 0 for r in have], color="tab:orange",
           width=0.5, label="above idle")
    ax.set_xticks(range(len(have)), labels, fontsize=7)
    ax.set_ylabel("J/token")
    missing = [r["backend"] for r in rows if r["joules_per_token"] is None]
    ax.set_title("energy per token" + (f" (unavailable: {', '.join(missing)})" if missing else ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


STYLE = {"measured": dict(color="tab:green", hatch=""), "modeled": dict(color="tab:blue", hatch="//"),
         "published": dict(color="0.6", hatch="..")}


def plot_compare(rows: list[dict], path: str, model: str) -> None:
    """Log-scale J/token by device (bars: gross, styled by method; black ticks: above idle); rows with no
    J/token are listed under the chart with the reason."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise MmfreeError("--plot needs matplotlib: pip install 'mmfree[plot]'") from None
    from matplotlib.ticker import LogLocator, NullFormatter

    from mmfree.atomic import atomic_path

    have = [r for r in rows if r["joules_per_token"]]
    missing = [r for r in rows if not r["joules_per_token"]]
    height = 0.42 * len(have) + 1.6 + 0.13 * len(missing)
    fig, ax = plt.subplots(figsize=(8, height))
    y = list(range(len(have)))[::-1]
    for yi, r in zip(y, have):
        st = STYLE[r["method"]]
        ax.barh(yi, r["joules_per_token"], color=st["color"], hatch=st["hatch"], edgecolor="k", linewidth=0.4)
        if r["joules_per_token_above_idle"]:
            ax.plot(r["joules_per_token_above_idle"], yi, marker="|", color="k", markersize=14, mew=2)
        if r["tokens_per_s"]:
            ax.text(r["joules_per_token"] * 1.08, yi, f"{r['tokens_per_s']:.3g} tok/s", va="center", fontsize=6)
    labels = [f"{r['backend']}: {r['device'][:44]}" + (" (does not fit)" if r["method"] == "modeled" and r["reason"]
                                                        else "") for r in have]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    js = [r["joules_per_token"] for r in have] + [r["joules_per_token_above_idle"] or 1 for r in have]
    ax.set_xlim(10 ** math.floor(math.log10(min(js))), 10 ** math.ceil(math.log10(max(js) * 2)))
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("J/token (log scale; black tick: above idle)")
    ax.set_title(f"energy per token, model {model}", fontsize=9)
    ax.legend(handles=[Patch(facecolor=v["color"], hatch=v["hatch"], edgecolor="k", label=k) for k, v in STYLE.items()],
              fontsize=7, loc="upper right")
    note = "\n".join(f"no J/token - {r['backend']} {r['device'][:30]}: {(r['reason'] or r['detail'])[:100]}"
                     for r in missing)
    bottom = (0.12 * len(missing) + 0.1) / height if note else 0
    if note:
        fig.text(0.01, 0.01, note, fontsize=5.5, va="bottom")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _energy(args) -> int:
    rows = run(args)
    if args.json:
        print_json(rows)
    else:
        print(render_compare(rows) if args.compare else render(rows))
    if args.plot:
        plot_compare(rows, args.plot, args.model) if args.compare else plot(rows, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
