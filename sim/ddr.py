"""The PS DDR controller as the accelerator's weight ports see it: one shared controller for every HP port,
from published measurements (issue 23). Used by the performance model (:mod:`mmfree.sim.perf`) and, as
plusargs, by the simulated DDR's realistic option (``sim/hdl/mmfree_axi_mem.sv``).

The model, per board (every figure in :data:`EVIDENCE` / :data:`REFRESH_NS` names its source):

* **aggregate cap**: the controller delivers at most ``read_efficiency x peak`` bytes/s of sequential PL reads,
  over all ports together. ``read_efficiency`` is a published measurement that includes refresh and the
  controller's scheduling: 0.833 on the ZynqMP (KV260: the BitNet-2B port's output-head stream, ~16 of 19.2
  GB/s) and 0.97 on the Zynq-7000 (UG585, sequential reads by 4 HP masters with 16-beat bursts);
* **per-port cap**: an HP port sustains ``hp_port_efficiency`` (an assumption, :mod:`mmfree.sim.perf`) of its
  width x clock;
* **refresh**: every tREFI = 7.8 us the device is busy for tRFC (by DDR type and device density, JEDEC figures
  from vendor data sheets). Refresh is part of the measured efficiency; the simulated DDR makes it explicit:
  no beat for tRFC every tREFI, the rest of the time ``read_efficiency / (1 - tRFC / tREFI)`` of the peak;
* **read latency**: the ``rd_latency_ns`` assumption (no published figure for PL reads found), spread in the
  simulated DDR as base + uniform(0, jitter) per burst.

Public API: :func:`ddr_model` (a :class:`DdrModel`), :func:`sim_plusargs` (the HDL model's plusargs),
:func:`fixed_order_rate` (the per-port rate its fixed-order arbitration leaves when the aggregate binds),
:func:`random_plusargs` (its random back-pressure, a bus rate < 1), :func:`parse_plusargs` (them as a
dict), :func:`r_pauses` / :func:`ar_pauses` (the same behaviour as
cocotbext-axi pause generators, for the Python memory ``AxiRam`` on ``m_axi``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

from mmfree import MmfreeError

#: Sequential PL-read efficiency of each PS family's DDR controller (fraction of the DDR peak, refresh
#: included), with its source.
EVIDENCE = {
    "zynqmp": (16.0 / 19.2, "BitNet-2B KV260 port: its output-head stream reached ~16 GB/s of the 19.2 GB/s DDR4-2400 "
                            "peak (../shared/official-model.md; issue 23), the highest sequential PL read rate "
                            "published for this board, so a lower bound of what the controller sustains"),
    "zynq7": (0.97, "Zynq-7000 TRM UG585, 'DDR Efficiency' table: sequential reads by 4 HP/AFI masters with 16-beat "
                    "bursts, 97 % (https://docs.amd.com/r/en-US/ug585-zynq-7000-SoC-TRM/DDR-Efficiency)"),
}
#: Average refresh interval tREFI (ns) at <= 85 C, DDR3 and DDR4 (JEDEC; e.g. the Hynix DDR3 data sheet's
#: refresh table, https://manualsbrain.com/en/manuals/498555/?page=46).
TREFI_NS = 7800.0
#: Refresh cycle time tRFC (ns) by DDR type and device density (Gb). DDR4: the density table at
#: https://www.globalsino.com/ICsAndMaterials/page4937.html (JEDEC values); DDR3: the Hynix data sheet above.
REFRESH_NS = {
    "DDR4": {2: 160.0, 4: 260.0, 8: 350.0, 16: 530.0},
    "DDR3": {1: 110.0, 2: 160.0, 4: 300.0, 8: 350.0},
}
#: Extra read latency of the simulated realistic DDR per burst: uniform 0..this fraction of the mean latency
#: above the base (an assumption: the spread is unpublished; it only has to exercise the read window).
LATENCY_SPREAD = 0.5


@dataclass(frozen=True)
class DdrModel:
    """One board's DDR as the PL sees it (bytes/s, ns, fractions); see the module docstring."""

    peak_bytes_per_s: float
    read_efficiency: float          # aggregate, refresh included (published)
    aggregate_bytes_per_s: float    # peak x read_efficiency: every port together
    refresh_fraction: float         # tRFC / tREFI
    trfc_ns: float
    trefi_ns: float
    device_gbit: int
    source: str

    def as_dict(self) -> dict:
        return asdict(self)


