"""Power and energy readers: RAPL (CPU package + DRAM), NVML (GPU total-energy counter), hwmon INA260
(KV260 board power) and PYNQ rails (ZCU104). Every reader answers :meth:`available` with ``(True, "")`` or
``(False, reason)``; nothing here ever substitutes a constant for a reading.

Roots are injectable (``root=``) so tests read recorded sample trees; the parsing and the counter
arithmetic (RAPL wrap-around at ``max_energy_range_uj``, NVML millijoule deltas) are what the tests check.

* :class:`Rapl`: ``/sys/class/powercap/intel-rapl:*`` (or ``amd-rapl``) domains named ``package-N`` and
  ``dram``; ``energy_uj`` is a wrapping counter, a delta ``b < a`` means one wrap:
  ``b + max_energy_range_uj - a``. Since Linux 5.10 ``energy_uj`` is readable by root only.
* :class:`Nvml`: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since driver load; Volta and later),
  through ``nvidia-ml-py`` (import ``pynvml``), or an injected ``counter()`` returning millijoules. The
  counter updates about every 20-100 ms, so :func:`measure` windows shorter than :data:`NVML_MIN_WINDOW_S`
  are refused.
* :class:`Hwmon`: ``/sys/class/hwmon/hwmon*/name == ina260``, ``power1_input`` in microwatts, sampled by a
  thread while the workload runs (energy = mean power x time).
* :class:`PynqRails`: ``pynq.get_rails()`` + ``pynq.DataRecorder`` (only on a PYNQ board image).
* :class:`Meter`: an external meter's log (``--meter FILE``: CSV ``timestamp,watts``, Unix seconds), from a
  wall meter or an INA-class sensor, integrated over exactly the run's wall-clock window.

A reading that cannot be trusted raises :class:`Untrusted` (an MmfreeError) with the reason, never a number:
frozen RAPL counters, a counter that went back by more than a plausible wrap (a reset), a missing
``max_energy_range_uj``, a sensor that fails or stops mid-run, a meter log that does not cover the window.
The CLI turns it into an ``unavailable`` row with that reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmfree import MmfreeError

NVML_MIN_WINDOW_S = 1.0
#: Above this average power (per RAPL domain, over one sampling interval) a counter that went backwards is a
#: reset, not a wrap: no CPU package or DRAM draws 1 kW.
RAPL_MAX_PLAUSIBLE_W = 1000.0
#: RAPL counters are read this often while a workload runs, so a wrap is seen between two reads (the 32-bit
#: counters of some parts wrap every ~60 s at full power) and a reset is caught.
RAPL_INTERVAL_S = 0.5
#: A window at least this long in which a counter did not move at all is a frozen counter, not a measurement.
FROZEN_MIN_WINDOW_S = 0.05


class Untrusted(MmfreeError):
    """A power/energy reading that cannot be trusted; the message says why (reported as 'unavailable')."""


@dataclass
class Measurement:
    """Energy of one measured window: ``joules`` per domain, ``seconds`` of wall time; ``idle_watts``: the
    idle power of the same boundary (measured before the run, or stated by the user), None if not known."""

    joules: dict
    seconds: float
    idle_watts: float | None = None
    idle_source: str = ""

    def above_idle_joules(self) -> float | None:
        """Energy above the idle baseline (``total - idle_watts x seconds``), None without a baseline."""
        return None if self.idle_watts is None else self.total_joules - self.idle_watts * self.seconds

    @property
    def total_joules(self) -> float:
        return sum(self.joules.values())

    @property
    def watts(self) -> float:
        return self.total_joules / self.seconds if self.seconds > 0 else 0.0


# ======================================================================================================
# RAPL
# ======================================================================================================
class Rapl:
    """RAPL energy counters under ``root`` (default ``/sys/class/powercap``): the package and DRAM domains."""

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        self.root = Path(root)

    def domains(self) -> dict[str, Path]:
        """``{name: directory}`` of the package-* and dram domains (top-level and sub-zones)."""
        out = {}
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not d.name.startswith(("intel-rapl:", "amd-rapl:")) or not (d / "name").exists():
                continue
            try:
                name = (d / "name").read_text().strip()
            except OSError:
                continue
            if name.startswith("package") or name == "dram":
                key = name if name not in out else f"{name}@{d.name}"
                out[key] = d
        return out

    def available(self) -> tuple[bool, str]:
        if not self.root.is_dir():
            return False, f"no {self.root} (no powercap/RAPL driver: not Linux on x86, or a VM without RAPL)"
        doms = self.domains()
        if not doms:
            return False, f"no RAPL package/dram domains under {self.root} (the CPU or hypervisor exposes none)"
        for _name, d in doms.items():
            try:
                int((d / "energy_uj").read_text())
            except PermissionError:
                return False, (f"{d / 'energy_uj'} is not readable (root only since Linux 5.10, CVE-2020-8694): "
                               "run as root or grant read access")
            except (OSError, ValueError) as exc:
                return False, f"{d / 'energy_uj'} unreadable: {exc}"
        try:
            self.max_range()
        except Untrusted as exc:
            return False, str(exc)
        return True, ""

    def read(self) -> dict[str, int]:
        """Current ``energy_uj`` of every domain."""
        return {n: int((d / "energy_uj").read_text()) for n, d in self.domains().items()}

    def max_range(self) -> dict[str, int]:
        """``max_energy_range_uj`` of every domain; raises :class:`Untrusted` where it is missing or not a
        positive integer (without it a wrap cannot be told from a reset)."""
        out = {}
        for n, d in self.domains().items():
            f = d / "max_energy_range_uj"
            try:
                out[n] = int(f.read_text())
            except (OSError, ValueError) as exc:
                raise Untrusted(f"{f} is missing or unreadable ({exc.__class__.__name__}): without the counter's "
                                "range a wrap cannot be told from a reset") from None
            if out[n] <= 0:
                raise Untrusted(f"{f} holds {out[n]}, not a positive range")
        return out

    @staticmethod
    def delta_uj(a: int, b: int, max_range: int, seconds: float | None = None, name: str = "counter") -> int:
        """Microjoules between two readings of a counter that wraps at ``max_range`` (at most one wrap).

        With ``seconds`` (the time between the readings), a wrap that implies more than
        :data:`RAPL_MAX_PLAUSIBLE_W` is a reset of the counter (driver reload, CPU hot-plug, firmware) and
        raises :class:`Untrusted`; so does a reading outside ``[0, max_range]``."""
        for v in (a, b):
            if not 0 <= v <= max_range:
                raise Untrusted(f"RAPL {name}: reading {v} uJ is outside [0, max_energy_range_uj = {max_range}]")
        if b >= a:
            return b - a
        d = b + max_range - a
        if seconds is not None and d / 1e6 > RAPL_MAX_PLAUSIBLE_W * max(seconds, 1e-3):
            raise Untrusted(f"RAPL {name} went back from {a} to {b} uJ; as a wrap that is {d / 1e6:.0f} J in "
                            f"{seconds:.3f} s (> {RAPL_MAX_PLAUSIBLE_W:.0f} W): the counter was reset, not wrapped")
        return d

    def energy(self, before: dict[str, int], after: dict[str, int], seconds: float | None = None) -> dict[str, float]:
        """Joules per domain between two :meth:`read` results ``seconds`` apart (see :meth:`delta_uj`)."""
        mr = self.max_range()
        return {n: self.delta_uj(before[n], after[n], mr[n], seconds, n) / 1e6 for n in before if n in after}


# ======================================================================================================
# NVML
# ======================================================================================================
class Nvml:
    """GPU energy from NVML's total-energy counter (millijoules). ``counter``: a zero-argument function
    returning the counter (tests); default: ``pynvml`` on device ``index``."""

    def __init__(self, counter: Callable[[], int] | None = None, index: int = 0):
        self._counter, self.index, self._reason, self.device = counter, index, "", "injected counter"
        if counter is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                self._reason = "nvidia-ml-py (pynvml) is not installed: pip install nvidia-ml-py"
                return
            try:
                pynvml.nvmlInit()
                h = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.device = pynvml.nvmlDeviceGetName(h)
                if isinstance(self.device, bytes):
                    self.device = self.device.decode()
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
                self._counter = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            except Exception as exc:  # NVMLError_* (no driver, no GPU, not supported)
                self._reason = f"NVML unavailable: {exc} (no NVIDIA GPU/driver here, or a pre-Volta GPU)"

    def available(self) -> tuple[bool, str]:
        return (self._counter is not None), self._reason

    def read(self) -> int:
        if self._counter is None:
            raise MmfreeError(self._reason)
        return int(self._counter())

    @staticmethod
    def joules(before_mj: int, after_mj: int) -> float:
        """Joules between two counter readings (the counter is 64-bit and monotonic: no wrap); a counter that
        went backwards raises :class:`Untrusted`."""
        if after_mj < before_mj:
            raise Untrusted(f"NVML energy counter went backwards ({before_mj} -> {after_mj} mJ): driver reloaded?")
        return (after_mj - before_mj) / 1000.0


# ======================================================================================================
# hwmon (INA260 on the KV260 carrier)
# ======================================================================================================
class Hwmon:
    """Board power from an hwmon sensor ``name`` (default ``ina260``) under ``root`` (default
    ``/sys/class/hwmon``): ``power1_input`` in microwatts."""

    def __init__(self, root: str | Path = "/sys/class/hwmon", name: str = "ina260"):
        self.root, self.name = Path(root), name

    def sensor(self) -> Path | None:
        if not self.root.is_dir():
            return None
        for d in sorted(self.root.iterdir()):
            try:
                if (d / "name").read_text().strip() == self.name and (d / "power1_input").exists():
                    return d
            except OSError:
                continue
        return None

    def available(self) -> tuple[bool, str]:
        if not self.root.is_dir():
            return False, f"no {self.root} (not a Linux board)"
        s = self.sensor()
        if s is None:
            return False, f"no hwmon sensor named {self.name!r} with power1_input under {self.root} (not a KV260)"
        try:
            int((s / "power1_input").read_text())
        except (OSError, ValueError) as exc:
            return False, f"{s / 'power1_input'} unreadable: {exc}"
        return True, ""

    def watts(self) -> float:
        s = self.sensor()
        if s is None:
            raise MmfreeError(self.available()[1])
        return int((s / "power1_input").read_text()) / 1e6


class Sampler:
    """Samples ``read_watts()`` every ``interval_s`` in a thread between :meth:`start` and :meth:`stop`;
    :meth:`stop` returns (mean watts, seconds, samples). A sensor that fails mid-run (an exception, or a
    reading that is not a finite number >= 0) stops the sampling and :meth:`stop` raises :class:`Untrusted`:
    the mean of the samples before the failure is not the run's power."""

    def __init__(self, read_watts: Callable[[], float], interval_s: float = 0.05):
        self.read_watts, self.interval = read_watts, interval_s
        self.samples: list[float] = []
        self.error: str = ""
        self._stop = threading.Event()

    def _read(self) -> float:
        w = float(self.read_watts())
        if not (w >= 0.0 and w != float("inf")):
            raise ValueError(f"the sensor read {w} W")
        return w

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self._read())
            except Exception as exc:  # the sensor broke: the run's power is unknown
                self.error = f"the power sensor failed after {len(self.samples)} samples: {exc}"
                return
            self._stop.wait(self.interval)

    def start(self):
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float, int]:
        self._stop.set()
        self._thread.join()
        secs = time.perf_counter() - self._t0
        if not self.error and not self.samples:
            try:
                self.samples.append(self._read())
            except Exception as exc:
                self.error = f"the power sensor failed: {exc}"
        if self.error:
            raise Untrusted(self.error + " (a partial mean is not the run's power)")
        return sum(self.samples) / len(self.samples), secs, len(self.samples)


