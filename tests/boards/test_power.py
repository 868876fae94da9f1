"""Power readers against recorded sample trees (tests/boards/data), NVML counter math, the power model's
arithmetic."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.boards import power as PW
from mmfree.boards import power_model as PM

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def rapl_tree(tmp_path):
    root = tmp_path / "powercap"
    shutil.copytree(DATA / "rapl_sample", root)
    return root


def test_rapl_domains_and_wrap(rapl_tree):
    r = PW.Rapl(rapl_tree)
    assert r.available() == (True, "")
    assert set(r.domains()) == {"package-0", "dram"}          # core sub-zone and psys ignored
    a = r.read()
    assert a == {"package-0": 262140000000, "dram": 1000000}
    # the package counter wraps: 3,328,850 uJ to the wrap point, then 1,671,150 uJ -> 5 J; dram +2.5 J
    (rapl_tree / "intel-rapl:0" / "energy_uj").write_text("1671150\n")
    (rapl_tree / "intel-rapl:0:1" / "energy_uj").write_text("3500000\n")
    e = r.energy(a, r.read())
    assert e["package-0"] == pytest.approx(5.0)
    assert e["dram"] == pytest.approx(2.5)
    assert PW.Rapl.delta_uj(10, 4, 100) == 94
    assert PW.Rapl.delta_uj(4, 10, 100) == 6


def test_rapl_measure(rapl_tree):
    r = PW.Rapl(rapl_tree)

    def work():
        (rapl_tree / "intel-rapl:0" / "energy_uj").write_text("262142000000\n")   # +2 J
        return 7

    out, m = PW.measure_rapl(work, r)
    assert out == 7 and m.joules["package-0"] == pytest.approx(2.0) and m.joules["dram"] == 0
    assert m.total_joules == pytest.approx(2.0) and m.seconds > 0


def test_rapl_unavailable(tmp_path, rapl_tree):
    ok, why = PW.Rapl(tmp_path / "nothing").available()
    assert not ok and "no " in why
    empty = tmp_path / "empty"
    empty.mkdir()
    ok, why = PW.Rapl(empty).available()
    assert not ok and "no RAPL package/dram domains" in why
    f = rapl_tree / "intel-rapl:0" / "energy_uj"
    f.chmod(0)
    try:
        if f.stat().st_mode & 0o444 == 0 and not _can_read(f):
            ok, why = PW.Rapl(rapl_tree).available()
            assert not ok and "not readable" in why
    finally:
        f.chmod(0o644)


def _can_read(f):
    try:
        f.read_text()
        return True
    except PermissionError:
        return False


def test_nvml_counter_math():
    values = iter([1_000_000, 1_012_500])
    nv = PW.Nvml(counter=lambda: next(values))
    assert nv.available() == (True, "")
    clock = iter([0.0, 2.0])
    import mmfree.boards.power as mod

    real = mod.time.perf_counter
    mod.time.perf_counter = lambda: next(clock)
    try:
        out, m = PW.measure_nvml(lambda: "done", nv)
    finally:
        mod.time.perf_counter = real
    assert out == "done" and m.joules["gpu"] == pytest.approx(12.5) and m.watts == pytest.approx(6.25)
    assert PW.Nvml.joules(100, 1100) == 1.0
    with pytest.raises(MmfreeError, match="backwards"):
        PW.Nvml.joules(1100, 100)


def test_nvml_short_window_refused():
    nv = PW.Nvml(counter=lambda: 5)
    with pytest.raises(MmfreeError, match="shorter than"):
        PW.measure_nvml(lambda: None, nv, min_window_s=10.0)


def test_nvml_absent_says_why():
    nv = PW.Nvml()
    ok, why = nv.available()
    if not ok:
        assert why


def test_hwmon_ina260(tmp_path):
    h = PW.Hwmon(DATA / "hwmon_sample")
    assert h.available() == (True, "")
    assert h.watts() == pytest.approx(6.312)
    out, m = PW.measure_sampled(lambda: 3, h.watts, interval_s=0.001)
    assert out == 3 and m.watts == pytest.approx(6.312)
    ok, why = PW.Hwmon(tmp_path).available()
    assert not ok and "ina260" in why


def test_pynq_rails_absent_says_why():
    ok, why = PW.PynqRails().available()
    assert ok or "pynq" in why


def test_power_model_arithmetic():
    res = {"lut": 10000, "ff": 20000, "dsp": 10, "bram36": 100, "uram": 4}
    act = {"weight_bus": 0.5, "nonzero_trits": 0.6, "codes": 0.4}
    w = PM.dynamic_watts(res, 200.0, "xcup", act, {"matvec": 1.0, "vector": 0.0})
    c = PM.COEFFS["xcup"]
    assert w["lut"] == pytest.approx(10000 * c["lut"] * 0.5 * 200e-6)
    assert w["ff"] == pytest.approx(20000 * c["ff"] * 0.5 * 200e-6)
    assert w["bram36"] == pytest.approx(100 * c["bram36"] * 0.5 * 200e-6)
    assert w["dsp"] == 0.0
    # doubling the clock doubles dynamic power
    w2 = PM.dynamic_watts(res, 400.0, "xcup", act, {"matvec": 1.0, "vector": 0.0})
    assert sum(w2.values()) == pytest.approx(2 * sum(w.values()))


def test_model_energy_row():
    r = PM.model_energy("1.3B", "kv260", 250)
    assert r["label"] == "modeled" and r["available"]
    assert r["joules_per_token"] == pytest.approx(r["watts"] / r["tokens_per_s"])
    assert 0 < r["joules_per_token_above_idle"] < r["joules_per_token"]
    b = r["breakdown_w"]
    assert r["watts"] == pytest.approx(b["board_idle"] + b["lut"] + b["ff"] + b["dsp"] + b["bram36"] + b["uram"]
                                       + b["ddr"], rel=1e-3)
    z = PM.model_energy("1.3B", "zcu104", 250)
    assert z["boundary"].startswith("chip")
