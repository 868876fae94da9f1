"""The toolchain installs and runs from the project's own files: Amaranth -> Verilog -> Verilator -> cocotb."""

import json
import random

import pytest

from mmfree.sim import runner
from tests.foundation.smoke_design import AxisIncrement


@pytest.mark.sim
def test_axis_increment_under_verilator(tmp_path):
    width = 32
    dut = AxisIncrement(width=width, increment=3)
    v = runner.verilog_file(dut, "axis_increment")
    text = v.read_text()
    assert "s_axis__tdata" in text and "m_axis__tready" in text  # Amaranth's a__b naming
    b = runner.build([v], "axis_increment")
    rng = random.Random(0)
    words = [rng.randrange(2**width - 3) for _ in range(200)] + [0, 2**width - 4]
    out = tmp_path / "out.json"
    runner.run(b, "tests.foundation.smoke_bench", env={
        "MMFREE_SMOKE_IN": json.dumps(words), "MMFREE_SMOKE_OUT": str(out), "MMFREE_SMOKE_WIDTH": str(width),
    })
    assert json.loads(out.read_text()) == [w + 3 for w in words]


def test_bus_separator_is_amaranths():
    assert runner.axi_prefix_kwargs() == {"bus_separator": "__"}


def test_bad_parameter_is_named():
    with pytest.raises(ValueError, match="width"):
        AxisIncrement(width=0)


def test_a_build_from_other_tools_is_not_reused(tmp_path):
    """The Verilator cache key hashes sources and arguments only; the ``.built`` marker carries the tool
    versions (verilator, cocotb, C++ compiler), so a build made by other tools is built again. A marker
    from before stamps (``ok``) is still reused."""
    stamp = runner.toolchain_stamp()
    assert stamp.startswith("verilator ") and "cocotb " in stamp and stamp.endswith("\n")
    done = tmp_path / ".built"
    assert not runner.reusable(done, stamp)
    done.write_text(stamp)
    assert runner.reusable(done, stamp)
    done.write_text(stamp.replace("verilator ", "verilator 0.0-other ", 1))
    assert not runner.reusable(done, stamp)
    done.write_text(runner.LEGACY_STAMP)
    assert runner.reusable(done, stamp)