# ======================================================================================================
# PYNQ rails (ZCU104)
# ======================================================================================================
class PynqRails:
    """PYNQ power rails (``pynq.get_rails()``), where the board image has them."""

    def __init__(self):
        try:
            import pynq  # noqa: F401
            self._pynq = pynq
            self._reason = ""
        except ImportError:
            self._pynq = None
            self._reason = "pynq is not installed (PYNQ rails exist only on a PYNQ board image, e.g. ZCU104)"

    def available(self) -> tuple[bool, str]:
        if self._pynq is None:
            return False, self._reason
        try:
            rails = self._pynq.get_rails()
        except Exception as exc:
            return False, f"pynq.get_rails() failed: {exc}"
        if not rails:
            return False, "pynq.get_rails() found no rails on this board"
        return True, ""

    def watts(self) -> float:
        rails = self._pynq.get_rails()
        return sum(r.power.value for r in rails.values() if getattr(r, "power", None) is not None)


# ======================================================================================================
# measuring a workload
# ======================================================================================================
class _RaplTracker:
    """Reads the RAPL counters at the start, every ``interval_s`` in a thread, and at the stop, adding each
    interval's delta (so wraps are seen one at a time and a reset is caught by its implied power)."""

    def __init__(self, rapl: Rapl, interval_s: float = RAPL_INTERVAL_S):
        self.rapl, self.interval = rapl, interval_s
        self.max_range = rapl.max_range()                       # Untrusted when missing
        self.error = ""
        self._stop = threading.Event()

    def _sample(self):
        now, vals = time.perf_counter(), self.rapl.read()
        for n, mr in self.max_range.items():
            self.total[n] += self.rapl.delta_uj(self.last[n], vals[n], mr, now - self.t_last, n)
        self.last, self.t_last = vals, now

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception as exc:
                self.error = str(exc) if isinstance(exc, Untrusted) else f"reading RAPL failed mid-run: {exc}"
                return

    def start(self):
        self.last, self.t_last = self.rapl.read(), time.perf_counter()
        self.total = {n: 0 for n in self.max_range}
        self.t0 = self.t_last
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> Measurement:
        self._stop.set()
        self._thread.join()
        if not self.error:
            try:
                self._sample()
            except Exception as exc:
                self.error = str(exc) if isinstance(exc, Untrusted) else f"reading RAPL failed: {exc}"
        if self.error:
            raise Untrusted(self.error)
        secs = self.t_last - self.t0
        frozen = [n for n, v in self.total.items() if v == 0]
        if frozen and secs >= FROZEN_MIN_WINDOW_S:
            raise Untrusted(f"RAPL counter(s) {', '.join(frozen)} did not change in {secs:.2f} s: frozen (a VM or "
                            "firmware that exposes RAPL without updating it), not 0 J")
        return Measurement({n: v / 1e6 for n, v in self.total.items()}, secs)


