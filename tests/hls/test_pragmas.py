"""The HLS directives: after preprocessing (as Vitis' front end sees them) every pragma argument is a
literal, and every argument of every top has an INTERFACE pragma of the kind its C type calls for."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mmfree.hls import csim as C
from mmfree.hls import spec as SP
from mmfree.hls import synth as SY


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    src = tmp_path_factory.mktemp("pp")
    C.write_sources(src)
    flags = C.define_flags(SP.limit_defines(240, 640))
    out = {}
    for name in C.KERNEL_SOURCES:
        res = subprocess.run([C.find_compiler(), "-std=c++14", "-E", "-P", f"-I{src}", *flags, str(src / name)],
                             capture_output=True, text=True, check=True)
        out[name] = res.stdout
    return out


#: Pointer arguments that are single results in the AXI-Lite register file, not memory.
SCALAR_OUTPUTS = {("mmfree_rmsnorm_quantize", "P"), ("mmfree_rmsnorm_quantize", "S"), ("mmfree_rmsnorm_quantize", "sz"),
                  ("mmfree_dequantize", "M"), ("mmfree_dequantize", "shift")}


def _params(top: str) -> list[tuple[str, str]]:
    decl = (C.SRC_DIR / "mmfree_hls.h").read_text()
    m = re.search(rf"\bint {top}\((.*?)\);", decl, re.S)
    assert m, top
    params = []
    for p in m.group(1).split(","):
        p = " ".join(p.split())
        name = re.sub(r"\[.*\]", "", p).replace("&", " ").replace("*", " ").split()[-1]
        params.append((name, p))
    return params


def _body(pp: dict[str, str], top: str) -> str:
    for text in pp.values():
        m = re.search(rf"int {top}\([^;{{]*\)\s*\{{", text)      # the definition, not the declaration
        if m:
            j = text.find("\nint mmfree_", m.end())
            return text[m.start():j if j > 0 else None]
    raise AssertionError(f"{top} is defined in no kernel source")


def test_pragma_arguments_are_literals(preprocessed):
    for name, text in preprocessed.items():
        for line in text.splitlines():
            if "#pragma HLS" in line:
                assert "MMFREE_" not in line.replace("variable=MMFREE_TRIT_DECODE", ""), (name, line)
                for key in ("depth", "max", "factor", "II"):
                    for v in re.findall(rf"\b{key}=(\S+)", line):
                        assert v.isdigit(), (name, line)


@pytest.mark.parametrize("top", SY.TOPS)
def test_every_port_has_an_interface(preprocessed, top):
    body = _body(preprocessed, top)
    pragmas = {port: kind for kind, port in re.findall(r"#pragma HLS INTERFACE (\w+) port=(\w+)", body)}
    assert pragmas.get("return") == "s_axilite", top
    for name, decl in _params(top):
        assert name in pragmas, f"{top}: no INTERFACE pragma for {name}"
        if "hls::stream" in decl:
            want = "axis"
        elif "*" in re.sub(r"\[.*\]", "", decl) and (top, name) not in SCALAR_OUTPUTS:
            want = "m_axi"
        else:
            want = "s_axilite"            # scalars, scalar results, small arrays (the layer descriptor)
        assert pragmas[name] == want, f"{top}: {name} ({decl}) is {pragmas[name]}, expected {want}"


def test_clang_compiles_and_passes(tmp_path, random_int_model):
    """Vitis HLS parses C++ with clang; where clang++ is installed, build and run the test bench with it."""
    clang = shutil.which("clang++") or shutil.which("clang++-14") or shutil.which("clang++-16")
    if clang is None:
        pytest.skip("clang++ not installed (`apt-get install clang`); g++ covers the same checks")
    out = tmp_path / "proj"
    SY.write_project(out, "kv260", random_int_model(6, hidden_size=63, intermediate_size=100))
    cflags = re.search(r'set cflags "(.*)"', (out / "mmfree_layer.tcl").read_text()).group(1)
    srcs = [str(out / "src" / f) for f in C.KERNEL_SOURCES + [C.TB_SOURCE]]
    res = subprocess.run([clang, *cflags.replace("$here", str(out)).split(), "-O1", "-Wall", "-Wextra",
                          "-Wno-unknown-pragmas", "-Wno-unused-label", *srcs, "-o", str(tmp_path / "tb")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    for top in SY.TOPS:
        run = subprocess.run([str(tmp_path / "tb"), str(out / "vectors"), top], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout
