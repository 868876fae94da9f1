"""mmfree.hls: C++ HLS kernels (Vitis HLS style, plain g++ compiles them) and their C-simulation harness.

* :mod:`mmfree.hls.spec` generates ``mmfree_spec.h`` (constants, tables, layout slots) from the numerics spec;
* :mod:`mmfree.hls.csim` builds the kernels with g++ and wraps each one for numpy (ctypes);
* :mod:`mmfree.hls.harness` runs an exported model through the layer kernel;
* :mod:`mmfree.hls.checks` / :mod:`mmfree.hls.vectors` are the check suite of ``mmfree hls csim``;
* :mod:`mmfree.hls.synth` writes Vitis HLS projects (``mmfree hls synth``).

The C++ sources are in ``hls/src``, the TCL template in ``hls/tcl``; docs/hls.md describes them.
"""
