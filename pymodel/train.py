"""Training: text corpus -> tokenizer -> packed token stream -> AdamW with the paper's recipe shape.

Recipe (Zhu et al., "Scalable MatMul-free Language Modeling", after BitNet b1.58): linear warm-up,
cosine decay, the learning rate halved at the midpoint and weight decay switched off for the second
half; large peak learning rates are needed to flip ternary weights.

Runs on CPU (single process, the plain torch path) and on CUDA (the fused Triton kernels of
:mod:`mmfree.pymodel.kernels`, bf16 autocast with ``dtype="bfloat16"``, optional gradient checkpointing).
Under ``torchrun`` each rank trains on its own slice of the batch with DistributedDataParallel (gloo on
CPU, nccl on GPU), or with FSDP (``parallel="fsdp"``, chosen by ``"auto"`` when the model and its AdamW
state do not fit one GPU). Every evaluation logs throughput (tokens/s of training steps) and peak memory
(CUDA allocator peak, or the process's peak RSS on CPU). Checkpoints are written atomically in the Hugging
Face layout and training resumes from the last complete one, bit for bit as if it had not stopped
(batches are a function of the step; the tokenizer comes from the checkpoint). Out-of-memory and other
bad input end with an :class:`~mmfree.MmfreeError` that says what to change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfree import MmfreeError
from mmfree.atomic import atomic_path
from mmfree.options import check_choice
from mmfree.pymodel import data as D
from mmfree.pymodel import shards as S
from mmfree.pymodel.checkpoint import save_model
from mmfree.pymodel.config import Kernels, MMFreeConfig, Numerics, Parallel, TrainDtype
from mmfree.pymodel.model import MMFreeForCausalLM
from mmfree.pymodel.trainlog import RunLog, mfu


@dataclass
class TrainConfig:
    out: str
    corpus: list[str] = field(default_factory=list)   # files/dirs; empty means the Python stdlib corpus
    data: str | None = None                          # `mmfree data prepare` output (replaces corpus/tokenizer)
    tokenizer: str | None = None                     # tokenizer.json or checkpoint dir; None: train a BPE
    vocab_size: int = 4096                           # for a trained BPE
    init: str | None = None                          # start from this checkpoint instead of random weights
    hidden_size: int = 240
    num_hidden_layers: int = 4
    intermediate_size: int | None = 640
    steps: int = 2000
    batch_size: int = 16                             # sequences per optimizer step (global, across ranks)
    grad_accum: int = 1                              # micro-batches per optimizer step (each rank)
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
    dtype: TrainDtype = "float32"                    # autocast dtype on CUDA
    numerics: Numerics = "fake"
    grad_checkpointing: bool = False
    resume: bool = False
    kernels: Kernels = "auto"
    parallel: Parallel = "auto"                      # several processes
    threads: int | None = None
    progress: bool = True
    force: bool = False                              # replace an earlier `mmfree train` output at ``out``
    keep: int = 0                                    # also keep the N newest checkpoints as checkpoints/step-*
    log_dir: str | None = None                       # JSONL log (train.jsonl) and TensorBoard events here


def check_numbers(tc: TrainConfig) -> None:
    """Refuse (MmfreeError naming the flag) a non-finite or out-of-range number before any work."""
    def bad(flag, v, want):
        raise MmfreeError(f"--{flag} must be {want}, got {v!r}")

    for name in ("steps", "batch_size", "seq_len", "hidden_size", "num_hidden_layers", "eval_every", "save_every",
                 "vocab_size", "eval_tokens", "grad_accum"):
        v = getattr(tc, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            bad(name.replace("num_hidden_layers", "layers").replace("_", "-"), v, "a positive integer")
    for name in ("warmup", "seed", "keep"):
        v = getattr(tc, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            bad(name, v, "an integer >= 0")
    if tc.intermediate_size is not None and (not isinstance(tc.intermediate_size, int) or tc.intermediate_size <= 0):
        bad("intermediate-size", tc.intermediate_size, "a positive integer")
    if tc.threads is not None and (isinstance(tc.threads, bool) or not isinstance(tc.threads, int) or tc.threads < 1):
        bad("threads", tc.threads, "an integer >= 1")
    for name, lo, hi in (("lr", 0.0, 10.0), ("weight_decay", 0.0, 10.0), ("grad_clip", 0.0, 1e6),
                         ("min_lr_ratio", 0.0, 1.0)):
        v = getattr(tc, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
                or (name in ("lr", "grad_clip") and v == 0):
            bad(name.replace("_", "-"), v, f"a finite number in {'(' if name in ('lr', 'grad_clip') else '['}{lo:g}, {hi:g}]")


def check_out(tc: TrainConfig) -> Path:
    """``--out`` before any work (:func:`mmfree.atomic.check_output_dir`): new, empty, or an earlier
    ``mmfree train`` output continued with ``--resume`` or replaced with ``--force``; marks it as ours."""
    from mmfree.atomic import MARKER, check_output_dir, write_json

    inputs = [tc.init, tc.tokenizer, tc.data, *tc.corpus]
    out = check_output_dir(tc.out, "train", inputs=inputs, force=tc.force, reuse=tc.resume)
    if tc.force and not tc.resume:
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)   # the replaced run's checkpoints
    write_json(out / MARKER, {"kind": "train", "mmfree": __import__("mmfree").__version__})
    return out


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


def _broadcast_object(obj):
    """rank 0's ``obj`` on every rank (identity in a single process)."""
    d = _dist()
    if not d:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    tokenizer: object
    tokenizer_json: str
    sharded: bool = False          # from `--data` (disjoint per-rank windows of :mod:`shards`), else batch_at


def _check_sizes(tc: TrainConfig, train: np.ndarray, val: np.ndarray) -> None:
    need = tc.seq_len + 1
    if len(train) < tc.batch_size * need:
        raise MmfreeError(f"the corpus has {len(train)} training tokens, fewer than one batch "
                          f"({tc.batch_size} x {need}); add text or lower --batch-size/--seq-len")
    if len(val) < need:
        raise MmfreeError(f"the validation split has {len(val)} tokens, fewer than one sequence ({need}); "
                          "add text or lower --seq-len")


def open_data(tc: TrainConfig, tokenizer_source: str | None = None) -> Corpus:
    """``--data``: the memory-mapped shards of ``mmfree data prepare`` and their tokenizer (a resumed run's
    checkpoint tokenizer must be the same one: its sha256 is in meta.json)."""
    from mmfree.pymodel.shards import _sha, open_shards
    from mmfree.pymodel.tokenizer import load_tokenizer

    sh = open_shards(tc.data)
    tok = load_tokenizer(tokenizer_source or sh.path / "tokenizer.json")
    tok_json = tok._tok.to_str()
    if _sha(tok_json) != sh.meta.get("tokenizer_sha256"):
        raise MmfreeError(f"--data {tc.data}: its tokenizer.json does not match the sha256 in meta.json (or the "
                          "checkpoint's tokenizer differs); prepare the data again with the model's tokenizer")
    _check_sizes(tc, sh.train, sh.val)
    return Corpus(sh.train, sh.val, tok, tok_json, sharded=True)


