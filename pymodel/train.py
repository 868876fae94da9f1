"""Training: text corpus -> tokenizer -> packed token stream -> AdamW with the paper's recipe shape.

Recipe (Zhu et al., "Scalable MatMul-free Language Modeling", after BitNet b1.58): linear warm-up,
cosine decay, the learning rate halved at the midpoint and weight decay switched off for the second
half; large peak learning rates are needed to flip ternary weights.

Runs on CPU (single process) and on CUDA; under ``torchrun`` each rank trains on its own slice of the
batch with DistributedDataParallel (gloo on CPU, nccl on GPU). Checkpoints are written atomically in the
Hugging Face layout and training resumes from the last complete one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfree import MmfreeError
from mmfree.atomic import atomic_path
from mmfree.pymodel import data as D
from mmfree.pymodel.checkpoint import save_model
from mmfree.pymodel.config import MMFreeConfig
from mmfree.pymodel.model import MMFreeForCausalLM


@dataclass
class TrainConfig:
    out: str
    corpus: list[str] = field(default_factory=list)   # files/dirs; empty means the Python stdlib corpus
    tokenizer: str | None = None                     # tokenizer.json or checkpoint dir; None: train a BPE
    vocab_size: int = 4096                           # for a trained BPE
    init: str | None = None                          # start from this checkpoint instead of random weights
    hidden_size: int = 240
    num_hidden_layers: int = 4
    intermediate_size: int | None = 640
    steps: int = 2000
    batch_size: int = 16                             # sequences per step (global, across ranks)
    seq_len: int = 256
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_tokens: int = 65536
    save_every: int = 200
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"                           # autocast dtype on CUDA: float32 | bfloat16
    numerics: str = "fake"                           # fake | hardware
    grad_checkpointing: bool = False
    resume: bool = False
    kernels: str = "auto"                            # auto | naive | triton
    threads: int | None = None
    progress: bool = True


def lr_at(step: int, tc: TrainConfig) -> float:
    """Warm-up, cosine decay to ``min_lr_ratio * lr``, and halved from the midpoint on."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    lr = tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return lr * (0.5 if step >= tc.steps // 2 else 1.0)


def weight_decay_at(step: int, tc: TrainConfig) -> float:
    return tc.weight_decay if step < tc.steps // 2 else 0.0


# ---- distributed helpers ------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _world() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def _init_distributed(device: str) -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not _dist():
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    tokenizer_json: str


def prepare_corpus(tc: TrainConfig, log=print) -> Corpus:
    from mmfree.pymodel.tokenizer import load_tokenizer, train_bpe

    docs = D.file_documents(tc.corpus) if tc.corpus else D.stdlib_documents()
    train_docs, val_docs = D.split(docs)
    if tc.tokenizer:
        tok = load_tokenizer(tc.tokenizer)
    elif tc.init:
        tok = load_tokenizer(tc.init)
    else:
        log(f"training a byte-level BPE tokenizer (vocab {tc.vocab_size}) on {len(train_docs)} documents")
        tok = train_bpe((d.text for d in train_docs), tc.vocab_size)
    eos = tok.token_id("</s>")
    if eos is None:
        eos = 2
    train = D.tokenize(train_docs, tok, eos)
    val = D.tokenize(val_docs, tok, eos)
    need = tc.seq_len + 1
    if len(train) < tc.batch_size * need:
        raise MmfreeError(f"the corpus has {len(train)} training tokens, fewer than one batch "
                          f"({tc.batch_size} x {need}); add text or lower --batch-size/--seq-len")
    if len(val) < need:
        raise MmfreeError(f"the validation split has {len(val)} tokens, fewer than one sequence ({need}); "
                          "add text or lower --seq-len")
    return Corpus(train, val, tok, tok._tok.to_str())


