"""Run an exported model through the HLS kernels (C-simulation) and compare with the integer reference.

The kernels read their tensors from an image in memory at byte offsets, as they would from weights.bin
in DDR. :func:`sub_image` packs just the tensors a kernel needs into a compact image (64-byte aligned,
layout order), so each call carries a few hundred kilobytes instead of the whole model.

:meth:`ModelRunner.run_tokens` feeds tokens one at a time through ``mmfree_layer`` (every layer, the
state carried from token to token, each layer's output feeding the next) and ``mmfree_bitlinear``
(lm_head), collecting every intermediate under the names
:meth:`mmfree.pymodel.intmodel.IntModel.forward` gives its taps. The embedding row (a table look-up
with no arithmetic) is the kernels' input and comes from :meth:`IntModel.embed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfree.hls import spec as SP
from mmfree.pymodel import layout as LY


def sub_image(model, names: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """A compact image holding the tensors ``names`` of ``model`` (an IntModel): ``(bytes, {name: offset})``."""
    have = model.manifest["tensors"]
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the model has no tensors {missing}")
    specs = [LY.TensorSpec(n, have[n]["dtype"], tuple(have[n]["shape"])) for n in names]
    offs, total = LY.offsets(specs)
    blob = np.zeros(total, dtype=np.uint8)
    for n in names:
        raw = np.ascontiguousarray(model.tensor(n)).view(np.uint8).reshape(-1)
        blob[offs[n]:offs[n] + raw.size] = raw
    return blob, offs


@dataclass
class LayerImage:
    """One decoder layer as the layer kernel takes it."""

    image: np.ndarray          # uint8 bytes
    offsets: np.ndarray        # int64 [17], order spec.layer_tensor_names()
    consts: np.ndarray         # int64 [6, 2] (c_m, c_e), order spec.layer_bitlinears()
    d: int
    inter: int


def layer_image(model, li: int) -> LayerImage:
    """The layer kernel's inputs for layer ``li`` of ``model``."""
    if not 0 <= li < model.dims.layers:
        raise ValueError(f"layer {li} does not exist (the model has {model.dims.layers} layers)")
    p = f"layers.{li}."
    names = SP.layer_tensor_names()
    blob, offs = sub_image(model, [p + n for n in names])
    consts = np.array([[model.consts[p + b.name]["c_m"], model.consts[p + b.name]["c_e"]]
                       for b in SP.layer_bitlinears()], dtype=np.int64)
    return LayerImage(blob, np.array([offs[p + n] for n in names], dtype=np.int64), consts,
                      model.dims.d, model.dims.inter)


class ModelRunner:
    """A model's images prepared once for the kernels; :meth:`run_tokens` runs tokens through C."""

    def __init__(self, sim, model):
        self.sim = sim
        self.model = model
        self.layers = [layer_image(model, li) for li in range(model.dims.layers)]
        self.head_image, ho = sub_image(model, ["norm.n", "lm_head.nw", "lm_head.w"])
        self.head_offs = (ho["norm.n"], ho["lm_head.nw"], ho["lm_head.w"])
        self.head_const = (model.consts["lm_head"]["c_m"], model.consts["lm_head"]["c_e"])

    def run_tokens(self, tokens, h0: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Tokens one after another (a chain, state carried from ``h0``, default zeros). Returns (taps
        ``{name: int64 [k, ...]}`` with IntModel's tap names, "embed" being the input, and the state after
        each token ``[k, L, d]``)."""
        m = self.model
        tokens = m.check_tokens(tokens)
        L, d = m.dims.layers, m.dims.d
        h = np.zeros((L, d), dtype=np.int64) if h0 is None else np.array(h0, dtype=np.int64)
        if h.shape != (L, d):
            raise ValueError(f"h0 must have shape ({L}, {d}), got {h.shape}")
        per_token: list[dict[str, np.ndarray]] = []
        hs = np.zeros((len(tokens), L, d), dtype=np.int64)
        for t, tok in enumerate(tokens):
            taps: dict[str, np.ndarray] = {}
            x = m.embed(np.array([tok]))[0]
            taps["embed"] = x
            for li, img in enumerate(self.layers):
                x, h[li], lt = self.sim.layer(img.image, img.offsets, img.consts, x, h[li], m.act_frac, img.d,
                                              img.inter)
                for suffix, v in lt.items():
                    taps[f"layers.{li}.{suffix}"] = v
                taps[f"layers.{li}.out"] = x
            taps["logits"] = self.sim.bitlinear(self.head_image, *self.head_offs, *self.head_const, x, m.dims.vocab)
            hs[t] = h
            per_token.append(taps)
        stacked = {name: np.stack([pt[name] for pt in per_token]) for name in per_token[0]}
        return stacked, hs
