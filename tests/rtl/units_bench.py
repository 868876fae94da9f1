"""cocotb bench for the compute units (:mod:`mmfree.rtl`) as generated Verilog: a generic stream driver.

The job comes from the JSON file named by ``MMFREE_RTL_JOB``::

    {"streams": [
        {"port": "silu_i", "dir": "in", "words": [..raw payload ints..], "stall": 0.3, "seed": 1,
         "after": null},
        {"port": "silu_o", "dir": "out", "count": 1000, "stall": 0.3, "seed": 2},
        ...],
     "max_cycles": 200000, "out": "/path/result.json"}

Every stream of every unit runs at the same time in one loop (one simulator process for all units).
``in`` streams send their payload words on ``<port>__payload`` with ``<port>__valid`` dropped at random
(probability ``stall``); ``after`` names another ``in`` stream that must have sent everything first.
``out`` streams hold ``<port>__ready`` low at random and record ``count`` payloads. The result file
holds, per port, the received words (``out``) and the cycles of the first and last transfer.
The comparison with the reference happens in the pytest that wrote the job.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


class _Stream:
    def __init__(self, dut, spec):
        self.port = spec["port"]
        self.dir = spec["dir"]
        self.valid = getattr(dut, f"{self.port}__valid")
        self.ready = getattr(dut, f"{self.port}__ready")
        self.payload = getattr(dut, f"{self.port}__payload")
        self.rng = random.Random(spec.get("seed", 0))
        self.stall = float(spec.get("stall", 0.0))
        self.words = [int(w) for w in spec.get("words", [])]
        self.count = int(spec.get("count", len(self.words)))
        self.after = spec.get("after")
        self.pos = 0
        self.got: list[int] = []
        self.first = None
        self.last = None
        self.offer = False

    @property
    def done(self) -> bool:
        return (self.pos >= len(self.words)) if self.dir == "in" else (len(self.got) >= self.count)


@cocotb.test()
async def run_streams(dut):
    with open(os.environ["MMFREE_RTL_JOB"]) as fh:
        job = json.load(fh)
    streams = [_Stream(dut, s) for s in job["streams"]]
    by_port = {s.port: s for s in streams}
    max_cycles = int(job.get("max_cycles", 1_000_000))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for s in streams:
        (s.valid if s.dir == "in" else s.ready).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    cycle = 0
    while cycle < max_cycles and not all(s.done for s in streams):
        # drive this cycle's inputs
        for s in streams:
            if s.dir == "in":
                blocked = s.after is not None and not by_port[s.after].done
                s.offer = not s.done and not blocked and not (s.stall and s.rng.random() < s.stall)
                if s.offer:
                    s.payload.value = s.words[s.pos]
                s.valid.value = int(s.offer)
            else:
                s.offer = not s.done and not (s.stall and s.rng.random() < s.stall)
                s.ready.value = int(s.offer)
        await ReadOnly()
        # the handshakes that happen at the coming edge
        for s in streams:
            if not s.offer:
                continue
            if s.dir == "in":
                if int(s.ready.value):
                    s.pos += 1
                    s.first = cycle if s.first is None else s.first
                    s.last = cycle
            elif int(s.valid.value):
                s.got.append(int(s.payload.value.to_unsigned()))
                s.first = cycle if s.first is None else s.first
                s.last = cycle
        await RisingEdge(dut.clk)
        cycle += 1
    for s in streams:
        (s.valid if s.dir == "in" else s.ready).value = 0
    result = {"cycles": cycle, "ports": {s.port: {"words": [str(w) for w in s.got] if s.dir == "out" else None,
                                                  "sent": s.pos, "first": s.first, "last": s.last}
                                         for s in streams}}
    with open(job["out"], "w") as fh:
        json.dump(result, fh)