def measure_rapl(fn: Callable[[], object], rapl: Rapl, interval_s: float = RAPL_INTERVAL_S) \
        -> tuple[object, Measurement]:
    """Run ``fn()`` while tracking the RAPL counters; returns (its result, the energy per domain). Raises
    :class:`Untrusted` for a missing range, a reset, a frozen counter or a read that fails."""
    tr = _RaplTracker(rapl, interval_s)
    tr.start()
    try:
        out = fn()
    finally:
        m = tr.stop() if not tr.error else None
    if m is None:
        raise Untrusted(tr.error)
    return out, m


def measure_idle(measure: Callable, seconds: float) -> float:
    """Idle watts of a boundary: ``measure(fn)`` (e.g. ``lambda fn: measure_rapl(fn, rapl)``) over ``seconds``
    of sleep. Raises :class:`Untrusted` like the reader does."""
    if not seconds > 0:
        raise MmfreeError(f"the idle window must be > 0 s, got {seconds}")
    _, m = measure(lambda: time.sleep(seconds))
    return m.watts


def measure_nvml(fn: Callable[[], object], nvml: Nvml, min_window_s: float = NVML_MIN_WINDOW_S) \
        -> tuple[object, Measurement]:
    """Run ``fn()`` between two NVML counter readings; refuses windows shorter than ``min_window_s`` (the
    counter's update period makes them meaningless)."""
    a = nvml.read()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    b = nvml.read()
    if secs < min_window_s:
        raise Untrusted(f"the GPU workload ran {secs:.3f} s, shorter than the {min_window_s} s NVML needs: "
                          "generate more tokens (--tokens)")
    j = Nvml.joules(a, b)
    if j == 0:
        raise Untrusted(f"the NVML energy counter did not change in {secs:.2f} s: frozen, not 0 J")
    return out, Measurement({"gpu": j}, secs)


