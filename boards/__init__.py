"""mmfree.boards: PYNQ board descriptions (data), Vivado build scripts, the PYNQ glue and ``Accelerator``, power readers."""
