"""Random checkpoints in the official layout, for tests."""

from __future__ import annotations

from pathlib import Path

import torch

from mmfree.pymodel.checkpoint import save_model
from mmfree.pymodel.config import MMFreeConfig
from mmfree.pymodel.model import MMFreeForCausalLM


def random_model(seed: int = 0, **cfg) -> MMFreeForCausalLM:
    """A model with random latent weights, random norm weights and random lower bounds."""
    torch.manual_seed(seed)
    base = dict(vocab_size=97, hidden_size=60, num_hidden_layers=2, intermediate_size=84)
    base.update(cfg)
    model = MMFreeForCausalLM(MMFreeConfig(**base))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name == "model.lower_bounds":
                p.copy_(torch.randn_like(p))
            elif name.endswith("proj.weight") or name == "lm_head.weight":
                p.copy_(torch.randn_like(p) * 0.05)
            elif name == "model.embeddings.weight":
                p.copy_(torch.randn_like(p))
    return model.eval()


def random_checkpoint(path: Path, seed: int = 0, dtype=None, **cfg) -> Path:
    return save_model(random_model(seed, **cfg), path, dtype=dtype)