def measure_sampled(fn: Callable[[], object], read_watts: Callable[[], float], interval_s: float = 0.05) \
        -> tuple[object, Measurement]:
    """Run ``fn()`` while sampling a power sensor; energy = mean watts x seconds."""
    s = Sampler(read_watts, interval_s)
    s.start()
    try:
        out = fn()
    finally:
        w, secs, _ = s.stop()
    return out, Measurement({"board": w * secs}, secs)


# ======================================================================================================
# an external meter's log
# ======================================================================================================
class Meter:
    """A wall meter's or INA-class sensor's log: CSV rows ``timestamp,watts`` (Unix seconds, or ISO 8601 with
    a time zone; an optional header row; ``#`` comments), timestamps strictly increasing, watts finite and
    >= 0. ``offset_s`` is added to the log's timestamps (to correct a meter clock that is known to be off).

    :meth:`energy` integrates the piecewise-linear power over exactly ``[t0, t1]`` (host ``time.time()``);
    it raises :class:`Untrusted` where the log does not cover the window (its first sample after t0 or its
    last before t1) or has a gap longer than ``max_gap_s`` inside it (default: 5 x the log's median interval,
    at least 1 s). A malformed file raises MmfreeError naming the line."""

    def __init__(self, path, offset_s: float = 0.0, max_gap_s: float | None = None):
        self.path, self.offset, self.max_gap = Path(path), float(offset_s), max_gap_s
        if not self.path.is_file():
            raise MmfreeError(f"--meter {path}: no such file (a CSV of timestamp,watts)")

    @staticmethod
    def _time(field: str) -> float:
        try:
            return float(field)
        except ValueError:
            from datetime import datetime

            t = datetime.fromisoformat(field.strip().replace("Z", "+00:00"))
            if t.tzinfo is None:
                raise ValueError(f"ISO time {field!r} has no time zone") from None
            return t.timestamp()

    def read(self) -> tuple[list[float], list[float]]:
        """(timestamps, watts) of the log, checked."""
        import math

        ts, ws, first = [], [], True
        for i, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            header, first = first, False
            parts = [p.strip() for p in line.split(",")]
            try:
                if len(parts) != 2:
                    raise ValueError(f"{len(parts)} fields, expected 2 (timestamp,watts)")
                t, w = self._time(parts[0]) + self.offset, float(parts[1])
            except ValueError as exc:
                if header and not any(c.isdigit() for c in line):
                    continue                                              # a header row
                raise MmfreeError(f"--meter {self.path} line {i}: {exc}") from None
            if not (math.isfinite(t) and math.isfinite(w) and w >= 0):
                raise MmfreeError(f"--meter {self.path} line {i}: timestamp and watts must be finite, watts >= 0")
            if ts and t <= ts[-1]:
                raise MmfreeError(f"--meter {self.path} line {i}: timestamps must increase ({t} after {ts[-1]})")
            ts.append(t)
            ws.append(w)
        if len(ts) < 2:
            raise MmfreeError(f"--meter {self.path} has {len(ts)} samples; a log needs at least 2")
        return ts, ws

    def energy(self, t0: float, t1: float) -> tuple[float, int]:
        """(joules in ``[t0, t1]``, samples inside the window); see the class doc for what raises."""
        import numpy as np

        ts, ws = self.read()
        if not t1 > t0:
            raise MmfreeError(f"meter window [{t0}, {t1}] is empty")
        if ts[0] > t0 or ts[-1] < t1:
            raise Untrusted(f"the meter log covers {ts[0]:.3f} .. {ts[-1]:.3f}, the run was {t0:.3f} .. {t1:.3f} "
                            f"(Unix s): not covered; log from before the run to after it (or set --meter-offset)")
        t, w = np.asarray(ts), np.asarray(ws)
        inside = (t > t0) & (t < t1)
        grid = np.concatenate([[t0], t[inside], [t1]])
        gap_limit = self.max_gap if self.max_gap is not None else max(1.0, 5 * float(np.median(np.diff(t))))
        lo, hi = np.searchsorted(t, t0, "right") - 1, np.searchsorted(t, t1, "left")
        gap = float(np.max(np.diff(t[lo:hi + 1])))
        if gap > gap_limit:
            raise Untrusted(f"the meter log has a {gap:.2f} s gap inside the run (limit {gap_limit:.2f} s): "
                            "the meter or its logger stopped")
        vals = np.interp(grid, t, w)
        return float(np.sum((vals[1:] + vals[:-1]) * np.diff(grid)) / 2), int(inside.sum())

    def measure(self, fn: Callable[[], object], idle_s: float = 0.0) -> tuple[object, Measurement]:
        """Run ``fn()`` between two ``time.time()`` stamps and integrate the log over that window (read after
        the run: a logger may still be appending). ``idle_s`` > 0 first sleeps that long and takes the idle
        watts from the same log."""
        idle = None
        if idle_s > 0:
            i0 = time.time()
            time.sleep(idle_s)
            i1 = time.time()
        t0 = time.time()
        out = fn()
        t1 = time.time()
        if idle_s > 0:
            idle = self.energy(i0, i1)[0] / (i1 - i0)
        j, _ = self.energy(t0, t1)
        return out, Measurement({"meter": j}, t1 - t0, idle, f"meter, {idle_s:g} s before the run" if idle_s > 0 else "")
