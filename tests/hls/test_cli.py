"""`mmfree hls csim`: text and JSON reports, exit status 1 on any difference, clear errors."""

from __future__ import annotations

import json

import pytest

from mmfree.cli import main
from mmfree.hls import checks


def test_help_lists_hls_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["hls", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "csim" in out and "synth" in out


def test_csim_json_on_a_model(random_export, capsys):
    rc = main(["hls", "csim", "--model", str(random_export(0)), "--tokens", "2", "--vectors", "2000", "--json"])
    js = json.loads(capsys.readouterr().out)
    assert rc == 0 and js["ok"] and js["failed"] == 0
    names = {c["name"] for c in js["checks"] if c["kind"] == "model"}
    assert {"layers.0.attn.h", "layers.1.mlp.gate_proj", "logits", "state h (all layers)"} <= names
    kernels = {c["name"].split("[")[0] for c in js["checks"] if c["kind"] == "kernel"}
    assert {"ternary_matvec", "rmsnorm_quantize", "dequantize_kernel", "mlgru", "bitlinear", "silu",
            "forget_rate", "hgrn_update", "output_multiplier.M"} <= kernels
    assert all(c["ok"] and c["mismatches"] == 0 for c in js["checks"])
    assert len(js["model"]["tokens"]) == 2


def test_csim_text_kernels_only(capsys):
    assert main(["hls", "csim", "--model", "none", "--vectors", "1000"]) == 0
    out = capsys.readouterr().out
    assert "checks bit-identical to the reference" in out and "FAIL" not in out


def test_csim_reports_differences_with_exit_1(monkeypatch, capsys):
    real = checks.kernel_checks

    def broken(sim, seed=0, n=20000):
        out = real(sim, seed=seed, n=n)
        return out + [checks.compare("planted", "kernel", [1, 2, 3], [1, 2, 4])]

    monkeypatch.setattr(checks, "kernel_checks", broken)
    assert main(["hls", "csim", "--model", "none", "--vectors", "1000"]) == 1
    cap = capsys.readouterr()
    assert "FAIL kernel planted" in cap.out and "'index': [2], 'hls': 3, 'reference': 4" in cap.out
    assert "1 check(s) differ from the reference: planted" in cap.err


def test_csim_bad_arguments(capsys, tmp_path):
    assert main(["hls", "csim", "--tokens", "0"]) == 1
    assert "--tokens must be positive" in capsys.readouterr().err
    assert main(["hls", "csim", "--model", str(tmp_path / "missing")]) == 1
    assert "error" in capsys.readouterr().err


def test_compare_shape_mismatch():
    c = checks.compare("x", "kernel", [1, 2], [1, 2, 3])
    assert not c.ok and "shape" in c.first_mismatch["reason"]


def test_cli_lists_match_the_synth_module():
    """hls/cli.py keeps its own copies (no heavy imports at startup); they must not drift."""
    from mmfree.hls import cli, synth

    assert cli._TOPS == synth.TOPS
    assert cli._BOARDS == tuple(synth.BOARDS)
    assert cli._STEPS == synth.STEPS