def prepare_corpus(tc: TrainConfig, log=print, tokenizer_source: str | None = None) -> Corpus:
    """Read, split and tokenize the corpus. The tokenizer comes from ``tokenizer_source`` (a resumed
    checkpoint), ``tc.tokenizer``, ``tc.init``, or is trained on rank 0 and sent to the other ranks."""
    from tokenizers import Tokenizer as HFTokenizer

    from mmfree.pymodel.tokenizer import Tokenizer, load_tokenizer, train_bpe

    if tc.data:
        return open_data(tc, tokenizer_source)
    docs = D.file_documents(tc.corpus) if tc.corpus else D.stdlib_documents()
    train_docs, val_docs = D.split(docs)
    source = tokenizer_source or tc.tokenizer or tc.init
    if source:
        tok = load_tokenizer(source)
    else:
        text = None
        if _rank() == 0:
            log(f"training a byte-level BPE tokenizer (vocab {tc.vocab_size}) on {len(train_docs)} documents")
            text = train_bpe((d.text for d in train_docs), tc.vocab_size)._tok.to_str()
        tok = Tokenizer(HFTokenizer.from_str(_broadcast_object(text)))
    eos = tok.token_id("</s>")
    if eos is None:
        eos = 2
    train = D.tokenize(train_docs, tok, eos)
    val = D.tokenize(val_docs, tok, eos)
    _check_sizes(tc, train, val)
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
def evaluate(model, windows: torch.Tensor, device, batch: int = 16, sharded: bool = False) -> float:
    """Mean next-token cross entropy (nats) over ``windows [N, T+1]``. ``sharded``: each rank of a torchrun
    group evaluates its own windows (``rank::world``) and the sums are all-reduced (every rank gets the
    mean over all windows); otherwise every rank evaluates all of them (FSDP: the forward is collective)."""
    model.eval()
    d = _dist() if sharded else None
    mine = windows[_rank()::_world()] if d else windows
    total, count = 0.0, 0
    for i in range(0, len(mine), batch):
        w = mine[i:i + batch].to(device)
        logits = model(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    if d:
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        d.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    model.train()
    return total / count


# ---- checkpoints ----------------------------------------------------------------------------------
#: Options a resumed run must share with the run that wrote the checkpoint (the model, the data and the
#: schedule); the others (steps, devices, kernels, logging) may change.
RESUME_KEYS = ("corpus", "data", "tokenizer", "vocab_size", "init", "hidden_size", "num_hidden_layers", "intermediate_size",
               "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip", "seed", "numerics")


def _ckpt_dir(tc: TrainConfig) -> Path:
    return Path(tc.out) / "checkpoints" / "last"


class _Snapshot:
    """A model's config and a (gathered) state dict, in the shape :func:`save_model` reads."""

    def __init__(self, config, state: dict):
        self.config = config
        self._state = state

    def state_dict(self):
        return self._state


def _full_state(model, fsdp: bool) -> dict:
    """The whole model's state dict on CPU (collective under FSDP: every rank must call it)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    raw = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu() for k, v in raw.state_dict().items()}


def _optim_state(model, opt, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def save_checkpoint(model, opt, step: int, tc: TrainConfig, corpus: Corpus, history: list, fsdp: bool = False,
                    parallel: str = "single") -> None:
    """Write OUT/checkpoints/last atomically (model, tokenizer, optimizer, trainer state); rank 0 writes."""
    if not fsdp and _rank() != 0:          # DDP: rank 0 holds the same weights; FSDP gathers collectively
        return
    state = _full_state(model, fsdp)
    optim = _optim_state(model, opt, fsdp)
    if _rank() != 0:
        return
    raw = model.module if hasattr(model, "module") else model
    path = _ckpt_dir(tc)
    meta = {"step": step, "train_config": asdict(tc), "history": history, "parallel": parallel}
    with atomic_path(path) as tmp:
        save_model(_Snapshot(raw.config, state), tmp,
                   extra_files={"tokenizer.json": corpus.tokenizer_json.encode(),
                                "trainer_state.json": json.dumps(meta, indent=2).encode()})
        torch.save(optim, tmp / "optimizer.pt")


def keep_checkpoints(tc: TrainConfig, step: int) -> None:
    """``--keep N``: copy checkpoints/last to checkpoints/step-NNNNNNNN (atomically) and delete all but the N
    newest copies; rank 0 only. ``last`` stays what ``--resume`` reads."""
    if not tc.keep or _rank() != 0:
        return
    import shutil

    root = _ckpt_dir(tc).parent
    with atomic_path(root / f"step-{step:08d}") as tmp:
        shutil.copytree(_ckpt_dir(tc), tmp)
    for old in sorted(root.glob("step-" + "[0-9]" * 8))[:-tc.keep]:
        shutil.rmtree(old)


def read_trainer_state(tc: TrainConfig) -> dict:
    """The last complete checkpoint's trainer state, checked against ``tc`` (MmfreeError names the differences)."""
    path = _ckpt_dir(tc)
    if not (path / "trainer_state.json").exists():
        raise MmfreeError(f"--resume: no complete checkpoint in {path}; start without --resume")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MmfreeError(f"--resume: {path / 'trainer_state.json'} is unreadable ({exc}); the checkpoint is "
                          "corrupt: train into a new --out, or rerun with --force to start over") from None
    if not isinstance(state, dict) or isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int) \
            or state["step"] < 0 or not isinstance(state.get("train_config", {}), dict) \
            or not isinstance(state.get("history", []), list):
        raise MmfreeError(f"--resume: {path / 'trainer_state.json'} must be an object with an integer 'step' >= 0, "
                          "a 'train_config' object and a 'history' list; the checkpoint is corrupt: train into a "
                          "new --out, or rerun with --force to start over")
    old = state.get("train_config", {})
    now = asdict(tc)
    diff = [f"{k}: checkpoint {old.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS if k in old and old[k] != now[k]]
    if diff:
        raise MmfreeError(f"--resume: the options differ from the run that wrote {path}:\n  " + "\n  ".join(diff)
                          + "\npass the same options (they are in trainer_state.json there), or train into a new --out")
    return state


def load_checkpoint(model, opt, tc: TrainConfig, fsdp: bool = False, parallel: str = "single") -> tuple[int, list]:
    """Load the last complete checkpoint into ``model`` and ``opt``; returns (step, history)."""
    path = _ckpt_dir(tc)
    state = read_trainer_state(tc)
    was = state.get("parallel", "single")
    if (was == "fsdp") != fsdp:
        raise MmfreeError(f"--resume: {path} was written by a {was} run and this run is {parallel}; "
                          f"resume with the same parallelism (--parallel {'fsdp' if was == 'fsdp' else 'ddp'})")
    sd, optim = _read_checkpoint_files(path)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, sd, options=opts)
        set_optimizer_state_dict(model, opt, optim, options=opts)
    else:
        raw = model.module if hasattr(model, "module") else model
        try:
            missing, unexpected = raw.load_state_dict(sd, strict=False)
        except RuntimeError as exc:         # mis-shaped tensors
            raise MmfreeError(f"--resume: {path} does not match the model ({str(exc)[:300]}); "
                              "train into a new --out") from None
        missing = [m for m in missing if not (raw.config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise MmfreeError(f"--resume: {path} does not match the model (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}); train into a new --out")
        try:
            opt.load_state_dict(optim)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise MmfreeError(f"--resume: {path / 'optimizer.pt'} does not fit the model's optimizer ({exc}); "
                              "train into a new --out, or rerun with --force to start over") from None
    return int(state["step"]), list(state.get("history", []))


def _read_checkpoint_files(path: Path) -> tuple[dict, dict]:
    """model.safetensors and optimizer.pt of a checkpoint; MmfreeError when either is missing or corrupt."""
    from safetensors.torch import load_file

    fix = "the checkpoint is corrupt: train into a new --out, or rerun with --force to start over"
    try:
        sd = load_file(str(path / "model.safetensors"))
    except Exception as exc:       # safetensors raises its own SafetensorError, OSError, ...
        raise MmfreeError(f"--resume: {path / 'model.safetensors'} is unreadable ({exc}); {fix}") from None
    try:
        optim = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    except Exception as exc:       # pickle.UnpicklingError, RuntimeError, EOFError, OSError, ...
        raise MmfreeError(f"--resume: {path / 'optimizer.pt'} is unreadable ({type(exc).__name__}: {exc}); "
                          f"{fix}") from None
    if not isinstance(optim, dict) or "state" not in optim or "param_groups" not in optim:
        raise MmfreeError(f"--resume: {path / 'optimizer.pt'} is not an optimizer state ({fix})")
    return sd, optim


def param_digest(model) -> str:
    """sha256 of every parameter's bytes, in order (to check that the ranks hold the same weights)."""
    raw = model.module if hasattr(model, "module") else model
    h = hashlib.sha256()
    for name, p in raw.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- memory and errors ----------------------------------------------------------------------------
def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """(peak GiB, what was measured): the CUDA allocator's peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda"
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb * (1 if sys.platform == "darwin" else 1024) / 2**30, "rss"
    except ImportError:                                          # pragma: no cover - Windows
        return float("nan"), "rss"


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def oom_message(tc: TrainConfig, device, world: int, n_params: int, step: int) -> str:
    per = tc.batch_size // world
    hints = [f"lower --batch-size (now {tc.batch_size}) or --seq-len (now {tc.seq_len})"]
    if not tc.grad_checkpointing:
        hints.append("add --grad-checkpointing")
    if device.type == "cuda":
        if tc.dtype != "bfloat16":
            hints.append("use --dtype bfloat16")
        if tc.kernels == "naive":
            hints.append("use --kernels triton (the fused kernels keep no float copies of the quantized activations)")
        hints.append("spread the batch over more GPUs with torchrun (FSDP shards the weights and AdamW state when "
                     "the model does not fit one GPU)")
    return (f"out of memory on {device} at step {step} ({per} sequences x {tc.seq_len} tokens per process, "
            f"{n_params / 1e6:.1f}M parameters): " + "; ".join(hints))


def _fsdp_needed(model, device: torch.device) -> bool:
    """Weights + grads + AdamW moments (16 bytes per parameter) above half the GPU's memory."""
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return 16 * model.num_parameters() > total // 2


# ---- the loop -------------------------------------------------------------------------------------
def train(tc: TrainConfig, log=print) -> dict:
    """Train and write the final model to ``tc.out``; returns a summary (losses, perplexities, speed, memory).

    Under torchrun every rank calls this; rank 0 logs and writes files, and the summary of every rank carries
    ``rank_digests`` (one sha256 of the final weights per rank; training fails if they differ under DDP).
    Bad options, a diverging loss and out-of-memory raise :class:`MmfreeError` saying what to change.
    """
    _check_options(tc)
    run = _setup(tc, log)
    start, run.history = 0, []
    if tc.resume:
        start, run.history = load_checkpoint(run.model, run.opt, tc, fsdp=run.fsdp, parallel=run.parallel)
        run.say(f"resuming from step {start} ({_ckpt_dir(tc)})")
    run.val_windows = eval_windows(run.corpus.val, tc.seq_len, tc.eval_tokens)
    _log_setup(run)
    run.log = RunLog(tc.log_dir, run.rank, resume=tc.resume)
    try:
        _train_loop(run, start)
    finally:
        run.log.close()
    summary = _summary(run)
    _write_final_model(run, summary, start)
    run.model.numerics = "fake"
    d = _dist()
    if d:
        d.barrier()
    return summary


@dataclass
class _Run:
    """The state of one training run shared by the pieces of :func:`train`."""

    tc: TrainConfig
    corpus: Corpus
    model: MMFreeForCausalLM
    ddp: torch.nn.Module                # what the forward pass calls: the model, or its DDP/FSDP wrapper
    opt: torch.optim.Optimizer
    device: torch.device
    rank: int
    world: int
    parallel: str                       # "single", "ddp" or "fsdp"
    kernel_note: str
    n_params: int
    say: object
    history: list = field(default_factory=list)
    val_windows: torch.Tensor | None = None
    train_time: float = 0.0
    tokens_done: int = 0
    loss_val: float = float("nan")
    log: RunLog | None = None

    @property
    def fsdp(self) -> bool:
        return self.parallel == "fsdp"

    @property
    def evaluated(self):
        """The module evaluation and checkpoints read: the FSDP wrapper (it gathers the shards), else the model."""
        return self.ddp if self.fsdp else self.model


def _check_options(tc: TrainConfig) -> None:
    check_numbers(tc)
    check_choice(tc.numerics, Numerics, "--numerics")
    check_choice(tc.parallel, Parallel, "--parallel")
    check_choice(tc.dtype, TrainDtype, "--dtype")
    check_choice(tc.kernels, Kernels, "--kernels")
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise MmfreeError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")


def _setup(tc: TrainConfig, log) -> _Run:
    """Processes, corpus, model (new, ``--init`` or the checkpoint's), kernels, DDP/FSDP and the optimizer."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    _init_distributed(tc.device)
    rank, world = _rank(), _world()
    if rank == 0:           # (torchrun ends the other ranks when rank 0 fails)
        check_out(tc)
    if tc.batch_size % (world * tc.grad_accum):
        raise MmfreeError(f"--batch-size {tc.batch_size} must be divisible by the number of processes ({world}) "
                          f"times --grad-accum ({tc.grad_accum})")
    device = torch.device(tc.device if not tc.device.startswith("cuda") or world == 1
                          else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    say = log if rank == 0 else (lambda *a, **k: None)
    resume_state = read_trainer_state(tc) if tc.resume else None
    corpus = prepare_corpus(tc, say, tokenizer_source=str(_ckpt_dir(tc)) if resume_state else None)
    model = _new_model(tc, corpus, resume_state)
    n_params = model.num_parameters()
    try:
        model.to(device).train()
    except Exception as exc:
        if is_oom(exc):
            raise MmfreeError(oom_message(tc, device, world, n_params, 0)) from exc
        raise
    from mmfree.pymodel.kernels import install

    kernel_note = install(model, tc.kernels, device)
    if tc.grad_checkpointing:
        _enable_checkpointing(model)
    ddp, parallel = _parallelize(model, tc, device, world)
    return _Run(tc, corpus, model, ddp, _optimizer(model, tc), device, rank, world, parallel, kernel_note,
                n_params, say)


def _new_model(tc: TrainConfig, corpus: Corpus, resume_state) -> MMFreeForCausalLM:
    """The model to train: the checkpoint's config on resume (it carries what export calibrated: fixed-point
    formats), ``--init``'s weights, or a new model seeded with ``tc.seed``; in ``tc.numerics`` mode."""
    if resume_state:
        model = MMFreeForCausalLM(MMFreeConfig.from_json(_ckpt_dir(tc) / "config.json"))
    elif tc.init:
        from mmfree.pymodel.checkpoint import load_model

        model = load_model(tc.init)
        if model.config.vocab_size != corpus.tokenizer.vocab_size:
            raise MmfreeError(f"--init model has vocab {model.config.vocab_size}, the tokenizer "
                              f"{corpus.tokenizer.vocab_size}; pass the model's own tokenizer with --tokenizer")
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
    return model


#: Why ``--numerics hardware`` is refused under FSDP (checked: ``tests/pymodel/test_train.py``).
HARDWARE_FSDP_REFUSAL = (
    "--numerics hardware does not run under FSDP: its forward pass (mmfree.pymodel.hwexact.hardware_forward) "
    "computes the whole model in one function that reads every layer's parameters directly, never calling the "
    "layers' forward, so FSDP's per-layer all-gather (a pre-forward hook) never runs and each rank would see "
    "only its 1/world_size row shard of every matrix, and FSDP's post-backward reduce-scatter would never see "
    "the gradients. Use --parallel ddp (every rank holds the whole model; the integer parameters are derived "
    "identically on every rank and device)")


def _parallelize(model, tc: TrainConfig, device: torch.device, world: int) -> tuple[torch.nn.Module, str]:
    """(the module the forward pass calls, "single" | "ddp" | "fsdp"): FSDP shards every layer and the model
    in place; DDP wraps the model."""
    if world == 1:
        return model, "single"
    parallel = tc.parallel if tc.parallel != "auto" else ("fsdp" if _fsdp_needed(model, device) else "ddp")
    if parallel == "fsdp":
        if tc.numerics == "hardware":
            raise MmfreeError(HARDWARE_FSDP_REFUSAL)
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:                                  # torch < 2.6
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 on GPU: FSDP gathers bf16 parameters and reduce-scatters float32 gradients (the float32 master
        # weights and AdamW state stay sharded); on CPU (gloo) the plain autocast of the step applies
        mp = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)} \
            if tc.dtype == "bfloat16" and device.type == "cuda" else {}
        for layer in model.model.layers:
            fully_shard(layer, **mp)
        fully_shard(model, **mp)
        return model, parallel
    from torch.nn.parallel import DistributedDataParallel

    # a one-layer model never uses its lower bounds (layer 0 has none): tell DDP so
    unused = model.config.use_lower_bound and model.config.num_hidden_layers == 1
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=unused), parallel


