"""`mmfree data prepare` + `mmfree train --data`: document-level split, memmap shards, the per-rank sampler and
its exact resume; the training loop's grad-accum, presets/config files, JSONL/TensorBoard logs, keep-last-N.

Everything runs on CPU with a small corpus written by the test and a tiny model, one torch thread.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfree import MmfreeError
from mmfree.cli import main
from mmfree.pymodel import shards as S
from mmfree.pymodel import train as TR
from mmfree.pymodel import trainlog as TL
from mmfree.pymodel.train import TrainConfig, train


def one_file(d: Path, blocks: int = 300, seed: int = 0) -> Path:
    """A single text file of ``blocks`` blank-line-separated documents (4 lines each), a few repeated."""
    rng = random.Random(seed)
    words = ["cat", "dog", "bird", "tree", "river", "house", "moon", "boat"]
    docs = ["\n".join(f"{i} {j} " + " ".join(rng.choice(words) for _ in range(6)) for j in range(4))
            for i in range(blocks)]
    docs += docs[:5]                                   # duplicates: must not straddle the split
    d.mkdir(parents=True, exist_ok=True)
    f = d / "one.txt"
    f.write_text("\n\n \n".join(docs) + "\n")
    return f


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    S.prepare(str(root / "d"), "default", corpus=[str(one_file(root))], val_fraction=0.1, seed=3)
    return root / "d"


def tiny(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), data=str(data), hidden_size=32, num_hidden_layers=1, intermediate_size=64, steps=6,
                batch_size=8, seq_len=32, lr=4e-3, warmup=2, eval_every=1000, save_every=1000, eval_tokens=512,
                threads=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# ---- data prepare -----------------------------------------------------------------------------------------------
def test_single_file_prepare_splits_by_document(tmp_path, capsys):
    f = one_file(tmp_path)
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "d"),
                 "--val-fraction", "0.2", "--seed", "7", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["overlap_documents"] == 0
    assert meta["train_documents"] + meta["val_documents"] == meta["documents"] == 300   # 5 duplicates merged
    assert meta["val_documents"] == 60
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0
    sh = S.open_shards(str(tmp_path / "d"))
    assert sh.train.dtype == np.uint16 and len(sh.train) == meta["train_tokens"] and len(sh.val) == meta["val_tokens"]
    assert (sh.train == meta["eos_id"]).sum() == meta["train_documents"]           # one EOS per document
    # the split itself: the same document text never on both sides, and it is the seeded one
    train_docs, val_docs = S.split_documents(S.file_documents([str(f)]), 0.2, 7)
    assert not set(train_docs) & set(val_docs)
    assert S.split_documents(S.file_documents([str(f)]), 0.2, 8)[1] != val_docs
    import hashlib

    assert meta["tokenizer_sha256"] == hashlib.sha256((tmp_path / "d" / "tokenizer.json").read_bytes()).hexdigest()


def test_blank_line_blocks_are_the_documents():
    assert S.split_blocks("a\nb\n\nc\n \t\n\n\nd\n") == ["a\nb", "c", "d"]
    assert S.split_blocks("\n\n") == []


def test_hf_dataset_from_local_files_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    src = tmp_path / "ds"
    src.mkdir()
    (src / "train.txt").write_text("".join(f"row {i} the cat sees the moon\n" for i in range(50)))
    assert main(["data", "prepare", "--hf-dataset", f"{src}:train", "--tokenizer", "default",
                 "--out", str(tmp_path / "d"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["train_documents"], meta["val_documents"], meta["overlap_documents"]) == (45, 5, 0)


@pytest.mark.parametrize("argv, msg", [
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--seed", "-1"], "--seed"),
    (["--hf-dataset", "x"], "exactly one of"),
])
def test_prepare_bad_input(tmp_path, capsys, argv, msg):
    f = one_file(tmp_path, blocks=20)
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "d"),
                 *argv]) == 1
    err = capsys.readouterr().err
    assert "mmfree data: error:" in err and msg in err
    assert not (tmp_path / "d").exists()


def test_prepare_refuses_unrelated_dir_and_single_document(tmp_path, capsys):
    f = one_file(tmp_path, blocks=20)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "busy")]) == 1
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    (tmp_path / "single.txt").write_text("only one block\nof text\n")
    assert main(["data", "prepare", "--corpus", str(tmp_path / "single.txt"), "--tokenizer", "default",
                 "--out", str(tmp_path / "d")]) == 1
    assert "at least 2" in capsys.readouterr().err
    # --force replaces an earlier prepare, an unrelated directory stays refused
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "d")]) == 0
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "d")]) == 1
    assert main(["data", "prepare", "--corpus", str(f), "--tokenizer", "default", "--out", str(tmp_path / "d"),
                 "--force"]) == 0


def test_train_refuses_a_bad_data_dir(tmp_path, data_dir):
    (tmp_path / "nope").mkdir()
    with pytest.raises(MmfreeError, match="--data .*mmfree data prepare"):
        train(tiny(tmp_path / "o", tmp_path / "nope"))
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    (bad / "tokenizer.json").write_text((bad / "tokenizer.json").read_text().replace('"</s>"', '"</S>"', 1))
    with pytest.raises(MmfreeError, match="sha256"):
        train(tiny(tmp_path / "o2", bad))
    with open(bad / "train.bin", "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(MmfreeError, match="train.bin holds"):
        train(tiny(tmp_path / "o3", bad))


# ---- the sampler ----------------------------------------------------------------------------------------------
def test_rank_windows_are_disjoint_and_cover_each_epoch():
    n_tokens, T, B, R = 32 * 50 + 1, 32, 8, 4           # 50 windows; 8 per step over 4 ranks: epochs of 48
    seen = []
    for step in range(24):                              # 4 epochs of 6 steps
        per_rank = [S.window_starts(n_tokens, T, step, B, r, R, seed=1) for r in range(R)]
        flat = np.concatenate(per_rank)
        assert len(set(flat.tolist())) == B            # disjoint across ranks within the step
        seen.extend(flat.tolist())
        np.testing.assert_array_equal(per_rank[2], S.window_starts(n_tokens, T, step, B, 2, R, seed=1))
    for epoch in range(4):                              # no window twice in an epoch
        assert len(set(seen[epoch * 48:(epoch + 1) * 48])) == 48
    assert set(seen) == set(range(0, 50 * T, T))        # the 2 left over differ per epoch: all are used
    assert seen[:48] != seen[48:96]                     # a fresh permutation each epoch
    with pytest.raises(MmfreeError, match="fewer than one batch"):
        S.window_starts(32 * 7 + 1, T, 0, B, 0, 1, seed=1)


def test_data_run_resumes_with_the_same_windows(tmp_path, data_dir, monkeypatch):
    real = S.window_starts
    log: dict = {"full": [], "cut": []}

    def recording(key, stop=None):
        def f(n, T, step, *a, **k):
            if step == stop:
                raise KeyboardInterrupt
            out = real(n, T, step, *a, **k)
            log[key].append((step, out.tolist()))
            return out
        return f

    monkeypatch.setattr(S, "window_starts", recording("full"))
    full = train(tiny(tmp_path / "full", data_dir, steps=8, save_every=3))
    monkeypatch.setattr(S, "window_starts", recording("cut", stop=5))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", data_dir, steps=8, save_every=3))
    monkeypatch.setattr(S, "window_starts", recording("cut"))
    resumed = train(tiny(tmp_path / "cut", data_dir, steps=8, save_every=3, resume=True))
    # steps 0-2 before the checkpoint, 3-4 lost with the interrupt, then 3-7 again: same windows per step
    by_step = dict(log["cut"])
    assert [s for s, _ in log["cut"]] == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7]
    assert dict(log["full"]) == by_step
    assert resumed["final_train_loss"] == full["final_train_loss"]
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- the loop ---------------------------------------------------------------------------------------------------
def test_grad_accum_equals_the_large_batch_gradient():
    """Float training, not an oracle comparison: activation quantisation is per token and weight quantisation
    per tensor, so every micro-batch's forward values equal the large batch's rows; only the summation order of
    the gradients differs (4 partial sums of 1/4-scaled means vs one mean). float32 round-off on sums of 8 x 32
    terms bounds that well below 1e-6 of the gradient's scale, hence rtol 1e-5 / atol 1e-6 x max|g|."""
    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.model import MMFreeForCausalLM

    torch.manual_seed(0)
    model = MMFreeForCausalLM(MMFreeConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, intermediate_size=64))
    batch = torch.randint(0, 97, (8, 17))
    grads = []
    for n in (1, 4):
        model.zero_grad(set_to_none=True)
        loss = TR.accumulate_grads(model, batch, n)
        grads.append(({k: p.grad.clone() for k, p in model.named_parameters()}, float(loss)))
    (g1, l1), (g4, l4) = grads
    assert abs(l1 - l4) <= 1e-6 * abs(l1)
    for k in g1:
        scale = float(g1[k].abs().max())
        torch.testing.assert_close(g4[k], g1[k], rtol=1e-5, atol=1e-6 * scale + 1e-12, msg=k)


