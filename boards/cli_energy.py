"""Command-line glue for ``mmfree energy``: joules per token across backends, each row labeled with what was
measured and where the boundary is (readers: :mod:`mmfree.boards.power`; model: :mod:`mmfree.boards.power_model`)."""

from __future__ import annotations

import sys
from pathlib import Path

from mmfree import MmfreeError
from mmfree.cli import add_subcommand, print_json
from mmfree.cli_args import add_board, add_json, add_model

BACKENDS = ("cpu", "gpu", "fpga-model", "board")
ROW_KEYS = ("backend", "device", "tokens_per_s", "watts", "joules_per_token", "joules_per_token_above_idle",
            "boundary", "method", "available", "reason")
DEFAULT_PROMPTS = ["def ", "import os\n", "class Node:\n    def __init__(self", "for i in range("]


def register(sub) -> None:
    """Add ``mmfree energy`` to the ``mmfree`` parser."""
    p = add_subcommand(
        sub, "energy", _energy, "energy per token across CPU, GPU and FPGA (measured where possible, else modeled)",
        "Generates --tokens tokens after each prompt on every backend asked for and reports tokens/s, average\n"
        "watts and joules per token (gross and above idle), with the measurement boundary and method:\n\n"
        "  cpu         the integer reference on this CPU; energy from RAPL (/sys/class/powercap, package +\n"
        "              dram, counter wrap handled) when readable, else 'unavailable' with the reason\n"
        "              (tokens/s is still measured)\n"
        "  gpu         the float model on CUDA; energy from NVML's total-energy counter (nvidia-ml-py)\n"
        "  fpga-model  the accelerator on --board, modeled: mmfree.sim.perf + boards/power_model.py\n"
        "              (--model may be 370M/1.3B/2.7B here: no weights needed)\n"
        "  board       the accelerator on a PYNQ board: KV260 INA260 (hwmon) or ZCU104 PYNQ rails\n\n"
        "A backend that cannot run gives one row with available=false and the reason; the others still run.\n"
        "Output: a table, --json a list of rows (keys: " + ", ".join(ROW_KEYS) + "), --plot a bar chart PNG.",
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


def cpu_row(model: str, prompts_file, n_tokens: int, rapl_root="/sys/class/powercap") -> dict:
    """Integer reference on this CPU: tokens/s measured; energy from RAPL if readable."""
    from mmfree.boards.power import Rapl, measure_rapl
    from mmfree.pymodel.generate import generate
    from mmfree.pymodel.intmodel import IntBackend, open_int_model
    from mmfree.pymodel.tokenizer import load_tokenizer

    im, tok_dir = open_int_model(model)
    prompts = read_prompts(prompts_file, load_tokenizer(tok_dir))
    backend = IntBackend(im)

    def work():
        n = 0
        for ids in prompts:
            n += len(generate(backend, ids, n_tokens).tokens)
        return n

    device = f"CPU: {_cpu_device()}"
    method = "integer reference (mmfree.pymodel.intmodel, numpy) timed with time.perf_counter"
    rapl = Rapl(rapl_root)
    ok, reason = rapl.available()
    if ok:
        n, m = measure_rapl(work, rapl)
        tps = n / m.seconds
        return {"backend": "cpu", "device": device, "tokens_per_s": tps, "watts": m.watts,
                "joules_per_token": m.total_joules / n, "joules_per_token_above_idle": None,
                "boundary": "CPU package + DRAM (RAPL domains: " + ", ".join(m.joules) + ")",
                "method": method + "; energy: RAPL energy_uj deltas", "available": True,
                "reason": "above-idle needs an idle baseline (not taken)"}
    import time

    t0 = time.perf_counter()
    n = work()
    secs = time.perf_counter() - t0
    row = unavailable("cpu", device, "energy unavailable: " + reason, method, "CPU package + DRAM (RAPL)")
    row["tokens_per_s"] = n / secs
    return row


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


def fpga_model_row(model: str, board: str, clock_mhz, k: int = 1, accept_len: float | None = None) -> dict:
    from mmfree.boards.power_model import model_energy
    from mmfree.sim.perf import dims_for

    row = model_energy(dims_for(model), board, clock_mhz, k=k, accept_len=accept_len)
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


def run(args) -> list[dict]:
    wanted = [x.strip() for x in args.backends.split(",") if x.strip()]
    bad = [x for x in wanted if x not in BACKENDS]
    if bad:
        raise MmfreeError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    if args.tokens < 1:
        raise MmfreeError("--tokens must be >= 1")
    from mmfree.pymodel.config import PRESETS

    rows = []
    for be in wanted:
        try:
            if be in ("cpu", "gpu") and args.model in PRESETS:
                rows.append(unavailable(be, be.upper(), f"--model {args.model} is a shape, not weights: the {be} "
                                        "backend needs a checkpoint or export directory"))
            elif be == "cpu":
                rows.append(cpu_row(args.model, args.prompts, args.tokens))
            elif be == "gpu":
                rows.append(gpu_row(args.model, args.prompts, args.tokens))
            elif be == "fpga-model":
                rows.append(fpga_model_row(args.model, args.board, args.clock_mhz, args.k, args.accept_len))
            else:
                rows.append(board_row(args.board))
        except MmfreeError as exc:
            rows.append(unavailable(be, be, str(exc)))
    return rows


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


def _energy(args) -> int:
    rows = run(args)
    if args.json:
        print_json(rows)
    else:
        print(render(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
