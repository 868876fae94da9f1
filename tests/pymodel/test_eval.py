"""`mmfree eval`: perplexity per backend and agreement between backends, teacher forced (issue 18)."""

import json
import math

import pytest

from mmfree.cli import main
from mmfree.pymodel.tokenizer import train_bpe

from .helpers import random_checkpoint

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(300))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = train_bpe([TEXT], 300)
    ck = random_checkpoint(root / "ck", seed=3, vocab_size=300)
    tok.save(ck / "tokenizer.json")
    (root / "corpus.py").write_text(TEXT)
    assert main(["export", "--model", str(ck), "--out", str(root / "img")]) == 0
    return ck, root / "corpus.py", root / "img"


def _run(capsys, *args):
    rc = main(["eval", *args, "--json"])
    cap = capsys.readouterr()
    return rc, cap


def test_eval_json_four_backends(setup, capsys):
    ck, corpus, _ = setup
    rc, cap = _run(capsys, "--model", str(ck), "--corpus", str(corpus), "--backends", "float,float64,hardware-float,int",
                   "--tokens", "300", "--window", "128")
    assert rc == 0, cap.err
    res = json.loads(cap.out)
    assert res["tokens"] == 300 and res["corpus"] == [str(corpus)]
    assert [b["name"] for b in res["backends"]] == ["float", "float64", "hardware-float", "int"]
    for b in res["backends"]:
        assert math.isfinite(b["perplexity"]) and b["perplexity"] > 1
    assert len(res["agreement"]) == 6
    # the hardware-exact float mode computes the integer reference's numbers exactly
    exact = res["agreement"]["hardware-float/int"]
    assert exact["top1"] == 1.0 and exact["mean_abs_logit_diff"] == 0.0
    ppl = {b["name"]: b["perplexity"] for b in res["backends"]}
    assert ppl["hardware-float"] == ppl["int"]
    for pair, a in res["agreement"].items():
        assert 0 <= a["top1"] <= 1 and a["mean_abs_logit_diff"] >= 0, pair


def test_eval_window_does_not_change_the_numbers(setup, capsys):
    ck, corpus, _ = setup
    out = []
    for window in ("7", "300"):
        rc, cap = _run(capsys, "--model", str(ck), "--corpus", str(corpus), "--backends", "int",
                       "--tokens", "200", "--window", window)
        assert rc == 0, cap.err
        out.append(json.loads(cap.out)["backends"][0]["perplexity"])
    # the integer logits are exact whatever the window (state carried); only the float sum of the NLL regroups
    assert out[0] == pytest.approx(out[1], rel=1e-12)


def test_eval_on_export_dir_int_only(setup, capsys):
    ck, corpus, img = setup
    rc, cap = _run(capsys, "--model", str(img), "--corpus", str(corpus), "--backends", "int", "--tokens", "100")
    assert rc == 0, cap.err
    rc2, cap2 = _run(capsys, "--model", str(ck), "--corpus", str(corpus), "--backends", "int", "--tokens", "100")
    assert json.loads(cap.out)["backends"] == json.loads(cap2.out)["backends"]
    rc, cap = _run(capsys, "--model", str(img), "--corpus", str(corpus), "--backends", "float,int", "--tokens", "100")
    assert rc == 1 and "is an export directory" in cap.err


@pytest.mark.parametrize("args,msg", [
    (["--backends", "float,gpu"], "--backends takes distinct names"),
    (["--backends", "int,int"], "--backends takes distinct names"),
    (["--tokens", "0"], "--tokens must be positive"),
    (["--window", "0"], "--window must be positive"),
])
def test_eval_bad_options(setup, capsys, args, msg):
    ck, corpus, _ = setup
    rc, cap = _run(capsys, "--model", str(ck), "--corpus", str(corpus), *args)
    assert rc == 1 and cap.err.startswith("mmfree eval: error: ") and msg in cap.err


def test_eval_bad_corpus(setup, capsys, tmp_path):
    ck, _, _ = setup
    rc, cap = _run(capsys, "--model", str(ck), "--corpus", str(tmp_path / "nope.txt"))
    assert rc == 1 and "does not exist" in cap.err
    (tmp_path / "empty.txt").write_text("")
    rc, cap = _run(capsys, "--model", str(ck), "--corpus", str(tmp_path / "empty.txt"))
    assert rc == 1 and "fewer than 2 tokens" in cap.err
