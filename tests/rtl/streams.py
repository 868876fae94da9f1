"""Test plumbing shared by the RTL tests: payload packing and amaranth.sim stream drivers.

Payloads travel as raw integers (the bits of a ``data.StructLayout``), in both simulators: the
Amaranth testbenches set ``Value.cast(payload)`` and the cocotb benches drive the flat
``<port>__payload`` vector. :func:`pack` / :func:`unpack` convert between numpy field arrays and
those integers.
"""

from __future__ import annotations

import random

import numpy as np
from amaranth import Value
from amaranth.lib import data
from amaranth.sim import Simulator


def _fields(layout: data.StructLayout):
    for name, field in layout:
        shape = field.shape
        if isinstance(shape, data.ArrayLayout):
            for j in range(shape.length):
                el = shape.elem_shape
                s = el if not isinstance(el, data.Layout) else el.as_shape()
                yield f"{name}{j}", field.offset + j * s.width, s.width, s.signed
        else:
            from amaranth import Shape

            s = Shape.cast(shape)
            yield name, field.offset, s.width, s.signed


def pack(layout: data.StructLayout, **arrays) -> list[int]:
    """Field arrays (same length; missing fields are 0) -> raw payload integers."""
    n = max(len(np.atleast_1d(v)) for v in arrays.values())
    out = [0] * n
    for name, off, width, _signed in _fields(layout):
        if name not in arrays:
            continue
        vals = np.broadcast_to(np.asarray(arrays[name], dtype=object), (n,))
        mask = (1 << width) - 1
        for i in range(n):
            out[i] |= (int(vals[i]) & mask) << off
    return out


def unpack(layout: data.StructLayout, words) -> dict[str, np.ndarray]:
    """Raw payload integers -> one int64 array per field (signed fields sign-extended)."""
    res = {}
    for name, off, width, signed in _fields(layout):
        mask = (1 << width) - 1
        vals = []
        for w in words:
            v = (int(w) >> off) & mask
            if signed and v >> (width - 1):
                v -= 1 << width
            vals.append(v)
        res[name] = np.array(vals, dtype=np.int64)
    return res


def _gaps(rng: random.Random, prob: float):
    while True:
        n = 0
        while rng.random() < prob:
            n += 1
        yield n


async def drive(ctx, port, words, stall: float, seed: int):
    """Send ``words`` on stream ``port`` (valid held with random gaps of probability ``stall``)."""
    rng = random.Random(seed)
    gaps = _gaps(rng, stall)
    payload = Value.cast(port.payload)
    for w in words:
        g = next(gaps) if stall else 0
        if g:
            ctx.set(port.valid, 0)
            await ctx.tick().repeat(g)
        ctx.set(payload, w)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def collect(ctx, port, n: int, stall: float, seed: int, out: list, cycles: list | None = None):
    """Receive ``n`` payloads from stream ``port`` into ``out`` (ready low with probability ``stall``)."""
    rng = random.Random(seed)
    payload = Value.cast(port.payload)
    t = 0
    while len(out) < n:
        r = not (stall and rng.random() < stall)
        ctx.set(port.ready, int(r))
        _, _, valid, value = await ctx.tick().sample(port.valid, payload)
        t += 1
        if r and valid:
            out.append(value)
    ctx.set(port.ready, 0)
    if cycles is not None:
        cycles.append(t)


def run_unit(dut, words, n_out: int, stall: float = 0.0, seed: int = 0, vcd: str | None = None) -> list[int]:
    """Simulate a unit with streams ``i`` -> ``o``: send ``words``, return ``n_out`` raw outputs."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out: list[int] = []

    async def src(ctx):
        await drive(ctx, dut.i, words, stall, seed)

    async def snk(ctx):
        await collect(ctx, dut.o, n_out, stall, seed + 1, out)

    sim.add_testbench(src)
    sim.add_testbench(snk)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return out
