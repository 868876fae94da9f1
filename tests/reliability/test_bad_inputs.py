"""One clear error, never a traceback, for every bad input of the audit (issue 22, item 5): broken
safetensors, config.json of the wrong shape or with wrong-typed fields, a weight-map index that is not an
object or points outside the checkpoint, a manifest with a missing key, --out at a file, corrupt resume
state, and non-finite or out-of-range numbers on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmfree import MmfreeError
from mmfree.cli import main
from mmfree.pymodel.checkpoint import load_model
from tests.pymodel.helpers import random_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt") / "m"
    random_checkpoint(d, seed=1, vocab_size=50, hidden_size=20, num_hidden_layers=1, intermediate_size=32)
    return d


@pytest.fixture
def copy(ckpt, tmp_path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(ckpt, d)
    return d


def one_error(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(f"mmfree {cmd}: error:") == 1, err
    return err


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage that is not safetensors at all",
                                     b"\xff\xff\xff\xff\xff\xff\xff\x7f{}", None])
def test_broken_safetensors(copy, capsys, content):
    f = copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if content is None else content)       # None: truncated
    assert main(["export", "--model", str(copy), "--out", str(copy.parent / "img")]) == 1
    assert "not a readable safetensors file" in one_error(capsys, "export")
    assert not (copy.parent / "img").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda c: [c], "must be a JSON object, got list"),
    (lambda c: {**c, "hidden_ratio": "4"}, "hidden_ratio must be a number, got str '4'"),
    (lambda c: {**c, "rms_norm_eps": "abc"}, "rms_norm_eps must be a number"),
    (lambda c: {**c, "rms_norm_eps": -1.0}, "rms_norm_eps must be a finite number in \\(0, 1\\)"),
    (lambda c: {**c, "use_lower_bound": "no"}, "use_lower_bound must be true or false, got str 'no'"),
    (lambda c: {**c, "hidden_size": 20.0}, "hidden_size must be an integer"),
    (lambda c: {**c, "num_hidden_layers": None}, "num_hidden_layers must be an integer"),
    (lambda c: {**c, "vocab_size": True}, "vocab_size must be an integer, got bool"),
    (lambda c: "NaN", "not valid JSON"),
])
def test_bad_config_json(copy, capsys, edit, needle):
    cfg = json.loads((copy / "config.json").read_text())
    new = edit(cfg)
    (copy / "config.json").write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(MmfreeError, match=needle):
        load_model(copy)
    assert main(["generate", "--model", str(copy), "--prompt-ids", "1", "--max-new-tokens", "1"]) == 1
    one_error(capsys, "generate")


def test_config_json_that_is_a_directory(copy, capsys):
    (copy / "config.json").unlink()
    (copy / "config.json").mkdir()
    assert main(["export", "--model", str(copy), "--out", str(copy.parent / "img")]) == 1
    assert "is not a file" in one_error(capsys, "export")


@pytest.mark.parametrize("index,needle", [
    ([1, 2], "not a valid safetensors index"),
    ({"weight_map": ["model.safetensors"]}, "'weight_map' must be a non-empty object"),
    ({"weight_map": {}}, "'weight_map' must be a non-empty object"),
    ({"weight_map": {"x": "/etc/passwd"}}, "no absolute path"),
    ({"weight_map": {"x": "../m/model.safetensors"}}, "no absolute path, no '..'"),
    ({"weight_map": {"x": 5}}, "must be a file name inside"),
    ({"weight_map": {"x": "link.safetensors"}}, "points outside"),
])
def test_bad_weight_map_index(copy, capsys, index, needle):
    (copy / "link.safetensors").symlink_to("/etc/hostname")
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MmfreeError, match=needle):
        load_model(copy)


def test_manifest_with_a_missing_key_and_not_an_object(tmp_path, capsys):
    from mmfree.pymodel.export import export_model
    from tests.pymodel.helpers import random_model

    img = export_model(random_model(0, vocab_size=40, hidden_size=20, num_hidden_layers=1, intermediate_size=32),
                       tmp_path / "img")
    m = json.loads((img / "manifest.json").read_text())
    del m["bitlinears"]
    (img / "manifest.json").write_text(json.dumps(m))
    assert main(["generate", "--backend", "int", "--model", str(img), "--prompt-ids", "1"]) == 1
    assert "has no 'bitlinears' key" in one_error(capsys, "generate")
    (img / "manifest.json").write_text("[]")
    assert main(["generate", "--backend", "int", "--model", str(img), "--prompt-ids", "1"]) == 1
    assert "must hold a JSON object" in one_error(capsys, "generate")


def run_cli(argv: list[str]) -> int:
    """``mmfree.cli.main(argv)``'s exit status, usage errors (argparse's SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("argv,rc,needle", [
    (["train", "--out", "OUT", "--lr", "nan"], 2, "--lr: must be a finite number"),
    (["train", "--out", "OUT", "--lr", "-1"], 1, "--lr must be a finite number in (0, 10]"),
    (["train", "--out", "OUT", "--weight-decay", "inf"], 2, "--weight-decay: must be a finite number"),
    (["train", "--out", "OUT", "--threads", "-2"], 1, "--threads must be an integer >= 1"),
    (["train", "--out", "OUT", "--warmup", "-1"], 1, "--warmup must be an integer >= 0"),
    (["perf", "--clock-mhz", "nan", "--json"], 2, "--clock-mhz: must be a finite number"),
    (["build", "--board", "kv260", "--out", "OUT", "--clock-mhz", "nan"], 2, "--clock-mhz: must be a finite"),
    (["generate", "--temperature", "nan"], 2, "--temperature: must be a finite number"),
    (["generate", "--top-p", "inf"], 2, "--top-p: must be a finite number"),
    (["hls", "synth", "--board", "kv260", "--out", "OUT", "--clock-ns=-inf"], 2, "--clock-ns: must be a finite"),
])
def test_bad_numbers(tmp_path, capsys, argv, rc, needle):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert run_cli(argv) == rc
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and needle in captured.err and "NaN" not in captured.out, captured.err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run's output directory with a checkpoint (two steps)."""
    from mmfree.pymodel.train import train
    from tests.pymodel.test_train import make_corpus, tiny

    base = tmp_path_factory.mktemp("train")
    corpus = make_corpus(base / "corpus")
    train(tiny(base / "run", corpus, steps=2, save_every=1))
    return base / "run", corpus