def device_gbit(ddr: dict) -> int:
    """Density (Gbit) of one x16 device: the board's DDR size over its width / 16 devices, a power of two."""
    n_dev = max(1, int(ddr["width_bits"]) // 16)
    gbit = ddr["size_mb"] * 8 / 1024 / n_dev
    return 1 << max(0, round(math.log2(gbit))) if gbit > 0 else 1


def ddr_model(board) -> DdrModel:
    """The :class:`DdrModel` of a :class:`mmfree.boardfile.Board`. Raises :class:`MmfreeError` for a PS family or
    DDR type without published figures here (board file ``ps`` / ``ddr.type``)."""
    ps = (board.raw.get("ps") or "").lower()
    if ps not in EVIDENCE:
        raise MmfreeError(f"board {board.name}: no published DDR read efficiency for ps {ps!r}; the model knows "
                          f"{', '.join(EVIDENCE)} (board file field 'ps')")
    ddr = board.ddr
    kind = str(ddr.get("type", "")).upper()
    if kind not in REFRESH_NS:
        raise MmfreeError(f"board {board.name}: ddr.type {ddr.get('type')!r} has no refresh figures; use one of "
                          f"{', '.join(REFRESH_NS)}")
    gbit = device_gbit(ddr)
    table = REFRESH_NS[kind]
    trfc = table.get(gbit, table[min(table, key=lambda g: abs(g - gbit))])
    eff, src = EVIDENCE[ps]
    peak = board.ddr_peak_bytes_per_s
    return DdrModel(peak, eff, eff * peak, trfc / TREFI_NS, trfc, TREFI_NS, gbit, src)


def fixed_order_rate(port_rate: float, aggregate_rate: float, ports: int) -> float:
    """Beats per cycle per port at which ``ports`` equal shares of a matrix finish behind the simulated DDR's shared
    controller (``sim/hdl/mmfree_axi_mem.sv`` realistic option), which hands its ``aggregate_rate`` (beats per cycle)
    out in a fixed port order, each port at most ``port_rate``: the first ports stream at their cap and finish early
    (their weight queues take the run-ahead), the last ones get what is left, then their cap; the lock-step engine
    waits for the last. ``min(port_rate, aggregate_rate / ports)`` (every port its cap or an equal share) where the
    aggregate does not bind; lower where it does (six KV260 ports: 0.45 between refreshes instead of 0.70). A fair
    arbiter, or matrices larger than the queues (back-pressure evens the ports out), give the equal share: this is
    the bound for matrices that fit the queues. Raises MmfreeError on rates that are not positive or ports < 1."""
    if not (port_rate > 0 and aggregate_rate > 0) or not isinstance(ports, int) or ports < 1:
        raise MmfreeError(f"fixed_order_rate needs positive rates and ports >= 1, got {port_rate}, {aggregate_rate}, "
                          f"{ports}")
    left, t = [1.0] * ports, 0.0
    while any(x > 1e-12 for x in left):
        avail, rates = aggregate_rate, []
        for x in left:                          # in port order: each its cap or what the earlier ones left
            r = min(port_rate, avail) if x > 1e-12 else 0.0
            rates.append(r)
            avail -= r
        dt = min(x / r for x, r in zip(left, rates) if r > 0)
        left = [max(0.0, x - r * dt) for x, r in zip(left, rates)]
        t += dt
    return 1.0 / t


def _ratio(x: float, max_den: int = 64) -> tuple[int, int]:
    f = Fraction(x).limit_denominator(max_den)
    return f.numerator, f.denominator


def sim_plusargs(model: DdrModel, clock_hz: float, bus_bytes: int, port_efficiency: float, rd_latency: int,
                 seed: int = 1) -> list[str]:
    """Plusargs that make the simulated DDR (``sim/hdl/mmfree_axi_mem.sv``) behave as ``model`` at ``clock_hz`` with
    ``bus_bytes`` per beat: the aggregate beat rate between refreshes, each port's rate, the refresh schedule, and
    a latency of ``rd_latency`` .. ``rd_latency x (1 + LATENCY_SPREAD)`` cycles (seeded by ``seed``)."""
    beat_per_s = bus_bytes * clock_hz
    agg = model.aggregate_bytes_per_s / (1 - model.refresh_fraction) / beat_per_s    # beats per cycle between refreshes
    an, ad = _ratio(agg)
    pn, pd = _ratio(min(1.0, port_efficiency))
    period = round(model.trefi_ns * 1e-9 * clock_hz)
    busy = round(model.trfc_ns * 1e-9 * clock_hz)
    return [f"+MMFREE_DDR_NUM={an}", f"+MMFREE_DDR_DEN={ad}", f"+MMFREE_PORT_NUM={pn}", f"+MMFREE_PORT_DEN={pd}",
            f"+MMFREE_REF_PERIOD={period}", f"+MMFREE_REF_CYCLES={busy}",
            f"+MMFREE_RD_JITTER={round(rd_latency * LATENCY_SPREAD)}", f"+MMFREE_DDR_SEED={seed}"]


def random_plusargs(rate: float, seed: int = 1, max_den: int = 64) -> list[str]:
    """Plusargs of the simulated DDR's random back-pressure (``sim/hdl/mmfree_axi_mem.sv``): each port's data bus
    moves a beat in a cycle (R; on the main port R or W) only with probability ``rate`` (a fraction n/d with
    d <= ``max_den``; seeded by ``seed``, deterministic), so a busy port averages ``rate`` beats per cycle: the
    model's bus rate (:func:`mmfree.sim.perf.pass_cycles` ``rate``). ``rate`` must be in (0, 1]
    (:class:`MmfreeError` otherwise); 1.0 gives no back-pressure."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise MmfreeError(f"the random back-pressure bus rate must be in (0, 1] beats per cycle, got {rate!r}")
    n, d = _ratio(rate, max_den)
    if n == 0:
        raise MmfreeError(f"the random back-pressure bus rate {rate!r} rounds to 0 at denominators <= {max_den}; "
                          f"give at least 1/{max_den}")
    return [f"+MMFREE_BUS_RATE_NUM={n}", f"+MMFREE_BUS_RATE_DEN={d}", f"+MMFREE_DDR_SEED={int(seed)}"]


def parse_plusargs(plusargs) -> dict:
    """``{"DDR_NUM": n, ...}`` from :func:`sim_plusargs`' strings (MmfreeError on anything else)."""
    out = {}
    for a in plusargs:
        name, _, value = str(a).partition("=")
        if not name.startswith("+MMFREE_") or not value.lstrip("-").isdigit():
            raise MmfreeError(f"realistic DDR setting {a!r} is not +MMFREE_<NAME>=<integer> (see sim_plusargs)")
        out[name[len("+MMFREE_"):]] = int(value)
    return out


def r_pauses(settings: dict):
    """An endless pause pattern for the R channel of cocotbext-axi's ``AxiRam`` (True = no beat this cycle): no
    beat during refresh (REF_CYCLES of every REF_PERIOD), otherwise a beat whenever the credit of the slower of
    the port rate (PORT_NUM / PORT_DEN) and the aggregate (DDR_NUM / DDR_DEN) reaches one and the random
    back-pressure (BUS_RATE_NUM / BUS_RATE_DEN, seeded by DDR_SEED; :func:`random_plusargs`; the Python memory
    applies it to R only) allows it. The Python memory serves one port (m_axi), so the aggregate is its own cap."""
    rates = [Fraction(settings[n], settings[d]) for n, d in (("PORT_NUM", "PORT_DEN"), ("DDR_NUM", "DDR_DEN"))
             if settings.get(n, 0) > 0]
    rate = min(rates + [Fraction(1)])
    period, busy = settings.get("REF_PERIOD", 0), settings.get("REF_CYCLES", 0)
    lucky = _random_draws(settings.get("BUS_RATE_NUM", 0), settings.get("BUS_RATE_DEN", 1),
                          settings.get("DDR_SEED", 1))
    t, credit = 0, Fraction(0)
    while True:
        allowed = next(lucky)                   # one draw per cycle, as the HDL model's generator
        if period and t % period < busy:
            yield True
        else:
            credit = min(credit + rate, 1 + rate)   # capped as the HDL model's credit counters
            if allowed and credit >= 1:
                credit -= 1
                yield False
            else:
                yield True
        t += 1


def _random_draws(num: int, den: int, seed: int):
    """Endless booleans: True with probability num / den per step (seeded; always True when 0 < num < den fails,
    as the HDL model's random back-pressure is off then)."""
    import random

    rng = random.Random(seed)
    on = 0 < num < den
    while True:
        yield not on or rng.randrange(den) < num


def ar_pauses(settings: dict):
    """An endless pause pattern for the AR channel (seeded): each cycle a request waits with probability
    jitter / (jitter + latency base of 24), so requests see extra latency of about uniform spread (the HDL model's
    per-burst jitter, approximated: ``AxiRam`` has no latency of its own)."""
    import random

    rng = random.Random(settings.get("DDR_SEED", 1))
    jitter = settings.get("RD_JITTER", 0)
    p = jitter / (jitter + 24) if jitter > 0 else 0.0
    while True:
        yield rng.random() < p
