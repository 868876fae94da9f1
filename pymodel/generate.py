"""Backend-agnostic decoding: a backend turns tokens into next-token logits, this loop picks tokens.

A backend has ``reset()``, ``feed(token_ids) -> logits of the last position`` (prefill and decode
alike) and ``vocab_size``. Logits are anything numpy can read as a vector (float or integer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mmfree.pymodel.sampling import sample


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    tokens: list[int]
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")


def check_prompt(ids, vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("the prompt is empty; give at least one token")
    bad = sorted({i for i in ids if not 0 <= i < vocab_size})
    if bad:
        raise ValueError(f"prompt token ids {bad[:8]} are outside the vocabulary [0, {vocab_size})")
    return ids


def generate(backend, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, eos_id: int | None = None, progress=None) -> GenerationResult:
    """Prefill ``prompt_ids`` then decode up to ``max_new_tokens`` tokens (stopping after ``eos_id``)."""
    ids = check_prompt(prompt_ids, backend.vocab_size)
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    backend.reset()
    logits = backend.feed(ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        tok = sample(logits, temperature, top_p, rng)
        out.append(tok)
        if progress is not None:
            progress(tok)
        if eos_id is not None and tok == eos_id:
            break
        if len(out) < max_new_tokens:
            logits = backend.feed([tok])
    return GenerationResult(ids, out, time.perf_counter() - t0)


class TorchBackend:
    """The float model (``numerics`` "fake" or "hardware") as a decoding backend.

    Decoding one token of a small model is latency-bound: below d = 1024 it runs on one CPU thread
    (several threads spin against each other and, on a busy machine, run many times slower).
    """

    def __init__(self, model):
        import torch

        if model.config.hidden_size < 1024 and next(model.parameters()).device.type == "cpu":
            torch.set_num_threads(1)
        self.torch = torch
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.state = None

    def reset(self):
        self.state = self.model.initial_state(1)

    def feed(self, ids):
        torch = self.torch
        with torch.no_grad():
            x = torch.tensor([list(ids)], dtype=torch.long, device=next(self.model.parameters()).device)
            logits, self.state = self.model(x, state=self.state, return_state=True)
        return logits[0, -1].double().cpu().numpy()
