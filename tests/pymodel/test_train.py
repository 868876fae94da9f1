"""Training: hardware-exact QAT down to the integer reference, resumable checkpoints, multi-process DDP,
and the errors users get for bad input.

Everything runs on CPU with a tiny synthetic corpus and a tiny model, one torch thread per process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfree import MmfreeError
from mmfree.pymodel import train as TR
from mmfree.pymodel.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def make_corpus(d: Path, lines: int = 700, seed: int = 0) -> list[str]:
    """Two small text files (about 20 kB) of simple, learnable sentences."""
    rng = random.Random(seed)
    subj = ["the cat", "a dog", "the bird", "my friend", "the old man", "a child"]
    verb = ["sees", "likes", "follows", "finds", "calls"]
    obj = ["the ball", "a tree", "the river", "the house", "a small boat", "the moon"]
    text = [f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}. " + " ".join(map(str, range(i % 7, i % 7 + 4)))
            for i in range(lines)]
    d.mkdir(parents=True, exist_ok=True)
    cut = len(text) * 9 // 10
    (d / "train.txt").write_text("\n".join(text[:cut]) + "\n")
    (d / "val.txt").write_text("\n".join(text[cut:]) + "\n")
    return [str(d / "train.txt"), str(d / "val.txt")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def tiny(out: Path, corpus: list[str], **kw) -> TrainConfig:
    base = dict(out=str(out), corpus=corpus, vocab_size=300, hidden_size=32, num_hidden_layers=1, intermediate_size=64,
                steps=6, batch_size=8, seq_len=32, lr=4e-3, warmup=2, eval_every=1000, save_every=1000,
                eval_tokens=512, threads=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ---- the acceptance path: QAT in hardware-exact mode -> export -> integer reference --------------------------------
def test_hardware_qat_runs_on_the_integer_reference(tmp_path, corpus):
    """Train in hardware-exact mode, export, and decode greedily on IntModel and on the float model in
    hardware mode: identical tokens, and identical logits (float logits * 2**act_frac == int logits)."""
    from mmfree.pymodel.checkpoint import load_model
    from mmfree.pymodel.export import export_model
    from mmfree.pymodel.generate import TorchBackend, generate
    from mmfree.pymodel.intmodel import IntBackend, IntModel
    from mmfree.pymodel.tokenizer import load_tokenizer

    steps = int(os.environ.get("MMFREE_QAT_STEPS", "300"))
    summary = train(tiny(tmp_path / "run", corpus, numerics="hardware", steps=steps, warmup=20, eval_every=steps // 2,
                         save_every=steps // 2))
    assert summary["history"][-1]["val_loss"] < summary["history"][0]["val_loss"] + 0.5
    assert summary["val_ppl"] < summary["unigram_val_ppl"], "the model learned nothing beyond unigrams"
    model = load_model(tmp_path / "run" / "model")
    model.numerics = "hardware"
    im = IntModel.load(export_model(model, tmp_path / "img"))
    tok = load_tokenizer(tmp_path / "run" / "model")
    prompt = tok.encode("the cat sees the")
    fl = generate(TorchBackend(model), prompt, 24)
    it = generate(IntBackend(im), prompt, 24)
    assert fl.tokens == it.tokens
    with torch.no_grad():
        logits = model(torch.tensor([prompt + fl.tokens]))[0].double().numpy()
    _, ref = im.forward(im.initial_state().h, prompt + fl.tokens)
    np.testing.assert_array_equal(np.round(logits * 2.0 ** im.act_frac).astype(np.int64), ref)
    np.testing.assert_array_equal(logits * 2.0 ** im.act_frac, ref.astype(np.float64))


# ---- resumable checkpoints --------------------------------------------------------------------------------------
@pytest.mark.parametrize("numerics", ["fake", "hardware"])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, corpus, monkeypatch, numerics):
    full = train(tiny(tmp_path / "full", corpus, steps=8, save_every=3, numerics=numerics))
    real_batch_at = TR.batch_at

    def interrupt_at_5(tokens, step, *a):
        if step == 5:
            raise KeyboardInterrupt
        return real_batch_at(tokens, step, *a)

    monkeypatch.setattr(TR, "batch_at", interrupt_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut", corpus, steps=8, save_every=3, numerics=numerics))
    monkeypatch.setattr(TR, "batch_at", real_batch_at)
    ckpt = tmp_path / "cut" / "checkpoints" / "last"
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 3
    # a checkpoint write killed half way leaves only a hidden temporary next to "last": it is ignored
    (ckpt.parent / ".last.crashed.tmp" / "payload").mkdir(parents=True)
    resumed = train(tiny(tmp_path / "cut", corpus, steps=8, save_every=3, resume=True, numerics=numerics))
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "cut" / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["final_train_loss"] == full["final_train_loss"]
    cfg = [json.loads((tmp_path / r / "model" / "config.json").read_text()) for r in ("full", "cut")]
    assert cfg[0] == cfg[1]                               # incl. the calibrated formats of the hardware mode


def test_resume_checks_the_options(tmp_path, corpus):
    with pytest.raises(MmfreeError, match="no complete checkpoint"):
        train(tiny(tmp_path / "r", corpus, resume=True))
    train(tiny(tmp_path / "r", corpus, steps=2, save_every=1))
    with pytest.raises(MmfreeError, match="seq_len: checkpoint 32, now 16"):
        train(tiny(tmp_path / "r", corpus, steps=4, seq_len=16, resume=True))


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,option", [("numerics", "exact", "--numerics"), ("parallel", "mpi", "--parallel"),
                                                 ("dtype", "float16", "--dtype"), ("kernels", "cuda", "--kernels")])
def test_typed_options_are_checked(tmp_path, field, value, option):
    """TrainConfig's Literal-typed options are checked before anything runs (also when not from the CLI)."""
    with pytest.raises(MmfreeError, match=f"{option} must be one of .*got '{value}'"):
        train(TrainConfig(out=str(tmp_path / "o"), **{field: value}))


