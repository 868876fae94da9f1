"""The host's errors and argument checks shared by every host module: :class:`AccelRunError`,
:func:`check_timeout`."""

from __future__ import annotations

import math

from mmfree import MmfreeError
from mmfree.rtl import regmap as RM

#: The longest one wait on the accelerator may be set to (one pass, one interrupt): a day. Every wait is finite.
MAX_TIMEOUT_S = 24 * 3600.0

_REG_NAME = {off: name for name, off in RM.OFFSET.items()}


class AccelRunError(MmfreeError):
    """The accelerator stopped with ``STATUS.ERROR`` (``code``/``detail``/``pc``: ERROR_CODE's fields and the PC),
    or the host could not reach one of its registers (:meth:`mmio`: ``register`` names it; ``code``, ``detail``
    and ``pc`` are None)."""

    def __init__(self, register: int, pc: int = 0):
        self.code, self.detail, self.pc, self.register = register & 0xFF, register >> 8, pc, None
        super().__init__(f"the accelerator stopped with {RM.error_message(register)} (PC {pc:#x})")

    @classmethod
    def mmio(cls, op: str, offset: int, exc: OSError) -> AccelRunError:
        """A CSR ``op`` ("read" or "write") at byte ``offset`` that raised ``exc`` (an ``OSError`` from the MMIO
        mapping), as an error naming the register."""
        name = _REG_NAME.get(offset, f"at offset {offset:#x}")
        err = cls.__new__(cls)
        MmfreeError.__init__(err, f"the {op} of accelerator register {name} (offset {offset:#x}) failed: {exc}; "
                                  "the register window is not mapped (overlay not loaded or reloaded, fabric not "
                                  "clocked): reload the overlay and open the accelerator again")
        err.code = err.detail = err.pc = None
        err.register = name
        return err


def check_timeout(value, name: str = "timeout_s", max_s: float | None = MAX_TIMEOUT_S) -> float:
    """``value`` as seconds if it is a finite number > 0 (and <= ``max_s`` when given); else MmfreeError naming
    ``name``. Every wait on the accelerator takes its time-out through here."""
    bad = isinstance(value, bool)
    try:
        t = float(value)
    except (TypeError, ValueError):
        bad = True
    if bad or not math.isfinite(t) or t <= 0 or (max_s is not None and t > max_s):
        most = f" and at most {max_s:g}" if max_s is not None else ""
        raise MmfreeError(f"{name} must be > 0, finite{most} seconds, got {value!r}: every wait on the accelerator "
                          "ends, so give how long one pass may take")
    return t
