"""cocotb bench for :class:`tests.foundation.smoke_design.AxisIncrement`, driven through cocotbext-axi.

Inputs come from the environment: ``MMFREE_SMOKE_IN`` (JSON list of ints), ``MMFREE_SMOKE_OUT``
(where the received words are written as JSON), ``MMFREE_SMOKE_WIDTH``.
"""

import itertools
import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from mmfree.sim.runner import axi_prefix_kwargs


def _pause(seed: int):
    rng = random.Random(seed)
    return itertools.cycle([rng.random() < 0.3 for _ in range(97)])


@cocotb.test()
async def stream_increments(dut):
    words = json.loads(os.environ["MMFREE_SMOKE_IN"])
    width = int(os.environ["MMFREE_SMOKE_WIDTH"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis", **axi_prefix_kwargs()), dut.clk, dut.rst)
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis", **axi_prefix_kwargs()), dut.clk, dut.rst)
    source.set_pause_generator(_pause(1))
    sink.set_pause_generator(_pause(2))
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    nbytes = width // 8
    frame = AxiStreamFrame(b"".join(w.to_bytes(nbytes, "little") for w in words))
    await source.send(frame)
    received = await sink.recv()
    data = bytes(received.tdata)
    got = [int.from_bytes(data[i:i + nbytes], "little") for i in range(0, len(data), nbytes)]
    with open(os.environ["MMFREE_SMOKE_OUT"], "w") as fh:
        json.dump(got, fh)