@pytest.mark.parametrize("target,content,needle", [
    ("trainer_state.json", b"{not json", "trainer_state.json is unreadable"),
    ("trainer_state.json", b"[1, 2]", "must be an object with an integer 'step'"),
    ("trainer_state.json", b'{"step": "3"}', "must be an object with an integer 'step'"),
    ("optimizer.pt", b"garbage", "optimizer.pt is unreadable"),
    ("optimizer.pt", None, "optimizer.pt is unreadable"),
    ("model.safetensors", None, "model.safetensors is unreadable"),
])
def test_corrupt_resume_state(trained, tmp_path, target, content, needle):
    from mmfree.pymodel.train import train
    from tests.pymodel.test_train import tiny

    run, corpus = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    f = out / "checkpoints" / "last" / target
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2] if content is None else content)
    with pytest.raises(MmfreeError, match=needle):
        train(tiny(out, corpus, steps=3, save_every=1, resume=True))


def test_train_refuses_to_overwrite_without_force_and_restarts_with_it(trained, tmp_path):
    from mmfree.pymodel.train import train
    from tests.pymodel.test_train import tiny

    run, corpus = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    with pytest.raises(MmfreeError, match="holds an earlier `mmfree train` output; pass --force"):
        train(tiny(out, corpus, steps=1))
    with pytest.raises(MmfreeError, match="would destroy the input"):
        train(tiny(out, [str(out / "model" / "training.json")], steps=1, force=True))
