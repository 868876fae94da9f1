"""The accelerator on a PYNQ board (or any transport): :class:`Accelerator`.

:class:`Accelerator` is :class:`mmfree.host.session.AccelSession` (a compiled model on one transport: text or tokens
in, greedy tokens out, counters; several independent streams per pass with ``generate_streams`` and
``stream_batch``, the model opened with ``open_model(model, streams=B)``) plus the PYNQ constructors
:meth:`Accelerator.on_ip` and :meth:`Accelerator.from_bitstream` (``overlay.mmfree_accel_0.accelerator()`` calls
the first)."""

from __future__ import annotations

from mmfree.boards.pynq import PynqTransport, load_overlay
from mmfree.host.accel import read_draft_engine, read_identity
from mmfree.host.layout import check_fits, ddr_needed
from mmfree.host.session import AccelSession, open_model


class Accelerator(AccelSession):
    """The accelerator with a model loaded (:class:`~mmfree.host.session.AccelSession`: ``transport``, ``model``,
    ``board``, ``timeout_s``, ``write_logits``, ``tokenizer``). On a PYNQ board open it with :meth:`from_bitstream`
    (or ``overlay.mmfree_accel_0.accelerator()``, which is :meth:`on_ip`)."""

    # ---- opening on a PYNQ board --------------------------------------------------------------------------
    @classmethod
    def on_ip(cls, ip, model="default", board=None, timeout_s: float = 60.0, use_interrupt: bool = True,
              **kw) -> Accelerator:
        """On an overlay's accelerator IP: checks the model fits ``board`` and allocates exactly the DDR it needs
        (one ``pynq.allocate`` buffer) before writing anything."""
        opened = open_model(model)
        compiled, im, tok_dir = opened
        if board is not None:
            from mmfree.boardfile import load_board

            board = load_board(board) if isinstance(board, str) else board
            check_fits(compiled, board)
        read32 = PynqTransport.csr_reader(ip)
        max_tokens = read_identity(read32)["max_tokens"]
        need = ddr_needed(compiled, max_tokens, read_draft_engine(read32))
        transport = PynqTransport(ip, need, use_interrupt=use_interrupt)
        try:
            acc = cls(transport, opened, board=board, timeout_s=timeout_s, tokenizer=kw.pop("tokenizer", tok_dir),
                      **kw)
        except BaseException:
            transport.close()
            raise
        return acc

    @classmethod
    def from_bitstream(cls, bitstream, model="default", board=None, download: bool = True, **kw) -> Accelerator:
        """Check ``X.hwh`` next to ``X.bit`` (:func:`check_hwh`), refuse a model larger than the board's DDR, load
        the overlay with pynq, and open the accelerator on it."""
        from mmfree.boardfile import load_board

        b = load_board(board) if isinstance(board, str) else board
        model = open_model(model)                      # once: compiling a large model takes a while
        if b is not None:
            check_fits(model[0], b)                    # before the overlay is touched
        ov, ip, _ = load_overlay(bitstream, b, download=download)
        acc = cls.on_ip(ip, model, board=b, **kw)
        acc.overlay = ov
        return acc