def _optimizer(model, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on the 2-D weights except the embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim == 2 and "embeddings" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95), eps=1e-8)


def _log_setup(run: _Run) -> None:
    tc, model, corpus = run.tc, run.model, run.corpus
    run.say(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, "
            f"I={model.config.intermediate}, V={model.config.vocab_size}, {run.n_params / 1e6:.2f}M parameters; "
            f"{len(corpus.train)} train / {len(corpus.val)} val tokens; {run.world} process(es) on {run.device} "
            f"({run.parallel}); numerics {tc.numerics}; dtype {tc.dtype}; kernels: {run.kernel_note}"
            + ("; gradient checkpointing" if tc.grad_checkpointing else ""))


def _train_loop(run: _Run, start: int) -> None:
    """Steps ``start .. tc.steps - 1`` with evaluation and checkpoints; an interrupt says where to resume."""
    tc = run.tc
    bar = None
    if tc.progress and run.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    step = start
    try:
        for step in range(start, tc.steps):
            _train_step(run, step)
            tok_s = run.tokens_done / max(run.train_time, 1e-9)
            run.log.write("step", step + 1, loss=run.loss_val, lr=lr_at(step, tc), tokens_per_s=tok_s,
                          mfu=mfu(tok_s, run.model, run.device))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{run.loss_val:.3f}", lr=f"{lr_at(step, tc):.1e}", tok_s=f"{tok_s:.0f}")
            last = step + 1 == tc.steps
            if (step + 1) % tc.eval_every == 0 or last:
                _evaluate_and_log(run, step, tok_s, bar)
            if (step + 1) % tc.save_every == 0 or last:
                save_checkpoint(run.evaluated, run.opt, step + 1, tc, run.corpus, run.history, fsdp=run.fsdp,
                                parallel=run.parallel)
                keep_checkpoints(tc, step + 1)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        done = _last_saved_step(tc)
        run.say(f"interrupted at step {step}; the last complete checkpoint is "
                + (f"step {done} in {_ckpt_dir(tc)}: continue with --resume" if done is not None else "none yet"))
        raise
    except Exception as exc:
        if is_oom(exc):
            raise MmfreeError(oom_message(tc, run.device, run.world, run.n_params, step)) from exc
        raise
    if bar is not None:
        bar.close()


