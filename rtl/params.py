"""Build constants shared by the gateware, the cycle model, the simulated board and the host driver.

Plain Python (no Amaranth import), so the performance model (:mod:`mmfree.sim.perf`), the simulation harness
(:mod:`mmfree.sim.accel`) and the host can read them without elaborating anything. Each constant is defined
here once; the RTL (:mod:`mmfree.rtl.top`) takes its defaults from this module.
"""

from __future__ import annotations

#: Reader FIFO depth of each control-port client of the main AXI reader, in bus beats, by client index
#: (CLIENT_CTL, CLIENT_VEC, CLIENT_LOAD, CLIENT_W in :mod:`mmfree.rtl.top`).
MAIN_READER_FIFO_DEPTHS = (32, 32, 64, 64)
#: Reader FIFO of a weight client (the main port's CLIENT_W and each extra weight port), in beats: part of the
#: prefetch capacity the cycle model counts.
WEIGHT_CLIENT_FIFO = MAIN_READER_FIFO_DEPTHS[3]
#: Weight queue per ternary engine, in beats (how far prefetched rows run ahead of the matvec).
WEIGHT_FIFO_BEATS = 2048
#: Longest AXI burst in beats (16: the safe choice on Zynq HP ports).
MAX_BURST = 16
#: Read bursts in flight per AXI reader.
MAX_OUTSTANDING = 16
#: Write-response latency of the simulated DDR, in cycles: HALT waits for the last response.
SIM_WR_LATENCY = 8
