"""The same units as generated Verilog under Verilator + cocotb: every vector unit and three matvec
configurations in one harness (one build), all driven at once by tests.rtl.units_bench, with and
without random valid/ready stalls; outputs compared with the reference exactly."""

import json
import os

import numpy as np
import pytest

from mmfree.rtl.catalog import VECTOR_UNITS
from tests.rtl.cases import CASES, make_case, matvec_job, matvec_unpack
from tests.rtl.streams import pack, unpack

pytestmark = pytest.mark.sim

SLOW = os.environ.get("MMFREE_SLOW") == "1"
#: per run (one with stalls, one without): elements per element-wise unit, vectors per reduction
COUNTS = {"element": 20000, "vector": 5000} if SLOW else {"element": 2000, "vector": 1000}
#: (lanes, tokens, max_k) of the matvec engines in the harness, and the matrices each multiplies per run
MATVECS = ((80, 4, 1024), (40, 1, 1024), (5, 2, 128))
SHAPES = {
    (80, 4): [(1200, 1000), (300, 63)] if SLOW else [(150, 1000), (41, 63)],
    (40, 1): [(1200, 1000), (300, 60)] if SLOW else [(100, 1000), (77, 60)],
    (5, 2): [(1000, 63), (300, 128)] if SLOW else [(120, 63), (50, 128)],
}
STALL = {"nostall": 0.0, "stall": 0.3}


@pytest.fixture(scope="module")
def harness_build():
    from mmfree.sim import runner
    from tests.rtl.harness import units_harness

    h = units_harness(MATVECS)
    v = runner.verilog_file(h, "rtl_units")
    return h, runner.build([v], "rtl_units", opt="-O0")   # a big model that runs few cycles: build fast


@pytest.fixture(scope="module", params=sorted(STALL))
def run_result(request, harness_build, tmp_path_factory):
    from mmfree.sim import runner

    harness, build = harness_build
    stall = STALL[request.param]
    rng = np.random.default_rng(2024 + int(stall * 10))
    streams, cases, jobs = [], {}, {}
    for i, name in enumerate(sorted(VECTOR_UNITS)):
        case = make_case(name, rng, COUNTS[CASES[name][1]])
        unit = harness.units[name]
        streams.append({"port": f"{name}_i", "dir": "in", "words": [str(w) for w in pack(unit.IN, **case.inputs)],
                        "stall": stall, "seed": 2 * i})
        streams.append({"port": f"{name}_o", "dir": "out", "count": case.n_out, "stall": stall, "seed": 2 * i + 1})
        cases[name] = case
    for j, (lanes, tokens, _) in enumerate(MATVECS):
        name = f"mv_l{lanes}_k{tokens}"
        dut = harness.units[name]
        job = matvec_job(dut, rng, SHAPES[(lanes, tokens)])
        streams += [
            {"port": f"{name}_act", "dir": "in", "words": [str(w) for w in job.act], "stall": stall, "seed": 100 + j},
            {"port": f"{name}_cmd", "dir": "in", "words": [str(w) for w in job.cmd], "after": f"{name}_act"},
            {"port": f"{name}_weights", "dir": "in", "words": [str(w) for w in job.weights], "stall": stall,
             "seed": 200 + j},
            {"port": f"{name}_out", "dir": "out", "count": len(job.acc), "stall": stall, "seed": 300 + j},
        ]
        jobs[name] = job
    d = tmp_path_factory.mktemp(f"rtl_{request.param}")
    spec = {"streams": streams, "max_cycles": 2_000_000, "out": str(d / "result.json")}
    (d / "job.json").write_text(json.dumps(spec))
    runner.run(build, "tests.rtl.units_bench", env={"MMFREE_RTL_JOB": str(d / "job.json")}, test_dir=d)
    result = json.loads((d / "result.json").read_text())
    return harness, cases, jobs, result, stall


@pytest.mark.parametrize("name", sorted(VECTOR_UNITS))
def test_unit_under_verilator(run_result, name):
    harness, cases, _, result, _ = run_result
    words = [int(w) for w in result["ports"][f"{name}_o"]["words"]]
    case = cases[name]
    assert len(words) == case.n_out, f"{name}: {len(words)} of {case.n_out} outputs before the cycle limit"
    case.check(unpack(harness.units[name].OUT, words))


@pytest.mark.parametrize("lanes,tokens", [(m[0], m[1]) for m in MATVECS])
def test_matvec_under_verilator(run_result, lanes, tokens):
    harness, _, jobs, result, stall = run_result
    name = f"mv_l{lanes}_k{tokens}"
    dut, job = harness.units[name], jobs[name]
    words = [int(w) for w in result["ports"][f"{name}_out"]["words"]]
    expected = job.acc
    produced, last = matvec_unpack(dut, words)
    np.testing.assert_array_equal(produced, expected)
    np.testing.assert_array_equal(last, job.last)
    if stall == 0.0:
        w = result["ports"][f"{name}_weights"]
        beats = len(job.weights)
        # weights were offered every cycle from the start: one beat per cycle, whatever the command boundaries
        assert w["last"] - w["first"] + 1 == beats, (w, beats)
