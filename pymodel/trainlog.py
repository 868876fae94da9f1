"""What a training run reports and how it is configured: JSONL/TensorBoard logs, MFU, presets, config files.

MFU (model FLOPs utilisation) = achieved FLOP/s / the device's peak dense bf16 FLOP/s, with the achieved
FLOP/s = tokens/s x :func:`flops_per_token`. FLOPs per token = 6 x (parameters that take part in a GEMM:
every BitLinear weight incl. the head; not the embedding table or the lower bounds) (forward 2, backward 4 per weight; the
Kaplan et al. 2020 count), plus the recurrence's and quantisers' elementwise work, which is left out (it
is O(d) per token per layer, < 1% at d >= 1024). The peaks are the vendors' dense bf16 figures
(published): H100 SXM / H200 989.4 TFLOP/s, H100 PCIe 756 TFLOP/s, A100 312 TFLOP/s; any other device
(CPU included) reports MFU as "n/a".

Presets (:data:`PRESETS`) are the official MMfreeLM shapes (/work/shared/official-model.md; the released
config.json files of ridger/MMfreeLM-370M/1.3B/2.7B) with the paper's peak learning rates (Zhu et al.,
"Scalable MatMul-free Language Modeling", arXiv:2406.02528, training section: 4e-3 / 2.5e-3 / 1.5e-3,
cosine decay with the LR halved midway, weight decay off for the second half, after BitNet b1.58). The
batch in tokens, warm-up and weight decay of the presets are mmfree's choices (0.5M tokens = 256 x 2048,
the BitNet b1.58 recipe's batch; 375 warm-up steps; weight decay 0.1), not figures from the paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmfree import MmfreeError
from mmfree.pymodel.config import PRESETS as _CFG_PRESETS

#: dense bf16 peak FLOP/s by CUDA device-name substring (published vendor figures)
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12, "A100": 312e12}

#: the paper's peak learning rates by preset (arXiv:2406.02528, published)
PEAK_LR = {"370M": 4e-3, "1.3B": 2.5e-3, "2.7B": 1.5e-3}
#: mmfree's recipe choices shared by the presets (not from the paper; see the module docstring)
_RECIPE = dict(seq_len=2048, batch_size=256, warmup=375, weight_decay=0.1, min_lr_ratio=0.1)
#: TrainConfig fields of ``--preset``: the shape of :data:`mmfree.pymodel.config.PRESETS` (intermediate size
#: None = the released code's formula: 2816 / 5632 / 6912), the recipe; steps, data and devices are the user's
PRESETS = {name: dict(_RECIPE, **_CFG_PRESETS[name], intermediate_size=None, lr=lr) for name, lr in PEAK_LR.items()}


def gemm_parameters(model) -> int:
    """Parameters that take part in a GEMM: the weights of the BitLinear modules, head included."""
    from mmfree.pymodel.model import BitLinear

    raw = getattr(model, "module", model)
    return sum(m.weight.numel() for m in raw.modules() if isinstance(m, BitLinear))


def flops_per_token(model) -> int:
    """Training FLOPs per token: 6 x :func:`gemm_parameters` (see the module docstring)."""
    return 6 * gemm_parameters(model)


def peak_flops(device) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None (CPU, unknown GPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def mfu(tokens_per_s: float, model, device) -> float | str:
    """Model FLOPs utilisation in [0, 1], or ``"n/a"`` where the peak is unknown (CPU)."""
    peak = peak_flops(device)
    return "n/a" if peak is None else tokens_per_s * flops_per_token(model) / peak


def load_config(path: str) -> dict:
    """TrainConfig fields from a JSON or YAML file (``.yaml``/``.yml``); a ``preset`` key is expanded first.
    MmfreeError (naming ``--config``) for an unreadable file, a non-object, or unknown keys."""
    from dataclasses import fields

    from mmfree.pymodel.train import TrainConfig

    p = Path(path)
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except Exception as exc:       # OSError, json/yaml errors
        raise MmfreeError(f"--config {path}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); pass a JSON "
                          "or YAML file of TrainConfig fields") from None
    if not isinstance(obj, dict):
        raise MmfreeError(f"--config {path}: must hold one object (mapping) of TrainConfig fields")
    known = {f.name for f in fields(TrainConfig)} - {"out"}
    unknown = sorted(set(obj) - known - {"preset"})
    if unknown:
        raise MmfreeError(f"--config {path}: unknown keys {unknown}; the keys are TrainConfig fields "
                          f"({', '.join(sorted(known))}) and 'preset'")
    out = preset(obj["preset"]) if "preset" in obj else {}
    out.update({k: v for k, v in obj.items() if k != "preset"})
    return out


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise MmfreeError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


class RunLog:
    """``LOG_DIR/train.jsonl`` (one JSON object per line: ``{"kind": "step"|"eval", "step": ...}``) and
    TensorBoard scalars (``train/loss``, ``train/lr``, ``train/tokens_per_s``, ``val/loss``...) under
    ``LOG_DIR``; rank 0 only. A ``None`` directory logs nothing."""

    def __init__(self, log_dir: str | None, rank: int = 0, resume: bool = False):
        self.fh = self.tb = None
        if log_dir is None or rank != 0:
            return
        d = Path(log_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            self.fh = open(d / "train.jsonl", "a" if resume else "w")
        except OSError as exc:
            raise MmfreeError(f"--log-dir {log_dir}: cannot write there ({exc}); pass a writable directory") from None
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(d))

    def write(self, kind: str, step: int, **values) -> None:
        if self.fh is None:
            return
        rec = {"kind": kind, "step": step, **values}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.tb.add_scalar(f"{'val' if kind == 'eval' else 'train'}/{k}", v, step)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.tb.close()
            self.fh = self.tb = None
