"""Choosing the next token from logits, the same way for every backend (float, int, RTL, board).

Greedy (``temperature == 0``) is ``argmax`` with ties broken toward the lowest token id, which is
what the hardware argmax unit does. Sampling uses temperature and nucleus (top-p) filtering with a
``numpy.random.Generator``, so a seed reproduces a run on any backend.
"""

from __future__ import annotations

import numpy as np


def greedy(logits) -> int:
    """Index of the largest logit; the lowest index among equal maxima."""
    return int(np.argmax(np.asarray(logits)))


def probabilities(logits, temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
    """The sampling distribution after temperature scaling and top-p filtering (float64, sums to 1)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (use greedy for temperature 0)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        mask = np.zeros_like(p, dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample(logits, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy when ``temperature == 0``; otherwise one draw from :func:`probabilities`."""
    if temperature == 0:
        return greedy(logits)
    p = probabilities(logits, temperature, top_p)
    return int(rng.choice(len(p), p=p))
