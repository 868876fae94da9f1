"""mmfree.host: the transport-agnostic host interface to the accelerator (Glasgow's "interface" layer).

* :mod:`mmfree.host.transport`: the :class:`~mmfree.host.transport.Transport` contract (CSR, DDR, interrupt),
  :class:`~mmfree.host.transport.BoardTransport`, :func:`~mmfree.host.transport.as_transport`;
* :mod:`mmfree.host.layout`: where a compiled model and its buffers go in DDR, whether it fits a board;
* :mod:`mmfree.host.accel`: :class:`~mmfree.host.accel.AccelHost` (passes of k tokens), its records and errors;
* :mod:`mmfree.host.generate`: greedy generation with drafts, the on-chip draft-verify loop, scripted passes;
* :mod:`mmfree.host.streams`: multi-stream decoding, :class:`~mmfree.host.streams.StreamBatch` (streams join and
  leave at pass boundaries, one forest pass per step) and ``generate_streams``;
* :mod:`mmfree.host.session`: :class:`~mmfree.host.session.AccelSession`, a compiled model on one transport.

Layering: host imports base, pymodel and rtl only; sim, hls and boards build on it (docs/architecture.md).
The board transport (PYNQ) is :mod:`mmfree.boards.pynq`; the simulated and emulated boards are in :mod:`mmfree.sim`.
"""
