"""Bounded load test of `mmfree serve` on loopback: N concurrent clients x M requests each, per backend.

For each backend a real server process (`mmfree serve --port 0` on 127.0.0.1) is started. First every request
is sent alone, one after the other: its *single-request answer* (and the single-stream throughput). Then N
clients (the official OpenAI client, asyncio) send M requests each at the same time; every response must equal
its single-request answer token for token, and no request may fail. Then the server gets SIGTERM and must exit
0. Requests alternate greedy and sampled (temperature 0.8, a seed per request) over 8 code prompts; one warm-up
request per server is not timed.

Reported per backend: requests, errors, mismatches, p50/p99 latency (send to last byte), aggregate tokens/s
under load, single-stream tokens/s, the model's weight passes under load and one at a time (each response's
``mmfree`` passes summed; with ``--max-streams`` the passes the server's batch loop ran, from ``/health``),
wall time. The bench exits 1 on any error or mismatch. ``board-sim-streams``: the simulated board serving up to 4
requests per weight pass (``--max-streams 4``, no drafts).

    python bench/serve_load.py [--backends int,board-sim] [--clients 4] [--requests 4] [--max-tokens 16]
                               [--deadline 1200] [--record] [--json]

Bounded: clients <= 32, requests <= 32, max tokens <= 256, everything within --deadline seconds (the servers
are killed past it). --record writes the table into docs/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, write_section  # noqa: E402

BACKENDS = {"int": ["--backend", "int"], "board-sim": ["--backend", "board", "--board", "sim"],
            "float": ["--backend", "float"], "int-nodraft": ["--backend", "int", "--draft", "none"],
            "board-sim-streams": ["--backend", "board", "--board", "sim", "--max-streams", "4"]}
PROMPTS = ["def ", "import ", "class ", "for i in ", "return ", "if x", "# ", "print("]
MODEL = "mmfree-default"


def requests_for(n: int, max_tokens: int) -> list[dict]:
    """``n`` request bodies: prompt i mod 8, greedy for even i, temperature 0.8 with seed i for odd i."""
    return [dict(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens,
                 temperature=0.0 if i % 2 == 0 else 0.8, seed=i) for i in range(n)]


def start_server(flags: list[str], max_queue: int, max_tokens: int, deadline: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mmfree.cli", "serve", "--port", "0", "--max-queue", str(max_queue),
           "--max-tokens", str(max_tokens), "--request-timeout", str(max(10.0, deadline - time.monotonic())), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    line = proc.stdout.readline()
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start ({' '.join(cmd)}): {line!r} {proc.stderr.read()[-2000:]}")
    return proc, "http://127.0.0.1:" + line.split("127.0.0.1:")[1].split()[0]


async def one(client, body: dict, passes: list | None = None) -> tuple[list[int] | None, float, str | None]:
    """(token ids or None, seconds, error or None) of one completion; its weight passes (prefill + decode, the
    response's ``mmfree`` object) are appended to ``passes``."""
    t0 = time.perf_counter()
    try:
        res = await client.completions.create(model=MODEL, **body)
        if passes is not None:
            m = res.model_extra.get("mmfree") or {}
            passes.append(m.get("prefill_passes", 0) + m.get("decode_passes", 0))
        return res.choices[0].model_extra["token_ids"], time.perf_counter() - t0, None
    except Exception as exc:                              # counted, reported, and the bench fails
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


def batch_passes(url: str) -> int:
    """Weight passes the server's multi-stream batch loop has run (``/health``; 0 with one stream at a time)."""
    import httpx

    return int(httpx.get(url + "/health", timeout=30).json().get("batch_passes", 0))


async def load(url: str, reqs: list[dict], clients: int, per_client: int, timeout: float) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout) as ac:
        await one(ac, dict(reqs[0], max_tokens=2))        # warm-up (weights unpacked, caches filled): not timed
        single_passes, load_passes = [], []
        b0 = batch_passes(url)
        t0 = time.perf_counter()
        singles = [await one(ac, r, single_passes) for r in reqs]        # alone, one after the other
        single_s = time.perf_counter() - t0
        b1 = batch_passes(url)

        async def client_run(c: int):
            return [(i, await one(ac, reqs[i], load_passes)) for i in range(c * per_client, (c + 1) * per_client)]

        t0 = time.perf_counter()
        runs = await asyncio.gather(*[client_run(c) for c in range(clients)])
        load_s = time.perf_counter() - t0
        b2 = batch_passes(url)
    batched = b2 > b0                                     # a --max-streams server: its loop counts shared passes
    return {"singles": singles, "single_s": single_s, "results": [x for run in runs for x in run], "load_s": load_s,
            "single_passes": b1 - b0 if batched else sum(single_passes),
            "load_passes": b2 - b1 if batched else sum(load_passes)}


