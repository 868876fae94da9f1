"""Build constants shared by the gateware, the cycle model, the simulated board and the host driver.

Plain Python (no Amaranth import), so the performance model (:mod:`mmfree.sim.perf`), the simulation harness
(:mod:`mmfree.sim.accel`) and the host can read them without elaborating anything. Each constant is defined
here once; the RTL (:mod:`mmfree.rtl.top`) takes its defaults from this module.
"""

from __future__ import annotations

#: Reader FIFO of a weight client (the main port's CLIENT_W and each extra weight port), in beats. The reader
#: issues a burst only when this FIFO has room for all of it, so it bounds the beats in flight: a port keeps
#: its full rate (a beat per cycle) while the read latency is below about this depth minus a burst (64
#: beats: ~44 cycles). 256 beats held full rate to ~240 cycles but changed cycle counts at the default
#: latency (more weight bursts ahead of the LOAD reads on the main port): withdrawn, docs/performance.md
#: "Read latency". Also part of the prefetch capacity the cycle model counts.
WEIGHT_CLIENT_FIFO = 64
#: Reader FIFO depth of each control-port client of the main AXI reader, in bus beats, by client index
#: (CLIENT_CTL, CLIENT_VEC, CLIENT_LOAD, CLIENT_W in :mod:`mmfree.rtl.top`).
MAIN_READER_FIFO_DEPTHS = (32, 32, 64, WEIGHT_CLIENT_FIFO)
#: Weight queue per ternary engine, in beats (how far prefetched rows run ahead of the matvec).
WEIGHT_FIFO_BEATS = 2048
#: Longest AXI burst in beats (16: the safe choice on Zynq HP ports).
MAX_BURST = 16
#: Read bursts in flight per AXI reader.
MAX_OUTSTANDING = 16
#: Write-response latency of the simulated DDR, in cycles: HALT waits for the last response.
SIM_WR_LATENCY = 8
#: Instructions each engine may hold at once in the sequencer's scoreboard (``rtl/sequencer.py``): the matvec
#: engine queues a second MATVEC behind the running one. The cycle model stalls dispatch on the same counts.
ENGINE_SLOTS = {"load": 1, "store": 1, "vector": 1, "matvec": 2}

# ---- the simulated board (sim/accel.py, sim/benches) and the cycle model's defaults ----------------------------
#: Clock the simulation models (the KV260 fabric clock): converts host time-outs into simulated cycles.
SIM_CLOCK_HZ = 250e6
#: Its period in ns (cocotb's Clock).
SIM_CLOCK_PERIOD_NS = round(1e9 / SIM_CLOCK_HZ)
#: Read latency of the simulated DDR, in cycles from a burst request to its first beat.
SIM_RD_LATENCY = 24
#: The most cycles one wait for the interrupt simulates (a cap on host time-outs converted to cycles).
SIM_MAX_WAIT_CYCLES = 50_000_000
#: The most cycles one AXI4-Lite register access may take in simulation before it is reported as hung.
SIM_CSR_TIMEOUT_CYCLES = 10_000

# ---- board builds (boards/build.py) where the board file's ``build`` section says nothing ------------------------
#: Widest vector of a build (``build.max_width``).
BOARD_MAX_WIDTH = 4096
#: Tokens per pass (``build.max_tokens``).
BOARD_MAX_TOKENS = 4
#: AXI masters streaming weights (``build.weight_ports``).
BOARD_WEIGHT_PORTS = 1
#: Ternary engines per weight port (``build.matvec_engines``).
BOARD_MATVEC_ENGINES = 2
#: Rows of the draft engine's bigram memory in a board build with ``--draft-engine`` and no ``build.draft_vocab``
#: (HwConfig.draft_vocab): the MMfreeLM checkpoints' vocabulary (32000 tokens; the default model's 4096 fits too).
BOARD_DRAFT_VOCAB = 32000
