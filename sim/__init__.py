"""mmfree.sim: cocotb benches, Verilator runs, and the cycle/performance model."""
