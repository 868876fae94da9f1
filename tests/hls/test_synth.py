"""`mmfree hls synth`: the generated Vitis HLS projects. Their TCL runs here in a real Tcl interpreter with
the Vitis commands stubbed (structure), and their test bench compiles with g++ and passes on the
generated vectors (what csim_design does). Vitis itself runs only where it is installed (vivado marker)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from mmfree import MmfreeError
from mmfree.cli import main
from mmfree.hls import csim as C
from mmfree.hls import synth as SY

VITIS_COMMANDS = ("open_project", "set_top", "add_files", "open_solution", "set_part", "create_clock",
                  "csim_design", "csynth_design", "cosim_design", "export_design", "exit", "cd")


@pytest.fixture(scope="module")
def project(random_int_model, tmp_path_factory):
    model = random_int_model(5, hidden_size=63, intermediate_size=100)
    out = tmp_path_factory.mktemp("synth") / "proj"
    summary = SY.write_project(out, "pynq-z2", model, model_name="random")
    return out, summary, model


def _run_tcl(path, env_steps=None, monkeypatch=None):
    tkinter = pytest.importorskip("tkinter", reason="the TCL structure test needs Python's tkinter (Tcl)")
    if env_steps is not None:
        monkeypatch.setenv("MMFREE_HLS_STEPS", env_steps)
    tcl = tkinter.Tcl()
    tcl.eval("set ::calls {}")
    for cmd in VITIS_COMMANDS:
        tcl.eval(f"proc {cmd} {{args}} {{ lappend ::calls [list {cmd} {{*}}$args] }}")
    tcl.eval(f"source {{{path}}}")
    return [list(tcl.splitlist(c)) for c in tcl.splitlist(tcl.eval("set ::calls"))]


@pytest.mark.parametrize("board,part", [("pynq-z2", "xc7z020clg400-1"), ("KV260", "xck26-sfvc784-2LV-c"),
                                        ("zcu_104", "xczu7ev-ffvc1156-2-e")])
def test_boards(board, part):
    assert SY.board_part(board).part == part


def test_unknown_board_and_top(random_int_model, tmp_path):
    with pytest.raises(MmfreeError, match="unknown board 'zynq'; choose one of pynq-z2, kv260, zcu104"):
        SY.board_part("zynq")
    with pytest.raises(MmfreeError, match="unknown top-level kernel"):
        SY.write_project(tmp_path / "p", "kv260", random_int_model(0), tops=["nope"])
    with pytest.raises(MmfreeError, match="unknown step"):
        SY.write_project(tmp_path / "p", "kv260", random_int_model(0), steps=["place"])
    with pytest.raises(MmfreeError, match="whitespace"):
        SY.write_project(tmp_path / "with space", "kv260", random_int_model(0))


def test_refuses_to_replace_a_foreign_directory(random_int_model, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MmfreeError, match="not a project written by `mmfree hls synth`"):
        SY.write_project(mine, "kv260", random_int_model(0), tops=["mmfree_mlgru"])
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "again"
    SY.write_project(out, "kv260", random_int_model(0), tops=["mmfree_mlgru"])
    SY.write_project(out, "zcu104", random_int_model(0), tops=["mmfree_dequantize"])     # ours: replaced
    assert sorted(p.name for p in out.glob("*.tcl")) == ["mmfree_dequantize.tcl"]


def test_project_files(project):
    out, summary, model = project
    assert sorted(p.name for p in out.glob("*.tcl")) == sorted(f"{t}.tcl" for t in SY.TOPS)
    for name in C.HEADERS + C.KERNEL_SOURCES + [C.TB_SOURCE, "mmfree_spec.h"]:
        assert (out / "src" / name).is_file(), name
    assert not (out / "src" / "csim_api.cpp").exists()
    mf = json.loads((out / "manifest.json").read_text())
    assert mf["part"] == "xc7z020clg400-1" and mf["clock_ns"] == 10.0
    assert mf["limits"]["MMFREE_MAX_D"] == 63 and mf["limits"]["MMFREE_MAX_I"] == 100
    for top in SY.TOPS:
        assert (out / "vectors" / top / "scalars.txt").is_file()


@pytest.mark.parametrize("top", SY.TOPS)
def test_tcl_structure(project, top):
    out, summary, _ = project
    calls = _run_tcl(out / f"{top}.tcl")
    names = [c[0] for c in calls]
    assert names == ["cd", "open_project", "set_top", *["add_files"] * (len(C.KERNEL_SOURCES) + 1),
                     "open_solution", "set_part", "create_clock", "csim_design", "csynth_design", "cosim_design",
                     "export_design", "exit"]
    by = {c[0]: c[1:] for c in calls}
    assert by["cd"] == [str(out)]
    assert by["open_project"] == ["-reset", f"proj_{top}"]
    assert by["set_top"] == [top]
    assert by["set_part"] == ["xc7z020clg400-1"]
    assert by["create_clock"] == ["-period", "10", "-name", "default"]
    adds = [c[1:] for c in calls if c[0] == "add_files"]
    files = [a[-3] if a[0] == "-tb" else a[0] for a in adds]
    for f in files:
        assert (out / "src").joinpath(f.split("/src/")[-1]).is_file(), f
    assert sum(a[0] == "-tb" for a in adds) == 1 and adds[-1][1].endswith("/src/tb_main.cpp")
    cflags = adds[0][adds[0].index("-cflags") + 1]
    defines = dict(re.findall(r"-D(\w+)=(\d+)", cflags))
    assert defines["MMFREE_MAX_D"] == "63" and defines["MMFREE_MAX_KBUF"] == "100"
    assert "-std=c++14" in cflags
    assert by["csim_design"] == ["-argv", f"{out}/vectors {top}"]
    assert by["cosim_design"][:2] == ["-rtl", "verilog"]
    exp = by["export_design"]
    assert exp[exp.index("-format") + 1] == "ip_catalog" and exp[exp.index("-ipname") + 1] == top
    assert exp[exp.index("-output") + 1] == f"{out}/ip/{top}_pynq_z2.zip"


def test_tcl_steps_from_environment(project, monkeypatch):
    out, _, _ = project
    calls = _run_tcl(out / "mmfree_layer.tcl", env_steps="csim csynth", monkeypatch=monkeypatch)
    names = [c[0] for c in calls]
    assert "csim_design" in names and "csynth_design" in names
    assert "cosim_design" not in names and "export_design" not in names


def test_depths_cover_the_vectors(project):
    out, summary, model = project
    layer = summary["scripts"]["mmfree_layer"]["defines"]
    assert layer["MMFREE_DEPTH_IMAGE"] == (out / "vectors/mmfree_layer/image.bin").stat().st_size
    assert layer["MMFREE_DEPTH_VEC"] >= model.dims.d
    bl = summary["scripts"]["mmfree_bitlinear"]["defines"]
    assert bl["MMFREE_DEPTH_VEC"] >= model.dims.vocab


def test_test_bench_passes_on_generated_vectors(project, tmp_path):
    """The project's own test bench, compiled with g++ as csim_design would, passes for every top."""
    out, summary, _ = project
    cflags = re.search(r'set cflags "(.*)"', (out / "mmfree_layer.tcl").read_text()).group(1)
    cflags = cflags.replace("$here", str(out)).split()
    exe = tmp_path / "tb"
    srcs = [str(out / "src" / f) for f in C.KERNEL_SOURCES + [C.TB_SOURCE]]
    res = subprocess.run([C.find_compiler(), *cflags, "-O1", "-Wall", "-Wextra", "-Wno-unknown-pragmas",
                          "-Wno-unused-label", *srcs, "-o", str(exe)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    for top in SY.TOPS:
        run = subprocess.run([str(exe), str(out / "vectors"), top], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.strip().endswith(f"PASS {top}")
    bad = subprocess.run([str(exe), str(out / "vectors"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown top" in bad.stderr


def test_cli_synth_prints_the_vitis_command(random_export, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SY, "vitis_tool", lambda: None)
    out = tmp_path / "kv"
    rc = main(["hls", "synth", "--board", "kv260", "--out", str(out), "--model", str(random_export(0)),
               "--top", "mmfree_mlgru", "--steps", "csim,csynth"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "xck26-sfvc784-2LV-c" in text and "vitis_hls is not on PATH" in text
    assert f"cd {out} && vitis_hls -f mmfree_mlgru.tcl" in text
    assert "set steps {csim csynth}" in (out / "mmfree_mlgru.tcl").read_text()


def test_cli_synth_json(random_export, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SY, "vitis_tool", lambda: None)
    rc = main(["hls", "synth", "--board", "zcu104", "--out", str(tmp_path / "z"), "--model", str(random_export(0)),
               "--json", "--clock-ns", "5"])
    assert rc == 0
    js = json.loads(capsys.readouterr().out)
    assert js["part"] == "xczu7ev-ffvc1156-2-e" and js["clock_ns"] == 5.0 and js["vitis"]["found"] is False
    assert js["tops"] == list(SY.TOPS) and len(js["commands"]) == len(SY.TOPS)


def test_cli_synth_bad_board_exits_1(capsys, tmp_path):
    assert main(["hls", "synth", "--board", "de10", "--out", str(tmp_path / "x")]) == 1
    assert "unknown board 'de10'" in capsys.readouterr().err


@pytest.mark.vivado
def test_vitis_csim_and_csynth(project):
    """On a machine with Vitis HLS: C simulation and synthesis of the smallest top."""
    out, _, _ = project
    tool = SY.vitis_tool()
    env = {"MMFREE_HLS_STEPS": "csim csynth"}
    import os

    res = subprocess.run(tool + ["mmfree_ternary_matvec.tcl"], cwd=out, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