def batch_at(tokens: np.ndarray, step: int, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """Deterministic random windows for ``step`` (resuming at step s gives the same batches)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=batch)
    return torch.from_numpy(np.stack([tokens[s:s + seq_len + 1].astype(np.int64) for s in starts]))


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens from the start of ``tokens``."""
    n = min(len(tokens) - 1, max_tokens) // seq_len
    n = max(n, 1)
    return torch.from_numpy(np.stack([tokens[i * seq_len:i * seq_len + seq_len + 1].astype(np.int64)
                                      for i in range(n) if i * seq_len + seq_len + 1 <= len(tokens)]))


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, device, batch: int = 16) -> float:
    """Mean next-token cross entropy (nats) over ``windows [N, T+1]``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch].to(device)
        logits = model(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    model.train()
    return total / count


# ---- checkpoints ----------------------------------------------------------------------------------
def _ckpt_dir(tc: TrainConfig) -> Path:
    return Path(tc.out) / "checkpoints" / "last"


def save_checkpoint(model, opt, step: int, tc: TrainConfig, corpus: Corpus, history: list) -> None:
    if _rank() != 0:
        return
    raw = model.module if hasattr(model, "module") else model
    path = _ckpt_dir(tc)
    state = {"step": step, "train_config": asdict(tc), "history": history}
    with atomic_path(path) as tmp:
        save_model(raw, tmp, extra_files={"tokenizer.json": corpus.tokenizer_json.encode(),
                                          "trainer_state.json": json.dumps(state, indent=2).encode()})
        torch.save(opt.state_dict(), tmp / "optimizer.pt")


def load_checkpoint(model, opt, tc: TrainConfig) -> tuple[int, list]:
    from safetensors.torch import load_file

    path = _ckpt_dir(tc)
    if not (path / "trainer_state.json").exists():
        raise MmfreeError(f"--resume: no complete checkpoint in {path}; start without --resume")
    state = json.loads((path / "trainer_state.json").read_text())
    raw = model.module if hasattr(model, "module") else model
    raw.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    return int(state["step"]), list(state.get("history", []))


# ---- the loop -------------------------------------------------------------------------------------
def train(tc: TrainConfig, log=print) -> dict:
    """Train and write the final model to ``tc.out``; returns a summary (losses, perplexities, speed)."""
    if tc.numerics not in ("fake", "hardware"):
        raise MmfreeError(f"--numerics must be 'fake' or 'hardware', got {tc.numerics!r}")
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise MmfreeError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    _init_distributed(tc.device)
    rank, world = _rank(), _world()
    if tc.batch_size % world:
        raise MmfreeError(f"--batch-size {tc.batch_size} must be divisible by the number of processes ({world})")
    device = torch.device(tc.device if not tc.device.startswith("cuda") or world == 1
                          else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    say = log if rank == 0 else (lambda *a, **k: None)

    corpus = prepare_corpus(tc, say)
    if tc.init:
        from mmfree.pymodel.checkpoint import load_model

        model = load_model(tc.init)
        if model.config.vocab_size != corpus.tokenizer.vocab_size:
            raise MmfreeError(f"--init model has vocab {model.config.vocab_size}, the tokenizer {corpus.tokenizer.vocab_size}")
    else:
        cfg = MMFreeConfig(vocab_size=corpus.tokenizer.vocab_size, hidden_size=tc.hidden_size,
                           num_hidden_layers=tc.num_hidden_layers, intermediate_size=tc.intermediate_size,
                           max_position_embeddings=max(2048, tc.seq_len))
        torch.manual_seed(tc.seed)
        model = MMFreeForCausalLM(cfg)
    if tc.seq_len > model.config.max_position_embeddings:
        raise MmfreeError(f"--seq-len {tc.seq_len} exceeds the model's max_position_embeddings "
                          f"({model.config.max_position_embeddings}); lower --seq-len")
    model.numerics = tc.numerics
    model.to(device).train()
    from mmfree.pymodel.kernels import install

    kernel_note = install(model, tc.kernels, device)
    if tc.grad_checkpointing:
        _enable_checkpointing(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim == 2 and "embeddings" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95), eps=1e-8)
    start, history = 0, []
    if tc.resume:
        start, history = load_checkpoint(model, opt, tc)
        say(f"resuming from step {start} ({_ckpt_dir(tc)})")
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    val_windows = eval_windows(corpus.val, tc.seq_len, tc.eval_tokens)
    n_params = model.num_parameters()
    say(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, I={model.config.intermediate}, "
        f"V={model.config.vocab_size}, {n_params / 1e6:.2f}M parameters; {len(corpus.train)} train / "
        f"{len(corpus.val)} val tokens; {world} process(es) on {device}; numerics {tc.numerics}; kernels: {kernel_note}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if tc.dtype == "bfloat16" else _null()
    per_rank = tc.batch_size // world
    bar = None
    if tc.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    t0, tokens_done = time.perf_counter(), 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_val = float("nan")
    for step in range(start, tc.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
            if g["weight_decay"]:
                g["weight_decay"] = weight_decay_at(step, tc)
        batch = batch_at(corpus.train, step, tc.batch_size, tc.seq_len, tc.seed)[rank * per_rank:(rank + 1) * per_rank]
        batch = batch.to(device)
        with autocast:
            logits = ddp(batch[:, :-1])                                  # [B, T, V]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            raise MmfreeError(f"training diverged at step {step} (loss {loss_val}); lower --lr")
        tokens_done += tc.batch_size * tc.seq_len
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr_at(step, tc):.1e}",
                            tok_s=f"{tokens_done / (time.perf_counter() - t0):.0f}")
        last = step + 1 == tc.steps
        if (step + 1) % tc.eval_every == 0 or last:
            vl = evaluate(model, val_windows, device)
            rec = {"step": step + 1, "train_loss": loss_val, "val_loss": vl, "val_ppl": math.exp(vl),
                   "tokens_per_s": tokens_done / (time.perf_counter() - t0)}
            if device.type == "cuda":
                rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            history.append(rec)
            msg = f"step {step + 1}: train loss {loss_val:.3f}, val loss {vl:.3f}, val ppl {math.exp(vl):.2f}, {rec['tokens_per_s']:.0f} tok/s"
            if "peak_mem_gb" in rec:
                msg += f", peak {rec['peak_mem_gb']:.2f} GiB"
            (bar.write if bar is not None else say)(msg)
        if (step + 1) % tc.save_every == 0 or last:
            save_checkpoint(model, opt, step + 1, tc, corpus, history)
    if bar is not None:
        bar.close()
    unigram = D.unigram_perplexity(corpus.train, val_windows[:, 1:].flatten().numpy(), corpus.tokenizer.vocab_size)
    summary = {"steps": tc.steps, "final_train_loss": loss_val, "history": history,
               "val_ppl": history[-1]["val_ppl"] if history else None, "unigram_val_ppl": unigram,
               "parameters": n_params, "world_size": world}
    if rank == 0:
        model.numerics = "fake"
        with atomic_path(Path(tc.out) / "model") as tmp:
            save_model(model, tmp, extra_files={"tokenizer.json": corpus.tokenizer_json.encode(),
                                                "training.json": json.dumps({"train_config": asdict(tc), **summary},
                                                                            indent=2).encode()})
        say(f"validation perplexity {summary['val_ppl']:.2f} (unigram baseline on the same split: {unigram:.2f}); "
            f"model written to {Path(tc.out) / 'model'}")
    d = _dist()
    if d:
        d.barrier()
    return summary


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _enable_checkpointing(model) -> None:
    import torch.utils.checkpoint as cp

    for layer in model.model.layers:
        fwd = layer.forward

        def wrapped(x, lower_bound=None, h0=None, _fwd=fwd):
            return cp.checkpoint(_fwd, x, lower_bound, h0, use_reentrant=False)

        layer.forward = wrapped
