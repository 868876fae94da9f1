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


# ======================================================================================================
# readings that cannot be trusted (issue 22 item 7, issue 25): unavailable with the reason, never a number
# ======================================================================================================
def test_rapl_missing_max_range_is_unavailable(rapl_tree):
    (rapl_tree / "intel-rapl:0:1" / "max_energy_range_uj").unlink()
    ok, why = PW.Rapl(rapl_tree).available()
    assert not ok and "max_energy_range_uj" in why
    with pytest.raises(PW.Untrusted, match="max_energy_range_uj"):
        PW.measure_rapl(lambda: None, PW.Rapl(rapl_tree))


def test_rapl_reset_is_not_a_wrap(rapl_tree):
    mr = 262143328850
    assert PW.Rapl.delta_uj(mr - 1_000_000, 1_000_000, mr, seconds=1.0) == 2_000_000      # a real wrap: 2 J
    with pytest.raises(PW.Untrusted, match="reset"):
        PW.Rapl.delta_uj(100_000_000, 1_000_000, mr, seconds=1.0)                       # +262 kJ in 1 s
    with pytest.raises(PW.Untrusted, match="outside"):
        PW.Rapl.delta_uj(5, mr + 1, mr, seconds=1.0)

    def work():                                   # the dram counter drops from 1 J to 0.5 J mid-run: a reset
        (rapl_tree / "intel-rapl:0:1" / "energy_uj").write_text("500000\n")
        (rapl_tree / "intel-rapl:0" / "energy_uj").write_text("262142000000\n")

    with pytest.raises(PW.Untrusted, match="reset"):
        PW.measure_rapl(work, PW.Rapl(rapl_tree))


def test_rapl_frozen_counters_are_not_zero_joules(rapl_tree):
    with pytest.raises(PW.Untrusted, match="frozen"):
        PW.measure_rapl(lambda: __import__("time").sleep(0.12), PW.Rapl(rapl_tree), interval_s=0.03)


def test_rapl_tracker_adds_wraps_between_reads(rapl_tree):
    """Counters read every interval: two wraps of the package counter in one run are both counted."""
    import time

    zone = rapl_tree / "intel-rapl:0"
    (zone / "max_energy_range_uj").write_text("10000000\n")          # a 10 J counter (32-bit parts wrap often)
    (zone / "energy_uj").write_text("9000000\n")
    dram = rapl_tree / "intel-rapl:0:1" / "energy_uj"

    def put(path, value):                     # sysfs files change atomically; a rewritten file does not
        (path.parent / "tmp").write_text(f"{value}\n")
        (path.parent / "tmp").replace(path)

    def work():
        for i, v in enumerate((2_000_000, 8_000_000, 1_000_000)):    # wrap (+3 J), +6 J, wrap (+3 J)
            put(zone / "energy_uj", v)
            put(dram, 1_000_000 + 100_000 * (i + 1))
            time.sleep(0.1)

    _, m = PW.measure_rapl(work, PW.Rapl(rapl_tree), interval_s=0.02)
    assert m.joules["package-0"] == pytest.approx(12.0) and m.joules["dram"] == pytest.approx(0.3)


def test_rapl_read_failing_mid_run(rapl_tree):
    def work():
        (rapl_tree / "intel-rapl:0" / "energy_uj").write_text("garbage\n")
        __import__("time").sleep(0.05)

    with pytest.raises(PW.Untrusted, match="RAPL"):
        PW.measure_rapl(work, PW.Rapl(rapl_tree), interval_s=0.01)


def _hwmon_tree(tmp_path, uw="6000000"):
    d = tmp_path / "hwmon" / "hwmon0"
    d.mkdir(parents=True)
    (d / "name").write_text("ina260\n")
    (d / "power1_input").write_text(uw + "\n")
    return d


def test_hwmon_sensor_dying_mid_run(tmp_path):
    import time

    d = _hwmon_tree(tmp_path)
    h = PW.Hwmon(tmp_path / "hwmon")

    def work():
        time.sleep(0.05)
        (d / "power1_input").unlink()               # the driver unbinds mid-run
        time.sleep(0.05)

    with pytest.raises(PW.Untrusted, match="failed after [1-9][0-9]* samples"):
        PW.measure_sampled(work, h.watts, interval_s=0.005)


@pytest.mark.parametrize("bad", ["-5000000", "nan"])
def test_hwmon_nonsense_reading(tmp_path, bad):
    _hwmon_tree(tmp_path, bad)
    PW.Hwmon(tmp_path / "hwmon")
    with pytest.raises(PW.Untrusted, match="sensor"):
        PW.measure_sampled(lambda: None, lambda: float(bad) / 1e6, interval_s=0.005)


def test_nvml_frozen_and_backwards_are_untrusted():
    nv = PW.Nvml(counter=lambda: 5)
    with pytest.raises(PW.Untrusted, match="frozen"):
        PW.measure_nvml(lambda: None, nv, min_window_s=0.0)
    with pytest.raises(PW.Untrusted, match="backwards"):
        PW.Nvml.joules(10, 5)


# ---- the external meter log ------------------------------------------------------------------------------
def _csv(tmp_path, rows, header="timestamp,watts"):
    p = tmp_path / "meter.csv"
    p.write_text((header + "\n" if header else "") + "".join(f"{t},{w}\n" for t, w in rows))
    return p


