"""How long a decoding request stalls while another joins with a long prompt (`mmfree serve --max-streams 2`).

The engine on the simulated board (the driver on the ISA emulator), two streams: request A decodes 12 tokens
greedy; 0.15 s later B joins with a prompt of ``--prompt-tokens`` token ids and asks for 2 tokens. Printed side
by side for the two pass schedules (:func:`mmfree.pymodel.multistream.plan_pass`): ``prefill first`` (a pass
carries prompt chunks only while any prompt has tokens left) and ``decode_first`` (the server's: one token per
decoding request first, prompt chunks in the room left): A's median and longest gap between tokens, and the
batch passes run. Measured on this machine's CPU (the emulator), not a board.

    python bench/serve_join_stall.py [--prompt-tokens 800]
"""

from __future__ import annotations

import argparse
import threading
import time


def run(decode_first: bool, prompt_tokens: int) -> dict:
    """One A-then-B run; A's token gaps (seconds) and the batch passes."""
    from mmfree.serve.engine import Engine, Limits, open_backend

    backend = open_backend("board", board="sim", max_streams=2)
    backend.new_batch = lambda: backend.acc.stream_batch(2, decode_first=decode_first)   # the schedule compared
    engine = Engine(backend, Limits(request_timeout_s=300))
    times, done = [], [threading.Event(), threading.Event()]
    a = engine.prepare("def ", 12, 0.0)
    a.sink = lambda ev: times.append(time.monotonic()) if ev[0] == "delta" else done[0].set()
    b = engine.prepare([(7 * i) % 4000 + 1 for i in range(prompt_tokens)], 2, 0.0)
    b.sink = lambda ev: ev[0] == "done" and done[1].set()
    try:
        engine.submit(a)
        time.sleep(0.15)
        engine.submit(b)
        assert done[0].wait(300) and done[1].wait(300), "a request did not finish"
    finally:
        engine.close(timeout_s=30)
        backend.close()
    gaps = sorted(y - x for x, y in zip(times, times[1:]))
    return {"median_gap_s": gaps[len(gaps) // 2], "max_gap_s": gaps[-1], "passes": engine.passes,
            "tokens": len(a.tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=800)
    args = ap.parse_args()
    if not 1 <= args.prompt_tokens <= 2048:
        ap.error("--prompt-tokens must be in 1..2048")
    rows = [("prefill first", run(False, args.prompt_tokens)), ("decode_first", run(True, args.prompt_tokens))]
    print(f"{'schedule':<14} {'A tokens':>8} {'median gap':>11} {'max gap':>9} {'batch passes':>13}")
    for name, r in rows:
        print(f"{name:<14} {r['tokens']:>8} {r['median_gap_s'] * 1e3:>9.0f}ms {r['max_gap_s']:>8.2f}s "
              f"{r['passes']:>13}")
    print(f"max gap ratio (prefill first / decode_first): {rows[0][1]['max_gap_s'] / rows[1][1]['max_gap_s']:.0f}x")


if __name__ == "__main__":
    main()