def _train_step(run: _Run, step: int) -> None:
    """One optimizer step on this rank's slice of batch ``step`` (the schedule's LR and weight decay)."""
    tc, opt = run.tc, run.opt
    ts = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = lr_at(step, tc)
        if g["weight_decay"]:
            g["weight_decay"] = weight_decay_at(step, tc)
    batch = rank_batch(run, step).to(run.device)
    opt.zero_grad(set_to_none=True)
    loss = accumulate_grads(run.ddp, batch, tc.grad_accum, tc.dtype == "bfloat16")
    if tc.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    opt.step()
    run.loss_val = _mean_over_ranks(loss)
    run.train_time += time.perf_counter() - ts
    if not math.isfinite(run.loss_val):
        raise MmfreeError(f"training diverged at step {step} (loss {run.loss_val}); lower --lr")
    run.tokens_done += tc.batch_size * tc.seq_len


def rank_batch(run: _Run, step: int) -> torch.Tensor:
    """This rank's ``[batch_size / world, seq_len + 1]`` windows of step ``step`` (a function of the step only):
    disjoint per-rank windows of the shards with ``--data`` (:func:`mmfree.pymodel.shards.window_starts`),
    else this rank's slice of :func:`batch_at`."""
    tc, per = run.tc, run.tc.batch_size // run.world
    if run.corpus.sharded:
        starts = S.window_starts(len(run.corpus.train), tc.seq_len, step, tc.batch_size, run.rank, run.world, tc.seed)
        return S.windows(run.corpus.train, starts, tc.seq_len)
    batch = batch_at(run.corpus.train, step, tc.batch_size, tc.seq_len, tc.seed)
    return batch[run.rank * per:(run.rank + 1) * per]


