"""mmfree.hls: C++ HLS kernels (Vitis HLS style, plain g++ compiles them) and their C-simulation harness."""