def test_corpus_smaller_than_one_batch(tmp_path):
    files = make_corpus(tmp_path / "c", lines=20)
    with pytest.raises(MmfreeError, match="fewer than one batch.*lower --batch-size/--seq-len"):
        train(tiny(tmp_path / "o", files, batch_size=64, seq_len=64))


def test_sequence_longer_than_the_config(tmp_path, corpus):
    from mmfree.pymodel.tokenizer import train_bpe
    from tests.pymodel.helpers import random_checkpoint

    tok = train_bpe([Path(corpus[0]).read_text()], 300)
    tok.save(tmp_path / "tokenizer.json")
    random_checkpoint(tmp_path / "init", vocab_size=tok.vocab_size, max_position_embeddings=16)
    with pytest.raises(MmfreeError, match="--seq-len 32 exceeds the model's max_position_embeddings \\(16\\)"):
        train(tiny(tmp_path / "o", corpus, init=str(tmp_path / "init"), tokenizer=str(tmp_path / "tokenizer.json")))


def test_out_of_memory_says_what_to_change(tmp_path, corpus, monkeypatch):
    from mmfree.pymodel.model import MMFreeForCausalLM

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(MMFreeForCausalLM, "forward", oom)
    with pytest.raises(MmfreeError) as err:
        train(tiny(tmp_path / "o", corpus))
    msg = str(err.value)
    assert "out of memory" in msg and "--batch-size" in msg and "--grad-checkpointing" in msg


def test_triton_kernels_on_cpu_need_the_interpreter(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    pytest.importorskip("triton")
    with pytest.raises(MmfreeError, match="--kernels triton.*TRITON_INTERPRET=1"):
        train(tiny(tmp_path / "o", corpus, kernels="triton"))


def test_cuda_without_gpu_is_refused(tmp_path, corpus):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MmfreeError, match="no CUDA GPU is visible; use --device cpu"):
        train(tiny(tmp_path / "o", corpus, device="cuda"))


