"""mmfree.boards: PYNQ board descriptions, Vivado build scripts, the driver and its transports, power readers."""