def accumulate_grads(module, batch: torch.Tensor, n: int, bf16: bool = False) -> torch.Tensor:
    """Forward/backward ``batch [B, T+1]`` as ``n`` micro-batches of ``B / n`` sequences, each loss scaled by
    ``1 / n``: the accumulated ``.grad`` is the gradient of the mean loss over the whole batch (up to float
    summation order). DDP synchronises on the last micro-batch only. Returns the mean loss (detached)."""
    from contextlib import nullcontext

    micro = batch.shape[0] // n
    total = torch.zeros((), dtype=torch.float64, device=batch.device)
    for i in range(n):
        w = batch[i * micro:(i + 1) * micro]
        sync = nullcontext() if i == n - 1 or not hasattr(module, "no_sync") else module.no_sync()
        autocast = torch.autocast(batch.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with sync:
            with autocast:
                logits = module(w[:, :-1])                                   # [b, T, V]
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten()) / n
            loss.backward()
        total += loss.detach().double()
    return total


def _mean_over_ranks(loss: torch.Tensor) -> float:
    """The loss averaged over the ranks (an all-reduce under torchrun), as a Python float."""
    d = _dist()
    if d:
        loss = loss.float().clone()
        d.all_reduce(loss)
        loss /= d.get_world_size()
    return float(loss)