def test_grad_accum_must_divide_the_batch(tmp_path, data_dir):
    with pytest.raises(MmfreeError, match="--grad-accum"):
        train(tiny(tmp_path / "o", data_dir, grad_accum=3))
    with pytest.raises(MmfreeError, match="--grad-accum"):
        train(tiny(tmp_path / "o", data_dir, grad_accum=0))


def test_presets_and_config_files(tmp_path, monkeypatch):
    assert {k: TL.PRESETS[k]["lr"] for k in TL.PRESETS} == {"370M": 4e-3, "1.3B": 2.5e-3, "2.7B": 1.5e-3}
    assert (TL.PRESETS["1.3B"]["hidden_size"], TL.PRESETS["2.7B"]["num_hidden_layers"]) == (2048, 32)
    (tmp_path / "c.yaml").write_text("preset: 370M\nsteps: 1000\nlr: 3.0e-3\n")
    (tmp_path / "c.json").write_text(json.dumps({"preset": "1.3B", "warmup": 10}))
    got = []
    monkeypatch.setattr(TR, "train", lambda tc, log=print: got.append(tc) or {})
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml"), "--steps", "50"]) == 0
    assert (got[0].hidden_size, got[0].lr, got[0].steps, got[0].warmup) == (1024, 3e-3, 50, 50)
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.json")]) == 0
    assert (got[1].hidden_size, got[1].lr, got[1].warmup, got[1].vocab_size) == (2048, 2.5e-3, 10, 32000)
    assert main(["train", "--out", str(tmp_path / "o"), "--preset", "2.7B", "--lr", "1e-3"]) == 0
    assert (got[2].hidden_size, got[2].intermediate_size, got[2].lr) == (2560, None, 1e-3)
    from mmfree.pymodel.config import MMFreeConfig

    assert [MMFreeConfig(hidden_size=TL.PRESETS[k]["hidden_size"]).intermediate for k in TL.PRESETS] == [2816, 5632, 6912]
    (tmp_path / "bad.json").write_text(json.dumps({"hiden_size": 3}))
    with pytest.raises(MmfreeError, match="unknown keys.*hiden_size"):
        TL.load_config(str(tmp_path / "bad.json"))
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(MmfreeError, match="one object"):
        TL.load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(MmfreeError, match="unreadable"):
        TL.load_config(str(tmp_path / "missing.json"))
    with pytest.raises(MmfreeError, match="--preset"):
        TL.preset("9B")