def test_meter_alignment_integrates_exactly_the_window(tmp_path):
    base = 1_700_000_000.0
    # a ramp w = 10 + (t - base) sampled every 0.5 s: the integral over [t0, t1] is exact for linear data
    p = _csv(tmp_path, [(base + 0.5 * i, 10 + 0.5 * i) for i in range(41)])
    m = PW.Meter(p)
    t0, t1 = base + 3.2, base + 7.9
    j, n = m.energy(t0, t1)
    want = (t1 - t0) * 10 + ((t1 - base) ** 2 - (t0 - base) ** 2) / 2
    assert j == pytest.approx(want, rel=1e-12) and n == 9          # samples at 3.5 .. 7.5
    # the same log with the meter clock 2 s behind: --meter-offset 2 shifts it back into place
    p2 = _csv(tmp_path, [(base - 2 + 0.5 * i, 10 + 0.5 * i) for i in range(41)], header="")
    assert PW.Meter(p2, offset_s=2.0).energy(t0, t1)[0] == pytest.approx(want, rel=1e-12)


def test_meter_iso_timestamps(tmp_path):
    p = _csv(tmp_path, [("2026-12-06T05:00:00+00:00", 4), ("2026-12-06T05:00:10Z", 4)], header="# wall meter")
    from datetime import datetime, timezone

    t0 = datetime(2026, 12, 6, 5, 0, 2, tzinfo=timezone.utc).timestamp()
    assert PW.Meter(p, max_gap_s=20).energy(t0, t0 + 5)[0] == pytest.approx(20.0)


@pytest.mark.parametrize("t0,t1,why", [(-1.0, 5.0, "not covered"), (2.0, 25.0, "not covered"),
                                       (2.0, 18.0, "gap")])
def test_meter_not_covering_the_window_is_unavailable(tmp_path, t0, t1, why):
    rows = [(float(t), 5.0) for t in range(0, 10)] + [(float(t), 5.0) for t in range(16, 22)]  # 9 -> 16: a gap
    with pytest.raises(PW.Untrusted, match=why):
        PW.Meter(_csv(tmp_path, rows)).energy(t0, t1)


@pytest.mark.parametrize("body,why", [("1,2\n1,3\n", "increase"), ("1,2\n2,-1\n", "watts >= 0"),
                                      ("1,2,3\n2,2,2\n", "fields"), ("1,2\n", "at least 2"),
                                      ("1,2\nx,3\n", "line 2"), ("1,2\n2,nan\n", "finite")])
def test_meter_bad_files(tmp_path, body, why):
    p = tmp_path / "m.csv"
    p.write_text(body)
    with pytest.raises(MmfreeError, match=why):
        PW.Meter(p).energy(1.0, 1.5)
    with pytest.raises(MmfreeError, match="no such file"):
        PW.Meter(tmp_path / "absent.csv")


def test_meter_measure_window_and_idle(tmp_path):
    import time

    now = time.time()
    p = _csv(tmp_path, [(now - 5 + 0.25 * i, 12.5) for i in range(200)])
    out, m = PW.Meter(p).measure(lambda: time.sleep(0.2) or 7, idle_s=0.2)
    assert out == 7 and m.joules["meter"] == pytest.approx(12.5 * m.seconds, rel=1e-9)
    assert m.idle_watts == pytest.approx(12.5) and m.above_idle_joules() == pytest.approx(0.0, abs=1e-9)


# ---- --activity SAIF -------------------------------------------------------------------------------------
SAIF = """(SAIFILE
(SAIFVERSION "2.0")
(DIRECTION "backward")
(TIMESCALE 1 ns)
(DURATION 1000)
(INSTANCE top
   (NET
      (clk (T0 500) (T1 500) (TX 0) (TC 2000) (IG 0))
      (data\\[0\\] (T0 600) (T1 400) (TX 0) (TC 50) (IG 0))
      (data\\[1\\] (T0 600) (T1 400) (TX 0) (TC 30) (IG 0))
   )
   (INSTANCE u0
      (NET
         (acc (T0 900) (T1 100) (TC 20))
         (rst (T0 1000) (T1 0) (TC 0))
      )
   )
)
)
"""


def test_saif_activity_and_model(tmp_path):
    p = tmp_path / "a.saif"
    p.write_text(SAIF)
    a = PM.saif_activity(p, 250.0)                   # 1000 ns at 250 MHz = 250 cycles; clk and rst left out
    assert a["nets"] == 3 and a["cycles"] == pytest.approx(250)
    assert a["mean_toggles_per_bit_per_cycle"] == pytest.approx(100 / (3 * 250))
    base = PM.model_energy("1.3B", "kv260", 250)
    r = PM.model_energy("1.3B", "kv260", 250, saif=str(p))
    assert "SAIF a.saif" in r["method"] and r["activity"]["rtl_toggle"] == pytest.approx(100 / 750)
    assert r["breakdown_w"]["lut"] > base["breakdown_w"]["lut"]          # 0.133 toggles/bit/cycle vs 0.037
    bad = tmp_path / "b.saif"
    bad.write_text("(SAIFILE (NET (x (TC 3))))")
    with pytest.raises(MmfreeError, match="not a SAIF file"):
        PM.saif_activity(bad, 250.0)
    with pytest.raises(MmfreeError, match="no such file"):
        PM.saif_activity(tmp_path / "none.saif", 250.0)