def _evaluate_and_log(run: _Run, step: int, tok_s: float, bar) -> None:
    """Validation loss, throughput and peak memory after ``step``: one ``history`` record and one log line."""
    vl = evaluate(run.evaluated, run.val_windows, run.device, sharded=not run.fsdp)
    mem, kind = peak_memory_gb(run.device)
    util = mfu(tok_s, run.model, run.device)
    run.history.append({"step": step + 1, "train_loss": run.loss_val, "val_loss": vl, "val_ppl": math.exp(vl),
                        "tokens_per_s": tok_s, "mfu": util, "peak_mem_gb": mem, "peak_mem_kind": kind})
    run.log.write("eval", step + 1, **{k: v for k, v in run.history[-1].items() if k != "step"})
    msg = (f"step {step + 1}: train loss {run.loss_val:.3f}, val loss {vl:.3f}, val ppl {math.exp(vl):.2f}, "
           f"{tok_s:.0f} tok/s, MFU {util if isinstance(util, str) else f'{util * 100:.1f} %'}, "
           f"peak {'GPU' if kind == 'cuda' else 'RSS'} {mem:.2f} GiB")
    (bar.write if bar is not None else run.say)(msg)


def _summary(run: _Run) -> dict:
    """The run's summary; under DDP the ranks' weight digests must agree."""
    tc, corpus = run.tc, run.corpus
    # --data: the baseline's counts from at most the first 2**24 training tokens (the memory-mapped split may be huge)
    unigram = D.unigram_perplexity(corpus.train[:1 << 24] if corpus.sharded else corpus.train,
                                   run.val_windows[:, 1:].flatten().numpy(), corpus.tokenizer.vocab_size)
    mem, kind = peak_memory_gb(run.device)
    digests = [param_digest(run.model)] if not run.fsdp else []         # FSDP shards: no per-rank copy to compare
    d = _dist()
    if d and not run.fsdp:
        digests = [None] * run.world
        d.all_gather_object(digests, param_digest(run.model))
    summary = {"steps": tc.steps, "final_train_loss": run.loss_val, "history": run.history,
               "val_ppl": run.history[-1]["val_ppl"] if run.history else None, "unigram_val_ppl": unigram,
               "parameters": run.n_params, "world_size": run.world, "parallel": run.parallel,
               "kernels": run.kernel_note,
               "tokens_per_s": run.tokens_done / run.train_time if run.train_time else None,
               "peak_mem_gb": mem, "peak_mem_kind": kind, "rank_digests": digests if not run.fsdp else None}
    if not run.fsdp and len(set(digests)) > 1:
        raise MmfreeError(f"the ranks hold different weights after training (digests {sorted(set(digests))}); "
                          "DistributedDataParallel should keep them identical: report this with the command line")
    return summary


