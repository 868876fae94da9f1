"""Every vector unit under amaranth.sim against the reference, exact, with and without stalls."""

import zlib

import numpy as np
import pytest

from mmfree.rtl.catalog import VECTOR_UNITS
from tests.rtl.cases import CASES, make_case
from tests.rtl.streams import pack, run_unit, unpack

#: default run: elements per element-wise unit, vectors per reduction (odd sizes 1, 2, 60, 63, 1000 included,
#: then random sizes 1..12); about 40 s for every unit with and without stalls
DEFAULT = {"element": 2000, "vector": 1000}
SLOW = {"element": 20000, "vector": 5000}


def _run(name, count, stall, seed):
    rng = np.random.default_rng(seed)
    case = make_case(name, rng, count)
    dut = VECTOR_UNITS[name][0]()
    words = pack(dut.IN, **case.inputs)
    out = run_unit(dut, words, case.n_out, stall=stall, seed=seed)
    expected_vs_produced = unpack(dut.OUT, out)
    case.check(expected_vs_produced)
    return case


def test_every_unit_has_cases():
    assert set(CASES) == set(VECTOR_UNITS)


@pytest.mark.parametrize("stall", [0.0, 0.35], ids=["nostall", "stall"])
@pytest.mark.parametrize("name", sorted(VECTOR_UNITS))
def test_unit_matches_reference(name, stall):
    _run(name, DEFAULT[CASES[name][1]], stall, seed=zlib.crc32(name.encode()) % 1000 + int(stall * 100))


@pytest.mark.slow
@pytest.mark.parametrize("stall", [0.0, 0.5], ids=["nostall", "stall"])
@pytest.mark.parametrize("name", sorted(VECTOR_UNITS))
def test_unit_matches_reference_slow(name, stall):
    _run(name, SLOW[CASES[name][1]], stall, seed=7 + int(stall * 100))
