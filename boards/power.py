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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmfree import MmfreeError

NVML_MIN_WINDOW_S = 1.0


@dataclass
class Measurement:
    """Energy of one measured window: ``joules`` per domain, ``seconds`` of wall time."""

    joules: dict
    seconds: float

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
        for name, d in doms.items():
            try:
                int((d / "energy_uj").read_text())
            except PermissionError:
                return False, (f"{d / 'energy_uj'} is not readable (root only since Linux 5.10, CVE-2020-8694): "
                               "run as root or grant read access")
            except (OSError, ValueError) as exc:
                return False, f"{d / 'energy_uj'} unreadable: {exc}"
        return True, ""

    def read(self) -> dict[str, int]:
        """Current ``energy_uj`` of every domain."""
        return {n: int((d / "energy_uj").read_text()) for n, d in self.domains().items()}

    def max_range(self) -> dict[str, int]:
        return {n: int((d / "max_energy_range_uj").read_text()) for n, d in self.domains().items()}

    @staticmethod
    def delta_uj(a: int, b: int, max_range: int) -> int:
        """Microjoules between two readings of a counter that wraps at ``max_range`` (at most one wrap)."""
        return b - a if b >= a else b + max_range - a

    def energy(self, before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
        """Joules per domain between two :meth:`read` results."""
        mr = self.max_range()
        return {n: self.delta_uj(before[n], after[n], mr[n]) / 1e6 for n in before if n in after}


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
        """Joules between two counter readings (the counter is 64-bit and monotonic: no wrap)."""
        if after_mj < before_mj:
            raise MmfreeError(f"NVML energy counter went backwards ({before_mj} -> {after_mj} mJ): driver reloaded?")
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
    :meth:`stop` returns (mean watts, seconds, samples)."""

    def __init__(self, read_watts: Callable[[], float], interval_s: float = 0.05):
        self.read_watts, self.interval = read_watts, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self.read_watts())
            self._stop.wait(self.interval)

    def start(self):
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float, int]:
        self._stop.set()
        self._thread.join()
        secs = time.perf_counter() - self._t0
        if not self.samples:
            self.samples.append(self.read_watts())
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
def measure_rapl(fn: Callable[[], object], rapl: Rapl) -> tuple[object, Measurement]:
    """Run ``fn()`` between two RAPL readings; returns (its result, the energy per domain)."""
    a = rapl.read()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    b = rapl.read()
    return out, Measurement(rapl.energy(a, b), secs)


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
        raise MmfreeError(f"the GPU workload ran {secs:.3f} s, shorter than the {min_window_s} s NVML needs: "
                          "generate more tokens (--tokens)")
    return out, Measurement({"gpu": Nvml.joules(a, b)}, secs)


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
