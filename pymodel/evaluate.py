"""``mmfree eval``: teacher-forced perplexity of several backends on a corpus, and how closely they agree.

Backends: ``float`` (the PyTorch model, official fake quantization, float32), ``float64`` (the same model in
float64: the float model's own rounding floor), ``hardware-float`` (PyTorch in hardware-exact mode) and
``int`` (the bit-exact integer reference on the exported image). Every backend scores the same token
stream window by window, carrying its recurrent state across windows; position t predicts token t + 1.
Agreement between two backends: the fraction of positions with the same top-1 token and the mean
absolute difference of their logits (as floats, over every position and vocabulary entry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from mmfree import MmfreeError

BACKENDS = ("float", "float64", "hardware-float", "int")
#: corpus name for the held-out split of the stdlib corpus the default model trained on
STDLIB_VAL = "stdlib:val"


def corpus_tokens(corpus: list[str], tokenizer, n_tokens: int) -> np.ndarray:
    """The first ``n_tokens + 1`` ids of the corpus (files, directories, or ``stdlib:val``), documents
    separated by EOS, as int64. MmfreeError when the corpus has fewer than 2 tokens."""
    from mmfree.pymodel import data as D

    docs = []
    for c in corpus:
        docs += D.split(D.stdlib_documents())[1] if c == STDLIB_VAL else D.file_documents([c])
    ids = D.tokenize(docs, tokenizer, tokenizer.token_id("</s>") or 2)[: n_tokens + 1].astype(np.int64)
    if len(ids) < 2:
        raise MmfreeError(f"the corpus {', '.join(corpus)} has fewer than 2 tokens; nothing to score")
    return ids


class _Torch:
    """A float model backend: ``logits(chunk) -> float64 [T, V]``, state carried."""

    def __init__(self, model):
        self.model, self.state = model, model.initial_state(1)

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out, self.state = self.model(torch.from_numpy(chunk)[None], state=self.state, return_state=True)
        return out[0].double().numpy()


class _Int:
    def __init__(self, im):
        self.im, self.h = im, im.initial_state().h

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        hs, li = self.im.forward(self.h, chunk)
        self.h = hs[-1]
        return np.asarray(self.im.to_float(li), dtype=np.float64)


def open_backend(name: str, model: str):
    """One backend over ``model`` (checkpoint directory, "default", or an export directory for ``int``)."""
    from mmfree.pymodel.checkpoint import load_model

    if name == "int":
        from mmfree.pymodel.intmodel import open_int_model

        return _Int(open_int_model(model)[0])
    if str(model) != "default" and (Path(model) / "manifest.json").exists():
        raise MmfreeError(f"{model} is an export directory: it holds only the integer image, so only --backends int "
                          "can run on it; pass the float checkpoint for the float backends")
    m = load_model(model)
    if name == "float64":
        m = m.double()
    elif name == "hardware-float":
        m.numerics = "hardware"
    return _Torch(m)


@dataclass
class _Score:
    nll: float = 0.0
    top1: np.ndarray | None = None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def evaluate(model: str, ids: np.ndarray, backends: list[str], window: int = 512, progress: bool = False) -> dict:
    """Score ``ids`` (int64 ``[n + 1]``) with every backend; returns the JSON-ready result (see module doc)."""
    from tqdm import tqdm

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends or len(set(backends)) != len(backends):
        raise MmfreeError(f"--backends takes distinct names from {', '.join(BACKENDS)}, got {','.join(backends)}")
    if window <= 0:
        raise MmfreeError("--window must be positive")
    runners = {b: open_backend(b, model) for b in backends}
    n = len(ids) - 1
    scores = {b: _Score() for b in backends}
    pairs = list(combinations(backends, 2))
    agree = {p: 0 for p in pairs}
    absdiff = {p: 0.0 for p in pairs}
    bar = tqdm(total=n, desc="eval", unit="tok", disable=not progress, leave=False)
    for s in range(0, n, window):
        chunk, target = ids[s:min(s + window, n)], ids[s + 1:min(s + window, n) + 1]
        rows = np.arange(len(chunk))
        logits = {}
        for b, r in runners.items():
            logits[b] = r.logits(chunk)
            scores[b].nll -= float(_log_softmax(logits[b])[rows, target].sum())
        for a, b in pairs:
            agree[(a, b)] += int(np.sum(logits[a].argmax(-1) == logits[b].argmax(-1)))
            absdiff[(a, b)] += float(np.abs(logits[a] - logits[b]).mean(-1).sum())
        bar.update(len(chunk))
    bar.close()
    return {
        "model": str(model), "tokens": n,
        "backends": [{"name": b, "perplexity": math.exp(scores[b].nll / n), "mean_nll": scores[b].nll / n}
                     for b in backends],
        "agreement": {f"{a}/{b}": {"top1": agree[(a, b)] / n, "mean_abs_logit_diff": absdiff[(a, b)] / n}
                      for a, b in pairs},
    }


def evaluate_corpus(model: str, corpus: list[str], backends: list[str], n_tokens: int, window: int = 512,
                    progress: bool = False) -> dict:
    """:func:`evaluate` on the first ``n_tokens`` tokens of ``corpus`` encoded with the model's tokenizer."""
    from mmfree.pymodel.tokenizer import load_tokenizer

    if n_tokens <= 0:
        raise MmfreeError("--tokens must be positive")
    if not corpus:
        raise MmfreeError(f"--corpus needs at least one file, directory or {STDLIB_VAL}")
    ids = corpus_tokens(corpus, load_tokenizer(model), n_tokens)
    res = evaluate(model, ids, backends, window, progress)
    res["corpus"] = list(corpus)
    return res