# ---- options ----------------------------------------------------------------------------------------------------
def test_log_has_throughput_and_peak_memory(tmp_path, corpus):
    lines = []
    s = train(tiny(tmp_path / "o", corpus, steps=3, eval_every=3), log=lines.append)
    rec = s["history"][-1]
    assert rec["tokens_per_s"] > 0 and rec["peak_mem_gb"] > 0 and rec["peak_mem_kind"] == "rss"
    assert any("tok/s" in ln and "peak RSS" in ln for ln in lines)
    assert s["kernels"] == "naive torch" and s["parallel"] == "single"
    saved = json.loads((tmp_path / "o" / "model" / "training.json").read_text())
    assert saved["tokens_per_s"] == s["tokens_per_s"]


def test_checkpointing_and_bf16_autocast(tmp_path, corpus):
    """Gradient checkpointing recomputes exactly (same weights); bf16 autocast trains (finite loss)."""
    train(tiny(tmp_path / "a", corpus, steps=3))
    train(tiny(tmp_path / "b", corpus, steps=3, grad_checkpointing=True))
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    s = train(tiny(tmp_path / "c", corpus, steps=3, dtype="bfloat16"))
    assert np.isfinite(s["final_train_loss"])


# ---- several processes --------------------------------------------------------------------------------------------
def _torchrun(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + args
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_ddp_two_processes(tmp_path, corpus):
    """`torchrun --nproc_per_node 2 -m mmfree.cli train` on CPU (gloo): both ranks end with the same weights."""
    out = tmp_path / "ddp"
    r = _torchrun(["-m", "mmfree.cli", "train", "--out", str(out), "--corpus", *corpus, "--vocab-size", "300",
                   "--hidden-size", "32", "--layers", "1", "--intermediate-size", "64", "--steps", "4",
                   "--batch-size", "8", "--seq-len", "32", "--warmup", "2", "--eval-every", "4", "--save-every", "2",
                   "--threads", "1", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["world_size"] == 2 and info["parallel"] == "ddp"
    assert len(info["rank_digests"]) == 2 and info["rank_digests"][0] == info["rank_digests"][1]
    assert json.loads((out / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 4


@pytest.mark.slow
def test_torchrun_fsdp_two_processes(tmp_path, corpus):
    """FSDP (fully_shard per layer) on CPU with gloo, then resumed from its checkpoint."""
    script = tmp_path / "fsdp_train.py"
    script.write_text(
        "import sys, json\n"
        "from mmfree.pymodel.train import TrainConfig, train\n"
        "kw = json.loads(sys.argv[1])\n"
        "train(TrainConfig(**kw))\n")
    kw = dict(out=str(tmp_path / "fsdp"), corpus=corpus, vocab_size=300, hidden_size=32, num_hidden_layers=2,
              intermediate_size=64, steps=4, batch_size=8, seq_len=32, warmup=2, eval_every=4, save_every=2,
              threads=1, progress=False, parallel="fsdp")
    r = _torchrun([str(script), json.dumps(kw)], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    info = json.loads((tmp_path / "fsdp" / "model" / "training.json").read_text())
    assert info["parallel"] == "fsdp" and info["world_size"] == 2
    r = _torchrun([str(script), json.dumps(dict(kw, steps=6, resume=True))], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((tmp_path / "fsdp" / "model" / "training.json").read_text())["steps"] == 6


def test_hardware_numerics_under_fsdp_is_refused_with_the_reason(tmp_path, corpus):
    """FSDP shards every layer and gathers it in the layer's pre-forward hook; hardware_forward never calls a
    layer's forward, so it is refused (before any sharding) with that reason and the way out (DDP)."""
    from mmfree.pymodel.config import MMFreeConfig
    from mmfree.pymodel.model import MMFreeForCausalLM

    model = MMFreeForCausalLM(MMFreeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1))
    tc = tiny(tmp_path / "h", corpus, numerics="hardware", parallel="fsdp")
    with pytest.raises(MmfreeError, match="does not run under FSDP.*pre-forward hook.*--parallel ddp"):
        TR._parallelize(model, tc, torch.device("cpu"), 2)
