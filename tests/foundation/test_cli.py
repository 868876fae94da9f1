import json
import subprocess
import sys

import pytest

from mmfree.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "demo" in out


def test_unknown_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", "--no-such-option"])
    assert exc.value.code == 2


def test_info_json_lists_tools(capsys):
    assert main(["info", "--json"]) == 0
    tools = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    for name in ("python", "torch", "amaranth", "verilator", "cocotb", "vivado"):
        assert name in tools
    for t in tools.values():
        assert t["found"] or t["hint"], t


def test_info_survives_missing_tools(monkeypatch, capsys):
    # an empty PATH hides every executable; info must still succeed and say "not found"
    monkeypatch.setenv("PATH", "")
    assert main(["info"]) == 0
    assert "not found" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mmfree", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "mmfree" in out.stdout
