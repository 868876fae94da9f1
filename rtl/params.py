"""Build constants shared by the gateware, the cycle model, the simulated board and the host driver.

Plain Python (no Amaranth import), so the performance model (:mod:`mmfree.sim.perf`), the simulation harness
(:mod:`mmfree.sim.accel`) and the host can read them without elaborating anything. Each constant is defined
here once; the RTL (:mod:`mmfree.rtl.top`) takes its defaults from this module.
"""

from __future__ import annotations

#: Reader FIFO of a weight client (the main port's CLIENT_W and each extra weight port), in beats: the most
#: beats it may have stored + in flight. The reader issues a burst only when its window has room for all of
#: it; the window follows the measured read latency (``AxiReader(latency_windows=...)``):
#: :data:`WEIGHT_WINDOW_BASE` beats while the latency is short, the latency + :data:`READ_WINDOW_MARGIN`
#: (rounded up to a burst) once it is long, up to this depth (and ``MAX_OUTSTANDING`` bursts). 256 beats keep
#: a port's full rate to ~236 cycles (944 ns at 250 MHz). A fixed 256-beat window changed cycle counts at
#: the default latency (weight bursts ahead of the LOAD reads on the main port): docs/performance.md
#: "Read latency".
WEIGHT_CLIENT_FIFO = 256
#: A weight client's window while the measured read latency + margin fits in it: the 64-beat window of the
#: design before issue 27 (so cycle counts at the simulated DDR's 24 cycles are unchanged).
WEIGHT_WINDOW_BASE = 64
#: Beats a weight client's window holds beyond the measured read latency (a burst of room + the round trip's
#: ~20 cycles besides the latency, sim/perf.py ``rd_turn``).
READ_WINDOW_MARGIN = 32
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