def _write_final_model(run: _Run, summary: dict, start: int) -> None:
    """Rank 0 writes ``tc.out/model`` (HF layout, tokenizer.json, training.json) atomically and logs the result."""
    tc = run.tc
    state = _full_state(run.evaluated, run.fsdp) if run.fsdp or run.rank == 0 else None
    if run.rank != 0:
        return
    out = Path(tc.out) / "model"
    with atomic_path(out) as tmp:
        save_model(_Snapshot(run.model.config, state), tmp,
                   extra_files={"tokenizer.json": run.corpus.tokenizer_json.encode(),
                                "training.json": json.dumps({"train_config": asdict(tc), **summary},
                                                            indent=2).encode()})
    kind = summary["peak_mem_kind"]
    run.say(f"validation perplexity {summary['val_ppl']:.2f} (unigram baseline on the same split: "
            f"{summary['unigram_val_ppl']:.2f}); {summary['tokens_per_s'] or 0:.0f} tok/s, peak "
            f"{'GPU' if kind == 'cuda' else 'RSS'} {summary['peak_mem_gb']:.2f} GiB; model written to {out}"
            if summary["val_ppl"] is not None else
            f"nothing left to train (checkpoint at step {start}); model written to {out}")


def _last_saved_step(tc: TrainConfig) -> int | None:
    try:
        return int(json.loads((_ckpt_dir(tc) / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def _enable_checkpointing(model) -> None:
    import torch.utils.checkpoint as cp

    for layer in model.model.layers:
        fwd = layer.forward

        def wrapped(x, lower_bound=None, h0=None, _fwd=fwd):
            return cp.checkpoint(_fwd, x, lower_bound, h0, use_reentrant=False)

        layer.forward = wrapped
