"""Random exported models and scripted passes shared by the accelerator tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from mmfree.config import cache_dir

#: (d, layers, vocab, intermediate) of the random models the tests use: widths 64/96/200, 1-3 layers,
#: odd vocabularies.
SHAPES = {
    "d64": (64, 1, 97, 172),
    "d96": (96, 2, 101, 256),
    "d200": (200, 3, 333, 84),
}
#: Shapes only some tests run (not in SHAPES, which others iterate): d64v163's last head chunk has 3 rows (163 = 160 +
#: 3), fewer than the six-port build's ports.
EXTRA_SHAPES = {"d64v163": (64, 1, 163, 172)}


def spec_digest() -> str:
    """A digest of the sources an export depends on (a changed spec invalidates cached exports)."""
    import hashlib
    from importlib import resources

    h = hashlib.sha256()
    for mod in ("numerics.py", "layout.py", "export.py", "model.py", "config.py"):
        h.update(resources.files("mmfree.pymodel").joinpath(mod).read_bytes())
    return h.hexdigest()[:12]


def export_random(name: str, seed: int = 0) -> Path:
    """Export (once per spec, cached under the build cache) the random model ``SHAPES[name]``."""
    import sys

    from mmfree.pymodel.export import export_model

    d, L, V, inter = SHAPES[name] if name in SHAPES else EXTRA_SHAPES[name]
    out = cache_dir() / "test-exports" / f"{name}-s{seed}-{spec_digest()}"
    if not (out / "manifest.json").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pymodel"))
        from helpers import random_model  # tests/pymodel/helpers.py

        sys.path.pop(0)
        export_model(random_model(seed, hidden_size=d, num_hidden_layers=L, vocab_size=V, intermediate_size=inter),
                     out)
    return out


def load(name: str, seed: int = 0):
    from mmfree.pymodel.intmodel import IntModel

    return IntModel.load(export_random(name, seed))


def chain_and_tree_steps(im, rng: np.random.Generator, k_values=(1, 4)) -> list[dict]:
    """Passes from random start states: chains of every k in ``k_values`` and a tree at the largest k."""
    L, d, V = im.dims.layers, im.dims.d, im.dims.vocab
    steps = []
    for k in k_values:
        h0 = rng.integers(-(1 << 20), 1 << 20, size=(L, d))
        steps.append({"tokens": [int(t) for t in rng.integers(0, V, size=k)], "h0": h0.tolist()})
        steps.append({"tokens": [int(t) for t in rng.integers(0, V, size=k)], "commit": 0})
    kmax = max(k_values)
    if kmax >= 3:
        parents = [-1] + [int(rng.integers(-1, j)) for j in range(1, kmax)]
        steps.append({"tokens": [int(t) for t in rng.integers(0, V, size=kmax)], "parents": parents,
                      "h0": rng.integers(-(1 << 20), 1 << 20, size=(L, d)).tolist()})
    steps.append({"tokens": [V - 1]})
    return steps


def replay_steps(im, steps: list[dict], results: list[dict]) -> None:
    """Assert every result equals IntModel on the same pass (start state: the step's h0 or the previous commit)."""
    h = im.initial_state().h
    for i, (st, res) in enumerate(zip(steps, results)):
        assert "error" not in res, f"step {i} failed on the accelerator: {res}"
        if "h0" in st:
            h = np.asarray(st["h0"], dtype=np.int64)
        hs, logits = im.forward(h, st["tokens"], parents=st.get("parents"))
        np.testing.assert_array_equal(np.asarray(res["logits"]), logits, err_msg=f"logits of step {i}")
        np.testing.assert_array_equal(np.asarray(res["argmax"]), np.argmax(logits, -1), err_msg=f"argmax of step {i}")
        np.testing.assert_array_equal(np.asarray(res["states"]), hs, err_msg=f"states of step {i}")
        h = hs[res["commit"]]


def slow_enabled() -> bool:
    return os.environ.get("MMFREE_SLOW") == "1"


def error_steps(compiled, hw, mem_window) -> list[tuple[dict, tuple[int, int] | None]]:
    """Bad inputs and the (code, detail) the accelerator must report, each followed by a good pass that
    shows it recovered. Addresses follow :func:`mmfree.host.layout.host_layout`."""
    from mmfree.host.layout import host_layout
    from mmfree.rtl import isa as I
    from mmfree.rtl import regmap as RM

    addr, end = host_layout(compiled, hw.max_tokens, mem_window)
    V = compiled.dims.vocab
    prog = compiled.program
    hdr, instrs = I.disassemble(prog)

    def patched(fn) -> str:
        body = [i.encode() for i in instrs]
        h = fn(body)
        return ((h or hdr).encode() + b"".join(body)).hex()

    def set_op(body, idx, raw0):
        body[idx] = bytes([raw0]) + body[idx][1:]

    first_load = next(i for i, ins in enumerate(instrs) if ins.op == "LOAD")
    first_qstats = next(i for i, ins in enumerate(instrs) if ins.op == "QSTATS")
    good = {"tokens": [0], "h0": np.zeros((compiled.dims.layers, compiled.dims.d), dtype=np.int64).tolist()}
    cases = [
        ({"tokens": [1, V]}, (RM.ERR_TOKEN_RANGE, 1)),
        ({"tokens": [1], "regs": {"DATA_BASE": addr["DATA_BASE"] + 4}}, (RM.ERR_UNALIGNED, I.BASE["DATA_BASE"])),
        ({"tokens": [1], "regs": {"MEM_HI": addr["PROG_BASE"] + 64}}, (RM.ERR_ADDRESS_RANGE, I.BASE["PROG_BASE"])),
        ({"tokens": [1], "regs": {"MEM_HI": addr["DATA_BASE"] + 64 * (len(compiled.image) // 128)}},
         (RM.ERR_ADDRESS_RANGE, I.BASE["DATA_BASE"])),
        ({"tokens": [1], "regs": {"MEM_LO": addr["PROG_BASE"] + 64}}, (RM.ERR_ADDRESS_RANGE, I.BASE["PROG_BASE"])),
        ({"tokens": [1], "num_tokens": 0}, (RM.ERR_NUM_TOKENS, 0)),
        ({"tokens": [1], "num_tokens": hw.max_tokens + 1}, (RM.ERR_NUM_TOKENS, 0)),
        ({"tokens": [1, 2], "parents": [-1, 1]}, (RM.ERR_BAD_PARENT, 1)),
        ({"tokens": [1], "program": patched(lambda b: I.Header(hdr.n_instr, hw.max_width // 16 + 1))},
         (RM.ERR_TOO_WIDE, hw.max_width // 16 + 1)),
        ({"tokens": [1], "program": patched(lambda b: set_op(b, 3, 0x7F))}, (RM.ERR_BAD_INSTRUCTION, 0x7F)),
        ({"tokens": [1], "program": patched(lambda b: I.Header(hdr.n_instr - 1, hdr.width_units))},
         (RM.ERR_PROGRAM, 0)),
        ({"tokens": [1], "program": patched(lambda b: set_op(b, first_load, I.OPCODE["SYNC"]))},
         (RM.ERR_NOT_LOADED, I.OPCODE["QSTATS"])),
        ({"tokens": [1], "program": patched(lambda b: b.__setitem__(
            first_qstats, I.Instr("QSTATS", dict(instrs[first_qstats].args, count=hw.max_width + 16)).encode()))},
         (RM.ERR_TOO_WIDE, 0)),
        # inside [MEM_LO, MEM_HI) but beyond the memory: the bus answers DECERR, on writes (logits mid-program,
        # argmax at the very end, while HALT drains) and on reads (the image: embedding, norms, weights)
        ({"tokens": [1], "regs": {"MEM_HI": mem_window[1] + (1 << 20), "LOGITS": mem_window[1]}}, (RM.ERR_AXI, 0)),
        ({"tokens": [1], "regs": {"MEM_HI": mem_window[1] + (1 << 20), "ARGMAX_OUT": mem_window[1]}},
         (RM.ERR_AXI, 0)),
        ({"tokens": [1], "regs": {"MEM_HI": mem_window[1] + (64 << 20), "DATA_BASE": mem_window[1]}},
         (RM.ERR_AXI, 0)),
    ]
    out = []
    for st, exp in cases:
        out.append((st, exp))
        out.append((dict(good), None))
    return out


def stuck_board(hw, swallow: int):
    """An :class:`~mmfree.sim.emulator.EmulatedBoard` that swallows CONTROL writes with any ``swallow`` bit
    (CTRL_START or CTRL_GENERATE): the accelerator never finishes them. ``board.controls`` lists every CONTROL
    value written."""
    from mmfree.rtl import regmap as RM
    from mmfree.sim.emulator import EmulatedBoard

    class StuckBoard(EmulatedBoard):
        def __init__(self):
            super().__init__(hw)
            self.controls = []

        def write32(self, offset, value):
            if offset == RM.OFFSET["CONTROL"]:
                self.controls.append(value)
                if value & swallow:
                    return
            super().write32(offset, value)

    return StuckBoard()


def busy_board(hw, finish: bool = True, **kw):
    """An :class:`~mmfree.sim.emulator.EmulatedBoard` whose passes take time, as the hardware's do: CONTROL.START
    (or GENERATE) sets STATUS.BUSY and returns; ``board.step()`` (called by a "hardware" thread, or a test) then
    runs the pending pass to completion (DONE/ERROR and the interrupt), unless ``finish`` is False (a hung pass).
    SOFT_RESET drops the pending pass and clears STATUS as the RTL does. ``board.events`` lists "start",
    "soft_reset" and "idle" (a STATUS read with BUSY clear after a SOFT_RESET) in order."""
    import threading

    from mmfree.rtl import regmap as RM
    from mmfree.sim.emulator import EmulatedBoard

    class BusyBoard(EmulatedBoard):
        def __init__(self):
            super().__init__(hw, **kw)
            self.pending, self.events, self.lock = None, [], threading.Lock()

        def write32(self, offset, value):
            with self.lock:
                if offset == RM.OFFSET["CONTROL"] and value & RM.CTRL_SOFT_RESET:
                    self.pending = None
                    self.events.append("soft_reset")
                if offset == RM.OFFSET["CONTROL"] and value & (RM.CTRL_START | RM.CTRL_GENERATE):
                    self.events.append("start")
                    super().write32(offset, value & ~(RM.CTRL_START | RM.CTRL_GENERATE))
                    self.pending = value
                    self.csr["STATUS"] = RM.STAT_BUSY
                    return
                super().write32(offset, value)

        def read32(self, offset):
            with self.lock:
                value = super().read32(offset)
                if offset == RM.OFFSET["STATUS"] and not value & RM.STAT_BUSY and self.events[-1:] == ["soft_reset"]:
                    self.events.append("idle")
                return value

        def step(self) -> bool:
            """Run the pending pass, if any (and ``finish``); True when one ran."""
            with self.lock:
                if self.pending is None or not finish:
                    return False
                value, self.pending = self.pending, None
                self.csr["STATUS"] = 0
                super().write32(RM.OFFSET["CONTROL"], value)
                return True

    return BusyBoard()


def wait_for(cond, timeout: float, what: str, poll_s: float = 0.1):
    """``cond()``'s first true value, polled every ``poll_s`` for at most ``timeout`` seconds; AssertionError
    naming ``what`` when it stays false (a thread or process that acts a moment after the call under test)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")
