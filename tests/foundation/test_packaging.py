"""Packaging by resource: what a wheel must hold, where caches go, source digests, templates, shared CLI options.

The end-to-end check (the built wheel in a fresh venv runs `mmfree sim` and `mmfree demo`) is `make wheel-check`,
run by .ci/run; these are its fast, in-process parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from mmfree import MmfreeError
from mmfree import config as C

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_package_is_in_the_wheel():
    """A folder with an __init__.py under a mapped package (sim/benches was missing) is listed in `packages`."""
    st = _setuptools()
    listed = set(st["packages"])
    missing = []
    for name, folder in st["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            pkg = ".".join([name, *rel.parts]) if rel.parts else name
            if pkg not in listed:
                missing.append(pkg)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"


def test_package_data_covers_the_data_files_the_code_reads():
    """Non-Python files the package reads at run time are matched by its package-data globs."""
    import fnmatch

    st = _setuptools()
    needed = {"mmfree.sim": ["hdl/mmfree_axi_mem.sv"], "mmfree.hls": ["tcl/hls_project.tcl.in", "src/layer.cpp"],
              "mmfree.boards": ["tcl/build.tcl.in", "tcl/block_design.tcl.in", "data/unit_resources.json",
                                "kv260/board.json"],
              "mmfree.pymodel": ["default_model/config.json"]}
    for pkg, files in needed.items():
        globs = st["package-data"][pkg]
        for f in files:
            assert (ROOT / st["package-dir"][pkg] / f).exists(), f
            assert any(fnmatch.fnmatch(f, g) for g in globs), f"{pkg}: {f} matches none of {globs}"


def test_source_digest_reads_installed_sources():
    a = C.source_digest(*C.RTL_SOURCES, extra="x")
    assert a == C.source_digest(*C.RTL_SOURCES, extra=b"x") and len(a) == 16
    assert a != C.source_digest(*C.RTL_SOURCES, extra="y")
    assert C.source_digest("mmfree.pymodel:numerics.py") != C.source_digest("mmfree.pymodel:layout.py")


def test_cache_dir_outside_a_checkout_is_the_user_cache(tmp_path, monkeypatch):
    """An installed wheel (no pyproject.toml next to the package) caches under XDG_CACHE_HOME, never inside
    site-packages; MMFREE_CACHE overrides; a checkout keeps build/."""
    monkeypatch.delenv("MMFREE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(C, "PACKAGE_ROOT", tmp_path / "site-packages")
    assert C.checkout_root() is None
    assert C.cache_dir() == tmp_path / "xdg" / "mmfree" and (tmp_path / "xdg" / "mmfree").is_dir()
    assert not (tmp_path / "site-packages").exists()
    monkeypatch.setenv("MMFREE_CACHE", str(tmp_path / "mine"))
    assert C.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MMFREE_CACHE")
    monkeypatch.setattr(C, "PACKAGE_ROOT", ROOT)
    assert C.checkout_root() == ROOT and C.cache_dir() == ROOT / "build"


def test_template_render(tmp_path):
    from mmfree.template import render

    text = render("mmfree.hls", "tcl/hls_project.tcl.in", {k: f"<{k}>" for k in (
        "TOP", "BOARD", "BOARD_ID", "PART", "CLOCK_NS", "STEPS", "DEFINES", "SOURCES", "TB", "VENDOR", "IP_VERSION")})
    assert "<TOP>" in text and "@" not in text.replace("@{", "")
    with pytest.raises(KeyError, match="without a value"):
        render("mmfree.hls", "tcl/hls_project.tcl.in", {"TOP": "x"})
    board = render("mmfree.boards", "tcl/ddr_address.tcl.in", {"MASTER": "m_axi", "HP_PORT": "S_AXI_HP0", "SUFFIX": ""})
    assert not any(line.startswith("#@") for line in board.splitlines())
    with pytest.raises(KeyError, match="values without a placeholder"):
        render("mmfree.boards", "tcl/ddr_address.tcl.in", {"MASTER": "m", "HP_PORT": "p", "SUFFIX": "", "X": 1})


def test_parse_ids():
    from mmfree.cli_args import parse_ids

    assert parse_ids("1, 2,3,") == [1, 2, 3]
    with pytest.raises(MmfreeError, match="--prompt-ids must be comma-separated integers"):
        parse_ids("1,x")
    with pytest.raises(MmfreeError, match="is empty: the prompt has no tokens"):
        parse_ids(" , ")


def test_check_choice():
    from typing import Literal

    from mmfree.cli_args import check_choice, choices

    Mode = Literal["a", "b"]
    assert choices(Mode) == ("a", "b") and check_choice("b", Mode, "--mode") == "b"
    with pytest.raises(MmfreeError, match="--mode must be one of 'a', 'b', got 'c'"):
        check_choice("c", Mode, "--mode")


def test_board_defaults_in_help_come_from_the_board_files(capsys):
    """The per-board defaults `mmfree build --help` quotes are the board files' (PYNQ-Z2 streams weights through
    two ports: the help said 1)."""
    from mmfree.cli import main
    from mmfree.cli_args import board_defaults

    builds = {b: json.loads((ROOT / "boards" / b / "board.json").read_text()).get("build", {})
              for b in ("pynq-z2", "kv260", "zcu104")}
    text = board_defaults("weight_ports", 1)
    for b, build in builds.items():
        assert f"{b}: {build.get('weight_ports', 1)}" in text
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "pynq-z2: 2" in out and "xc7z020clg400-1, 100 MHz" in out


def test_verilog_cache_keys_follow_the_sources_as_imported(monkeypatch):
    """The accelerator's Verilog caches (simulation and board build) are keyed by the RTL sources as this process
    imported them: an edit on disk after the import (here: source_digest reading something else) leaves the key as it
    was, since the modules in memory, which generate the Verilog, are still the old ones; the snapshot moves it."""
    import mmfree.rtl as R
    from mmfree.boards import build as B
    from mmfree.sim import accel

    cfg = B.config_for("pynq-z2")
    before = (accel._rtl_source_key(accel.DEFAULT_HW), B._source_key(cfg))
    monkeypatch.setattr(C, "source_digest", lambda *a, **k: "edited-on-disk")
    assert (accel._rtl_source_key(accel.DEFAULT_HW), B._source_key(cfg)) == before
    monkeypatch.setattr(R, "SOURCES_AT_IMPORT", "another-import")
    after = (accel._rtl_source_key(accel.DEFAULT_HW), B._source_key(cfg))
    assert after[0] != before[0] and after[1] != before[1]
