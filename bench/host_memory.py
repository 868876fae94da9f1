"""Host memory a generation keeps per token, with and without per-pass arrays (keep_arrays), on the emulator.

Run: ``python bench/host_memory.py`` (default model, greedy, the emulated board). Prints bytes per generated
token of the pass records, sized recursively with ``sys.getsizeof`` (numpy arrays by their own size);
``mmfree.host.layout.RECORD_BYTES_PER_TOKEN`` is the bound the driver plans with (docs/boards.md).
"""

import sys
from pathlib import Path

from mmfree.host.layout import RECORD_BYTES_PER_TOKEN
from mmfree.host.session import AccelSession
from mmfree.pymodel.intmodel import open_int_model
from mmfree.sim.accel import DEFAULT_HW
from mmfree.sim.emulator import EmulatedBoard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import deep_size  # noqa: E402


def main() -> None:
    im, tok = open_int_model("default")
    acc = AccelSession(EmulatedBoard(DEFAULT_HW), im, tokenizer=tok, write_logits=True)
    print(f"bound RECORD_BYTES_PER_TOKEN = {RECORD_BYTES_PER_TOKEN}")
    for n in (10, 100):
        bare = acc.generate("def ", n)
        kept = acc.generate("def ", n, keep_arrays=True)
        print(f"{n:4d} tokens: {deep_size(bare.passes) / n:8.0f} bytes/token without arrays, "
              f"{deep_size(kept.passes) / n:8.0f} with keep_arrays")


if __name__ == "__main__":
    main()