def test_logs_mfu_and_keep(tmp_path, data_dir):
    tc = tiny(tmp_path / "o", data_dir, steps=6, eval_every=3, save_every=2, keep=2, grad_accum=2,
              log_dir=str(tmp_path / "logs"))
    summary = train(tc)
    recs = [json.loads(line) for line in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in evals] == [3, 6]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] == "n/a" for r in steps)           # no peak FLOP/s on CPU
    assert evals[-1]["val_loss"] == summary["history"][-1]["val_loss"]
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    assert ckpts == ["last", "step-00000004", "step-00000006"]


def test_flops_per_token_counts_the_gemm_weights():
    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.model import MMFreeForCausalLM

    m = MMFreeForCausalLM(MMFreeConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                                       tie_word_embeddings=False))
    gemm = 4 * 32 * 32 + 2 * 64 * 32 + 32 * 64 + 100 * 32               # i/f/g/o, gate+up, down, head
    assert TL.flops_per_token(m) == 6 * gemm
    assert TL.mfu(1000.0, m, torch.device("cpu")) == "n/a"


def test_torchrun_ddp_with_data_and_grad_accum(tmp_path, data_dir):
    """Two gloo ranks on `--data` with `--grad-accum 2`: disjoint windows per rank, sharded evaluation, the
    loss all-reduced, and both ranks end with the same weights; the validation loss equals a single-process
    evaluation of the same final weights (the all-reduced sums cover every window once)."""
    from tests.pymodel.test_train import _torchrun

    out = tmp_path / "ddp"
    r = _torchrun(["-m", "mmfree.cli", "train", "--out", str(out), "--data", str(data_dir), "--hidden-size", "32",
                   "--layers", "1", "--intermediate-size", "64", "--steps", "4", "--batch-size", "8", "--seq-len", "32",
                   "--warmup", "2", "--eval-every", "4", "--save-every", "4", "--grad-accum", "2", "--threads", "1",
                   "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["world_size"] == 2 and info["parallel"] == "ddp"
    assert info["rank_digests"][0] == info["rank_digests"][1]
    from mmfree.pymodel.checkpoint import load_model

    model = load_model(str(out / "model"))
    windows = TR.eval_windows(S.open_shards(str(data_dir)).val, 32, TrainConfig(out="").eval_tokens)
    assert abs(TR.evaluate(model, windows, torch.device("cpu")) - info["history"][-1]["val_loss"]) < 1e-5
