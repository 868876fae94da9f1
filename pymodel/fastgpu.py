"""GPU decode path: the integer reference's one-token step in torch, weights cached once on the device.

:class:`TorchIntModel` runs :class:`mmfree.pymodel.intmodel.IntModel`'s step with the same
:mod:`mmfree.pymodel.numerics` primitives on int64 torch tensors (they take numpy arrays and torch tensors
alike), on the CPU or a CUDA device:

* every BitLinear's ternary matrix is unpacked **once** into a float32 ``[N, K]`` tensor on the device; the
  product ``codes @ T.T`` is one GEMV whose partial sums stay below 127 K < 2**24, so float32 holds them
  exactly (TF32 is switched off for it: it would round the codes);
* on CUDA the whole step (all layers and the head, ~10^4 small kernels) is captured once in a CUDA graph and
  replayed per token, so the launch overhead of the elementwise integer steps is paid once, not per token.

Logits and state equal IntModel's exactly (tests run it on the CPU; the CUDA graph path runs only where a GPU
is). Memory on the device: 4 bytes per weight (5.3 GB at 1.3B).
"""

from __future__ import annotations

import numpy as np

from mmfree import MmfreeError
from mmfree.pymodel import numerics as N
from mmfree.pymodel.intmodel import IntBackend, IntModel, IntState


class TorchIntModel:
    """IntModel on a torch device. ``device``: "cpu", "cuda", ...; ``graphs``: capture the step in a CUDA
    graph (default: on CUDA). Same decode interface as IntModel (initial_state, step, prefill, to_float)."""

    def __init__(self, im: IntModel, device: str = "cpu", graphs: bool | None = None):
        import torch

        self.torch, self.im, self.dims, self.vocab_size = torch, im, im.dims, im.vocab_size
        try:
            self.device = torch.device(device)
            torch.empty(1, device=self.device)
        except (RuntimeError, AssertionError) as exc:
            raise MmfreeError(f"torch device {device!r} is not usable here: {exc}") from None
        self.graphs = (self.device.type == "cuda") if graphs is None else bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise MmfreeError("CUDA graphs need a CUDA device")
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False     # TF32 would round the int8 codes: not exact
        dev = self.device
        self.w = {name: torch.from_numpy(N.unpack_ternary(im.tensor(s.w), s.K).astype(np.float32)).to(dev)
                  for name, s in im.bitlinear_specs.items()}
        ternary = {s.w for s in im.bitlinear_specs.values()}
        self.v = {name: torch.from_numpy(im.vec(name)).to(dev) for name in im.manifest["tensors"]
                  if name not in ternary and not name.startswith("lut.")}
        self._graph = None

    # ---- the step --------------------------------------------------------------------------------------
    def _matvec(self, name, codes, P, S, sz):
        c = self.im.consts[name]
        acc = (codes.to(self.torch.float32) @ self.w[name].T).to(self.torch.int64)   # exact: |acc| < 2**24
        M, shift = N.output_multiplier(P, S, sz, c["c_m"], c["c_e"])
        return N.dequantize(acc, M, shift)

    def _bitlinear(self, name, u):
        s = self.im.bitlinear_specs[name]
        codes, P, S, sz = N.quantize(u, self.v[s.n], self.v[s.nw])
        return self._matvec(name, codes, P, S, sz)

    def _layer(self, li: int, x, h):
        """One layer for one token (IntModel.forward with k = 1): returns (x, new h of the layer)."""
        p, af, inter = f"layers.{li}.", self.im.act_frac, self.dims.inter
        up, _ = N.normalize_input(x)
        S, sz = N.sum_squares(up * self.v[p + "attn_norm.n"])
        out = {}
        for proj in ("i_proj", "f_proj", "g_proj"):
            pw = up * self.v[p + f"attn.{proj}.nw"]
            P = pw.abs().amax(dim=-1, keepdim=True)
            out[proj] = self._matvec(p + f"attn.{proj}", N.codes_from(pw, P), P, S, sz)
        rate = N.forget_rate(out["f_proj"], self.v[p + "attn.one_minus_lb"], af)
        hn = N.hgrn_update(h, N.silu(out["i_proj"], af), rate)
        x = N.saturate(x + self._bitlinear(p + "attn.o_proj", N.mul_act(out["g_proj"], N.silu(hn, af))))
        gu = self._bitlinear(p + "mlp.gate_proj", x)
        down = self._bitlinear(p + "mlp.down_proj", N.mul_act(N.silu(gu[:, :inter], af), gu[:, inter:]))
        return N.saturate(x + down), hn

    def _step(self, token, h):
        """token: int64 tensor [1]; h: int64 [L, d]. Returns (new h [L, d], logits [V])."""
        x = self.v["embed"][token]
        hs = []
        for li in range(self.dims.layers):
            x, hl = self._layer(li, x, h[li:li + 1])
            hs.append(hl)
        return self.torch.cat(hs, 0), self._bitlinear("lm_head", x)[0]

    def _capture(self):
        """Record one step into a CUDA graph over static token/state buffers (after a warm-up step that
        creates the numerics' lookup tables on the device)."""
        torch = self.torch
        self._tok = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._h = torch.zeros(self.dims.layers, self.dims.d, dtype=torch.int64, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(self._tok, self._h)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._h_out, self._logits = self._step(self._tok, self._h)

    # ---- the decode interface --------------------------------------------------------------------------------
    def initial_state(self) -> IntState:
        return self.im.initial_state()

    def to_float(self, values, kind: str = "act"):
        return self.im.to_float(values, kind)

    def step(self, state: IntState, token: int) -> tuple[IntState, np.ndarray]:
        """One token: (new state, int logits ``[V]``), equal to ``IntModel.step``."""
        torch = self.torch
        token = int(self.im.check_tokens([token])[0])
        h = torch.from_numpy(np.ascontiguousarray(state.h, dtype=np.int64))
        with torch.no_grad():
            if not self.graphs:
                hn, logits = self._step(torch.tensor([token], device=self.device), h.to(self.device))
            else:
                if self._graph is None:
                    self._capture()
                self._tok.fill_(token)
                self._h.copy_(h)
                self._graph.replay()
                hn, logits = self._h_out, self._logits
            return IntState(hn.cpu().numpy()), logits.cpu().numpy()

    def prefill(self, state: IntState, tokens) -> tuple[IntState, np.ndarray]:
        logits = None
        for t in self.im.check_tokens(tokens):
            state, logits = self.step(state, int(t))
        return state, logits


class TorchIntBackend(IntBackend):
    """:class:`TorchIntModel` as a decoding backend for :func:`mmfree.pymodel.generate.generate` (it has
    IntModel's decode interface, so the integer reference's backend serves it)."""