def percentile(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_backend(name: str, args, deadline: float) -> dict:
    reqs = requests_for(args.clients * args.requests, args.max_tokens)
    proc, url = start_server(BACKENDS[name], len(reqs), args.max_tokens, deadline)
    try:
        out = asyncio.run(asyncio.wait_for(load(url, reqs, args.clients, args.requests,
                                                deadline - time.monotonic()),
                                           timeout=max(1.0, deadline - time.monotonic())))
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=max(5.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    errors = [e for _, (_, _, e) in out["results"] if e] + [e for _, _, e in out["singles"] if e]
    mismatches = sum(1 for i, (ids, _, e) in out["results"] if not e and ids != out["singles"][i][0])
    lat = [s for _, (_, s, e) in out["results"] if not e]
    toks = sum(len(ids) for _, (ids, _, e) in out["results"] if not e)
    single_toks = sum(len(ids) for ids, _, e in out["singles"] if not e)
    return {"backend": name, "clients": args.clients, "requests_per_client": args.requests,
            "max_tokens": args.max_tokens, "requests": len(out["results"]), "errors": len(errors),
            "error_examples": errors[:3], "mismatches": mismatches, "exit_code": rc,
            "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "load_tokens": toks,
            "load_s": out["load_s"], "tokens_per_s": toks / out["load_s"] if out["load_s"] > 0 else 0.0,
            "single_tokens_per_s": single_toks / out["single_s"] if out["single_s"] > 0 else 0.0,
            "load_passes": out["load_passes"], "single_passes": out["single_passes"]}


def render(rows: list[dict]) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Measured on this machine ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared "
             f"with other jobs, load average {load:.1f} at the end), loopback, the embedded default model, trigram "
             "drafts on (int, board-sim; board-sim-streams: --max-streams 4, no drafts), one warm-up request per "
             "server not timed; board-sim rows run the ISA emulator (emulated: its tokens/s are this CPU's, not "
             "the FPGA's; the weight passes are what the accelerator would run). Command:",
             "", f"    {command_line()}", "",
             "| backend | clients x requests | max tokens | errors | mismatches | p50 latency | p99 latency | "
             "tokens/s under load | tokens/s one at a time | weight passes under load | one at a time | SIGTERM exit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['clients']} x {r['requests_per_client']} | {r['max_tokens']} | "
                     f"{r['errors']} | {r['mismatches']} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
                     f"{r['tokens_per_s']:.1f} | {r['single_tokens_per_s']:.1f} | {r['load_passes']} | "
                     f"{r['single_passes']} | {r['exit_code']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="int,board-sim", help=f"comma-separated: {', '.join(BACKENDS)}")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (1..32)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (1..32)")
    ap.add_argument("--max-tokens", type=int, default=16, help="completion tokens per request (1..256)")
    ap.add_argument("--deadline", type=float, default=1200.0, help="seconds for the whole bench (servers killed past it)")
    ap.add_argument("--record", action="store_true", help="write the table into docs/serve.md")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        ap.error(f"--backends: unknown {bad or 'empty'}; choose from {', '.join(BACKENDS)}")
    if not (1 <= args.clients <= 32 and 1 <= args.requests <= 32 and 1 <= args.max_tokens <= 256
            and args.deadline > 0):
        ap.error("--clients and --requests must be in 1..32, --max-tokens in 1..256, --deadline > 0")
    deadline = time.monotonic() + args.deadline
    rows = [run_backend(name, args, deadline) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render(rows))
    if args.record:
        write_section("serve.md", "serve-load", render(rows))
    ok = all(r["errors"] == 0 and r["mismatches"] == 0 and r["exit_code"] == 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
